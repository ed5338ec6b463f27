"""Tiny A2V-FDM components shared by the A2V training, LoRA and Hub tests."""

import contextlib

import pytest
import torch

from diffusers_dawn.models.lfg import LFGAutoencoder
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel
from diffusers_dawn.testing.tiny_pipeline import tiny_lfg_config, tiny_unet_config


TINY_AUDIO_DIM = 16
TINY_RESOLUTION = 32
TINY_LATENT_SIZE = TINY_RESOLUTION // 4

TINY_LFG_CONFIG = tiny_lfg_config(
    num_regions=2, block_expansion=4, max_features=16, hourglass_max_features=16, hourglass_num_blocks=2
)


def tiny_unet(seed: int = 0, audio_dim: int = TINY_AUDIO_DIM) -> UNet3DFlowModel:
    """The tiny U-Net for `tiny_lfg` (16-channel latent), with narrower heads than the pipeline's: cheaper training."""
    torch.manual_seed(seed)
    narrow = dict(attention_head_dim=8, cross_attention_head_dim=4, norm_num_groups=2)
    return UNet3DFlowModel(**tiny_unet_config(audio_dim=audio_dim, source_latent_channels=16, **narrow))


def tiny_lfg(seed: int = 0) -> LFGAutoencoder:
    torch.manual_seed(seed)
    return LFGAutoencoder(**TINY_LFG_CONFIG).eval()


@contextlib.contextmanager
def one_thread():
    """
    The tiny models gain nothing from intra-op parallelism, and on a busy machine the thread barriers of a 2-thread
    pool make single steps erratically 10-50x slower; training in these tests uses one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield
