"""The web demo's plain-Python side: input limits, pipelines loaded once, and the same video as `generate`."""

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import soundfile

from diffusers_dawn import cli
from diffusers_dawn.cli import DEMO_AUDIO, DEMO_IMAGE, RANDOM_DEMO_MODEL
from diffusers_dawn.demo.handlers import (
    MAX_IMAGE_PIXELS,
    MAX_SPEECH_SECONDS,
    DemoInputError,
    DemoSession,
    read_portrait,
    read_speech,
)
from diffusers_dawn.processing.audio import num_video_frames
from diffusers_dawn.processing.image import load_image
from diffusers_dawn.processing.video import probe_video, read_video


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return DemoSession([RANDOM_DEMO_MODEL], device="cpu", output_dir=str(tmp_path_factory.mktemp("videos")))


def test_the_core_command_line_does_not_import_gradio():
    code = "import sys, diffusers_dawn.cli as c; c.build_parser(); print('gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_demo_command_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail as if it were not installed
    assert cli.main(["demo", "--port", "7999"]) == 2
    expected = 'diffusers-dawn: error: the demo needs Gradio: pip install "diffusers-dawn[demo]"'
    assert capsys.readouterr().err.strip() == expected


def test_portraits_beyond_the_limits_are_refused_with_what_to_do(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (side, side)).save(huge)  # 1-bit: a 17-megapixel file of a few kB
    with pytest.raises(DemoInputError, match=r"megapixels, more than the demo's 16\.8; upload a smaller photo"):
        read_portrait(str(huge))
    not_an_image = tmp_path / "portrait.png"
    not_an_image.write_text("hello")
    with pytest.raises(DemoInputError, match="not a readable image"):
        read_portrait(str(not_an_image))
    with pytest.raises(DemoInputError, match=r"\.gif files are not accepted; upload \.jpg"):
        read_portrait(str(tmp_path / "animation.gif"))
    with pytest.raises(DemoInputError, match="upload a photo"):
        read_portrait(None)
    assert read_portrait(DEMO_IMAGE).size == load_image(DEMO_IMAGE).size


def test_speech_beyond_the_limits_is_refused_with_what_to_do(tmp_path):
    long_speech = tmp_path / "long.wav"
    soundfile.write(long_speech, np.zeros(int((MAX_SPEECH_SECONDS + 1) * 8000), np.float32), 8000)
    with pytest.raises(DemoInputError, match=r"lasts 31\.0 s, longer than the demo's 30 s"):
        read_speech(str(long_speech))
    too_short = tmp_path / "click.wav"
    soundfile.write(too_short, np.zeros(80, np.float32), 8000)
    with pytest.raises(DemoInputError, match="shorter than one video frame"):
        read_speech(str(too_short))
    with pytest.raises(DemoInputError, match=r"\.txt files are not accepted"):
        read_speech(str(tmp_path / "speech.txt"))
    bundled = soundfile.info(DEMO_AUDIO)
    assert len(read_speech(DEMO_AUDIO)) == bundled.frames * 16000 // bundled.samplerate


def test_bad_settings_are_refused_before_any_model_loads(tmp_path):
    session = DemoSession([RANDOM_DEMO_MODEL], device="cpu", output_dir=str(tmp_path))
    with pytest.raises(DemoInputError, match="Steps: choose between 1 and 100"):
        session.generate(DEMO_IMAGE, DEMO_AUDIO, RANDOM_DEMO_MODEL, steps=0)
    with pytest.raises(DemoInputError, match="Guidance"):
        session.generate(DEMO_IMAGE, DEMO_AUDIO, RANDOM_DEMO_MODEL, guidance_scale=50)
    with pytest.raises(DemoInputError, match=r"Driving video: \.gif files are not accepted"):
        session.generate(DEMO_IMAGE, DEMO_AUDIO, RANDOM_DEMO_MODEL, driving_video=str(tmp_path / "a.gif"))
    # Visitors choose among the offered models; they cannot make the server load a path of their choosing.
    with pytest.raises(DemoInputError, match=r"'/etc' is not offered here; choose one of tiny-random"):
        session.generate(DEMO_IMAGE, DEMO_AUDIO, "/etc")
    assert session._pipelines == {}



