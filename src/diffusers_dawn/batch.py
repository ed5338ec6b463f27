"""
Many videos with one model load: `diffusers-dawn generate --batch jobs.csv`, and the rendering of one video (crop
or full frame, written atomically) that single runs share.

The batch file is a CSV with a header row: `image`, `audio`, `output` (required), and optional per-row overrides
`seed`, `steps`, `pose_from` (empty cells take the command-line value). Relative paths are relative to the CSV's
folder. Under `accelerate launch` each process renders its share of the rows and the main process prints one
summary for all.
"""

import csv
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .utils.errors import USER_ERRORS, DAWNInputError


logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "audio", "output")
# Per-row overrides of the command-line settings, with their parsers.
OVERRIDE_COLUMNS: Dict[str, Callable[[str], object]] = {"seed": int, "steps": int, "pose_from": str}


class BatchFileError(DAWNInputError):
    """The batch file as a whole cannot be used; the message says what to fix."""


@dataclass
class RenderSettings:
    """How to render a video: the command line's generation settings, which batch rows may override."""

    seed: int = 0
    steps: int = 20
    guidance_scale: Optional[float] = None  # None: the model's own (its pipeline config)
    pose_from: Optional[str] = None
    full_frame: bool = False
    feather: float = 0.1
    color_match: bool = False
    max_size: Optional[int] = None
    # [x_min, x_max, y_min, y_max] of the face in the portrait's pixels, when detection cannot find it.
    face_box: Optional[list] = None


@dataclass
class RenderedVideo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass
class BatchJob:
    """One row of the batch file; `error` is set when the row itself is unusable (it then fails on its own)."""

    row: int  # 1-based data row (the header is not counted)
    image: str
    audio: str
    output: str
    overrides: Dict[str, object] = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class JobResult:
    row: int
    output: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0  # wall time spent on the row
    video_seconds: float = 0.0
    error: Optional[str] = None


def read_batch_file(path: str) -> List[BatchJob]:
    """The rows of a batch CSV as [`BatchJob`]s; raises [`BatchFileError`] for problems of the whole file."""
    if not os.path.isfile(path):
        raise BatchFileError(f"{path}: no such batch file; pass a CSV with the columns {', '.join(REQUIRED_COLUMNS)}")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [(name or "").strip().lower().replace("-", "_") for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise BatchFileError(
                f"{path}: the header lacks the column(s) {', '.join(missing)}; the first line must name the columns "
                f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OVERRIDE_COLUMNS)})"
            )
        unknown = [name for name in columns if name not in REQUIRED_COLUMNS and name not in OVERRIDE_COLUMNS]
        if unknown:
            raise BatchFileError(
                f"{path}: unknown column(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(REQUIRED_COLUMNS + tuple(OVERRIDE_COLUMNS))}"
            )
        reader.fieldnames = columns
        rows = [row for row in reader if any((value or "").strip() for value in row.values() if isinstance(value, str))]
    if not rows:
        raise BatchFileError(f"{path}: no rows below the header")

    jobs = []
    for number, row in enumerate(rows, start=1):
        cells = {name: (value or "").strip() for name, value in row.items() if name is not None}
        job = BatchJob(number, *(_resolve(folder, cells.get(name, "")) for name in REQUIRED_COLUMNS))
        problems = [f"the {name} cell is empty" for name in REQUIRED_COLUMNS if not cells.get(name)]
        if cells.get("output") and not job.output.lower().endswith(".mp4"):
            problems.append(f"output must be an .mp4 file, got {cells['output']!r}")
        for name, parse in OVERRIDE_COLUMNS.items():
            if cells.get(name):
                try:
                    job.overrides[name] = parse(cells[name])
                except ValueError:
                    problems.append(f"{name} must be an integer, got {cells[name]!r}")
        if "pose_from" in job.overrides:
            job.overrides["pose_from"] = _resolve(folder, job.overrides["pose_from"])
        if "steps" in job.overrides and job.overrides["steps"] < 1:
            problems.append(f"steps must be at least 1, got {job.overrides['steps']}")
        job.error = "; ".join(problems) or None
        jobs.append(job)

    outputs: Dict[str, int] = {}
    for job in jobs:
        if job.error is None:
            key = os.path.normcase(os.path.abspath(job.output))
            if key in outputs:
                raise BatchFileError(f"{path}: rows {outputs[key]} and {job.row} both write {job.output}")
            outputs[key] = job.row
    return jobs


def _resolve(folder: str, value: str) -> str:
    return os.path.join(folder, os.path.expanduser(value)) if value else value


