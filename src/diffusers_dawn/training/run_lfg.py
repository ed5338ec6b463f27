"""
The LFG training run: [`LFGTrainingConfig`] (the settings of `training/train_lfg.py`) and [`train_lfg`], which trains
an `LFGAutoencoder` with the objective and data of [`~training.lfg_trainer`] through the shared loop of
[`~training.accelerate_utils`] and saves it to `OUTPUT_DIR/lfg`.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..models.lfg import LFGAutoencoder
from ..processing.image import image_to_tensor
from ..processing.video import export_to_video_with_audio
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
from .dataset import decode_frame, keep_frames_encoded, load_dawn_dataset
from .lfg_trainer import (
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


logger = logging.getLogger(__name__)
MODEL_FOLDER = "lfg"
DATA = "data and model"
OPTIMISATION = "optimisation (LFG)"


@dataclass(kw_only=True)
class LFGTrainingConfig(TrainingConfig):
    """
    Settings of an LFG training; the defaults are the official 128-px run's (the 256-px run used lr 6e-4, batch 20,
    400 epochs).
    """

    dataset_name_or_path: str = option(help="Dataset folder (save_to_disk) or Hub id.", group=DATA)
    pretrained_model_name_or_path: Optional[str] = option(
        None, group=DATA, help="LFG folder or DAWN pipeline folder / Hub id (subfolder `lfg`) to start from."
    )
    lfg_config: Optional[str] = option(None, group=DATA, help="JSON file of LFGAutoencoder arguments (new model).")
    num_repeats: int = option(100, group=DATA, help="Passes over the videos per epoch (official 100).")
    no_augment: bool = option(False, group=DATA, help="No flips / colour jitter.")
    vgg_weights: Optional[str] = option(
        None, group=OBJECTIVE_GROUP, help="torchvision vgg19 state dict (.pth/.safetensors)."
    )
    perceptual_scales: List[float] = option(group=OBJECTIVE_GROUP, default_factory=lambda: list(PERCEPTUAL_SCALES))
    equivariance_shift_weight: float = option(EQUIVARIANCE_SHIFT_WEIGHT, group=OBJECTIVE_GROUP)
    equivariance_affine_weight: float = option(EQUIVARIANCE_AFFINE_WEIGHT, group=OBJECTIVE_GROUP)
    sigma_affine: float = option(SIGMA_AFFINE, group=OBJECTIVE_GROUP)
    sigma_tps: float = option(SIGMA_TPS, group=OBJECTIVE_GROUP)
    pixel_loss_weight: float = option(0.0, group=OBJECTIVE_GROUP, help="Weight of a pixel L1 loss (0: off).")
    lip_loss_weight: float = option(
        0.0, group=OBJECTIVE_GROUP,
        help="Weight of an L1 loss inside the driving frame's lip box (0: off; needs `lip_box`).",
    )
    lip_box_margin: float = option(LIP_BOX_MARGIN, group=OBJECTIVE_GROUP,
                                   help="Lip box enlarged on each side by this fraction of its height.")
    adam_beta1: float = option(0.5, group=OPTIMISATION)
    adam_beta2: float = option(0.999, group=OPTIMISATION)
    lr_min: float = option(2e-6, group=OPTIMISATION, help="End of the cosine schedule.")
    max_grad_norm: Optional[float] = option(None, group=OPTIMISATION, help="Off by default, as officially.")
    validation_video_index: int = option(0, group=VALIDATION_GROUP)
    validation_frames: int = option(25, group=VALIDATION_GROUP)
    learning_rate: float = option(4e-4)
    train_batch_size: Optional[int] = option(82, help="Batch size per device.")
    num_train_epochs: int = option(1000)

    def check(self) -> None:
        super().check()
        if self.lfg_config and self.pretrained_model_name_or_path:
            raise ValueError(
                "give --lfg_config (new model) or --pretrained_model_name_or_path (start from weights), not both"
            )


def load_lfg(config: LFGTrainingConfig) -> LFGAutoencoder:
    """The LFG to train: from `pretrained_model_name_or_path`, or new (default or `lfg_config` architecture)."""
    if config.pretrained_model_name_or_path:
        path = Path(config.pretrained_model_name_or_path)
        subfolder = MODEL_FOLDER if (path / MODEL_FOLDER).is_dir() or not path.exists() else None
        return LFGAutoencoder.from_pretrained(config.pretrained_model_name_or_path, subfolder=subfolder)
    architecture = json.loads(Path(config.lfg_config).read_text()) if config.lfg_config else {}
    architecture = {key: value for key, value in architecture.items() if not key.startswith("_")}
    return LFGAutoencoder(**architecture)


@torch.no_grad()
def log_validation(lfg, dataset, config: LFGTrainingConfig, accelerator, step: int) -> Path:
    """
    Reconstructs the first `validation_frames` frames of one video from its first frame; writes a PNG grid (top:
    real, bottom: reconstruction) and a side-by-side MP4 to `OUTPUT_DIR/validation/`, and logs the grid.
    """
    # Only the frames used are decoded (a row holds the whole video).
    columns = [name for name in ("frames", "num_frames", "audio") if name in dataset.column_names]
    row = keep_frames_encoded(dataset.select_columns(columns))[config.validation_video_index % len(dataset)]
    count = min(config.validation_frames, row["num_frames"])
    frames = torch.cat([image_to_tensor(decode_frame(frame)) for frame in row["frames"][:count]]).to(accelerator.device)
    model = accelerator.unwrap_model(lfg)
    was_training = model.training
    model.eval()
    prediction = torch.cat([model(frames[:1], frames[start : start + 8]).prediction
                            for start in range(0, count, 8)]).clamp(0, 1)
    model.train(was_training)
    error = (prediction - frames).abs().mean().item()
    folder = Path(config.output_dir) / "validation"
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


def train_lfg(config: LFGTrainingConfig) -> TrainingResult:
    """Trains the LFG as `config` says, saves it to `OUTPUT_DIR/lfg` and returns what the run did."""
    accelerator = create_accelerator(config)

    use_lips = config.lip_loss_weight > 0
    dataset = load_dawn_dataset(config.dataset_name_or_path,
                                columns=("frames", "num_frames") + (("lip_box",) if use_lips else ()))
    lfg = load_lfg(config)
    lfg.train()
    if config.gradient_checkpointing:
        lfg.enable_gradient_checkpointing()
    resolution = decode_frame(keep_frames_encoded(dataset.select_columns(["frames"]))[0]["frames"][0]).size[0]
    perceptual = PerceptualPyramidLoss(Vgg19Features.from_imagenet(config.vgg_weights), config.perceptual_scales)
    perceptual.to(accelerator.device)

    pairs = LFGFramePairDataset(dataset, augment=not config.no_augment, with_lip_boxes=use_lips)
    sampler = EpochSampler(len(pairs), seed=config.seed, repeats=config.num_repeats)
    batch_size = min(config.train_batch_size, len(sampler))
    if batch_size < config.train_batch_size:
        logger.warning(f"Only {len(sampler)} samples per epoch: batch size {batch_size} instead of {config.train_batch_size}")
    dataloader = build_dataloader(pairs, sampler, batch_size, collate_frame_pairs, config.dataloader_num_workers)

    optimizer = torch.optim.Adam(lfg.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2))
    max_steps = total_train_steps(config, dataloader)
    lr_scheduler = create_lr_scheduler(config, optimizer, max_steps, accelerator.num_processes, config.lr_min)
    ema = create_ema(lfg, config.ema_decay) if config.use_ema else None
    register_checkpoint_hooks(accelerator, {MODEL_FOLDER: lfg}, {MODEL_FOLDER: ema} if ema else None)
    lfg, optimizer, dataloader, lr_scheduler = accelerator.prepare(lfg, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    logger.info(f"LFG training at {resolution} px: {len(pairs)} videos, {max_steps} steps, batch {batch_size}")

    def training_step(batch, step_info):
        with accelerator.autocast():
            losses = lfg_loss(
                lfg, perceptual, batch["source"], batch["driving"],
                equivariance_shift_weight=config.equivariance_shift_weight,
                equivariance_affine_weight=config.equivariance_affine_weight,
                sigma_affine=config.sigma_affine, sigma_tps=config.sigma_tps,
                pixel_weight=config.pixel_loss_weight, lip_weight=config.lip_loss_weight,
                lip_masks=lip_region_masks(batch["driving_lip_box"], resolution, config.lip_box_margin) if use_lips else None,
            )
        accelerator.backward(losses.loss)
        if accelerator.sync_gradients and config.max_grad_norm:
            accelerator.clip_grad_norm_(lfg.parameters(), config.max_grad_norm)
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
        accelerator, config, dataloader, sampler, training_step, models=[lfg],
        ema_updates=[(ema, lfg)] if ema else (),
        validation=lambda step: log_validation(lfg, dataset, config, accelerator, step),
    )
    accelerator.wait_for_everyone()
    save_final_model(accelerator, lfg, config.output_dir, MODEL_FOLDER, ema)
    if config.push_to_hub and accelerator.is_main_process:
        push_to_hub(config, "DAWN latent flow generator (LFG)",
                    f"Trained with `training/train_lfg.py` for {result.global_step} steps on "
                    f"`{config.dataset_name_or_path}`; load with "
                    f"`LFGAutoencoder.from_pretrained(repo, subfolder='{MODEL_FOLDER}')`.", tags=["lfg"])
    accelerator.end_training()
    return result
