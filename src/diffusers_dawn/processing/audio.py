"""Speech input: any file or array → 16 kHz mono, and HuBERT features at the video frame rate (official recipe)."""

import os
from fractions import Fraction
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.utils import logging

from ..utils.errors import DAWNInputError


logger = logging.get_logger(__name__)

# The timing every part of DAWN shares: 16 kHz speech, 25 video frames per second, so 640 samples per frame.
AUDIO_SAMPLING_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = AUDIO_SAMPLING_RATE // VIDEO_FPS
# HuBERT: one vector per 320 samples, receptive field 400 samples (the "- 80" of the official length formula).
HUBERT_HOP = 320
HUBERT_RECEPTIVE_FIELD = 400
# The official code encodes 20 s chunks independently, each with 80 samples of look-ahead.
HUBERT_CHUNK_SAMPLES = 320000
SILENCE_THRESHOLD = 1e-4


class AudioLoadError(DAWNInputError):
    """The audio cannot be used; the message says why and what to do."""


def num_video_frames(num_samples: int, rate: int = AUDIO_SAMPLING_RATE, fps: int = VIDEO_FPS) -> int:
    """Frames of video for `num_samples` of audio: floor(duration × fps), as the official code counts them."""
    return int(num_samples / rate * fps)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling with the exact rational factor (deterministic, anti-aliased)."""
    if orig_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, orig_rate).limit_denominator(10000)
    return resample_poly(waveform.astype(np.float64), ratio.numerator, ratio.denominator, axis=0).astype(np.float32)


def integer_samples_to_float(samples: np.ndarray) -> np.ndarray:
    """
    PCM integers → float32 in [-1, 1): signed types are divided by 2^(bits-1) (the soundfile / libsndfile
    convention the official code reads with), unsigned types are centred first (8-bit WAV stores 128 as silence).
    Floats pass through; booleans are rejected.
    """
    if samples.dtype == np.bool_:
        raise AudioLoadError("audio samples must be numbers, got booleans")
    if not np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32, copy=False)
    info = np.iinfo(samples.dtype)
    half_range = float(info.max) + 1.0 if info.min < 0 else (float(info.max) + 1.0) / 2.0
    offset = 0.0 if info.min < 0 else half_range
    return ((samples.astype(np.float64) - offset) / half_range).astype(np.float32)


def _decode_file(path: str):
    """Decodes the first audio stream of any container PyAV (bundled ffmpeg) reads → (samples, channels), rate."""
    import av

    if not os.path.isfile(path):
        raise AudioLoadError(f"{path}: no such audio file")
    try:
        with av.open(path) as container:
            streams = container.streams.audio
            if not streams:
                raise AudioLoadError(f"{path}: the file has no audio stream; pass a file that contains the speech")
            stream = streams[0]
            chunks = []
            first_pts = None
            for frame in container.decode(stream):
                if first_pts is None:
                    first_pts = frame.pts
                # to_ndarray gives (channels, samples) for planar and (1, samples*channels) for packed layouts.
                array = frame.to_ndarray()
                channels = len(frame.layout.channels)
                if frame.format.is_planar:
                    array = array.T
                else:
                    array = array.reshape(-1, channels)
                chunks.append(integer_samples_to_float(array))
                rate = frame.sample_rate
    except AudioLoadError:
        raise
    except Exception as error:  # PyAV raises many error types for bad files
        raise AudioLoadError(
            f"{path}: cannot decode audio ({type(error).__name__}: {error}); the file is corrupt or not audio"
        ) from None
    if not chunks:
        raise AudioLoadError(f"{path}: the audio stream is empty")
    samples = np.concatenate(chunks, axis=0)
    return _trim_to_stream_timing(samples, rate, stream.start_time, stream.duration, stream.time_base, first_pts), rate


# Lossy codecs pad the last frame (AAC 1024 samples, MP3 1152) and add an encoder delay; more than this excess over
# the stated duration means the duration is only an estimate (e.g. a constant-bit-rate MP3 without a header).
MAX_CODEC_PADDING_SAMPLES = 4096


def _trim_to_stream_timing(samples, rate, start_time, duration, time_base, first_pts) -> np.ndarray:
    """
    Keeps exactly the samples the container says are the stream's content: decoded samples timed before the stream's
    start (codec priming / encoder delay) and beyond its duration (padding of the last codec frame) are dropped, so
    that the same speech gives the same number of video frames whatever the format.
    """
    if time_base is None:
        return samples
    start = start_time or 0
    if first_pts is not None and first_pts < start:
        priming = int(round(float((start - first_pts) * time_base) * rate))
        # An encoder delay is a few codec frames; a larger gap means the container's start time is not the codec's
        # (some demuxers report one that disagrees with the packets), and trusting it would drop the speech itself.
        if priming <= MAX_CODEC_PADDING_SAMPLES:
            samples = samples[priming:]
    if duration:
        expected = int(round(float(duration * time_base) * rate))
        if 0 < len(samples) - expected <= MAX_CODEC_PADDING_SAMPLES:
            samples = samples[:expected]
    return samples


def samples_to_mono(samples: Union[np.ndarray, torch.Tensor], channel: Optional[int] = None) -> np.ndarray:
    """
    Samples shaped (samples,), (samples, channels) or (channels, samples) → float32 mono.

    Channels are the short axis, so (2, 48000) is read as channels-first and (48000, 2) as channels-last. By default
    the channels are averaged (a mix-down: speech panned to one side is kept); `channel=i` keeps only channel i
    instead (`channel=0` is what the official code does).
    """
    samples = samples.detach().cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim == 2:
        if samples.shape[0] < samples.shape[1]:
            samples = samples.T
    else:
        raise AudioLoadError(f"audio samples must be 1-D or 2-D (samples[, channels]), got shape {samples.shape}")
    if samples.size == 0:
        raise AudioLoadError(f"the audio has no samples (shape {samples.shape}); pass a speech clip")
    samples = integer_samples_to_float(samples)
    if not np.isfinite(samples).all():
        raise AudioLoadError("the audio contains NaN or infinite samples")
    if channel is not None:
        if not 0 <= channel < samples.shape[1]:
            raise AudioLoadError(f"channel {channel} requested but the audio has {samples.shape[1]} channel(s)")
        return np.ascontiguousarray(samples[:, channel], dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def decode_audio_file(path: Union[str, os.PathLike], channel: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """
    Decodes the first audio stream of an audio or video file with PyAV (its bundled ffmpeg; no system ffmpeg).

    Returns:
        (float32 mono samples at the file's own rate, that rate). Channels as in [`samples_to_mono`].
    """
    samples, rate = _decode_file(os.fspath(path))
    return samples_to_mono(samples, channel=channel), rate


def load_audio(
    audio: Union[str, os.PathLike, np.ndarray, torch.Tensor],
    sampling_rate: Optional[int] = None,
    target_rate: int = AUDIO_SAMPLING_RATE,
    channel: Optional[int] = None,
) -> np.ndarray:
    """
    Loads speech as float32 mono at `target_rate` (16 kHz for HuBERT).

    Args:
        audio: A path (wav, flac, mp3, m4a/aac, ogg, or the audio track of a video file), or samples shaped
            (samples,), (samples, channels) or (channels, samples) as a numpy array or torch tensor. Integer samples
            are scaled to [-1, 1).
        sampling_rate: Rate of array / tensor input (required for them; a file's own rate is used for paths).
        target_rate: Output rate. Resampling is polyphase with the exact rational factor (deterministic).
        channel: Keep only this channel. By default all channels are averaged; the official code keeps channel 0.

    Raises:
        AudioLoadError: missing, unreadable or corrupt file; a file without an audio stream; NaN samples; less audio
            than one video frame (40 ms). Silent audio is accepted with a warning.
    """
    if isinstance(audio, (str, os.PathLike)):
        mono, rate = decode_audio_file(audio, channel=channel)
    else:
        if sampling_rate is None:
            raise AudioLoadError("audio given as samples needs `sampling_rate` (e.g. sampling_rate=16000)")
        if int(sampling_rate) <= 0:
            raise AudioLoadError(f"sampling_rate must be a positive number of samples per second, got {sampling_rate}")
        mono, rate = samples_to_mono(audio, channel=channel), int(sampling_rate)
    waveform = resample(mono, rate, target_rate)
    if num_video_frames(len(waveform), target_rate) < 1:
        raise AudioLoadError(
            f"the audio lasts {len(waveform) / target_rate * 1000:.1f} ms, shorter than one video frame "
            f"({1000 / VIDEO_FPS:.0f} ms); pass a longer speech clip"
        )
    if np.abs(waveform).max() < SILENCE_THRESHOLD:
        logger.warning("The audio is silent: the video will be generated, but the lips will not move.")
    return waveform


def hubert_chunk_ranges(num_samples: int, chunk_samples: int = HUBERT_CHUNK_SAMPLES) -> List[Tuple[int, int]]:
    """
    Sample ranges the official code encodes independently: each full chunk of `chunk_samples` plus the 80 samples
    of look-ahead its last HuBERT frame needs, then the remainder if it holds at least one receptive field.
    """
    look_ahead = HUBERT_RECEPTIVE_FIELD - HUBERT_HOP
    full_chunks = num_samples // chunk_samples
    ranges = [
        (i * chunk_samples, min((i + 1) * chunk_samples + look_ahead, num_samples)) for i in range(full_chunks)
    ]
    remainder_start = full_chunks * chunk_samples
    if num_samples - remainder_start >= HUBERT_RECEPTIVE_FIELD:
        ranges.append((remainder_start, num_samples))
    return ranges


@torch.no_grad()
def compute_hubert_features(
    waveform: Union[np.ndarray, torch.Tensor],
    audio_encoder,
    feature_extractor,
    num_frames: Optional[int] = None,
    chunk_samples: int = HUBERT_CHUNK_SAMPLES,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """
    HuBERT features at the video frame rate, computed exactly as the official code does.

    The whole utterance is normalised by `feature_extractor` (zero mean, unit variance), cut into chunks of
    `chunk_samples` (+80 samples of look-ahead) that are encoded independently, the features are trimmed or
    zero-padded to (len − 80) // 320 vectors, then linearly interpolated with aligned endpoints (in float64) to
    `num_frames` frames. All equal-length chunks go through the encoder in one batched forward; the shorter
    remainder follows in a second one.

    Args:
        waveform: 16 kHz mono speech, (samples,).
        audio_encoder: A transformers `HubertModel` (the official one is hubert-large-ls960-ft).
        feature_extractor: The matching `Wav2Vec2FeatureExtractor` (with `do_normalize=True`).
        num_frames: Output length; defaults to floor(duration × 25).
        chunk_samples: Chunk length in samples (official: 320,000 = 20 s). Changing it changes the features.
        device, dtype: Where and in which precision the encoder runs; default: those of `audio_encoder`.

    Returns:
        `torch.Tensor` of shape (num_frames, hidden_size), float32, on the CPU.
    """
    if torch.is_tensor(waveform):
        waveform = waveform.detach().cpu().numpy()
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"compute_hubert_features needs 16 kHz mono samples (samples,), got shape {waveform.shape}")
    if num_frames is None:
        num_frames = num_video_frames(len(waveform))
    if len(waveform) < HUBERT_RECEPTIVE_FIELD or num_frames < 1:
        raise AudioLoadError(
            f"{len(waveform)} samples ({len(waveform) / AUDIO_SAMPLING_RATE * 1000:.1f} ms at 16 kHz) is shorter than "
            f"one video frame; pass at least {AUDIO_SAMPLING_RATE // VIDEO_FPS} samples of speech"
        )
    if chunk_samples % HUBERT_HOP:
        raise ValueError(f"chunk_samples must be a multiple of the HuBERT hop ({HUBERT_HOP}), got {chunk_samples}")
    parameter = next(audio_encoder.parameters())
    device = parameter.device if device is None else torch.device(device)
    dtype = parameter.dtype if dtype is None else dtype

    normalized = feature_extractor(waveform, sampling_rate=AUDIO_SAMPLING_RATE, return_tensors="np").input_values[0]
    normalized = torch.from_numpy(np.asarray(normalized, dtype=np.float32))
    chunks = [normalized[start:end] for start, end in hubert_chunk_ranges(len(normalized), chunk_samples)]
    # Chunks of one length share a batch; order is kept because only the last chunk can be shorter.
    pieces = []
    for length in dict.fromkeys(len(chunk) for chunk in chunks):
        batch = torch.stack([chunk for chunk in chunks if len(chunk) == length]).to(device=device, dtype=dtype)
        pieces.extend(audio_encoder(batch).last_hidden_state.float().cpu().unbind(0))
    features = torch.cat(pieces, dim=0)

    expected = (len(normalized) - (HUBERT_RECEPTIVE_FIELD - HUBERT_HOP)) // HUBERT_HOP
    if abs(features.shape[0] - expected) > 1:
        raise RuntimeError(
            f"the audio encoder returned {features.shape[0]} vectors for {len(normalized)} samples, expected "
            f"{expected}: it must be a HuBERT / wav2vec2-style encoder with a 320-sample hop"
        )
    if features.shape[0] < expected:
        features = torch.cat([features, features.new_zeros(expected - features.shape[0], features.shape[1])])
    return interpolate_features(features[:expected], num_frames)


def interpolate_features(features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """
    Resamples (T, C) features to (num_frames, C) by linear interpolation with aligned endpoints: output frame k sits
    at source position k·(T − 1)/(num_frames − 1). Computed in float64, returned as float32.
    """
    source = features.double()
    count = source.shape[0]
    if count == 1:
        return source.expand(num_frames, -1).float().clone()
    positions = torch.linspace(0, count - 1, num_frames, dtype=torch.float64)
    lower = positions.floor().long().clamp(max=count - 2)
    weight = (positions - lower.double())[:, None]
    return ((1 - weight) * source[lower] + weight * source[lower + 1]).float()
