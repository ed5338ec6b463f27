"""The `diffusers-dawn` command: `convert` official checkpoints into a pipeline folder, `generate` talking-head videos."""

import argparse
import contextlib
import logging as python_logging
import os
import sys
import time
from typing import List, Optional

from .embedded import ASSETS, EMBEDDED_MODELS, embedded_demo_inputs, embedded_model_path
from .utils.errors import USER_ERRORS, DAWNInputError


# `--model` default: the first embedded (trained) pipeline, with its own held-out portrait and speech as inputs.
DEFAULT_MODEL = next(iter(EMBEDDED_MODELS))
# A tiny pipeline with random weights, built on the fly (for tests and to check an installation): it runs every stage
# of the real pipeline on the bundled demo photo and speech, but its frames are scrambled: no face, no lip sync.
RANDOM_DEMO_MODEL = "tiny-random"
DEMO_ASSETS = os.path.join(ASSETS, "demo")
DEMO_IMAGE = os.path.join(DEMO_ASSETS, "portrait.jpg")
DEMO_AUDIO = os.path.join(DEMO_ASSETS, "speech.wav")

SCHEDULER_CHOICES = ("dawn-ddim", "ddim", "dpm++", "dpmsolver", "euler", "unipc")
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
VIDEO_EXTENSIONS = (".mp4",)
PROGRAM = "diffusers-dawn"


class CommandError(DAWNInputError):
    """A command-line value that cannot be used; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------------------
def convert_command(args: argparse.Namespace) -> int:
    """`diffusers-dawn convert`: official checkpoints (+ HuBERT) → a `DAWNPipeline` folder."""
    if args.from_hub is not None:
        return convert_from_hub_command(args)
    options = ("lfg", "dawn", "pbnet_pose", "pbnet_blink")
    missing = ["--" + name.replace("_", "-") for name in options if getattr(args, name) is None]
    if missing:
        raise CommandError(
            f"convert needs --from-hub REPO (e.g. --from-hub Hanbo-Cheng/DAWN) or the four official checkpoint files "
            f"(missing: {', '.join(missing)})"
        )
    if args.hubert is None:
        raise CommandError(
            "convert needs --hubert DIR: facebook/hubert-large-ls960-ft saved by save_pretrained (the official "
            "checkpoints do not contain it), or --from-hub REPO, which downloads it"
        )
    if args.push_to_hub is not None:
        raise CommandError("--push-to-hub needs --from-hub REPO (the model card records the Hub source)")
    from .conversion.convert import convert_official_checkpoints, load_face_location_weights

    face_location_state_dict = None
    if args.face_location_weights is not None:
        face_location_state_dict = load_face_location_weights(args.face_location_weights)
    started = time.perf_counter()
    convert_official_checkpoints(
        lfg_path=args.lfg,
        dawn_path=args.dawn,
        pbnet_pose_path=args.pbnet_pose,
        pbnet_blink_path=args.pbnet_blink,
        output_dir=args.output,
        hubert_path=args.hubert,
        face_location_state_dict=face_location_state_dict,
        pbnet_pose_options=args.pbnet_pose_options,
        pbnet_blink_options=args.pbnet_blink_options,
        resolution=args.resolution,
        overwrite=args.overwrite,
    )
    print(
        f"Converted pipeline written to {args.output} ({time.perf_counter() - started:.1f} s); load it with "
        f"DAWNPipeline.from_pretrained({args.output!r}) or `{PROGRAM} generate --model {args.output} ...`"
    )
    return 0


def convert_from_hub_command(args: argparse.Namespace) -> int:
    """`diffusers-dawn convert --from-hub REPO`: download the official files (+ HuBERT), convert, optionally push."""
    from .conversion.convert import load_face_location_weights
    from .conversion.hub import convert_from_hub

    face_location_state_dict = None
    if args.face_location_weights is not None:
        face_location_state_dict = load_face_location_weights(args.face_location_weights)
    # With --from-hub the per-file options name files in that repository, overriding the automatic choice.
    roles = ("lfg", "dawn", "pbnet_pose", "pbnet_blink", "pbnet_pose_options", "pbnet_blink_options")
    started = time.perf_counter()
    convert_from_hub(
        args.output,
        repo_id=args.from_hub,
        resolution=args.resolution,
        revision=args.revision,
        token=args.token,
        cache_dir=args.cache_dir,
        hubert_repo=args.hubert_repo,
        hubert_path=args.hubert,
        chosen_files={role: getattr(args, role) for role in roles if getattr(args, role) is not None},
        face_location_state_dict=face_location_state_dict,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
    )
    print(
        f"Converted pipeline written to {args.output} ({time.perf_counter() - started:.1f} s)"
        + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else "")
        + f"; load it with DAWNPipeline.from_pretrained({(args.push_to_hub or args.output)!r}) or "
        f"`{PROGRAM} generate --model {args.output} ...`"
    )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------------------
def resolve_model(model: str) -> str:
    """An embedded model name → its package folder; anything else (folder, hub id) is returned unchanged."""
    if model in EMBEDDED_MODELS:
        try:
            return embedded_model_path(model)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
    if os.path.exists(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        raise CommandError(
            f"{model}: not a pipeline folder (no model_index.json); create one with `{PROGRAM} convert` or pass a "
            "hub id"
        )
    return model


def default_inputs(model: str):
    """The portrait and speech `generate` uses when none is given: an embedded model's own, else the bundled demo."""
    return embedded_demo_inputs(model) if model in EMBEDDED_MODELS else (DEMO_IMAGE, DEMO_AUDIO)


