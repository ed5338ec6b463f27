"""DAWNAttention processors: the linear-memory local processor against the full-matrix reference."""

import math

import pytest
import torch

from diffusers_dawn.models.attention_processor import (
    DAWNAttention,
    FullAttnProcessor,
    LocalAttnProcessor,
    banded_attention_mask,
)
from diffusers_dawn.models.embeddings import BandedPositionBias, RelativePositionBias, RotaryEmbedding


WINDOW = 40


def make_attention(query_dim=10, heads=3, dim_head=6, rotary_dim=4, window=WINDOW, seed=0):
    """Odd-sized attention with a randomised (non-zero) relative bias table."""
    torch.manual_seed(seed)
    attention = DAWNAttention(query_dim, heads=heads, dim_head=dim_head)
    bias = RelativePositionBias(heads, num_buckets=32, max_distance=32, window=window)
    torch.nn.init.normal_(bias.relative_attention_bias.weight, std=2.0)
    return attention, bias, RotaryEmbedding(rotary_dim)


def run(attention, processor, hidden_states, rotary, position_bias, context=None):
    attention.set_processor(processor)
    return attention(hidden_states, encoder_hidden_states=context, rotary_emb=rotary, position_bias=position_bias)


def reference_attention(attention, hidden_states, rotary, position_bias):
    """Softmax(q·kᵀ + dense bias)·v written out, the official formulation (−1e8 outside the window)."""
    query, key, value = attention.prepare_qkv(hidden_states, None, rotary)
    logits = query @ key.transpose(-1, -2)
    if position_bias is not None:
        logits = logits + position_bias.dense(query.shape[-2], masked_value=-1e8)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    return attention.project_out(weights @ value)


def test_default_processor_is_local():
    attention = DAWNAttention(8, heads=2, dim_head=4)
    assert isinstance(attention.get_processor(), LocalAttnProcessor)


def test_full_processor_matches_written_out_attention():
    attention, bias, rotary = make_attention()
    hidden_states = torch.randn(2, 50, 10)
    expected = reference_attention(attention, hidden_states, rotary, bias(50))
    actual = run(attention, FullAttnProcessor(), hidden_states, rotary, bias(50))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "num_frames",
    [1, 7, WINDOW - 1, WINDOW, WINDOW + 1, WINDOW + 2, 2 * WINDOW + 3, 5 * WINDOW + 17],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_local_matches_full(num_frames, batch):
    attention, bias, rotary = make_attention()
    hidden_states = torch.randn(batch, num_frames, 10)
    expected = run(attention, FullAttnProcessor(), hidden_states, rotary, bias(num_frames))
    actual = run(attention, LocalAttnProcessor(), hidden_states, rotary, bias(num_frames))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 3, 5, 11, 64])
