"""Building blocks of DAWN's A2V-FDM 3-D U-Net ([`UNet3DFlowModel`]): norms, cross-attentions, res-blocks, levels."""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention_processor import DAWNAttention
from .embeddings import BandedPositionBias, RotaryEmbedding
from .fused_kernels import cross_attentions_are_fusable, fused_cosine_cross_attentions


def timestep_sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    r"""
    Sinusoidal timestep features `[sin(t·w), cos(t·w)]` with `w_j = exp(-j · ln(10000) / (dim/2 − 1))`, computed in
    float32 in the official order of operations (a different rounding of `w` shows at t ≈ 1000).

    Args:
        timesteps (`torch.Tensor` of shape `(batch,)`): Integer or fractional timesteps.
        dim (`int`): Number of features (even).

    Returns:
        `torch.Tensor` of shape `(batch, dim)`.
    """
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    frequencies = torch.exp(torch.arange(half, device=timesteps.device) * -step)
    angles = timesteps.float()[:, None] * frequencies[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ChannelLayerNorm(nn.Module):
    r"""
    LayerNorm over the channel axis (dim 1) of `(batch, channels, frames, height, width)` features, with a learned
    gain and no bias (biased variance, `eps` inside the square root).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        # One `layer_norm` call on the channels-last view; False runs the reference (official) formula.
        self.fused_kernels = True

    def channels_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The same norm of a tensor whose channels are on the last axis (one pass, contiguous result)."""
        return F.layer_norm(hidden_states, hidden_states.shape[-1:], self.weight, None, self.eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused_kernels:
            # The result has channels-last strides; the following convolutions and permutes accept them.
            return self.channels_last(hidden_states.movedim(1, -1)).movedim(-1, 1)
        # Separate var and mean reductions, as the official model: var_mean rounds differently.
        variance = torch.var(hidden_states, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(hidden_states, dim=1, keepdim=True)
        gain = self.weight.view(1, -1, *([1] * (hidden_states.ndim - 2)))
        return (hidden_states - mean) / (variance + self.eps).sqrt() * gain


class FeatureLayerNorm(nn.Module):
    r"""
    LayerNorm over the last axis with a learned gain and no bias. As in the official model the epsilon is `1e-5` for
    float32 inputs and `1e-3` for lower precisions.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if hidden_states.dtype == torch.float32 else 1e-3
        variance = torch.var(hidden_states, dim=-1, unbiased=False, keepdim=True)
        mean = torch.mean(hidden_states, dim=-1, keepdim=True)
        return (hidden_states - mean) * (variance + eps).rsqrt() * self.weight


class CosineCrossAttention(nn.Module):
    r"""
    Per-frame cross-attention of every latent position to one condition token plus a learned null token, with
    cosine-similarity logits (queries and keys L2-normalised, learned per-channel scales, fixed temperature).

    Parameters:
        query_dim (`int`): Channels of the queries (the res-block input).
        context_dim (`int`): Channels of the condition token.
        out_dim (`int`): Channels of the output.
        heads (`int`, defaults to 8): Number of heads.
        dim_head (`int`, defaults to 8): Channels per head.
        scale (`float`, defaults to 8): Multiplier of the cosine similarities.
    """

    def __init__(
        self, query_dim: int, context_dim: int, out_dim: int, heads: int = 8, dim_head: int = 8, scale: float = 8.0
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = scale
        self.norm_in = FeatureLayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        # The null key/value are shared by all heads.
        self.null_key = nn.Parameter(torch.randn(dim_head))
        self.null_value = nn.Parameter(torch.randn(dim_head))
        self.query_scale = nn.Parameter(torch.ones(dim_head))
        self.key_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, out_dim, bias=False)])
        self.norm_out = FeatureLayerNorm(out_dim)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch · frames, positions, query_dim)`): Queries.
            context (`torch.Tensor` of shape `(batch · frames, 1, context_dim)`): One condition token per frame.

        Returns:
            `torch.Tensor` of shape `(batch · frames, positions, out_dim)`.
        """
        hidden_states = self.norm_in(hidden_states)
        query = self.to_q(hidden_states).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        key = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        value = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        batch = key.shape[0]
        null_key = self.null_key.to(key.dtype).expand(batch, self.heads, 1, -1)
        null_value = self.null_value.to(value.dtype).expand(batch, self.heads, 1, -1)
        key = torch.cat((null_key, key), dim=-2)
        value = torch.cat((null_value, value), dim=-2)
        query = F.normalize(query, dim=-1) * self.query_scale
        key = F.normalize(key, dim=-1) * self.key_scale
        logits = torch.matmul(query, key.transpose(-1, -2)) * self.scale
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(logits.dtype)
        attended = torch.matmul(weights, value).transpose(1, 2).flatten(-2)
        for layer in self.to_out:
            attended = layer(attended)
        return self.norm_out(attended)


class ResnetBlock3D(nn.Module):
    r"""
    Per-frame 2-D residual block of the A2V-FDM U-Net, conditioned on the timestep (scale/shift after the first
    GroupNorm) and on the per-frame audio / pose / blink conditions through three [`CosineCrossAttention`]s whose
    queries are the block input and whose sum is added after the first convolution's activation.

    Parameters:
        in_channels (`int`), out_channels (`int`): Channels in and out.
        groups (`int`, defaults to 8): GroupNorm groups.
        temb_channels (`int`, *optional*): Width of the time embedding; `None` builds an unconditioned block.
        condition_dims (`Tuple[int, int, int]`, *optional*): Widths of the audio, pose and blink conditions; `None`
            builds a block without cross-attention (the output heads).
        cross_attention_heads (`int`), cross_attention_head_dim (`int`): Shape of the cross-attentions.

    The cross-attentions read every latent position of every frame; frames are processed in chunks whose temporaries
    stay under `cross_attention_chunk_bytes` (see `UNet3DFlowModel.set_attention_chunking`).
    """

    cross_attention_chunk_bytes = 128 * 2**20

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int = 8,
        temb_channels: Optional[int] = None,
        condition_dims: Optional[Tuple[int, int, int]] = None,
        cross_attention_heads: int = 8,
        cross_attention_head_dim: int = 8,
    ):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels) if temb_channels else None
        # Fused cross-attentions (`fused_kernels.py`); False runs the three reference modules one by one.
        self.fused_kernels = True
        self.condition_dims = tuple(condition_dims) if condition_dims is not None else None
        if condition_dims is not None:
            audio_dim, pose_dim, blink_dim = condition_dims
            context_dim = 2 * out_channels
            self.audio_proj = nn.Linear(audio_dim, context_dim)
            self.pose_proj = nn.Linear(pose_dim, context_dim)
            self.blink_proj = nn.Linear(blink_dim, context_dim)

            def cross_attention():
                return CosineCrossAttention(
                    in_channels, context_dim, out_channels, cross_attention_heads, cross_attention_head_dim
                )

            self.audio_attention = cross_attention()
            self.pose_attention = cross_attention()
            self.blink_attention = cross_attention()

    def condition_residual(self, hidden_states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Sum of the three cross-attentions, `(batch, out_channels, frames, height, width)`."""
        batch, in_channels, frames, height, width = hidden_states.shape
        audio, pose, blink = condition.split(self.condition_dims, dim=-1)
        # SiLU on the raw conditions, as the official per-block MLPs do. Summation order pose, audio, blink as well.
        tokens = [
            (attention, projection(F.silu(part)))
            for attention, projection, part in (
                (self.pose_attention, self.pose_proj, pose),
                (self.audio_attention, self.audio_proj, audio),
                (self.blink_attention, self.blink_proj, blink),
            )
        ]
        out_channels = self.conv1.out_channels
        fused = self.fused_kernels and cross_attentions_are_fusable([attention for attention, _ in tokens])
        # Frames are independent here: chunking them bounds the (positions × channels) temporaries of long videos.
        frame_bytes = 4 * batch * height * width * (in_channels + out_channels + 64) * hidden_states.element_size()
        frames_per_chunk = max(1, self.cross_attention_chunk_bytes // frame_bytes)
        chunks = []
        for start in range(0, frames, frames_per_chunk):
            chunk = hidden_states[:, :, start : start + frames_per_chunk]
            chunk_frames = chunk.shape[2]
            queries = chunk.permute(0, 2, 3, 4, 1).reshape(batch * chunk_frames, height * width, in_channels)
            contexts = [token[:, start : start + chunk_frames].reshape(batch * chunk_frames, -1) for _, token in tokens]
            if fused:
                attended = fused_cosine_cross_attentions(queries, contexts, [attention for attention, _ in tokens])
            else:
                attended = None
                for (attention, _), context in zip(tokens, contexts):
                    result = attention(queries, context.unsqueeze(1))
                    attended = result if attended is None else attended + result
            chunks.append(attended.view(batch, chunk_frames, height, width, -1).permute(0, 4, 1, 2, 3))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)

    def forward(
        self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None, condition: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, in_channels, frames, height, width)`).
            temb (`torch.Tensor` of shape `(batch, temb_channels)`, *optional*): Time embedding.
            condition (`torch.Tensor` of shape `(batch, frames, audio + pose + blink)`, *optional*).
        """
        residual = self.conv1(hidden_states)
        residual = self.norm1(residual)
        if self.time_emb_proj is not None and temb is not None:
            scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None, None].chunk(2, dim=1)
            residual = residual * (scale + 1) + shift
        residual = F.silu(residual)
        if self.condition_dims is not None and condition is not None:
            residual = residual + self.condition_residual(hidden_states, condition)
        residual = F.silu(self.norm2(self.conv2(residual)))
        shortcut = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        return residual + shortcut


class SpatialLinearAttention(nn.Module):
    r"""
    Residual, pre-normed linear attention over the positions of each frame (softmax over channels for queries, over
    positions for keys), computed in chunks of frames so that its wide temporaries stay bounded for long videos.

    Parameters:
        channels (`int`): Feature channels.
        heads (`int`, defaults to 8), dim_head (`int`, defaults to 32): Shape of the attention.

    The temporaries of one chunk stay under `max_chunk_bytes` (its 3·heads·dim_head channels are up to 12× wider than
    the feature map it reads; see `UNet3DFlowModel.set_attention_chunking`).
    """

    max_chunk_bytes = 256 * 2**20

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        hidden = heads * dim_head
        self.heads = heads
        self.hidden_channels = hidden
        self.scale = dim_head**-0.5
        self.norm = ChannelLayerNorm(channels)
        # 1×1×1 convolutions act per position and frame, exactly the official per-frame 1×1 2-D convolutions.
        self.to_q = nn.Conv3d(channels, hidden, 1, bias=False)
        self.to_k = nn.Conv3d(channels, hidden, 1, bias=False)
        self.to_v = nn.Conv3d(channels, hidden, 1, bias=False)
        self.to_out = nn.ModuleList([nn.Conv3d(hidden, channels, 1)])

    def attend(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = hidden_states.shape
        normed = self.norm(hidden_states)

        def heads_view(projection):
            return projection(normed).view(batch, self.heads, -1, frames, height * width)

        query = heads_view(self.to_q).softmax(dim=2) * self.scale
        key = heads_view(self.to_k).softmax(dim=-1)
        value = heads_view(self.to_v)
        context = torch.einsum("bhdfn,bhefn->bhfde", key, value)
        attended = torch.einsum("bhfde,bhdfn->bhefn", context, query)
        attended = attended.reshape(batch, -1, frames, height, width)
        for layer in self.to_out:
            attended = layer(attended)
        return hidden_states + attended

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = hidden_states.shape
        frame_bytes = 6 * batch * self.hidden_channels * height * width * hidden_states.element_size()
        frames_per_chunk = max(1, self.max_chunk_bytes // frame_bytes)
        if frames_per_chunk >= frames:
            return self.attend(hidden_states)
        # Frames are independent here, so chunking over them is exact.
        return torch.cat([self.attend(chunk) for chunk in hidden_states.split(frames_per_chunk, dim=2)], dim=2)


class TemporalAttention(nn.Module):
    r"""
    Residual, pre-normed attention along the frame axis at every latent position, with rotary embeddings and the
    windowed relative-position bias (a [`DAWNAttention`], so its processor decides how the band is computed).
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attention = DAWNAttention(channels, heads=heads, dim_head=dim_head)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: Optional[RotaryEmbedding] = None,
        position_bias: Optional[BandedPositionBias] = None,
    ) -> torch.Tensor:
        batch, channels, frames, height, width = hidden_states.shape
        if self.norm.fused_kernels:
            # Permute first: the norm's single pass then also makes the sequence layout.
            sequences = self.norm.channels_last(hidden_states.permute(0, 3, 4, 2, 1))
            sequences = sequences.view(batch * height * width, frames, channels)
        else:
            sequences = self.norm(hidden_states).permute(0, 3, 4, 2, 1)
            sequences = sequences.reshape(batch * height * width, frames, channels)
        attended = self.attention(sequences, rotary_emb=rotary_emb, position_bias=position_bias)
        attended = attended.view(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        return hidden_states + attended


class SpatialAttention(nn.Module):
    r"""
    Residual, pre-normed full attention over the positions of each frame (the U-Net's middle level, where the feature
    map is smallest); no rotary embedding, no bias.
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attention = DAWNAttention(channels, heads=heads, dim_head=dim_head)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = hidden_states.shape
        sequences = self.norm(hidden_states).permute(0, 2, 3, 4, 1).reshape(batch * frames, height * width, channels)
        attended = self.attention(sequences)
        attended = attended.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return hidden_states + attended


class FaceLocationEncoder(nn.Module):
    r"""
    Encodes the binary face-box mask `(batch, 1, S, S)` into `(batch, out_channels, S/4, S/4)` features with two
    stride-2 3×3 convolutions and ReLUs.
    """

    def __init__(self, hidden_channels: int = 8, out_channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden_channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, face_mask: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(face_mask))))


class UNetLevel3D(nn.Module):
    r"""
    One resolution level of the U-Net: two [`ResnetBlock3D`]s, per-frame [`SpatialLinearAttention`],
    [`TemporalAttention`], then an optional resampler (strided convolution down, transposed convolution up, both in
    height and width only).

    Parameters:
        in_channels (`int`), out_channels (`int`): Channels in and out of the res-blocks.
        resample (`str`, *optional*): `"down"`, `"up"` or `None`.
        Other parameters as in [`ResnetBlock3D`] and the attentions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        condition_dims: Tuple[int, int, int],
        groups: int,
        attention_heads: int,
        attention_head_dim: int,
        spatial_attention_head_dim: int,
        cross_attention_heads: int,
        cross_attention_head_dim: int,
        resample: Optional[str] = None,
    ):
        super().__init__()

        def resnet(channels_in):
            return ResnetBlock3D(
                channels_in,
                out_channels,
                groups,
                temb_channels,
                condition_dims,
                cross_attention_heads,
                cross_attention_head_dim,
            )

        self.resnets = nn.ModuleList([resnet(in_channels), resnet(out_channels)])
        self.spatial_attention = SpatialLinearAttention(out_channels, attention_heads, spatial_attention_head_dim)
        self.temporal_attention = TemporalAttention(out_channels, attention_heads, attention_head_dim)
        if resample == "down":
            self.resampler = nn.Conv3d(out_channels, out_channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        elif resample == "up":
            self.resampler = nn.ConvTranspose3d(
                out_channels, out_channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)
            )
        elif resample is None:
            self.resampler = None
        else:
            raise ValueError(f"`resample` must be 'down', 'up' or None, got {resample!r}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        condition: torch.Tensor,
        rotary_emb: RotaryEmbedding,
        position_bias: BandedPositionBias,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns `(features before resampling, resampled features)`."""
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb, condition)
        hidden_states = self.spatial_attention(hidden_states)
        hidden_states = self.temporal_attention(hidden_states, rotary_emb, position_bias)
        resampled = hidden_states if self.resampler is None else self.resampler(hidden_states)
        return hidden_states, resampled


