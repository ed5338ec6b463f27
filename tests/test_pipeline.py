"""DAWNPipeline behaviour with tiny components: shapes, determinism, save/load, callbacks, errors, official parity."""

import functools
import inspect
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import schedulers as diffusers_schedulers
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.testing.tiny_pipeline import measured_inputs, tiny_pipeline, tiny_pipeline_components


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
    pipeline = tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def conditioned_call(pipe, frames=6, **kwargs):
    """A call that bypasses face analysis and HuBERT: everything measured is given."""
    arguments = dict(
        measured_inputs(pipe.unet.audio_dim, frames), num_inference_steps=3, generator=torch.Generator().manual_seed(0)
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
    first, second, other = (
        conditioned_call(pipe, output_type="latent", num_inference_steps=1, generator=torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    )
    assert first.pose.shape == (6, 6) and first.blink.shape == (6, 2)
    # The same seed gives the same motion...
    np.testing.assert_array_equal(first.pose, second.pose)
    np.testing.assert_array_equal(first.blink, second.blink)
    # ...and another seed other motion: the PBNets' latents come from the generator.
    assert np.abs(first.pose - other.pose).max() > 1e-3
    assert np.abs(first.blink - other.blink).max() > 1e-4


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


def test_classifier_free_guidance_is_uncond_plus_scale_times_the_difference(pipe, monkeypatch):
    """The noise the scheduler gets is ε(∅) + s·(ε(c) − ε(∅)) from two separate U-Net calls, ∅ the zero condition."""
    unet_inputs, scheduler_outputs = [], []

    def record_unet(module, args, kwargs):
        tensors = {name: value.clone() for name, value in kwargs.items() if torch.is_tensor(value)}
        unet_inputs.append(([value.clone() for value in args], tensors))

    original_step = pipe.scheduler.step

    @functools.wraps(original_step)  # keeps the signature that prepare_extra_step_kwargs inspects
    def record_step(model_output, *args, **kwargs):
        scheduler_outputs.append(model_output.clone())
        return original_step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", record_step)
    hook = pipe.unet.register_forward_pre_hook(record_unet, with_kwargs=True)
    scale = 2.5
    try:
        conditioned_call(pipe, output_type="latent", guidance_scale=scale, num_inference_steps=1)
    finally:
        hook.remove()

    assert len(unet_inputs) == 1 and len(scheduler_outputs) == 1  # one batched call for both branches
    (sample, timestep), tensors = unet_inputs[0]
    condition = tensors["encoder_hidden_states"][1:2]
    assert condition.abs().max() > 0

    def explicit(encoder_hidden_states):
        return pipe.unet(
            sample[:1],
            timestep[:1],
            encoder_hidden_states=encoder_hidden_states,
            source_latent=tensors["source_latent"][:1],
            face_mask=tensors["face_mask"][:1],
        ).sample

    with torch.no_grad():
        uncond, cond = explicit(torch.zeros_like(condition)), explicit(condition)
    assert (cond - uncond).abs().max() > 1e-3  # the condition matters, so the check below has teeth
    torch.testing.assert_close(scheduler_outputs[0], uncond + scale * (cond - uncond), atol=1e-5, rtol=1e-5)



def test_guidance_defaults_to_the_pipeline_config_and_survives_save_and_load(pipe, tmp_path):
    """A model folder can recommend a guidance scale: a call that gives none uses it; an explicit one wins."""
    assert pipe.config.guidance_scale == 1.0  # off unless the model says otherwise, as the official sampler
    guided = DAWNPipeline(**pipe.components, resolution=pipe.config.resolution, guidance_scale=2.0)
    guided.set_progress_bar_config(disable=True)
    guided.save_pretrained(tmp_path)
    reloaded = DAWNPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.guidance_scale == 2.0
    by_default = conditioned_call(reloaded, output_type="latent").frames
    torch.testing.assert_close(by_default, conditioned_call(pipe, output_type="latent", guidance_scale=2.0).frames)
    unguided = conditioned_call(reloaded, output_type="latent", guidance_scale=1.0).frames
    torch.testing.assert_close(unguided, conditioned_call(pipe, output_type="latent").frames)
    assert (by_default - unguided).abs().max() > 1e-4
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        DAWNPipeline(**pipe.components, guidance_scale=0.5)

def test_mismatched_pose_length_is_refused(pipe):
    with pytest.raises(ValueError, match="pose has 5 frames but the speech lasts 6 frames"):
        conditioned_call(pipe, pose=np.zeros((5, 6)))


class _NoFaceAnalysis:
    def analyze(self, *args, **kwargs):
        raise AssertionError("face analysis ran before the inputs were checked")

    analyze_video = analyze


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(pose=np.zeros((5, 6))), "pose has 5 frames but the speech lasts 6 frames"),
        (dict(blink=np.zeros((7, 2))), "blink has 7 frames but the speech lasts 6 frames"),
        (dict(pose=np.zeros((6, 5))), r"pose must have shape \(frames, 6\)"),
        (dict(num_frames=4, pose=np.zeros((6, 6))), "pose has 6 frames but the speech lasts 4 frames"),
        (dict(num_frames=7), "num_frames=7 exceeds the 6 frames the audio_features hold"),
        (dict(num_frames=0), "num_frames must be a positive integer"),
        (dict(audio_features=np.zeros((6, 33), np.float32)), "33 channels but the U-Net expects 32"),
        (dict(audio_features=np.zeros((2, 6, 32), np.float32)), r"audio_features must have shape \(frames, 32\)"),
        (dict(audio_features=np.zeros((0, 32), np.float32)), "shorter than one video frame"),
        (dict(audio_features=None), "pass the speech as `audio`"),
        (dict(latents=torch.zeros(1, 3, 5, 32, 32)), r"latents must have shape \(1, 3, 6, 32, 32\)"),
        (dict(attention_kwargs={"scale": 0.5, "slice": 2}), "attention_kwargs takes only 'scale'"),
        # Speech as audio is measured by decoding it (1 s = 25 frames), before HuBERT runs.
        (dict(audio_features=None, audio=np.zeros(16000, np.float32), sampling_rate=16000, blink=np.zeros((6, 2))),
         "blink has 6 frames but the speech lasts 25 frames"),
    ],
)
def test_bad_inputs_are_refused_before_any_model_runs(pipe, arguments, message):
    ran = []
    hooks = [
        getattr(pipe, name).register_forward_pre_hook(lambda module, args, name=name: ran.append(name))
        for name in ("lfg", "unet", "pbnet_pose", "pbnet_blink", "audio_encoder")
    ]
    analyzer, pipe.face_analyzer = pipe.face_analyzer, _NoFaceAnalysis()
    # No face box or measurements: any work before the checks would start with face analysis.
    portrait = dict(crop="face", face_box=None, source_pose=None, source_blink=None)
    try:
        with pytest.raises(ValueError, match=message):
            conditioned_call(pipe, **{**portrait, **arguments})
    finally:
        pipe.face_analyzer = analyzer
        for hook in hooks:
            hook.remove()
    assert ran == []


