#!/usr/bin/env python
"""
Train PBNet, DAWN's pose / blink CVAE, on a DAWN training dataset (output of `training/preprocess.py`).

    accelerate launch training/train_pbnet.py --state pose --dataset_name_or_path data/hdtf128 --output_dir runs/pose
    accelerate launch training/train_pbnet.py --state blink --dataset_name_or_path data/hdtf128 --output_dir runs/blink

Objective (facts §5.6): reconstruction MSE over valid frames + KL (schedule `--kl_schedule official|linear_warmup`)
+ 1-D PatchGAN adversarial BCE losses; AdamW 4e-4 for both networks, cosine LR to 2e-5, gradient clipping 2.0 on
PBNet; random windows of up to 200 frames per video with padding masks; pose normalised with the model config's
`state_min` / `state_max`, blink raw. The model is `PBNetModel` with its default (official) configuration for the
state (`audio_dim` from the dataset), or `--pbnet_config config.json`, or initialised from
`--pretrained_model_name_or_path` (a PBNet folder, or a DAWN pipeline folder with `pbnet_pose` / `pbnet_blink`). The
trained model is saved to `OUTPUT_DIR/pbnet_<state>`, the discriminator to `OUTPUT_DIR/discriminator`.

One "epoch" is one pass over the videos, as in the official loop; the KL schedule counts these epochs.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from diffusers_dawn.models.pbnet import PBNetModel
from diffusers_dawn.training.accelerate_utils import (
    EpochSampler,
    add_common_training_args,
    build_dataloader,
    check_common_args,
    create_accelerator,
    create_ema,
    create_lr_scheduler,
    push_to_hub,
    register_checkpoint_hooks,
    run_training,
    save_final_model,
    total_train_steps,
)
from diffusers_dawn.training.dataset import load_dawn_dataset
from diffusers_dawn.training.pbnet_trainer import (
    ADVERSARIAL_UPDATES,
    KL_LAMBDA,
    KL_RAMP_EPOCHS,
    KL_SCHEDULES,
    KL_START_EPOCH,
    STATE_COLUMNS,
    WINDOW_FRAMES,
    PatchDiscriminator1D,
    PBNetSequenceDataset,
    collate_sequences,
    fit_latent_prior,
    kl_weight,
    pbnet_loss,
)
from diffusers_dawn.utils.io import atomic_write_text


logger = logging.getLogger("train_pbnet")
DISCRIMINATOR_FOLDER = "discriminator"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--state", choices=tuple(STATE_COLUMNS), required=True, help="Train the pose or blink network.")
    data.add_argument("--dataset_name_or_path", required=True, help="Dataset folder (save_to_disk) or Hub id.")
    data.add_argument("--pretrained_model_name_or_path", default=None,
                      help="PBNet folder, or DAWN pipeline folder / Hub id (subfolder pbnet_<state>), to start from.")
    data.add_argument("--pbnet_config", default=None, help="JSON file of PBNetModel arguments (new model).")
    data.add_argument("--window_frames", type=int, default=WINDOW_FRAMES, help="Longest training sequence.")
    objective = parser.add_argument_group("objective")
    objective.add_argument("--kl_schedule", choices=KL_SCHEDULES, default="official")
    objective.add_argument("--kl_lambda", type=float, default=KL_LAMBDA)
    objective.add_argument("--kl_start_epoch", type=int, default=KL_START_EPOCH)
    objective.add_argument("--kl_ramp_epochs", type=int, default=KL_RAMP_EPOCHS)
    objective.add_argument("--adversarial_weight", type=float, default=1.0, help="0 trains without discriminator.")
    objective.add_argument("--adversarial_update", choices=ADVERSARIAL_UPDATES, default="official")
    objective.add_argument(
        "--fit_latent_prior", action="store_true",
        help="After training, fit a Gaussian prior (mean, covariance, per-channel AR(1) correlation) to the posterior "
        "means and save it in the config, so sampling draws latents like those the decoder was trained on (for "
        "motion that does not follow the speech; the official sampler draws i.i.d. N(0, I)).",
    )
    optimisation = parser.add_argument_group("optimisation (PBNet)")
    optimisation.add_argument("--discriminator_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    optimisation.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW default, as officially.")
    optimisation.add_argument("--lr_min", type=float, default=2e-5, help="End of the cosine schedule.")
    optimisation.add_argument("--max_grad_norm", type=float, default=2.0, help="Clipping of PBNet's gradients.")
    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_video_index", type=int, default=0)
    # Official: AdamW 4e-4, batch 40, 100000 epochs.
    add_common_training_args(parser, learning_rate=4e-4, train_batch_size=40, num_train_epochs=100000)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    if args.pbnet_config and args.pretrained_model_name_or_path:
        raise ValueError("give --pbnet_config (new model) or --pretrained_model_name_or_path (start from weights), not both")
    if args.window_frames < 24:
        raise ValueError("--window_frames must be at least 24 (the discriminator's receptive field)")
    return args


def load_pbnet(args, audio_dim: int) -> PBNetModel:
    if args.pretrained_model_name_or_path:
        path = Path(args.pretrained_model_name_or_path)
        folder = f"pbnet_{args.state}"
        subfolder = folder if (path / folder).is_dir() or not path.exists() else None
        model = PBNetModel.from_pretrained(args.pretrained_model_name_or_path, subfolder=subfolder)
    else:
        config = json.loads(Path(args.pbnet_config).read_text()) if args.pbnet_config else {}
        config = {key: value for key, value in config.items() if not key.startswith("_")}
        config.setdefault("audio_dim", audio_dim)
        if args.state == "blink":
            config.setdefault("state_dim", 2)
            config.setdefault("state_min", None)
            config.setdefault("state_max", None)
        model = PBNetModel(**config)
    expected_dim = 6 if args.state == "pose" else 2
    if model.config.state_dim != expected_dim:
        raise ValueError(f"--state {args.state} needs a PBNet with state_dim {expected_dim}, got {model.config.state_dim}")
    if model.config.audio_dim != audio_dim:
        raise ValueError(
            f"the dataset's speech features are {audio_dim}-wide but the PBNet expects {model.config.audio_dim}; "
            "preprocess with the HuBERT the model was built for, or set audio_dim in --pbnet_config"
        )
    return model


@torch.no_grad()
def log_validation(pbnet, dataset, args, accelerator, step: int) -> dict:
    """
    Samples a state sequence for one video from its first state and speech, and logs statistics against the
    ground truth (per-channel mean, standard deviation, mean absolute frame-to-frame change); writes them to
    `OUTPUT_DIR/validation/step-N.json`.
    """
    column = STATE_COLUMNS[args.state]
    row = dataset.select_columns([column, "hubert", "num_frames"])[args.validation_video_index % len(dataset)]
    count = min(int(row["num_frames"]), args.window_frames)
    truth = torch.tensor(np.asarray(row[column], dtype=np.float32)[:count])
    audio = torch.tensor(np.asarray(row["hubert"], dtype=np.float32)[:count])
    model = accelerator.unwrap_model(pbnet)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    generated = model.generate_states(truth[None, :1].to(accelerator.device), audio[None].to(accelerator.device),
                                      generator=generator)[0].float().cpu()
    model.train(was_training)

    def statistics(states):
        velocity = (states[1:] - states[:-1]).abs().mean(0) if len(states) > 1 else torch.zeros(states.shape[1])
        return {"mean": states.mean(0).tolist(), "std": states.std(0).tolist(), "velocity": velocity.tolist()}

    report = {"step": step, "frames": count, "generated": statistics(generated), "ground_truth": statistics(truth),
              "finite": bool(torch.isfinite(generated).all())}
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"step-{step:06d}.json", json.dumps(report, indent=2))
    logs = {}
    for channel in range(generated.shape[1]):
        logs[f"validation/std_ratio_{channel}"] = report["generated"]["std"][channel] / max(report["ground_truth"]["std"][channel], 1e-8)
    accelerator.log(logs, step=step)
    logger.info(f"Validation at step {step}: generated std {np.round(report['generated']['std'], 4).tolist()}, "
                f"ground truth {np.round(report['ground_truth']['std'], 4).tolist()}")
    return report


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    accelerator = create_accelerator(args)

    dataset = load_dawn_dataset(args.dataset_name_or_path,
                                columns=(STATE_COLUMNS[args.state], "hubert", "num_frames"))
    audio_dim = dataset.features["hubert"].shape[-1]
    pbnet = load_pbnet(args, audio_dim)
    pbnet.train()
    if args.gradient_checkpointing:
        if pbnet._supports_gradient_checkpointing:
            pbnet.enable_gradient_checkpointing()
        else:
            logger.warning("PBNetModel does not support gradient checkpointing (it is small); training without it")
    use_discriminator = args.adversarial_weight != 0
    discriminator = PatchDiscriminator1D(state_dim=pbnet.config.state_dim) if use_discriminator else None

    sequences = PBNetSequenceDataset(dataset, args.state, window=args.window_frames)
    sampler = EpochSampler(len(sequences), seed=args.seed)
    batch_size = min(args.train_batch_size, len(sampler))
    if batch_size < args.train_batch_size:
        logger.warning(f"Only {len(sampler)} videos: batch size {batch_size} instead of {args.train_batch_size}")
    dataloader = build_dataloader(sequences, sampler, batch_size, collate_sequences, args.dataloader_num_workers)

    max_steps = total_train_steps(args, dataloader)
    optimizer = torch.optim.AdamW(pbnet.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = create_lr_scheduler(args, optimizer, max_steps, accelerator.num_processes, args.lr_min)
    model_name = f"pbnet_{args.state}"
    ema = create_ema(pbnet, args.ema_decay) if args.use_ema else None
    models = {model_name: pbnet}
    if use_discriminator:
        models[DISCRIMINATOR_FOLDER] = discriminator
        discriminator_optimizer = torch.optim.AdamW(
            discriminator.parameters(), lr=args.discriminator_learning_rate or args.learning_rate,
            weight_decay=args.adam_weight_decay,
        )
        discriminator_scheduler = create_lr_scheduler(args, discriminator_optimizer, max_steps,
                                                      accelerator.num_processes, args.lr_min)
    register_checkpoint_hooks(accelerator, models, {model_name: ema} if ema else None)
    if use_discriminator:
        (pbnet, discriminator, optimizer, discriminator_optimizer, dataloader, lr_scheduler,
         discriminator_scheduler) = accelerator.prepare(pbnet, discriminator, optimizer, discriminator_optimizer,
                                                        dataloader, lr_scheduler, discriminator_scheduler)
        trained = [pbnet, discriminator]
    else:
        pbnet, optimizer, dataloader, lr_scheduler = accelerator.prepare(pbnet, optimizer, dataloader, lr_scheduler)
        trained = [pbnet]
    if ema is not None:
        ema.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(pbnet)
    logger.info(f"PBNet ({args.state}) training: {len(sequences)} videos, {max_steps} steps, batch {batch_size}")

    def training_step(batch, step_info):
        states = unwrapped.normalize_states(batch["states"])
        with accelerator.autocast():
            losses = pbnet_loss(
                pbnet, discriminator, states, batch["audio_features"], batch["lengths"],
                kl_weight(step_info.epoch + 1, args.kl_schedule, args.kl_lambda, args.kl_start_epoch,
                          args.kl_ramp_epochs),
                adversarial_weight=args.adversarial_weight,
                adversarial_update=args.adversarial_update,
            )
        accelerator.backward(losses.loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(pbnet.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if use_discriminator:
            discriminator_optimizer.step()
            discriminator_scheduler.step()
            discriminator_optimizer.zero_grad(set_to_none=True)
        return {
            "loss": losses.loss.detach().item(),
            "reconstruction": losses.reconstruction.detach().item(),
            "kl": losses.kl.detach().item(),
            "kl_weight": losses.kl_weight,
            "generator_adversarial": losses.generator_adversarial.detach().item(),
            "discriminator": losses.discriminator.detach().item(),
            "lr": lr_scheduler.get_last_lr()[0],
        }

    result = run_training(
        accelerator, args, dataloader, sampler, training_step, models=trained,
        ema_updates=[(ema, pbnet)] if ema else (),
        validation=lambda step: log_validation(pbnet, dataset, args, accelerator, step),
    )
    accelerator.wait_for_everyone()
    finalize = None
    if args.fit_latent_prior:
        def finalize(model):
            prior = fit_latent_prior(model, dataset, args.state, window=args.window_frames)
            logger.info("Fitted the latent prior: lag-one correlations %s",
                        [round(value, 3) for value in prior["latent_prior_correlation"]])
    save_final_model(accelerator, pbnet, args.output_dir, model_name, ema, finalize=finalize)
    if use_discriminator:
        save_final_model(accelerator, discriminator, args.output_dir, DISCRIMINATOR_FOLDER)
    if args.push_to_hub and accelerator.is_main_process:
        push_to_hub(args, f"DAWN PBNet ({args.state})",
                    f"Trained with `training/train_pbnet.py --state {args.state}` for {result.global_step} steps on "
                    f"`{args.dataset_name_or_path}`; load with `PBNetModel.from_pretrained(repo, subfolder='{model_name}')`.",
                    tags=["pbnet", args.state])
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
