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
import math
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_dawn.models.lfg import LFGAutoencoder
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel
from diffusers_dawn.training.a2v_trainer import (
    FLOW_LOSS_WEIGHT,
    LIP_LOSS_WEIGHT,
    NULL_CONDITION_PROBABILITY,
    STAGE_CLIP_LENGTHS,
    A2VBatchSampler,
    A2VClipDataset,
    a2v_batch_loss,
    collate_a2v_clips,
)


logger = get_logger(__name__)

# Official settings (design notes §6.2): batch 20 (stage 1) / 40 (stage 2), Adam 2e-4 (0.9, 0.99), clip 2.0.
DEFAULT_BATCH_SIZE = {1: 20, 2: 40}
UNET_FOLDER = "unet"
EMA_STATE_NAME = "ema_state.pt"


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
    data.add_argument("--dataloader_num_workers", type=int, default=0)

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

    training = parser.add_argument_group("optimisation")
    training.add_argument("--output_dir", required=True)
    training.add_argument("--seed", type=int, default=1234)
    training.add_argument("--train_batch_size", type=int, default=None, help="Per device; default 20 / 40 by stage.")
    training.add_argument("--num_train_epochs", type=int, default=12500)
    training.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    training.add_argument("--gradient_accumulation_steps", type=int, default=1)
    training.add_argument("--gradient_checkpointing", action="store_true")
    training.add_argument("--learning_rate", type=float, default=2e-4)
    training.add_argument("--adam_beta1", type=float, default=0.9)
    training.add_argument("--adam_beta2", type=float, default=0.99)
    training.add_argument("--adam_weight_decay", type=float, default=0.0)
    training.add_argument("--adam_epsilon", type=float, default=1e-8)
    training.add_argument("--lr_scheduler", default="cosine", help="A diffusers `get_scheduler` name.")
    training.add_argument("--lr_warmup_steps", type=int, default=0)
    training.add_argument("--max_grad_norm", type=float, default=2.0)
    training.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    training.add_argument("--use_ema", action="store_true")
    training.add_argument("--ema_decay", type=float, default=0.9999)

    bookkeeping = parser.add_argument_group("checkpoints, validation, logging")
    bookkeeping.add_argument("--checkpointing_steps", type=int, default=500)
    bookkeeping.add_argument("--checkpoints_total_limit", type=int, default=None)
    bookkeeping.add_argument("--resume_from_checkpoint", default=None, help='A checkpoint folder or "latest".')
    bookkeeping.add_argument("--validation_steps", type=int, default=None, help="Write a validation video every N.")
    bookkeeping.add_argument("--validation_video_index", type=int, default=0)
    bookkeeping.add_argument("--validation_frames", type=int, default=50)
    bookkeeping.add_argument("--validation_inference_steps", type=int, default=20)
    bookkeeping.add_argument("--report_to", default="tensorboard")
    bookkeeping.add_argument("--logging_dir", default="logs")
    bookkeeping.add_argument("--push_to_hub", action="store_true")
    bookkeeping.add_argument("--hub_model_id", default=None)
    bookkeeping.add_argument("--hub_token", default=None)
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
    if args.stage == 2 and args.init_from is None and not getattr(args, "lora", False):
        raise ValueError("stage 2 starts from the stage-1 U-Net: pass --init_from STAGE1_OUTPUT_DIR (or a checkpoint)")
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

    row = dataset[args.validation_video_index]
    frames = min(args.validation_frames, int(row["num_frames"]))
    image = image_to_tensor(row["frames"][0])
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

    model_card_tags = ["dawn", "talking-head", "audio-to-video", "diffusers"]

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
        unet.save_pretrained(folder)
        return folder

    hub_allow_patterns = None  # the whole `unet` folder

    def model_card_description(self, args) -> str:
        return (
            f"A2V-FDM U-Net of DAWN trained with `training/train_a2v.py` (curriculum stage {args.stage}) on "
            f"`{args.dataset_name_or_path}` for {args.max_train_steps} steps. Load it with "
            "`UNet3DFlowModel.from_pretrained(repo_id)` and pass it to `DAWNPipeline` as `unet`."
        )


def _rotate_checkpoints(output_dir: str, limit: Optional[int]) -> None:
    """Keeps room for one new checkpoint within `limit`."""
    if limit is None:
        return
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    for folder in checkpoints[: max(0, len(checkpoints) - limit + 1)]:
        shutil.rmtree(folder)


