"""
Measurements the benchmarks make on procedural talking faces (`benchmarks/synthetic_lipsync.py`,
`lfg_reconstruction.py`, `pbnet_samples.py`, `audio_probe.py`), here so that the benchmarks and the tests that check
them import one implementation: mouth opening, blinks and head pose measured with the MediaPipe face mesh, the pooled
correlation of a measured series, and the linear probe of an audio encoder's features.
"""

import json

import numpy as np

from ..processing.face import FaceAnalyzer, NoFaceError
from .synthetic import SAMPLES_PER_FRAME, sample_face_motion, speech_envelope, synthesize_speech


HELD_OUT_FIRST_SEED = 100000
"""First seed of the held-out clips, far from the seeds a training set written with `write_synthetic_dataset` uses."""


def measure(analyzer: FaceAnalyzer, frames: np.ndarray):
    """Per-frame (mouth opening, eye ratio, yaw/pitch/roll); NaN rows where no face is found."""
    rows = []
    for frame in frames:
        try:
            face = analyzer.analyze(frame)
        except NoFaceError:
            rows.append([np.nan] * 5)
            continue
        face_height = face.face_box[3] - face.face_box[2]
        mouth = np.linalg.norm(face.landmarks[66, :2] - face.landmarks[62, :2]) / max(face_height, 1e-6)
        rows.append([mouth, float(np.mean(face.eye_ratios)), *face.pose[:3]])
    return np.asarray(rows, dtype=np.float64)


MOUTH, EYE = 0, 1
"""Columns of `measure`'s rows: mouth opening, eye ratio (then yaw, pitch, roll)."""


def pooled_correlation(truth_rows, produced_rows, column: int = MOUTH):
    """
    Pearson r of one measured series (`MOUTH` by default, or `EYE`) between truth and output, each clip centred first
    (movement, not each clip's resting value), all clips pooled over the frames measurable in both; 0 with fewer than
    3 such frames or a series that never moves (no measurable face, or a frozen one, shows no sync). Returns
    (r, number of frames used).
    """
    truth, produced = [], []
    for clip_truth, clip_produced in zip(truth_rows, produced_rows):
        truth.append(clip_truth[:, column] - np.nanmean(clip_truth[:, column]))
        produced.append(clip_produced[:, column] - np.nanmean(clip_produced[:, column]))
    truth, produced = np.concatenate(truth), np.concatenate(produced)
    both = ~np.isnan(truth) & ~np.isnan(produced)
    truth, produced = truth[both], produced[both]
    moves = len(truth) > 2 and truth.std() > 0 and produced.std() > 0
    correlation = float(np.corrcoef(truth, produced)[0, 1]) if moves else 0.0
    return correlation, int(both.sum())


def blinks_per_minute(eye_ratio: np.ndarray, fps: float) -> float:
    """Blink onsets per minute: frames whose eye ratio falls below 3/4 of the clip's median (NaN frames: no face)."""
    valid = eye_ratio[~np.isnan(eye_ratio)]
    if len(valid) == 0:
        return float("nan")
    closed = eye_ratio < 0.75 * np.median(valid)
    onsets = int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])
    return onsets / (len(eye_ratio) / fps / 60.0)


def print_report(report: dict, as_json: bool) -> None:
    """One JSON line, or one `key: value` line per entry."""
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


def speech_and_mouth(seed: int, num_frames: int):
    """A clip's audio and ground-truth mouth opening, drawn as `generate_synthetic_clip` draws them (no rendering)."""
    audio_rng, motion_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    audio = synthesize_speech(audio_rng, num_frames * SAMPLES_PER_FRAME)
    envelope = speech_envelope(audio, num_frames)
    return audio, envelope, sample_face_motion(motion_rng, envelope)["mouth_opening"]


def with_context(features: np.ndarray, context: int) -> np.ndarray:
    """(F, D) → (F, (2 · context + 1) · D): each frame with its neighbours (edges repeated)."""
    padded = np.pad(features, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[offset : offset + len(features)] for offset in range(2 * context + 1)], axis=1)


def ridge_probe(train_x, train_y, test_x, test_y, alpha: float) -> float:
    """Held-out Pearson r of a ridge regression (features standardised on the training set)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_x = np.concatenate([train_x, np.ones((len(train_x), 1))], axis=1)
    test_x = np.concatenate([test_x, np.ones((len(test_x), 1))], axis=1)
    regulariser = alpha * np.eye(train_x.shape[1])
    regulariser[-1, -1] = 0.0
    weights = np.linalg.solve(train_x.T @ train_x + regulariser, train_x.T @ train_y)
    return float(np.corrcoef(test_x @ weights, test_y)[0, 1])
