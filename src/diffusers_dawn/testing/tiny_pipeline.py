"""
A DAWN pipeline with tiny, randomly initialised components: the real module trees and data flow at a few thousand
parameters per model, for smoke runs, tests and the command-line demo. Its videos show the portrait warped by
random motion, not speech-driven lips.

    python -m diffusers_dawn.testing.tiny_pipeline OUTDIR

writes a folder that `DAWNPipeline.from_pretrained(OUTDIR)` loads (tiny HuBERT included).
"""

import argparse
import sys
from typing import Dict

import torch

from ..models.lfg import LFGAutoencoder
from ..models.pbnet import PBNetModel
from ..models.unet_3d_flow import UNet3DFlowModel
from ..schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler
from .tiny_hubert import build_tiny_hubert


TINY_RESOLUTION = 128
TINY_AUDIO_DIM = 32


def tiny_lfg_config(
    num_regions: int = 4,
    block_expansion: int = 8,
    max_features: int = 64,
    hourglass_max_features: int = 32,
    hourglass_num_blocks: int = 5,
) -> Dict[str, object]:
    """
    Keyword arguments of a tiny [`LFGAutoencoder`]; by default the LFG of the tiny pipeline. Its region predictor,
    background predictor and dense-motion network share one hourglass size (4-channel expansion,
    `hourglass_max_features`, `hourglass_num_blocks`).
    """
    config = dict(
        num_regions=num_regions, block_expansion=block_expansion, max_features=max_features, num_bottleneck_blocks=1
    )
    for network in ("region", "background", "motion"):
        config[f"{network}_block_expansion"] = 4
        config[f"{network}_max_features"] = hourglass_max_features
        config[f"{network}_num_blocks"] = hourglass_num_blocks
    return config


# The LFG needs 128 px for its 5-block hourglasses at scale 0.25; the bottleneck has 8 · 2² = 32 channels, the
# source-latent width of the tiny U-Net (and of the official tiny parity fixtures).
TINY_LFG_CONFIG = tiny_lfg_config()


def tiny_unet_config(
    audio_dim: int = TINY_AUDIO_DIM, source_latent_channels: int = 32, **overrides
) -> Dict[str, object]:
    """
    Keyword arguments of a tiny [`UNet3DFlowModel`]: the real module tree (two levels, every attention kind) at a few
    thousand parameters; by default the U-Net of the tiny pipeline. `audio_dim` is the width of the speech features
    it is conditioned on, `source_latent_channels` that of the LFG latent it reads (the bottleneck of the LFG it runs
    with); `overrides` replace any other entry of the config.
    """
    # Inputs, then widths, then attention shapes: two heads everywhere, the temporal ones the widest.
    config = dict(source_latent_channels=source_latent_channels, audio_dim=audio_dim)
    config.update(face_location_channels=4, face_location_hidden_channels=4, block_out_channels=(8, 16))
    config.update(norm_num_groups=4, conv_in_kernel=3)
    config.update(num_attention_heads=2, attention_head_dim=16, spatial_attention_head_dim=8)
    config.update(num_cross_attention_heads=2, cross_attention_head_dim=8)
    config.update(overrides)
    return config


def tiny_pbnet_config(state: str = "pose", audio_dim: int = TINY_AUDIO_DIM, **overrides) -> Dict[str, object]:
    """
    Keyword arguments of a tiny [`PBNetModel`] for the head `pose` (6 states) or `blink` (2 eye aspect ratios, used
    raw: no normalisation range); by default the PBNets of the tiny pipeline. `overrides` replace any other entry.
    """
    if state not in ("pose", "blink"):
        raise ValueError(f"`state` must be 'pose' or 'blink', got {state!r}")
    config = dict(audio_dim=audio_dim, ff_size=16, num_layers=2, num_heads=2, attention_head_dim=8)
    config.update(dict.fromkeys(("pose_latent_dim", "audio_latent_dim", "latent_dim"), 4))
    if state == "pose":
        config.update(
            state_dim=6,
            state_min=[-90.0, -90.0, -90.0, 0.0, 0.0, 0.0],
            state_max=[90.0, 90.0, 90.0, 1.0, 720.0, 1080.0],
        )
    else:
        config.update(state_dim=2, state_min=None, state_max=None)
    config.update(overrides)
    return config


TINY_PBNET_POSE_CONFIG = tiny_pbnet_config("pose")
TINY_PBNET_BLINK_CONFIG = tiny_pbnet_config("blink")


def tiny_pipeline_components(seed: int = 0) -> Dict[str, object]:
    """
    Keyword arguments for `DAWNPipeline(**components)`: tiny random models seeded from `seed` (the global RNG is
    left as it was), DAWN's scheduler, and a tiny HuBERT with the real front end.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lfg = LFGAutoencoder(**TINY_LFG_CONFIG).eval()
        unet = UNet3DFlowModel(**tiny_unet_config()).eval()
        pbnet_pose = PBNetModel(**TINY_PBNET_POSE_CONFIG).eval()
        pbnet_blink = PBNetModel(**TINY_PBNET_BLINK_CONFIG).eval()
    audio_encoder, feature_extractor = build_tiny_hubert(seed=seed, hidden_size=TINY_AUDIO_DIM)
    return dict(
        lfg=lfg,
        unet=unet,
        pbnet_pose=pbnet_pose,
        pbnet_blink=pbnet_blink,
        scheduler=DAWNDDIMScheduler(),
        audio_encoder=audio_encoder,
        feature_extractor=feature_extractor,
        resolution=TINY_RESOLUTION,
    )


# The face measurements of `measured_inputs`' image, in the official units (yaw, pitch, roll, scale, tx, ty).
MEASURED_SOURCE_POSE = (1.0, -2.0, 0.5, 4.8e-4, 56.0, 65.0)


def measured_inputs(audio_dim: int, num_frames: int) -> Dict[str, object]:
    """
    `DAWNPipeline` keyword arguments that skip face analysis and the speech encoder: a seeded random 128 px image used
    uncropped with its face box, source pose and eye ratios, and seeded random speech features for `num_frames`
    frames. Tests add the sampling arguments they need.
    """
    return dict(
        image=torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)),
        crop="none",
        face_box=[40, 90, 30, 100, 128, 128],
        source_pose=list(MEASURED_SOURCE_POSE),
        source_blink=[0.3, 0.28],
        audio_features=torch.randn(num_frames, audio_dim, generator=torch.Generator().manual_seed(4)),
    )


def tiny_pipeline(seed: int = 0):
    """A ready [`DAWNPipeline`] built from [`tiny_pipeline_components`]."""
    from ..pipelines.pipeline_dawn import DAWNPipeline

    return DAWNPipeline(**tiny_pipeline_components(seed))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_dawn.testing.tiny_pipeline",
        description="Write a tiny random-weight DAWN pipeline folder (for smoke runs and tests).",
    )
    parser.add_argument("output_dir", help="folder to write; DAWNPipeline.from_pretrained(output_dir) loads it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    tiny_pipeline(args.seed).save_pretrained(args.output_dir)
    print(f"Wrote a tiny random-weight DAWN pipeline to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
