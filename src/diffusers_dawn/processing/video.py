"""Video output (H.264 + AAC MP4 with the speech muxed in) and input (frames + audio track), with PyAV only."""

import itertools
import os
from fractions import Fraction
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch

from ..utils.errors import DAWNInputError
from ..utils.io import atomic_file
from .audio import AUDIO_SAMPLING_RATE, VIDEO_FPS, AudioLoadError, decode_audio_file, resample, samples_to_mono


FramesLike = Union[Sequence[Union[PIL.Image.Image, np.ndarray, torch.Tensor]], np.ndarray, torch.Tensor]
AudioLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]


class VideoReadError(DAWNInputError):
    """A video cannot be read; the message says why and what to do."""


def frames_to_uint8(frames: FramesLike) -> np.ndarray:
    """
    (F, H, W, 3) uint8 from a list of PIL images / (H, W, 3) arrays / (3, H, W) tensors, an array (F, H, W, 3), or a
    tensor (F, 3, H, W); a leading batch axis of size 1 is dropped. Floats must lie in [0, 1] and are quantised by
    truncation (⌊value × 255⌋ after clipping), the official writer's convention, so that frames written here match
    the official videos bit for bit before encoding.
    """
    if torch.is_tensor(frames):
        frames = frames.detach().cpu()
        if frames.ndim == 5 and frames.shape[0] == 1:
            frames = frames[0]
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frame tensors must be (F, 3, H, W), got {tuple(frames.shape)}")
        frames = frames.permute(0, 2, 3, 1).numpy()
    elif not isinstance(frames, np.ndarray):
        frames = list(frames)
        if not frames:
            raise ValueError("no frames to write")
        frames = np.stack([_single_frame(frame) for frame in frames])
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if frames.dtype == np.bool_ or not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}")
        frames = (np.clip(np.nan_to_num(frames.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)
    return frames


def _single_frame(frame) -> np.ndarray:
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"))
    if torch.is_tensor(frame):
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"a frame tensor must be (3, H, W), got {tuple(frame.shape)}")
        return frame.detach().cpu().permute(1, 2, 0).numpy()
    return np.asarray(frame)


def _aac_rate(codec_name: str, rate: int) -> int:
    """The speech's own rate when the encoder accepts it (16 kHz does for AAC), else 48 kHz."""
    import av

    supported = av.codec.Codec(codec_name, "w").audio_rates
    return rate if not supported or rate in supported else 48000


def export_to_video_with_audio(
    frames: FramesLike,
    output_path: Union[str, os.PathLike],
    fps: float = VIDEO_FPS,
    audio: Optional[AudioLike] = None,
    audio_sampling_rate: int = AUDIO_SAMPLING_RATE,
    video_codec: str = "libx264",
    crf: int = 18,
    audio_codec: str = "aac",
    audio_bitrate: Union[str, int] = "128k",
) -> str:
    """
    Writes the frames as an H.264 (yuv420p) MP4 and muxes the speech in, trimmed to exactly the video's duration.

    Args:
        frames: See [`frames_to_uint8`]; floats in [0, 1] are truncated to uint8 like the official writer does. An
            iterator of such chunks (e.g. [`CompositedVideo.iter_chunks`]) is encoded chunk by chunk, so a long
            full-size video is never held in memory whole.
        output_path: Where to write the MP4 (folders are created).
        fps: Frame rate (DAWN: 25).
        audio: Speech as a path (any file PyAV reads) or samples (samples,) / (samples, channels) /
            (channels, samples) at `audio_sampling_rate`; mixed down to mono. `None` writes a silent video.
        video_codec, crf: Video encoder and its constant-rate factor (lower is better; 18 is visually lossless).
        audio_codec, audio_bitrate: Audio encoder ("aac") and its bit rate ("128k" or bits per second).

    Odd frame sizes are padded by one row / column of edge pixels, as yuv420p needs even sizes.

    Returns:
        `str`: the path of the written file.
    """
    import av

    streamed = not isinstance(frames, (np.ndarray, torch.Tensor, list, tuple))
    chunks = (frames_to_uint8(chunk) for chunk in (frames if streamed else [frames]))
    first = next(chunks, None)
    if first is None or len(first) == 0:
        raise ValueError("no frames to write")
    height, width = first.shape[1:3]
    frame_rate = Fraction(fps).limit_denominator(1001)
    if frame_rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:
        av.codec.Codec(video_codec, "w")
        av.codec.Codec(audio_codec, "w")
    except Exception:
        raise ValueError(
            f"this PyAV build has no encoder {video_codec!r} or {audio_codec!r}; try video_codec='mpeg4' or "
            f"audio_codec='aac' (available: see av.codecs_available)"
        ) from None

    waveform = None
    if audio is not None:
        if isinstance(audio, (str, os.PathLike)):
            waveform, audio_rate = decode_audio_file(audio)
        else:
            waveform, audio_rate = samples_to_mono(audio), int(audio_sampling_rate)
        output_rate = _aac_rate(audio_codec, audio_rate)
        waveform = resample(waveform, audio_rate, output_rate)

    output_path = os.fspath(output_path)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    # Encoded under a temporary name and renamed when complete: a failure never leaves a truncated MP4 nor
    # touches an earlier file of that name.
    with atomic_file(output_path) as partial, av.open(partial, mode="w") as container:
        video_stream = container.add_stream(video_codec, rate=frame_rate)
        video_stream.width, video_stream.height = width + width % 2, height + height % 2
        video_stream.pix_fmt = "yuv420p"
        video_stream.time_base = 1 / frame_rate
        if video_codec.startswith("libx26"):
            video_stream.options = {"crf": str(crf)}
        audio_stream = None
        if waveform is not None:
            audio_stream = container.add_stream(audio_codec, rate=output_rate)
            audio_stream.bit_rate = _parse_bitrate(audio_bitrate)
            audio_stream.layout = "mono"
        num_frames = 0
        for chunk in itertools.chain([first], chunks):
            if chunk.shape[1:3] != (height, width):
                raise ValueError(f"all frames must be {width}x{height}, got {chunk.shape[2]}x{chunk.shape[1]}")
            if height % 2 or width % 2:
                chunk = np.pad(chunk, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            for frame in chunk:
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts = num_frames
                num_frames += 1
                for packet in video_stream.encode(video_frame):
                    container.mux(packet)
        for packet in video_stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            # Exactly F / fps seconds: shorter speech is padded with silence, longer speech is cut.
            num_samples = int(round(num_frames / frame_rate * output_rate))
            waveform = np.pad(waveform[:num_samples], (0, max(0, num_samples - len(waveform))))
            # PyAV re-frames this single frame into encoder-sized frames (1024 samples for AAC).
            audio_frame = av.AudioFrame.from_ndarray(waveform[None].astype(np.float32), format="flt", layout="mono")
            audio_frame.sample_rate = output_rate
            audio_frame.pts = 0
            for packet in audio_stream.encode(audio_frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return output_path


def _parse_bitrate(bitrate: Union[str, int]) -> int:
    if isinstance(bitrate, int):
        return bitrate
    text = bitrate.strip().lower()
    try:
        return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
    except ValueError:
        raise ValueError(f"audio_bitrate must be like '128k' or 128000, got {bitrate!r}") from None


def read_video(
    path: Union[str, os.PathLike], fps: Optional[float] = None
) -> Tuple[np.ndarray, float, Optional[np.ndarray], Optional[int]]:
    """
    Decodes a video file's first video stream and its audio track.

    Args:
        path: Any container / codec PyAV reads (mp4, mov, mkv, webm, avi, ...).
        fps: Resample the frames to this rate: output frame k is the decoded frame whose timestamp is nearest to
            k / fps (ties go to the earlier frame); the output holds floor(duration × fps) frames. Frames are
            selected while decoding, so only the kept ones are held in memory. `None` keeps every frame.

    Returns:
        (frames (F, H, W, 3) uint8 RGB, frame rate, audio as 16 kHz float32 mono or `None`, 16000 or `None`).

    Raises:
        VideoReadError: missing or corrupt file, no video stream, no decodable frame.
    """
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such video file")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: the file has no video stream; pass a video of the driving face")
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)
            has_audio = bool(container.streams.audio)
            if fps is None:
                frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
                output_fps = native_fps
            else:
                frames = _decode_at_rate(container.decode(stream), float(fps), native_fps)
                output_fps = float(fps)
    except VideoReadError:
        raise
    except Exception as error:  # PyAV raises many error types for damaged files
        raise VideoReadError(
            f"{path}: cannot decode video ({type(error).__name__}: {error}); the file is corrupt or not a video"
        ) from None
    if not frames:
        raise VideoReadError(f"{path}: the video has no decodable frames")
    audio, audio_rate = None, None
    if has_audio:
        try:
            waveform, rate = decode_audio_file(path)
            audio, audio_rate = resample(waveform, rate, AUDIO_SAMPLING_RATE), AUDIO_SAMPLING_RATE
        except AudioLoadError:
            audio = None  # an empty or undecodable audio track does not make the frames unusable
    return np.stack(frames), output_fps, audio, audio_rate


def _decode_at_rate(decoded_frames, fps: float, native_fps: float):
    """Streams through decoded frames keeping, for each output time k / fps, the frame nearest in time."""
    kept = []
    previous, previous_time, previous_array = None, None, None
    first_time, next_target = None, 0
    for position, frame in enumerate(decoded_frames):
        time = float(frame.time) if frame.time is not None else position / native_fps
        first_time = time if first_time is None else first_time
        time -= first_time
        current_array = None
        while next_target / fps <= time + 1e-9:
            target = next_target / fps
            if previous is not None and target - previous_time <= time - target:
                if previous_array is None:
                    previous_array = previous.to_ndarray(format="rgb24")
                kept.append(previous_array)
            else:
                if current_array is None:
                    current_array = frame.to_ndarray(format="rgb24")
                kept.append(current_array)
            next_target += 1
        previous, previous_time, previous_array = frame, time, current_array
    if previous is None:
        return kept
    # Targets after the last frame's timestamp but within its display time show the last frame.
    duration = previous_time + 1.0 / native_fps
    total = int(duration * fps + 1e-6)
    if next_target < total:
        last = previous_array if previous_array is not None else previous.to_ndarray(format="rgb24")
        kept.extend([last] * (total - next_target))
    return kept[:total]


def probe_video(path: Union[str, os.PathLike]) -> Dict:
    """
    Describes a media file without decoding its video.

    Returns:
        `dict` with, for the first video stream: `video_codec`, `fps`, `num_frames` (counted from the demuxed
        packets), `width`, `height`, `pix_fmt`, `video_duration` (= num_frames / fps); and for the first audio
        stream: `audio_codec`, `audio_sampling_rate`, `audio_channels`, `audio_duration` (decoded samples / rate,
        so encoder priming that the container marks for skipping is not counted).
    """
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such video file")
    info: Dict = {}
    try:
        with av.open(path) as container:
            if container.streams.video:
                stream = container.streams.video[0]
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
                rate = float(stream.average_rate or stream.guessed_rate or 0.0)
                info.update(
                    video_codec=stream.codec_context.name,
                    fps=rate,
                    num_frames=num_frames,
                    width=stream.codec_context.width,
                    height=stream.codec_context.height,
                    pix_fmt=stream.codec_context.pix_fmt,
                    video_duration=num_frames / rate if rate else None,
                )
        with av.open(path) as container:
            if container.streams.audio:
                stream = container.streams.audio[0]
                samples = sum(frame.samples for frame in container.decode(stream))
                info.update(
                    audio_codec=stream.codec_context.name,
                    audio_sampling_rate=stream.codec_context.sample_rate,
                    audio_channels=stream.codec_context.channels,
                    audio_duration=samples / stream.codec_context.sample_rate,
                )
    except Exception as error:
        raise VideoReadError(
            f"{path}: cannot read the file ({type(error).__name__}: {error}); the file is corrupt or not a video"
        ) from None
    return info
