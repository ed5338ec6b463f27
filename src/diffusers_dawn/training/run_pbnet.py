"""
The PBNet training run: [`PBNetTrainingConfig`] (the settings of `training/train_pbnet.py`) and [`train_pbnet`], which
trains the pose or blink `PBNetModel` (and its 1-D PatchGAN) with the objective and data of
[`~training.pbnet_trainer`] through the shared loop of [`~training.accelerate_utils`]. The trained model is saved to
`OUTPUT_DIR/pbnet_<state>`, the discriminator to `OUTPUT_DIR/discriminator`.

One "epoch" is one pass over the videos, as in the official loop; the KL schedule counts these epochs.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..models.pbnet import PBNetModel
from ..utils.io import atomic_write_text
from .accelerate_utils import (
    EpochSampler,
    TrainingResult,
    build_dataloader,
    create_accelerator,
    create_ema,
    create_lr_scheduler,
    push_to_hub,
    register_checkpoint_hooks,
    run_training,
    save_final_model,
    total_train_steps,
)
from .config import OBJECTIVE_GROUP, VALIDATION_GROUP, TrainingConfig, option
from .dataset import load_dawn_dataset
from .pbnet_trainer import (
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


logger = logging.getLogger(__name__)
DISCRIMINATOR_FOLDER = "discriminator"
DATA = "data and model"
OPTIMISATION = "optimisation (PBNet)"


@dataclass(kw_only=True)
class PBNetTrainingConfig(TrainingConfig):
    """Settings of a PBNet training; the defaults are the official ones (AdamW 4e-4, batch 40, 100000 epochs)."""

    state: str = option(choices=tuple(STATE_COLUMNS), group=DATA, help="Train the pose or blink network.")
    dataset_name_or_path: str = option(help="Dataset folder (save_to_disk) or Hub id.", group=DATA)
    pretrained_model_name_or_path: Optional[str] = option(
        None, group=DATA,
        help="PBNet folder, or DAWN pipeline folder / Hub id (subfolder pbnet_<state>), to start from.",
    )
    pbnet_config: Optional[str] = option(None, group=DATA, help="JSON file of PBNetModel arguments (new model).")
    window_frames: int = option(WINDOW_FRAMES, group=DATA, help="Longest training sequence.")
    kl_schedule: str = option("official", group=OBJECTIVE_GROUP, choices=KL_SCHEDULES)
    kl_lambda: float = option(KL_LAMBDA, group=OBJECTIVE_GROUP)
    kl_start_epoch: int = option(KL_START_EPOCH, group=OBJECTIVE_GROUP)
    kl_ramp_epochs: int = option(KL_RAMP_EPOCHS, group=OBJECTIVE_GROUP)
    adversarial_weight: float = option(1.0, group=OBJECTIVE_GROUP, help="0 trains without discriminator.")
    adversarial_update: str = option("official", group=OBJECTIVE_GROUP, choices=ADVERSARIAL_UPDATES)
    fit_latent_prior: bool = option(
        False, group=OBJECTIVE_GROUP,
        help="After training, fit a Gaussian prior (mean, covariance, per-channel AR(1) correlation) to the posterior "
        "means and save it in the config, so sampling draws latents like those the decoder was trained on (for "
        "motion that does not follow the speech; the official sampler draws i.i.d. N(0, I)).",
    )
    discriminator_learning_rate: Optional[float] = option(None, group=OPTIMISATION, help="Default: --learning_rate.")
    adam_weight_decay: float = option(1e-2, group=OPTIMISATION, help="AdamW default, as officially.")
    lr_min: float = option(2e-5, group=OPTIMISATION, help="End of the cosine schedule.")
    max_grad_norm: Optional[float] = option(2.0, group=OPTIMISATION, help="Clipping of PBNet's gradients.")
    validation_video_index: int = option(0, group=VALIDATION_GROUP)
    learning_rate: float = option(4e-4)
    train_batch_size: Optional[int] = option(40, help="Batch size per device.")
    num_train_epochs: int = option(100000)

    def check(self) -> None:
        super().check()
        if self.state not in STATE_COLUMNS:
            raise ValueError(f"--state must be one of {tuple(STATE_COLUMNS)}, got {self.state!r}")
        if self.pbnet_config and self.pretrained_model_name_or_path:
            raise ValueError(
                "give --pbnet_config (new model) or --pretrained_model_name_or_path (start from weights), not both"
            )
        if self.window_frames < 24:
            raise ValueError("--window_frames must be at least 24 (the discriminator's receptive field)")

    @property
    def model_folder(self) -> str:
        """`pbnet_pose` or `pbnet_blink`: the trained model's folder in the output and in DAWN pipeline folders."""
        return f"pbnet_{self.state}"


