"""DAWN's latent flow generator (LFG): an MRAA-style flow auto-encoder that warps a portrait's features with a flow."""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .lfg_blocks import (
    AntiAliasDownsample2d,
    DownBlock2d,
    Hourglass,
    HourglassEncoder,
    ResBlock2d,
    SameBlock2d,
    UpBlock2d,
    make_coordinate_grid,
    run_block,
)


BACKGROUND_TYPES = ("zero", "affine", "perspective")


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LFGRegionParams(BaseOutput):
    r"""
    Regions found by [`LFGRegionPredictor`] (K regions, heatmaps at the motion resolution L).

    Args:
        shift (`torch.Tensor` of shape `(batch, K, 2)`): Region centres, (x, y) in [-1, 1].
        covar (`torch.Tensor` of shape `(batch, K, 2, 2)`): Heatmap-weighted covariances around the centres.
        heatmap (`torch.Tensor` of shape `(batch, K, L, L)`): Per-region softmax over all positions.
        affine (`torch.Tensor` of shape `(batch, K, 2, 2)`): `u @ d`, the PCA square root of `covar`.
        u (`torch.Tensor` of shape `(batch, K, 2, 2)`): Left singular vectors of `covar` (columns defined up to sign).
        d (`torch.Tensor` of shape `(batch, K, 2, 2)`): `diag(sqrt(singular values))`.
    """

    shift: torch.Tensor = None
    covar: torch.Tensor = None
    heatmap: torch.Tensor = None
    affine: torch.Tensor = None
    u: torch.Tensor = None
    d: torch.Tensor = None


@dataclass
class LFGSourceFeatures(BaseOutput):
    r"""
    What the decoder needs from a source portrait, computed once by [`LFGAutoencoder.encode`].

    Args:
        image (`torch.Tensor` of shape `(batch, 3, S, S)`): The source image in [0, 1].
        feature_maps (`tuple` of `torch.Tensor`): Encoder outputs from full resolution down to S/4 (the skips warped
            by the decoder); the last one is the source latent.
    """

    image: torch.Tensor = None
    feature_maps: Tuple[torch.Tensor, ...] = None

    @property
    def latent(self) -> torch.Tensor:
        """The deepest feature map (batch, C, S/4, S/4): the source latent that conditions the diffusion model."""
        return self.feature_maps[-1]


@dataclass
class LFGMotionOutput(BaseOutput):
    r"""
    Motion from a source to driving images, as estimated by [`LFGAutoencoder.estimate_motion`].

    Args:
        grid (`torch.Tensor` of shape `(batch, L, L, 2)`): Absolute sampling grid into the source, (x, y) in [-1, 1].
        occlusion (`torch.Tensor` of shape `(batch, 1, L, L)`): Weight of the warped source (1) versus the generated
            content (0).
        source_regions ([`LFGRegionParams`]): Regions of the source (broadcast to the driving batch).
        driving_regions ([`LFGRegionParams`]): Regions of the driving images.
        background_params (`torch.Tensor` of shape `(batch, 3, 3)`): Background (camera) transform.
    """

    grid: torch.Tensor = None
    occlusion: torch.Tensor = None
    source_regions: LFGRegionParams = None
    driving_regions: LFGRegionParams = None
    background_params: torch.Tensor = None


@dataclass
class LFGDecoderOutput(BaseOutput):
    r"""
    Args:
        prediction (`torch.Tensor` of shape `(batch, 3, S, S)`): Decoded frame in [0, 1].
        deformed (`torch.Tensor` of shape `(batch, 3, S, S)`): The source image warped by the flow alone.
    """

    prediction: torch.Tensor = None
    deformed: torch.Tensor = None


@dataclass
class LFGOutput(BaseOutput):
    r"""
    Output of the LFG training path [`LFGAutoencoder.forward`].

    Args:
        prediction (`torch.Tensor` of shape `(batch, 3, S, S)`): Reconstruction of the driving image.
        deformed (`torch.Tensor` of shape `(batch, 3, S, S)`): The source warped by the estimated flow.
        grid (`torch.Tensor` of shape `(batch, L, L, 2)`): Estimated sampling grid.
        occlusion (`torch.Tensor` of shape `(batch, 1, L, L)`): Estimated occlusion map.
        source_latent (`torch.Tensor` of shape `(batch_source, C, L, L)`): Deepest encoder feature of the source.
        source_regions ([`LFGRegionParams`]), driving_regions ([`LFGRegionParams`]): Region parameters.
        background_params (`torch.Tensor` of shape `(batch, 3, 3)`): Background transform.
    """

    prediction: torch.Tensor = None
    deformed: torch.Tensor = None
    grid: torch.Tensor = None
    occlusion: torch.Tensor = None
    source_latent: torch.Tensor = None
    source_regions: LFGRegionParams = None
    driving_regions: LFGRegionParams = None
    background_params: torch.Tensor = None