def _find_resume_checkpoint(args) -> Optional[Path]:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint != "latest":
        path = Path(args.resume_from_checkpoint)
        if not path.is_absolute() and not path.exists():
            path = Path(args.output_dir) / path
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such checkpoint")
        return path
    checkpoints = sorted(Path(args.output_dir).glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def train(args, adapter: Optional[A2VModelAdapter] = None) -> List[float]:
    """Runs the training loop; returns the loss of every optimisation step run in this call."""
    from diffusers_dawn.training.dataset import load_dawn_dataset

    adapter = adapter or A2VModelAdapter()
    project_config = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to in (None, "none") else args.report_to,
        project_config=project_config,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    lfg = LFGAutoencoder.from_pretrained(args.pretrained_model_name_or_path, subfolder="lfg", revision=args.revision)
    lfg.requires_grad_(False).eval().to(accelerator.device)
    noise_scheduler = load_noise_scheduler(args)
    unet = load_unet(args)
    parameters = adapter.prepare(unet, args)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema_unet = None
    if args.use_ema:
        # EMA of the trained parameters only (all of the U-Net, or just the LoRA matrices).
        ema_unet = EMAModel(parameters, decay=args.ema_decay)

    dataset = load_dawn_dataset(args.dataset_name_or_path)
    latent_downsampling = 2 ** lfg.config.num_down_blocks
    clip_dataset = A2VClipDataset(dataset, stage=args.stage, latent_downsampling=latent_downsampling)
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
    updates_per_epoch = math.ceil(len(batch_sampler) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    random_state = RandomState(args.seed + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(random_state)
    if ema_unet is not None:
        ema_unet.to(accelerator.device)

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                adapter.save_checkpoint_model(accelerator.unwrap_model(model), output_dir)
            if ema_unet is not None:
                torch.save(ema_unet.state_dict(), os.path.join(output_dir, EMA_STATE_NAME))
        # The models are written by the hook; do not save them a second time.
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            adapter.load_checkpoint_model(accelerator.unwrap_model(models.pop()), input_dir)
        if ema_unet is not None:
            ema_unet.load_state_dict(torch.load(os.path.join(input_dir, EMA_STATE_NAME), weights_only=False))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
    if accelerator.is_main_process and accelerator.log_with:
        tracker_config = {key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool))}
        accelerator.init_trackers(f"dawn-a2v-stage{args.stage}", config=tracker_config)

    global_step = 0
    first_epoch = 0
    resume_batches = 0
    checkpoint = _find_resume_checkpoint(args)
    if args.resume_from_checkpoint is not None and checkpoint is None:
        logger.info("no checkpoint to resume from; starting a new run")
    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = int(checkpoint.name.split("-")[1])
        first_epoch = global_step // updates_per_epoch
        resume_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"stage {args.stage}: {len(clip_dataset)} videos, clips of {args.clip_length[0]}-{args.clip_length[1]} frames, "
        f"batch {total_batch}, {args.max_train_steps} steps"
    )
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    losses: List[float] = []
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        epoch_loader = dataloader
        if epoch == first_epoch and resume_batches:
            epoch_loader = accelerator.skip_first_batches(dataloader, resume_batches)
        # Accelerate's loaders pass their own epoch counter to the batch sampler on every iteration; set it to the
        # true epoch so a resumed run draws the same clips as an uninterrupted one. (With several processes the
        # sampler sits inside a shard wrapper that does not forward the epoch, hence the direct call too.)
        epoch_loader.set_epoch(epoch)
        batch_sampler.set_epoch(epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(unet):
                batch = {key: value.to(accelerator.device) for key, value in batch.items()}
                with accelerator.autocast():
                    output = a2v_batch_loss(
                        unet,
                        lfg,
                        noise_scheduler,
                        batch,
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
                    skip_update = (
                        args.skip_nan_gradients and accelerator.scaler is None and not torch.isfinite(grad_norm)
                    )
                if skip_update:
                    logger.warning(f"step {global_step + 1}: non-finite gradients, update skipped")
                else:
                    optimizer.step()
                    lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                global_step += 1
                progress.update(1)
                if ema_unet is not None:
                    ema_unet.step(parameters)
                loss = accelerator.gather(output.loss.detach()[None]).mean().item()
                losses.append(loss)
                logs = {
                    "loss": loss,
                    "simple_loss": output.simple_loss.item(),
                    "lip_loss": output.lip_loss.item(),
                    "flow_loss": output.flow_loss.item(),
                    "lr": lr_scheduler.get_last_lr()[0],
                }
                progress.set_postfix(loss=f"{loss:.4f}")
                accelerator.log(logs, step=global_step)

                if global_step % args.checkpointing_steps == 0:
                    if accelerator.is_main_process:
                        _rotate_checkpoints(args.output_dir, args.checkpoints_total_limit)
                    accelerator.wait_for_everyone()
                    accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
                if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    if ema_unet is not None:
                        ema_unet.store(parameters)
                        ema_unet.copy_to(parameters)
                    log_validation(args, accelerator, unet, lfg, noise_scheduler, dataset, global_step)
                    if ema_unet is not None:
                        ema_unet.restore(parameters)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema_unet is not None:
            ema_unet.copy_to(parameters)
        folder = adapter.save_final(final_unet, args)
        if args.push_to_hub:
            push_folder(args, folder, adapter)
    accelerator.end_training()
    return losses


def push_folder(args, folder: Path, adapter: A2VModelAdapter) -> str:
    """Uploads the saved model (the `unet` folder, or the LoRA file) with a model card; returns the repository id."""
    from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

    repo_id = args.hub_model_id or Path(args.output_dir).name
    repo_id = create_repo(repo_id, exist_ok=True, token=args.hub_token).repo_id
    card_data = ModelCardData(library_name="diffusers", tags=adapter.model_card_tags)
    title = repo_id.split("/")[-1]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{adapter.model_card_description(args)}\n")
    card.save(os.path.join(folder, "README.md"))
    upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=f"DAWN A2V training, step {args.max_train_steps}",
        token=args.hub_token,
        allow_patterns=adapter.hub_allow_patterns,
    )
    logger.info(f"pushed {folder} to {repo_id}")
    return repo_id


def main(argv: Optional[List[str]] = None) -> List[float]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
