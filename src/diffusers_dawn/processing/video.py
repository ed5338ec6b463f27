"""Video output (H.264 + AAC MP4 with the speech muxed in) and input (frames + audio track), with PyAV only."""

import os
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch

from .audio import AUDIO_SAMPLING_RATE, VIDEO_FPS, resample

FramesLike = Union[Sequence[PIL.Image.Image], np.ndarray, torch.Tensor]


class VideoReadError(ValueError):
    """A video cannot be read; the message says why and what to do."""


def frames_to_uint8(frames: FramesLike) -> np.ndarray:
    """
    (F, H, W, 3) uint8 from PIL images, arrays (F, H, W, 3) uint8 or float in [0, 1], or tensors (F, 3, H, W).
    Floats are quantised by truncation (value × 255 cast down), the official writer's convention.
    """
    if torch.is_tensor(frames):
        frames = frames.detach().float().cpu()
        if frames.ndim == 5 and frames.shape[0] == 1:
            frames = frames[0]
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frame tensors must be (F, 3, H, W), got {tuple(frames.shape)}")
        frames = frames.permute(0, 2, 3, 1).numpy()
    elif not isinstance(frames, np.ndarray):
        frames = np.stack([np.asarray(frame.convert("RGB")) for frame in frames])
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)
    return frames


def export_to_video_with_audio(
    frames: FramesLike,
    output_path: Union[str, os.PathLike],
    fps: float = VIDEO_FPS,
    audio: Optional[np.ndarray] = None,
    audio_sampling_rate: int = AUDIO_SAMPLING_RATE,
    video_codec: str = "libx264",
    crf: int = 18,
    audio_codec: str = "aac",
    audio_bitrate: str = "128k",
) -> str:
    """
    Writes an H.264 (yuv420p) MP4 and muxes the speech in as AAC, trimmed to the video's duration.

    Odd frame sizes are padded to even by edge replication (yuv420p needs even sizes). Returns the path.
    """
    import av

    frames = frames_to_uint8(frames)
    num_frames, height, width = frames.shape[:3]
    if num_frames == 0:
        raise ValueError("no frames to write")
    if height % 2 or width % 2:
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    output_path = os.fspath(output_path)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(output_path, mode="w") as container:
        video_stream = container.add_stream(video_codec, rate=rate)
        video_stream.width, video_stream.height = frames.shape[2], frames.shape[1]
        video_stream.pix_fmt = "yuv420p"
        video_stream.options = {"crf": str(crf)}
        audio_stream = None
        if audio is not None:
            waveform = np.asarray(audio, dtype=np.float32).reshape(-1)
            # AAC encoders accept 16 kHz, but 48 kHz is what every player expects.
            waveform = resample(waveform, int(audio_sampling_rate), 48000)
            waveform = waveform[: int(round(num_frames / float(rate) * 48000))]
            audio_stream = container.add_stream(audio_codec, rate=48000)
            audio_stream.bit_rate = _parse_bitrate(audio_bitrate)
            audio_stream.layout = "mono"
        for frame in frames:
            for packet in video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video_stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            audio_frame = av.AudioFrame.from_ndarray(waveform[None], format="flt", layout="mono")
            audio_frame.sample_rate = 48000
            for packet in audio_stream.encode(audio_frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return output_path


def _parse_bitrate(bitrate: Union[str, int]) -> int:
    if isinstance(bitrate, int):
        return bitrate
    bitrate = bitrate.strip().lower()
    return int(float(bitrate[:-1]) * 1000) if bitrate.endswith("k") else int(bitrate)


def read_video(
    path: Union[str, os.PathLike], fps: Optional[float] = None
) -> Tuple[np.ndarray, float, Optional[np.ndarray], Optional[int]]:
    """
    Decodes a video: frames (F, H, W, 3) uint8, its frame rate, and its audio track as float32 mono (or None).

    With `fps`, frames are resampled to that rate by picking, for each output time, the nearest earlier frame.
    """
    import av

    from .audio import load_audio

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such video file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else len(times) / native_fps)
            has_audio = bool(container.streams.audio)
    except VideoReadError:
        raise
    except Exception as error:
        raise VideoReadError(f"{path}: cannot decode video ({type(error).__name__}: {error}); the file is corrupt") from None
    if not frames:
        raise VideoReadError(f"{path}: the video has no frames")
    frames = np.stack(frames)
    if fps is not None and abs(fps - native_fps) > 1e-3:
        times = np.asarray(times) - times[0]
        duration = times[-1] + 1.0 / native_fps
        wanted = np.arange(int(duration * fps)) / fps
        index = np.clip(np.searchsorted(times, wanted + 1e-6, side="right") - 1, 0, len(frames) - 1)
        frames = frames[index]
        native_fps = float(fps)
    audio, audio_rate = None, None
    if has_audio:
        audio, audio_rate = load_audio(path), AUDIO_SAMPLING_RATE
    return frames, native_fps, audio, audio_rate


def probe_video(path: Union[str, os.PathLike]) -> Dict:
    """Codec names, frame rate and count, size, and durations of a video file's first video and audio streams."""
    import av

    path = os.fspath(path)
    with av.open(path) as container:
        info: Dict = {}
        if container.streams.video:
            stream = container.streams.video[0]
            frame_count = sum(1 for _ in container.decode(stream))
            rate = float(stream.average_rate)
            info.update(
                video_codec=stream.codec_context.name,
                fps=rate,
                num_frames=frame_count,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                pix_fmt=stream.codec_context.pix_fmt,
                video_duration=frame_count / rate,
            )
    with av.open(path) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(stream))
            info.update(
                audio_codec=stream.codec_context.name,
                audio_sampling_rate=stream.codec_context.sample_rate,
                audio_duration=samples / stream.codec_context.sample_rate,
            )
    return info
