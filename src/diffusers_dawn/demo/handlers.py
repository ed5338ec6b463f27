"""
What the web demo does, without the web page: input limits, one loaded pipeline per model name, the face-crop
preview, and a generation that writes an MP4 with the speech. Plain Python (no Gradio), so it is testable directly.
"""

import inspect
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import PIL.Image

from .. import cli
from ..utils.errors import DAWNInputError


# Documented limits of the demo page (README, "Web demo"). They keep one request from holding the single generation
# slot for long or from exhausting memory; the Python API and the CLI have no such limits.
MAX_SPEECH_SECONDS = 30.0
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_STEPS = 100
MAX_GUIDANCE_SCALE = 10.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SPEECH_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".webm")
DRIVING_VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi")
# The pipeline's own sampler (what `generate` uses without --scheduler).
DEFAULT_SCHEDULER = "default"
# Finished videos kept in the demo's output folder; older ones are deleted (a hosted demo runs for weeks).
KEPT_VIDEOS = 16


class DemoInputError(DAWNInputError):
    """An input the demo refuses; the message is shown in the page as is and says what to upload instead."""


@dataclass
class GenerationResult:
    """A finished generation: the MP4 (H.264 + AAC speech), its length and how long it took."""

    video: str
    num_frames: int
    fps: float
    seconds: float


def supports_full_frame() -> bool:
    """Whether this installation's pipeline can paste the generated face back into the full portrait."""
    from ..pipelines.pipeline_dawn import DAWNPipeline

    return "paste_back" in inspect.signature(DAWNPipeline.__call__).parameters


def _extension_check(path: str, allowed: Sequence[str], what: str) -> None:
    extension = os.path.splitext(path)[1].lower()
    if extension not in allowed:
        raise DemoInputError(
            f"{what}: {extension or 'a file without extension'} files are not accepted; upload {', '.join(allowed)}"
        )


def read_portrait(path: Optional[str]) -> PIL.Image.Image:
    """The uploaded portrait as RGB, after the file-type and pixel-count limits."""
    from ..processing.image import ImageLoadError, load_image

    if not path:
        raise DemoInputError("Portrait: upload a photo (or take one with the webcam) first")
    _extension_check(path, IMAGE_EXTENSIONS, "Portrait")
    try:
        # Only the header is read here: the size is known before the pixels are decoded.
        with PIL.Image.open(path) as header:
            width, height = header.size
    except (PIL.UnidentifiedImageError, OSError):
        raise DemoInputError("Portrait: the file is not a readable image; upload a JPEG, PNG or WebP photo") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DemoInputError(
            f"Portrait: {width}x{height} is {width * height / 1e6:.1f} megapixels, more than the demo's "
            f"{MAX_IMAGE_PIXELS / 1e6:.1f}; upload a smaller photo"
        )
    try:
        return load_image(path)
    except ImageLoadError:
        raise DemoInputError("Portrait: the file is not a readable image; upload a JPEG, PNG or WebP photo") from None


def read_speech(path: Optional[str]) -> np.ndarray:
    """The uploaded or recorded speech as 16 kHz mono samples, after the file-type and length limits."""
    from ..processing.audio import AUDIO_SAMPLING_RATE, AudioLoadError, load_audio

    if not path:
        raise DemoInputError("Speech: upload a speech clip (or record one with the microphone) first")
    _extension_check(path, SPEECH_EXTENSIONS, "Speech")
    try:
        speech = load_audio(path, target_rate=AUDIO_SAMPLING_RATE)
    except AudioLoadError as error:
        raise DemoInputError(f"Speech: {' '.join(str(error).split())}") from None
    seconds = len(speech) / AUDIO_SAMPLING_RATE
    if seconds > MAX_SPEECH_SECONDS:
        raise DemoInputError(
            f"Speech: the clip lasts {seconds:.1f} s, longer than the demo's {MAX_SPEECH_SECONDS:g} s; upload a "
            "shorter clip (the command line and Python have no limit)"
        )
    return speech