def load_pbnet(config: PBNetTrainingConfig, audio_dim: int) -> PBNetModel:
    """The PBNet to train, checked against the state and the dataset's speech features."""
    if config.pretrained_model_name_or_path:
        path = Path(config.pretrained_model_name_or_path)
        folder = config.model_folder
        subfolder = folder if (path / folder).is_dir() or not path.exists() else None
        model = PBNetModel.from_pretrained(config.pretrained_model_name_or_path, subfolder=subfolder)
    else:
        architecture = json.loads(Path(config.pbnet_config).read_text()) if config.pbnet_config else {}
        architecture = {key: value for key, value in architecture.items() if not key.startswith("_")}
        architecture.setdefault("audio_dim", audio_dim)
        if config.state == "blink":
            architecture.setdefault("state_dim", 2)
            architecture.setdefault("state_min", None)
            architecture.setdefault("state_max", None)
        model = PBNetModel(**architecture)
    expected_dim = 6 if config.state == "pose" else 2
    if model.config.state_dim != expected_dim:
        raise ValueError(f"--state {config.state} needs a PBNet with state_dim {expected_dim}, got {model.config.state_dim}")
    if model.config.audio_dim != audio_dim:
        raise ValueError(
            f"the dataset's speech features are {audio_dim}-wide but the PBNet expects {model.config.audio_dim}; "
            "preprocess with the HuBERT the model was built for, or set audio_dim in --pbnet_config"
        )
    return model


@torch.no_grad()
def log_validation(pbnet, dataset, config: PBNetTrainingConfig, accelerator, step: int) -> dict:
    """
    Samples a state sequence for one video from its first state and speech, and logs statistics against the
    ground truth (per-channel mean, standard deviation, mean absolute frame-to-frame change); writes them to
    `OUTPUT_DIR/validation/step-N.json`.
    """
    column = STATE_COLUMNS[config.state]
    row = dataset.select_columns([column, "hubert", "num_frames"])[config.validation_video_index % len(dataset)]
    count = min(int(row["num_frames"]), config.window_frames)
    truth = torch.tensor(np.asarray(row[column], dtype=np.float32)[:count])
    audio = torch.tensor(np.asarray(row["hubert"], dtype=np.float32)[:count])
    model = accelerator.unwrap_model(pbnet)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(config.seed)
    generated = model.generate_states(truth[None, :1].to(accelerator.device), audio[None].to(accelerator.device),
                                      generator=generator)[0].float().cpu()
    model.train(was_training)

    def statistics(states):
        velocity = (states[1:] - states[:-1]).abs().mean(0) if len(states) > 1 else torch.zeros(states.shape[1])
        return {"mean": states.mean(0).tolist(), "std": states.std(0).tolist(), "velocity": velocity.tolist()}

    report = {"step": step, "frames": count, "generated": statistics(generated), "ground_truth": statistics(truth),
              "finite": bool(torch.isfinite(generated).all())}
    folder = Path(config.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"step-{step:06d}.json", json.dumps(report, indent=2))
    logs = {}
    for channel in range(generated.shape[1]):
        logs[f"validation/std_ratio_{channel}"] = report["generated"]["std"][channel] / max(report["ground_truth"]["std"][channel], 1e-8)
    accelerator.log(logs, step=step)
    logger.info(f"Validation at step {step}: generated std {np.round(report['generated']['std'], 4).tolist()}, "
                f"ground truth {np.round(report['ground_truth']['std'], 4).tolist()}")
    return report


