"""
The A2V-FDM training run with the two-stage curriculum (TCL): [`A2VTrainingConfig`] (the settings of
`training/train_a2v.py`) and [`train_a2v`], which trains the U-Net with the objective and clips of
[`~training.a2v_trainer`] through the shared loop of [`~training.accelerate_utils`].

What is trained and saved comes from an [`A2VModelAdapter`]: the default one fine-tunes the whole U-Net and saves it
to `OUTPUT_DIR/unet`; [`~training.run_lora.LoraModelAdapter`] trains and saves only a LoRA adapter.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..models.lfg import LFGAutoencoder
from ..models.unet_3d_flow import UNet3DFlowModel
from ..utils.io import atomic_folder
from .a2v_trainer import (
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
from .accelerate_utils import (
    TrainingResult,
    build_dataloader,
    create_accelerator,
    create_lr_scheduler,
    push_to_hub,
    register_checkpoint_hooks,
    run_training,
    total_train_steps,
)
from .config import OBJECTIVE_GROUP, VALIDATION_GROUP, TrainingConfig, option


logger = logging.getLogger(__name__)

# Official settings (design notes §6.2): batch 20 (stage 1) / 40 (stage 2), Adam 2e-4 (0.9, 0.99), clip 2.0.
DEFAULT_BATCH_SIZE = {1: 20, 2: 40}
UNET_FOLDER = "unet"
DATA = "data and models"
OPTIMISATION = "optimisation (A2V-FDM)"


@dataclass(kw_only=True)
class A2VTrainingConfig(TrainingConfig):
    """
    Settings of an A2V-FDM training stage; the defaults are the official ones (Adam 2e-4, 12500 passes over the data;
    the batch size, 20 or 40, and whether non-finite updates are skipped depend on the stage when not given).
    """

    stage: int = option(choices=(1, 2), group=DATA, help="Curriculum stage.")
    dataset_name_or_path: str = option(help="Dataset folder (save_to_disk) or Hub id.", group=DATA)
    pretrained_model_name_or_path: str = option(
        group=DATA, help="DAWN pipeline folder or Hub id with `lfg`, `scheduler` and `unet` subfolders."
    )
    revision: Optional[str] = option(None, group=DATA, help="Revision of the pretrained model on the Hub.")
    init_from: Optional[str] = option(
        None, group=DATA,
        help="U-Net weights to start from: a saved U-Net folder, a training output folder or a checkpoint folder. "
        "Required for stage 2 (initialised from stage 1).",
    )
    clips_per_video: int = option(1, group=DATA, help="Clips drawn from each video per epoch.")
    min_clip_length: Optional[int] = option(None, group=DATA, help="Override the stage's clip lengths.")
    max_clip_length: Optional[int] = option(None, group=DATA)
    motion_target_cache_mb: int = option(
        1024, group=DATA,
        help="Keep the frozen LFG's motion targets of seen (reference, frame) pairs in memory up to this size, so "
        "each pair is estimated once, not at every visit (0 disables).",
    )
    null_condition_probability: float = option(NULL_CONDITION_PROBABILITY, group=OBJECTIVE_GROUP)
    lip_loss_weight: float = option(LIP_LOSS_WEIGHT, group=OBJECTIVE_GROUP)
    flow_loss_weight: float = option(FLOW_LOSS_WEIGHT, group=OBJECTIVE_GROUP)
    skip_nan_gradients: Optional[bool] = option(
        None, group=OBJECTIVE_GROUP,
        help="Skip updates whose gradients are not finite (default: on in stage 2, as the official stage-2 script).",
    )
    adam_beta1: float = option(0.9, group=OPTIMISATION)
    adam_beta2: float = option(0.99, group=OPTIMISATION)
    adam_weight_decay: float = option(0.0, group=OPTIMISATION)
    adam_epsilon: float = option(1e-8, group=OPTIMISATION)
    lr_min: float = option(1e-6, group=OPTIMISATION, help="End of the cosine schedule.")
    max_grad_norm: float = option(2.0, group=OPTIMISATION)
    validation_video_index: int = option(0, group=VALIDATION_GROUP)
    validation_frames: int = option(50, group=VALIDATION_GROUP)
    validation_inference_steps: int = option(20, group=VALIDATION_GROUP)
    learning_rate: float = option(2e-4)
    train_batch_size: Optional[int] = option(None, help="Batch size per device.")
    num_train_epochs: int = option(12500)

    def __post_init__(self):
        # Stage-dependent defaults are filled before the checks.
        if self.stage not in STAGE_CLIP_LENGTHS:
            raise ValueError(f"--stage must be 1 or 2 (the two curriculum stages), got {self.stage!r}")
        if self.train_batch_size is None:
            self.train_batch_size = DEFAULT_BATCH_SIZE[self.stage]
        if self.skip_nan_gradients is None:
            self.skip_nan_gradients = self.stage == 2
        super().__post_init__()

    def check(self) -> None:
        if self.motion_target_cache_mb < 0:
            raise ValueError("--motion_target_cache_mb must be 0 (no cache) or a positive size in MiB")
        self.check_model_source()
        super().check()

    def check_model_source(self) -> None:
        """Full training of stage 2 continues the stage-1 U-Net."""
        if self.stage == 2 and self.init_from is None:
            raise ValueError(
                "stage 2 starts from the stage-1 U-Net: pass --init_from STAGE1_OUTPUT_DIR (or a checkpoint)"
            )

    @property
    def clip_length(self) -> Tuple[int, int]:
        """Inclusive clip-length range: the stage's, or the `min_clip_length` / `max_clip_length` overrides."""
        low, high = STAGE_CLIP_LENGTHS[self.stage]
        return (self.min_clip_length or low, self.max_clip_length or high)


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------
def load_noise_scheduler(config: A2VTrainingConfig):
    from ..schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

    return DAWNDDIMScheduler.from_pretrained(
        config.pretrained_model_name_or_path, subfolder="scheduler", revision=config.revision
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


def load_pretrained_unet(config: A2VTrainingConfig) -> UNet3DFlowModel:
    """The U-Net of `--pretrained_model_name_or_path` (subfolder `unet`), weights included."""
    return UNet3DFlowModel.from_pretrained(
        config.pretrained_model_name_or_path, subfolder=UNET_FOLDER, revision=config.revision
    )


class RandomState:
    """The generator behind timesteps, noise and condition dropout, saved in every checkpoint for exact resumes."""

    def __init__(self, seed: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


class A2VModelAdapter:
    """
    What a kind of A2V-FDM training decides about the U-Net: where its starting weights come from, which parameters
    are trained, and how the model goes into checkpoints and into the final output. This one fine-tunes the whole
    U-Net (the curriculum of `training/train_a2v.py`); [`~training.run_lora.LoraModelAdapter`] trains a LoRA adapter.
    """

    model_card_tags = ["audio-to-video"]
    hub_allow_patterns = None  # the whole `unet` folder

    def load_unet(self, config: A2VTrainingConfig) -> UNet3DFlowModel:
        """`--init_from` weights; else the pretrained U-Net in stage 2; else (stage 1) its architecture, new weights."""
        if config.init_from is not None:
            return UNet3DFlowModel.from_pretrained(resolve_unet_folder(config.init_from))
        if config.stage == 2:
            return load_pretrained_unet(config)
        architecture = UNet3DFlowModel.load_config(
            config.pretrained_model_name_or_path, subfolder=UNET_FOLDER, revision=config.revision
        )
        return UNet3DFlowModel.from_config(architecture)

    def prepare(self, unet: UNet3DFlowModel) -> List[torch.nn.Parameter]:
        """Sets what is trained; returns the trained parameters."""
        unet.requires_grad_(True)
        # The official face-location encoder is never optimised (it sits outside the trained module).
        unet.face_location_encoder.requires_grad_(False)
        return [parameter for parameter in unet.parameters() if parameter.requires_grad]

    def save_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        unet.save_pretrained(os.path.join(folder, UNET_FOLDER))

    def load_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        loaded = UNet3DFlowModel.from_pretrained(os.path.join(folder, UNET_FOLDER))
        unet.load_state_dict(loaded.state_dict())

    def save_final(self, unet: UNet3DFlowModel, output_dir: str) -> Path:
        """Writes the trained model into `output_dir`; returns the folder to upload."""
        folder = Path(output_dir) / UNET_FOLDER
        with atomic_folder(folder) as partial:
            unet.save_pretrained(partial)
        return folder

    def model_card_description(self, config: A2VTrainingConfig, steps: int) -> str:
        return (
            f"A2V-FDM U-Net of DAWN trained with `training/train_a2v.py` (curriculum stage {config.stage}) on "
            f"`{config.dataset_name_or_path}` for {steps} steps. Load it with "
            "`UNet3DFlowModel.from_pretrained(repo_id)` and pass it to `DAWNPipeline` as `unet`."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------
def log_validation(config: A2VTrainingConfig, accelerator, unet, lfg, noise_scheduler, dataset, step: int) -> Path:
    """Generates the first `validation_frames` frames of a dataset video from its first frame and writes an MP4."""
    from ..pipelines.pipeline_dawn import DAWNPipeline
    from ..processing.image import image_to_tensor
    from ..processing.video import export_to_video_with_audio
    from .dataset import decode_frame, keep_frames_encoded

    # Only the source frame is decoded (a row holds the whole video).
    row = keep_frames_encoded(dataset)[config.validation_video_index % len(dataset)]
    frames = min(config.validation_frames, int(row["num_frames"]))
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
        num_inference_steps=config.validation_inference_steps,
        generator=torch.Generator(device=accelerator.device).manual_seed(config.seed),
        output_type="np",
    ).frames[0]
    audio = np.asarray(row["audio"], dtype=np.float32)[: int(frames / 25 * 16000)]
    path = Path(config.output_dir) / "validation" / f"step-{step:07d}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_to_video_with_audio(video, str(path), fps=25, audio=audio)
    logger.info(f"validation video written to {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def train_a2v(config: A2VTrainingConfig, adapter: Optional[A2VModelAdapter] = None) -> TrainingResult:
    """
    Trains the A2V-FDM U-Net as `config` says, with `adapter` deciding what is trained and saved (default: the whole
    U-Net, [`A2VModelAdapter`]); returns what the run did.
    """
    from .dataset import load_dawn_dataset

    adapter = adapter or A2VModelAdapter()
    accelerator = create_accelerator(config)

    lfg = LFGAutoencoder.from_pretrained(config.pretrained_model_name_or_path, subfolder="lfg", revision=config.revision)
    lfg.requires_grad_(False).eval().to(accelerator.device)
    noise_scheduler = load_noise_scheduler(config)
    unet = adapter.load_unet(config)
    parameters = adapter.prepare(unet)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    dataset = load_dawn_dataset(config.dataset_name_or_path)
    clip_dataset = A2VClipDataset(dataset, stage=config.stage, latent_downsampling=lfg.latent_downsampling)
    batch_sampler = A2VBatchSampler(
        len(clip_dataset),
        config.train_batch_size,
        config.stage,
        seed=config.seed,
        clips_per_video=config.clips_per_video,
        clip_length=config.clip_length,
    )
    dataloader = build_dataloader(clip_dataset, batch_sampler, None, collate_a2v_clips, config.dataloader_num_workers)

    optimizer = torch.optim.Adam(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    max_steps = total_train_steps(config, dataloader)
    lr_scheduler = create_lr_scheduler(config, optimizer, max_steps, accelerator.num_processes, config.lr_min)
    register_checkpoint_hooks(
        accelerator,
        {UNET_FOLDER: unet},
        save_model=lambda name, model, folder: adapter.save_checkpoint_model(model, folder),
        load_model=lambda name, model, folder: adapter.load_checkpoint_model(model, folder),
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    # Timesteps, noise and condition dropout come from this generator; checkpoints store its state.
    random_state = RandomState(config.seed + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(random_state)
    ema_unet = None
    if config.use_ema:
        from diffusers.training_utils import EMAModel

        # EMA of the trained parameters only (all of the U-Net, or just the LoRA matrices).
        ema_unet = EMAModel(parameters, decay=config.ema_decay)
        ema_unet.to(accelerator.device)
        accelerator.register_for_checkpointing(ema_unet)

    total_batch = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    logger.info(
        f"stage {config.stage}: {len(clip_dataset)} videos, clips of {config.clip_length[0]}-{config.clip_length[1]} "
        f"frames, batch {total_batch}, {max_steps} steps"
    )

    motion_cache = (
        MotionTargetCache(config.motion_target_cache_mb * 2**20) if config.motion_target_cache_mb > 0 else None
    )

    def training_step(batch, step_info):
        unet.train()
        with accelerator.autocast():
            output = a2v_batch_loss(
                unet,
                lfg,
                noise_scheduler,
                batch,
                motion_cache=motion_cache,
                null_condition_probability=config.null_condition_probability,
                lip_loss_weight=config.lip_loss_weight,
                flow_loss_weight=config.flow_loss_weight,
                generator=random_state.generator,
            )
        accelerator.backward(output.loss)
        skip_update = False
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            # Under fp16 the grad scaler already skips non-finite steps.
            skip_update = config.skip_nan_gradients and accelerator.scaler is None and not torch.isfinite(grad_norm)
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
        log_validation(config, accelerator, unet, lfg, noise_scheduler, dataset, step)
        if ema_unet is not None:
            ema_unet.restore(parameters)

    result = run_training(
        accelerator, config, dataloader, batch_sampler, training_step, models=[unet],
        ema_updates=[(ema_unet, parameters)] if ema_unet is not None else (),
        validation=validation,
    )
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema_unet is not None:
            ema_unet.copy_to(parameters)
        folder = adapter.save_final(final_unet, config.output_dir)
        if config.push_to_hub:
            push_to_hub(config, Path(config.hub_model_id or config.output_dir).name,
                        adapter.model_card_description(config, max_steps), tags=adapter.model_card_tags,
                        folder=str(folder), allow_patterns=adapter.hub_allow_patterns)
    accelerator.end_training()
    return result
