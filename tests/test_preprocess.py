"""Preprocessing of talking-head videos into the DAWN training dataset (`preprocess_videos`, `training/preprocess.py`)."""

import json
import math
import shutil

import numpy as np
import pytest

from diffusers_dawn.processing.video import export_to_video_with_audio, probe_video, read_video
from diffusers_dawn.testing.synthetic import SAMPLES_PER_FRAME, SAMPLING_RATE, generate_synthetic_clip
from diffusers_dawn.training.dataset import DAWN_DATASET_FEATURES, check_dawn_dataset, load_dawn_dataset

from _training_utils import (
    TINY_DATASET_FRAMES,
    TINY_DATASET_RESOLUTION,
    TINY_HUBERT_DIM,
    build_tiny_dataset,
    preprocess_tiny_videos,
    write_tiny_videos,
)


@pytest.fixture(scope="module")
def tiny_dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_dataset(root, num_videos=2)
    return root


@pytest.mark.slow
def test_rows_follow_the_schema_at_25_fps(tiny_dataset_root):
    dataset = load_dawn_dataset(tiny_dataset_root / "data")
    assert set(dataset.column_names) == set(DAWN_DATASET_FEATURES)
    assert sorted(dataset["video_id"]) == ["video_0000", "video_0001"]
    for row in dataset:
        info = probe_video(tiny_dataset_root / "videos" / f"{row['video_id']}.mp4")
        expected_frames = math.floor(round(info["video_duration"] * 25, 6))
        assert row["num_frames"] == expected_frames == TINY_DATASET_FRAMES
        assert row["fps"] == 25 and row["resolution"] == TINY_DATASET_RESOLUTION
        assert len(row["frames"]) == expected_frames
        assert row["frames"][0].size == (TINY_DATASET_RESOLUTION, TINY_DATASET_RESOLUTION)
        assert len(row["audio"]) == expected_frames * SAMPLES_PER_FRAME
        shapes = {name: np.asarray(row[name]).shape for name in ("hubert", "pose", "eye_ratios", "face_box", "lip_box")}
        assert shapes == {
            "hubert": (expected_frames, TINY_HUBERT_DIM),
            "pose": (expected_frames, 6),
            "eye_ratios": (expected_frames, 2),
            "face_box": (expected_frames, 6),
            "lip_box": (expected_frames, 4),
        }
        assert np.isfinite(np.asarray(row["hubert"])).all()


@pytest.mark.slow
def test_pose_eyes_and_boxes_match_the_ground_truth(tiny_dataset_root):
    dataset = load_dawn_dataset(tiny_dataset_root / "data")
    for row in dataset:
        truth = np.load(tiny_dataset_root / "videos" / f"{row['video_id']}.npz")
        pose = np.asarray(row["pose"])
        np.testing.assert_allclose(pose[:, :3], truth["rotation"], atol=1e-3)  # yaw, pitch, roll in degrees
        assert (pose[:, 3] > 2e-4).all() and (pose[:, 3] < 1e-3).all()  # official scale ≈ 4.8e-4
        assert (np.abs(pose[:, 4:] - 60) < 30).all()  # nose in the 120-px pose crop
        np.testing.assert_allclose(np.asarray(row["eye_ratios"]), truth["eye_ratios"], rtol=1e-5)
        face_box, lip_box = np.asarray(row["face_box"]), np.asarray(row["lip_box"])
        # The crop is centred on the first frame's face box and twice its larger side.
        centre = [(face_box[0, 0] + face_box[0, 1]) / 2, (face_box[0, 2] + face_box[0, 3]) / 2]
        np.testing.assert_allclose(centre, [32, 32], atol=1e-3)
        side = max(face_box[0, 1] - face_box[0, 0], face_box[0, 3] - face_box[0, 2])
        assert side == pytest.approx(32, abs=1e-3)
        assert (face_box[:, 4:] == TINY_DATASET_RESOLUTION).all()
        # The lip boxes are the drawn lips' boxes mapped into the crop: the crop is centred on the first frame's
        # landmark box and twice its larger side, resized to the output resolution.
        first = truth["landmarks"][0, :, :2]
        box_centre = (first.min(0) + first.max(0)) / 2
        scale = TINY_DATASET_RESOLUTION / (2 * np.ptp(first, axis=0).max())
        expected_lip_box = (truth["lip_box"] - np.repeat(box_centre, 2)) * scale + TINY_DATASET_RESOLUTION / 2
        np.testing.assert_allclose(lip_box, expected_lip_box, atol=1e-3)
        assert (lip_box[:, 0] > face_box[:, 0]).all() and (lip_box[:, 1] < face_box[:, 1]).all()
        assert (lip_box[:, 2] > face_box[:, 2]).all() and (lip_box[:, 3] < face_box[:, 3]).all()


