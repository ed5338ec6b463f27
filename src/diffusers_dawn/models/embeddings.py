"""Position encodings shared by DAWN's temporal attentions: rotary embeddings and the windowed T5 relative bias."""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    r"""
    Rotary position embedding over a sequence axis, in the interleaved-pair convention: frequency `i` rotates the
    adjacent channel pair `(2i, 2i+1)`. Only the first `dim` channels of each head are rotated, the rest pass
    through unchanged (DAWN's PBNet rotates 4 of 32 channels, the U-Net all 32).

    Parameters:
        dim (`int`): Number of rotated channels per head (even).
        theta (`float`, defaults to 10000): Base of the geometric frequency progression.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        self.dim = dim
        self.theta = theta

    @property
    def inv_freq(self) -> torch.Tensor:
        """Rotation frequencies (dim // 2,), always float32: a buffer would be rounded when the model is cast to fp16."""
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2)[: self.dim // 2].float() / self.dim))

    def cos_sin(self, seq_len: int, device=None, dtype=torch.float32):
        """Returns `cos`, `sin` of shape (seq_len, dim) with each frequency repeated for its channel pair."""
        # Angles in float32 whatever the model dtype: position × frequency loses the phase in half precision.
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.to(device=device, dtype=torch.float32)[None, :]
        angles = angles.repeat_interleave(2, dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotates `hidden_states` (..., seq_len, head_dim) with tables from `cos_sin` (positions on dim -2)."""
        rotated, passthrough = hidden_states[..., : self.dim], hidden_states[..., self.dim :]
        pairs = rotated.unflatten(-1, (-1, 2))
        # (x_even, x_odd) -> (-x_odd, x_even)
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rotated = rotated * cos + turned * sin
        if passthrough.shape[-1] == 0:
            return rotated
        return torch.cat((rotated, passthrough), dim=-1)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """
    T5 bucketing of `relative_position = key_index - query_index`: half of the buckets for keys after the query, in
    each half exact buckets for short distances and logarithmic ones up to `max_distance`.
    """
    distance = -relative_position
    num_buckets //= 2
    bucket = (distance < 0).long() * num_buckets
    distance = distance.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 log then truncation toward zero, as in the original T5 formula (exact parity depends on it).
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


@dataclass
class BandedPositionBias:
    r"""
    Additive attention bias that depends only on `key_index - query_index` and is `-inf` beyond `window`.

    Attributes:
        table (`torch.Tensor` of shape `(heads, 2 * radius + 1)`):
            Bias for offsets `-radius … radius`; `table[:, radius + d]` is the bias of key `i + d` for query `i`.
        radius (`int`): Largest offset that can be attended to, `min(window, num_frames - 1)`.
    """

    table: torch.Tensor
    radius: int

    def dense(self, query_len: int, key_len: Optional[int] = None, masked_value: float = float("-inf")) -> torch.Tensor:
        """Full (heads, query_len, key_len) bias; the reference formulation, O(F²) memory."""
        key_len = query_len if key_len is None else key_len
        device = self.table.device
        offset = torch.arange(key_len, device=device)[None, :] - torch.arange(query_len, device=device)[:, None]
        outside = offset.abs() > self.radius
        bias = self.table[:, offset.clamp(-self.radius, self.radius) + self.radius]
        return bias.masked_fill(outside, masked_value)


class RelativePositionBias(nn.Module):
    r"""
    Learned T5 relative-position bias (one value per head and distance bucket) restricted to a local window.

    The official models add `-1e8` for `|key - query| > window`, which is exactly a hard mask after the softmax, so
    this module hands out the bias as a band (`BandedPositionBias`) that attention processors can use without ever
    forming the (frames × frames) matrix.

    Parameters:
        heads (`int`): Number of attention heads (one bias per head).
        num_buckets (`int`): Number of T5 buckets (both directions together).
        max_distance (`int`): Distance at which the logarithmic buckets saturate.
        window (`int`, *optional*): Largest attended distance; `None` means unlimited.
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32, window: Optional[int] = None):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.window = window
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, num_frames: int) -> BandedPositionBias:
        radius = num_frames - 1 if self.window is None else min(self.window, num_frames - 1)
        offsets = torch.arange(-radius, radius + 1, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(offsets, self.num_buckets, self.max_distance)
        table = self.relative_attention_bias(buckets).transpose(0, 1)  # (heads, 2 * radius + 1)
        return BandedPositionBias(table=table, radius=radius)

    def dense(self, num_frames: int) -> torch.Tensor:
        """(heads, F, F) bias with `-1e8` outside the window: the exact tensor the official module returns."""
        return self.forward(num_frames).dense(num_frames, masked_value=-1e8)