def train_pbnet(config: PBNetTrainingConfig) -> TrainingResult:
    """Trains the pose or blink PBNet as `config` says, saves it (and the discriminator) and returns what the run did."""
    accelerator = create_accelerator(config)

    dataset = load_dawn_dataset(config.dataset_name_or_path,
                                columns=(STATE_COLUMNS[config.state], "hubert", "num_frames"))
    audio_dim = dataset.features["hubert"].shape[-1]
    pbnet = load_pbnet(config, audio_dim)
    pbnet.train()
    if config.gradient_checkpointing:
        if pbnet._supports_gradient_checkpointing:
            pbnet.enable_gradient_checkpointing()
        else:
            logger.warning("PBNetModel does not support gradient checkpointing (it is small); training without it")
    use_discriminator = config.adversarial_weight != 0
    discriminator = PatchDiscriminator1D(state_dim=pbnet.config.state_dim) if use_discriminator else None

    sequences = PBNetSequenceDataset(dataset, config.state, window=config.window_frames)
    sampler = EpochSampler(len(sequences), seed=config.seed)
    batch_size = min(config.train_batch_size, len(sampler))
    if batch_size < config.train_batch_size:
        logger.warning(f"Only {len(sampler)} videos: batch size {batch_size} instead of {config.train_batch_size}")
    dataloader = build_dataloader(sequences, sampler, batch_size, collate_sequences, config.dataloader_num_workers)

    max_steps = total_train_steps(config, dataloader)
    optimizer = torch.optim.AdamW(pbnet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = create_lr_scheduler(config, optimizer, max_steps, accelerator.num_processes, config.lr_min)
    model_name = config.model_folder
    ema = create_ema(pbnet, config.ema_decay) if config.use_ema else None
    models = {model_name: pbnet}
    if use_discriminator:
        models[DISCRIMINATOR_FOLDER] = discriminator
        discriminator_optimizer = torch.optim.AdamW(
            discriminator.parameters(), lr=config.discriminator_learning_rate or config.learning_rate,
            weight_decay=config.adam_weight_decay,
        )
        discriminator_scheduler = create_lr_scheduler(config, discriminator_optimizer, max_steps,
                                                      accelerator.num_processes, config.lr_min)
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
    logger.info(f"PBNet ({config.state}) training: {len(sequences)} videos, {max_steps} steps, batch {batch_size}")

    def training_step(batch, step_info):
        states = unwrapped.normalize_states(batch["states"])
        with accelerator.autocast():
            losses = pbnet_loss(
                pbnet, discriminator, states, batch["audio_features"], batch["lengths"],
                kl_weight(step_info.epoch + 1, config.kl_schedule, config.kl_lambda, config.kl_start_epoch,
                          config.kl_ramp_epochs),
                adversarial_weight=config.adversarial_weight,
                adversarial_update=config.adversarial_update,
            )
        accelerator.backward(losses.loss)
        if accelerator.sync_gradients and config.max_grad_norm:
            accelerator.clip_grad_norm_(pbnet.parameters(), config.max_grad_norm)
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
        accelerator, config, dataloader, sampler, training_step, models=trained,
        ema_updates=[(ema, pbnet)] if ema else (),
        validation=lambda step: log_validation(pbnet, dataset, config, accelerator, step),
    )
    accelerator.wait_for_everyone()
    finalize = None
    if config.fit_latent_prior:
        def finalize(model):
            prior = fit_latent_prior(model, dataset, config.state, window=config.window_frames)
            logger.info("Fitted the latent prior: lag-one correlations %s",
                        [round(value, 3) for value in prior["latent_prior_correlation"]])
    save_final_model(accelerator, pbnet, config.output_dir, model_name, ema, finalize=finalize)
    if use_discriminator:
        save_final_model(accelerator, discriminator, config.output_dir, DISCRIMINATOR_FOLDER)
    if config.push_to_hub and accelerator.is_main_process:
        push_to_hub(config, f"DAWN PBNet ({config.state})",
                    f"Trained with `training/train_pbnet.py --state {config.state}` for {result.global_step} steps on "
                    f"`{config.dataset_name_or_path}`; load with "
                    f"`PBNetModel.from_pretrained(repo, subfolder='{model_name}')`.",
                    tags=["pbnet", config.state])
    accelerator.end_training()
    return result
