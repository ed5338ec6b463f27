"""Speech input: any file or array → 16 kHz mono, and HuBERT features at the video frame rate (official recipe)."""

import os
from fractions import Fraction
from typing import Optional, Union

import numpy as np
import torch
from diffusers.utils import logging

logger = logging.get_logger(__name__)

AUDIO_SAMPLING_RATE = 16000
VIDEO_FPS = 25
# HuBERT: one vector per 320 samples, receptive field 400 samples (the "- 80" of the official length formula).
HUBERT_HOP = 320
HUBERT_RECEPTIVE_FIELD = 400
# The official code encodes 20 s chunks independently, each with 80 samples of look-ahead.
HUBERT_CHUNK_SAMPLES = 320000
SILENCE_THRESHOLD = 1e-4


class AudioLoadError(ValueError):
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
            for frame in container.decode(stream):
                # to_ndarray gives (channels, samples) for planar and (1, samples*channels) for packed layouts.
                array = frame.to_ndarray()
                channels = len(frame.layout.channels)
                if frame.format.is_planar:
                    array = array.T
                else:
                    array = array.reshape(-1, channels)
                if np.issubdtype(array.dtype, np.integer):
                    array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
                chunks.append(array.astype(np.float32))
                rate = frame.sample_rate
    except AudioLoadError:
        raise
    except Exception as error:  # PyAV raises many error types for bad files
        raise AudioLoadError(
            f"{path}: cannot decode audio ({type(error).__name__}: {error}); the file is corrupt or not audio"
        ) from None
    if not chunks:
        raise AudioLoadError(f"{path}: the audio stream is empty")
    return np.concatenate(chunks, axis=0), rate


def load_audio(
    audio: Union[str, os.PathLike, np.ndarray, torch.Tensor],
    sampling_rate: Optional[int] = None,
    target_rate: int = AUDIO_SAMPLING_RATE,
    channel: Optional[int] = None,
) -> np.ndarray:
    """
    Loads speech as float32 mono at `target_rate`.

    Args:
        audio: A path (wav, flac, mp3, m4a/aac, ogg, or a video file's audio track), or samples shaped
            (samples,), (samples, channels) or (channels, samples) with `sampling_rate`.
        sampling_rate: Rate of array input (required for arrays, ignored for files).
        channel: Use this channel instead of the mean of all channels (the official code takes channel 0).

    Raises:
        AudioLoadError: unreadable file, no audio stream, or less than one video frame (40 ms) of audio.
    """
    if isinstance(audio, (str, os.PathLike)):
        samples, rate = _decode_file(os.fspath(audio))
    else:
        if sampling_rate is None:
            raise AudioLoadError("audio given as samples needs `sampling_rate` (e.g. sampling_rate=16000)")
        samples = audio.detach().float().cpu().numpy() if torch.is_tensor(audio) else np.asarray(audio)
        if samples.ndim == 1:
            samples = samples[:, None]
        elif samples.ndim == 2:
            # Channels are the short axis: (2, 48000) is channels-first, (48000, 2) channels-last.
            if samples.shape[0] < samples.shape[1]:
                samples = samples.T
        else:
            raise AudioLoadError(f"audio samples must be 1-D or 2-D, got shape {samples.shape}")
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max)
        samples = samples.astype(np.float32)
        rate = int(sampling_rate)
    if not np.isfinite(samples).all():
        raise AudioLoadError("the audio contains NaN or infinite samples")
    if channel is not None:
        if not 0 <= channel < samples.shape[1]:
            raise AudioLoadError(f"channel {channel} requested but the audio has {samples.shape[1]} channel(s)")
        mono = samples[:, channel]
    else:
        mono = samples.mean(axis=1)
    waveform = resample(mono, rate, target_rate)
    if num_video_frames(len(waveform), target_rate) < 1:
        raise AudioLoadError(
            f"the audio lasts {len(waveform) / target_rate * 1000:.1f} ms, shorter than one video frame "
            f"({1000 / VIDEO_FPS:.0f} ms); pass a longer speech clip"
        )
    if np.abs(waveform).max() < SILENCE_THRESHOLD:
        logger.warning("The audio is silent: the video will be generated, but the lips will not move.")
    return waveform