# ---------------------------------------------------------------------------------------------------------------------
# Motion latent <-> flow, warping
# ---------------------------------------------------------------------------------------------------------------------
def _check_motion_latent(motion_latent: torch.Tensor) -> None:
    if motion_latent.ndim != 5 or motion_latent.shape[1] != 3:
        raise ValueError(
            f"motion latents must have shape (batch, 3, frames, L, L), got {tuple(motion_latent.shape)}"
        )


def motion_latent_to_flow(motion_latent: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    Splits DAWN motion latents into decoder inputs.

    Args:
        motion_latent (`torch.Tensor` of shape `(batch, 3, frames, L, L)`): Channels 0-1 are the absolute sampling
            grid (x, y), channel 2 is `occlusion * 2 - 1`.

    Returns:
        `(grid, occlusion)` of shapes `(batch, frames, L, L, 2)` and `(batch, frames, 1, L, L)`.
    """
    _check_motion_latent(motion_latent)
    grid = motion_latent[:, :2].permute(0, 2, 3, 4, 1)
    occlusion = ((motion_latent[:, 2:3] + 1) / 2).permute(0, 2, 1, 3, 4)
    return grid, occlusion


def flow_to_motion_latent(grid: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
    r"""
    Inverse of [`motion_latent_to_flow`]: grid (batch, frames, L, L, 2) and occlusion (batch, frames, 1, L, L) to the
    motion latent (batch, 3, frames, L, L) the diffusion model is trained on.
    """
    if grid.ndim != 5 or grid.shape[-1] != 2 or occlusion.shape != (*grid.shape[:2], 1, *grid.shape[2:4]):
        raise ValueError(
            "expected grid (batch, frames, L, L, 2) and occlusion (batch, frames, 1, L, L), got "
            f"{tuple(grid.shape)} and {tuple(occlusion.shape)}"
        )
    return torch.cat([grid.permute(0, 4, 1, 2, 3), occlusion.permute(0, 2, 1, 3, 4) * 2 - 1], dim=1)


def resize_grid(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resizes a sampling grid (batch, h, w, 2) to `size` (align_corners=False, as the official model)."""
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    return F.interpolate(grid.permute(0, 3, 1, 2), size=tuple(size), mode="bilinear").permute(0, 2, 3, 1)


def warp(features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    r"""
    Samples `features` (batch, C, H, W) at `grid` (batch, h, w, 2), resized to (H, W) first if needed.

    The sampling runs in float32 whatever the feature dtype: sampling positions need more precision than half
    precision offers (an fp16 grid is off by up to 1/4 pixel at 256 px).
    """
    grid = resize_grid(grid.float(), features.shape[2:])
    return F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def region_gaussians(shift: torch.Tensor, covar: Union[torch.Tensor, float], height: int, width: int) -> torch.Tensor:
    r"""
    Unnormalised Gaussians exp(-0.5 (g - shift)^T covar^-1 (g - shift)) of regions (batch, K, 2) on a (height, width)
    grid; `covar` is (batch, K, 2, 2) or one isotropic variance. Returns (batch, K, height, width).
    """
    grid = make_coordinate_grid(height, width, dtype=shift.dtype, device=shift.device)
    offsets = grid.view(1, 1, height, width, 2) - shift.view(*shift.shape[:2], 1, 1, 2)
    if isinstance(covar, float):
        return torch.exp(-0.5 * (offsets**2).sum(-1) / covar)
    precision = torch.inverse(covar).view(*shift.shape[:2], 1, 1, 2, 2)
    mahalanobis = torch.matmul(torch.matmul(offsets.unsqueeze(-2), precision), offsets.unsqueeze(-1))
    return torch.exp(-0.5 * mahalanobis.sum(dim=(-1, -2)))


def _expand_batch(tensor: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    if tensor.shape[0] == batch_size:
        return tensor
    if tensor.shape[0] != 1:
        raise ValueError(f"{what} has batch size {tensor.shape[0]}; expected 1 (broadcast) or {batch_size}")
    return tensor.expand(batch_size, *tensor.shape[1:])


def _check_image(image: torch.Tensor, num_channels: int, what: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != num_channels:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be a (batch, {num_channels}, S, S) tensor in [0, 1], got {shape}")


# ---------------------------------------------------------------------------------------------------------------------
# Sub-modules
# ---------------------------------------------------------------------------------------------------------------------
class LFGImageEncoder(nn.Module):
    r"""
    Encoder of the Johnson-style generator: a 7x7 [`SameBlock2d`] then `num_down_blocks` [`DownBlock2d`].

    Returns every stage's output (the decoder's skips); the last one, at S / 2**num_down_blocks, is the source latent.
    """

    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_down_blocks: int):
        super().__init__()
        self.input_block = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                min(max_features, block_expansion * (2**index)), min(max_features, block_expansion * (2 ** (index + 1)))
            )
            for index in range(num_down_blocks)
        )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feature_maps = [self.input_block(image)]
        for block in self.down_blocks:
            feature_maps.append(block(feature_maps[-1]))
        return tuple(feature_maps)


class LFGImageDecoder(nn.Module):
    r"""
    Decoder of the Johnson-style generator with flow-warped skips.

    At every scale the matching encoder feature is warped by the grid and blended with the decoder state:
    `warped * occlusion + state * (1 - occlusion)` (at the deepest scale `warped * occlusion`). The sigmoid output is
    finally blended with the warped source image the same way.
    """

    def __init__(
        self,
        num_channels: int,
        block_expansion: int,
        max_features: int,
        num_down_blocks: int,
        num_bottleneck_blocks: int,
    ):
        super().__init__()
        latent_channels = min(max_features, block_expansion * (2**num_down_blocks))
        self.bottleneck = nn.ModuleList(ResBlock2d(latent_channels) for _ in range(num_bottleneck_blocks))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(
                min(max_features, block_expansion * (2 ** (num_down_blocks - index))),
                min(max_features, block_expansion * (2 ** (num_down_blocks - index - 1))),
            )
            for index in range(num_down_blocks)
        )
        self.output_conv = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)
        self.gradient_checkpointing = False

    @staticmethod
    def _blend(skip, grid, occlusion, previous=None):
        # Warping and blending in float32 (see `warp`); the result goes back to the decoder's dtype.
        warped = warp(skip, grid)
        occlusion = occlusion.float()
        if occlusion.shape[2:] != warped.shape[2:]:
            occlusion = F.interpolate(occlusion, size=warped.shape[2:], mode="bilinear")
        if previous is None:
            return warped * occlusion
        return warped * occlusion + previous.float() * (1 - occlusion)

    def forward(
        self, feature_maps: Sequence[torch.Tensor], image: torch.Tensor, grid: torch.Tensor, occlusion: torch.Tensor
    ) -> torch.Tensor:
        """Decodes frames (float32, [0, 1]) from per-frame encoder features, source image, grid and occlusion."""
        dtype = self.output_conv.weight.dtype
        hidden_states = self._blend(feature_maps[-1], grid, occlusion).to(dtype)
        for block in self.bottleneck:
            hidden_states = run_block(self, block, hidden_states)
        for index, block in enumerate(self.up_blocks):
            hidden_states = self._blend(feature_maps[-(index + 1)], grid, occlusion, hidden_states).to(dtype)
            hidden_states = run_block(self, block, hidden_states)
        hidden_states = self._blend(feature_maps[0], grid, occlusion, hidden_states).to(dtype)
        hidden_states = torch.sigmoid(self.output_conv(hidden_states))
        return self._blend(image, grid, occlusion, hidden_states)


