"""2-D building blocks of the latent flow generator (LFG): conv/BatchNorm blocks, hourglass, anti-alias downsampling."""

from contextlib import contextmanager
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    r"""
    Identity sampling grid of shape (height, width, 2) holding normalised (x, y) coordinates in [-1, 1].

    The end points are exactly -1 and 1 (the `align_corners=True` convention) although every `grid_sample` of the
    LFG uses `align_corners=False`; the official model was trained with this pairing, so it is kept.
    """
    x = torch.arange(width, dtype=dtype, device=device)
    y = torch.arange(height, dtype=dtype, device=device)
    # Same operation order as the official grid, so the values agree bit for bit.
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    yy = y.view(-1, 1).expand(height, width)
    xx = x.view(1, -1).expand(height, width)
    return torch.stack([xx, yy], dim=-1)


def gaussian_blur_kernel(channels: int, scale: float) -> torch.Tensor:
    r"""
    Depthwise Gaussian kernel (channels, 1, k, k) used before subsampling an image by `scale`: sigma = (1/scale - 1)/2,
    k = 2 * round(4 sigma) + 1, normalised to sum 1 (scale 0.25 gives sigma 1.5 and a 13x13 kernel).
    """
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    positions = torch.arange(size, dtype=torch.float32)
    profile = torch.exp(-((positions - (size - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = profile.view(-1, 1) * profile.view(1, -1)
    kernel = kernel / torch.sum(kernel)
    return kernel.view(1, 1, size, size).repeat(channels, 1, 1, 1)


class AntiAliasDownsample2d(nn.Module):
    r"""
    Gaussian blur followed by subsampling with stride `int(1 / scale)`, used to bring images to the motion resolution.

    The kernel is a deterministic function of `channels` and `scale` ([`gaussian_blur_kernel`]), so it is rebuilt at
    construction and not stored in checkpoints.

    Parameters:
        channels (`int`): Number of image channels (blurred independently).
        scale (`float`): Output size / input size, e.g. 0.25.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        if not 0 < scale < 1:
            raise ValueError(f"anti-aliased downsampling needs a scale in (0, 1), got {scale}")
        self.scale = scale
        self.stride = int(1 / scale)
        kernel = gaussian_blur_kernel(channels, scale)
        size = kernel.shape[-1]
        # Zero padding (ka before, kb after); kb = ka - 1 only for even kernels, which k = 2·round(4σ)+1 never gives.
        self.padding = (size // 2, size // 2 if size % 2 else size // 2 - 1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        before, after = self.padding
        padded = F.pad(image, (before, after, before, after))
        kernel = self.kernel.to(dtype=image.dtype)
        # A strided convolution evaluates exactly the positions that a full convolution followed by [::s, ::s] keeps.
        return F.conv2d(padded, kernel, stride=self.stride, groups=image.shape[1])


class SameBlock2d(nn.Module):
    r"""Convolution → BatchNorm → ReLU at constant resolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_channels, affine=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(hidden_states)))


class DownBlock2d(nn.Module):
    r"""3x3 convolution → BatchNorm → ReLU → 2x2 average pooling (halves the resolution)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels, affine=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(hidden_states))), kernel_size=2)


class UpBlock2d(nn.Module):
    r"""Nearest-neighbour x2 upsampling → 3x3 convolution → BatchNorm → ReLU (doubles the resolution)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels, affine=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.interpolate(hidden_states, scale_factor=2, mode="nearest")
        return F.relu(self.norm(self.conv(hidden_states)))


class ResBlock2d(nn.Module):
    r"""Pre-activation residual block: (BatchNorm → ReLU → 3x3 conv) twice, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels, affine=True)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm2d(channels, affine=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(F.relu(self.norm1(hidden_states)))
        residual = self.conv2(F.relu(self.norm2(residual)))
        return residual + hidden_states


@contextmanager
def _preserved_batchnorm_statistics(module: nn.Module):
    # Restores the running statistics that a second (recomputing) forward pass in training mode would update again.
    norms = [
        norm
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and norm.track_running_stats
    ]
    saved = [(norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone()) for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (mean, var, count) in zip(norms, saved):
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


def run_block(owner: nn.Module, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    r"""
    Runs `block(*inputs)`, through `owner`'s gradient checkpointing function when `owner.gradient_checkpointing` is set
    and gradients are enabled. The recomputation during backward leaves BatchNorm running statistics untouched, so
    checkpointed training updates them exactly once per step, as without checkpointing.
    """
    if not (getattr(owner, "gradient_checkpointing", False) and torch.is_grad_enabled()):
        return block(*inputs)
    calls = 0

    def forward_block(*block_inputs):
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(*block_inputs)
        with _preserved_batchnorm_statistics(block):
            return block(*block_inputs)

    return owner._gradient_checkpointing_func(forward_block, *inputs)


def hourglass_widths(block_expansion: int, num_blocks: int, max_features: int) -> List[int]:
    r"""Output channels of the encoder's down blocks: `min(max_features, block_expansion * 2**(i + 1))`."""
    return [min(max_features, block_expansion * (2 ** (index + 1))) for index in range(num_blocks)]


class HourglassEncoder(nn.Module):
    r"""
    Stack of [`DownBlock2d`]; returns the input followed by every block's output (the hourglass skip connections).

    Parameters:
        in_channels (`int`): Channels of the input.
        block_expansion (`int`): Width multiplier; block `i` outputs `min(max_features, block_expansion * 2**(i + 1))`.
        num_blocks (`int`): Number of down blocks (each halves the resolution).
        max_features (`int`): Cap on the number of channels.
    """

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        widths = hourglass_widths(block_expansion, num_blocks, max_features)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_channels if index == 0 else widths[index - 1], widths[index]) for index in range(num_blocks)
        )
        self.out_channels = widths[-1]
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> List[torch.Tensor]:
        features = [hidden_states]
        for block in self.down_blocks:
            features.append(run_block(self, block, features[-1]))
        return features


class HourglassDecoder(nn.Module):
    r"""
    Stack of [`UpBlock2d`] consuming [`HourglassEncoder`] features from the deepest up; after each block the next
    shallower encoder feature is concatenated (channel order [upsampled, skip]). Outputs
    `block_expansion + in_channels` channels at the input resolution.
    """

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        widths = hourglass_widths(block_expansion, num_blocks, max_features)
        blocks = []
        for level in reversed(range(num_blocks)):
            block_in = widths[level] * (1 if level == num_blocks - 1 else 2)
            blocks.append(UpBlock2d(block_in, min(max_features, block_expansion * (2**level))))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = block_expansion + in_channels
        self.gradient_checkpointing = False

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        skips = list(features)
        hidden_states = skips.pop()
        for block in self.up_blocks:
            hidden_states = run_block(self, block, hidden_states)
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
        return hidden_states


class Hourglass(nn.Module):
    r"""U-Net style [`HourglassEncoder`] + [`HourglassDecoder`] with concatenated skips (see both for the widths)."""

    def __init__(self, in_channels: int, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(in_channels, block_expansion, num_blocks, max_features)
        self.decoder = HourglassDecoder(in_channels, block_expansion, num_blocks, max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(hidden_states))