def _hubert_chunks(num_samples: int):
    """Sample ranges of the official independent chunks: 20 s + 80 samples each, then the remainder."""
    full_chunks = num_samples // HUBERT_CHUNK_SAMPLES
    overlap = HUBERT_RECEPTIVE_FIELD - HUBERT_HOP
    ranges = [(i * HUBERT_CHUNK_SAMPLES, i * HUBERT_CHUNK_SAMPLES + HUBERT_CHUNK_SAMPLES + overlap) for i in range(full_chunks)]
    remainder_start = full_chunks * HUBERT_CHUNK_SAMPLES
    if num_samples - remainder_start >= HUBERT_RECEPTIVE_FIELD:
        ranges.append((remainder_start, num_samples))
    return ranges


@torch.no_grad()
def compute_hubert_features(
    waveform: np.ndarray,
    audio_encoder,
    feature_extractor,
    num_frames: Optional[int] = None,
) -> torch.Tensor:
    """
    HuBERT features resampled to the video frame rate, exactly as the official code computes them.

    The whole utterance is normalised by `feature_extractor`, cut into 20 s chunks encoded independently (the
    equal-length chunks in one batched forward), trimmed/padded to (len − 80) // 320 vectors, then linearly
    interpolated (endpoint-aligned, float64) to `num_frames` = floor(duration × 25) frames.

    Returns:
        `torch.Tensor` of shape (num_frames, hidden_size), float32, on the CPU.
    """
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if num_frames is None:
        num_frames = num_video_frames(len(waveform))
    if len(waveform) < HUBERT_RECEPTIVE_FIELD:
        raise AudioLoadError(f"{len(waveform)} samples is too short for HuBERT (needs {HUBERT_RECEPTIVE_FIELD})")
    normalized = feature_extractor(waveform, sampling_rate=AUDIO_SAMPLING_RATE, return_tensors="np").input_values[0]
    normalized = torch.from_numpy(np.asarray(normalized, dtype=np.float32))
    device = next(audio_encoder.parameters()).device
    dtype = next(audio_encoder.parameters()).dtype

    ranges = _hubert_chunks(len(normalized))
    full = [normalized[start:end] for start, end in ranges if end - start == HUBERT_CHUNK_SAMPLES + 80]
    rest = [normalized[start:end] for start, end in ranges if end - start != HUBERT_CHUNK_SAMPLES + 80]
    pieces = []
    if full:
        hidden = audio_encoder(torch.stack(full).to(device=device, dtype=dtype)).last_hidden_state
        pieces.extend(hidden.float().cpu().unbind(0))
    for chunk in rest:
        pieces.append(audio_encoder(chunk[None].to(device=device, dtype=dtype)).last_hidden_state[0].float().cpu())
    features = torch.cat(pieces, dim=0)

    expected = (len(normalized) - (HUBERT_RECEPTIVE_FIELD - HUBERT_HOP)) // HUBERT_HOP
    if abs(features.shape[0] - expected) > 1:
        raise RuntimeError(f"HuBERT returned {features.shape[0]} vectors, expected {expected}: unexpected encoder")
    if features.shape[0] < expected:
        features = torch.cat([features, features.new_zeros(expected - features.shape[0], features.shape[1])])
    features = features[:expected]
    return interpolate_features(features, num_frames)


def interpolate_features(features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Endpoint-aligned linear interpolation along time in float64 (scipy interp1d semantics), float32 out."""
    source = features.double()
    count = source.shape[0]
    if count == 1:
        return source.expand(num_frames, -1).float().clone()
    positions = torch.linspace(0, count - 1, num_frames, dtype=torch.float64)
    lower = positions.floor().long().clamp(max=count - 2)
    weight = (positions - lower.double())[:, None]
    return ((1 - weight) * source[lower] + weight * source[lower + 1]).float()
