"""Fused U-Net kernels and the motion-target cache compute what the reference paths compute."""


import pytest
import torch
from safetensors.torch import load_file

from diffusers_dawn.conversion.unet import convert_unet_checkpoint
from diffusers_dawn.models.attention_processor import (
    DAWNAttention,
    FullAttnProcessor,
    FusedLocalAttnProcessor,
    LocalAttnProcessor,
)
from diffusers_dawn.models.embeddings import RelativePositionBias, RotaryEmbedding
from diffusers_dawn.training import synthetic_demo
from diffusers_dawn.training.a2v_trainer import MotionTargetCache, compute_motion_target

from _a2v_utils import tiny_lfg, tiny_unet
from _training_utils import REPO_ROOT


def recipe_unet():
    settings = synthetic_demo.load_settings(REPO_ROOT / "training" / "recipes" / "synthetic_demo.json")
    lfg = synthetic_demo.recipe_lfg(settings)
    return synthetic_demo.a2v_unet(lfg, settings["audio_encoder"]["hidden_size"], settings).train()


def random_inputs(unet, batch, frames, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    face_mask = torch.zeros(batch, 1, 4 * size, 4 * size)
    face_mask[..., size : 3 * size, size : 3 * size] = 1
    return dict(
        sample=torch.randn(batch, 3, frames, size, size, generator=generator),
        timestep=torch.randint(0, 1000, (batch,), generator=generator),
        encoder_hidden_states=torch.randn(batch, frames, unet.cond_dim, generator=generator),
        source_latent=torch.randn(batch, config.source_latent_channels, size, size, generator=generator),
        face_mask=face_mask,
    )


def output_and_gradients(unet, inputs, fused):
    unet.set_fused_kernels(fused)
    unet.zero_grad()
    output = unet(**inputs).sample
    # A loss whose gradient differs per element, so every output value is checked through the backward pass.
    weights = torch.linspace(-1, 1, output.numel()).view_as(output)
    (output * weights).sum().backward()
    gradients = {name: p.grad.clone() for name, p in unet.named_parameters() if p.grad is not None}
    unet.set_fused_kernels(True)
    return output.detach(), gradients


def assert_close_relative(actual, expected, tolerance=1e-5):
    scale = expected.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(actual / scale, expected / scale, atol=tolerance, rtol=0)


@pytest.fixture(scope="module")
def unet():
    return recipe_unet()


# 8 frames of the recipe's 16×16 latent: the window (40) covers the clip; 43 frames (8×8 latent, to stay fast): the
# banded local attention runs.
@pytest.mark.parametrize("batch,frames,size", [(2, 8, 16), (1, 43, 8)])
def test_fused_forward_and_gradients_equal_the_reference(unet, batch, frames, size):
    inputs = random_inputs(unet, batch, frames, size)
    reference, reference_gradients = output_and_gradients(unet, inputs, fused=False)
    fused, fused_gradients = output_and_gradients(unet, inputs, fused=True)
    assert_close_relative(fused, reference)
    # Every parameter gets a gradient and is compared. A gradient sums over all positions and frames, in another
    # order on each path: 1e-5 of its largest entry would be at the edge of float32 rounding.
    assert fused_gradients.keys() == reference_gradients.keys()
    assert len(fused_gradients) == len(list(unet.parameters()))
    for name, gradient in reference_gradients.items():
        assert_close_relative(fused_gradients[name], gradient, tolerance=5e-5)


def test_switch_changes_only_the_path(unet):
    state = {key: value.clone() for key, value in unet.state_dict().items()}
    processors = unet.attn_processors
    assert all(type(p) is FusedLocalAttnProcessor for p in processors.values())
    unet.set_fused_kernels(False)
    assert all(type(p) is LocalAttnProcessor for p in unet.attn_processors.values())
    assert not any(getattr(module, "fused_kernels", False) for module in unet.modules())
    # A processor chosen by the user is kept by the switch.
    unet.set_attn_processor(FullAttnProcessor())
    unet.set_fused_kernels(True)
    assert all(type(p) is FullAttnProcessor for p in unet.attn_processors.values())
    unet.set_attn_processor(FusedLocalAttnProcessor())
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in state.items())


