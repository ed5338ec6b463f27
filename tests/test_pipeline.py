"""DAWNPipeline behaviour with tiny components: shapes, determinism, save/load, callbacks, errors, official parity."""

import logging

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline_components


SAMPLING_RATE = 22050


def speech_like(seconds: float, rate: int = SAMPLING_RATE, channels: int = 2) -> np.ndarray:
    """A voiced, amplitude-modulated tone: stereo at a rate other than 16 kHz to exercise resampling."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    voiced = 0.3 * envelope * (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 700 * t))
    return np.stack([voiced] * channels, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def portrait():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def pipe():
    pipeline = DAWNPipeline(**tiny_pipeline_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def conditioned_call(pipe, frames=6, **kwargs):
    """A call that bypasses face analysis and HuBERT: everything measured is given."""
    audio_dim = pipe.unet.config.cond_dim - 8
    arguments = dict(
        image=torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)),
        crop="none",
        face_box=[40, 90, 30, 100, 128, 128],
        source_pose=[1.0, -2.0, 0.5, 4.8e-4, 56.0, 65.0],
        source_blink=[0.3, 0.28],
        audio_features=torch.randn(frames, audio_dim, generator=torch.Generator().manual_seed(4)),
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    arguments.update(kwargs)
    return pipe(**arguments)


def test_portrait_and_speech_to_video(pipe, portrait):
    seconds = 1.3
    result = pipe(
        image=portrait,
        audio=speech_like(seconds),
        sampling_rate=SAMPLING_RATE,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    frames = int(seconds * 25)
    assert result.frames.shape == (1, frames, 128, 128, 3)
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert result.pose.shape == (frames, 6) and result.blink.shape == (frames, 2)
    assert result.fps == 25.0
    assert result.audio.shape == (frames * 640,)  # 16 kHz, trimmed to the video
    assert np.isfinite(result.pose).all()


@pytest.mark.slow
def test_seeded_generator_is_deterministic(pipe):
    first = conditioned_call(pipe).frames
    second = conditioned_call(pipe).frames
    other = conditioned_call(pipe, generator=torch.Generator().manual_seed(1)).frames
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other).max() > 1e-3


@pytest.mark.slow
def test_pose_and_blink_sampled_from_generator(pipe):
    first = conditioned_call(pipe, output_type="latent")
    second = conditioned_call(pipe, output_type="latent")
    np.testing.assert_array_equal(first.pose, second.pose)
    np.testing.assert_array_equal(first.blink, second.blink)
    # The PBNet residuals are added to the portrait's own pose, which the first frame stays close to.
    assert first.pose.shape == (6, 6)


@pytest.mark.slow
def test_output_types_agree(pipe):
    as_np = conditioned_call(pipe, output_type="np").frames
    as_pt = conditioned_call(pipe, output_type="pt").frames
    as_pil = conditioned_call(pipe, output_type="pil").frames
    np.testing.assert_allclose(as_pt.permute(0, 1, 3, 4, 2).numpy(), as_np, atol=0)
    assert len(as_pil) == 1 and len(as_pil[0]) == 6 and as_pil[0][0].size == (128, 128)
    np.testing.assert_array_equal(np.asarray(as_pil[0][2]), (as_np[0, 2] * 255).astype(np.uint8))


@pytest.mark.slow
def test_return_tuple(pipe):
    as_dict = conditioned_call(pipe)
    as_tuple = conditioned_call(pipe, return_dict=False)
    np.testing.assert_array_equal(as_tuple[0], as_dict.frames)
    np.testing.assert_array_equal(as_tuple[1], as_dict.pose)


@pytest.mark.slow
def test_given_pose_and_blink_are_used(pipe):
    pose = np.tile([5.0, -3.0, 1.0, 4.8e-4, 56.0, 65.0], (6, 1))
    blink = np.full((6, 2), 0.1)
    result = conditioned_call(pipe, pose=pose, blink=blink)
    np.testing.assert_allclose(result.pose, pose, rtol=1e-6)
    np.testing.assert_allclose(result.blink, blink, rtol=1e-6)


@pytest.mark.slow
def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), tensors["latents"].clone()))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    result = conditioned_call(pipe, output_type="latent", callback_on_step_end=callback)
    assert [step for step, _, _ in seen] == [0, 1, 2]
    assert [t for _, t, _ in seen] == [int(t) for t in pipe.scheduler.timesteps]
    torch.testing.assert_close(result.frames, torch.zeros_like(result.frames))


@pytest.mark.slow
def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    reloaded = DAWNPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.unet) is type(pipe.unet)
    assert reloaded.config.resolution == pipe.config.resolution
    # Bit-identical weights; memory-mapped safetensors tensors can take other (equally exact) BLAS kernel paths,
    # so allow float32 rounding, as diffusers' own save/load tests do.
    for name in ("lfg", "unet", "pbnet_pose", "pbnet_blink", "audio_encoder"):
        original, loaded = getattr(pipe, name).state_dict(), getattr(reloaded, name).state_dict()
        assert original.keys() == loaded.keys()
        assert all(torch.equal(original[key], loaded[key]) for key in original)
    np.testing.assert_allclose(conditioned_call(pipe).frames, conditioned_call(reloaded).frames, atol=5e-4, rtol=0)


def test_load_in_half_precision(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    reloaded = DAWNPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert reloaded.unet.dtype == torch.float16
    assert reloaded.pbnet_pose.dtype == torch.float16


def test_classifier_free_guidance_changes_output(pipe):
    plain = conditioned_call(pipe, output_type="latent").frames
    guided = conditioned_call(pipe, output_type="latent", guidance_scale=2.5).frames
    assert (plain - guided).abs().max() > 1e-4


def test_mismatched_pose_length_is_refused(pipe):
    with pytest.raises(ValueError, match="pose has 5 frames but the speech lasts 6 frames"):
        conditioned_call(pipe, pose=np.zeros((5, 6)))


def test_audio_shorter_than_one_frame_is_refused(pipe):
    with pytest.raises(ValueError, match="shorter than one"):
        pipe(image=torch.rand(1, 3, 128, 128), crop="none", face_box=[40, 90, 30, 100, 128, 128],
             source_pose=np.zeros(6), source_blink=[0.3, 0.3], audio=np.zeros(300, np.float32), sampling_rate=16000)


def test_silent_audio_works_with_a_warning(pipe, caplog):
    # diffusers' library logger does not propagate by default; let pytest see its records.
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            result = pipe(image=torch.rand(1, 3, 128, 128), crop="none", face_box=[40, 90, 30, 100, 128, 128],
                          source_pose=np.zeros(6), source_blink=[0.3, 0.3], audio=np.zeros(16000, np.float32),
                          sampling_rate=16000, num_inference_steps=1, output_type="latent")
    finally:
        diffusers_logging.disable_propagation()
    assert result.frames.shape[2] == 25
    assert "silent" in caplog.text.lower()


def test_official_end_to_end_fixture(fixtures_dir):
    """sample_one_video of the official code, replayed through the pipeline's own sampling path."""
    from diffusers_dawn.conversion.lfg import convert_lfg_checkpoint
    from diffusers_dawn.conversion.unet import convert_unet_checkpoint

    io = load_file(fixtures_dir / "e2e_tiny_sample_one_video_io.safetensors")
    lfg_weights = load_file(fixtures_dir / "lfg_tiny_weights.safetensors")
    lfg_checkpoint = {}
    for key, value in lfg_weights.items():
        top, rest = key.split(".", 1)
        lfg_checkpoint.setdefault(top, {})[rest] = value
    diffusion = load_file(fixtures_dir / "fdm_tiny_diffusion_weights.safetensors")
    face_location = load_file(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors")

    components = tiny_pipeline_components()
    components["lfg"] = convert_lfg_checkpoint(lfg_checkpoint)
    components["unet"] = convert_unet_checkpoint(diffusion, face_location_state_dict=face_location)
    pipe = DAWNPipeline(**components)
    pipe.set_progress_bar_config(disable=True)

    drawn = []

    def record(pipeline, step, timestep, tensors):
        drawn.append(tensors["latents"].clone())
        return {}

    arguments = dict(
        image=io["in.sample_img"],
        crop="none",
        face_box=io["in.sample_bbox"].reshape(6).numpy(),
        source_pose=io["in.init_pose"][0, :6].numpy(),
        source_blink=io["in.init_eye"][0].numpy(),
        audio_features=io["in.sample_audio_hubert"][0],
        pose=io["in.sample_pose"][0].T.numpy(),
        blink=io["in.sample_eye"][0].T.numpy(),
        num_inference_steps=20,
    )
    # The official code drew its noise from the global CPU generator seeded 4343, in the same order the pipeline
    # draws from its generator (initial latents, then one draw per step but the last).
    latents = pipe(**arguments, generator=torch.Generator().manual_seed(4343), output_type="latent").frames
    torch.testing.assert_close(latents[:, :2], io["out.sample_vid_grid"], atol=2e-3, rtol=0)
    torch.testing.assert_close((latents[:, 2:3] + 1) / 2, io["out.sample_vid_conf"], atol=2e-3, rtol=0)

    frames = pipe(**arguments, generator=torch.Generator().manual_seed(4343), output_type="pt").frames
    expected = io["out.sample_out_vid"].permute(0, 2, 1, 3, 4)  # (B, C, F, H, W) → (B, F, C, H, W)
    torch.testing.assert_close(frames, expected, atol=5e-3, rtol=0)
    assert (frames - expected).abs().mean() < 1e-4


def test_portrait_without_a_face_is_refused_with_what_to_do(pipe):
    blank = np.full((160, 200, 3), 200, dtype=np.uint8)
    with pytest.raises(ValueError, match="no face found.*face_landmarks=.*face_box="):
        pipe(image=blank, audio_features=np.zeros((3, 32), np.float32), num_inference_steps=1)