def test_the_guidance_shown_is_each_models_own_read_without_loading_it(tmp_path):
    import json
    from pathlib import Path

    from diffusers_dawn.embedded import embedded_model_path

    session = DemoSession(["synthetic-demo", RANDOM_DEMO_MODEL], device="cpu", output_dir=str(tmp_path))
    recorded = json.loads((Path(embedded_model_path("synthetic-demo")) / "model_index.json").read_text())
    assert session.recommended_guidance("synthetic-demo") == recorded["guidance_scale"] > 1.0
    assert session.recommended_guidance(RANDOM_DEMO_MODEL) == 1.0
    with pytest.raises(DemoInputError, match="is not offered here"):
        session.recommended_guidance("/etc")
    assert session._pipelines == {}

def test_face_crop_is_the_square_the_pipeline_animates_and_no_face_is_explained(session, tmp_path):
    pipe = session.pipeline(RANDOM_DEMO_MODEL)
    assert session.pipeline(RANDOM_DEMO_MODEL) is pipe  # loaded once
    crop = np.asarray(session.face_crop(DEMO_IMAGE, RANDOM_DEMO_MODEL))
    expected = pipe.prepare_source(load_image(DEMO_IMAGE)).image[0].permute(1, 2, 0).numpy() * 255
    assert crop.shape == (pipe.config.resolution, pipe.config.resolution, 3)
    assert np.abs(crop - expected).max() <= 0.5

    blank = tmp_path / "wall.png"
    PIL.Image.new("RGB", (320, 240), (128, 140, 150)).save(blank)
    with pytest.raises(DemoInputError, match="^No face found in the portrait: upload a photo with a clearly visible"):
        session.face_crop(str(blank), RANDOM_DEMO_MODEL)


def test_generation_matches_the_command_line_and_reports_each_denoising_step(session, tmp_path):
    events = []
    result = session.generate(
        DEMO_IMAGE, DEMO_AUDIO, RANDOM_DEMO_MODEL, steps=2, scheduler="euler", seed=5,
        progress=lambda fraction, description: events.append((fraction, description)),
    )  # fmt: skip
    denoising = [event for event in events if event[1].startswith("Denoising")]
    assert denoising == [(0.5, "Denoising step 1/2"), (1.0, "Denoising step 2/2")]
    assert events[-1] == (1.0, "Writing the video")

    expected_frames = num_video_frames(soundfile.info(DEMO_AUDIO).frames, soundfile.info(DEMO_AUDIO).samplerate)
    info = probe_video(result.video)
    assert (result.num_frames, info["num_frames"], info["fps"]) == (expected_frames, expected_frames, 25)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")

    reference = tmp_path / "cli.mp4"
    arguments = ["generate", "--model", RANDOM_DEMO_MODEL, "--output", str(reference), "--steps", "2"]
    assert cli.main(arguments + ["--scheduler", "euler", "--seed", "5", "--device", "cpu"]) == 0
    demo_frames, _, demo_audio, _ = read_video(result.video)
    cli_frames, _, cli_audio, _ = read_video(reference)
    np.testing.assert_array_equal(demo_frames, cli_frames)
    np.testing.assert_array_equal(demo_audio, cli_audio)
    # The scheduler choice applies to one request; the next one gets the pipeline's own sampler back.
    session.generate(DEMO_IMAGE, DEMO_AUDIO, RANDOM_DEMO_MODEL, steps=1)
    assert type(session.pipeline(RANDOM_DEMO_MODEL).scheduler).__name__ == "DAWNDDIMScheduler"