@pytest.mark.parametrize("num_frames", [6, 23, 60])
def test_local_any_block_size_small_window(block_size, num_frames):
    attention, bias, rotary = make_attention(window=5)
    hidden_states = torch.randn(2, num_frames, 10)
    expected = run(attention, FullAttnProcessor(), hidden_states, rotary, bias(num_frames))
    actual = run(attention, LocalAttnProcessor(block_size=block_size), hidden_states, rotary, bias(num_frames))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_local_chunked_batch_equals_unchunked():
    attention, bias, rotary = make_attention()
    hidden_states = torch.randn(7, 130, 10)
    whole = run(attention, LocalAttnProcessor(), hidden_states, rotary, bias(130))
    # A budget below one sequence forces one row per chunk.
    chunked = run(attention, LocalAttnProcessor(max_chunk_bytes=1), hidden_states, rotary, bias(130))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_local_gradients_match_full():
    attention, bias, rotary = make_attention(window=6)
    hidden_states = torch.randn(2, 31, 10)
    parameters = [bias.relative_attention_bias.weight, *attention.parameters()]
    gradients = []
    for processor in (FullAttnProcessor(), LocalAttnProcessor(block_size=4, max_chunk_bytes=2000)):
        inputs = hidden_states.clone().requires_grad_(True)
        output = run(attention, processor, inputs, rotary, bias(31))
        loss = (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum()
        gradients.append(torch.autograd.grad(loss, [inputs, *parameters]))
    for full, local in zip(*gradients):
        assert torch.isfinite(local).all()
        torch.testing.assert_close(local, full, atol=1e-5, rtol=1e-5)


def test_local_without_bias_and_cross_attention():
    attention, bias, rotary = make_attention()
    hidden_states, memory = torch.randn(2, 45, 10), torch.randn(2, 45, 10)
    for position_bias, context in ((None, None), (bias(45), memory)):
        expected = run(attention, FullAttnProcessor(), hidden_states, rotary, position_bias, context)
        actual = run(attention, LocalAttnProcessor(max_chunk_bytes=1), hidden_states, rotary, position_bias, context)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_local_never_builds_the_dense_bias(monkeypatch):
    attention, bias, rotary = make_attention()
    expected = run(attention, FullAttnProcessor(), torch.ones(1, 200, 10), rotary, bias(200))

    def refuse(*args, **kwargs):
        raise AssertionError("the (frames × frames) bias was materialised")

    monkeypatch.setattr(BandedPositionBias, "dense", refuse)
    actual = run(attention, LocalAttnProcessor(), torch.ones(1, 200, 10), rotary, bias(200))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_banded_mask_is_the_dense_bias_rearranged():
    heads, radius, block, length = 2, 3, 4, 10
    table = torch.arange(heads * (2 * radius + 1), dtype=torch.float32).view(heads, -1)
    position_bias = BandedPositionBias(table=table, radius=radius)
    mask = banded_attention_mask(position_bias, length, block)
    num_blocks = math.ceil(length / block)
    assert mask.shape == (heads * num_blocks, block, block + 2 * radius)
    dense = position_bias.dense(length)
    mask = mask.view(heads, num_blocks, block, -1)
    for head in range(heads):
        for index in range(num_blocks):
            for row in range(block):
                query = index * block + row
                for column in range(block + 2 * radius):
                    key = index * block - radius + column
                    value = mask[head, index, row, column]
                    if query >= length:
                        assert value == 0  # padded query rows stay finite
                    elif 0 <= key < length:
                        assert value == dense[head, query, key]
                    else:
                        assert value == float("-inf")


def test_half_precision_local_close_to_float32():
    attention, bias, rotary = make_attention()
    hidden_states = torch.randn(2, 90, 10)
    expected = run(attention, FullAttnProcessor(), hidden_states, rotary, bias(90))
    attention_bf16 = attention.to(torch.bfloat16)
    with torch.no_grad():
        table = BandedPositionBias(bias(90).table.to(torch.bfloat16), bias(90).radius)
        actual = run(attention_bf16, LocalAttnProcessor(), hidden_states.to(torch.bfloat16), rotary, table)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, atol=5e-2, rtol=5e-2)


def test_invalid_processor_arguments():
    with pytest.raises(ValueError, match="block_size"):
        LocalAttnProcessor(block_size=0)
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        LocalAttnProcessor(max_chunk_bytes=0)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("num_frames", [9, 47])
def test_flex_processor_matches_full_in_eager_mode(num_frames):
    from diffusers_dawn.models.attention_processor import FlexLocalAttnProcessor

    attention, bias, rotary = make_attention(window=6)
    hidden_states = torch.randn(2, num_frames, 10)
    # FlexAttention has no backward on CPU.
    with torch.no_grad():
        expected = run(attention, FullAttnProcessor(), hidden_states, rotary, bias(num_frames))
        actual = run(attention, FlexLocalAttnProcessor(compile=False), hidden_states, rotary, bias(num_frames))
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
        # No bias: handed to the local processor.
        torch.testing.assert_close(
            run(attention, FlexLocalAttnProcessor(compile=False), hidden_states, rotary, None),
            run(attention, FullAttnProcessor(), hidden_states, rotary, None),
            atol=1e-5,
            rtol=1e-5,
        )
