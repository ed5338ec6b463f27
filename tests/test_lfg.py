"""LFGAutoencoder: parity with the official LFG through the checkpoint converter, decoding, saving and loading."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import diffusers_dawn.models.lfg as lfg_module
from diffusers_dawn.conversion.common import CheckpointConversionError
from diffusers_dawn.conversion.lfg import (
    KERNEL_KEYS,
    convert_lfg_checkpoint,
    convert_lfg_file,
    diffusers_key_to_official,
    infer_lfg_config,
    official_key_to_diffusers,
)
from diffusers_dawn.models.lfg import (
    LFGAutoencoder,
    LFGSourceFeatures,
    flow_to_motion_latent,
    motion_latent_to_flow,
)
from diffusers_dawn.models.lfg_blocks import make_coordinate_grid


ATOL = 1e-5  # fixture README: single-module outputs
IMAGE_ATOL = 2e-5  # fixture README: LFG images
REGION_FIELDS = ("shift", "covar", "heatmap", "affine")


def _split_checkpoint(flat):
    checkpoint = {}
    for key, value in flat.items():
        top, rest = key.split(".", 1)
        checkpoint.setdefault(top, {})[rest] = value
    return checkpoint


@pytest.fixture(scope="module")
def official_checkpoint(fixtures_dir):
    return _split_checkpoint(load_file(fixtures_dir / "lfg_tiny_weights.safetensors"))


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_file(fixtures_dir / "lfg_tiny_io.safetensors")


@pytest.fixture(scope="module")
def model(official_checkpoint):
    return convert_lfg_checkpoint(official_checkpoint)


@pytest.fixture(scope="module")
def training_outputs(model, io):
    torch.set_num_threads(2)
    with torch.no_grad():
        return model(io["in.source_image"], io["in.driving_image"])


def _assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol}"


# -- converter ----------------------------------------------------------------------------------------------------
def test_converter_reads_the_tiny_widths_from_the_weights(model, fixtures_dir):
    config = model.config
    assert (config.block_expansion, config.num_down_blocks, config.num_bottleneck_blocks) == (8, 2, 6)
    assert (config.region_block_expansion, config.region_num_blocks) == (4, 5)
    assert (config.motion_block_expansion, config.motion_num_blocks, config.motion_max_features) == (4, 5, 64)
    assert (config.background_block_expansion, config.background_num_blocks, config.bg_type) == (4, 5, "affine")
    assert config.num_regions == 10
    # The official tiny model's parameters (generator 305,067 + regions 225,380 + background 99,870), counted from the
    # shapes recorded with the fixtures: every entry but the BatchNorm statistics and the fixed anti-aliasing kernels.
    shapes = json.loads((fixtures_dir / "lfg_tiny_config.json").read_text())["state_dict_shapes"]
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    official = sum(
        math.prod(shape) for key, shape in shapes.items() if not key.endswith(statistics) and key not in KERNEL_KEYS
    )
    assert official == 305_067 + 225_380 + 99_870
    assert sum(parameter.numel() for parameter in model.parameters()) == official
    assert not model.training


def test_key_mapping_is_a_bijection(official_checkpoint, model):
    official_keys = {f"{top}.{key}" for top, state in official_checkpoint.items() for key in state}
    stored = official_keys - set(KERNEL_KEYS)
    mapped = {official_key_to_diffusers(key) for key in stored}
    assert None not in mapped and mapped == set(model.state_dict())
    assert {diffusers_key_to_official(key) for key in mapped} == stored


def test_converter_keeps_batchnorm_statistics(official_checkpoint, model):
    norm = official_checkpoint["generator"]["bottleneck.r3.norm2.running_var"]
    assert torch.equal(model.decoder.bottleneck[3].norm2.running_var, norm)
    assert torch.equal(
        model.dense_motion.hourglass.decoder.up_blocks[2].norm.running_mean,
        official_checkpoint["generator"]["pixelwise_flow_predictor.hourglass.decoder.up_blocks.2.norm.running_mean"],
    )
    assert int(model.region_predictor.hourglass.encoder.down_blocks[0].norm.num_batches_tracked) == 1000


def test_converter_names_every_missing_and_unknown_key(official_checkpoint):
    corrupted = copy.copy(official_checkpoint)
    corrupted["generator"] = dict(official_checkpoint["generator"])
    del corrupted["generator"]["bottleneck.r3.norm1.running_var"]
    corrupted["generator"]["bottleneck.r6.conv1.bias"] = torch.zeros(32)
    corrupted["region_predictor"] = dict(official_checkpoint["region_predictor"])
    del corrupted["region_predictor"]["down.weight"]
    with pytest.raises(CheckpointConversionError) as error:
        convert_lfg_checkpoint(corrupted)
    message = str(error.value)
    assert "generator.bottleneck.r3.norm1.running_var" in message
    assert "region_predictor.down.weight" in message
    assert "generator.bottleneck.r6.conv1.bias" in message


def test_converter_rejects_a_missing_sub_dict_and_a_wrong_kernel(official_checkpoint):
    with pytest.raises(CheckpointConversionError, match="bg_predictor"):
        convert_lfg_checkpoint({"generator": {}, "region_predictor": {}, "optimizer": {}})
    with pytest.raises(CheckpointConversionError, match="region_scale_factor"):
        convert_lfg_checkpoint(official_checkpoint, region_scale_factor=0.5)


def test_convert_lfg_file_ignores_training_entries(official_checkpoint, io, model, tmp_path):
    path = tmp_path / "lfg.pth"
    torch.save({**official_checkpoint, "epoch": 3, "optimizer": {"state": {}}}, path)
    loaded = convert_lfg_file(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_default_config_is_the_official_real_model(fixtures_dir):
    real = json.loads((fixtures_dir / "real_config_state_dicts.json").read_text())["LFG_256"]
    shapes = {
        f"{top}.{key}": tuple(entry["shape"])
        for top, state in real["state_dicts"].items()
        for key, entry in state.items()
    }
    assert len(shapes) == 306
    inferred = infer_lfg_config({key: torch.empty(shape, device="meta") for key, shape in shapes.items()})
    with torch.device("meta"):
        model = LFGAutoencoder()
    assert all(model.config[key] == value for key, value in inferred.items()), inferred
    ours = {diffusers_key_to_official(key): tuple(value.shape) for key, value in model.state_dict().items()}
    assert ours == {key: shape for key, shape in shapes.items() if key not in KERNEL_KEYS}
    counts = {
        part: sum(p.numel() for p in module.parameters())
        for part, module in [("region_predictor", model.region_predictor), ("bg_predictor", model.background_predictor)]
    }
    counts["generator"] = sum(p.numel() for p in model.parameters()) - sum(counts.values())
    assert counts == {part: real["counts"][part]["parameters_unique"] for part in counts}


# -- parity with the official modules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["source", "driving"])
def test_region_params_match_official(training_outputs, io, side):
    regions = getattr(training_outputs, f"{side}_regions")
    for field in REGION_FIELDS:
        _assert_close(regions[field], io[f"out.{side}_region_params.{field}"], ATOL, f"{side} {field}")
    # The official u/d are (batch * K, 2, 2). d = diag(sqrt(singular values)) is unique; each column of u is an
    # eigenvector of the covariance, unique only up to its sign, so compare the sign-free projectors u_j u_j^T.
    _assert_close(regions.d.reshape(-1, 2, 2), io[f"out.{side}_region_params.d"], ATOL, f"{side} d")
    u, expected_u = regions.u.reshape(-1, 2, 2), io[f"out.{side}_region_params.u"]
    for column in range(2):
        projector = u[:, :, column, None] * u[:, None, :, column]
        expected = expected_u[:, :, column, None] * expected_u[:, None, :, column]
        _assert_close(projector, expected, ATOL, f"{side} u column {column}")


def test_background_params_match_official(training_outputs, io):
    _assert_close(training_outputs.background_params, io["out.bg_params"], ATOL, "bg_params")


def test_generator_outputs_match_official(training_outputs, io):
    _assert_close(training_outputs.grid, io["out.generator.optical_flow"], ATOL, "optical_flow")
    _assert_close(training_outputs.occlusion, io["out.generator.occlusion_map"], ATOL, "occlusion_map")
    _assert_close(training_outputs.deformed, io["out.generator.deformed"], IMAGE_ATOL, "deformed")
    _assert_close(training_outputs.prediction, io["out.generator.prediction"], IMAGE_ATOL, "prediction")
    # The official run repeats the source over the batch; ours encodes it once.
    expected_latent = io["out.generator.bottle_neck_feat"]
    _assert_close(training_outputs.source_latent.expand_as(expected_latent), expected_latent, ATOL, "bottle_neck_feat")


def test_encode_latent_matches_compute_fea(model, io):
    with torch.no_grad():
        features = model.encode(io["in.source_image"])
    assert isinstance(features, LFGSourceFeatures)
    assert [tuple(f.shape[1:]) for f in features.feature_maps] == [(8, 128, 128), (16, 64, 64), (32, 32, 32)]
    _assert_close(features.latent, io["out.compute_fea"], ATOL, "compute_fea")
    assert model.latent_channels == features.latent.shape[1] == 32


def test_warp_and_decode_matches_forward_with_flow(model, io):
    with torch.no_grad():
        decoded = model.warp_and_decode(io["in.source_image"], io["in.ext_optical_flow"], io["in.ext_occlusion_map"])
    _assert_close(decoded.prediction, io["out.forward_with_flow_ext.prediction"], IMAGE_ATOL, "prediction")
    _assert_close(decoded.deformed, io["out.forward_with_flow_ext.deformed"], IMAGE_ATOL, "deformed")


# -- decoding frames ----------------------------------------------------------------------------------------------
def _frame_flows(io, batch, frames):
    generator = torch.Generator().manual_seed(7)
    base_grid, base_occlusion = io["in.ext_optical_flow"][:1], io["in.ext_occlusion_map"][:1]
    grid = base_grid.unsqueeze(0) + 0.05 * torch.randn(batch, frames, *base_grid.shape[1:], generator=generator)
    occlusion = torch.rand(batch, frames, *base_occlusion.shape[1:], generator=generator)
    return grid, occlusion


@pytest.mark.parametrize("frames_per_batch", [None, 2])
def test_decode_equals_per_frame_forward_with_flow(model, io, frames_per_batch):
    source_images = torch.cat([io["in.source_image"], io["in.driving_image"][:1]])
    grid, occlusion = _frame_flows(io, batch=2, frames=3)
    with torch.no_grad():
        features = model.encode(source_images)
        frames = model.decode(features, grid, occlusion, frames_per_batch=frames_per_batch)
        assert frames.shape == (2, 3, 3, 128, 128) and frames.dtype == torch.float32
        for b in range(2):
            for f in range(3):
                expected = model.warp_and_decode(source_images[b : b + 1], grid[b, f : f + 1], occlusion[b, f : f + 1])
                _assert_close(frames[b, f], expected.prediction[0], 1e-6, f"frame {b},{f}")


def test_decode_encodes_an_image_source_once_and_broadcasts_it(model, io, monkeypatch):
    grid, occlusion = _frame_flows(io, batch=2, frames=2)
    calls = []
    original_forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda image: calls.append(image.shape) or original_forward(image))
    with torch.no_grad():
        from_image = model.decode(io["in.source_image"], grid, occlusion, frames_per_batch=1)
    assert calls == [torch.Size([1, 3, 128, 128])]
    monkeypatch.undo()
    with torch.no_grad():
        repeated = model.decode(model.encode(io["in.source_image"].repeat(2, 1, 1, 1)), grid, occlusion)
    _assert_close(from_image, repeated, 1e-6, "broadcast source")


def test_decode_rejects_mismatched_shapes(model, io):
    grid, occlusion = _frame_flows(io, batch=1, frames=2)
    with pytest.raises(ValueError, match="latent_to_motion"):
        model.decode(io["in.source_image"], grid[0], occlusion[0])
    with pytest.raises(ValueError, match="frames_per_batch"):
        model.decode(io["in.source_image"], grid, occlusion, frames_per_batch=0)
    with pytest.raises(ValueError, match="batch size 2"):
        two_sources = io["in.source_image"].repeat(2, 1, 1, 1)
        model.decode(two_sources, grid.repeat(3, 1, 1, 1, 1), occlusion.repeat(3, 1, 1, 1, 1))


def test_motion_latent_conversions_are_inverse(io):
    motion_latent = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    grid, occlusion = motion_latent_to_flow(motion_latent)
    assert grid.shape == (2, 4, 32, 32, 2) and occlusion.shape == (2, 4, 1, 32, 32)
    assert torch.equal(grid[1, 2, 5, 7], motion_latent[1, :2, 2, 5, 7])
    assert torch.allclose(occlusion[1, 2, 0, 5, 7], (motion_latent[1, 2, 2, 5, 7] + 1) / 2)
    assert torch.allclose(flow_to_motion_latent(grid, occlusion), motion_latent, atol=1e-6)
    with pytest.raises(ValueError, match="motion latents"):
        motion_latent_to_flow(motion_latent[:, :2])


def test_model_motion_latent_is_official_by_default_and_relative_when_configured(model):
    grid = torch.rand(2, 3, 8, 8, 2, generator=torch.Generator().manual_seed(4)) * 2 - 1
    occlusion = torch.rand(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    # Official checkpoints: the latent is DAWN's absolute one.
    assert torch.equal(model.motion_to_latent(grid, occlusion), flow_to_motion_latent(grid, occlusion))

    relative = LFGAutoencoder.from_config(model.config, relative_motion_latent=True, motion_latent_scale=15.0)
    latent = relative.motion_to_latent(grid, occlusion)
    # Channel 0 at column j is the grid's x minus the identity's x (2j / 7 - 1, end points exactly ±1), scaled.
    identity_x = 2 * torch.arange(8) / 7 - 1
    assert torch.allclose(latent[:, 0], 15.0 * (grid[..., 0] - identity_x), atol=1e-5)
    assert torch.allclose(latent[:, 2], 15.0 * (occlusion[:, :, 0] * 2 - 2), atol=1e-5)
    back_grid, back_occlusion = relative.latent_to_motion(latent)
    assert torch.allclose(back_grid, grid, atol=1e-6) and torch.allclose(back_occlusion, occlusion, atol=1e-6)
    # A still frame (identity grid, nothing occluded) is the zero latent.
    still_grid = make_coordinate_grid(8, 8).expand(1, 1, 8, 8, 2)
    still = relative.motion_to_latent(still_grid, torch.ones(1, 1, 1, 8, 8))
    assert still.abs().max() < 1e-6
    with pytest.raises(ValueError, match="motion_latent_scale"):
        LFGAutoencoder.from_config(model.config, motion_latent_scale=0.0)


# -- saving, loading, precision ------------------------------------------------------------------------------------
def test_save_pretrained_round_trip_is_bit_exact(model, io, tmp_path):
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = LFGAutoencoder.from_pretrained(tmp_path).eval()

    def public(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}

    assert public(loaded.config) == public(model.config)
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for key in state:
        assert torch.equal(state[key], reloaded[key]), key
    with torch.no_grad():
        args = (io["in.source_image"], io["in.ext_optical_flow"], io["in.ext_occlusion_map"])
        assert torch.equal(loaded.warp_and_decode(*args).prediction, model.warp_and_decode(*args).prediction)


def test_from_pretrained_float16_keeps_motion_estimators_in_float32(model, io, tmp_path):
    model.save_pretrained(tmp_path)
    half = LFGAutoencoder.from_pretrained(tmp_path, torch_dtype=torch.float16).eval()
    reference = model.state_dict()
    for name, tensor in half.state_dict().items():
        original = reference[name]
        if name.split(".")[0] in LFGAutoencoder._keep_in_fp32_modules or not original.is_floating_point():
            assert tensor.dtype == original.dtype and torch.equal(tensor, original), name
        else:
            assert tensor.dtype == torch.float16 and torch.equal(tensor, original.half()), name
    assert half.dtype == torch.float16
    with torch.no_grad():
        motion = half.estimate_motion(io["in.source_image"], io["in.driving_image"])
        _assert_close(motion.grid, io["out.generator.optical_flow"], ATOL, "fp16 model grid (float32 motion)")
        frames = half.decode(half.encode(io["in.source_image"].half()), motion.grid[:, None], motion.occlusion[:, None])
    assert frames.dtype == torch.float32
    _assert_close(frames[:, 0], io["out.generator.prediction"], 2e-2, "fp16 decode")


def test_gradient_checkpointing_gives_the_same_gradients_and_statistics(official_checkpoint, io):
    source, driving = io["in.source_image"], io["in.driving_image"]
    results = []
    for checkpointing in (False, True):
        model = convert_lfg_checkpoint(official_checkpoint).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        output = model(source, driving)
        (output.prediction.mean() + output.driving_regions.shift.square().mean()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        results.append((grads, buffers))
    (grads, buffers), (checkpointed_grads, checkpointed_buffers) = results
    assert grads.keys() == checkpointed_grads.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        assert torch.allclose(grads[name], checkpointed_grads[name], atol=1e-6, rtol=1e-4), name
    for name in buffers:
        assert torch.allclose(buffers[name].float(), checkpointed_buffers[name].float(), atol=1e-6), name


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="pca_based=True"):
        LFGAutoencoder(pca_based=False)
    with pytest.raises(ValueError, match="bg_type"):
        LFGAutoencoder(bg_type="homography")


def test_model_module_exposes_model_mixin_for_pipeline_loading():
    # diffusers' pipeline loader looks the base class up in the module that defines the component.
    assert lfg_module.ModelMixin is not None and issubclass(LFGAutoencoder, lfg_module.ModelMixin)


def test_latent_downsampling_is_what_the_encoder_and_the_motion_estimator_produce(model, io):
    with torch.no_grad():
        latent = model.encode(io["in.source_image"]).latent
        motion = model.estimate_motion(io["in.source_image"], io["in.source_image"])
    size = io["in.source_image"].shape[-1]
    assert model.latent_downsampling == 4  # DAWN's two stride-2 blocks
    assert latent.shape[-1] == motion.grid.shape[-2] == size // model.latent_downsampling
