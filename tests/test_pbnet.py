import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffusers_dawn.conversion.common import CheckpointConversionError
from diffusers_dawn.conversion.pbnet import convert_pbnet_checkpoint, convert_pbnet_file, load_pbnet_options
from diffusers_dawn.models.attention_processor import FullAttnProcessor
from diffusers_dawn.models.pbnet import PBNetModel, sinusoidal_position_encoding


IO_FILES = {16: "pbnet_tiny_short16_io.safetensors", 256: "pbnet_tiny_long256_io.safetensors"}
# Seeds of the global RNG right before the official `generate` drew its latents, plus the number of frames
# (tests/fixtures/official/README.md, "Random draws").
LATENT_SEEDS = {"pose": 6100, "blink": 6200}


def official_weights(fixtures_dir, kind):
    return load_file(str(fixtures_dir / f"pbnet_tiny_{kind}_weights.safetensors"))


def official_options(fixtures_dir, kind):
    return json.loads((fixtures_dir / f"pbnet_tiny_{kind}_config.json").read_text())["parameters_passed_to_get_model"]


@pytest.fixture(scope="module")
def converted(fixtures_dir):
    return {
        kind: convert_pbnet_checkpoint(official_weights(fixtures_dir, kind), official_options(fixtures_dir, kind))
        for kind in ("pose", "blink")
    }


@pytest.fixture(scope="module")
def io_tensors(fixtures_dir):
    return {frames: load_file(str(fixtures_dir / name)) for frames, name in IO_FILES.items()}


def initial_states(io, kind):
    """(network-unit initial state, raw initial state, official post-processed states)."""
    if kind == "pose":
        return io["in.init_pose_norm"], io["in.init_pose_raw"], io["pose.post.dri_pose"]
    return io["in.init_blink"], io["in.init_blink"], io["blink.post.dri_blink"]


def recorded_latents(io, kind):
    return io[f"{kind}.in.z"].transpose(0, 1)  # official (frames, batch, latent) -> (batch, frames, latent)


