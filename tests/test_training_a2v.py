"""A2V-FDM two-stage curriculum: clip sampling, conditions, loss components, overfitting, and `train_a2v` / `train_lora`."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open

from diffusers_dawn.loaders import DAWNLoraLoaderMixin
from diffusers_dawn.loaders.lora import lora_target_modules
from diffusers_dawn.models.lfg import flow_to_motion_latent
from diffusers_dawn.models.unet_3d_flow import BLINK_DIM, POSE_DIM, UNet3DFlowModel, build_condition
from diffusers_dawn.processing.video import read_video
from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler, dynamic_threshold
from diffusers_dawn.training.a2v_trainer import (
    A2VBatchSampler,
    a2v_loss,
    compute_motion_target,
    drop_conditions,
    flow_loss,
    lip_weighted_loss,
    sample_clip,
    sample_clip_length,
)
from diffusers_dawn.training.run_a2v import A2VTrainingConfig, train_a2v
from diffusers_dawn.training.run_lora import LoraTrainingConfig, train_lora

from _a2v_utils import (  # noqa: F401  (single_thread: autouse fixture)
    TINY_AUDIO_DIM,
    TINY_LATENT_SIZE,
    TINY_RESOLUTION,
    single_thread,
    tiny_lfg,
    tiny_unet,
)
from _training_utils import TINY_HUBERT_DIM, build_tiny_dataset
from hub_server import HubServer


# -- clip sampling ----------------------------------------------------------------------------------------------------
def test_stage1_clips_are_20_frames_with_the_first_frame_as_reference():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        num_frames = int(rng.integers(20, 80))
        length = sample_clip_length(1, rng)
        clip = sample_clip(num_frames, length, 1, rng)
        assert length == 20
        np.testing.assert_array_equal(clip.frame_indices, np.arange(clip.frame_indices[0], clip.frame_indices[0] + 20))
        assert clip.reference_index == clip.frame_indices[0]
        assert 0 <= clip.frame_indices[0] and clip.frame_indices[-1] < num_frames
        starts.add(int(clip.frame_indices[0]))
    assert len(starts) > 20  # the window moves over the video


def test_stage2_clips_are_30_to_40_frames_with_a_reference_from_the_whole_video():
    rng = np.random.default_rng(1)
    lengths = [sample_clip_length(2, rng) for _ in range(500)]
    assert min(lengths) == 30 and max(lengths) == 40 and len(set(lengths)) == 11

    num_frames = 100
    before = inside = after = 0
    references = []
    for _ in range(2000):
        clip = sample_clip(num_frames, 35, 2, rng)
        assert len(clip.frame_indices) == 35
        np.testing.assert_array_equal(np.diff(clip.frame_indices), 1)
        start, end = clip.frame_indices[0], clip.frame_indices[-1]
        reference = clip.reference_index
        references.append(reference)
        before += reference < start
        after += reference > end
        inside += start <= reference <= end
    # The reference is drawn from the whole video, independently of the clip window.
    assert before > 0 and after > 0 and inside > 0
    assert min(references) == 0 and max(references) == num_frames - 1
    counts = np.bincount(references, minlength=num_frames)
    assert counts.max() < 3 * counts.mean()  # roughly uniform over all frames


def test_clip_sampling_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        sample_clip(100, 20, 3, rng)
    with pytest.raises(ValueError, match="needs clips of 30 frames"):
        sample_clip(25, 30, 2, rng)
    with pytest.raises(ValueError, match="1 <= min <= max"):
        sample_clip_length(2, rng, (40, 30))


def test_batch_sampler_shares_the_clip_length_in_a_batch_and_replays_epochs():
    sampler = A2VBatchSampler(num_videos=5, batch_size=4, stage=2, seed=3, clips_per_video=3)
    assert len(sampler) == 4  # ceil(5 * 3 / 4)
    first = list(sampler)
    assert len(first) == 4 and all(len(batch) == 4 for batch in first)
    for batch in first:
        assert len({length for _, length, _ in batch}) == 1
        assert 30 <= batch[0][1] <= 40
    videos = np.bincount([video for batch in first for video, _, _ in batch], minlength=5)
    assert (videos >= 3).all() and videos.sum() == 16  # every video 3 times, one extra draw pads the last batch
    assert list(sampler) == first  # replayable
    sampler.set_epoch(1)
    assert list(sampler) != first
    stage1 = A2VBatchSampler(num_videos=2, batch_size=3, stage=1)
    assert [[length for _, length, _ in batch] for batch in stage1] == [[20, 20, 20]]


# -- conditions -------------------------------------------------------------------------------------------------------
def test_conditions_are_audio_and_deltas_to_the_reference():
    audio = torch.arange(6.0).reshape(3, 2)
    pose = torch.tensor([[1.0, 2, 3, 4, 5, 6], [2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0]])
    blink = torch.tensor([[0.3, 0.2], [0.1, 0.1], [0.0, 0.5]])
    reference_pose = torch.tensor([1.0, 1, 1, 1, 1, 1])
    reference_blink = torch.tensor([0.1, 0.2])
    conditions = build_condition(audio, pose, blink, reference_pose, reference_blink)
    expected = torch.tensor(
        [
            [0.0, 1, 0, 1, 2, 3, 4, 5, 0.2, 0.0],
            [2, 3, 1, 1, 1, 1, 1, 1, 0.0, -0.1],
            [4, 5, -1, -1, -1, -1, -1, -1, -0.1, 0.3],
        ]
    )
    torch.testing.assert_close(conditions, expected)


def test_null_condition_dropout_zeroes_whole_frames_at_the_given_rate():
    conditions = torch.rand(200, 500, 6) + 0.5  # never zero by chance
    dropped = drop_conditions(conditions, 0.1, torch.Generator().manual_seed(0))
    zero_frames = (dropped == 0).all(-1)
    kept_frames = (dropped == conditions).all(-1)
    assert bool((zero_frames | kept_frames).all())  # a frame is dropped as a whole or kept as is
    rate = zero_frames.float().mean().item()
    assert abs(rate - 0.1) < 0.004  # 100k Bernoulli draws: std 0.001
    # Different frames of one sample are dropped independently.
    per_sample = zero_frames.float().mean(1)
    assert per_sample.std() > 0
    assert drop_conditions(conditions, 0.0) is conditions
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_conditions(conditions, 1.5)


# -- loss components --------------------------------------------------------------------------------------------------
def test_lip_loss_sums_channels_over_the_mouth_positions():
    squared_error = torch.zeros(1, 3, 2, 2, 2)
    squared_error[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    squared_error[0, :, 1, 1, 1] = torch.tensor([4.0, 0.0, 2.0])
    squared_error[0, :, 1, 0, 1] = 100.0  # outside the mouth
    mouth_mask = torch.zeros(1, 2, 2, 2)
    mouth_mask[0, 0, 0, 0] = 1
    mouth_mask[0, 1, 1, 1] = 1
    # (1 + 2 + 3 + 4 + 0 + 2) / 2 masked positions: the channels are summed, not averaged.
    assert lip_weighted_loss(squared_error, mouth_mask).item() == pytest.approx(6.0)
    assert lip_weighted_loss(squared_error, torch.zeros_like(mouth_mask)).item() == 0.0
    with pytest.raises(ValueError, match="mouth_mask must have shape"):
        lip_weighted_loss(squared_error, mouth_mask[:, :1])


def test_flow_loss_compares_grid_and_occlusion():
    target = torch.zeros(1, 3, 1, 1, 2)
    target[0, 2] = -1.0  # occlusion 0
    predicted = torch.zeros(1, 3, 1, 1, 2)
    predicted[0, 0, 0, 0] = torch.tensor([0.5, -0.5])
    predicted[0, 1, 0, 0] = torch.tensor([0.0, 1.0])
    predicted[0, 2, 0, 0] = torch.tensor([1.0, 0.0])  # occlusion 1 and 0.5
    grid_mse = (0.25 + 0.25 + 0 + 1) / 4
    occlusion_mse = (1.0 + 0.25) / 2
    assert flow_loss(predicted, target).item() == pytest.approx(grid_mse + occlusion_mse)


def test_dynamic_threshold_matches_the_official_rule():
    sample = torch.tensor([[0.5, -0.2, 0.9, 0.1]]).reshape(1, 4, 1, 1, 1)
    torch.testing.assert_close(dynamic_threshold(sample), sample)  # quantile below 1: unchanged
    values = torch.arange(1.0, 11.0)  # 0.9-quantile of 1..10 = 9.1 (linear interpolation)
    sample = torch.stack([values, -values]).reshape(2, 10, 1, 1, 1)
    thresholded = dynamic_threshold(sample)
    expected = values.clamp(max=9.1) / 9.1
    torch.testing.assert_close(thresholded[0].flatten(), expected)
    torch.testing.assert_close(thresholded[1].flatten(), -expected)


def test_motion_target_is_the_lfg_flow_from_the_reference():
    lfg = tiny_lfg()
    reference = torch.rand(2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    frames = torch.rand(2, 3, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    target = compute_motion_target(lfg, reference, frames)
    assert target.shape == (2, 3, 3, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
    with torch.no_grad():
        motion = lfg.estimate_motion(reference[1:2], frames[1, 2:3])
    expected = flow_to_motion_latent(motion.grid[:, None], motion.occlusion[:, None])
    torch.testing.assert_close(target[1:2, :, 2:3], expected, atol=1e-5, rtol=0)
    assert target[:, 2].min() >= -1 and target[:, 2].max() <= 1  # occlusion · 2 − 1


def _loss_inputs(batch=2, frames=3, seed=0, audio_dim=TINY_AUDIO_DIM):
    generator = torch.Generator().manual_seed(seed)
    size = TINY_LATENT_SIZE
    mouth_mask = torch.zeros(batch, frames, size, size)
    mouth_mask[:, :, 5:7, 3:5] = 1
    return dict(
        motion_target=torch.rand(batch, 3, frames, size, size, generator=generator) * 2 - 1,
        conditions=torch.randn(batch, frames, audio_dim + POSE_DIM + BLINK_DIM, generator=generator),
        source_latent=torch.randn(batch, 16, size, size, generator=generator),
        face_mask=torch.ones(batch, 1, TINY_RESOLUTION, TINY_RESOLUTION),
        mouth_mask=mouth_mask,
    )


@pytest.mark.parametrize("thresholding, ratio", [(True, 0.9), (True, 0.6), (False, 0.9)])
def test_a2v_loss_is_the_weighted_sum_of_its_recomputed_parts(thresholding, ratio):
    unet = tiny_unet()
    # The flow loss thresholds x̂₀ exactly when, and as, the scheduler's sampler does (its own ratio).
    scheduler = DAWNDDIMScheduler(thresholding=thresholding, dynamic_thresholding_ratio=ratio)
    inputs = _loss_inputs()
    output = a2v_loss(
        unet, scheduler, **inputs, null_condition_probability=0.0, generator=torch.Generator().manual_seed(5)
    )
    # Replay the random draws to recompute every term from its definition.
    generator = torch.Generator().manual_seed(5)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn(inputs["motion_target"].shape, generator=generator)
    noisy = scheduler.add_noise(inputs["motion_target"], noise, timesteps)
    with torch.no_grad():
        noise_pred = unet(
            noisy, timesteps, inputs["conditions"], inputs["source_latent"], face_mask=inputs["face_mask"]
        ).sample
    error = (noise_pred - noise) ** 2
    mask = inputs["mouth_mask"][:, None]
    simple = error.mean()
    lip = (error * mask).sum() / mask.sum()
    alpha_bar = scheduler.alphas_cumprod[timesteps].double().view(-1, 1, 1, 1, 1)
    x0 = (noisy / alpha_bar.sqrt() - (1 / alpha_bar - 1).sqrt() * noise_pred).float()
    if thresholding:
        scale = x0.abs().reshape(2, -1).quantile(ratio, dim=1).clamp(min=1).view(-1, 1, 1, 1, 1)
        x0 = x0.clamp(-scale, scale) / scale
    target = inputs["motion_target"]
    flow = ((x0[:, :2] - target[:, :2]) ** 2).mean() + (((x0[:, 2:] + 1) / 2 - (target[:, 2:] + 1) / 2) ** 2).mean()
    torch.testing.assert_close(output.simple_loss.detach(), simple, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output.lip_loss.detach(), lip, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output.flow_loss.detach(), flow, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output.loss.detach(), simple + 0.15 * lip + 0.15 * flow, atol=1e-6, rtol=1e-5)
    assert output.loss.requires_grad


def test_a2v_loss_refuses_a_scheduler_whose_x0_rule_is_not_the_samplers():
    # x̂₀ and its thresholding come from the DAWN sampler; another scheduler's rule would train a different objective.
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True)
    with pytest.raises(TypeError, match="DAWNDDIMScheduler"):
        a2v_loss(tiny_unet(), scheduler, **_loss_inputs(batch=1, frames=2), generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_overfits_one_batch():
    unet = tiny_unet()
    scheduler = DAWNDDIMScheduler()
    inputs = _loss_inputs(batch=1, frames=4)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        # One fixed batch: the same clip, timestep, noise and dropout every step.
        output = a2v_loss(unet, scheduler, **inputs, generator=torch.Generator().manual_seed(11))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
        if losses[-1] <= 0.5 * losses[0]:
            break
    assert losses[-1] <= 0.5 * losses[0], losses


# -- the training runs, end to end on CPU -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """
    A DAWN model folder with the parts training reads: `lfg`, `unet` (architecture; it reads the tiny HuBERT's
    features, pose and blink) and `scheduler`.
    """
    from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

    folder = tmp_path_factory.mktemp("dawn")
    tiny_lfg().save_pretrained(folder / "lfg")
    tiny_unet(seed=0, audio_dim=TINY_HUBERT_DIM).save_pretrained(folder / "unet")
    DAWNDDIMScheduler().save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory):
    """Two synthetic talking-face videos (38 frames) through the real preprocessing, at the tiny model's 32 px."""
    return build_tiny_dataset(tmp_path_factory.mktemp("a2v_data"), resolution=TINY_RESOLUTION)


