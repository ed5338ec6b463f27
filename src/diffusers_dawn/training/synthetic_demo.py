"""
The models and settings of the synthetic-demo recipe (`training/recipes/synthetic_demo.py`, which trains the shipped
`synthetic-demo` model): its settings file, the untrained LFG and A2V-FDM U-Net of its architecture, the trained LFG
with its motion-latent presentation, and its sampler. Benchmarks and tests build the recipe's models from here.
"""

import json
from pathlib import Path
from typing import Union

import torch

from ..models.lfg import LFGAutoencoder
from ..models.unet_3d_flow import UNet3DFlowModel
from ..schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler


def load_settings(path: Union[str, Path]) -> dict:
    """The recipe's settings: `training/recipes/synthetic_demo.json` in the repository, or a model's `recipe.json`."""
    return json.loads(Path(path).read_text())


def recipe_lfg(settings: dict) -> LFGAutoencoder:
    """A new (untrained) LFG of the recipe's architecture."""
    return LFGAutoencoder(**settings["lfg_config"])


def a2v_unet(lfg: LFGAutoencoder, audio_dim: int, settings: dict) -> UNet3DFlowModel:
    """
    The small A2V-FDM U-Net of the recipe (its source-latent width is the LFG bottleneck's), seeded by the recipe.
    Built with `from_config`, which also reads the U-Net keys of recipes written before they took diffusers' names.
    """
    torch.manual_seed(settings["seed"])
    config = dict(settings["unet"], source_latent_channels=lfg.latent_channels, audio_dim=audio_dim)
    return UNet3DFlowModel.from_config(config)


def diffusion_lfg(lfg_folder: Union[str, Path], settings: dict) -> LFGAutoencoder:
    """
    The trained LFG of `lfg_folder` with the recipe's motion-latent presentation (what the A2V-FDM generates and the
    pipeline decodes).
    """
    return LFGAutoencoder.from_pretrained(lfg_folder, **settings.get("motion_latent", {}))


def recipe_scheduler(settings: dict) -> DAWNDDIMScheduler:
    """DAWN's sampler with the recipe's overrides (no x0 thresholding for a scaled relative motion latent)."""
    return DAWNDDIMScheduler(**settings.get("scheduler", {}))