def scheduler_class(name: str):
    """The scheduler class registered for a `--scheduler` name."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    from .schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

    classes = {
        "dawn-ddim": DAWNDDIMScheduler,
        "ddim": DDIMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "dpmsolver": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "unipc": UniPCMultistepScheduler,
    }
    if name not in classes:
        raise CommandError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_CHOICES)}")
    return classes[name]


def resolve_device_and_dtype(device: Optional[str], dtype: str):
    """`--device` (default: cuda when available) and `--dtype` (auto: fp16 on cuda, fp32 elsewhere) as torch objects."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise CommandError(f"--device {device!r} is not a device name (examples: cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    if dtype == "auto":
        dtype = "fp16" if device.type == "cuda" else "fp32"
    if dtype == "fp16" and device.type == "cpu":
        # diffusers refuses to run float16 pipelines on the CPU (many kernels are missing or very slow there).
        raise CommandError("--dtype fp16 needs a GPU; on the CPU use --dtype fp32 (default) or bf16")
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return device, torch_dtype


def load_pipeline(model: str, torch_dtype=None):
    """
    A `DAWNPipeline` from a name resolved by [`resolve_model`] (folder, hub id, embedded model) or, for
    `RANDOM_DEMO_MODEL`, the tiny random-weight pipeline built on the fly (with a notice on stderr saying what it is).
    """
    import torch

    if model != RANDOM_DEMO_MODEL:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        from .pipelines.pipeline_dawn import DAWNPipeline
        from .utils.diffusers_compat import pipeline_dtype_kwargs

        hint = f"pass a pipeline folder (made by `{PROGRAM} convert`), a Hub repository id, or {RANDOM_DEMO_MODEL}"
        if not os.path.isdir(model):
            try:
                validate_repo_id(model)
            except HFValidationError:
                raise CommandError(f"cannot load the model {model!r}: no such folder, nor a Hub id; {hint}") from None
        dtype_kwargs = {} if torch_dtype is None else pipeline_dtype_kwargs(torch_dtype)
        try:
            return DAWNPipeline.from_pretrained(model, **dtype_kwargs)
        except OSError as error:  # huggingface_hub's not-found, gated and offline errors are OSErrors
            raise CommandError(f"cannot load the model {model!r} ({' '.join(str(error).split())}); {hint}") from error
    from .testing.tiny_pipeline import tiny_pipeline

    print(
        f"{RANDOM_DEMO_MODEL}: random weights, to check that the pipeline runs end to end; the frames will be "
        f"scrambled, not a face and not lip sync. For real results convert the official checkpoints "
        f"(`{PROGRAM} convert`) and pass --model DIR.",
        file=sys.stderr,
    )
    pipe = tiny_pipeline(seed=0)
    if torch_dtype is not None and torch_dtype != torch.float32:
        pipe = pipe.to(dtype=torch_dtype)
    return pipe


def face_box_argument(text: str):
    """`--face-box x0,y0,x1,y1` (pixels of the portrait) → the pipeline's `face_box` [x_min, x_max, y_min, y_max]."""
    try:
        x0, y0, x1, y1 = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected four comma-separated pixel coordinates x0,y0,x1,y1 (e.g. 120,80,360,400), got {text!r}"
        ) from None
    if not (x1 > x0 and y1 > y0):
        raise argparse.ArgumentTypeError(f"x1 must be greater than x0 and y1 greater than y0, got {text!r}")
    return [x0, x1, y0, y1]


