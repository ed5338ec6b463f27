"""Multi-head attention with swappable processors, used by DAWN's temporal, spatial and PBNet attentions."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import BandedPositionBias, RotaryEmbedding


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
        processor (*optional*): Attention processor; defaults to [`FullAttnProcessor`].
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
        self.set_processor(FullAttnProcessor() if processor is None else processor)

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