def test_other_frame_rates_and_sizes_are_resampled_to_25_fps(tmp_path):
    # 38 frames at 30 fps and 80 px: 1.267 s, hence floor(1.267 * 25) = 31 frames at 25 fps.
    clip = generate_synthetic_clip(9, num_frames=38, resolution=80)
    videos = tmp_path / "videos"
    videos.mkdir()
    duration = 38 / 30
    export_to_video_with_audio(clip.frames, videos / "talk.mp4", fps=30, audio=clip.audio[: int(duration * SAMPLING_RATE)],
                               audio_sampling_rate=SAMPLING_RATE)
    # Output frame k (time k / 25) is the 30-fps frame nearest in time: round(1.2 k).
    kept = np.round(np.arange(31) * 30 / 25).astype(int)
    np.savez(videos / "talk.npz", landmarks=clip.landmarks[kept])
    preprocess_tiny_videos(videos, tmp_path / "out", resolution=32)
    row = load_dawn_dataset(tmp_path / "out")[0]
    assert row["num_frames"] == 31 == math.floor(duration * 25)
    assert len(row["frames"]) == 31 and row["frames"][0].size == (32, 32)
    np.testing.assert_allclose(np.asarray(row["pose"])[:, :3], clip.rotation[kept], atol=1e-3)


@pytest.mark.slow
def test_corrupt_videos_are_skipped_and_reported_and_reruns_resume(tmp_path, caplog):
    videos = tmp_path / "videos"
    write_tiny_videos(videos, num_videos=1, seed=3)
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    shutil.copy(videos / "video_0000.npz", videos / "broken.npz")
    output = tmp_path / "out"
    with caplog.at_level("WARNING"):
        preprocess_tiny_videos(videos, output, resolution=32, num_workers=2)
    assert any("broken" in record.getMessage() and "corrupt" in record.getMessage() for record in caplog.records)
    report = json.loads((output / "preprocess_report.json").read_text())
    assert report["processed"] == ["video_0000"]
    assert list(report["skipped"]) == ["broken"] and "corrupt" in report["skipped"]["broken"]
    skipped = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    assert [entry["video_id"] for entry in skipped] == ["broken"]
    assert load_dawn_dataset(output)["video_id"] == ["video_0000"]
    finished_shard = sorted((output / "shards" / "video_0000").rglob("*.arrow"))
    written = [path.stat().st_mtime_ns for path in finished_shard]

    # A second run processes only the new video: the finished shard is reused untouched, the skip is not retried.
    write_tiny_videos(videos / "more", num_videos=1, seed=4)
    preprocess_tiny_videos(videos, output, resolution=32)
    report = json.loads((output / "preprocess_report.json").read_text())
    assert report["reused"] == ["video_0000"] and report["processed"] == ["more__video_0000"]
    assert list(report["skipped"]) == ["broken"]
    assert [path.stat().st_mtime_ns for path in finished_shard] == written
    assert sorted(load_dawn_dataset(output)["video_id"]) == ["more__video_0000", "video_0000"]


def test_missing_columns_are_named():
    import datasets

    with pytest.raises(ValueError, match=r"\['pose'\]"):
        check_dawn_dataset(datasets.Dataset.from_dict({"hubert": [[0.0]]}), columns=("hubert", "pose"))


def test_no_crop_keeps_whole_frames_and_scales_the_boxes(tmp_path):
    videos = tmp_path / "videos"
    write_tiny_videos(videos, num_videos=1)
    preprocess_tiny_videos(videos, tmp_path / "out", resolution=32, crop=False)
    row = load_dawn_dataset(tmp_path / "out")[0]
    truth = np.load(videos / f"{row['video_id']}.npz")
    # The whole frame, halved: every box is the drawn one times 32 / 64, nothing is shifted.
    factor = 32 / TINY_DATASET_RESOLUTION
    np.testing.assert_allclose(np.asarray(row["lip_box"]), truth["lip_box"] * factor, atol=1e-3)
    first = truth["landmarks"][0, :, :2]
    np.testing.assert_allclose(np.asarray(row["face_box"])[0, :4],
                               [first[:, 0].min() * factor, first[:, 0].max() * factor,
                                first[:, 1].min() * factor, first[:, 1].max() * factor], atol=1e-3)
    # The frames are the decoded video frames, downscaled (no crop, no padding): the mean colour is kept.
    video_frames = read_video(videos / f"{row['video_id']}.mp4", fps=25)[0]
    frame = np.asarray(row["frames"][0], dtype=np.float64)
    assert frame.shape == (32, 32, 3)
    np.testing.assert_allclose(frame.mean((0, 1)), video_frames[0].astype(np.float64).mean((0, 1)), atol=2.0)


def test_the_audio_encoder_is_the_one_the_caller_passes():
    import functools
    import pickle

    import torch

    from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert
    from diffusers_dawn.training.dataset import PreprocessingSettings

    settings = PreprocessingSettings(audio_encoder=functools.partial(build_tiny_hubert, seed=3, hidden_size=16))
    # Worker processes receive the settings pickled.
    encoder, _ = pickle.loads(pickle.dumps(settings)).build_audio_encoder()
    reference, _ = build_tiny_hubert(seed=3, hidden_size=16)
    assert settings.hubert_dim() == 16 and not encoder.training
    for (name, value), expected in zip(encoder.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), name
    with pytest.raises(ValueError, match="exactly one of `hubert`"):
        PreprocessingSettings()


def test_the_dataset_library_does_not_import_the_test_helpers():
    import subprocess
    import sys

    code = (
        "import sys, diffusers_dawn.training.dataset\n"
        "print(sorted(name for name in sys.modules if name.startswith('diffusers_dawn.testing')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