class UNetMidBlock3D(nn.Module):
    r"""Middle of the U-Net: res-block, full per-frame spatial attention, temporal attention, res-block."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        condition_dims: Tuple[int, int, int],
        groups: int,
        attention_heads: int,
        attention_head_dim: int,
        spatial_attention_head_dim: int,
        cross_attention_heads: int,
        cross_attention_head_dim: int,
    ):
        super().__init__()

        def resnet():
            return ResnetBlock3D(
                channels, channels, groups, temb_channels, condition_dims, cross_attention_heads,
                cross_attention_head_dim,
            )  # fmt: skip

        self.resnets = nn.ModuleList([resnet(), resnet()])
        self.spatial_attention = SpatialAttention(channels, attention_heads, spatial_attention_head_dim)
        self.temporal_attention = TemporalAttention(channels, attention_heads, attention_head_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        condition: torch.Tensor,
        rotary_emb: RotaryEmbedding,
        position_bias: BandedPositionBias,
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb, condition)
        hidden_states = self.spatial_attention(hidden_states)
        hidden_states = self.temporal_attention(hidden_states, rotary_emb, position_bias)
        return self.resnets[1](hidden_states, temb, condition)


class OutputHead3D(nn.Module):
    r"""Unconditioned [`ResnetBlock3D`] followed by a 1×1×1 projection: one of the U-Net's two output heads."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.resnet = ResnetBlock3D(in_channels, hidden_channels, groups)
        self.proj_out = nn.Conv3d(hidden_channels, out_channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.resnet(hidden_states))
