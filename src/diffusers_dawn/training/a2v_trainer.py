"""
Training objective and data sampling of DAWN's audio-to-video flow diffusion model (A2V-FDM) with the two-stage
curriculum (TCL) of the paper (arXiv 2410.13726, official settings in the design notes §4.5 / §6.2).

Stage 1 trains on fixed 20-frame clips whose first frame is the reference (source) image; stage 2 trains on clips of
30 to 40 frames (one length per batch) with a reference frame drawn from the whole video. The motion targets are the
flow grids and occlusion maps that the frozen latent flow generator (LFG) estimates from the reference to every frame
of the clip.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from ..models.lfg import LFGAutoencoder
from ..models.unet_3d_flow import build_condition
from ..processing.face import face_mask, lip_mask
from ..processing.image import image_to_tensor
from .dataset import decode_frame, keep_frames_encoded


STAGE_CLIP_LENGTHS = {1: (20, 20), 2: (30, 40)}
"""Inclusive range of clip lengths per curriculum stage (official: stage 1 fixed 20, stage 2 uniform in [30, 40])."""

NULL_CONDITION_PROBABILITY = 0.1
LIP_LOSS_WEIGHT = 0.15
FLOW_LOSS_WEIGHT = 0.15

# Columns a clip needs; the raw audio waveform is not read (the HuBERT features are precomputed per frame).
CLIP_COLUMNS = ("frames", "num_frames", "resolution", "hubert", "pose", "eye_ratios", "face_box", "lip_box")


# ---------------------------------------------------------------------------------------------------------------------
# Clip sampling (two-stage curriculum)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class A2VClip:
    """
    Frames of one training clip.

    Args:
        frame_indices (`np.ndarray` of shape `(clip_length,)`): Consecutive frame indices of the target clip.
        reference_index (`int`): Frame used as the source image; the conditions are relative to its pose and blink.
    """

    frame_indices: np.ndarray
    reference_index: int


def _check_stage(stage: int) -> None:
    if stage not in STAGE_CLIP_LENGTHS:
        raise ValueError(f"stage must be 1 or 2 (the two curriculum stages), got {stage!r}")


def clip_length_range(stage: int, clip_length: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """The inclusive clip-length range of a stage, or the caller's `(min, max)` override after validation."""
    _check_stage(stage)
    low, high = STAGE_CLIP_LENGTHS[stage] if clip_length is None else clip_length
    if not 1 <= low <= high:
        raise ValueError(f"clip lengths must satisfy 1 <= min <= max, got ({low}, {high})")
    return int(low), int(high)


def sample_clip_length(stage: int, rng: np.random.Generator, clip_length: Optional[Tuple[int, int]] = None) -> int:
    """Clip length of one batch: 20 in stage 1, uniform in [30, 40] in stage 2 (or in the caller's range)."""
    low, high = clip_length_range(stage, clip_length)
    return int(rng.integers(low, high + 1))


def sample_clip(num_frames: int, clip_length: int, stage: int, rng: np.random.Generator) -> A2VClip:
    r"""
    Draws the frames of one training clip from a video of `num_frames` frames.

    The clip is `clip_length` consecutive frames starting at a uniform position. In stage 1 the reference is the clip's
    first frame (also part of the target). In stage 2 the reference is a uniform frame of the **whole video**, loaded
    separately from the clip: it may lie inside or outside the clip window and is never added to the target.
    """
    _check_stage(stage)
    if clip_length < 1:
        raise ValueError(f"clip_length must be positive, got {clip_length}")
    if num_frames < clip_length:
        raise ValueError(
            f"the video has {num_frames} frames but stage {stage} needs clips of {clip_length} frames; drop shorter "
            "videos from the dataset or lower the clip length"
        )
    start = int(rng.integers(0, num_frames - clip_length + 1))
    frame_indices = np.arange(start, start + clip_length)
    reference_index = start if stage == 1 else int(rng.integers(0, num_frames))
    return A2VClip(frame_indices=frame_indices, reference_index=reference_index)


