"""The command line reports bad input as one line (exit 2) and lets bugs through with their traceback."""

import os
import subprocess
import sys

import pytest

import diffusers_dawn.cli as cli
from diffusers_dawn.batch import BatchFileError
from diffusers_dawn.conversion.common import CheckpointConversionError
from diffusers_dawn.demo.handlers import DemoInputError
from diffusers_dawn.processing.audio import AudioLoadError
from diffusers_dawn.processing.face import NoFaceError
from diffusers_dawn.processing.face_detectors import FaceBackendUnavailable
from diffusers_dawn.processing.image import ImageLoadError
from diffusers_dawn.processing.video import VideoReadError
from diffusers_dawn.utils.errors import DAWNInputError
from diffusers_dawn.utils.io import OutputPathError

from _conversion_utils import assert_one_error_line


SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.mark.parametrize(
    "error_class",
    [
        cli.CommandError, BatchFileError, CheckpointConversionError, DemoInputError, AudioLoadError, NoFaceError,
        FaceBackendUnavailable, ImageLoadError, VideoReadError, OutputPathError,
    ],
)  # fmt: skip
def test_user_facing_errors_share_one_base_that_is_still_a_value_error(error_class):
    assert issubclass(error_class, DAWNInputError) and issubclass(error_class, ValueError)
    assert cli._is_user_error(error_class("message"))


def failing_model_load(monkeypatch, error):
    def load(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "load_pipeline", load)


def generate(tmp_path):
    return cli.main(["generate", "--output", str(tmp_path / "talking.mp4"), "--steps", "1", "--device", "cpu"])


@pytest.mark.parametrize(
    "error, fragment",
    [
        (cli.CommandError("--model X: not a pipeline\n   folder"), "--model X: not a pipeline folder"),
        (FileNotFoundError(2, "No such file or directory", "unet/config.json"), "unet/config.json"),
    ],
)
def test_bad_input_and_missing_files_are_one_line_with_status_2(monkeypatch, tmp_path, capsys, error, fragment):
    failing_model_load(monkeypatch, error)
    assert_one_error_line(generate(tmp_path), capsys.readouterr().err, fragment)
    assert not (tmp_path / "talking.mp4").exists()


@pytest.mark.parametrize(
    "error",
    [
        ValueError("shapes (3, 4) and (5, 6) do not match"),  # a plain ValueError is a bug, not bad input
        PermissionError(13, "Permission denied", "/root/.cache"),
        KeyError("down_blocks.0"),
    ],
)
def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path, capsys, error):
    failing_model_load(monkeypatch, error)
    with pytest.raises(type(error)) as raised:
        generate(tmp_path)
    assert raised.value is error
    assert "diffusers-dawn: error:" not in capsys.readouterr().err


def test_an_internal_error_exits_with_a_traceback_and_a_status_other_than_2(tmp_path):
    code = (
        "import sys\n"
        "import diffusers_dawn.cli as cli\n"
        "def load(*args, **kwargs):\n"
        "    raise ZeroDivisionError('a bug')\n"
        "cli.load_pipeline = load\n"
        "sys.exit(cli.main(['generate', '--output', sys.argv[1], '--steps', '1', '--device', 'cpu']))\n"
    )
    environment = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "talking.mp4")], capture_output=True, text=True, env=environment,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
    assert "diffusers-dawn: error:" not in result.stderr


def test_a_model_that_is_neither_a_folder_nor_a_repository_id_is_bad_input(tmp_path):
    with pytest.raises(cli.CommandError, match="cannot load the model .*no-such-model.*pass a pipeline folder"):
        cli.load_pipeline(str(tmp_path / "no-such-model"))
