"""MP4 writing checked by decoding the file back; reading videos (frame-rate resampling, audio track, errors)."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dawn.processing.video import (
    VideoReadError,
    export_to_video_with_audio,
    frames_to_uint8,
    probe_video,
    read_video,
)


AAC_FRAME_SAMPLES = 1024


def smooth_frames(count, height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([
        np.stack([(x * 2 + 3 * i) % 256, (y * 2) % 256, np.full_like(x, 100 + i)], -1).astype(np.uint8)
        for i in range(count)
    ])


def sine(seconds, rate=16000, frequency=300.0):
    return (0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def write_constant_rate_video(path, rate, values, size=32):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for value in values:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_mp4_with_speech_decodes_back(tmp_path):
    frames = smooth_frames(30, 64, 48)
    speech = sine(1.25)  # longer than the 1.2 s of video: must be trimmed
    path = export_to_video_with_audio(frames, tmp_path / "out.mp4", audio=speech)
    info = probe_video(path)
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["audio_codec"] == "aac"
    assert info["fps"] == 25.0 and info["num_frames"] == 30 and info["video_duration"] == pytest.approx(1.2)
    assert (info["width"], info["height"]) == (48, 64)
    assert info["audio_sampling_rate"] == 16000 and info["audio_channels"] == 1  # AAC accepts 16 kHz as is
    assert abs(info["audio_duration"] - info["video_duration"]) <= AAC_FRAME_SAMPLES / 16000
    decoded, fps, audio, rate = read_video(path)
    assert decoded.shape == frames.shape and fps == 25.0 and rate == 16000
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 2.0  # crf 18 on a smooth pattern
    # The speech itself survives: same tone, same level, aligned with the start of the video.
    middle = slice(1600, 16000)
    assert np.corrcoef(audio[middle], speech[middle])[0, 1] > 0.95


def test_short_speech_is_padded_and_stereo_mixed(tmp_path):
    stereo = np.stack([sine(0.5, 44100), sine(0.5, 44100)], axis=1)  # 0.5 s of 44.1 kHz stereo, 1 s of video
    path = export_to_video_with_audio(smooth_frames(25, 32, 32), tmp_path / "pad.mp4", audio=stereo,
                                      audio_sampling_rate=44100)
    info = probe_video(path)
    assert info["audio_sampling_rate"] == 44100 and info["audio_channels"] == 1
    assert abs(info["audio_duration"] - 1.0) <= AAC_FRAME_SAMPLES / 44100


def test_speech_given_as_a_file(tmp_path):
    source = export_to_video_with_audio(smooth_frames(50, 16, 16), tmp_path / "source.mp4", audio=sine(2.0))
    path = export_to_video_with_audio(smooth_frames(25, 16, 16), tmp_path / "out.mp4", audio=source)
    info = probe_video(path)
    assert info["num_frames"] == 25 and abs(info["audio_duration"] - 1.0) <= AAC_FRAME_SAMPLES / 16000


def test_frame_forms_and_truncating_quantisation():
    array = np.random.default_rng(0).random((2, 6, 4, 3)).astype(np.float32)
    expected = (array * 255).astype(np.uint8)  # truncation: 254.7 → 254, like the official writer
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
    for frames in (array, array[None], tensor, tensor[None], list(tensor), [PIL.Image.fromarray(f) for f in expected]):
        np.testing.assert_array_equal(frames_to_uint8(frames), expected)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        frames_to_uint8(np.zeros((2, 4, 4)))


def test_float_frames_and_odd_sizes_without_audio(tmp_path):
    frames = np.full((3, 33, 31, 3), 0.999, np.float32)  # 254.7 truncates to 254
    path = export_to_video_with_audio(frames, tmp_path / "odd.mp4")
    info = probe_video(path)
    assert (info["width"], info["height"]) == (32, 34) and "audio_codec" not in info
    decoded, _, audio, rate = read_video(path)
    assert audio is None and rate is None and decoded.shape == (3, 34, 32, 3)
    assert abs(decoded[:, :33, :31].mean() - 254) < 1.5


def test_read_video_halves_the_frame_rate(tmp_path):
    path = tmp_path / "fifty.mp4"
    write_constant_rate_video(path, 50, [i * 5 for i in range(50)])
    frames, fps, _, _ = read_video(path, fps=25)
    assert fps == 25 and len(frames) == 25
    np.testing.assert_allclose(frames[:, 16, 16, 0].astype(float), np.arange(25) * 10, atol=3)


def test_read_video_picks_the_nearest_frame(tmp_path):
    # 30 fps → 25 fps: output frame k at k/25 s takes the source frame round(k·30/25) (ties to the earlier one).
    path = tmp_path / "thirty.mp4"
    write_constant_rate_video(path, 30, [i * 8 for i in range(30)])
    frames, fps, _, _ = read_video(path, fps=25)
    assert fps == 25 and len(frames) == 25
    times = np.arange(25) / 25
    nearest = np.array([np.argmin(np.abs(np.arange(30) / 30 - time) + 1e-9 * np.arange(30)) for time in times])
    np.testing.assert_allclose(frames[:, 16, 16, 0].astype(float), nearest * 8, atol=3)
    # Upsampling repeats frames: 10 fps → 25 fps.
    slow = tmp_path / "ten.mp4"
    write_constant_rate_video(slow, 10, [i * 20 for i in range(10)])
    frames, _, _, _ = read_video(slow, fps=25)
    assert len(frames) == 25
    expected = np.array([np.argmin(np.abs(np.arange(10) / 10 - time) + 1e-9 * np.arange(10)) for time in times])
    np.testing.assert_allclose(frames[:, 16, 16, 0].astype(float), expected * 20, atol=3)


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 50)
    with pytest.raises(VideoReadError, match="corrupt"):
        read_video(path)
    with pytest.raises(VideoReadError, match="corrupt"):
        probe_video(path)
    with pytest.raises(VideoReadError, match="no such video"):
        read_video(tmp_path / "missing.mp4")
    audio_only = tmp_path / "speech.wav"
    import soundfile

    soundfile.write(audio_only, sine(0.5), 16000)
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video(audio_only)