class A2VBatchSampler(torch.utils.data.Sampler):
    r"""
    Yields batches of clip keys `(video_index, clip_length, clip_seed)`; every key of a batch has the same clip length
    so clips stack without padding (stage 2 draws one length per iteration, like the official loader).

    Everything is a function of `(seed, epoch)`, so an epoch can be replayed exactly (resuming skips its first
    batches). An epoch visits every video `clips_per_video` times in a random order; when there are fewer visits than
    `batch_size`, videos repeat within the batch.

    Args:
        num_videos (`int`): Rows of the dataset.
        batch_size (`int`): Clips per batch.
        stage (`int`): Curriculum stage (1 or 2).
        seed (`int`, defaults to 0): Base seed.
        clips_per_video (`int`, defaults to 1): Visits of each video per epoch (the official `num_repeats`).
        clip_length (`Tuple[int, int]`, *optional*): Inclusive clip-length range overriding the stage's.
    """

    def __init__(
        self,
        num_videos: int,
        batch_size: int,
        stage: int,
        seed: int = 0,
        clips_per_video: int = 1,
        clip_length: Optional[Tuple[int, int]] = None,
    ):
        if num_videos < 1:
            raise ValueError("the dataset has no videos")
        if batch_size < 1 or clips_per_video < 1:
            raise ValueError(f"batch_size and clips_per_video must be positive, got {batch_size}, {clips_per_video}")
        self.num_videos = num_videos
        self.batch_size = batch_size
        self.stage = stage
        self.seed = seed
        self.clips_per_video = clips_per_video
        self.clip_length = clip_length_range(stage, clip_length)
        self.epoch = 0
        # Every batch is full (the last one is padded with extra draws); read by Accelerate's batch sharding.
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, math.ceil(self.num_videos * self.clips_per_video / self.batch_size))

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        visits = np.tile(np.arange(self.num_videos), self.clips_per_video)
        order = rng.permutation(visits)
        # Pad to whole batches by drawing extra visits, so each batch has exactly `batch_size` clips.
        missing = len(self) * self.batch_size - len(order)
        order = np.concatenate([order, rng.integers(0, self.num_videos, missing)])
        for batch_index in range(len(self)):
            length = sample_clip_length(self.stage, rng, self.clip_length)
            videos = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            clip_seeds = rng.integers(0, 2**63 - 1, len(videos))
            yield [(int(video), length, int(clip_seed)) for video, clip_seed in zip(videos, clip_seeds)]


def _frames_to_tensor(frames: Sequence) -> torch.Tensor:
    """Frames → (F, 3, S, S) float32 in [0, 1]."""
    return torch.cat([image_to_tensor(decode_frame(frame)) for frame in frames])