class LFGRegionPredictor(nn.Module):
    r"""
    Finds K regions in an image: anti-aliased downsampling, [`Hourglass`], 7x7 conv to K logit maps, softmax over
    positions at `temperature`, then centre, covariance and PCA affine (SVD) of each heatmap.
    """

    def __init__(
        self,
        num_regions: int,
        num_channels: int,
        block_expansion: int,
        max_features: int,
        num_blocks: int,
        scale_factor: float,
        temperature: float,
    ):
        super().__init__()
        self.downsample = AntiAliasDownsample2d(num_channels, scale_factor) if scale_factor != 1 else None
        self.hourglass = Hourglass(num_channels, block_expansion, num_blocks, max_features)
        self.region_head = nn.Conv2d(self.hourglass.out_channels, num_regions, kernel_size=7, padding=3)
        self.temperature = temperature

    def forward(self, image: torch.Tensor) -> LFGRegionParams:
        image = image.to(self.region_head.weight.dtype)
        if self.downsample is not None:
            image = self.downsample(image)
        logits = self.region_head(self.hourglass(image))
        batch, regions, height, width = logits.shape
        heatmap = F.softmax(logits.view(batch, regions, -1) / self.temperature, dim=2).view(logits.shape)

        grid = make_coordinate_grid(height, width, dtype=heatmap.dtype, device=heatmap.device)
        grid = grid.view(1, 1, height, width, 2)
        weights = heatmap.unsqueeze(-1)
        shift = (weights * grid).sum(dim=(2, 3))
        offsets = grid - shift.view(batch, regions, 1, 1, 2)
        covar = (torch.matmul(offsets.unsqueeze(-1), offsets.unsqueeze(-2)) * weights.unsqueeze(-1)).sum(dim=(2, 3))

        # The official model takes the SVD with LAPACK on the CPU in float32; its sign convention for the singular
        # vectors flows into the affines and the sparse motions, so the same routine is used on every device.
        u, singular_values, _ = torch.linalg.svd(covar.float().cpu())
        u = u.to(device=covar.device, dtype=covar.dtype)
        d = torch.diag_embed(singular_values.to(device=covar.device, dtype=covar.dtype) ** 0.5)
        affine = torch.matmul(u, d)
        return LFGRegionParams(shift=shift, covar=covar, heatmap=heatmap, affine=affine, u=u, d=d)