def prepare_pipeline(model: str, args: argparse.Namespace, device, torch_dtype):
    """The pipeline for `generate`: loaded, with the `--scheduler` swapped in, on `device`, showing progress."""
    print(f"Loading {model} ({str(torch_dtype).replace('torch.', '')} on {device})", file=sys.stderr)
    pipe = load_pipeline(model, torch_dtype)
    if args.scheduler is not None:
        pipe.scheduler = scheduler_class(args.scheduler).from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(desc="Denoising", disable=False)
    return pipe


def render_settings(args: argparse.Namespace):
    """The generation settings given on the command line (batch rows may override some)."""
    from .batch import RenderSettings

    if args.steps < 1:
        raise CommandError(f"--steps must be at least 1, got {args.steps}")
    if args.max_size is not None and args.max_size < 2:
        raise CommandError(f"--max-size must be at least 2 pixels, got {args.max_size}")
    if not args.full_frame and (args.max_size is not None or args.color_match):
        raise CommandError("--max-size and --color-match shape full-frame videos; add --full-frame")
    if not 0.0 <= args.feather <= 0.5:
        raise CommandError(f"--feather must lie in [0, 0.5] (a fraction of the face box side), got {args.feather}")
    return RenderSettings(
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        pose_from=args.pose_from,
        full_frame=args.full_frame,
        feather=args.feather,
        color_match=args.color_match,
        max_size=args.max_size,
        face_box=args.face_box,
    )


def generate_command(args: argparse.Namespace) -> int:
    """`diffusers-dawn generate`: portrait + speech → MP4 with the speech muxed in (or many, with --batch)."""
    if args.batch is not None:
        from .batch import run_batch_command

        return run_batch_command(args)
    if args.output is None:
        raise CommandError("--output is required (or --batch JOBS.csv for many videos)")
    default_image, default_audio = default_inputs(args.model)
    args.image = default_image if args.image is None else args.image
    args.audio = default_audio if args.audio is None else args.audio
    from .utils.io import check_output_file

    # The output is checked first: nothing else must run (least of all a model load) if it cannot be written.
    check_output_file(
        args.output,
        VIDEO_EXTENSIONS,
        inputs={"--image": args.image, "--audio": args.audio, "--pose-from": args.pose_from},
        overwrite=args.overwrite,
    )
    settings = render_settings(args)
    model = resolve_model(args.model)
    device, torch_dtype = resolve_device_and_dtype(args.device, args.dtype)

    from .batch import render_video
    from .processing.audio import AUDIO_SAMPLING_RATE, load_audio
    from .processing.face import NoFaceError
    from .processing.image import load_image
    from .processing.video import VideoReadError

    # Read the inputs before the (slow) model load, so that a wrong path fails at once.
    image = load_image(args.image)
    speech = load_audio(args.audio, target_rate=AUDIO_SAMPLING_RATE)
    if args.pose_from is not None and not os.path.isfile(args.pose_from):
        raise VideoReadError(f"{args.pose_from}: no such video file (--pose-from)")

    pipe = prepare_pipeline(model, args, device, torch_dtype)
    started = time.perf_counter()
    try:
        video = render_video(pipe, image, speech, args.output, settings, sampling_rate=AUDIO_SAMPLING_RATE)
    except NoFaceError as error:
        if not error.advice:  # e.g. a driving video without a face: its message already says what to pass
            raise
        raise CommandError(
            f"{error.finding} ({args.image}); pass a photo with a clearly visible, roughly frontal face, or point "
            "to the face with --face-box x0,y0,x1,y1 (pixels)"
        ) from None
    print(
        f"Wrote {video.path}: {video.num_frames} frames at {video.fps:g} fps ({video.seconds:.2f} s), "
        f"{video.width}x{video.height}, with audio; generated in {time.perf_counter() - started:.1f} s"
    )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------------------