class A2VClipDataset(torch.utils.data.Dataset):
    r"""
    Training clips for the A2V-FDM from a DAWN training dataset (one row per video, see `training/dataset.py`).

    Items are addressed by the keys of [`A2VBatchSampler`], `(video_index, clip_length, clip_seed)`; only the frames of
    the clip and the reference are decoded.

    Each item is a dict:
        - `frames` (clip, 3, S, S) in [0, 1] and `reference_image` (3, S, S): LFG inputs for the motion target;
        - `conditions` (clip, A + 6 + 2): [HuBERT | pose − reference pose | blink − reference blink] (see
          [`~models.unet_3d_flow.build_condition`]);
        - `face_mask` (1, S, S): the reference frame's face box (official `generate_bbox_mask`);
        - `mouth_mask` (clip, L, L): each frame's lip box at the motion-latent size L = S / `latent_downsampling`;
        - `video_index` (), `reference_index` () and `frame_indices` (clip,): where the clip comes from (the keys of
          [`MotionTargetCache`]).

    Args:
        dataset (`datasets.Dataset`): Rows with the `DAWN_DATASET_FEATURES` columns.
        stage (`int`): Curriculum stage (1 or 2), which decides where the reference comes from.
        latent_downsampling (`int`, defaults to 4): Image size / motion-latent size of the LFG.
    """

    def __init__(self, dataset, stage: int, latent_downsampling: int = 4):
        _check_stage(stage)
        missing = [column for column in CLIP_COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"the dataset lacks the columns {missing}; build it with training/preprocess.py "
                "(DAWN_DATASET_FEATURES schema)"
            )
        dataset = dataset.select_columns(list(CLIP_COLUMNS))
        # Keep frames encoded: a clip decodes 20-40 frames, not the whole video.
        dataset = keep_frames_encoded(dataset)
        self.dataset = dataset
        self.stage = stage
        self.latent_downsampling = latent_downsampling

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int, int]) -> Dict[str, torch.Tensor]:
        if not isinstance(key, tuple) or len(key) != 3:
            raise TypeError(
                "A2VClipDataset items are addressed by (video_index, clip_length, clip_seed); use A2VBatchSampler "
                "as the DataLoader's batch_sampler"
            )
        video_index, clip_length, clip_seed = key
        row = self.dataset[int(video_index)]
        num_frames = int(row["num_frames"])
        clip = sample_clip(num_frames, clip_length, self.stage, np.random.default_rng(clip_seed))
        indices = clip.frame_indices
        reference = clip.reference_index
        resolution = int(row["resolution"])
        latent_size = resolution // self.latent_downsampling

        hubert = torch.as_tensor(np.asarray(row["hubert"], dtype=np.float32))
        pose = torch.as_tensor(np.asarray(row["pose"], dtype=np.float32))
        blink = torch.as_tensor(np.asarray(row["eye_ratios"], dtype=np.float32))
        face_boxes = np.asarray(row["face_box"], dtype=np.float64)
        lip_boxes = np.asarray(row["lip_box"], dtype=np.float64)
        for name, values in (("hubert", hubert), ("pose", pose), ("eye_ratios", blink), ("lip_box", lip_boxes)):
            if values.shape[0] < num_frames:
                raise ValueError(
                    f"video {video_index}: `{name}` has {values.shape[0]} rows for {num_frames} frames; "
                    "re-run the preprocessing"
                )

        index_tensor = torch.as_tensor(indices)
        frames = _frames_to_tensor([row["frames"][i] for i in indices])
        reference_image = _frames_to_tensor([row["frames"][reference]])[0]
        conditions = build_condition(
            hubert[index_tensor], pose[index_tensor], blink[index_tensor], pose[reference], blink[reference]
        )
        image_size = (resolution, resolution)
        mouth_mask = torch.stack([lip_mask(lip_boxes[i], image_size, latent_size) for i in indices])
        return {
            "frames": frames,
            "reference_image": reference_image,
            "conditions": conditions,
            "face_mask": face_mask(face_boxes[reference], resolution)[0],
            "mouth_mask": mouth_mask,
            "video_index": torch.tensor(int(video_index)),
            "reference_index": torch.tensor(reference),
            "frame_indices": index_tensor,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class A2VLossOutput(BaseOutput):
    r"""
    Output of [`a2v_loss`].

    Args:
        loss (`torch.Tensor`): `simple_loss + lip_loss_weight · lip_loss + flow_loss_weight · flow_loss`.
        simple_loss (`torch.Tensor`): Mean squared error of the predicted noise.
        lip_loss (`torch.Tensor`): Noise error inside the mouth boxes (channel-summed, per masked position).
        flow_loss (`torch.Tensor`): Error of the thresholded x̂₀ against the target flow grid and occlusion.
    """

    loss: torch.Tensor
    simple_loss: torch.Tensor
    lip_loss: torch.Tensor
    flow_loss: torch.Tensor


@torch.no_grad()
def compute_motion_target(lfg: LFGAutoencoder, reference_image: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    r"""
    Motion latents the frozen LFG estimates from the reference to every frame.

    Args:
        lfg ([`LFGAutoencoder`]): Frozen latent flow generator (in eval mode).
        reference_image (`torch.Tensor` of shape `(batch, 3, S, S)`): Reference frames in [0, 1].
        frames (`torch.Tensor` of shape `(batch, frames, 3, S, S)`): Clip frames in [0, 1].

    Returns:
        `torch.Tensor` of shape `(batch, 3, frames, L, L)`: flow grid (x, y) and `occlusion · 2 − 1`.
    """
    batch, num_frames = frames.shape[:2]
    sources = reference_image.unsqueeze(1).expand(-1, num_frames, -1, -1, -1).reshape(-1, *frames.shape[2:])
    motion = lfg.estimate_motion(sources, frames.reshape(-1, *frames.shape[2:]))
    grid = motion.grid.reshape(batch, num_frames, *motion.grid.shape[1:])
    occlusion = motion.occlusion.reshape(batch, num_frames, *motion.occlusion.shape[1:])
    return lfg.motion_to_latent(grid.float(), occlusion.float())


class MotionTargetCache:
    r"""
    In-memory cache of what the frozen LFG computes for training clips, so that each (reference, frame) pair of a
    video goes through the LFG once instead of at every visit: the motion latent from a reference frame to a frame,
    keyed by `(video, reference, frame)`, and the source latent of a reference, keyed by `(video, reference)`.

    Exact reuse needs a frozen LFG and fixed frames (no augmentation), which is how [`A2VClipDataset`] trains. Stage-1
    clips of a video have a fixed reference per clip start, so a video of `N` frames has at most `N · clip` pairs;
    stage-2 pairs (any reference, any frame) repeat less often. Entries are stored until `max_bytes` is reached;
    later misses are computed without being stored.

    Args:
        max_bytes (`int`, defaults to 1 GiB): Bound of the stored tensors.
    """

    def __init__(self, max_bytes: int = 2**30):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stored_bytes = 0
        self.motion: Dict[Tuple[int, int, int], torch.Tensor] = {}
        self.source: Dict[Tuple[int, int], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def _store(self, table: dict, key, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.stored_bytes + size <= self.max_bytes:
            table[key] = value
            self.stored_bytes += size

    @torch.no_grad()
    def targets(self, lfg: LFGAutoencoder, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        Motion target `(batch, 3, frames, L, L)` and source latent `(batch, C, L, L)` of a collated batch of
        [`A2VClipDataset`] items, equal to [`compute_motion_target`] and `lfg.encode(reference).latent`; only the
        pairs not seen before go through the LFG (in one call).
        """
        videos = batch["video_index"].tolist()
        references = batch["reference_index"].tolist()
        frame_indices = batch["frame_indices"].tolist()
        motion_keys = [
            [(video, reference, frame) for frame in frames]
            for video, reference, frames in zip(videos, references, frame_indices)
        ]
        missing = [(b, i) for b, keys in enumerate(motion_keys) for i, key in enumerate(keys) if key not in self.motion]
        self.misses += len(missing)
        self.hits += sum(len(keys) for keys in motion_keys) - len(missing)
        computed = {}
        if missing:
            sample_index = torch.tensor([b for b, _ in missing])
            frame_index = torch.tensor([i for _, i in missing])
            reference = batch["reference_image"][sample_index].to(lfg.dtype)
            frames = batch["frames"][sample_index, frame_index].to(lfg.dtype)
            # One clip of all missing pairs: (1, pairs, 3, S, S) with a per-pair reference.
            motion = lfg.estimate_motion(reference, frames)
            latents = lfg.motion_to_latent(motion.grid[None].float(), motion.occlusion[None].float())[0]
            for column, (b, i) in enumerate(missing):
                computed[(b, i)] = latents[:, column]
                self._store(self.motion, motion_keys[b][i], latents[:, column].clone())
        motion_target = torch.stack(
            [
                torch.stack([computed[(b, i)] if (b, i) in computed else self.motion[key]
                             for i, key in enumerate(keys)], dim=1)
                for b, keys in enumerate(motion_keys)
            ]
        )

        source_keys = list(zip(videos, references))
        new_sources = sorted({b for b, key in enumerate(source_keys) if key not in self.source})
        encoded = {}
        if new_sources:
            latents = lfg.encode(batch["reference_image"][new_sources].to(lfg.dtype)).latent.float()
            for row, b in enumerate(new_sources):
                encoded[b] = latents[row]
                self._store(self.source, source_keys[b], latents[row].clone())
        source_latent = torch.stack(
            [encoded[b] if b in encoded else self.source[key] for b, key in enumerate(source_keys)]
        )
        return motion_target, source_latent


def drop_conditions(
    conditions: torch.Tensor, probability: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    r"""
    Null-condition dropout: each frame's whole condition vector is replaced by zeros (the null condition) with
    `probability`, independently per frame and sample.

    Args:
        conditions (`torch.Tensor` of shape `(batch, frames, cond_dim)`): Per-frame conditions.
        probability (`float`): Drop probability in [0, 1].
        generator (`torch.Generator`, *optional*): Source of randomness (the global RNG when `None`).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"the null-condition probability must be in [0, 1], got {probability}")
    if probability == 0.0:
        return conditions
    device = generator.device if generator is not None else conditions.device
    draws = torch.rand(conditions.shape[:2], generator=generator, device=device)
    keep = (draws >= probability).to(device=conditions.device, dtype=conditions.dtype)
    return conditions * keep.unsqueeze(-1)


def lip_weighted_loss(squared_error: torch.Tensor, mouth_mask: torch.Tensor) -> torch.Tensor:
    r"""
    Official "mouth loss": Σ(squared error · mouth mask) / Σ(mouth mask), the mask broadcast over the channels, so the
    channels are summed rather than averaged.

    Args:
        squared_error (`torch.Tensor` of shape `(batch, C, frames, L, L)`): Element-wise squared noise error.
        mouth_mask (`torch.Tensor` of shape `(batch, frames, L, L)`): 1 inside each frame's lip box.
    """
    if mouth_mask.shape != (squared_error.shape[0], *squared_error.shape[2:]):
        raise ValueError(
            f"mouth_mask must have shape {(squared_error.shape[0], *squared_error.shape[2:])}, "
            f"got {tuple(mouth_mask.shape)}"
        )
    mask = mouth_mask.to(squared_error.dtype).unsqueeze(1)
    # A batch without any lip box contributes no lip loss instead of 0 / 0.
    return (squared_error * mask).sum() / mask.sum().clamp(min=1.0)


def flow_loss(predicted_original: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""
    Official "floss": mean squared error of the thresholded x̂₀ flow channels against the target grid plus the mean
    squared error of the occlusion `(x̂₀[2] + 1) / 2` against the target occlusion `(x₀[2] + 1) / 2`.

    Args:
        predicted_original (`torch.Tensor` of shape `(batch, 3, frames, L, L)`): Dynamically thresholded x̂₀.
        target (`torch.Tensor` of shape `(batch, 3, frames, L, L)`): Motion latent x₀ (grid, occlusion · 2 − 1).
    """
    grid_error = F.mse_loss(predicted_original[:, :2].float(), target[:, :2].float())
    occlusion_error = F.mse_loss((predicted_original[:, 2:] + 1).float() / 2, (target[:, 2:] + 1).float() / 2)
    return grid_error + occlusion_error


def a2v_loss(
    unet,
    noise_scheduler,
    motion_target: torch.Tensor,
    conditions: torch.Tensor,
    source_latent: torch.Tensor,
    face_mask: torch.Tensor,
    mouth_mask: torch.Tensor,
    null_condition_probability: float = NULL_CONDITION_PROBABILITY,
    lip_loss_weight: float = LIP_LOSS_WEIGHT,
    flow_loss_weight: float = FLOW_LOSS_WEIGHT,
    generator: Optional[torch.Generator] = None,
) -> A2VLossOutput:
    r"""
    One evaluation of the A2V-FDM training objective (epsilon prediction).

    t ~ U{0, …, T−1} per sample, ε ~ N(0, I), x_t = `noise_scheduler.add_noise(x₀, ε, t)`, ε̂ = U-Net(x_t, t,
    conditions with per-frame null dropout, source latent, face mask). The total is
    `MSE(ε̂, ε) + lip_loss_weight · lip_loss + flow_loss_weight · flow_loss` with the flow loss on x̂₀, dynamically
    thresholded when the scheduler's config says `thresholding` (as the sampler then does).

    Args:
        unet ([`UNet3DFlowModel`]): The denoiser being trained.
        noise_scheduler ([`DAWNDDIMScheduler`]): DAWN's training schedule; its `add_noise`, `predict_original_sample`
            and `threshold_sample` are the ones the sampler uses.
        motion_target (`torch.Tensor` of shape `(batch, 3, frames, L, L)`): x₀ from [`compute_motion_target`].
        conditions (`torch.Tensor` of shape `(batch, frames, cond_dim)`): Per-frame conditions.
        source_latent (`torch.Tensor` of shape `(batch, C, L, L)`): LFG latent of the reference frame.
        face_mask (`torch.Tensor` of shape `(batch, 1, S, S)`): Face box of the reference frame.
        mouth_mask (`torch.Tensor` of shape `(batch, frames, L, L)`): Lip boxes at the latent size.
        null_condition_probability (`float`, defaults to 0.1): Per-frame condition dropout.
        lip_loss_weight (`float`, defaults to 0.15), flow_loss_weight (`float`, defaults to 0.15): Loss weights.
        generator (`torch.Generator`, *optional*): Source of t, ε and the dropout (the global RNG when `None`, which
            `accelerator.save_state` checkpoints).
    """
    if not hasattr(noise_scheduler, "threshold_sample"):
        # x̂₀ and its thresholding must be the sampler's own; other schedulers' rules differ from DAWN's.
        raise TypeError(
            f"the A2V-FDM objective needs DAWNDDIMScheduler (DAWN's schedule and dynamic thresholding), got "
            f"{type(noise_scheduler).__name__}; load the model folder's `scheduler` with DAWNDDIMScheduler"
        )
    batch = motion_target.shape[0]
    device = motion_target.device
    random_device = generator.device if generator is not None else device
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator, device=random_device
    ).to(device)
    noise = torch.randn(motion_target.shape, generator=generator, device=random_device).to(device)
    noisy_sample = noise_scheduler.add_noise(motion_target, noise, timesteps)
    conditions = drop_conditions(conditions, null_condition_probability, generator)

    dtype = unet.dtype
    noise_pred = unet(
        noisy_sample.to(dtype),
        timesteps,
        encoder_hidden_states=conditions.to(dtype),
        source_latent=source_latent.to(dtype),
        face_mask=face_mask.to(dtype),
    ).sample.float()

    squared_error = (noise_pred - noise.float()) ** 2
    simple = squared_error.mean()
    lip = lip_weighted_loss(squared_error, mouth_mask)
    # x̂₀ with the sampler's own coefficients, thresholded as the sampler will (DAWN's scheduler thresholds by default;
    # a scaled relative motion latent must not).
    predicted_original = noise_scheduler.predict_original_sample(noise_pred, timesteps, noisy_sample)
    if noise_scheduler.config.thresholding:
        predicted_original = noise_scheduler.threshold_sample(predicted_original)
    flow = flow_loss(predicted_original, motion_target)
    total = simple + lip_loss_weight * lip + flow_loss_weight * flow
    return A2VLossOutput(loss=total, simple_loss=simple, lip_loss=lip, flow_loss=flow)


def a2v_batch_loss(
    unet,
    lfg: LFGAutoencoder,
    noise_scheduler,
    batch: Dict[str, torch.Tensor],
    motion_cache: Optional[MotionTargetCache] = None,
    **loss_kwargs,
) -> A2VLossOutput:
    r"""
    [`a2v_loss`] on a collated batch of [`A2VClipDataset`] items: the frozen LFG gives the motion target and the
    reference frame's source latent (through `motion_cache` when given, see [`MotionTargetCache`]), then the
    objective is evaluated. `loss_kwargs` go to [`a2v_loss`].
    """
    reference = batch["reference_image"].to(lfg.dtype)
    # The frozen LFG runs outside any mixed-precision autocast: its region SVDs and sampling grids need float32.
    with torch.no_grad(), torch.autocast(device_type=reference.device.type, enabled=False):
        if motion_cache is not None:
            motion_target, source_latent = motion_cache.targets(lfg, batch)
        else:
            motion_target = compute_motion_target(lfg, reference, batch["frames"].to(lfg.dtype))
            source_latent = lfg.encode(reference).latent.float()
    return a2v_loss(
        unet,
        noise_scheduler,
        motion_target,
        batch["conditions"],
        source_latent,
        batch["face_mask"],
        batch["mouth_mask"],
        **loss_kwargs,
    )


def collate_a2v_clips(samples: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stacks [`A2VClipDataset`] items (all clips of a batch have the same length)."""
    lengths = {sample["frames"].shape[0] for sample in samples}
    if len(lengths) != 1:
        raise ValueError(f"clips of one batch must have one length, got {sorted(lengths)}; use A2VBatchSampler")
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
