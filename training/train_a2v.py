#!/usr/bin/env python
"""
Train DAWN's audio-to-video flow diffusion model (A2V-FDM) with the two-stage curriculum (TCL).

    # Stage 1: 20-frame clips, reference = first frame of the clip.
    accelerate launch training/train_a2v.py --stage 1 --pretrained_model_name_or_path DAWN_DIR \
        --dataset_name_or_path data/hdtf128 --output_dir runs/a2v-s1 --mixed_precision fp16
    # Stage 2: 30-40-frame clips, reference = random frame of the whole video, initialised from stage 1.
    accelerate launch training/train_a2v.py --stage 2 --init_from runs/a2v-s1 --pretrained_model_name_or_path DAWN_DIR \
        --dataset_name_or_path data/hdtf128 --output_dir runs/a2v-s2

`--pretrained_model_name_or_path` is a DAWN pipeline folder or Hub repository: its frozen `lfg` gives the motion
targets, its `scheduler` the noise schedule, and its `unet` config the architecture (stage 1 starts from random
weights unless `--init_from` is given). The dataset is the output of `training/preprocess.py`.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from diffusers_dawn.models.lfg import LFGAutoencoder
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel
from diffusers_dawn.training.a2v_trainer import (
    FLOW_LOSS_WEIGHT,
    LIP_LOSS_WEIGHT,
    NULL_CONDITION_PROBABILITY,
    STAGE_CLIP_LENGTHS,
    A2VBatchSampler,
    A2VClipDataset,
    MotionTargetCache,
    a2v_batch_loss,
    collate_a2v_clips,
)
from diffusers_dawn.training.accelerate_utils import (
    add_common_training_args,
    check_common_args,
    create_accelerator,
    create_lr_scheduler,
    push_to_hub,
    register_checkpoint_hooks,
    run_training,
    total_train_steps,
)
from diffusers_dawn.utils.io import atomic_folder


logger = logging.getLogger("train_a2v")

# Official settings (design notes §6.2): batch 20 (stage 1) / 40 (stage 2), Adam 2e-4 (0.9, 0.99), clip 2.0.
DEFAULT_BATCH_SIZE = {1: 20, 2: 40}
UNET_FOLDER = "unet"


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and models")
    data.add_argument("--stage", type=int, choices=(1, 2), required=True, help="Curriculum stage.")
    data.add_argument("--dataset_name_or_path", required=True, help="Dataset folder (save_to_disk) or Hub id.")
    data.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="DAWN pipeline folder or Hub id with `lfg`, `scheduler` and `unet` subfolders.",
    )
    data.add_argument("--revision", default=None, help="Revision of the pretrained model on the Hub.")
    data.add_argument(
        "--init_from",
        default=None,
        help="U-Net weights to start from: a saved U-Net folder, a training output folder or a checkpoint folder. "
        "Required for stage 2 (initialised from stage 1).",
    )
    data.add_argument("--clips_per_video", type=int, default=1, help="Clips drawn from each video per epoch.")
    data.add_argument("--min_clip_length", type=int, default=None, help="Override the stage's clip lengths.")
    data.add_argument("--max_clip_length", type=int, default=None)
    data.add_argument(
        "--motion_target_cache_mb",
        type=int,
        default=1024,
        help="Keep the frozen LFG's motion targets of seen (reference, frame) pairs in memory up to this size, so "
        "each pair is estimated once, not at every visit (0 disables).",
    )

    objective = parser.add_argument_group("objective")
    objective.add_argument("--null_condition_probability", type=float, default=NULL_CONDITION_PROBABILITY)
    objective.add_argument("--lip_loss_weight", type=float, default=LIP_LOSS_WEIGHT)
    objective.add_argument("--flow_loss_weight", type=float, default=FLOW_LOSS_WEIGHT)
    objective.add_argument(
        "--skip_nan_gradients",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Skip updates whose gradients are not finite (default: on in stage 2, as the official stage-2 script).",
    )

    optimisation = parser.add_argument_group("optimisation (A2V-FDM)")
    optimisation.add_argument("--adam_beta1", type=float, default=0.9)
    optimisation.add_argument("--adam_beta2", type=float, default=0.99)
    optimisation.add_argument("--adam_weight_decay", type=float, default=0.0)
    optimisation.add_argument("--adam_epsilon", type=float, default=1e-8)
    optimisation.add_argument("--lr_min", type=float, default=1e-6, help="End of the cosine schedule.")
    optimisation.add_argument("--max_grad_norm", type=float, default=2.0)

    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_video_index", type=int, default=0)
    validation.add_argument("--validation_frames", type=int, default=50)
    validation.add_argument("--validation_inference_steps", type=int, default=20)
    # Official: Adam 2e-4, 12500 passes over the data; the batch size (20 / 40) depends on the stage.
    add_common_training_args(parser, learning_rate=2e-4, num_train_epochs=12500, train_batch_size=None)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return finalize_args(build_parser().parse_args(argv))


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills stage-dependent defaults and rejects inconsistent options with a message that says what to do."""
    if args.train_batch_size is None:
        args.train_batch_size = DEFAULT_BATCH_SIZE[args.stage]
    if args.skip_nan_gradients is None:
        args.skip_nan_gradients = args.stage == 2
    low, high = STAGE_CLIP_LENGTHS[args.stage]
    args.clip_length = (args.min_clip_length or low, args.max_clip_length or high)
    if args.motion_target_cache_mb < 0:
        raise ValueError("--motion_target_cache_mb must be 0 (no cache) or a positive size in MiB")
    if args.stage == 2 and args.init_from is None and not getattr(args, "lora", False):
        raise ValueError("stage 2 starts from the stage-1 U-Net: pass --init_from STAGE1_OUTPUT_DIR (or a checkpoint)")
    check_common_args(args)
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------
def load_noise_scheduler(args):
    from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

    return DAWNDDIMScheduler.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="scheduler", revision=args.revision
    )