def test_official_parity_of_the_fused_and_reference_paths(fixtures_dir):
    diffusion = load_file(fixtures_dir / "fdm_tiny_diffusion_weights.safetensors")
    face_location = load_file(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors")
    model = convert_unet_checkpoint(diffusion, face_location_state_dict=face_location)
    io = load_file(fixtures_dir / "fdm_tiny_unet_long48_io.safetensors")
    x = io["in.x"]
    for fused in (True, False):
        model.set_fused_kernels(fused)
        with torch.no_grad():
            eps = model(x[:, :3], io["in.time"], io["in.cond"], source_latent=x[:, 3:35],
                        face_location_features=x[:, 35:]).sample
        torch.testing.assert_close(eps, io["out.eps"], atol=2e-5, rtol=1e-5)


def test_lora_wrapped_projections_use_the_reference_path():
    from peft import LoraConfig

    from diffusers_dawn.loaders.lora import lora_target_modules

    model = tiny_unet()
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=lora_target_modules(model), init_lora_weights=False))
    inputs = random_inputs(model, 1, 3, size=8)
    with torch.no_grad():
        fused = model(**inputs).sample
        model.set_fused_kernels(False)
        reference = model(**inputs).sample
        model.disable_adapters()
        without_lora = model(**inputs).sample
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    assert (fused - without_lora).abs().max() > 1e-3  # the adapter really takes part


@pytest.mark.parametrize("num_frames", [5, 47])
@pytest.mark.parametrize("rotary_dim", [4, 6])
def test_fused_processor_matches_local_with_partial_rotation(num_frames, rotary_dim):
    torch.manual_seed(0)
    attention = DAWNAttention(10, heads=3, dim_head=6)
    bias = RelativePositionBias(3, num_buckets=32, max_distance=32, window=40)
    torch.nn.init.normal_(bias.relative_attention_bias.weight, std=2.0)
    rotary = RotaryEmbedding(rotary_dim)
    hidden_states = torch.randn(2, num_frames, 10, requires_grad=True)
    results = []
    for processor in (LocalAttnProcessor(), FusedLocalAttnProcessor()):
        attention.set_processor(processor)
        attention.zero_grad()
        output = attention(hidden_states, rotary_emb=rotary, position_bias=bias(num_frames))
        (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
        results.append((output.detach(), attention.to_q.weight.grad.clone(), attention.to_k.weight.grad.clone()))
    for fused, local in zip(results[1], results[0]):
        torch.testing.assert_close(fused, local, atol=1e-5, rtol=1e-5)
    # Cross-attention goes through the unfused preparation and gives the same result too.
    memory = torch.randn(2, 7, 10)
    outputs = []
    for processor in (LocalAttnProcessor(), FusedLocalAttnProcessor()):
        attention.set_processor(processor)
        outputs.append(attention(hidden_states, encoder_hidden_states=memory, rotary_emb=rotary))
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)


def clip_batch(references, starts, frames, images):
    """A collated batch of clips of a 6-frame video `images` (6, 3, S, S), reference and start per clip."""
    return {
        "frames": torch.stack([images[start : start + frames] for start in starts]),
        "reference_image": images[references],
        "video_index": torch.zeros(len(starts), dtype=torch.long),
        "reference_index": torch.tensor(references),
        "frame_indices": torch.stack([torch.arange(start, start + frames) for start in starts]),
    }


@pytest.mark.parametrize("max_bytes", [2**30, 0])
def test_motion_target_cache_equals_recomputing(max_bytes):
    lfg = tiny_lfg()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cache = MotionTargetCache(max_bytes)
    # Overlapping clips with the same and with different references: some pairs repeat, some do not.
    for references, starts in (([0, 2], [0, 2]), ([0, 1], [1, 2]), ([2, 0], [2, 0])):
        batch = clip_batch(references, starts, 3, images)
        motion, source = cache.targets(lfg, batch)
        with torch.no_grad():
            expected_motion = compute_motion_target(lfg, batch["reference_image"], batch["frames"])
            expected_source = lfg.encode(batch["reference_image"]).latent
        torch.testing.assert_close(motion, expected_motion, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(source, expected_source, atol=1e-5, rtol=1e-5)
    if max_bytes:
        # Pairs (0, 1), (0, 2) of the second batch and all of the third were seen before.
        assert cache.hits == 2 + 6 and cache.misses == 6 + 4
        assert cache.stored_bytes == sum(t.numel() * 4 for t in (*cache.motion.values(), *cache.source.values()))
    else:
        assert cache.hits == 0 and not cache.motion and not cache.source
    with pytest.raises(ValueError, match="non-negative"):
        MotionTargetCache(-1)
