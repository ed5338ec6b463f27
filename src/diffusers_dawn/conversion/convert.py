"""Conversion of the four official DAWN checkpoints (+ HuBERT) into one loadable [`DAWNPipeline`] folder."""

import os
import re
from typing import Dict, Mapping, Optional

import torch
from diffusers.utils import logging

from ..models.lfg import LFGAutoencoder
from ..models.pbnet import PBNetModel
from ..models.unet_3d_flow import UNet3DFlowModel
from ..pipelines.pipeline_dawn import DAWNPipeline
from ..processing.audio import AUDIO_SAMPLING_RATE
from ..schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler
from ..utils.io import atomic_folder
from .common import CheckpointConversionError, load_official_checkpoint, load_tensors_only
from .lfg import convert_lfg_file
from .pbnet import convert_pbnet_file
from .unet import FACE_LOCATION_KEYS, convert_unet_checkpoint


logger = logging.get_logger(__name__)

OFFICIAL_HUBERT = "facebook/hubert-large-ls960-ft"
HUBERT_HINT = (
    f"the DAWN models were trained on features of {OFFICIAL_HUBERT}: on a machine with internet access run "
    f"`huggingface-cli download {OFFICIAL_HUBERT} --local-dir hubert-large-ls960-ft` (or "
    f"`HubertModel.from_pretrained('{OFFICIAL_HUBERT}').save_pretrained(DIR)` together with "
    "`Wav2Vec2FeatureExtractor.from_pretrained(...).save_pretrained(DIR)`), copy the folder here and pass it as "
    "--hubert DIR (hubert_path=DIR)"
)
SUPPORTED_RESOLUTIONS = (128, 256)
NUM_STEPS = 7


def _step(index: int, message: str) -> None:
    logger.info(f"[{index}/{NUM_STEPS}] {message}")


def guess_resolution(*paths: "str | os.PathLike") -> Optional[int]:
    """
    The frame size named by the official file names (`DAWN_256.pth`, `LFG_128_1000ep.pth`), or None.

    The 128 and 256 models have identical weight shapes (only the latent grid differs), so the file name is the only
    hint the checkpoints carry; contradicting names are refused.
    """
    found = set()
    for path in paths:
        name = os.path.basename(os.fspath(path))
        found.update(int(match) for match in re.findall(r"(?<!\d)(128|256)(?!\d)", name))
    if len(found) > 1:
        raise CheckpointConversionError(
            f"the checkpoint file names mention both 128 and 256 ({', '.join(map(os.fspath, paths))}); the LFG and "
            "DAWN checkpoints must belong to the same resolution, pass the matching pair"
        )
    return found.pop() if found else None


def check_output_dir(output_dir: "str | os.PathLike", overwrite: bool = False) -> None:
    """Refuses an output path that is a file, or a non-empty folder unless `overwrite`: nothing there is replaced."""
    output_dir = os.fspath(output_dir)
    if os.path.isfile(output_dir):
        raise CheckpointConversionError(f"{output_dir}: the output must be a folder, but a file of that name exists")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise CheckpointConversionError(
            f"{output_dir}: the output folder is not empty; choose a new folder or pass --overwrite"
        )