def resolve_unet_folder(path: str) -> Path:
    """
    The U-Net folder behind `--init_from`: a saved U-Net (config.json), a training output folder (`unet/`), a
    checkpoint (`checkpoint-N/unet/`) or a folder of checkpoints (the latest one).
    """
    root = Path(path)
    candidates = [root, root / UNET_FOLDER]
    checkpoints = sorted(root.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    if checkpoints:
        candidates.append(checkpoints[-1] / UNET_FOLDER)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"--init_from {path}: no U-Net found (looked for config.json in {', '.join(str(c) for c in candidates)}); "
        "pass a U-Net saved with save_pretrained, the output_dir of a training run, or one of its checkpoints"
    )


def load_unet(args) -> UNet3DFlowModel:
    if args.init_from is not None:
        return UNet3DFlowModel.from_pretrained(resolve_unet_folder(args.init_from))
    if getattr(args, "lora", False) or args.stage == 2:
        return UNet3DFlowModel.from_pretrained(
            args.pretrained_model_name_or_path, subfolder=UNET_FOLDER, revision=args.revision
        )
    # Stage 1 from scratch: only the architecture comes from the pretrained model.
    config = UNet3DFlowModel.load_config(args.pretrained_model_name_or_path, subfolder=UNET_FOLDER, revision=args.revision)
    return UNet3DFlowModel.from_config(config)


