#!/usr/bin/env python
"""
Train DAWN's latent flow generator (LFG) on a DAWN training dataset (output of `training/preprocess.py`).

    accelerate launch training/train_lfg.py --dataset_name_or_path data/hdtf128 --output_dir runs/lfg128 \
        --mixed_precision fp16

Objective (facts §6.1): multi-scale VGG19 perceptual pyramid + equivariance losses; Adam(0.5, 0.999), cosine LR to
2e-6; two frames of one video per sample with flips and colour jitter. The model is `LFGAutoencoder` with its
default (official) configuration, or `--lfg_config config.json`, or initialised from `--pretrained_model_name_or_path`
(an LFG folder, or a DAWN pipeline folder with an `lfg` subfolder). The trained model is saved to `OUTPUT_DIR/lfg`.

VGG19 ImageNet weights come from torchvision, or from `--vgg_weights FILE` (a torchvision vgg19 state dict); without
either the loss runs with random VGG weights and says so (fine for tests, useless for real training).
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from diffusers_dawn.models.lfg import LFGAutoencoder
from diffusers_dawn.processing.image import image_to_tensor
from diffusers_dawn.processing.video import export_to_video_with_audio
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
from diffusers_dawn.training.dataset import decode_frame, keep_frames_encoded, load_dawn_dataset
from diffusers_dawn.training.lfg_trainer import (
    EQUIVARIANCE_AFFINE_WEIGHT,
    EQUIVARIANCE_SHIFT_WEIGHT,
    LIP_BOX_MARGIN,
    PERCEPTUAL_SCALES,
    SIGMA_AFFINE,
    SIGMA_TPS,
    LFGFramePairDataset,
    PerceptualPyramidLoss,
    Vgg19Features,
    collate_frame_pairs,
    lfg_loss,
    lip_region_masks,
)


logger = logging.getLogger("train_lfg")
MODEL_FOLDER = "lfg"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset_name_or_path", required=True, help="Dataset folder (save_to_disk) or Hub id.")
    data.add_argument("--pretrained_model_name_or_path", default=None,
                      help="LFG folder or DAWN pipeline folder / Hub id (subfolder `lfg`) to start from.")
    data.add_argument("--lfg_config", default=None, help="JSON file of LFGAutoencoder arguments (new model).")
    data.add_argument("--num_repeats", type=int, default=100, help="Passes over the videos per epoch (official 100).")
    data.add_argument("--no_augment", action="store_true", help="No flips / colour jitter.")
    objective = parser.add_argument_group("objective")
    objective.add_argument("--vgg_weights", default=None, help="torchvision vgg19 state dict (.pth/.safetensors).")
    objective.add_argument("--perceptual_scales", type=float, nargs="+", default=list(PERCEPTUAL_SCALES))
    objective.add_argument("--equivariance_shift_weight", type=float, default=EQUIVARIANCE_SHIFT_WEIGHT)
    objective.add_argument("--equivariance_affine_weight", type=float, default=EQUIVARIANCE_AFFINE_WEIGHT)
    objective.add_argument("--sigma_affine", type=float, default=SIGMA_AFFINE)
    objective.add_argument("--sigma_tps", type=float, default=SIGMA_TPS)
    objective.add_argument("--pixel_loss_weight", type=float, default=0.0, help="Weight of a pixel L1 loss (0: off).")
    objective.add_argument("--lip_loss_weight", type=float, default=0.0,
                           help="Weight of an L1 loss inside the driving frame's lip box (0: off; needs `lip_box`).")
    objective.add_argument("--lip_box_margin", type=float, default=LIP_BOX_MARGIN,
                           help="Lip box enlarged on each side by this fraction of its height.")
    optimisation = parser.add_argument_group("optimisation (LFG)")
    optimisation.add_argument("--adam_beta1", type=float, default=0.5)
    optimisation.add_argument("--adam_beta2", type=float, default=0.999)
    optimisation.add_argument("--lr_min", type=float, default=2e-6, help="End of the cosine schedule.")
    optimisation.add_argument("--max_grad_norm", type=float, default=None, help="Off by default, as officially.")
    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_video_index", type=int, default=0)
    validation.add_argument("--validation_frames", type=int, default=25)
    # Official 128-px settings (the 256-px run used lr 6e-4, batch 20, 400 epochs).
    add_common_training_args(parser, learning_rate=4e-4, train_batch_size=82, num_train_epochs=1000)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_common_args(args)
    if args.lfg_config and args.pretrained_model_name_or_path:
        raise ValueError("give --lfg_config (new model) or --pretrained_model_name_or_path (start from weights), not both")
    return args


def load_lfg(args) -> LFGAutoencoder:
    if args.pretrained_model_name_or_path:
        path = Path(args.pretrained_model_name_or_path)
        subfolder = MODEL_FOLDER if (path / MODEL_FOLDER).is_dir() or not path.exists() else None
        return LFGAutoencoder.from_pretrained(args.pretrained_model_name_or_path, subfolder=subfolder)
    config = json.loads(Path(args.lfg_config).read_text()) if args.lfg_config else {}
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    return LFGAutoencoder(**config)


@torch.no_grad()
def log_validation(lfg, dataset, args, accelerator, step: int) -> Path:
    """
    Reconstructs the first `--validation_frames` frames of one video from its first frame; writes a PNG grid (top:
    real, bottom: reconstruction) and a side-by-side MP4 to `OUTPUT_DIR/validation/`, and logs the grid.
    """
    # Only the frames used are decoded (a row holds the whole video).
    columns = [name for name in ("frames", "num_frames", "audio") if name in dataset.column_names]
    row = keep_frames_encoded(dataset.select_columns(columns))[args.validation_video_index % len(dataset)]
    count = min(args.validation_frames, row["num_frames"])
    frames = torch.cat([image_to_tensor(decode_frame(frame)) for frame in row["frames"][:count]]).to(accelerator.device)
    model = accelerator.unwrap_model(lfg)
    was_training = model.training
    model.eval()
    prediction = torch.cat([model(frames[:1], frames[start : start + 8]).prediction
                            for start in range(0, count, 8)]).clamp(0, 1)
    model.train(was_training)
    error = (prediction - frames).abs().mean().item()
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    side_by_side = torch.cat([frames, prediction], dim=-1).permute(0, 2, 3, 1).cpu().numpy()
    columns = min(count, 8)
    grid = torch.cat([torch.cat(list(frames[:columns]), dim=-1), torch.cat(list(prediction[:columns]), dim=-1)], dim=-2)
    grid_image = (grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    import PIL.Image

    grid_path = folder / f"step-{step:06d}.png"
    PIL.Image.fromarray(grid_image).save(grid_path)
    audio = np.asarray(row["audio"], dtype=np.float32)[: count * 640] if row.get("audio") is not None else None
    export_to_video_with_audio(side_by_side, folder / f"step-{step:06d}.mp4", fps=25, audio=audio)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation/reconstruction", grid_image, step, dataformats="HWC")
    accelerator.log({"validation/l1": error}, step=step)
    logger.info(f"Validation at step {step}: L1 {error:.4f}, grid {grid_path}")
    return grid_path


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    accelerator = create_accelerator(args)

    use_lips = args.lip_loss_weight > 0
    dataset = load_dawn_dataset(args.dataset_name_or_path,
                                columns=("frames", "num_frames") + (("lip_box",) if use_lips else ()))
    lfg = load_lfg(args)
    lfg.train()
    if args.gradient_checkpointing:
        lfg.enable_gradient_checkpointing()
    resolution = decode_frame(keep_frames_encoded(dataset.select_columns(["frames"]))[0]["frames"][0]).size[0]
    perceptual = PerceptualPyramidLoss(Vgg19Features.from_imagenet(args.vgg_weights), args.perceptual_scales)
    perceptual.to(accelerator.device)

    pairs = LFGFramePairDataset(dataset, augment=not args.no_augment, with_lip_boxes=use_lips)
    sampler = EpochSampler(len(pairs), seed=args.seed, repeats=args.num_repeats)
    batch_size = min(args.train_batch_size, len(sampler))
    if batch_size < args.train_batch_size:
        logger.warning(f"Only {len(sampler)} samples per epoch: batch size {batch_size} instead of {args.train_batch_size}")
    dataloader = build_dataloader(pairs, sampler, batch_size, collate_frame_pairs, args.dataloader_num_workers)

    optimizer = torch.optim.Adam(lfg.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    max_steps = total_train_steps(args, dataloader)
    lr_scheduler = create_lr_scheduler(args, optimizer, max_steps, accelerator.num_processes, args.lr_min)
    ema = create_ema(lfg, args.ema_decay) if args.use_ema else None
    register_checkpoint_hooks(accelerator, {MODEL_FOLDER: lfg}, {MODEL_FOLDER: ema} if ema else None)
    lfg, optimizer, dataloader, lr_scheduler = accelerator.prepare(lfg, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    logger.info(f"LFG training at {resolution} px: {len(pairs)} videos, {max_steps} steps, batch {batch_size}")

    def training_step(batch, step_info):
        with accelerator.autocast():
            losses = lfg_loss(
                lfg, perceptual, batch["source"], batch["driving"],
                equivariance_shift_weight=args.equivariance_shift_weight,
                equivariance_affine_weight=args.equivariance_affine_weight,
                sigma_affine=args.sigma_affine, sigma_tps=args.sigma_tps,
                pixel_weight=args.pixel_loss_weight, lip_weight=args.lip_loss_weight,
                lip_masks=lip_region_masks(batch["driving_lip_box"], resolution, args.lip_box_margin) if use_lips else None,
            )
        accelerator.backward(losses.loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(lfg.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {
            "loss": losses.loss.detach().item(),
            "perceptual": losses.perceptual.detach().item(),
            "equivariance_shift": losses.equivariance_shift.detach().item(),
            "equivariance_affine": losses.equivariance_affine.detach().item(),
            "pixel": losses.pixel.detach().item(),
            "lip": losses.lip.detach().item(),
            "lr": lr_scheduler.get_last_lr()[0],
        }

    result = run_training(
        accelerator, args, dataloader, sampler, training_step, models=[lfg],
        ema_updates=[(ema, lfg)] if ema else (),
        validation=lambda step: log_validation(lfg, dataset, args, accelerator, step),
    )
    accelerator.wait_for_everyone()
    save_final_model(accelerator, lfg, args.output_dir, MODEL_FOLDER, ema)
    if args.push_to_hub and accelerator.is_main_process:
        push_to_hub(args, "DAWN latent flow generator (LFG)",
                    f"Trained with `training/train_lfg.py` for {result.global_step} steps on `{args.dataset_name_or_path}`; "
                    f"load with `LFGAutoencoder.from_pretrained(repo, subfolder='{MODEL_FOLDER}')`.", tags=["lfg"])
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
