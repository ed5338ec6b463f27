"""LFG training: the perceptual pyramid, equivariance, frame pairs, overfitting, and `train_lfg` end to end."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from diffusers_dawn.models.lfg import LFGAutoencoder, LFGRegionParams
from diffusers_dawn.testing.synthetic import generate_synthetic_clip
from diffusers_dawn.training.lfg_trainer import (
    LFGFramePairDataset,
    PerceptualPyramidLoss,
    RandomTPSTransform,
    Vgg19Features,
    color_jitter,
    equivariance_losses,
    lfg_loss,
    lip_region_masks,
)
from diffusers_dawn.training.run_lfg import LFGTrainingConfig, train_lfg

from _a2v_utils import TINY_LFG_CONFIG, single_thread  # noqa: F401
from _training_utils import build_tiny_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("lfg_data"), num_videos=2, resolution=32)


@pytest.fixture(scope="module")
def random_vgg():
    torch.manual_seed(1)
    return Vgg19Features.from_imagenet()


# -- pieces of the objective ------------------------------------------------------------------------------------------
def test_random_vgg_weights_are_announced(caplog):
    with caplog.at_level(logging.WARNING):
        vgg = Vgg19Features.from_imagenet()
    assert not vgg.pretrained
    assert any("RANDOM VGG weights" in record.getMessage() for record in caplog.records)


def test_vgg_weights_load_by_torchvision_keys(tmp_path, random_vgg):
    # A torchvision-style state dict (keys `features.N.*`, plus the classifier the loader must ignore).
    state_dict = {f"features.{key}": torch.randn_like(value) for key, value in random_vgg.features.state_dict().items()}
    state_dict["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state_dict, tmp_path / "vgg19.pth")
    vgg = Vgg19Features.from_imagenet(str(tmp_path / "vgg19.pth"))
    assert vgg.pretrained
    torch.testing.assert_close(vgg.features[0].weight, state_dict["features.0.weight"])
    torch.testing.assert_close(vgg.features[28].bias, state_dict["features.28.bias"])
    outputs = vgg(torch.rand(1, 3, 32, 32))
    assert [tuple(output.shape) for output in outputs] == [
        (1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 4, 4), (1, 512, 2, 2)
    ]


def test_perceptual_pyramid_is_zero_for_equal_images_and_weights_each_layer(random_vgg):
    image = torch.rand(2, 3, 64, 64)
    loss = PerceptualPyramidLoss(random_vgg)
    assert loss(image, image).item() == 0
    other = torch.rand(2, 3, 64, 64)
    # Known answer: the sum over the usable scales (64, 32, 16 px; 8 px is too small) of 10 × mean |Δ features|.
    expected = 0.0
    for scale in (1.0, 0.5, 0.25):
        if scale == 1:
            a, b = image, other
        else:
            down = loss.downsamplers[f"scale_{scale:g}".replace(".", "_")]
            a, b = down(image), down(other)
        expected += sum(10 * (x - y).abs().mean().item() for x, y in zip(random_vgg(a), random_vgg(b)))
    assert loss(image, other).item() == pytest.approx(expected, rel=1e-5)


def _regions(shift, affine):
    """Region parameters with only what the equivariance losses read (centres and affines)."""
    return LFGRegionParams(shift=shift, covar=affine @ affine.transpose(-1, -2), affine=affine, heatmap=None, u=None,
                           d=None)


def test_identity_deformation_leaves_frames_and_regions_unchanged():
    transform = RandomTPSTransform(2, sigma_affine=0.0, sigma_tps=0.0, generator=torch.Generator().manual_seed(0))
    frames = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(transform.transform_frame(frames), frames, atol=1e-6, rtol=0)
    regions = _regions(torch.rand(2, 3, 2) * 2 - 1, torch.eye(2).expand(2, 3, 2, 2) * 0.3)
    shift_loss, affine_loss = equivariance_losses(regions, regions, transform)
    assert shift_loss.item() == pytest.approx(0, abs=1e-7) and affine_loss.item() == pytest.approx(0, abs=1e-6)


def test_tps_jacobian_matches_finite_differences():
    transform = RandomTPSTransform(3, sigma_affine=0.05, sigma_tps=0.05, generator=torch.Generator().manual_seed(3),
                                   dtype=torch.float64)
    points = torch.rand(3, 7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 1.6 - 0.8
    epsilon = 1e-6
    numeric = []
    for axis in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[axis] = epsilon
        numeric.append((transform.warp_coordinates(points + step) - transform.warp_coordinates(points - step)) / (2 * epsilon))
    numeric = torch.stack(numeric, dim=-1)  # (B, N, output coordinate, input coordinate)
    torch.testing.assert_close(transform.jacobian(points), numeric, atol=1e-6, rtol=1e-5)


def test_equivariance_recovers_a_known_affine():
    # Regions on the deformed frame are the originals pushed through the inverse map: the losses vanish.
    transform = RandomTPSTransform(1, sigma_affine=0.1, sigma_tps=0.0, generator=torch.Generator().manual_seed(5))
    linear, offset = transform.theta[0, :, :2], transform.theta[0, :, 2]
    shift = torch.tensor([[[0.2, -0.1], [-0.4, 0.3]]])
    affine = torch.tensor([[[0.3, 0.05], [0.02, 0.25]], [[0.2, 0.0], [0.1, 0.3]]])[None]
    original = _regions(shift, affine)
    inverse = torch.inverse(linear)
    deformed = _regions((shift - offset) @ inverse.T, inverse @ affine)
    shift_loss, affine_loss = equivariance_losses(original, deformed, transform)
    assert shift_loss.item() < 1e-6 and affine_loss.item() < 1e-5


def test_color_jitter_is_shared_by_the_pair_and_bounded():
    images = torch.rand(2, 3, 8, 8)
    same = torch.stack([images[0], images[0]])
    jittered = color_jitter(same, np.random.default_rng(0))
    torch.testing.assert_close(jittered[0], jittered[1])
    assert jittered.min() >= 0 and jittered.max() <= 1
    torch.testing.assert_close(color_jitter(images, np.random.default_rng(1), strength=0.0), images, atol=1e-5, rtol=0)


def test_frame_pairs_are_reproducible_by_key(tiny_dataset):
    from diffusers_dawn.training.dataset import load_dawn_dataset

    pairs = LFGFramePairDataset(load_dawn_dataset(tiny_dataset), augment=False)
    first, again, other = pairs[(1, 42)], pairs[(1, 42)], pairs[(1, 43)]
    torch.testing.assert_close(first["source"], again["source"])
    assert first["source"].shape == (3, 32, 32) and 0 <= first["source"].min() and first["source"].max() <= 1
    # Without augmentation both frames are frames of the video, in time order.
    frames = [np.asarray(frame, dtype=np.float32) / 255 for frame in load_dawn_dataset(tiny_dataset)[1]["frames"]]
    rng = np.random.default_rng(42)
    start, end = np.sort(rng.integers(0, len(frames), size=2))
    np.testing.assert_allclose(first["source"].permute(1, 2, 0).numpy(), frames[start])
    np.testing.assert_allclose(first["driving"].permute(1, 2, 0).numpy(), frames[end])
    assert not torch.equal(torch.cat([first["source"], first["driving"]]), torch.cat([other["source"], other["driving"]]))


# -- learning ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_overfits_one_fixed_batch(random_vgg):
    clip = generate_synthetic_clip(0, num_frames=20, resolution=32)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255
    source, driving = frames[[0, 3]], frames[[10, 18]]
    torch.manual_seed(0)
    lfg = LFGAutoencoder(**TINY_LFG_CONFIG).train()
    perceptual = PerceptualPyramidLoss(random_vgg)
    optimizer = torch.optim.Adam(lfg.parameters(), lr=1e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(20):
        # The same deformation every step: the batch is entirely fixed.
        output = lfg_loss(lfg, perceptual, source, driving, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0], losses


# -- the training run -------------------------------------------------------------------------------------------------
def _config(dataset, output_dir, config_path, max_steps, **overrides) -> LFGTrainingConfig:
    settings = dict(
        dataset_name_or_path=str(dataset), output_dir=str(output_dir), lfg_config=str(config_path),
        max_train_steps=max_steps, train_batch_size=2, num_repeats=3, checkpointing_steps=2, learning_rate=1e-3,
        report_to="tensorboard", validation_steps=4, validation_frames=4, seed=7,
    )
    settings.update(overrides)
    return LFGTrainingConfig(**settings)


@pytest.mark.slow
def test_training_checkpoints_and_resumes_exactly(tiny_dataset, tmp_path):
    config_path = tmp_path / "tiny_lfg.json"
    config_path.write_text(json.dumps(TINY_LFG_CONFIG))

    # 3 steps per epoch (2 videos × 3 repeats, batch 2): the checkpoint at step 2 is in the middle of an epoch.
    full = train_lfg(_config(tiny_dataset, tmp_path / "full", config_path, 4, use_ema=True))
    assert full.first_step == 0 and full.global_step == 4 and len(full.history) == 4
    assert full.output_dir == str(tmp_path / "full")
    assert all(np.isfinite(step["loss"]) for step in full.history)
    for step in (2, 4):
        checkpoint = tmp_path / "full" / f"checkpoint-{step}"
        assert (checkpoint / "lfg" / "diffusion_pytorch_model.safetensors").is_file()
        assert (checkpoint / "lfg_ema" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "full" / "validation" / "step-000004.png").is_file()
    assert (tmp_path / "full" / "validation" / "step-000004.mp4").is_file()
    assert list((tmp_path / "full" / "logs").rglob("events.out.tfevents.*"))
    trained = LFGAutoencoder.from_pretrained(tmp_path / "full" / "lfg")
    assert trained.config.num_regions == TINY_LFG_CONFIG["num_regions"]

    # An interrupted run: only the step-2 state exists; `latest` continues from it.
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = train_lfg(
        _config(tiny_dataset, tmp_path / "resumed", config_path, 4, use_ema=True, resume_from_checkpoint="latest")
    )
    assert resumed.first_step == 2 and resumed.global_step == 4 and len(resumed.history) == 2
    for uninterrupted, continued in zip(full.history[2:], resumed.history):
        assert continued["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6)
        assert continued["lr"] == pytest.approx(uninterrupted["lr"], rel=1e-12)
    final_full = LFGAutoencoder.from_pretrained(tmp_path / "full" / "lfg").state_dict()
    final_resumed = LFGAutoencoder.from_pretrained(tmp_path / "resumed" / "lfg").state_dict()
    for key, value in final_full.items():
        torch.testing.assert_close(final_resumed[key], value, atol=1e-6, rtol=0)


def test_config_rejects_conflicting_model_sources(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        LFGTrainingConfig(dataset_name_or_path=str(tiny_dataset), output_dir=str(tmp_path), lfg_config="a.json",
                          pretrained_model_name_or_path="b")


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_training(tiny_dataset, tmp_path):
    config_path = tmp_path / "tiny_lfg.json"
    config_path.write_text(json.dumps(TINY_LFG_CONFIG))
    plain = train_lfg(_config(tiny_dataset, tmp_path / "plain", config_path, 2, report_to="none"))
    checkpointed = train_lfg(
        _config(tiny_dataset, tmp_path / "checkpointed", config_path, 2, report_to="none", gradient_checkpointing=True)
    )
    # The second step's loss depends on the first step's gradients.
    for expected, actual in zip(plain.history, checkpointed.history):
        assert actual["loss"] == pytest.approx(expected["loss"], abs=1e-6)


# -- the lip term -------------------------------------------------------------------------------------------------------
def test_lip_masks_cover_the_enlarged_box():
    masks = lip_region_masks(torch.tensor([[10.0, 20.0, 30.0, 34.0], [0.0, 4.0, 0.0, 4.0]]), size=40, margin=0.5)
    assert masks.shape == (2, 1, 40, 40)
    # Box 1: 10..20 × 30..34 pushed out by 0.5 × height (2 px): columns 8..22, rows 28..36 (inclusive, truncated).
    rows, columns = torch.nonzero(masks[0, 0], as_tuple=True)
    assert (rows.min().item(), rows.max().item(), columns.min().item(), columns.max().item()) == (28, 36, 8, 22)
    # Box 2 reaches past the image corner: clipped, not wrapped.
    rows, columns = torch.nonzero(masks[1, 0], as_tuple=True)
    assert (rows.min().item(), columns.min().item()) == (0, 0)


def test_lip_term_weighs_only_errors_inside_the_mask(random_vgg):
    torch.manual_seed(0)
    lfg = LFGAutoencoder(**TINY_LFG_CONFIG).eval()
    frames = torch.rand(2, 3, 32, 32)
    masks = lip_region_masks(torch.tensor([[8.0, 20.0, 18.0, 24.0]] * 2), size=32)
    perceptual = PerceptualPyramidLoss(random_vgg, scales=(1.0,))
    with torch.no_grad():
        plain = lfg_loss(lfg, perceptual, frames, frames, equivariance_shift_weight=0, equivariance_affine_weight=0)
        weighted = lfg_loss(lfg, perceptual, frames, frames, equivariance_shift_weight=0, equivariance_affine_weight=0,
                            pixel_weight=2.0, lip_weight=3.0, lip_masks=masks)
    error = (weighted.prediction - frames).abs()
    assert weighted.pixel.item() == pytest.approx(2.0 * error.mean().item(), rel=1e-5)
    inside = error.permute(1, 0, 2, 3)[:, masks[:, 0] > 0]
    assert weighted.lip.item() == pytest.approx(3.0 * inside.mean().item(), rel=1e-5)
    assert weighted.loss.item() == pytest.approx(plain.loss.item() + weighted.pixel.item() + weighted.lip.item(), rel=1e-5)
    with pytest.raises(ValueError, match="lip_masks"):
        lfg_loss(lfg, perceptual, frames, frames, lip_weight=1.0)


def test_lip_boxes_follow_the_flipped_frames(tiny_dataset):
    from diffusers_dawn.training.dataset import load_dawn_dataset

    dataset = load_dawn_dataset(tiny_dataset)
    plain = LFGFramePairDataset(dataset, augment=False, with_lip_boxes=True)
    augmented = LFGFramePairDataset(dataset, augment=True, with_lip_boxes=True)
    lip_boxes = np.asarray(dataset[0]["lip_box"])
    flips = 0
    for seed in range(12):
        sample = augmented[(0, seed)]
        reference = plain[(0, seed)]
        # The same two frames are drawn with and without augmentation; the box is the driving frame's, mirrored
        # when the frames are, and the first frame's when time is reversed.
        first, second = np.sort(np.random.default_rng(seed).integers(0, dataset[0]["num_frames"], size=2))
        np.testing.assert_allclose(reference["driving_lip_box"].numpy(), lip_boxes[second], rtol=1e-6)
        box = sample["driving_lip_box"].numpy()
        candidates = [lip_boxes[index] for index in (first, second)]
        mirrored = [np.array([32 - b[1], 32 - b[0], b[2], b[3]]) for b in candidates]
        matches = [np.allclose(box, candidate, atol=1e-4) for candidate in candidates + mirrored]
        assert any(matches), (seed, box, candidates)
        flips += any(matches[2:]) and not any(matches[:2])
    assert flips > 0  # some samples really were mirrored