def demo_command(args: argparse.Namespace) -> int:
    """`diffusers-dawn demo`: the Gradio page (needs the `[demo]` extra) until Ctrl+C."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CommandError('the demo needs Gradio: pip install "diffusers-dawn[demo]"') from None
    from .demo.app import build_demo, launch_demo
    from .demo.handlers import DemoSession

    session = DemoSession(args.model or list(EMBEDDED_MODELS), device=args.device, dtype=args.dtype)
    launch_demo(build_demo(session), host=args.host, port=args.port)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="DAWN talking-head generation with Hugging Face diffusers."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks, debug logs and third-party library warnings"
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = subcommands.add_parser(
        "convert",
        # Two forms: --hubert is required with local checkpoint files; --from-hub downloads everything itself.
        usage=f"{PROGRAM} convert --lfg PTH --dawn PTH --pbnet-pose PTH --pbnet-blink PTH --hubert DIR --output DIR "
        f"[options]\n       {PROGRAM} convert --from-hub REPO --output DIR [options]",
        help="convert the official DAWN checkpoints into a pipeline folder",
        description="Convert the official DAWN release (LFG, DAWN A2V-FDM, pose and blink PBNets) plus HuBERT into "
        "a folder that DAWNPipeline.from_pretrained loads.",
    )
    convert.add_argument(
        "--from-hub",
        metavar="REPO",
        help="download the official files from this Hub repository (Hanbo-Cheng/DAWN) and HuBERT, then convert; the "
        "file options below then name files in REPO and are only needed to override the automatic choice",
    )
    convert.add_argument("--revision", metavar="REV", help="--from-hub: branch, tag or commit (default: main)")
    convert.add_argument("--token", metavar="TOKEN", help="--from-hub: Hub token (default: the saved login / HF_TOKEN)")
    convert.add_argument("--cache-dir", metavar="DIR", help="--from-hub: Hub cache (default: ~/.cache/huggingface/hub)")
    convert.add_argument(
        "--hubert-repo",
        default="facebook/hubert-large-ls960-ft",
        metavar="REPO",
        help="--from-hub: speech encoder repository (default: facebook/hubert-large-ls960-ft)",
    )
    convert.add_argument(
        "--push-to-hub", metavar="REPO", help="--from-hub: upload the converted pipeline (with a model card) to REPO"
    )
    convert.add_argument("--lfg", metavar="PTH", help="LFG_128_1000ep.pth or LFG_256_400ep.pth")
    convert.add_argument("--dawn", metavar="PTH", help="DAWN_128.pth or DAWN_256.pth")
    convert.add_argument("--pbnet-pose", metavar="PTH", help="pbnet_seperate/pose/checkpoint_*.pth.tar")
    convert.add_argument("--pbnet-blink", metavar="PTH", help="pbnet_seperate/blink/checkpoint_*.pth.tar")
    convert.add_argument(
        "--hubert",
        metavar="DIR",
        help="required: folder with facebook/hubert-large-ls960-ft saved by save_pretrained (model + feature "
        "extractor; the official checkpoints do not contain it), e.g. `huggingface-cli download "
        "facebook/hubert-large-ls960-ft --local-dir DIR`; with --from-hub it is downloaded instead",
    )
    convert.add_argument("--output", required=True, metavar="DIR", help="pipeline folder to write")
    convert.add_argument(
        "--face-location-weights",
        metavar="FILE",
        help="face-location encoder weights (.safetensors/.pth, keys conv1.*, conv2.*); default: seeded init",
    )
    convert.add_argument("--pbnet-pose-options", metavar="YAML", help="opt.yaml of the pose PBNet")
    convert.add_argument("--pbnet-blink-options", metavar="YAML", help="opt.yaml of the blink PBNet")
    convert.add_argument(
        "--resolution", type=int, choices=(128, 256), help="frame size (default: from the file names, else 128)"
    )
    convert.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder (once the new one is complete)"
    )
    _add_debug_option(convert)
    convert.set_defaults(handler=convert_command)

    generate = subcommands.add_parser(
        "generate",
        help="generate a talking-head video from a portrait and speech",
        description="Generate a talking-head MP4 (H.264 + AAC speech) from one portrait and one speech clip.",
    )
    generate.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="DIR_OR_HUB_ID",
        help="pipeline folder (from `convert`), hub id, an embedded model ("
        + "; ".join(f"{name}: {model.summary}" for name, model in EMBEDDED_MODELS.items())
        + f") or {RANDOM_DEMO_MODEL} (random weights, to check an installation; no face, no lip sync); default: "
        + DEFAULT_MODEL,
    )
    generate.add_argument(
        "--image",
        metavar="IMG",
        help="portrait (any image file; default: the embedded model's own held-out portrait, else a bundled photo)",
    )
    generate.add_argument(
        "--audio",
        metavar="AUDIO",
        help="speech (wav, flac, mp3, m4a or a video; default: the embedded model's own held-out clip, else a "
        "bundled 3 s synthetic speech clip)",
    )
    generate.add_argument("--output", metavar="OUT.mp4", help="video file to write (required without --batch)")
    generate.add_argument("--steps", type=int, default=20, metavar="N", help="denoising steps (default: 20)")
    generate.add_argument(
        "--scheduler",
        choices=SCHEDULER_CHOICES,
        help="sampler (default: the pipeline's own, DAWN's DDIM)",
    )
    generate.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    generate.add_argument("--device", metavar="D", help="torch device (default: cuda when available, else cpu)")
    generate.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="weights precision (default: fp16 on cuda, else fp32)"
    )
    generate.add_argument(
        "--pose-from", metavar="VIDEO", help="take head motion and blinks from this driving video instead of PBNet"
    )
    generate.add_argument(
        "--face-box",
        type=face_box_argument,
        metavar="X0,Y0,X1,Y1",
        help="where the face is in the portrait (pixels: left, top, right, bottom), when it is not found on its own",
    )
    generate.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        metavar="G",
        help="classifier-free guidance, 1 = off (default: the model's own, from its pipeline config)",
    )
    generate.add_argument(
        "--full-frame",
        action="store_true",
        help="paste the generated face back into the whole photo (video at the photo's size) instead of the crop",
    )
    generate.add_argument(
        "--max-size", type=int, metavar="PX", help="--full-frame: scale the photo down so its long side is at most PX"
    )
    generate.add_argument(
        "--feather",
        type=float,
        default=0.1,
        metavar="F",
        help="--full-frame: soft edge width as a fraction of the crop box side (default: 0.1; 0 pastes hard)",
    )
    generate.add_argument(
        "--color-match", action="store_true", help="--full-frame: match the crop's colours to the photo at the box"
    )
    generate.add_argument(
        "--batch",
        metavar="JOBS.csv",
        help="generate one video per row of a CSV (columns image, audio, output; optional seed, steps, pose_from) "
        "with one model load; rows whose output exists are skipped; works under `accelerate launch`",
    )
    generate.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    _add_debug_option(generate)
    generate.set_defaults(handler=generate_command)

    demo = subcommands.add_parser(
        "demo",
        help="serve the web demo (Gradio; pip install \"diffusers-dawn[demo]\")",
        description="Serve a web page (and its gradio_client API) that turns a portrait and speech into a video.",
    )
    demo.add_argument(
        "--model",
        action="append",
        metavar="DIR_OR_HUB_ID",
        help="model offered in the page (repeat for several; the first is preselected; default: the embedded "
        "models)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    demo.add_argument("--port", type=int, metavar="N", help="port (default: 7860, or the next free one)")
    demo.add_argument("--device", metavar="D", help="torch device (default: cuda when available, else cpu)")
    demo.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="weights precision (default: fp16 on cuda, else fp32)"
    )
    _add_debug_option(demo)
    demo.set_defaults(handler=demo_command)
    return parser


def _add_debug_option(subcommand: argparse.ArgumentParser) -> None:
    # Accepted after the subcommand too; SUPPRESS keeps a `--debug` given before it from being reset to False.
    subcommand.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks, debug logs and third-party library warnings",
    )


def _is_user_error(error: BaseException) -> bool:
    """
    Whether an exception means bad input (a [`DAWNInputError`] or a missing file): reported as one line, without a
    traceback. Anything else is a bug, shown with its traceback.
    """
    return isinstance(error, USER_ERRORS)


def _user_errors() -> tuple:
    """The exception classes that [`_is_user_error`] reports as one line, for callers that catch them (the demo)."""
    return USER_ERRORS


def _configure_logging(debug: bool):
    """Shows the package's step-by-step progress on stderr; returns a function that restores the previous setup."""
    package_logger = python_logging.getLogger("diffusers_dawn")
    previous = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    handler = python_logging.StreamHandler(sys.stderr)
    handler.setFormatter(python_logging.Formatter("%(message)s"))
    package_logger.handlers = [handler]
    package_logger.setLevel(python_logging.DEBUG if debug else python_logging.INFO)
    package_logger.propagate = False

    def restore():
        package_logger.handlers, package_logger.propagate = previous[0], previous[2]
        package_logger.setLevel(previous[1])

    return restore


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `diffusers-dawn` console script; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.debug:
            from .utils.quiet import native_stderr_hidden

            stack.enter_context(native_stderr_hidden())
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    restore_logging = _configure_logging(args.debug)
    try:
        return args.handler(args)
    except Exception as error:
        if args.debug or not _is_user_error(error):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