class LFGBackgroundPredictor(nn.Module):
    r"""
    Predicts the background (camera) transform between two images as a 3x3 matrix: [`HourglassEncoder`] on the
    channel concatenation [source, driving], spatial mean of the deepest feature, linear head (6 affine or 8
    perspective entries). `bg_type="zero"` has no weights and always returns the identity.
    """

    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_blocks: int, bg_type: str):
        super().__init__()
        self.bg_type = bg_type
        if bg_type == "zero":
            self.encoder = None
            self.transform_head = None
            return
        self.encoder = HourglassEncoder(2 * num_channels, block_expansion, num_blocks, max_features)
        outputs = 6 if bg_type == "affine" else 8
        self.transform_head = nn.Linear(self.encoder.out_channels, outputs)
        # Start from the identity transform.
        nn.init.zeros_(self.transform_head.weight)
        with torch.no_grad():
            self.transform_head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0][:outputs]))

    def forward(self, source_image: torch.Tensor, driving_image: torch.Tensor) -> torch.Tensor:
        batch = driving_image.shape[0]
        dtype = driving_image.dtype if self.transform_head is None else self.transform_head.weight.dtype
        transform = torch.eye(3, dtype=dtype, device=driving_image.device).repeat(batch, 1, 1)
        if self.transform_head is None:
            return transform
        pair = torch.cat([source_image, driving_image], dim=1).to(dtype)
        pooled = self.encoder(pair)[-1].mean(dim=(2, 3))
        prediction = self.transform_head(pooled)
        transform[:, :2, :] = prediction[:, :6].view(batch, 2, 3)
        if self.bg_type == "perspective":
            transform[:, 2, :2] = prediction[:, 6:].view(batch, 2)
        return transform