class RandomState:
    """The generator behind timesteps, noise and condition dropout, saved in every checkpoint for exact resumes."""

    def __init__(self, seed: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------
def log_validation(args, accelerator, unet, lfg, noise_scheduler, dataset, step: int) -> Path:
    """Generates the first `--validation_frames` frames of a dataset video from its first frame and writes an MP4."""
    from diffusers_dawn.pipelines.pipeline_dawn import DAWNPipeline
    from diffusers_dawn.processing.image import image_to_tensor
    from diffusers_dawn.processing.video import export_to_video_with_audio
    from diffusers_dawn.training.dataset import decode_frame, keep_frames_encoded

    # Only the source frame is decoded (a row holds the whole video).
    row = keep_frames_encoded(dataset)[args.validation_video_index % len(dataset)]
    frames = min(args.validation_frames, int(row["num_frames"]))
    image = image_to_tensor(decode_frame(row["frames"][0]))
    pose = np.asarray(row["pose"], dtype=np.float64)[:frames]
    blink = np.asarray(row["eye_ratios"], dtype=np.float64)[:frames]
    pipeline = DAWNPipeline(
        lfg=lfg,
        unet=accelerator.unwrap_model(unet),
        pbnet_pose=None,
        pbnet_blink=None,
        scheduler=noise_scheduler,
        audio_encoder=None,
        feature_extractor=None,
        resolution=int(row["resolution"]),
        crop="none",
    )
    pipeline.set_progress_bar_config(disable=True)
    video = pipeline(
        image=image,
        face_box=np.asarray(row["face_box"], dtype=np.float64)[0],
        source_pose=pose[0],
        source_blink=blink[0],
        audio_features=np.asarray(row["hubert"], dtype=np.float32)[:frames],
        pose=pose,
        blink=blink,
        num_inference_steps=args.validation_inference_steps,
        generator=torch.Generator(device=accelerator.device).manual_seed(args.seed),
        output_type="np",
    ).frames[0]
    audio = np.asarray(row["audio"], dtype=np.float32)[: int(frames / 25 * 16000)]
    path = Path(args.output_dir) / "validation" / f"step-{step:07d}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_to_video_with_audio(video, str(path), fps=25, audio=audio)
    logger.info(f"validation video written to {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
class A2VModelAdapter:
    """What differs between full fine-tuning (this script) and LoRA (`train_lora.py`): trainables and saving."""

    model_card_tags = ["audio-to-video"]

    def prepare(self, unet: UNet3DFlowModel, args) -> List[torch.nn.Parameter]:
        unet.requires_grad_(True)
        # The official face-location encoder is never optimised (it sits outside the trained module).
        unet.face_location_encoder.requires_grad_(False)
        return [parameter for parameter in unet.parameters() if parameter.requires_grad]

    def save_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        unet.save_pretrained(os.path.join(folder, UNET_FOLDER))

    def load_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        loaded = UNet3DFlowModel.from_pretrained(os.path.join(folder, UNET_FOLDER))
        unet.load_state_dict(loaded.state_dict())

    def save_final(self, unet: UNet3DFlowModel, args) -> Path:
        folder = Path(args.output_dir) / UNET_FOLDER
        with atomic_folder(folder) as partial:
            unet.save_pretrained(partial)
        return folder

    hub_allow_patterns = None  # the whole `unet` folder

    def model_card_description(self, args) -> str:
        return (
            f"A2V-FDM U-Net of DAWN trained with `training/train_a2v.py` (curriculum stage {args.stage}) on "
            f"`{args.dataset_name_or_path}` for {args.max_train_steps} steps. Load it with "
            "`UNet3DFlowModel.from_pretrained(repo_id)` and pass it to `DAWNPipeline` as `unet`."
        )


def train(args, adapter: Optional[A2VModelAdapter] = None) -> List[float]:
    """Runs the training loop; returns the loss of every optimisation step run in this call."""
    from diffusers_dawn.training.dataset import load_dawn_dataset

    adapter = adapter or A2VModelAdapter()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    accelerator = create_accelerator(args)

    lfg = LFGAutoencoder.from_pretrained(args.pretrained_model_name_or_path, subfolder="lfg", revision=args.revision)
    lfg.requires_grad_(False).eval().to(accelerator.device)
    noise_scheduler = load_noise_scheduler(args)
    unet = load_unet(args)
    parameters = adapter.prepare(unet, args)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    dataset = load_dawn_dataset(args.dataset_name_or_path)
    clip_dataset = A2VClipDataset(dataset, stage=args.stage, latent_downsampling=lfg.latent_downsampling)
    batch_sampler = A2VBatchSampler(
        len(clip_dataset),
        args.train_batch_size,
        args.stage,
        seed=args.seed,
        clips_per_video=args.clips_per_video,
        clip_length=args.clip_length,
    )
    dataloader = torch.utils.data.DataLoader(
        clip_dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_a2v_clips,
        num_workers=args.dataloader_num_workers,
    )

    optimizer = torch.optim.Adam(
        parameters,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    args.max_train_steps = total_train_steps(args, dataloader)
    lr_scheduler = create_lr_scheduler(args, optimizer, args.max_train_steps, accelerator.num_processes, args.lr_min)
    register_checkpoint_hooks(
        accelerator,
        {UNET_FOLDER: unet},
        save_model=lambda name, model, folder: adapter.save_checkpoint_model(model, folder),
        load_model=lambda name, model, folder: adapter.load_checkpoint_model(model, folder),
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    # Timesteps, noise and condition dropout come from this generator; checkpoints store its state.
    random_state = RandomState(args.seed + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(random_state)
    ema_unet = None
    if args.use_ema:
        # EMA of the trained parameters only (all of the U-Net, or just the LoRA matrices).
        ema_unet = EMAModel(parameters, decay=args.ema_decay)
        ema_unet.to(accelerator.device)
        accelerator.register_for_checkpointing(ema_unet)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"stage {args.stage}: {len(clip_dataset)} videos, clips of {args.clip_length[0]}-{args.clip_length[1]} frames, "
        f"batch {total_batch}, {args.max_train_steps} steps"
    )

    motion_cache = MotionTargetCache(args.motion_target_cache_mb * 2**20) if args.motion_target_cache_mb > 0 else None

    def training_step(batch, step_info):
        unet.train()
        with accelerator.autocast():
            output = a2v_batch_loss(
                unet,
                lfg,
                noise_scheduler,
                batch,
                motion_cache=motion_cache,
                null_condition_probability=args.null_condition_probability,
                lip_loss_weight=args.lip_loss_weight,
                flow_loss_weight=args.flow_loss_weight,
                generator=random_state.generator,
            )
        accelerator.backward(output.loss)
        skip_update = False
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
            # Under fp16 the grad scaler already skips non-finite steps.
            skip_update = args.skip_nan_gradients and accelerator.scaler is None and not torch.isfinite(grad_norm)
        if skip_update:
            logger.warning(f"step {step_info.global_step + 1}: non-finite gradients, update skipped")
        else:
            optimizer.step()
            lr_scheduler.step()
        optimizer.zero_grad()
        return {
            "loss": accelerator.gather(output.loss.detach()[None]).mean().item(),
            "simple_loss": output.simple_loss.item(),
            "lip_loss": output.lip_loss.item(),
            "flow_loss": output.flow_loss.item(),
            "lr": lr_scheduler.get_last_lr()[0],
        }

    def validation(step: int) -> None:
        if ema_unet is not None:
            ema_unet.store(parameters)
            ema_unet.copy_to(parameters)
        log_validation(args, accelerator, unet, lfg, noise_scheduler, dataset, step)
        if ema_unet is not None:
            ema_unet.restore(parameters)

    result = run_training(
        accelerator, args, dataloader, batch_sampler, training_step, models=[unet],
        ema_updates=[(ema_unet, parameters)] if ema_unet is not None else (),
        validation=validation,
    )
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema_unet is not None:
            ema_unet.copy_to(parameters)
        folder = adapter.save_final(final_unet, args)
        if args.push_to_hub:
            push_to_hub(args, Path(args.hub_model_id or args.output_dir).name, adapter.model_card_description(args),
                        tags=adapter.model_card_tags, folder=str(folder), allow_patterns=adapter.hub_allow_patterns)
    accelerator.end_training()
    return [step["loss"] for step in result.history]


def main(argv: Optional[List[str]] = None) -> List[float]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
