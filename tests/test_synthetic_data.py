"""Synthetic talking faces: determinism, ground-truth invariants, and the written video files."""

import json

import numpy as np
import pytest

from diffusers_dawn.processing.face import measure_face
from diffusers_dawn.processing.video import read_video
from diffusers_dawn.testing.synthetic import (
    FPS,
    SAMPLES_PER_FRAME,
    generate_synthetic_clip,
    sample_face_motion,
    speech_envelope,
    synthesize_speech,
)

from _training_utils import TINY_DATASET_FRAMES, TINY_DATASET_RESOLUTION, write_tiny_videos


# -- synthetic clips --------------------------------------------------------------------------------------------------
def test_clip_is_deterministic_by_seed():
    first = generate_synthetic_clip(3, num_frames=12, resolution=32)
    again = generate_synthetic_clip(3, num_frames=12, resolution=32)
    other = generate_synthetic_clip(4, num_frames=12, resolution=32)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.audio, again.audio)
    np.testing.assert_array_equal(first.landmarks, again.landmarks)
    assert not np.array_equal(first.frames, other.frames)
    assert not np.array_equal(first.audio, other.audio)
    assert first.frames.shape == (12, 32, 32, 3) and first.audio.shape == (12 * SAMPLES_PER_FRAME,)


def _runs(mask):
    """Lengths of the runs of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    changes = np.flatnonzero(np.diff(padded))
    return changes[1::2] - changes[::2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blinks_have_natural_rate_and_duration(seed):
    minutes = 8
    num_frames = minutes * 60 * FPS
    # Blinks do not depend on speech: any envelope will do (synthesising minutes of speech would be slow).
    envelope = np.random.default_rng(seed + 100).uniform(0.0, 0.1, num_frames)
    motion = sample_face_motion(np.random.default_rng(seed), envelope)
    rate = len(motion["blink_onsets"]) / minutes
    assert 14 <= rate <= 21, rate
    # A blink lasts 150-250 ms: 3-7 frames with the eyes not fully open at 25 fps.
    closures = _runs(motion["eye_openness"] < 1)
    assert len(closures) == len(motion["blink_onsets"])
    assert closures.min() >= 3 and closures.max() <= 7
    # Every blink closes the eyes at least half-way in some frame.
    assert len(_runs(motion["blink"])) == len(motion["blink_onsets"])


def test_mouth_follows_the_speech_envelope_with_a_one_frame_lag():
    clip = generate_synthetic_clip(5, num_frames=250, resolution=32)
    # Envelope measured independently from the waveform: RMS per video frame.
    envelope = np.sqrt((clip.audio.astype(np.float64).reshape(250, SAMPLES_PER_FRAME) ** 2).mean(1))
    correlations = [np.corrcoef(clip.mouth_opening[lag:], envelope[: 250 - lag])[0, 1] for lag in range(4)]
    assert int(np.argmax(correlations)) == 1
    assert correlations[1] > 0.8
    # The drawn lips open as the ground truth says: inner-lip gap of the landmarks.
    gap = np.linalg.norm(clip.landmarks[:, 66, :2] - clip.landmarks[:, 62, :2], axis=1)
    assert np.corrcoef(gap, clip.mouth_opening)[0, 1] > 0.95


def test_head_moves_more_while_speaking():
    num_frames = 3 * 60 * FPS
    audio = synthesize_speech(np.random.default_rng(7), num_frames * SAMPLES_PER_FRAME)
    motion = sample_face_motion(np.random.default_rng(8), speech_envelope(audio, num_frames))
    # Speech energy over ~0.5 s (13 frames) sets the amplitude of the turning (yaw) and tilting (roll).
    energy = np.convolve(np.pad(motion["speech_energy"], 6, mode="edge"), np.ones(13) / 13, mode="valid")
    amplitude = np.abs(motion["rotation"][:, [0, 2]]).sum(1)
    assert amplitude[energy > 0.5].mean() > 1.5 * amplitude[energy < 0.2].mean()
    assert np.abs(motion["rotation"]).max() < 60  # plausible head angles


def test_ground_truth_matches_the_drawing():
    clip = generate_synthetic_clip(11, num_frames=40, resolution=64)
    for index in range(0, 40, 7):
        analysis = measure_face(clip.landmarks[index], clip.frames[index].shape)
        np.testing.assert_allclose(analysis.pose[:3], clip.rotation[index], atol=1e-6)
        np.testing.assert_allclose(analysis.eye_ratios, clip.eye_ratios[index], rtol=1e-9)
    # The face stays in the frame and the lips are inside the face.
    assert clip.face_box[:, [0, 2]].min() >= 0 and clip.face_box[:, [1, 3]].max() <= 64
    assert (clip.lip_box[:, 0] > clip.face_box[:, 0]).all() and (clip.lip_box[:, 3] < clip.face_box[:, 3]).all()
    # Drawn face pixels differ from the background at the face centre.
    centre = clip.landmarks[0, 30, :2].astype(int)
    assert np.abs(clip.frames[0, centre[1], centre[0]].astype(int) - np.array(clip.style.background)).sum() > 30


def test_written_videos_round_trip(tmp_path):
    paths = write_tiny_videos(tmp_path, num_videos=1, seed=0)
    frames, fps, audio, rate = read_video(paths[0])
    clip = generate_synthetic_clip(0, num_frames=TINY_DATASET_FRAMES, resolution=TINY_DATASET_RESOLUTION)
    assert fps == 25 and rate == 16000 and len(frames) == TINY_DATASET_FRAMES
    mse = np.mean((frames.astype(np.float64) - clip.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 28  # H.264 at crf 18
    assert abs(len(audio) - len(clip.audio)) < SAMPLES_PER_FRAME
    truth = np.load(paths[0].with_suffix(".npz"))
    np.testing.assert_allclose(truth["landmarks"], clip.landmarks)
    assert json.loads(paths[0].with_suffix(".json").read_text())["seed"] == 0
