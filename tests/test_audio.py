"""Speech loading (formats, rates, channels, errors) and the official HuBERT feature recipe."""

import logging

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from diffusers_dawn.processing.audio import (
    AUDIO_SAMPLING_RATE,
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
    # Signed PCM is divided by 2^(bits-1) like libsndfile; unsigned 8-bit PCM is centred on 128 first.
    samples = (tone(200.0, 0.2, 16000) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(samples, sampling_rate=16000), samples / 32768.0, atol=1e-7)
    unsigned = np.array([128, 192, 64, 255, 0] * 200, dtype=np.uint8)
    np.testing.assert_allclose(load_audio(unsigned, sampling_rate=16000)[:5], [0.0, 0.5, -0.5, 127 / 128, -1.0])


@pytest.mark.parametrize("extension", ["wav", "flac", "mp3", "m4a", "ogg"])
def test_files_in_common_formats(tmp_path, extension):
    import av

    path = tmp_path / f"speech.{extension}"
    codec = {"wav": "pcm_s16le", "flac": "flac", "mp3": "libmp3lame", "m4a": "aac", "ogg": "libopus"}[extension]
    rate = 48000 if extension == "ogg" else 44100  # Opus only encodes at 8/12/16/24/48 kHz
    samples = tone(500.0, 1.0, rate, amplitude=0.4).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
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
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    waveform = load_audio(path)
    assert abs(len(waveform) / 16000 - 1.0) < 0.07  # encoder padding / priming of lossy codecs
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
    for empty in (np.zeros(0), np.zeros((0, 2)), torch.zeros(2, 0)):
        with pytest.raises(AudioLoadError, match="no samples"):
            load_audio(empty, sampling_rate=16000)


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


def reference_features(waveform, model, extractor, num_frames, chunk_samples=320000):
    """Straightforward one-chunk-at-a-time implementation of the official recipe, with numpy interpolation."""
    normalized = extractor(waveform, sampling_rate=16000, return_tensors="np").input_values[0]
    outputs, start = [], 0
    while len(normalized) - start >= chunk_samples:
        chunk = torch.from_numpy(normalized[start : start + chunk_samples + 80].astype(np.float32))[None]
        outputs.append(model(chunk).last_hidden_state[0])
        start += chunk_samples
    if len(normalized) - start >= 400:
        outputs.append(model(torch.from_numpy(normalized[start:].astype(np.float32))[None]).last_hidden_state[0])
    features = torch.cat(outputs).detach().double().numpy()
    expected = (len(normalized) - 80) // 320
    features = np.concatenate([features, np.zeros((max(0, expected - len(features)), features.shape[1]))])[:expected]
    grid = np.linspace(0, features.shape[0] - 1, num_frames)
    return np.stack([np.interp(grid, np.arange(features.shape[0]), column) for column in features.T], axis=1)


def noise(seconds, seed):
    return np.random.default_rng(seed).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1


@pytest.mark.parametrize("seconds", [0.04, 0.5, 1.37, 21.3, 41.0])
def test_hubert_features_match_the_official_recipe(tiny_hubert, seconds):
    # 21.3 s: one full 20 s chunk + remainder; 41 s: two full chunks (one batched forward) + remainder.
    model, extractor = tiny_hubert
    waveform = noise(seconds, seed=1)
    with torch.no_grad():
        features = compute_hubert_features(waveform, model, extractor)
        expected = reference_features(waveform, model, extractor, int(seconds * 25))
    assert features.shape == (int(seconds * 25), model.config.hidden_size) and features.dtype == torch.float32
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("seconds", [6.0, 7.3, 8.02])
def test_batched_chunks_equal_one_at_a_time(tiny_hubert, seconds):
    # 2 s chunks: 3 or 4 equal chunks go through the encoder together; the reference encodes them one by one.
    # 6.0 s ends exactly on a chunk border, so the last full chunk lacks its 80-sample look-ahead.
    model, extractor = tiny_hubert
    waveform = noise(seconds, seed=3)
    with torch.no_grad():
        batched = compute_hubert_features(waveform, model, extractor, chunk_samples=32000)
        one_at_a_time = reference_features(waveform, model, extractor, int(seconds * 25), chunk_samples=32000)
        single_pass = compute_hubert_features(waveform, model, extractor)
    np.testing.assert_allclose(batched.numpy(), one_at_a_time, atol=1e-5)
    assert np.abs(single_pass.numpy() - one_at_a_time).max() > 1e-3  # chunking changes the features


def test_hubert_chunks_are_independent(tiny_hubert):
    # Without the whole-utterance normalisation (which couples all samples by design), the features of chunk 2
    # must not depend on chunk 1's audio at all, while a single pass over the same audio does depend on it.
    model, extractor = tiny_hubert
    raw_extractor = type(extractor)(**{**extractor.to_dict(), "do_normalize": False})
    waveform = noise(5.0, seed=4)
    changed = waveform.copy()
    changed[:32000] = noise(2.0, seed=5)
    hop_count = (len(waveform) - 80) // 320  # num_frames = hop count makes the interpolation the identity
    border = 32000 // 320
    with torch.no_grad():
        first, second = (
            compute_hubert_features(audio, model, raw_extractor, num_frames=hop_count, chunk_samples=32000)
            for audio in (waveform, changed)
        )
        whole_first, whole_second = (
            compute_hubert_features(audio, model, raw_extractor, num_frames=hop_count) for audio in (waveform, changed)
        )
    torch.testing.assert_close(first[border:], second[border:], atol=1e-6, rtol=0)
    assert (first[:border] - second[:border]).abs().max() > 1e-2
    assert (whole_first[border:] - whole_second[border:]).abs().max() > 1e-3


def test_interpolation_keeps_the_endpoints(tiny_hubert):
    model, extractor = tiny_hubert
    waveform = noise(1.37, seed=6)
    with torch.no_grad():
        features = compute_hubert_features(waveform, model, extractor)
        normalized = extractor(waveform, sampling_rate=16000, return_tensors="pt").input_values
        hubert = model(normalized).last_hidden_state[0][: (len(waveform) - 80) // 320]
    torch.testing.assert_close(features[0], hubert[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(features[-1], hubert[-1], atol=1e-6, rtol=0)
    resampled = interpolate_features(hubert, 12)
    torch.testing.assert_close(resampled[0], hubert[0])
    torch.testing.assert_close(resampled[-1], hubert[-1])
    torch.testing.assert_close(interpolate_features(hubert, len(hubert)), hubert)
    # Midpoint of an upsampling by 2T-1 is the mean of the neighbouring source frames.
    torch.testing.assert_close(interpolate_features(hubert, 2 * len(hubert) - 1)[1], (hubert[0] + hubert[1]) / 2)


def test_hubert_rejects_audio_shorter_than_one_frame(tiny_hubert):
    model, extractor = tiny_hubert
    with pytest.raises(AudioLoadError, match="shorter than one video frame"):
        compute_hubert_features(np.zeros(500, np.float32), model, extractor)


SPEECH_SECONDS = 6.69  # floor(6.69 × 25) = 167 frames; a codec's priming or padding would make it 168
BURST_SECONDS = 1.5


def speech_with_a_burst(rate):
    time = np.arange(int(round(SPEECH_SECONDS * rate))) / rate
    voice = 0.02 * np.sin(2 * np.pi * 220 * time)
    burst = (time >= BURST_SECONDS) & (time < BURST_SECONDS + 0.05)
    voice[burst] += 0.6 * np.sin(2 * np.pi * 1000 * time[burst])
    return voice.astype(np.float32)


def write_with_pyav(path, codec, rate, layout="mono", video=False):
    import av

    voice = speech_with_a_burst(rate)
    channels = np.stack([voice, voice]) if layout == "stereo" else voice[None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        picture = container.add_stream("libx264", rate=25) if video else None
        if picture is not None:
            picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
            for index in range(int(SPEECH_SECONDS * 25)):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index % 255, np.uint8), format="rgb24")
                frame.pts = index
                for packet in picture.encode(frame):
                    container.mux(packet)
            for packet in picture.encode():
                container.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels), format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def burst_onset_seconds(waveform, rate=AUDIO_SAMPLING_RATE):
    return int(np.argmax(np.abs(waveform) > 0.3)) / rate


def test_every_format_gives_the_frames_and_timing_of_the_speech_itself(tmp_path):
    # Lossy codecs add priming samples before and padding after the speech; only the speech may count.
    files = {
        "wav": ("pcm_s16le", 16000, "mono", False),
        "flac": ("flac", 22050, "mono", False),
        "mp3": ("libmp3lame", 44100, "stereo", False),
        "m4a": ("aac", 44100, "stereo", False),
        "mp4": ("aac", 48000, "mono", True),  # the audio track of a video
    }
    frames, onsets = {}, {}
    for suffix, (codec, rate, layout, video) in files.items():
        path = tmp_path / f"speech.{suffix}"
        write_with_pyav(path, codec, rate, layout, video)
        waveform = load_audio(path)
        frames[suffix] = num_video_frames(len(waveform), AUDIO_SAMPLING_RATE)
        onsets[suffix] = burst_onset_seconds(waveform)
        assert len(waveform) == pytest.approx(SPEECH_SECONDS * AUDIO_SAMPLING_RATE, abs=2), suffix
    assert set(frames.values()) == {int(SPEECH_SECONDS * 25)}, frames
    assert max(onsets.values()) - min(onsets.values()) < 0.010, onsets
    assert all(abs(onset - BURST_SECONDS) < 0.010 for onset in onsets.values()), onsets


def test_stream_timing_trims_codec_priming_but_never_the_speech():
    from fractions import Fraction

    from diffusers_dawn.processing.audio import _trim_to_stream_timing

    rate, time_base = 44100, Fraction(1, 44100)
    decoded = np.arange(10000, dtype=np.float32)[:, None]
    # An MP3 encoder delay of 1105 samples before the stated start, and 500 samples of last-frame padding: dropped.
    kept = _trim_to_stream_timing(decoded, rate, start_time=1105, duration=8395, time_base=time_base, first_pts=0)
    assert kept[0, 0] == 1105 and len(kept) == 8395
    # A first frame without a usable time stamp (ffmpeg's "no PTS", -2**63) or a start time that disagrees with the
    # packets by more than codec priming: the metadata is not trusted, and every decoded sample stays.
    for first_pts, start_time in ((-(2**63), 0), (0, 5 * rate)):
        kept = _trim_to_stream_timing(decoded, rate, start_time, duration=None, time_base=time_base, first_pts=first_pts)
        assert len(kept) == len(decoded)
