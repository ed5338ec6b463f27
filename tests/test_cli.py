"""`diffusers-dawn generate`: portrait + speech → MP4 with the speech muxed in, decoded back and checked."""

import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from skimage.data import astronaut

import diffusers_dawn.cli as cli
from diffusers_dawn.cli import main, resolve_model, scheduler_class
from diffusers_dawn.embedded import EmbeddedModel, embedded_model_path
from diffusers_dawn.processing.video import probe_video, read_video
from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

from _conversion_utils import assert_one_error_line, write_official_checkpoints, write_tiny_hubert


SPEECH_SECONDS = 1.2
SPEECH_RATE = 22050  # not 16 kHz and two channels: the command must bring it to 16 kHz mono itself


@pytest.fixture(scope="module")
def model_folder(fixtures_dir, tmp_path_factory):
    """A loadable pipeline folder made by `convert` from the tiny official-layout checkpoints."""
    folder = tmp_path_factory.mktemp("model")
    files = write_official_checkpoints(fixtures_dir, folder / "official")
    output = folder / "dawn-tiny"
    arguments = ["convert", "--hubert", str(write_tiny_hubert(folder / "hubert")), "--output", str(output)]
    for name in ("lfg", "dawn", "pbnet_pose", "pbnet_blink"):
        arguments += [f"--{name.replace('_', '-')}", str(files[name])]
    assert main(arguments) == 0
    return output


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    image = folder / "astronaut.png"
    PIL.Image.fromarray(astronaut()).save(image)
    time = np.arange(int(SPEECH_SECONDS * SPEECH_RATE)) / SPEECH_RATE
    # A syllable-like amplitude-modulated tone, slightly different on the two channels.
    voice = 0.3 * np.sin(2 * np.pi * 180 * time) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * time))
    speech = folder / "speech.wav"
    soundfile.write(speech, np.stack([voice, 0.8 * voice], axis=1).astype(np.float32), SPEECH_RATE)
    return {"image": image, "audio": speech, "folder": folder}


