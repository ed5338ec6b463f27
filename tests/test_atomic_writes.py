"""Nothing lost: writers go through a temporary name, so a failed write leaves neither a partial nor a changed file."""

import os

import numpy as np
import pytest

from diffusers_dawn.processing.video import export_to_video_with_audio, probe_video
from diffusers_dawn.utils.io import atomic_file, atomic_folder, atomic_write_text


class SimulatedFullDisk(OSError):
    pass


def frames(count=4, size=32, value=90):
    return np.full((count, size, size, 3), value, np.uint8)


def test_atomic_file_replaces_only_when_complete(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with pytest.raises(SimulatedFullDisk):
        with atomic_file(target) as partial:
            assert os.path.dirname(partial) == str(tmp_path) and partial.endswith(".txt")
            with open(partial, "w") as handle:
                handle.write("half")
            raise SimulatedFullDisk("no space left on device")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]

    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_folder_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "pipeline"
    target.mkdir()
    (target / "model_index.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as partial:
            (tmp_path / os.path.basename(partial) / "model_index.json").write_text("half")
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["pipeline"]
    assert os.listdir(target) == ["model_index.json"] and (target / "model_index.json").read_text() == "old"

    with atomic_folder(target) as partial:
        (tmp_path / os.path.basename(partial) / "config.json").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["pipeline"]
    assert os.listdir(target) == ["config.json"]


def test_mp4_write_failing_midway_leaves_no_partial_file_and_the_old_video_untouched(tmp_path, monkeypatch):
    import av

    output = tmp_path / "out.mp4"
    export_to_video_with_audio(frames(value=30), output, audio=np.zeros(16000, np.float32))
    before = output.read_bytes()

    encode = av.video.stream.VideoStream.encode
    calls = []

    def encode_then_fail(self, frame=None):
        calls.append(frame)
        if len(calls) == 3:
            raise SimulatedFullDisk(28, "No space left on device")
        return encode(self, frame)

    monkeypatch.setattr(av.video.stream.VideoStream, "encode", encode_then_fail)
    with pytest.raises(SimulatedFullDisk):
        export_to_video_with_audio(frames(count=8, value=200), output, audio=np.zeros(16000, np.float32))
    assert len(calls) == 3
    assert output.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]

    monkeypatch.undo()
    export_to_video_with_audio(frames(count=8, value=200), output)
    assert probe_video(output)["num_frames"] == 8
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]