def _common_settings(dataset_dir, model_dir, output_dir):
    return dict(
        dataset_name_or_path=str(dataset_dir),
        pretrained_model_name_or_path=str(model_dir),
        output_dir=str(output_dir),
        train_batch_size=2,
        report_to="none",
        seed=0,
    )


@pytest.mark.slow
def test_stage1_resumes_exactly_and_stage2_starts_from_stage1(tiny_dataset_dir, tiny_model_dir, tmp_path):
    stage1 = tmp_path / "stage1"
    settings = dict(_common_settings(tiny_dataset_dir, tiny_model_dir, stage1), stage=1, checkpointing_steps=2)
    uninterrupted = train_a2v(A2VTrainingConfig(**settings, max_train_steps=4)).losses
    assert len(uninterrupted) == 4 and all(np.isfinite(uninterrupted))
    checkpoint = stage1 / "checkpoint-2"
    assert (checkpoint / "unet" / "config.json").is_file() and (checkpoint / "optimizer.bin").is_file()
    assert (stage1 / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    # Resume from step 2: the next losses equal the uninterrupted run's.
    shutil.rmtree(stage1 / "checkpoint-4")
    resumed = train_a2v(A2VTrainingConfig(**settings, max_train_steps=4, resume_from_checkpoint="latest"))
    assert resumed.first_step == 2
    np.testing.assert_allclose(resumed.losses, uninterrupted[2:], atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="--init_from"):
        A2VTrainingConfig(**_common_settings(tiny_dataset_dir, tiny_model_dir, tmp_path / "x"), stage=2)

    # Stage 2 from the stage-1 output; with a zero learning rate the weights must be exactly stage 1's.
    stage2 = tmp_path / "stage2"
    stage2_config = A2VTrainingConfig(
        **_common_settings(tiny_dataset_dir, tiny_model_dir, stage2), stage=2, init_from=str(stage1),
        max_train_steps=1, learning_rate=0.0, min_clip_length=30, max_clip_length=32,
        validation_steps=1, validation_frames=6, validation_inference_steps=2,
    )
    losses = train_a2v(stage2_config).losses
    assert len(losses) == 1 and np.isfinite(losses[0])
    stage1_unet = UNet3DFlowModel.from_pretrained(stage1 / "unet")
    stage2_unet = UNet3DFlowModel.from_pretrained(stage2 / "unet")
    for name, tensor in stage1_unet.state_dict().items():
        assert torch.equal(stage2_unet.state_dict()[name], tensor), name
    video = stage2 / "validation" / "step-0000001.mp4"
    frames, fps, _, _ = read_video(str(video))
    assert frames.shape[0] == 6 and fps == 25


@pytest.mark.slow
def test_train_lora_saves_only_adapter_weights_that_change_the_model(tiny_dataset_dir, tiny_model_dir, tmp_path):
    output = tmp_path / "lora"
    settings = dict(
        _common_settings(tiny_dataset_dir, tiny_model_dir, output), max_train_steps=2, rank=4, lora_alpha=8,
        learning_rate=1e-2, min_clip_length=20, max_clip_length=24, checkpointing_steps=1,
    )
    uninterrupted = train_lora(LoraTrainingConfig(**settings)).losses
    adapter_file = output / "pytorch_lora_weights.safetensors"
    with safe_open(str(adapter_file), "pt") as handle:
        keys = list(handle.keys())
    base = UNet3DFlowModel.from_pretrained(tiny_model_dir / "unet")
    assert keys and all(key.startswith("unet.") and (".lora_A." in key or ".lora_B." in key) for key in keys)
    assert {key.split(".lora_")[0][len("unet.") :] for key in keys} == set(lora_target_modules(base))

    shutil.rmtree(output / "checkpoint-2")
    resumed = train_lora(LoraTrainingConfig(**settings, resume_from_checkpoint="latest")).losses
    np.testing.assert_allclose(resumed, uninterrupted[1:], atol=1e-6, rtol=0)

    # push_to_hub uploads the adapter and a model card, nothing else, to a Hub-compatible server.
    with HubServer() as hub, hub.activate():
        train_lora(LoraTrainingConfig(**settings, push_to_hub=True, hub_model_id="dawn-tester/speaker-lora"))
        assert set(hub.files("dawn-tester/speaker-lora")) == {
            ".gitattributes", "README.md", "pytorch_lora_weights.safetensors"
        }
        state_dict, metadata = DAWNLoraLoaderMixin.lora_state_dict(
            "dawn-tester/speaker-lora", cache_dir=tmp_path / "cache", return_lora_metadata=True
        )
    assert "lora" in hub.files("dawn-tester/speaker-lora")["README.md"].decode()
    adapted = UNet3DFlowModel.from_pretrained(tiny_model_dir / "unet")
    DAWNLoraLoaderMixin.load_lora_into_unet(state_dict, adapted, adapter_name="speaker", metadata=metadata)
    inputs = _loss_inputs(batch=1, frames=2, audio_dim=TINY_HUBERT_DIM)
    with torch.no_grad():
        arguments = (
            inputs["motion_target"], torch.tensor([300]), inputs["conditions"], inputs["source_latent"]
        )
        difference = adapted(*arguments, face_mask=inputs["face_mask"]).sample - base(
            *arguments, face_mask=inputs["face_mask"]
        ).sample
    assert difference.abs().max() > 1e-4
