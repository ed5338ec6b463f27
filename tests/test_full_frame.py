"""Full-frame output: `DAWNPipeline(paste_back=True)` and `diffusers-dawn generate --full-frame`, decoded back."""

import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
from skimage.data import astronaut, coffee

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.cli import main
from diffusers_dawn.processing.compositing import CompositedVideo
from diffusers_dawn.processing.image import CropTransform
from diffusers_dawn.processing.video import probe_video, read_video
from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline_components


SPEECH_SECONDS = 1.0
WIDTH, HEIGHT = 1920, 1080


def large_photo(width=WIDTH, height=HEIGHT, face_left=1100, face_top=200):
    """A landscape photo with a portrait off-centre in it."""
    canvas = np.array(PIL.Image.fromarray(coffee()).resize((width, height), PIL.Image.BICUBIC))
    canvas[face_top : face_top + 512, face_left : face_left + 512] = astronaut()
    return canvas


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full-frame")
    photo = folder / "photo.png"
    PIL.Image.fromarray(large_photo()).save(photo)
    time = np.arange(int(SPEECH_SECONDS * 16000)) / 16000
    speech = folder / "speech.wav"
    soundfile.write(speech, (0.3 * np.sin(2 * np.pi * 180 * time)).astype(np.float32), 16000)
    return {"photo": photo, "audio": speech}


@pytest.fixture(scope="module")
def pipe():
    pipeline = DAWNPipeline(**tiny_pipeline_components(), paste_back=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_pipeline_returns_full_frames_with_the_crops_and_the_box(pipe, inputs):
    photo = np.asarray(PIL.Image.open(inputs["photo"]))
    output = pipe(
        image=str(inputs["photo"]), audio=str(inputs["audio"]), num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    frames = int(SPEECH_SECONDS * 25)
    video = output.frames[0]
    assert isinstance(video, CompositedVideo) and video.shape == (frames, HEIGHT, WIDTH, 3)
    assert output.crops.shape == (1, frames, 128, 128, 3)
    assert isinstance(output.crop_box, CropTransform) and output.photo.size == (WIDTH, HEIGHT)
    # The box is around the off-centre face; the frame is the photo outside it and the generated crop inside.
    box = output.crop_box
    assert 1100 < box.left + box.side / 2 < 1100 + 512 and 200 < box.top + box.side / 2 < 200 + 512
    frame = video[5]
    outside = np.ones((HEIGHT, WIDTH), dtype=bool)
    outside[int(box.top) : int(np.ceil(box.top + box.side)), int(box.left) : int(np.ceil(box.left + box.side))] = False
    np.testing.assert_array_equal(frame[outside], photo[outside])
    centre = (slice(int(box.top + box.side * 0.4), int(box.top + box.side * 0.6)),
              slice(int(box.left + box.side * 0.4), int(box.left + box.side * 0.6)))  # fmt: skip
    assert np.abs(frame[centre].astype(int) - photo[centre]).mean() > 5  # random weights: not the photo there

    # The call-time switch overrides the config; the crop output is what full-frame pastes.
    crop_output = pipe(
        image=str(inputs["photo"]), audio=str(inputs["audio"]), num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), paste_back=False,
    )  # fmt: skip
    np.testing.assert_array_equal(crop_output.frames, output.crops)


def test_paste_back_needs_a_face_crop(pipe, inputs):
    with pytest.raises(ValueError, match="paste_back needs crop='face'"):
        pipe(image=str(inputs["photo"]), audio=str(inputs["audio"]), crop="resize", num_inference_steps=1)


@pytest.mark.parametrize("max_size, size", [(None, (WIDTH, HEIGHT)), (1280, (1280, 720))])
def test_cli_full_frame_decodes_to_the_photo_size_with_aac(inputs, tmp_path, capsys, max_size, size):
    output = tmp_path / "full.mp4"
    extra = ["--max-size", str(max_size)] if max_size else []
    code = main([
        "generate", "--model", "tiny-random", "--image", str(inputs["photo"]), "--audio", str(inputs["audio"]),
        "--output", str(output), "--steps", "2", "--device", "cpu", "--full-frame", *extra,
    ])  # fmt: skip
    assert code == 0
    frames_expected = int(SPEECH_SECONDS * 25)
    assert f"{frames_expected} frames at 25 fps" in capsys.readouterr().out
    frames, fps, audio, _ = read_video(output)
    assert frames.shape == (frames_expected, size[1], size[0], 3) and fps == 25
    info = probe_video(output)
    assert (info["video_codec"], info["audio_codec"], info["num_frames"]) == ("h264", "aac", frames_expected)
    assert info["audio_duration"] == pytest.approx(SPEECH_SECONDS, abs=0.03)
    # Far from the face the video shows the photo (up to H.264 loss).
    reference = np.asarray(PIL.Image.open(inputs["photo"]).resize(size, PIL.Image.LANCZOS)).astype(int)
    corner = (slice(0, size[1] // 4), slice(0, size[0] // 4))
    assert np.abs(frames[-1][corner].astype(int) - reference[corner]).mean() < 3
    assert not list(tmp_path.glob(".full.mp4.*"))  # no temporary file left behind


def test_cli_full_frame_options_are_checked(inputs, tmp_path, capsys):
    code = main([
        "generate", "--model", "tiny-random", "--image", str(inputs["photo"]), "--audio", str(inputs["audio"]),
        "--output", str(tmp_path / "x.mp4"), "--full-frame", "--feather", "0.9",
    ])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("diffusers-dawn: error: --feather must lie in [0, 0.5]")
    assert not (tmp_path / "x.mp4").exists()


def test_full_frame_options_without_full_frame_are_refused(inputs, tmp_path, capsys):
    code = main(["generate", "--model", "tiny-random", "--output", str(tmp_path / "x.mp4"), "--max-size", "640"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("add --full-frame")
