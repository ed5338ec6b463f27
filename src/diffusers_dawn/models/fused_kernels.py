"""
Fused forward paths of the A2V-FDM U-Net blocks: the same mathematics as the reference modules in
`unet_3d_blocks.py`, rearranged to make fewer passes over the (frames × positions × channels) feature maps.

The U-Net at training sizes is bound by memory passes, not by arithmetic: a reference res-block runs three cosine
cross-attentions, each with its own layer norms, normalisations, scalings and transposes of a `(frames, heads,
positions, dim_head)` tensor. Here the three share one input normalisation and one query projection, the learned
gains and scales are folded into the (tiny) weight matrices, and the attention over the two keys (null token and
condition token) is written as two small batched matrix products per frame. The temporal attentions read a
channels-last copy normalised by one `layer_norm` call. Results equal the reference paths up to float32 rounding.

The modules choose the path with their `fused_kernels` attribute (see `UNet3DFlowModel.set_fused_kernels`). A
projection wrapped by an adapter (LoRA) is not a plain `nn.Linear`: its block then runs the reference path, which
calls the wrapped module.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def is_plain_linear(*layers: nn.Module) -> bool:
    """Whether every layer is an unwrapped `nn.Linear`, whose weight alone defines its output."""
    return all(type(layer) is nn.Linear for layer in layers)


def feature_norm_eps(dtype: torch.dtype) -> float:
    """Epsilon of `FeatureLayerNorm`: 1e-5 in float32, 1e-3 in lower precisions (as the official model)."""
    return 1e-5 if dtype == torch.float32 else 1e-3


def cross_attentions_are_fusable(attentions: Sequence[nn.Module]) -> bool:
    return all(
        len(attention.to_out) == 1 and is_plain_linear(attention.to_q, attention.to_k, attention.to_v, *attention.to_out)
        for attention in attentions
    )


def block_diagonal(blocks: torch.Tensor) -> torch.Tensor:
    r"""
    Batched block-diagonal matrices: `(batch, n, rows, cols)` → `(batch, n · rows, n · cols)` with block `i` at
    position `(i, i)`.
    """
    batch, count, rows, cols = blocks.shape
    eye = torch.eye(count, device=blocks.device, dtype=blocks.dtype)
    return (blocks[:, :, :, None, :] * eye[None, :, None, :, None]).reshape(batch, count * rows, count * cols)


def fused_cosine_cross_attentions(
    queries: torch.Tensor, contexts: Sequence[torch.Tensor], attentions: Sequence[nn.Module]
) -> torch.Tensor:
    r"""
    Sum of several `CosineCrossAttention`s that read the same queries, each to its null token and one condition token.

    For attention `a` and head `h`, the reference computes `softmax_j(scale · ⟨q̂ ⊙ s_q, k̂_j ⊙ s_k⟩) · v_j` over the
    two keys `j ∈ {null, condition}`, projects the heads with `W_out` and applies its output norm. Here:

    - `q = W_q (x̂ ⊙ g_in)` from one normalisation `x̂` of the queries shared by all attentions, the gain folded
      into `W_q`, all attentions and heads in one product;
    - the scales and the temperature are folded into the normalised keys, `u_j = scale · s_q ⊙ s_k ⊙ k̂_j`, so the
      logits are `⟨q, u_j⟩ / ‖q‖`, and a softmax over two logits is the sigmoid of their difference:
      `w = σ(⟨q, u_cond − u_null⟩ / ‖q‖)` is the weight of the condition token;
    - the per-head values are projected before weighting, `P_j = W_out[:, h] v_j`, so the attention output is
      `Σ_h P_null + w_h (P_cond − P_null)`: one small batched product per frame for all attentions and heads.

    Args:
        queries (`torch.Tensor` of shape `(groups, positions, query_dim)`): Un-normalised queries, one group per frame.
        contexts (sequence of `torch.Tensor` of shape `(groups, context_dim)`): One condition token per attention.
        attentions (sequence of `CosineCrossAttention`): Attentions of equal shapes with plain linear projections.

    Returns:
        `torch.Tensor` of shape `(groups, positions, out_dim)`: the sum of the attentions' outputs.
    """
    groups, positions, query_dim = queries.shape
    count, heads = len(attentions), attentions[0].heads
    dtype = queries.dtype
    eps = feature_norm_eps(dtype)

    query_weight = torch.cat([a.to_q.weight * a.norm_in.weight[None, :] for a in attentions])  # (A·h·d, query_dim)
    dim_head = query_weight.shape[0] // (count * heads)
    query = F.linear(F.layer_norm(queries, (query_dim,), eps=eps), query_weight)  # (groups, positions, A·h·d)
    # Squared norms per head as one product with a block-sum matrix: elementwise passes broadcast over a 16-wide
    # axis are several times slower on CPU than contiguous ones.
    head_sum = torch.eye(count * heads, device=query.device, dtype=dtype).repeat_interleave(dim_head, dim=0)
    squared_norm = torch.matmul(query * query, head_sum)  # (groups, positions, A·h)

    key_differences, base_values, value_differences = [], [], []
    for attention, context in zip(attentions, contexts):
        null_key = attention.null_key.to(dtype).expand(groups, heads, dim_head)
        null_value = attention.null_value.to(dtype).expand(groups, heads, dim_head)
        key = attention.to_k(context).view(groups, heads, dim_head)
        value = attention.to_v(context).view(groups, heads, dim_head)
        scales = attention.scale * attention.query_scale * attention.key_scale
        key_differences.append((F.normalize(key, dim=-1) - F.normalize(null_key, dim=-1)) * scales)
        out_weight = attention.to_out[0].weight.view(-1, heads, dim_head)  # (out, h, d)
        projected_null = torch.einsum("ghd,ohd->gho", null_value, out_weight)
        base_values.append(projected_null.sum(dim=1))  # (groups, out)
        value_differences.append(torch.einsum("ghd,ohd->gho", value, out_weight) - projected_null)  # (groups, h, out)

    # (groups, A·h, d, 1) blocks → (groups, A·h·d, A·h): the logit difference of every attention and head.
    key_matrix = block_diagonal(torch.stack(key_differences, dim=1).flatten(1, 2).unsqueeze(-1))
    # F.normalize divides by max(‖q‖, 1e-12).
    logit_difference = torch.bmm(query, key_matrix) * squared_norm.clamp_min(1e-24).rsqrt()
    # The reference takes its softmax in float32.
    weights = torch.sigmoid(logit_difference.float()).to(dtype)  # (groups, positions, A·h)
    # (groups, A, h, out) blocks → (groups, A·h, A·out); the null values enter as a per-frame bias.
    value_matrix = block_diagonal(torch.stack(value_differences, dim=1))
    base = torch.cat(base_values, dim=-1).unsqueeze(1)  # (groups, 1, A·out)
    attended = torch.baddbmm(base, weights, value_matrix)  # (groups, positions, A·out)
    out_dim = attended.shape[-1] // count
    attended = F.layer_norm(attended.view(groups, positions, count, out_dim), (out_dim,), eps=eps)
    # Σ_a norm_out_a.weight ⊙ attended_a, as one product with the stacked diagonal gains.
    gains = torch.stack([a.norm_out.weight for a in attentions])  # (A, out)
    gain_matrix = (gains[:, :, None] * torch.eye(out_dim, device=gains.device, dtype=gains.dtype)).flatten(0, 1)
    return torch.matmul(attended.view(groups, positions, count * out_dim), gain_matrix)


def rotary_matrix_rows(weight: torch.Tensor, heads: int, rotary_emb, cos: torch.Tensor, sin: torch.Tensor):
    r"""
    Per-position projection weights that apply the rotary embedding: row block `h` of `weight` (a projection to
    `heads` heads) becomes `R_s W_h` for each position `s`, where `R_s` rotates the channel pairs `(2i, 2i+1)` of the
    first `rotary_emb.dim` channels by the angles of `s` and leaves the others unchanged.

    Args:
        weight (`torch.Tensor` of shape `(heads · dim_head, in_features)`): Projection weight.
        cos, sin (`torch.Tensor` of shape `(positions, rotary_dim)`): Tables from `RotaryEmbedding.cos_sin`.

    Returns:
        `torch.Tensor` of shape `(positions, heads · dim_head, in_features)`.
    """
    rows, columns = weight.shape
    per_head = weight.view(heads, rows // heads, columns)
    rotated, passthrough = per_head[:, : rotary_emb.dim], per_head[:, rotary_emb.dim :]
    pairs = rotated.unflatten(1, (-1, 2))
    # (w_even, w_odd) -> (-w_odd, w_even): the rotation's quarter turn applied to the output rows.
    turned = torch.stack((-pairs[:, :, 1], pairs[:, :, 0]), dim=2).flatten(1, 2)
    positions = cos.shape[0]
    rotated = rotated[None] * cos[:, None, :, None] + turned[None] * sin[:, None, :, None]  # (S, heads, dim, in)
    if passthrough.shape[1]:
        rotated = torch.cat((rotated, passthrough[None].expand(positions, -1, -1, -1)), dim=2)
    return rotated.reshape(positions, rows, columns)


def fused_self_attention_qkv(attn, hidden_states: torch.Tensor, rotary_emb=None):
    r"""
    Queries, keys and values of a `DAWNAttention` self-attention from one product: the query scale and the rotary
    embedding are folded into per-position weights (`R_s W`, a few thousand numbers) instead of being applied to the
    projected `(batch, heads, sequence, dim_head)` tensors, which takes several passes over them.

    Returns `(query, key, value)`, each `(batch, heads, sequence, dim_head)` (strided views of one tensor), equal to
    `attn.prepare_qkv(hidden_states, None, rotary_emb)` up to float32 rounding.
    """
    batch, length, _ = hidden_states.shape
    heads, dim_head = attn.heads, attn.dim_head
    query_weight = attn.to_q.weight * attn.scale
    key_weight, value_weight = attn.to_k.weight, attn.to_v.weight
    if rotary_emb is None:
        qkv = F.linear(hidden_states, torch.cat((query_weight, key_weight, value_weight)))
        qkv = qkv.view(batch, length, 3, heads, dim_head).permute(2, 0, 3, 1, 4)
    else:
        cos, sin = rotary_emb.cos_sin(length, device=hidden_states.device, dtype=hidden_states.dtype)
        weight = torch.cat(
            (
                rotary_matrix_rows(query_weight, heads, rotary_emb, cos, sin),
                rotary_matrix_rows(key_weight, heads, rotary_emb, cos, sin),
                value_weight[None].expand(length, -1, -1),
            ),
            dim=1,
        )  # (sequence, 3 · inner, in)
        qkv = torch.bmm(hidden_states.transpose(0, 1), weight.transpose(1, 2))  # (sequence, batch, 3 · inner)
        qkv = qkv.view(length, batch, 3, heads, dim_head).permute(2, 1, 3, 0, 4)
    return qkv.unbind(0)
