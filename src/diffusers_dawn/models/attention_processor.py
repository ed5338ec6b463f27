"""Multi-head attention with swappable processors, used by DAWN's temporal, spatial and PBNet attentions."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import BandedPositionBias, RotaryEmbedding
from .fused_kernels import fused_self_attention_qkv, is_plain_linear


class DAWNAttention(nn.Module):
    r"""
    Multi-head dot-product attention over the second-to-last axis of `(batch, sequence, channels)` inputs.

    Queries are scaled by `dim_head**-0.5` before the optional rotary embedding; an optional banded relative-position
    bias (`BandedPositionBias`) is added to the logits. How the attention itself is computed is left to the
    processor, so the exact full-matrix reference and memory-lean local variants can be swapped with
    `set_processor` (or `set_attn_processor` on the model).

    Parameters:
        query_dim (`int`): Channels of the queries (and of the output).
        heads (`int`): Number of heads.
        dim_head (`int`): Channels per head.
        cross_attention_dim (`int`, *optional*): Channels of `encoder_hidden_states`; defaults to `query_dim`.
        processor (*optional*): Attention processor; defaults to [`FusedLocalAttnProcessor`] (exact, memory linear in
            the sequence length when a windowed bias is given).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int = 8,
        dim_head: int = 32,
        cross_attention_dim: Optional[int] = None,
        processor=None,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        cross_attention_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        # Separate projections (the official checkpoints fuse them) so standard LoRA target modules apply.
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=False)])
        self.set_processor(FusedLocalAttnProcessor() if processor is None else processor)

    def set_processor(self, processor) -> None:
        self.processor = processor

    def get_processor(self):
        return self.processor

    def prepare_qkv(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[RotaryEmbedding] = None,
    ):
        """Projects, splits heads, scales queries and applies the rotary embedding: (batch, heads, seq, dim_head)."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = self.to_q(hidden_states).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        key = self.to_k(context).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        value = self.to_v(context).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        query = query * self.scale
        if rotary_emb is not None:
            cos, sin = rotary_emb.cos_sin(query.shape[-2], device=query.device, dtype=query.dtype)
            query = rotary_emb.rotate(query, cos, sin)
            if key.shape[-2] != query.shape[-2]:
                cos, sin = rotary_emb.cos_sin(key.shape[-2], device=key.device, dtype=key.dtype)
            key = rotary_emb.rotate(key, cos, sin)
        return query, key, value

    def project_out(self, attended: torch.Tensor) -> torch.Tensor:
        """(batch, heads, seq, dim_head) → (batch, seq, query_dim)."""
        attended = attended.transpose(1, 2).flatten(-2)
        for layer in self.to_out:
            attended = layer(attended)
        return attended

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[RotaryEmbedding] = None,
        position_bias: Optional[BandedPositionBias] = None,
    ) -> torch.Tensor:
        return self.processor(
            self,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            rotary_emb=rotary_emb,
            position_bias=position_bias,
        )


class FullAttnProcessor:
    r"""
    Reference processor: materialises the whole (queries × keys) logit matrix with the dense bias. Exact, but its
    memory grows with the square of the sequence length.
    """

    def __call__(
        self,
        attn: DAWNAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[RotaryEmbedding] = None,
        position_bias: Optional[BandedPositionBias] = None,
    ) -> torch.Tensor:
        query, key, value = attn.prepare_qkv(hidden_states, encoder_hidden_states, rotary_emb)
        bias = None
        if position_bias is not None:
            bias = position_bias.dense(query.shape[-2], key.shape[-2]).to(query.dtype)
        # Queries are already scaled, hence scale=1.
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=1.0)
        return attn.project_out(attended)


class LocalAttnProcessor:
    r"""
    Exact attention whose memory grows linearly with the sequence length when the bias is a local window.

    With a windowed [`BandedPositionBias`] (radius `r` smaller than the sequence) and self-attention-shaped inputs
    (as many keys as queries), the sequence is cut into query blocks of `block_size` frames; block `i` attends to the
    `block_size + 2r` keys around it, which contain every key its queries may see. All blocks go through one
    `scaled_dot_product_attention` call with a fixed (block × (block + 2r)) bias per block built from the bias table,
    keys outside the sequence masked. The (frames × frames) matrix never exists: logits take
    `heads · frames · (block + 2r)` entries per sequence instead of `heads · frames²`. Without a window (or with other
    key lengths, e.g. cross-attention to a memory of another length) the dense bias is used, as in
    [`FullAttnProcessor`]. In both cases the batch axis is processed in chunks so that the temporaries of one chunk
    stay under `max_chunk_bytes` (the temporal attention of the U-Net batches every latent position).

    The result equals [`FullAttnProcessor`] up to floating-point rounding: masked logits get exactly zero weight in
    both, and the remaining terms are the same.

    Parameters:
        block_size (`int`, *optional*): Queries per block; defaults to the window radius (keys per block are then
            `3 · radius`, 1.5× the `2 · radius + 1` that survive the window).
        max_chunk_bytes (`int`, defaults to 256 MiB): Approximate bound of the temporaries of one batch chunk.
    """

    def __init__(self, block_size: Optional[int] = None, max_chunk_bytes: int = 256 * 2**20):
        if block_size is not None and block_size < 1:
            raise ValueError(f"`block_size` must be a positive number of frames, got {block_size}")
        if max_chunk_bytes < 1:
            raise ValueError(f"`max_chunk_bytes` must be positive, got {max_chunk_bytes}")
        self.block_size = block_size
        self.max_chunk_bytes = max_chunk_bytes

    def __call__(
        self,
        attn: DAWNAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[RotaryEmbedding] = None,
        position_bias: Optional[BandedPositionBias] = None,
    ) -> torch.Tensor:
        batch, query_len = hidden_states.shape[:2]
        key_len = query_len if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        itemsize = hidden_states.element_size()
        heads, dim_head = attn.heads, attn.dim_head

        banded = position_bias is not None and key_len == query_len and position_bias.radius < query_len - 1
        if banded:
            radius = position_bias.radius
            block = self.block_size or max(radius, 1)
            mask = banded_attention_mask(position_bias, query_len, block).to(hidden_states.dtype)
            padded_len = mask.shape[0] // heads * block
            span = block + 2 * radius
            # projections + rotary copies, padded/unfolded keys and values, logits and their softmax.
            row_bytes = heads * padded_len * (dim_head * (7 + 2 * span / block) + 2 * span) * itemsize
        else:
            mask = None
            if position_bias is not None:
                mask = position_bias.dense(query_len, key_len).to(hidden_states.dtype)[None]
            row_bytes = heads * (2 * query_len * key_len + (4 * query_len + 3 * key_len) * dim_head) * itemsize
        rows = max(1, int(self.max_chunk_bytes // max(row_bytes, 1)))

        def attend(states, context):
            query, key, value = self.prepare_qkv(attn, states, context, rotary_emb)
            if banded:
                attended = banded_attention(query, key, value, mask, radius, block)
            else:
                # Queries are already scaled, hence scale=1.
                attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0)
            return attn.project_out(attended)

        if rows >= batch:
            return attend(hidden_states, encoder_hidden_states)
        output = None
        for start in range(0, batch, rows):
            context = None if encoder_hidden_states is None else encoder_hidden_states[start : start + rows]
            chunk = attend(hidden_states[start : start + rows], context)
            if output is None:
                output = chunk.new_empty((batch,) + chunk.shape[1:])
            output[start : start + rows] = chunk
        return output

    def prepare_qkv(self, attn: DAWNAttention, hidden_states, encoder_hidden_states, rotary_emb):
        return attn.prepare_qkv(hidden_states, encoder_hidden_states, rotary_emb)


class FusedLocalAttnProcessor(LocalAttnProcessor):
    r"""
    [`LocalAttnProcessor`] whose self-attention queries, keys and values come from one batched product with the query
    scale and the rotary embedding folded into per-position weights (`fused_kernels.fused_self_attention_qkv`),
    instead of three projections followed by several passes of scaling, rotation and transposition. Same results up
    to float32 rounding; the default processor. Cross-attention, and projections wrapped by an adapter (LoRA), use
    the unfused preparation.
    """

    def prepare_qkv(self, attn: DAWNAttention, hidden_states, encoder_hidden_states, rotary_emb):
        if encoder_hidden_states is not None or not is_plain_linear(attn.to_q, attn.to_k, attn.to_v):
            return attn.prepare_qkv(hidden_states, encoder_hidden_states, rotary_emb)
        return fused_self_attention_qkv(attn, hidden_states, rotary_emb)


def banded_attention_mask(position_bias: BandedPositionBias, length: int, block: int) -> torch.Tensor:
    r"""
    Additive mask of blocked local attention, shape `(heads · num_blocks, block, block + 2r)`.

    Query `p` of block `i` sits at frame `i·block + p`; key `s` of that block's span at frame `i·block − r + s`, so
    their offset is `s − r − p` and the bias is `table[:, s − p]` when `0 ≤ s − p ≤ 2r`, `-inf` otherwise. Keys
    outside `[0, length)` are masked too. Rows of padded queries (beyond `length`) are left unmasked: their outputs
    are discarded, and a fully masked row would give NaN (also in the gradient of the keys).
    """
    table, radius = position_bias.table, position_bias.radius
    heads, device = table.shape[0], table.device
    num_blocks = -(-length // block)
    span = block + 2 * radius
    table_index = torch.arange(span, device=device)[None, :] - torch.arange(block, device=device)[:, None]
    inside_window = (table_index >= 0) & (table_index <= 2 * radius)
    band = table[:, table_index.clamp(0, 2 * radius)].masked_fill(~inside_window, float("-inf"))

    block_start = torch.arange(num_blocks, device=device)[:, None] * block
    key_position = block_start - radius + torch.arange(span, device=device)[None, :]
    key_outside = (key_position < 0) | (key_position >= length)
    padded_query = (block_start + torch.arange(block, device=device)[None, :]) >= length
    mask = band[:, None].masked_fill(key_outside[None, :, None, :], float("-inf"))
    mask = mask.masked_fill(padded_query[None, :, :, None], 0.0)
    return mask.reshape(heads * num_blocks, block, span)


def banded_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, radius: int, block: int
) -> torch.Tensor:
    r"""
    Blocked local attention of `(batch, heads, length, dim_head)` tensors (queries already scaled) with a mask from
    [`banded_attention_mask`]; returns `(batch, heads, length, dim_head)`.
    """
    batch, heads, length, dim_head = query.shape
    num_blocks = mask.shape[0] // heads
    padded_len = num_blocks * block
    span = block + 2 * radius
    query = F.pad(query, (0, 0, 0, padded_len - length)).reshape(batch, heads * num_blocks, block, dim_head)

    def key_spans(states):
        # r frames of zeros before, the block padding + r after; window i starts at frame i·block − r.
        states = F.pad(states, (0, 0, radius, padded_len - length + radius))
        states = states.unfold(2, span, block)  # (batch, heads, num_blocks, dim_head, span), a view
        return states.transpose(-1, -2).reshape(batch, heads * num_blocks, span, dim_head)

    # A 4-D mask lets PyTorch pick its fused (flash) CPU kernel; a 3-D one falls back to the unfused math path.
    attended = F.scaled_dot_product_attention(
        query, key_spans(key), key_spans(value), attn_mask=mask[None], scale=1.0
    )
    return attended.reshape(batch, heads, padded_len, dim_head)[:, :, :length]


class FlexLocalAttnProcessor:
    r"""
    Windowed attention through `torch.nn.attention.flex_attention`: a sliding-window block mask (`|key − query| ≤ r`)
    skips the tiles outside the band and a `score_mod` adds the bias table entry of each offset. Compiled (the
    default) it never materialises the logits and is meant for CUDA with long videos; in eager mode PyTorch computes
    the full score matrix, so on CPU prefer [`LocalAttnProcessor`]. Calls without a windowed self-attention bias are
    handed to [`LocalAttnProcessor`].

    Verified against [`FullAttnProcessor`] on CPU in eager mode (inference only: PyTorch has no FlexAttention backward
    on CPU); its CUDA speed and memory have not been measured here.

    Parameters:
        compile (`bool`, defaults to `True`): Wrap `flex_attention` in `torch.compile` (required for its memory and
            speed benefits).
    """

    def __init__(self, compile: bool = True):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self.create_block_mask = create_block_mask
        self.flex_attention = torch.compile(flex_attention, dynamic=False) if compile else flex_attention
        self.fallback = LocalAttnProcessor()

    def __call__(
        self,
        attn: DAWNAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        rotary_emb: Optional[RotaryEmbedding] = None,
        position_bias: Optional[BandedPositionBias] = None,
    ) -> torch.Tensor:
        query_len = hidden_states.shape[1]
        if position_bias is None or (encoder_hidden_states is not None and encoder_hidden_states.shape[1] != query_len):
            return self.fallback(attn, hidden_states, encoder_hidden_states, rotary_emb, position_bias)
        query, key, value = attn.prepare_qkv(hidden_states, encoder_hidden_states, rotary_emb)
        table, radius = position_bias.table.to(query.dtype), position_bias.radius

        def within_window(batch, head, query_index, key_index):
            return (key_index - query_index).abs() <= radius

        def add_bias(score, batch, head, query_index, key_index):
            return score + table[head, (key_index - query_index + radius).clamp(0, 2 * radius)]

        block_mask = self.create_block_mask(within_window, None, None, query_len, query_len, device=query.device)
        attended = self.flex_attention(query, key, value, score_mod=add_bias, block_mask=block_mask, scale=1.0)
        return attn.project_out(attended)
