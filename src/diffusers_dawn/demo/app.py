"""
The Gradio page of `diffusers-dawn demo`: portrait, speech and settings in, the face crop at once, a progress bar
over the denoising steps, the MP4 with its sound and the time it took out. Every event is also an API endpoint
(`gradio_client`): `/face_crop` and `/generate`.
"""

import os
from typing import Optional, Sequence


# The demo reports nothing to Gradio's servers unless asked to (this also keeps it working offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .. import cli  # noqa: E402
from .handlers import (  # noqa: E402
    DEFAULT_SCHEDULER,
    IMAGE_EXTENSIONS,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGE_PIXELS,
    MAX_SPEECH_SECONDS,
    MAX_STEPS,
    DemoInputError,
    DemoSession,
    supports_full_frame,
)


# The page's fonts are the system's: the default theme fetches web fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


class PortraitImage(gr.Image):
    """`gr.Image` whose upload check reports a non-image file in the page instead of failing inside Gradio."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):
        if payload is not None and payload.path:
            extension = os.path.splitext(payload.orig_name or payload.path)[1].lower()
            if extension not in IMAGE_EXTENSIONS:
                raise gr.Error(
                    f"Portrait: {extension or 'a file without extension'} files are not accepted; upload "
                    f"{', '.join(IMAGE_EXTENSIONS)}"
                )
        try:
            return super().preprocess(payload)
        except (OSError, ValueError):
            raise gr.Error("Portrait: the file is not a readable image; upload a JPEG, PNG or WebP photo") from None


def _page_error(error: Exception) -> gr.Error:
    # Bad input becomes one line in the page; the console keeps no traceback for it either.
    return gr.Error(" ".join(str(error).split()) or type(error).__name__, print_exception=False)


def build_demo(session: Optional[DemoSession] = None, models: Optional[Sequence[str]] = None) -> gr.Blocks:
    """
    The demo page as a `gr.Blocks`. Launch it with [`launch_demo`] (one generation at a time, with a queue).

    Args:
        session: The pipelines and output folder to use; by default a new [`DemoSession`] over `models`.
        models: Model names offered in the page (default: the embedded models, else `tiny-random`).
    """
    if session is None:
        session = DemoSession(models or list(cli.EMBEDDED_MODELS))
    user_errors = cli._user_errors()

    def face_crop(portrait, model=session.models[0]):
        if not portrait:
            return None, ""
        try:
            return session.face_crop(portrait, model), "Face found: this square is what will be animated."
        except DemoInputError as error:  # shown beside the preview, where the visitor looks next
            return None, f"**{error}**"
        except user_errors as error:
            raise _page_error(error) from None

    # The defaults make every setting optional for API clients: `predict(portrait=..., speech=...)` is enough.
    def generate(
        portrait, speech, model=session.models[0], steps=20, scheduler=DEFAULT_SCHEDULER, seed=0, guidance_scale=None,
        full_frame=False, driving_video=None, progress=gr.Progress(),
    ):  # fmt: skip
        try:
            result = session.generate(
                portrait, speech, model, steps, scheduler, seed, guidance_scale, full_frame, driving_video,
                progress=lambda fraction, description: progress(fraction, desc=description),
            )  # fmt: skip
        except (DemoInputError, *user_errors) as error:
            raise _page_error(error) from None
        # The summary is written from the number the page shows, so the two never disagree in the last digit.
        seconds = round(result.seconds, 2)
        summary = (
            f"Generated in {seconds:.1f} s with {int(steps)} steps: {result.num_frames} frames at "
            f"{result.fps:g} fps ({result.num_frames / result.fps:.2f} s)"
        )
        return result.video, seconds, summary

    full_frame_available = supports_full_frame()
    with gr.Blocks(title="DAWN talking head", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DAWN talking head\nOne portrait and one speech clip in, a talking-head video with that speech out. "
            f"Limits: speech up to {MAX_SPEECH_SECONDS:g} s, portraits up to {MAX_IMAGE_PIXELS / 1e6:.1f} "
            f"megapixels ({', '.join(IMAGE_EXTENSIONS)}). One video is generated at a time; others wait in line."
        )
        with gr.Row():
            with gr.Column():
                portrait = PortraitImage(
                    label="Portrait", type="filepath", sources=["upload", "webcam", "clipboard"], elem_id="portrait"
                )
                speech = gr.Audio(
                    label="Speech", type="filepath", sources=["upload", "microphone"], elem_id="speech"
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Settings", open=False):
                    model = gr.Dropdown(session.models, value=session.models[0], label="Model", elem_id="model")
                    steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Denoising steps", elem_id="steps")
                    scheduler = gr.Dropdown(
                        [DEFAULT_SCHEDULER, *cli.SCHEDULER_CHOICES], value=DEFAULT_SCHEDULER, label="Scheduler"
                    )
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    # Starts at the default model's own guidance (its pipeline config) and follows the model choice.
                    guidance_scale = gr.Slider(
                        1.0,
                        MAX_GUIDANCE_SCALE,
                        value=session.recommended_guidance(session.models[0]),
                        step=0.5,
                        label="Guidance scale (1 = off)",
                        elem_id="guidance_scale",
                    )
                    full_frame = gr.Checkbox(
                        False,
                        label="Full-frame output (paste the animated face back into the whole portrait)",
                        visible=full_frame_available,
                    )
                    driving_video = gr.Video(
                        label="Head pose and blinks from a driving video (optional)", sources=["upload"]
                    )
            with gr.Column():
                crop = gr.Image(label="Detected face", interactive=False, elem_id="face-crop", height=256)
                face_status = gr.Markdown(elem_id="face-status")
                video = gr.Video(label="Result", interactive=False, elem_id="result")
                seconds = gr.Number(label="Seconds", interactive=False, elem_id="seconds", visible=False)
                summary = gr.Markdown(elem_id="summary")

        portrait.change(face_crop, [portrait, model], [crop, face_status], api_name="face_crop")
        model.change(face_crop, [portrait, model], [crop, face_status], api_visibility="private")
        model.change(session.recommended_guidance, model, guidance_scale, api_visibility="private")
        button.click(
            generate,
            [portrait, speech, model, steps, scheduler, seed, guidance_scale, full_frame, driving_video],
            [video, seconds, summary],
            api_name="generate",
        )
    return demo


def launch_demo(
    demo: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None, prevent_thread_lock: bool = False
):
    """Serves the page with one generation at a time; the queue position shows in the page while waiting."""
    demo.queue(default_concurrency_limit=1)
    return demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        theme=THEME,
        footer_links=["api"],
    )