def render_video(pipe, image, audio, output_path: str, settings: RenderSettings, sampling_rate=None) -> RenderedVideo:
    """
    Generates one video and writes it as an MP4 with the speech, atomically: it is encoded under a temporary name
    in the output folder and renamed at the end, so `output_path` is either the finished video or untouched.
    Full-frame videos are composited and encoded chunk by chunk.
    """
    import torch

    from .processing.video import VideoReadError, export_to_video_with_audio

    if settings.pose_from is not None and not os.path.isfile(settings.pose_from):
        raise VideoReadError(f"{settings.pose_from}: no such video file (pose_from)")
    # A CPU generator draws the same noise for a seed whatever the device the models run on.
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    output = pipe(
        image=image,
        audio=audio,
        sampling_rate=sampling_rate,
        driving_video=settings.pose_from,
        face_box=settings.face_box,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        output_type="np",
        paste_back=settings.full_frame,
        feather=settings.feather,
        color_match=settings.color_match,
        max_size=settings.max_size,
    )
    video = output.frames[0]
    num_frames, height, width = video.shape[:3]
    frames = video.iter_chunks() if settings.full_frame else video

    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(output_path)}.", suffix=".mp4", dir=folder)
    os.close(handle)
    try:
        export_to_video_with_audio(
            frames, temporary, fps=output.fps, audio=output.audio, audio_sampling_rate=output.audio_sampling_rate
        )
        os.replace(temporary, output_path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return RenderedVideo(output_path, num_frames, output.fps, width, height)


def run_jobs(
    pipe, jobs: List[BatchJob], settings: RenderSettings, overwrite: bool = False, debug: bool = False, label=""
) -> List[JobResult]:
    """Renders each job in turn; a failing row is recorded and the next one starts. Existing outputs are skipped."""
    from tqdm.auto import tqdm

    results = []
    progress = tqdm(jobs, desc=f"Batch{label}", unit="video", file=sys.stderr, dynamic_ncols=True)
    for job in progress:
        started = time.perf_counter()
        if job.error is None and os.path.exists(job.output) and not overwrite:
            results.append(JobResult(job.row, job.output, "skipped"))
            tqdm.write(f"row {job.row}: skipped, {job.output} exists (--overwrite redoes it)", file=sys.stdout)
            continue
        try:
            if job.error is not None:
                raise BatchFileError(job.error)
            row_settings = RenderSettings(**{**settings.__dict__, **job.overrides})
            pipe.set_progress_bar_config(desc=f"row {job.row}", leave=False, disable=False)
            rendered = render_video(pipe, job.image, job.audio, job.output, row_settings)
        except Exception as error:
            if debug:
                logger.exception(f"row {job.row} failed")
            message = " ".join(str(error).split()) or type(error).__name__
            if not isinstance(error, USER_ERRORS):  # a bug: its type helps the report
                message = f"{type(error).__name__}: {message}"
            results.append(JobResult(job.row, job.output, "failed", time.perf_counter() - started, error=message))
            tqdm.write(f"row {job.row}: failed: {message}", file=sys.stdout)
            continue
        seconds = time.perf_counter() - started
        results.append(JobResult(job.row, job.output, "done", seconds, rendered.seconds))
        tqdm.write(
            f"row {job.row}: wrote {job.output} ({rendered.num_frames} frames, {rendered.width}x{rendered.height}, "
            f"{rendered.seconds:.2f} s of video in {seconds:.1f} s)",
            file=sys.stdout,
        )
    progress.close()
    return results


def summarize(results: List[JobResult], elapsed: float) -> str:
    """The end-of-batch report: counts, speed, and each failed row with its error."""
    counts = {status: sum(result.status == status for result in results) for status in ("done", "skipped", "failed")}
    lines = [
        f"Batch of {len(results)} rows in {elapsed:.1f} s: {counts['done']} done, {counts['skipped']} skipped, "
        f"{counts['failed']} failed"
    ]
    done = [result for result in results if result.status == "done"]
    video_seconds = sum(result.video_seconds for result in done)
    if video_seconds > 0:
        seconds = sum(result.seconds for result in done)
        lines.append(
            f"{seconds / video_seconds:.2f} s of work per second of video ({video_seconds:.1f} s of video written)"
        )
    for result in sorted(results, key=lambda result: result.row):
        if result.status == "failed":
            lines.append(f"  failed: row {result.row} ({result.output}): {result.error}")
    return "\n".join(lines)


def run_batch_command(args) -> int:
    """`diffusers-dawn generate --batch JOBS.csv`: exit status 1 when any row failed."""
    from .cli import prepare_pipeline, render_settings, resolve_device_and_dtype, resolve_model

    jobs = read_batch_file(args.batch)
    settings = render_settings(args)
    if settings.pose_from is not None and not os.path.isfile(settings.pose_from):
        raise BatchFileError(f"{settings.pose_from}: no such video file (--pose-from)")
    model = resolve_model(args.model)
    import torch
    from accelerate import PartialState

    # Processes started by `accelerate launch` / torchrun join one group: gloo on CPUs, the GPU backend otherwise.
    use_cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    use_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=use_cpu)
    # Under `accelerate launch` each process takes the device accelerate gave it, unless --device says otherwise.
    device_name = args.device if args.device is not None or state.num_processes == 1 else str(state.device)
    device, torch_dtype = resolve_device_and_dtype(device_name, args.dtype)
    loading = time.perf_counter()
    pipe = prepare_pipeline(model, args, device, torch_dtype)
    load_seconds = time.perf_counter() - loading

    started = time.perf_counter()
    label = f" (process {state.process_index + 1}/{state.num_processes})" if state.num_processes > 1 else ""
    with state.split_between_processes(jobs) as share:
        results = run_jobs(pipe, list(share), settings, overwrite=args.overwrite, debug=args.debug, label=label)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
        # Leaving with the group still open lets the exiting interpreter kill gloo's threads mid-work
        # ("terminate called without an active exception", exit -6): close it on every process first.
        state.wait_for_everyone()
        state.destroy_process_group()
    elapsed = time.perf_counter() - started
    if state.is_main_process:
        processes = f" on {state.num_processes} processes" if state.num_processes > 1 else ""
        print(f"Model loaded in {load_seconds:.1f} s{processes}")
        print(summarize(results, elapsed))
    return 1 if any(result.status == "failed" for result in results) else 0