class LFGDenseMotionPredictor(nn.Module):
    r"""
    Pixelwise flow predictor: combines K+1 sparse motions (background + one affine motion per region) into one dense
    sampling grid with softmax weights predicted by an [`Hourglass`], and predicts the occlusion map.

    The hourglass input holds, for each motion, the difference of driving and source region Gaussians (zero for the
    background) and the downsampled source warped by that motion.
    """

    def __init__(
        self,
        num_regions: int,
        num_channels: int,
        block_expansion: int,
        max_features: int,
        num_blocks: int,
        scale_factor: float,
        use_covar_heatmap: bool,
        region_var: float,
        revert_axis_swap: bool,
    ):
        super().__init__()
        self.num_regions = num_regions
        self.use_covar_heatmap = use_covar_heatmap
        self.region_var = float(region_var)
        self.revert_axis_swap = revert_axis_swap
        self.downsample = AntiAliasDownsample2d(num_channels, scale_factor) if scale_factor != 1 else None
        self.hourglass = Hourglass((num_regions + 1) * (num_channels + 1), block_expansion, num_blocks, max_features)
        self.mask_head = nn.Conv2d(self.hourglass.out_channels, num_regions + 1, kernel_size=7, padding=3)
        self.occlusion_head = nn.Conv2d(self.hourglass.out_channels, 1, kernel_size=7, padding=3)

    def heatmap_representation(
        self, height: int, width: int, source_regions: LFGRegionParams, driving_regions: LFGRegionParams
    ) -> torch.Tensor:
        """Driving minus source region Gaussians with a zero background channel first: (batch, K+1, 1, h, w)."""
        driving_covar = driving_regions.covar if self.use_covar_heatmap else self.region_var
        source_covar = source_regions.covar if self.use_covar_heatmap else self.region_var
        heatmap = region_gaussians(driving_regions.shift, driving_covar, height, width) - region_gaussians(
            source_regions.shift, source_covar, height, width
        )
        background = heatmap.new_zeros(heatmap.shape[0], 1, height, width)
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    def sparse_motions(
        self,
        height: int,
        width: int,
        source_regions: LFGRegionParams,
        driving_regions: LFGRegionParams,
        background_params: torch.Tensor,
    ) -> torch.Tensor:
        """Sampling grids of the background and of each region's affine motion: (batch, K+1, h, w, 2)."""
        batch = driving_regions.shift.shape[0]
        shift = driving_regions.shift
        identity = make_coordinate_grid(height, width, dtype=shift.dtype, device=shift.device)
        identity = identity.view(1, 1, height, width, 2)
        offsets = identity - driving_regions.shift.view(batch, self.num_regions, 1, 1, 2)
        affine = torch.matmul(source_regions.affine, torch.inverse(driving_regions.affine))
        if self.revert_axis_swap:
            # The SVD may flip both axes of a region; undo it so the motion does not rotate by 180 degrees.
            affine = affine * torch.sign(affine[:, :, 0:1, 0:1])
        affine = affine.view(batch, self.num_regions, 1, 1, 2, 2)
        region_motions = torch.matmul(affine, offsets.unsqueeze(-1)).squeeze(-1)
        region_motions = region_motions + source_regions.shift.view(batch, self.num_regions, 1, 1, 2)

        homogeneous = torch.cat([identity, torch.ones_like(identity[..., :1])], dim=-1)
        homogeneous = homogeneous.expand(batch, 1, height, width, 3)
        background = torch.matmul(background_params.view(batch, 1, 1, 1, 3, 3), homogeneous.unsqueeze(-1)).squeeze(-1)
        background = background[..., :2] / background[..., 2:3]
        return torch.cat([background, region_motions], dim=1)

    def forward(
        self,
        source_image: torch.Tensor,
        source_regions: LFGRegionParams,
        driving_regions: LFGRegionParams,
        background_params: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the dense sampling grid (batch, h, w, 2) and occlusion map (batch, 1, h, w) at the motion scale."""
        source_image = source_image.to(self.mask_head.weight.dtype)
        if self.downsample is not None:
            source_image = self.downsample(source_image)
        batch, channels, height, width = source_image.shape
        motions_count = self.num_regions + 1

        heatmaps = self.heatmap_representation(height, width, source_regions, driving_regions)
        motions = self.sparse_motions(height, width, source_regions, driving_regions, background_params)
        repeated_source = source_image.unsqueeze(1).expand(batch, motions_count, channels, height, width)
        deformed = F.grid_sample(
            repeated_source.reshape(batch * motions_count, channels, height, width),
            motions.reshape(batch * motions_count, height, width, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).view(batch, motions_count, channels, height, width)

        hourglass_input = torch.cat([heatmaps, deformed], dim=2).view(batch, -1, height, width)
        prediction = self.hourglass(hourglass_input)
        weights = F.softmax(self.mask_head(prediction), dim=1).unsqueeze(2)
        grid = (motions.permute(0, 1, 4, 2, 3) * weights).sum(dim=1).permute(0, 2, 3, 1)
        occlusion = torch.sigmoid(self.occlusion_head(prediction))
        return grid, occlusion


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
class LFGAutoencoder(ModelMixin, ConfigMixin):
    r"""
    DAWN's latent flow generator (LFG), a flow auto-encoder after MRAA (Siarohin et al., 2021).

    A source portrait is encoded once ([`encode`]) into multi-scale feature maps whose deepest level, at 1/4 of the
    image size, is the *source latent* that conditions the diffusion model. Frames are decoded ([`decode`]) by warping
    those features with a per-frame sampling grid and blending them by an occlusion map: the grid and occlusion
    together are the 3-channel *motion latent* the diffusion model generates. For training, [`forward`] estimates the
    grid and occlusion from a driving image (region predictor, background predictor, dense motion predictor) and
    reconstructs it.

    Precision: the motion estimators (`region_predictor`, `background_predictor`, `dense_motion`) stay in float32 when
    the model is loaded with `torch_dtype=torch.float16` (`_keep_in_fp32_modules`): they invert and decompose 2x2
    covariances and their softmax at temperature 0.1 and sampling grids need the range and precision. The encoder and
    decoder convolutions may run in half precision; every warp (`grid_sample`) and occlusion blend runs in float32
    whatever the weights' dtype, and decoded frames are float32.

    Parameters:
        num_regions (`int`, defaults to 10): Number of motion regions K.
        num_channels (`int`, defaults to 3): Image channels.
        block_expansion (`int`, defaults to 64): Width of the generator's first block.
        max_features (`int`, defaults to 512): Channel cap of the generator.
        num_down_blocks (`int`, defaults to 2): Generator down blocks (the latent is at 1 / 2**num_down_blocks).
        num_bottleneck_blocks (`int`, defaults to 6): Residual blocks at the latent resolution.
        region_block_expansion (`int`, defaults to 32), region_max_features (`int`, defaults to 1024),
        region_num_blocks (`int`, defaults to 5): Hourglass of the region predictor.
        region_scale_factor (`float`, defaults to 0.25): Resolution of the region predictor relative to the image.
        temperature (`float`, defaults to 0.1): Softmax temperature of the region heatmaps.
        pca_based (`bool`, defaults to `True`): Region affines from the SVD of the covariances (the only variant
            DAWN uses and the only one implemented).
        background_block_expansion (`int`, defaults to 32), background_max_features (`int`, defaults to 1024),
        background_num_blocks (`int`, defaults to 5): Encoder of the background predictor.
        bg_type (`str`, defaults to `"affine"`): Background transform: `"zero"` (identity), `"affine"` or
            `"perspective"`.
        motion_block_expansion (`int`, defaults to 64), motion_max_features (`int`, defaults to 1024),
        motion_num_blocks (`int`, defaults to 5): Hourglass of the dense motion predictor.
        motion_scale_factor (`float`, defaults to 0.25): Resolution of the motion (grid, occlusion) relative to the
            image; must equal 1 / 2**num_down_blocks for the decoder's deepest warp to need no resizing, as in DAWN.
        use_covar_heatmap (`bool`, defaults to `True`): Region Gaussians use the predicted covariances; otherwise
            the isotropic `region_var`.
        region_var (`float`, defaults to 0.01): Isotropic variance used when `use_covar_heatmap` is `False`.
        revert_axis_swap (`bool`, defaults to `True`): Undo a sign flip of a region's relative affine.
        relative_motion_latent (`bool`, defaults to `False`): How [`motion_to_latent`] presents the motion to the
            diffusion model. `False` is DAWN's latent: the absolute sampling grid and `occlusion * 2 - 1`. `True`
            subtracts the identity motion (identity grid, no occlusion), so a still frame is the zero latent.
        motion_latent_scale (`float`, defaults to 1.0): Factor applied to the motion latent after the shift, like
            the `scaling_factor` of diffusers' VAEs: it brings the latent to about unit variance. The motion of a
            talking head is a few hundredths of the grid's range, far below the noise a diffusion model is trained
            to remove; DAWN's own checkpoints use 1.
    """

    _supports_gradient_checkpointing = True
    _keep_in_fp32_modules = ["region_predictor", "background_predictor", "dense_motion"]

    @register_to_config
    def __init__(
        self,
        num_regions: int = 10,
        num_channels: int = 3,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        num_bottleneck_blocks: int = 6,
        region_block_expansion: int = 32,
        region_max_features: int = 1024,
        region_num_blocks: int = 5,
        region_scale_factor: float = 0.25,
        temperature: float = 0.1,
        pca_based: bool = True,
        background_block_expansion: int = 32,
        background_max_features: int = 1024,
        background_num_blocks: int = 5,
        bg_type: str = "affine",
        motion_block_expansion: int = 64,
        motion_max_features: int = 1024,
        motion_num_blocks: int = 5,
        motion_scale_factor: float = 0.25,
        use_covar_heatmap: bool = True,
        region_var: float = 0.01,
        revert_axis_swap: bool = True,
        relative_motion_latent: bool = False,
        motion_latent_scale: float = 1.0,
    ):
        super().__init__()
        if not motion_latent_scale > 0:
            raise ValueError(f"motion_latent_scale must be positive, got {motion_latent_scale}")
        if not pca_based:
            raise ValueError(
                "pca_based=False (regression of region affines) is not part of DAWN and is not implemented; "
                "use pca_based=True"
            )
        if bg_type not in BACKGROUND_TYPES:
            raise ValueError(f"bg_type must be one of {BACKGROUND_TYPES}, got {bg_type!r}")
        self.encoder = LFGImageEncoder(num_channels, block_expansion, max_features, num_down_blocks)
        self.decoder = LFGImageDecoder(
            num_channels, block_expansion, max_features, num_down_blocks, num_bottleneck_blocks
        )
        self.region_predictor = LFGRegionPredictor(
            num_regions,
            num_channels,
            region_block_expansion,
            region_max_features,
            region_num_blocks,
            region_scale_factor,
            temperature,
        )
        self.background_predictor = LFGBackgroundPredictor(
            num_channels, background_block_expansion, background_max_features, background_num_blocks, bg_type
        )
        self.dense_motion = LFGDenseMotionPredictor(
            num_regions,
            num_channels,
            motion_block_expansion,
            motion_max_features,
            motion_num_blocks,
            motion_scale_factor,
            use_covar_heatmap,
            region_var,
            revert_axis_swap,
        )

    @property
    def latent_downsampling(self) -> int:
        """Image size / size of the source latent and of the motion latent: `2**num_down_blocks` (4 in DAWN)."""
        return 2**self.config.num_down_blocks

    @property
    def latent_channels(self) -> int:
        """Channels of the source latent (the deepest encoder feature), the U-Net's `source_latent_channels`."""
        return min(self.config.max_features, self.config.block_expansion * 2**self.config.num_down_blocks)

    # -- source -------------------------------------------------------------------------------------------------------
    def _identity_motion_latent(self, size: int, device, dtype) -> torch.Tensor:
        # (3, 1, L, L): the identity grid and `1 * 2 - 1` (nothing occluded), broadcast over batch and frames.
        grid = make_coordinate_grid(size, size, dtype=dtype, device=device).permute(2, 0, 1)
        return torch.cat([grid, torch.ones_like(grid[:1])]).unsqueeze(1)

    def motion_to_latent(self, grid: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        r"""
        The motion latent the diffusion model generates, from the LFG's flow.

        Args:
            grid (`torch.Tensor` of shape `(batch, frames, L, L, 2)`): Sampling grids.
            occlusion (`torch.Tensor` of shape `(batch, frames, 1, L, L)`): Occlusion maps in [0, 1].

        Returns:
            `torch.Tensor` of shape `(batch, 3, frames, L, L)`: [`flow_to_motion_latent`], minus the identity motion
            when `relative_motion_latent`, times `motion_latent_scale`.
        """
        latent = flow_to_motion_latent(grid, occlusion)
        if self.config.relative_motion_latent:
            latent = latent - self._identity_motion_latent(latent.shape[-1], latent.device, latent.dtype)
        return latent * self.config.motion_latent_scale

    def latent_to_motion(self, motion_latent: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        Inverse of [`motion_to_latent`]: motion latents `(batch, 3, frames, L, L)` to the grid `(batch, frames, L, L,
        2)` and occlusion `(batch, frames, 1, L, L)` that [`decode`] takes.
        """
        _check_motion_latent(motion_latent)  # before the identity shift, whose broadcast would hide a wrong shape
        latent = motion_latent / self.config.motion_latent_scale
        if self.config.relative_motion_latent:
            latent = latent + self._identity_motion_latent(latent.shape[-1], latent.device, latent.dtype)
        return motion_latent_to_flow(latent)

    def encode(self, image: torch.Tensor) -> LFGSourceFeatures:
        r"""
        Encodes source images (batch, 3, S, S) in [0, 1] into the features the decoder warps.

        Returns:
            [`LFGSourceFeatures`]; `.latent` (batch, C, S/4, S/4) is the source latent (official `compute_fea`).
        """
        _check_image(image, self.config.num_channels, "the source image")
        # The image itself is kept in its own precision: the decoder blends it into the frames in float32.
        feature_maps = self.encoder(image.to(self.encoder.input_block.conv.weight.dtype))
        return LFGSourceFeatures(image=image, feature_maps=feature_maps)

    def _source_features(self, source: Union[LFGSourceFeatures, torch.Tensor]) -> LFGSourceFeatures:
        if isinstance(source, LFGSourceFeatures):
            return source
        if isinstance(source, torch.Tensor):
            return self.encode(source)
        raise TypeError(
            f"source must be LFGSourceFeatures (from `encode`) or an image tensor, got {type(source).__name__}"
        )

    # -- motion -------------------------------------------------------------------------------------------------------
    def estimate_motion(self, source_image: torch.Tensor, driving_image: torch.Tensor) -> LFGMotionOutput:
        r"""
        Estimates the sampling grid and occlusion that turn the source into each driving image.

        Args:
            source_image (`torch.Tensor` of shape `(1 or batch, 3, S, S)`): Source in [0, 1]; batch 1 is broadcast.
            driving_image (`torch.Tensor` of shape `(batch, 3, S, S)`): Driving images in [0, 1].
        """
        _check_image(source_image, self.config.num_channels, "source_image")
        _check_image(driving_image, self.config.num_channels, "driving_image")
        batch = driving_image.shape[0]
        source_image = _expand_batch(source_image, batch, "source_image")
        source_regions = self.region_predictor(source_image)
        driving_regions = self.region_predictor(driving_image)
        background_params = self.background_predictor(source_image, driving_image)
        grid, occlusion = self.dense_motion(source_image, source_regions, driving_regions, background_params)
        return LFGMotionOutput(
            grid=grid,
            occlusion=occlusion,
            source_regions=source_regions,
            driving_regions=driving_regions,
            background_params=background_params,
        )

    # -- frames -------------------------------------------------------------------------------------------------------
    def warp_and_decode(
        self, source: Union[LFGSourceFeatures, torch.Tensor], grid: torch.Tensor, occlusion: torch.Tensor
    ) -> LFGDecoderOutput:
        r"""
        Decodes one frame per batch element and also returns the source warped by the grid alone (the official
        `forward_with_flow`).

        Args:
            source ([`LFGSourceFeatures`] or `torch.Tensor`): Encoded source (batch 1 or `batch`) or a source image.
            grid (`torch.Tensor` of shape `(batch, L, L, 2)`): Absolute sampling grid, (x, y) in [-1, 1].
            occlusion (`torch.Tensor` of shape `(batch, 1, L, L)`): Occlusion map in [0, 1].
        """
        if grid.ndim != 4 or grid.shape[-1] != 2 or occlusion.shape != (grid.shape[0], 1, *grid.shape[1:3]):
            raise ValueError(
                "expected grid (batch, L, L, 2) and occlusion (batch, 1, L, L), got "
                f"{tuple(grid.shape)} and {tuple(occlusion.shape)}"
            )
        source = self._source_features(source)
        batch = grid.shape[0]
        feature_maps = [_expand_batch(features, batch, "the source") for features in source.feature_maps]
        image = _expand_batch(source.image, batch, "the source")
        prediction = self.decoder(feature_maps, image, grid, occlusion)
        return LFGDecoderOutput(prediction=prediction, deformed=warp(image, grid))

    def decode(
        self,
        source: Union[LFGSourceFeatures, torch.Tensor],
        grid: torch.Tensor,
        occlusion: torch.Tensor,
        frames_per_batch: Optional[int] = None,
    ) -> torch.Tensor:
        r"""
        Decodes video frames from per-frame grids and occlusions; the source is encoded at most once.

        Args:
            source ([`LFGSourceFeatures`] or `torch.Tensor`): Output of [`encode`] (batch 1 or `batch`), or source
                images (then encoded once here).
            grid (`torch.Tensor` of shape `(batch, frames, L, L, 2)`): Absolute sampling grids (x, y) in [-1, 1].
            occlusion (`torch.Tensor` of shape `(batch, frames, 1, L, L)`): Occlusion maps in [0, 1].
            frames_per_batch (`int`, *optional*): Frames decoded per decoder pass (all `batch * frames` at once when
                `None`); lower it to bound memory. Results do not depend on it.

        Returns:
            `torch.Tensor` of shape `(batch, frames, 3, S, S)`, float32 in [0, 1].
        """
        if grid.ndim != 5 or grid.shape[-1] != 2 or occlusion.shape != (*grid.shape[:2], 1, *grid.shape[2:4]):
            raise ValueError(
                "expected grid (batch, frames, L, L, 2) and occlusion (batch, frames, 1, L, L), got "
                f"{tuple(grid.shape)} and {tuple(occlusion.shape)}; use `LFGAutoencoder.latent_to_motion` on motion latents"
            )
        if frames_per_batch is not None and frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be a positive integer or None, got {frames_per_batch}")
        source = self._source_features(source)
        batch, frames = grid.shape[:2]
        if source.image.shape[0] not in (1, batch):
            raise ValueError(f"the source has batch size {source.image.shape[0]}; expected 1 (broadcast) or {batch}")
        total = batch * frames
        flat_grid = grid.reshape(total, *grid.shape[2:])
        flat_occlusion = occlusion.reshape(total, *occlusion.shape[2:])
        # Frame n of the flattened (batch, frames) axis belongs to source n // frames.
        source_index = torch.arange(total, device=source.image.device) // frames
        chunk = total if frames_per_batch is None else frames_per_batch
        decoded = []
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            if source.image.shape[0] == 1:
                # A single source is broadcast as a view: no per-frame copies of its feature maps.
                sources = [tensor.expand(count, *tensor.shape[1:]) for tensor in (*source.feature_maps, source.image)]
            else:
                index = source_index[start : start + count]
                sources = [tensor.index_select(0, index) for tensor in (*source.feature_maps, source.image)]
            decoded.append(
                self.decoder(
                    sources[:-1], sources[-1], flat_grid[start : start + count], flat_occlusion[start : start + count]
                )
            )
        return torch.cat(decoded).view(batch, frames, *decoded[0].shape[1:])

    # -- training path ------------------------------------------------------------------------------------------------
    def forward(
        self, source_image: torch.Tensor, driving_image: torch.Tensor, return_dict: bool = True
    ) -> Union[LFGOutput, Tuple]:
        r"""
        Reconstructs each driving image from the source (the LFG training path).

        Args:
            source_image (`torch.Tensor` of shape `(1 or batch, 3, S, S)`): Source in [0, 1]; batch 1 is broadcast.
            driving_image (`torch.Tensor` of shape `(batch, 3, S, S)`): Driving images in [0, 1].
            return_dict (`bool`, defaults to `True`): Return an [`LFGOutput`] instead of a tuple in its field order.
        """
        source = self.encode(source_image)
        motion = self.estimate_motion(source_image, driving_image)
        decoded = self.warp_and_decode(source, motion.grid, motion.occlusion)
        outputs = (
            decoded.prediction,
            decoded.deformed,
            motion.grid,
            motion.occlusion,
            source.latent,
            motion.source_regions,
            motion.driving_regions,
            motion.background_params,
        )
        if not return_dict:
            return outputs
        return LFGOutput(*outputs)
