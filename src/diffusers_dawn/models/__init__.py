"""The three DAWN models: latent flow generator, A2V-FDM 3-D U-Net and the pose/blink generator."""

from .lfg import LFGAutoencoder
from .pbnet import PBNetModel
from .unet_3d_flow import UNet3DFlowModel


__all__ = ["LFGAutoencoder", "PBNetModel", "UNet3DFlowModel"]