def disable_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# ----------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("frames", [16, 256])
@pytest.mark.parametrize("kind", ["pose", "blink"])
def test_sample_matches_official(converted, io_tensors, kind, frames):
    model, io = converted[kind], io_tensors[frames]
    initial, _, _ = initial_states(io, kind)
    delta = model.sample(initial, io["in.audio"], lengths=io["in.durations"], latents=recorded_latents(io, kind))
    torch.testing.assert_close(delta, io[f"{kind}.out.output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [16, 256])
@pytest.mark.parametrize("kind", ["pose", "blink"])
def test_generator_reproduces_official_latent_draw(converted, io_tensors, kind, frames):
    # The official `generate` draws z from the global RNG; a generator in the same state must give the same output.
    model, io = converted[kind], io_tensors[frames]
    initial, _, _ = initial_states(io, kind)
    generator = torch.Generator().manual_seed(LATENT_SEEDS[kind] + frames)
    delta = model.sample(initial, io["in.audio"], generator=generator)
    torch.testing.assert_close(delta, io[f"{kind}.out.output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [16, 256])
@pytest.mark.parametrize("kind", ["pose", "blink"])
def test_generate_states_matches_official_post_processing(converted, io_tensors, kind, frames):
    model, io = converted[kind], io_tensors[frames]
    _, initial_raw, expected = initial_states(io, kind)
    states = model.generate_states(initial_raw, io["in.audio"], latents=recorded_latents(io, kind))
    # The 1e-5 tolerance on the normalised residual, scaled by the de-normalisation (up to 1080 px for ty).
    span = 1.0
    if model.config.state_min is not None:
        span = torch.tensor(model.config.state_max) - torch.tensor(model.config.state_min)
    assert ((states - expected).abs() <= 1e-5 * span + 1e-5 * expected.abs()).all()


@pytest.mark.parametrize("kind", ["pose", "blink"])
def test_relative_position_biases_match_official(converted, io_tensors, kind):
    decoder, io = converted[kind].decoder, io_tensors[16]
    assert torch.equal(decoder.self_attention_bias.dense(16), io[f"{kind}.out.rel_pos_bias_tgt"])
    assert torch.equal(decoder.cross_attention_bias.dense(16), io[f"{kind}.out.rel_pos_bias_mem"])


def test_normalisation_round_trip_and_official_constants(converted, io_tensors):
    pose, blink, io = converted["pose"], converted["blink"], io_tensors[16]
    torch.testing.assert_close(pose.normalize_states(io["in.init_pose_raw"]), io["in.init_pose_norm"], atol=0, rtol=0)
    states = torch.tensor([[[-30.0, 10.0, 5.0, 4.8e-4, 100.0, 900.0]]])
    torch.testing.assert_close(pose.denormalize_states(pose.normalize_states(states)), states, atol=1e-4, rtol=1e-6)
    assert torch.equal(blink.normalize_states(io["in.init_blink"]), io["in.init_blink"])


# ------------------------------------------------------------------------------------------------ window rule


def test_window_is_applied_in_training_mode_too(fixtures_dir, io_tensors):
    # The official model masks beyond ±200 frames only in eval mode; ours always does. With dropout off, training
    # mode must therefore reproduce the (windowed) eval-mode fixture for a 256-frame sequence.
    model = convert_pbnet_checkpoint(official_weights(fixtures_dir, "pose"), official_options(fixtures_dir, "pose"))
    disable_dropout(model)
    io = io_tensors[256]
    model.train()
    delta = model.sample(io["in.init_pose_norm"], io["in.audio"], latents=recorded_latents(io, "pose"))
    torch.testing.assert_close(delta, io["pose.out.output"], atol=1e-5, rtol=1e-5)

    # ...and the window matters at this length: unlimited attention changes the result.
    model.eval()
    for bias in (model.decoder.self_attention_bias, model.decoder.cross_attention_bias):
        bias.window = None
    unlimited = model.sample(io["in.init_pose_norm"], io["in.audio"], latents=recorded_latents(io, "pose"))
    assert (unlimited - io["pose.out.output"]).abs().max() > 1e-3


def test_reemb6_options_select_the_100_frame_window(fixtures_dir):
    options = dict(official_options(fixtures_dir, "pose"), archiname="transformerreemb6")
    model = convert_pbnet_checkpoint(official_weights(fixtures_dir, "pose"), options)
    assert model.config.window == 100
    assert model.decoder.self_attention_bias(256).radius == 100
    assert convert_pbnet_checkpoint(official_weights(fixtures_dir, "pose")).config.window == 200


# -------------------------------------------------------------------------------------- batching and sampling


def test_padded_batch_equals_sequences_sampled_alone(converted, io_tensors):
    model, io = converted["blink"], io_tensors[16]
    audio = torch.cat([io["in.audio"], io["in.audio"].flip(1)])
    initial = torch.cat([io["in.init_blink"], io["in.init_blink"] + 0.05])
    latents = torch.randn(2, 16, model.config.latent_dim, generator=torch.Generator().manual_seed(3))
    batched = model.sample(initial, audio, lengths=[16, 11], latents=latents)
    alone = [
        model.sample(initial[i : i + 1], audio[i : i + 1, :length], latents=latents[i : i + 1, :length])
        for i, length in ((0, 16), (1, 11))
    ]
    torch.testing.assert_close(batched[0:1], alone[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batched[1:2, :11], alone[1], atol=1e-6, rtol=1e-6)
    assert torch.equal(batched[1, 11:], torch.zeros(5, 2))
    # Whatever sits in the padding does not matter.
    audio[1, 11:] = 100.0
    assert torch.equal(model.sample(initial, audio, lengths=[16, 11], latents=latents), batched)


def sample_with_seed(model, io, seed):
    return model.sample(io["in.init_pose_norm"], io["in.audio"], generator=torch.Generator().manual_seed(seed))


def test_sampling_is_deterministic_per_generator(converted, io_tensors):
    model, io = converted["pose"], io_tensors[16]
    first, again, other = (sample_with_seed(model, io, seed) for seed in (7, 7, 8))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_zero_noise_scale_samples_the_zero_latent(converted, io_tensors):
    # noise_scale multiplies the latents; zero noise is deterministic without a generator.
    model, io = converted["pose"], io_tensors[16]
    args = (io["in.init_pose_norm"], io["in.audio"])
    zero = model.sample(*args, noise_scale=0.0)
    torch.testing.assert_close(zero, model.sample(*args, latents=torch.zeros(1, 16, 4)), atol=0, rtol=0)
    assert (zero - sample_with_seed(model, io, 7)).abs().max() > 1e-3


def test_one_generator_per_sequence_gives_each_the_draw_it_gets_alone(converted, io_tensors):
    model, io = converted["pose"], io_tensors[16]
    pair = model.sample(
        io["in.init_pose_norm"].repeat(2, 1, 1),
        io["in.audio"].repeat(2, 1, 1),
        generator=[torch.Generator().manual_seed(8), torch.Generator().manual_seed(7)],
    )
    alone = torch.cat([sample_with_seed(model, io, 8), sample_with_seed(model, io, 7)])
    torch.testing.assert_close(pair, alone, atol=1e-6, rtol=1e-6)


def test_bad_inputs_get_clear_errors(converted, io_tensors):
    model, io = converted["pose"], io_tensors[16]
    with pytest.raises(ValueError, match="reshape a single state"):
        model.sample(io["in.init_pose_norm"][:, 0], io["in.audio"])
    with pytest.raises(ValueError, match="audio_features"):
        model.sample(io["in.init_pose_norm"], io["in.audio"][..., :8])
    with pytest.raises(ValueError, match="lengths"):
        model.sample(io["in.init_pose_norm"], io["in.audio"], lengths=[17])
    with pytest.raises(ValueError, match="latents"):
        model.sample(io["in.init_pose_norm"], io["in.audio"], latents=torch.zeros(1, 15, 4))
    with pytest.raises(ValueError, match="6-D states"):
        model.generate_states(io["in.init_blink"], io["in.audio"])


# --------------------------------------------------------------------------------------------------- training


@pytest.fixture
def training_batch(fixtures_dir, io_tensors):
    """A fresh pose PBNet in training mode and two sequences of 16 and 12 frames (normalised states, audio)."""
    model = convert_pbnet_checkpoint(official_weights(fixtures_dir, "pose"), official_options(fixtures_dir, "pose"))
    model.train()
    generator = torch.Generator().manual_seed(0)
    raw_states = torch.tensor([3.0, -4.0, 1.5, 4.8e-4, 56.5, 64.9]) + torch.randn(2, 16, 6, generator=generator)
    return model, model.normalize_states(raw_states), io_tensors[16]["in.audio"].repeat(2, 1, 1)


def test_training_forward_shapes_targets_and_padding(training_batch):
    model, states, audio = training_batch
    output = model(states, audio, lengths=[16, 12], generator=torch.Generator().manual_seed(1))
    assert output.prediction.shape == output.target_delta.shape == (2, 16, 6)
    assert output.mu.shape == output.logvar.shape == (2, 16, 4)
    assert output.mask.tolist() == [[True] * 16, [True] * 12 + [False] * 4]
    torch.testing.assert_close(output.target_delta[0], states[0] - states[0, :1], atol=0, rtol=0)
    assert torch.equal(output.target_delta[1, 12:], torch.zeros(4, 6))
    assert torch.equal(output.prediction[1, 12:], torch.zeros(4, 6))


def test_training_losses_reach_every_used_parameter(training_batch):
    model, states, audio = training_batch
    output = model(states, audio, lengths=[16, 12], generator=torch.Generator().manual_seed(1))
    mask = output.mask
    reconstruction = nn.functional.mse_loss(output.prediction[mask], output.target_delta[mask])
    kl = -0.5 * torch.mean(1 + output.logvar - output.mu.pow(2) - output.logvar.exp())
    assert reconstruction.ndim == kl.ndim == 0 and reconstruction > 0 and kl > 0
    (reconstruction + 0.004 * kl).backward()

    # All identical initial queries make the softmax weights of the initial attention irrelevant: its query and
    # key projections legitimately get no gradient. Every other parameter must receive one.
    unused = {"decoder.query_attn.to_q.weight", "decoder.query_attn.to_k.weight"}
    for name, parameter in model.named_parameters():
        gradient = parameter.grad
        if name in unused:
            assert gradient is None or gradient.abs().max() < 1e-8, name
        else:
            assert gradient is not None and gradient.abs().max() > 0, name


def test_training_reparameterisation_noise_comes_from_the_generator(training_batch):
    model, states, audio = training_batch
    model.eval()  # dropout off: the generator is the only source of randomness
    first, again, other = (
        model(states, audio, lengths=[16, 12], generator=torch.Generator().manual_seed(seed)).prediction
        for seed in (1, 1, 2)
    )
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4


def test_attention_processors_are_swappable(converted):
    model = converted["blink"]
    processors = model.attn_processors
    assert len(processors) == 1 + 2 * model.config.num_layers
    assert "decoder.query_attn.processor" in processors
    model.set_attn_processor(FullAttnProcessor())
    assert all(isinstance(p, FullAttnProcessor) for p in model.attn_processors.values())


# ---------------------------------------------------------------------------------------------- serialisation


def test_save_and_load_are_bit_exact_in_fp32(converted, io_tensors, tmp_path):
    model, io = converted["pose"], io_tensors[16]
    model.save_pretrained(tmp_path / "fp32")
    reloaded = PBNetModel.from_pretrained(tmp_path / "fp32").eval()
    assert reloaded.config.state_min == list(model.config.state_min)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    args = (io["in.init_pose_raw"], io["in.audio"])
    latents = recorded_latents(io, "pose")
    assert torch.equal(reloaded.generate_states(*args, latents=latents), model.generate_states(*args, latents=latents))


def test_save_and_load_are_bit_exact_in_fp16_and_stay_close_to_fp32(converted, io_tensors, tmp_path):
    model, io = converted["pose"], io_tensors[16]
    latents = recorded_latents(io, "pose")
    half = PBNetModel.from_config(model.config).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.float16)
    half.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    reloaded_half = PBNetModel.from_pretrained(tmp_path / "fp16", variant="fp16", torch_dtype=torch.float16).eval()
    for key, value in half.state_dict().items():
        assert reloaded_half.state_dict()[key].dtype == torch.float16
        assert torch.equal(reloaded_half.state_dict()[key], value), key
    # Half precision stays close to the official float32 result; raw units in and out keep the caller's dtype.
    delta = reloaded_half.sample(io["in.init_pose_norm"].half(), io["in.audio"].half(), latents=latents)
    assert delta.dtype == torch.float16
    assert (delta.float() - io["pose.out.output"]).abs().max() < 5e-3
    states = reloaded_half.generate_states(io["in.init_pose_raw"], io["in.audio"].half(), latents=latents)
    assert states.dtype == torch.float32


# ------------------------------------------------------------------------------------------------- converter


def test_converter_rejects_reemb8_rotary_tables(fixtures_dir):
    weights = official_weights(fixtures_dir, "blink")
    weights["decoder.init_temporal_attn.fn.fn.rotary_emb.freqs"] = 1.0 / 10000 ** (torch.arange(0, 32, 2) / 32)
    for index in range(2):
        for attention in ("self_attn", "multihead_attn"):
            key = f"decoder.seqTransDecoder.decoder_layers.{index}.{attention}.rotary_emb.freqs"
            weights[key] = 1.0 / 10000 ** (torch.arange(0, 16, 2) / 16)
    with pytest.raises(CheckpointConversionError, match="transformerreemb8"):
        convert_pbnet_checkpoint(weights)


def test_converter_rejects_unknown_and_missing_keys(fixtures_dir):
    weights = official_weights(fixtures_dir, "pose")
    weights["decoder.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointConversionError, match=r"unknown keys \[decoder\.extra_head\.weight\]"):
        convert_pbnet_checkpoint(weights)
    weights = official_weights(fixtures_dir, "pose")
    del weights["decoder.ztimelinear.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing keys \[decoder\.ztimelinear\.bias\]"):
        convert_pbnet_checkpoint(weights)


def test_converter_checks_constant_tables(fixtures_dir):
    weights = official_weights(fixtures_dir, "pose")
    stored = weights["encoder.sequence_pos_encoder.pe"][:300, 0]
    torch.testing.assert_close(stored, sinusoidal_position_encoding(300, 12), atol=1e-6, rtol=0)
    weights["decoder.sequence_pos_encoder.pe"] = weights["decoder.sequence_pos_encoder.pe"] + 0.01
    with pytest.raises(CheckpointConversionError, match="sinusoidal"):
        convert_pbnet_checkpoint(weights)
    with pytest.raises(CheckpointConversionError, match="archiname"):
        convert_pbnet_checkpoint(official_weights(fixtures_dir, "pose"), {"archiname": "transformerreemb8"})


def test_convert_file_reads_python_tagged_opt_yaml(fixtures_dir, io_tensors, tmp_path):
    torch.save(official_weights(fixtures_dir, "blink"), tmp_path / "checkpoint_95000.pth.tar")
    # PyYAML dumps of the official options can carry Python tags that the safe loader rejects.
    (tmp_path / "opt.yaml").write_text(
        "archiname: transformerreemb6\nmax_distance: 128\ndropout: 0.0\nactivation: gelu\n"
        "lambdas: !!python/object/apply:collections.OrderedDict\n- - [rc, 1.0]\n  - [kl, 0.004]\n"
        "input_size: !!python/tuple [1, 2]\n"
    )
    options = load_pbnet_options(tmp_path / "opt.yaml")
    assert options["input_size"] == [1, 2] and options["archiname"] == "transformerreemb6"
    model = convert_pbnet_file(tmp_path / "checkpoint_95000.pth.tar")
    assert model.config.window == 100 and model.config.dropout == 0.0 and model.config.state_min is None
    io = io_tensors[16]
    delta = model.sample(io["in.init_blink"], io["in.audio"], latents=recorded_latents(io, "blink"))
    torch.testing.assert_close(delta, io["blink.out.output"], atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointConversionError, match="expected a PBNet checkpoint"):
        torch.save({"diffusion": {}}, tmp_path / "other.pth")
        convert_pbnet_file(tmp_path / "other.pth")