class DemoSession:
    """
    The state one demo server shares between requests: the pipelines (each loaded once, on first use), the models
    a visitor may choose from, and the folder the videos are written to.

    Args:
        models: Model names (embedded names, `tiny-random`, folders or Hub ids) offered in the page; the first is
            the default. Visitors can choose only among these, never type a path.
        device, dtype: As `generate --device/--dtype`.
        output_dir: Where the MP4s go (default: a new temporary folder).
    """

    def __init__(
        self,
        models: Sequence[str],
        device: Optional[str] = None,
        dtype: str = "auto",
        output_dir: Optional[str] = None,
    ):
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = list(dict.fromkeys(models))
        self.device, self.torch_dtype = cli.resolve_device_and_dtype(device, dtype)
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="diffusers-dawn-demo-")
        os.makedirs(self.output_dir, exist_ok=True)
        self._pipelines: Dict[str, object] = {}
        self._schedulers: Dict[str, object] = {}
        # One lock for loading and for using the pipelines: a pipeline (and its face analyzer) serves one request
        # at a time, whichever event (preview or generation) it comes from.
        self._lock = threading.RLock()

    def pipeline(self, model: str):
        """The pipeline for `model`, loaded on first use and kept for every later request."""
        if model not in self.models:
            raise DemoInputError(f"Model: {model!r} is not offered here; choose one of {', '.join(self.models)}")
        with self._lock:
            if model not in self._pipelines:
                pipe = cli.load_pipeline(cli.resolve_model(model), self.torch_dtype).to(self.device)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[model] = pipe
                self._schedulers[model] = pipe.scheduler
            return self._pipelines[model]

    def recommended_guidance(self, model: str) -> float:
        """The guidance scale `model` uses when given none (its pipeline config), read without loading its weights."""
        from ..pipelines.pipeline_dawn import DAWNPipeline

        if model not in self.models:
            raise DemoInputError(f"Model: {model!r} is not offered here; choose one of {', '.join(self.models)}")
        if model in self._pipelines:
            return float(self._pipelines[model].config.guidance_scale)
        if model == cli.RANDOM_DEMO_MODEL:  # built on the fly, with the pipeline's default
            return 1.0
        try:
            config = DAWNPipeline.load_config(cli.resolve_model(model))
        except OSError:  # a Hub model that cannot be reached now: the page shows the plain default (off)
            return 1.0
        return float(config.get("guidance_scale", 1.0))

    def face_crop(self, portrait: Optional[str], model: str) -> PIL.Image.Image:
        """The square the model animates, cut around the detected face (what the preview shows)."""
        from ..processing.face import NoFaceError

        picture = read_portrait(portrait)
        with self._lock:
            pipe = self.pipeline(model)
            try:
                source = pipe.prepare_source(picture)
            except NoFaceError:
                raise DemoInputError(
                    "No face found in the portrait: upload a photo with a clearly visible, roughly frontal face"
                ) from None
        return PIL.Image.fromarray((source.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))

    def generate(
        self,
        portrait: Optional[str],
        speech: Optional[str],
        model: str,
        steps: int = 20,
        scheduler: str = DEFAULT_SCHEDULER,
        seed: int = 0,
        guidance_scale: Optional[float] = None,
        full_frame: bool = False,
        driving_video: Optional[str] = None,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> GenerationResult:
        """
        Portrait + speech → MP4, as `diffusers-dawn generate` does. `progress(fraction, description)` is called as
        the stages and the denoising steps finish. Refused inputs raise [`DemoInputError`].
        """
        import torch

        from ..processing.audio import AUDIO_SAMPLING_RATE
        from ..processing.face import NoFaceError
        from ..processing.video import VideoReadError, export_to_video_with_audio

        report = progress or (lambda fraction, description: None)
        steps, seed = int(steps), int(seed)
        if not 1 <= steps <= MAX_STEPS:
            raise DemoInputError(f"Steps: choose between 1 and {MAX_STEPS}, got {steps}")
        if guidance_scale is not None and not 1.0 <= float(guidance_scale) <= MAX_GUIDANCE_SCALE:
            raise DemoInputError(f"Guidance: choose between 1 (off) and {MAX_GUIDANCE_SCALE:g}, got {guidance_scale}")
        if scheduler != DEFAULT_SCHEDULER and scheduler not in cli.SCHEDULER_CHOICES:
            raise DemoInputError(f"Scheduler: choose one of {DEFAULT_SCHEDULER}, {', '.join(cli.SCHEDULER_CHOICES)}")
        if driving_video:
            _extension_check(driving_video, DRIVING_VIDEO_EXTENSIONS, "Driving video")
        # Cheap checks first: a refused file is reported before any model work.
        image = read_portrait(portrait)
        waveform = read_speech(speech)
        extra = {}
        if full_frame:
            if not supports_full_frame():
                raise DemoInputError("Full-frame output is not available in this installation")
            extra["paste_back"] = True

        with self._lock:
            report(0.0, "Loading the model")
            pipe = self.pipeline(model)
            original = self._schedulers[model]
            pipe.scheduler = (
                original
                if scheduler == DEFAULT_SCHEDULER
                else cli.scheduler_class(scheduler).from_config(original.config)
            )

            def on_step_end(pipeline, step, timestep, callback_kwargs):
                report((step + 1) / steps, f"Denoising step {step + 1}/{steps}")
                return callback_kwargs

            report(0.0, "Analysing the face and the speech")
            started = time.perf_counter()
            try:
                output = pipe(
                    image=image,
                    audio=waveform,
                    sampling_rate=AUDIO_SAMPLING_RATE,
                    driving_video=driving_video or None,
                    num_inference_steps=steps,
                    guidance_scale=None if guidance_scale is None else float(guidance_scale),
                    # A CPU generator draws the same noise for a seed on every device, as in `generate`.
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="np",
                    callback_on_step_end=on_step_end,
                    **extra,
                )
            except NoFaceError as error:
                where = "driving video" if "video" in str(error) else "portrait"
                raise DemoInputError(
                    f"No face found in the {where}: upload one with a clearly visible, roughly frontal face"
                ) from None
            except VideoReadError as error:
                raise DemoInputError(f"Driving video: {' '.join(str(error).split())}") from None
            report(1.0, "Writing the video")
            frames = output.frames[0]
            path = export_to_video_with_audio(
                frames,
                os.path.join(self.output_dir, f"dawn-{uuid.uuid4().hex[:12]}.mp4"),
                fps=output.fps,
                audio=output.audio,
                audio_sampling_rate=output.audio_sampling_rate,
            )
            seconds = time.perf_counter() - started
        self._delete_old_videos()
        return GenerationResult(video=str(path), num_frames=len(frames), fps=float(output.fps), seconds=seconds)

    def _delete_old_videos(self) -> None:
        videos = [os.path.join(self.output_dir, name) for name in os.listdir(self.output_dir) if name.endswith(".mp4")]
        for path in sorted(videos, key=os.path.getmtime)[:-KEPT_VIDEOS]:
            os.remove(path)