def load_face_location_weights(path: "str | os.PathLike") -> Dict[str, torch.Tensor]:
    """
    Reads face-location encoder weights (`conv1.weight`, `conv1.bias`, `conv2.weight`, `conv2.bias`, optionally
    prefixed `face_loc_emb.` as in an official `FlowDiffusion` state dict) from a `.safetensors` or `.pth` file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"{path}: no such face-location weights file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path)
        else:
            state_dict = load_tensors_only(path)
    except CheckpointConversionError:
        raise
    except Exception as error:  # safetensors and torch raise several unrelated types for corrupt files
        raise CheckpointConversionError(
            f"{path}: cannot be read as a safetensors or PyTorch weights file ({type(error).__name__})"
        ) from None
    if not isinstance(state_dict, Mapping):
        raise CheckpointConversionError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    prefix = "face_loc_emb."
    selected = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    state_dict = selected or dict(state_dict)
    unknown = sorted(set(state_dict) - set(FACE_LOCATION_KEYS))
    if unknown or len(state_dict) != len(FACE_LOCATION_KEYS):
        raise CheckpointConversionError(
            f"{path}: a face-location encoder state dict has exactly the keys {list(FACE_LOCATION_KEYS)}, found "
            f"{sorted(state_dict)}"
        )
    return state_dict


def load_hubert(hubert_path: "str | os.PathLike"):
    """Loads (audio_encoder, feature_extractor) from a HuBERT folder (or hub id) in eval mode."""
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    hubert_path = os.fspath(hubert_path)
    if not os.path.isdir(hubert_path) and os.path.exists(hubert_path):
        raise CheckpointConversionError(
            f"{hubert_path}: --hubert must be a folder saved by `save_pretrained` (config.json, weights, "
            f"preprocessor_config.json), not a single file; {HUBERT_HINT}"
        )
    try:
        audio_encoder = HubertModel.from_pretrained(hubert_path)
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(hubert_path)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointConversionError(f"{hubert_path}: cannot load a HuBERT model from it ({reason}); {HUBERT_HINT}") from None
    if feature_extractor.sampling_rate != AUDIO_SAMPLING_RATE:
        raise CheckpointConversionError(
            f"{hubert_path}: the feature extractor expects {feature_extractor.sampling_rate} Hz audio; DAWN's speech "
            "features are computed at 16 kHz"
        )
    return audio_encoder.eval(), feature_extractor


def check_schedule_matches_scheduler(diffusion_state_dict: Mapping[str, torch.Tensor], scheduler) -> None:
    """Refuses a DAWN checkpoint whose stored `alphas_cumprod` differs from the schedule the pipeline samples with."""
    stored = diffusion_state_dict.get("alphas_cumprod")
    if stored is None:
        return
    expected = scheduler.alphas_cumprod
    if tuple(stored.shape) != tuple(expected.shape) or not torch.allclose(
        stored.double(), expected.double(), rtol=1e-6, atol=1e-7
    ):
        worst = (
            (stored.double() - expected.double()).abs().max().item()
            if stored.shape == expected.shape
            else f"{tuple(stored.shape)} values instead of {tuple(expected.shape)}"
        )
        raise CheckpointConversionError(
            f"DAWN checkpoint: its diffusion schedule (alphas_cumprod) differs from {type(scheduler).__name__}'s "
            f"(max difference {worst}); the checkpoint was trained with another noise schedule and the pipeline's "
            "sampler would not fit it"
        )


def check_components_fit(
    lfg: LFGAutoencoder, unet: UNet3DFlowModel, pbnet_pose: PBNetModel, pbnet_blink: PBNetModel, audio_encoder=None
) -> None:
    """Refuses components that cannot work together (swapped files, a different audio encoder, other widths)."""
    if pbnet_pose.config.state_dim != 6:
        raise CheckpointConversionError(
            f"the --pbnet-pose checkpoint predicts {pbnet_pose.config.state_dim}-D states, not the 6-D head pose; "
            "did you swap --pbnet-pose and --pbnet-blink?"
        )
    if pbnet_blink.config.state_dim != 2:
        raise CheckpointConversionError(
            f"the --pbnet-blink checkpoint predicts {pbnet_blink.config.state_dim}-D states, not the 2 eye aspect "
            "ratios; did you swap --pbnet-pose and --pbnet-blink?"
        )
    audio_dims = {
        "DAWN U-Net": unet.audio_dim,
        "PBNet pose": pbnet_pose.config.audio_dim,
        "PBNet blink": pbnet_blink.config.audio_dim,
    }
    if audio_encoder is not None:
        audio_dims["HuBERT (hidden_size)"] = audio_encoder.config.hidden_size
    if len(set(audio_dims.values())) != 1:
        listed = ", ".join(f"{name} {size}" for name, size in audio_dims.items())
        raise CheckpointConversionError(
            f"the components expect speech features of different sizes ({listed}); all must come from the same "
            f"audio encoder ({OFFICIAL_HUBERT}: 1024)"
        )
    if lfg.latent_channels != unet.config.source_latent_channels:
        raise CheckpointConversionError(
            f"the LFG encodes {lfg.latent_channels}-channel source latents but the DAWN U-Net expects "
            f"{unet.config.source_latent_channels}; the LFG and DAWN checkpoints do not belong together"
        )


def convert_official_checkpoints(
    lfg_path: "str | os.PathLike",
    dawn_path: "str | os.PathLike",
    pbnet_pose_path: "str | os.PathLike",
    pbnet_blink_path: "str | os.PathLike",
    output_dir: Optional["str | os.PathLike"] = None,
    hubert_path: Optional["str | os.PathLike"] = None,
    face_location_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    pbnet_pose_options: Optional["str | os.PathLike"] = None,
    pbnet_blink_options: Optional["str | os.PathLike"] = None,
    resolution: Optional[int] = None,
    overwrite: bool = False,
) -> DAWNPipeline:
    r"""
    Converts the official DAWN release (LFG, A2V-FDM, pose and blink PBNets) plus a HuBERT speech encoder into a
    [`DAWNPipeline`] and, with `output_dir`, saves it as a standard pipeline folder (`model_index.json` + one
    sub-folder per component) that `DAWNPipeline.from_pretrained(output_dir)` loads.

    The HuBERT encoder is required: the official checkpoints do not contain it and a pipeline folder without it
    could not generate anything, so conversion stops early with instructions instead of writing an incomplete
    folder. Every checkpoint is checked (layout, keys, shapes), the DAWN checkpoint's stored diffusion schedule is
    compared with [`DAWNDDIMScheduler`]'s, and the components are checked to fit together (speech feature size,
    source latent channels, pose vs. blink network).

    Args:
        lfg_path: `LFG_128_1000ep.pth` / `LFG_256_400ep.pth`.
        dawn_path: `DAWN_128.pth` / `DAWN_256.pth`.
        pbnet_pose_path, pbnet_blink_path: `pbnet_seperate/{pose,blink}/checkpoint_*.pth.tar`.
        output_dir (*optional*): Folder to write the pipeline to; nothing is written when `None`.
        hubert_path: Folder (or hub id, when online) of `facebook/hubert-large-ls960-ft` saved with
            `save_pretrained` (model and feature extractor).
        face_location_state_dict (*optional*): Face-location encoder weights (`conv1.*`, `conv2.*`). No official
            checkpoint holds them; by default the seeded initialisation of
            [`~conversion.unet.seeded_face_location_state_dict`] is used.
        pbnet_pose_options, pbnet_blink_options (*optional*): The PBNets' `opt.yaml` files (by default an `opt.yaml`
            next to each checkpoint is used when present).
        resolution (*optional*): Frame size, 128 or 256. The two releases have identical weight shapes, so by
            default it is read from the file names (`DAWN_256.pth` → 256) and is 128 when they name none.
        overwrite (`bool`, defaults to `False`): Replace a non-empty `output_dir` (only once the new pipeline is
            completely written).

    Returns:
        [`DAWNPipeline`]: the converted pipeline (CPU, float32).

    Raises:
        CheckpointConversionError: a missing, truncated or wrong checkpoint, unknown keys, a different diffusion
            schedule, components that do not fit together, or no usable HuBERT.
    """
    if hubert_path is None:
        raise CheckpointConversionError(f"no HuBERT speech encoder given; {HUBERT_HINT}")
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        check_output_dir(output_dir, overwrite)
    if resolution is None:
        named = guess_resolution(lfg_path, dawn_path)
        resolution = named or 128
        reason = "named by the checkpoint files" if named else "default, the checkpoint file names name no size"
        logger.info(f"Frame size {resolution}x{resolution} ({reason}); set resolution / --resolution to change it")
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise CheckpointConversionError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")

    # Cheap, likely-to-fail inputs first, so a wrong path does not cost minutes of conversion.
    _step(1, f"Loading HuBERT from {os.fspath(hubert_path)}")
    audio_encoder, feature_extractor = load_hubert(hubert_path)

    _step(2, f"Converting the LFG checkpoint {os.fspath(lfg_path)}")
    lfg = convert_lfg_file(lfg_path)

    _step(3, f"Converting the DAWN A2V-FDM checkpoint {os.fspath(dawn_path)}")
    diffusion_state_dict = load_official_checkpoint(dawn_path, "dawn")["diffusion"]
    scheduler = DAWNDDIMScheduler()
    check_schedule_matches_scheduler(diffusion_state_dict, scheduler)
    if face_location_state_dict is None:
        logger.info(
            "No face-location encoder weights given (no official checkpoint has them); using the seeded "
            "initialisation, stored with the pipeline from now on"
        )
    unet = convert_unet_checkpoint(diffusion_state_dict, face_location_state_dict)
    del diffusion_state_dict

    _step(4, f"Converting the pose PBNet {os.fspath(pbnet_pose_path)}")
    pbnet_pose = convert_pbnet_file(pbnet_pose_path, pbnet_pose_options)
    _step(5, f"Converting the blink PBNet {os.fspath(pbnet_blink_path)}")
    pbnet_blink = convert_pbnet_file(pbnet_blink_path, pbnet_blink_options)

    _step(6, "Checking that the components fit together")
    models = dict(lfg=lfg, unet=unet, pbnet_pose=pbnet_pose, pbnet_blink=pbnet_blink, audio_encoder=audio_encoder)
    check_components_fit(**models)
    pipeline = DAWNPipeline(**models, scheduler=scheduler, feature_extractor=feature_extractor, resolution=resolution)

    if output_dir is None:
        _step(7, "Done (nothing written: no output folder given)")
    else:
        _step(7, f"Writing the pipeline to {output_dir}")
        # Written beside the target and moved into place when complete, so a failed or interrupted write leaves the
        # previous folder (if any) as it was.
        with atomic_folder(output_dir) as partial:
            pipeline.save_pretrained(partial)
    return pipeline
