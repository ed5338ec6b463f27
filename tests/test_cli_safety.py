"""`diffusers-dawn generate` loses nothing and answers fast: output checks before any model load, lazy imports."""

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import diffusers_dawn.cli as cli
from diffusers_dawn.cli import main
from diffusers_dawn.processing.face import NoFaceError
from diffusers_dawn.processing.video import export_to_video_with_audio

from _conversion_utils import assert_one_error_line


SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


class ModelLoaded(Exception):
    pass


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: the checks under test must come before it."""

    def refuse(*args, **kwargs):
        raise ModelLoaded("the model was loaded")

    monkeypatch.setattr(cli, "load_pipeline", refuse)


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "interview.mp4"
    frames = np.full((10, 32, 32, 3), 120, np.uint8)
    export_to_video_with_audio(frames, path, audio=0.1 * np.sin(np.arange(6400) / 5.0).astype(np.float32))
    return path


def generate(output, *extra):
    return main(["generate", "--output", str(output), "--steps", "1", "--device", "cpu", *extra])


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys, no_model_loading):
    output = tmp_path / "talking.mp4"
    output.write_bytes(b"an earlier video")
    code = generate(output)
    assert_one_error_line(code, capsys.readouterr().err, str(output), "already exists", "--overwrite")
    assert output.read_bytes() == b"an earlier video"
    # With --overwrite the checks pass and the command goes on to load the model; so does a folder to be created.
    with pytest.raises(ModelLoaded):
        generate(output, "--overwrite")
    assert output.read_bytes() == b"an earlier video"
    with pytest.raises(ModelLoaded):
        generate(tmp_path / "new" / "folder" / "talking.mp4")


def test_output_that_is_an_input_is_refused_even_with_overwrite(speech_video, tmp_path, capsys, no_model_loading):
    before = speech_video.read_bytes()
    spelled_differently = os.path.join(os.path.dirname(speech_video), "..", speech_video.parent.name, "interview.mp4")
    linked = tmp_path / "linked.mp4"
    os.link(speech_video, linked)
    for output in (speech_video, spelled_differently, linked):
        code = generate(output, "--audio", str(speech_video), "--overwrite")
        assert_one_error_line(code, capsys.readouterr().err, str(output), "is also the --audio input")
    code = generate(speech_video, "--pose-from", str(speech_video), "--overwrite")
    assert_one_error_line(code, capsys.readouterr().err, "is also the --pose-from input")
    assert speech_video.read_bytes() == before


def test_unusable_output_paths_fail_before_model_loading(tmp_path, capsys, monkeypatch, no_model_loading):
    folder = tmp_path / "videos.mp4"
    folder.mkdir()
    code = generate(folder, "--overwrite")
    assert_one_error_line(code, capsys.readouterr().err, str(folder), "is a folder")
    under_a_file = tmp_path / "notes.txt" / "out.mp4"
    (tmp_path / "notes.txt").write_text("a file")
    code = generate(under_a_file)
    assert_one_error_line(code, capsys.readouterr().err, str(under_a_file), "is a file, not a folder")
    code = generate(tmp_path / "out.gif")
    assert_one_error_line(code, capsys.readouterr().err, "--output must be an .mp4 file")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # A read-only folder, as root would otherwise be allowed to write anywhere.
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code = generate(tmp_path / "out.mp4")
    assert_one_error_line(code, capsys.readouterr().err, str(tmp_path / "out.mp4"), "cannot create files in",
                          "Permission denied")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "videos.mp4"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_fails_before_model_loading(tmp_path, capsys, no_model_loading):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code = generate(folder / "out.mp4")
    finally:
        folder.chmod(0o755)
    assert_one_error_line(code, capsys.readouterr().err, str(folder / "out.mp4"), "cannot create files in")


def test_face_box_reaches_the_pipeline_and_no_face_advice_names_cli_options(tmp_path, capsys, monkeypatch):
    calls = {}

    class NoFacePipeline:
        scheduler = None

        def to(self, device):
            return self

        def set_progress_bar_config(self, **kwargs):
            pass

        def __call__(self, **kwargs):
            calls.update(kwargs)
            raise NoFaceError("no face found inside the given face box by the test backend", "use face_landmarks=")

    monkeypatch.setattr(cli, "load_pipeline", lambda *args, **kwargs: NoFacePipeline())
    code = generate(tmp_path / "out.mp4", "--face-box", "10,20,110,140.5")
    line = assert_one_error_line(code, capsys.readouterr().err, "no face found inside the given face box", "--face-box")
    assert "face_landmarks=" not in line and "face_box=" not in line
    assert calls["face_box"] == [10.0, 110.0, 20.0, 140.5]  # the pipeline's [x_min, x_max, y_min, y_max]
    assert not (tmp_path / "out.mp4").exists()
    for wrong in ("10,20,110", "10,20,5,140", "a,b,c,d"):
        with pytest.raises(SystemExit) as exit_info:
            generate(tmp_path / "out.mp4", "--face-box", wrong)
        assert exit_info.value.code == 2
        assert "--face-box" in capsys.readouterr().err


def run_python(code, *arguments):
    environment = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, env=environment,
                          timeout=600)


def test_help_and_argument_errors_import_no_heavy_library():
    # What makes `--help` take seconds is importing torch & co.; the time itself is measured in benchmarks/.
    code = (
        "import sys\n"
        "from diffusers_dawn.cli import main\n"
        "for arguments in (['--help'], ['generate', '--help'], ['convert', '--help'], ['generate']):\n"
        "    try:\n"
        "        main(arguments)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert main(['generate', '--output', sys.argv[1], '--steps', '0']) == 2\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers', 'mediapipe', 'av', 'numpy')"
        " if name in sys.modules))\n"
    )
    result = run_python(code, os.path.join(tempfile.gettempdir(), "never-written.mp4"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "--steps must be at least 1" in result.stderr


THIRD_PARTY_NOISE = re.compile(
    r"^[WEIF]\d{4} |absl|TensorFlow|XNNPACK|protobuf|Warning:|warnings\.warn|FutureWarning|DeprecationWarning"
)


@pytest.mark.slow
def test_demo_stderr_has_only_the_package_messages(tmp_path):
    output = tmp_path / "demo.mp4"
    result = run_python("from diffusers_dawn.cli import main; raise SystemExit(main())", "generate", "--output",
                        str(output), "--steps", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip()]
    assert [line for line in lines if THIRD_PARTY_NOISE.search(line)] == []
    assert len([line for line in lines if "Face analysis uses" in line]) == 1
    assert output.is_file()