def test_pipeline_without_pbnets_needs_pose_and_blink_before_any_work():
    components = tiny_pipeline_components()
    components.update(pbnet_pose=None, pbnet_blink=None)
    pipeline = DAWNPipeline(**components)
    pipeline.face_analyzer = _NoFaceAnalysis()
    with pytest.raises(ValueError, match="no pbnet_pose: pass `pose`"):
        conditioned_call(pipeline, crop="face", face_box=None, blink=np.zeros((6, 2)))


def test_extra_step_kwargs_are_only_those_the_scheduler_step_takes(pipe):
    generator = torch.Generator()
    assert pipe.prepare_extra_step_kwargs(generator, eta=None) == {"generator": generator}
    assert pipe.prepare_extra_step_kwargs(generator, eta=0.3) == {"generator": generator, "eta": 0.3}
    original = pipe.scheduler
    try:
        for member in KarrasDiffusionSchedulers:
            try:
                pipe.scheduler = getattr(diffusers_schedulers, member.name).from_config(original.config)
            except ImportError:  # an optional dependency is missing (DPMSolverSDEScheduler needs torchsde)
                continue
            accepted = set(inspect.signature(pipe.scheduler.step).parameters)
            extra = pipe.prepare_extra_step_kwargs(generator, eta=0.3)
            assert set(extra) == accepted & {"generator", "eta"}, member.name
    finally:
        pipe.scheduler = original


class _RecordingCallback(PipelineCallback):
    tensor_inputs = ["encoder_hidden_states"]

    def __init__(self):
        super().__init__()
        self.seen = []

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.seen.append(sorted(callback_kwargs))
        return callback_kwargs


class _ZeroLatentsCallback(PipelineCallback):
    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs


def test_pipeline_callback_objects_get_their_own_tensor_inputs(pipe):
    recording = _RecordingCallback()
    # The callback's tensor_inputs replace callback_on_step_end_tensor_inputs, as in diffusers' pipelines.
    conditioned_call(pipe, output_type="latent", num_inference_steps=2, callback_on_step_end=recording)
    assert recording.seen == [["encoder_hidden_states"]] * 2

    recording = _RecordingCallback()
    both = MultiPipelineCallbacks([_ZeroLatentsCallback(), recording])
    result = conditioned_call(pipe, output_type="latent", num_inference_steps=2, callback_on_step_end=both)
    assert recording.seen == [["encoder_hidden_states", "latents"]] * 2
    torch.testing.assert_close(result.frames, torch.zeros_like(result.frames))


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


@pytest.fixture(scope="module")
def official_replay(fixtures_dir):
    """
    `sample_one_video` of the official code, replayed through the pipeline's own sampling path: the pipeline with the
    converted official tiny models, the call's arguments, and the recorded official inputs and outputs.
    """
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
    # The official code drew its noise from the global CPU generator seeded as its settings record, in the same order
    # the pipeline draws from its generator (initial latents, then one draw per step but the last).
    settings = json.loads((fixtures_dir / "e2e_tiny_sample_one_video_settings.json").read_text())
    seed = settings["global_seed_before_call"]
    return pipe, arguments, seed, io


def test_official_end_to_end_motion_latents(official_replay):
    pipe, arguments, seed, io = official_replay
    latents = pipe(**arguments, generator=torch.Generator().manual_seed(seed), output_type="latent").frames
    torch.testing.assert_close(latents[:, :2], io["out.sample_vid_grid"], atol=2e-3, rtol=0)
    torch.testing.assert_close((latents[:, 2:3] + 1) / 2, io["out.sample_vid_conf"], atol=2e-3, rtol=0)


def test_official_end_to_end_frames(official_replay):
    pipe, arguments, seed, io = official_replay
    frames = pipe(**arguments, generator=torch.Generator().manual_seed(seed), output_type="pt").frames
    expected = io["out.sample_out_vid"].permute(0, 2, 1, 3, 4)  # (B, C, F, H, W) → (B, F, C, H, W)
    torch.testing.assert_close(frames, expected, atol=5e-3, rtol=0)
    assert (frames - expected).abs().mean() < 1e-4


def test_portrait_without_a_face_is_refused_with_what_to_do(pipe):
    blank = np.full((160, 200, 3), 200, dtype=np.uint8)
    with pytest.raises(ValueError, match="no face found.*face_landmarks=.*face_box="):
        pipe(image=blank, audio_features=np.zeros((3, 32), np.float32), num_inference_steps=1)
