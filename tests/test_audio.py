"""Speech loading (formats, rates, channels, errors) and the official HuBERT feature recipe."""

import logging

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from diffusers_dawn.processing.audio import (
    AudioLoadError,
    compute_hubert_features,
    interpolate_features,
    load_audio,
    num_video_frames,
)
from diffusers_dawn.processing.video import export_to_video_with_audio
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert


def tone(frequency, seconds, rate, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)


def dominant_frequency(waveform, rate):
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_amplitude(rate):
    waveform = load_audio(tone(440.0, 1.0, rate), sampling_rate=rate)
    assert len(waveform) == 16000
    assert abs(dominant_frequency(waveform, 16000) - 440.0) < 2.0
    middle = waveform[2000:-2000]
    assert abs(np.abs(middle).max() - 0.5) < 0.005


def test_channels_are_mixed_and_layout_detected():
    left, right = tone(300.0, 0.5, 16000), tone(300.0, 0.5, 16000, amplitude=0.1)
    channels_last = load_audio(np.stack([left, right], axis=1), sampling_rate=16000)
    channels_first = load_audio(torch.tensor(np.stack([left, right])), sampling_rate=16000)
    np.testing.assert_allclose(channels_last, (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(channels_first, channels_last, atol=1e-6)
    np.testing.assert_allclose(load_audio(np.stack([left, right], 1), sampling_rate=16000, channel=0), left, atol=1e-6)


def test_integer_samples_are_scaled():
    samples = (tone(200.0, 0.2, 16000) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(samples, sampling_rate=16000), samples / 32767.0, atol=1e-6)


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3", "m4a"])
def test_files_in_common_formats(tmp_path, extension):
    import av

    path = tmp_path / f"speech.{extension}"
    codec = {"wav": "pcm_s16le", "flac": "flac", "mp3": "libmp3lame", "m4a": "aac"}[extension]
    samples = tone(500.0, 1.0, 44100, amplitude=0.4).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=44100)
        stream.layout = "stereo"
        frame_format = stream.codec_context.format.name
        planar = stereo = np.stack([samples, samples])
        if frame_format.startswith("s16"):
            planar = (stereo * 32767).astype(np.int16)
        elif frame_format.startswith("s32"):
            planar = (stereo * 2147483647).astype(np.int32)
        if not frame_format.endswith("p"):
            planar = planar.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(planar, format=frame_format, layout="stereo")
        frame.sample_rate = 44100
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    waveform = load_audio(path)
    assert abs(len(waveform) / 16000 - 1.0) < 0.06  # encoder padding of lossy codecs
    assert abs(dominant_frequency(waveform, 16000) - 500.0) < 3.0


def test_audio_track_of_a_video_file(tmp_path):
    path = export_to_video_with_audio(np.zeros((25, 32, 32, 3), np.uint8), tmp_path / "clip.mp4",
                                      audio=tone(700.0, 1.0, 16000).astype(np.float32))
    waveform = load_audio(path)
    assert abs(dominant_frequency(waveform, 16000) - 700.0) < 3.0


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(AudioLoadError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioLoadError, match="cannot decode"):
        load_audio(corrupt)
    silent_video = export_to_video_with_audio(np.zeros((5, 16, 16, 3), np.uint8), tmp_path / "mute.mp4")
    with pytest.raises(AudioLoadError, match="no audio stream"):
        load_audio(silent_video)
    with pytest.raises(AudioLoadError, match="sampling_rate"):
        load_audio(np.zeros(16000))
    with pytest.raises(AudioLoadError, match="shorter than one video frame"):
        load_audio(np.ones(639) * 0.1, sampling_rate=16000)


def test_silent_audio_warns(caplog):
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            load_audio(np.zeros(16000), sampling_rate=16000)
    finally:
        diffusers_logging.disable_propagation()
    assert "lips will not move" in caplog.text


def test_frame_count_is_floor_of_duration():
    assert num_video_frames(16000) == 25
    assert num_video_frames(16000 + 639) == 25
    assert num_video_frames(16000 + 640) == 26
    assert num_video_frames(639) == 0


@pytest.fixture(scope="module")
def tiny_hubert():
    return build_tiny_hubert(seed=0)


def reference_features(waveform, model, extractor, num_frames):
    """Straightforward one-chunk-at-a-time implementation of the official recipe, with numpy interpolation."""
    normalized = extractor(waveform, sampling_rate=16000, return_tensors="np").input_values[0]
    outputs, start = [], 0
    while len(normalized) - start >= 320000:
        chunk = torch.from_numpy(normalized[start : start + 320080].astype(np.float32))[None]
        outputs.append(model(chunk).last_hidden_state[0])
        start += 320000
    if len(normalized) - start >= 400:
        outputs.append(model(torch.from_numpy(normalized[start:].astype(np.float32))[None]).last_hidden_state[0])
    features = torch.cat(outputs).detach().double().numpy()
    expected = (len(normalized) - 80) // 320
    features = features[:expected]
    grid = np.linspace(0, features.shape[0] - 1, num_frames)
    return np.stack([np.interp(grid, np.arange(features.shape[0]), column) for column in features.T], axis=1)


@pytest.mark.parametrize("seconds", [0.5, 1.37, 21.3])
def test_hubert_features_match_the_official_recipe(tiny_hubert, seconds):
    model, extractor = tiny_hubert
    waveform = np.random.default_rng(1).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1
    with torch.no_grad():
        features = compute_hubert_features(waveform, model, extractor)
        expected = reference_features(waveform, model, extractor, int(seconds * 25))
    assert features.shape == (int(seconds * 25), model.config.hidden_size)
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-5)


def test_hubert_chunks_are_independent(tiny_hubert):
    model, extractor = tiny_hubert
    rng = np.random.default_rng(2)
    waveform = rng.standard_normal(16000 * 25).astype(np.float32) * 0.1
    changed = waveform.copy()
    changed[: 16000 * 19] = rng.standard_normal(16000 * 19) * 0.1
    # Keep the whole-utterance normalisation statistics unchanged so only chunk-local effects remain.
    changed[: 16000 * 19] = (changed[: 16000 * 19] - changed[: 16000 * 19].mean()) / changed[: 16000 * 19].std()
    changed[: 16000 * 19] = changed[: 16000 * 19] * waveform[: 16000 * 19].std() + waveform[: 16000 * 19].mean()
    with torch.no_grad():
        first = compute_hubert_features(waveform, model, extractor)
        second = compute_hubert_features(changed, model, extractor)
    # Frames well inside the second chunk (after 20 s) do not see the first chunk's audio.
    np.testing.assert_allclose(first[520:].numpy(), second[520:].numpy(), atol=2e-4)
    assert (first[:400] - second[:400]).abs().max() > 1e-2


def test_interpolation_endpoints():
    features = torch.randn(7, 3, dtype=torch.float32)
    resampled = interpolate_features(features, 12)
    torch.testing.assert_close(resampled[0], features[0])
    torch.testing.assert_close(resampled[-1], features[-1])
    torch.testing.assert_close(interpolate_features(features, 7), features)