def generate_arguments(model, inputs, output, *extra):
    return [
        "generate",
        "--model", str(model),
        "--image", str(inputs["image"]),
        "--audio", str(inputs["audio"]),
        "--output", str(output),
        "--steps", "2",
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


def test_generate_writes_a_decodable_mp4_with_the_speech(model_folder, inputs, tmp_path, capsys):
    output = tmp_path / "video" / "talking.mp4"
    code = main(generate_arguments(model_folder, inputs, output, "--seed", "3"))
    stdout = capsys.readouterr().out
    expected_frames = int(np.floor(SPEECH_SECONDS * 25))
    assert code == 0
    assert f"Wrote {output}: {expected_frames} frames at 25 fps" in stdout

    frames, fps, audio, audio_rate = read_video(output)
    assert frames.shape == (expected_frames, 128, 128, 3)
    assert fps == 25
    assert frames.std() > 1.0  # a rendered face, not an empty or constant frame
    info = probe_video(output)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["audio_channels"] == 1
    assert info["audio_duration"] == pytest.approx(expected_frames / 25, abs=0.03)
    # The speech is in there: the decoded track is loud where the input is loud.
    assert audio is not None and audio_rate == 16000 and np.abs(audio).max() > 0.05


def test_same_seed_gives_the_same_video_and_schedulers_swap_by_name(model_folder, inputs, tmp_path, capsys):
    first, second, other = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    assert main(generate_arguments(model_folder, inputs, first, "--seed", "7")) == 0
    assert main(generate_arguments(model_folder, inputs, second, "--seed", "7")) == 0
    assert main(generate_arguments(model_folder, inputs, other, "--seed", "7", "--scheduler", "dpm++")) == 0
    capsys.readouterr()
    frames_first, frames_second, frames_other = (read_video(path)[0] for path in (first, second, other))
    np.testing.assert_array_equal(frames_first, frames_second)
    assert not np.array_equal(frames_first, frames_other)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dawn-ddim", DAWNDDIMScheduler),
        ("ddim", DDIMScheduler),
        ("dpm++", DPMSolverMultistepScheduler),
        ("dpmsolver", DPMSolverMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
        ("unipc", UniPCMultistepScheduler),
    ],
)
def test_scheduler_names_keep_the_dawn_training_schedule(model_folder, name, expected):
    # As `generate` does it: from the config of the scheduler saved in the pipeline folder.
    saved = DAWNDDIMScheduler.from_pretrained(model_folder / "scheduler")
    scheduler = scheduler_class(name).from_config(saved.config)
    assert type(scheduler) is expected
    torch.testing.assert_close(scheduler.alphas_cumprod, DAWNDDIMScheduler().alphas_cumprod, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------------ bad input


def test_missing_image_is_one_error_line(model_folder, inputs, tmp_path, capsys):
    arguments = generate_arguments(model_folder, inputs, tmp_path / "out.mp4")
    arguments[arguments.index("--image") + 1] = str(tmp_path / "missing.jpg")
    code = main(arguments)
    assert_one_error_line(code, capsys.readouterr().err, "missing.jpg", "no such image file")
    assert not (tmp_path / "out.mp4").exists()


def test_audio_shorter_than_one_frame_is_one_error_line(model_folder, inputs, tmp_path, capsys):
    short = tmp_path / "short.wav"
    soundfile.write(short, np.full(480, 0.1, dtype=np.float32), 16000)  # 30 ms < 40 ms
    arguments = generate_arguments(model_folder, inputs, tmp_path / "out.mp4")
    arguments[arguments.index("--audio") + 1] = str(short)
    code = main(arguments)
    assert_one_error_line(code, capsys.readouterr().err, "30.0 ms", "shorter than one video frame")


def test_image_without_a_face_is_one_error_line(model_folder, inputs, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    PIL.Image.new("RGB", (96, 96), (128, 128, 128)).save(blank)
    arguments = generate_arguments(model_folder, inputs, tmp_path / "out.mp4")
    arguments[arguments.index("--image") + 1] = str(blank)
    code = main(arguments)
    line = assert_one_error_line(code, capsys.readouterr().err, "no face found", str(blank), "--face-box x0,y0,x1,y1")
    assert "face_landmarks=" not in line  # a pipeline argument the command line does not have
    assert not (tmp_path / "out.mp4").exists()


def test_folder_that_is_not_a_pipeline_is_one_error_line(inputs, tmp_path, capsys):
    code = main(generate_arguments(tmp_path, inputs, tmp_path / "out.mp4"))
    assert_one_error_line(code, capsys.readouterr().err, "no model_index.json", "diffusers-dawn convert")


def test_output_must_be_mp4_and_driving_video_must_exist(model_folder, inputs, tmp_path, capsys):
    code = main(generate_arguments(model_folder, inputs, tmp_path / "out.gif"))
    assert_one_error_line(code, capsys.readouterr().err, "--output must be an .mp4 file")
    code = main(generate_arguments(model_folder, inputs, tmp_path / "out.mp4", "--pose-from", str(tmp_path / "x.mp4")))
    assert_one_error_line(code, capsys.readouterr().err, "x.mp4", "no such video file")


def test_half_precision_on_the_cpu_is_refused_before_loading(inputs, tmp_path, capsys):
    code = main(generate_arguments(tmp_path / "no-model-needed", inputs, tmp_path / "out.mp4", "--dtype", "fp16"))
    assert_one_error_line(code, capsys.readouterr().err, "--dtype fp16 needs a GPU")


def test_embedded_model_names_resolve_to_package_folders(monkeypatch):
    # Names that are not registered pass through (folders, hub ids); a registered name must exist in the package.
    assert resolve_model("someone/dawn-128") == "someone/dawn-128"
    monkeypatch.setitem(
        cli.EMBEDDED_MODELS, "demo", EmbeddedModel("models/not-installed", "a test entry", "a.png", "a.wav")
    )
    with pytest.raises(ValueError, match="embedded model 'demo' is missing"):
        resolve_model("demo")
    with pytest.raises(ValueError, match="unknown embedded model 'nope'"):
        embedded_model_path("nope")


def test_demo_runs_with_no_arguments_but_the_output(tmp_path, capsys):
    """The README's first command: the embedded synthetic-demo model on its own held-out portrait and 4 s of speech."""
    output = tmp_path / "demo.mp4"
    assert main(["generate", "--output", str(output), "--steps", "2", "--device", "cpu"]) == 0
    assert "random weights" not in capsys.readouterr().err
    info = probe_video(output)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert (info["width"], info["height"], info["num_frames"]) == (64, 64, 100)  # 4.00 s at 25 fps, the model's size
    assert info["audio_duration"] == pytest.approx(4.0, abs=0.065)  # rounded up to whole AAC frames (64 ms)


@pytest.mark.slow
def test_random_weight_model_runs_on_the_bundled_photo(tmp_path, capsys):
    """`--model tiny-random` checks an installation: every stage runs, on the bundled photo and 3 s speech clip."""
    output = tmp_path / "random.mp4"
    assert main(["generate", "--model", "tiny-random", "--output", str(output), "--steps", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err and "not lip sync" in captured.err
    info = probe_video(output)
    assert (info["width"], info["height"], info["num_frames"]) == (128, 128, 75)  # 3.00 s at 25 fps
    assert info["audio_duration"] == pytest.approx(3.0, abs=0.03)
