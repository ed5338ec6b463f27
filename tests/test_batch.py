"""Many videos in one run: lists in DAWNPipeline, `generate --batch jobs.csv`, and the batch split by Accelerate."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
from skimage.data import astronaut

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.batch import BatchFileError, read_batch_file
from diffusers_dawn.cli import main
from diffusers_dawn.processing.video import probe_video, read_video
from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline_components


SPEECH_SECONDS = 0.6
FRAMES = int(SPEECH_SECONDS * 25)
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def tone(seconds, frequency, rate=16000):
    time = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    PIL.Image.fromarray(astronaut()).save(folder / "face.png")
    PIL.Image.fromarray(np.ascontiguousarray(astronaut()[:, ::-1])).save(folder / "mirrored.png")
    soundfile.write(folder / "a.wav", tone(SPEECH_SECONDS, 180), 16000)
    soundfile.write(folder / "b.wav", tone(SPEECH_SECONDS + 0.2, 240), 16000)
    return folder


def write_jobs(folder, rows, header="image,audio,output"):
    path = folder / "jobs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline with lists
# ---------------------------------------------------------------------------------------------------------------------
def test_pipeline_lists_give_one_result_per_pair_equal_to_single_calls(media):
    pipe = DAWNPipeline(**tiny_pipeline_components())
    pipe.set_progress_bar_config(disable=True)
    images = [str(media / "face.png"), str(media / "mirrored.png")]
    audios = [str(media / "a.wav"), str(media / "b.wav")]
    results = pipe(
        image=images, audio=audios, num_inference_steps=2,
        generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
    )  # fmt: skip
    assert len(results) == 2
    assert results[0].frames.shape[1] == FRAMES and results[1].frames.shape[1] == FRAMES + 5
    for index, (image, audio) in enumerate(zip(images, audios)):
        generator = torch.Generator().manual_seed(index + 1)
        single = pipe(image=image, audio=audio, num_inference_steps=2, generator=generator)
        np.testing.assert_array_equal(results[index].frames, single.frames)
        np.testing.assert_array_equal(results[index].pose, single.pose)

    # One portrait for several clips.
    shared = pipe(image=images[0], audio=audios, num_inference_steps=1, output_type="latent")
    assert [result.frames.shape[2] for result in shared] == [FRAMES, FRAMES + 5]


def test_pipeline_lists_refuse_mismatched_lengths_and_per_video_arrays(media):
    pipe = DAWNPipeline(**tiny_pipeline_components())
    image, audio = str(media / "face.png"), str(media / "a.wav")
    with pytest.raises(ValueError, match="2 images and 3 audio clips"):
        pipe(image=[image, image], audio=[audio] * 3)
    with pytest.raises(ValueError, match="3 generators for 2 videos"):
        pipe(image=[image, image], audio=audio, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="pose describe a single video"):
        pipe(image=[image, image], audio=audio, pose=np.zeros((FRAMES, 6)))


# ---------------------------------------------------------------------------------------------------------------------
# The batch file
# ---------------------------------------------------------------------------------------------------------------------
def test_batch_file_rows_overrides_and_relative_paths(tmp_path):
    path = write_jobs(
        tmp_path,
        ["face.png,a.wav,out/1.mp4,,,", "face.png,b.wav,out/2.mp4,7,3,drive.mp4", "face.png,a.wav,out/3.mp4,x,0,",
         ",a.wav,out/4.avi,,,"],
        header="Image,audio,output,seed,steps,pose-from",
    )  # fmt: skip
    jobs = read_batch_file(str(path))
    assert [job.row for job in jobs] == [1, 2, 3, 4]
    assert jobs[0].image == str(tmp_path / "face.png") and jobs[0].output == str(tmp_path / "out" / "1.mp4")
    assert jobs[0].overrides == {} and jobs[0].error is None
    assert jobs[1].overrides == {"seed": 7, "steps": 3, "pose_from": str(tmp_path / "drive.mp4")}
    assert jobs[2].error == "seed must be an integer, got 'x'; steps must be at least 1, got 0"
    assert jobs[3].error == "the image cell is empty; output must be an .mp4 file, got 'out/4.avi'"


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("image,output", ["a.png,b.mp4"], "lacks the column(s) audio"),
        ("image,audio,output,speed", ["a.png,a.wav,b.mp4,2"], "unknown column(s) speed"),
        ("image,audio,output", [], "no rows below the header"),
        ("image,audio,output", ["a.png,a.wav,b.mp4", "c.png,c.wav,./b.mp4"], "rows 1 and 2 both write"),
    ],
)
def test_batch_file_problems_are_one_error_line_before_any_model_load(tmp_path, capsys, header, rows, message):
    path = write_jobs(tmp_path, rows, header=header)
    with pytest.raises(BatchFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_batch_file(str(path))
    assert main(["generate", "--batch", str(path), "--model", str(tmp_path / "no-such-model")]) == 2
    assert message in capsys.readouterr().err


def test_batch_with_a_bad_row_writes_the_others_reports_it_and_skips_done_rows_on_rerun(media, tmp_path, capsys):
    rows = [
        f"{media}/face.png,{media}/a.wav,one.mp4",
        f"{media}/mirrored.png,{media}/b.wav,two.mp4",
        f"{media}/missing.png,{media}/a.wav,three.mp4",
        f"{media}/face.png,{media}/b.wav,four.mp4,5",
        f"{media}/face.png,{media}/b.wav,five.mp4,6",
    ]
    jobs = write_jobs(tmp_path, rows, header="image,audio,output,seed")
    arguments = ["generate", "--batch", str(jobs), "--model", "tiny-random", "--steps", "2", "--device", "cpu"]
    assert main(arguments) == 1
    out = capsys.readouterr().out
    written = ["one", "two", "four", "five"]
    for name in written:
        info = probe_video(tmp_path / f"{name}.mp4")
        assert (info["width"], info["height"], info["audio_codec"]) == (128, 128, "aac")
    assert probe_video(tmp_path / "one.mp4")["num_frames"] == FRAMES
    assert probe_video(tmp_path / "two.mp4")["num_frames"] == FRAMES + 5
    assert not (tmp_path / "three.mp4").exists()
    assert "Batch of 5 rows" in out and "4 done, 0 skipped, 1 failed" in out
    assert f"failed: row 3 ({tmp_path / 'three.mp4'}): {media}/missing.png: no such image file" in out
    assert "s of work per second of video" in out
    # Per-row seeds: same inputs, different seeds, different videos.
    assert not np.array_equal(read_video(tmp_path / "four.mp4")[0], read_video(tmp_path / "five.mp4")[0])
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary files left

    stamps = {name: os.stat(tmp_path / f"{name}.mp4").st_mtime_ns for name in written}
    assert main(arguments) == 1
    out = capsys.readouterr().out
    assert "0 done, 4 skipped, 1 failed" in out
    assert {name: os.stat(tmp_path / f"{name}.mp4").st_mtime_ns for name in written} == stamps

    # --overwrite redoes the done rows (same seeds: the same videos).
    frames_before = read_video(tmp_path / "one.mp4")[0]
    assert main([*arguments, "--overwrite"]) == 1
    assert "4 done, 0 skipped, 1 failed" in capsys.readouterr().out
    np.testing.assert_array_equal(read_video(tmp_path / "one.mp4")[0], frames_before)


def test_accelerate_launch_on_two_cpu_processes_writes_each_video_exactly_once(media, tmp_path):
    rows = [f"{media}/face.png,{media}/a.wav,video{index}.mp4,{index}" for index in range(4)]
    jobs = write_jobs(tmp_path, rows, header="image,audio,output,seed")
    # `accelerate launch --cpu --num_processes 2` starts one process unless MPI is set up (Accelerate launches
    # multi-CPU jobs through mpirun); its torchrun launcher (--multi_gpu) starts two, which join a gloo group on
    # CPU-only machines and with --device cpu.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29571",
        "-m", "diffusers_dawn.cli", "generate", "--batch", str(jobs), "--model", "tiny-random", "--steps", "2",
        "--device", "cpu",
    ]  # fmt: skip
    python_path = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    wrote = [line for line in finished.stdout.splitlines() if ": wrote " in line]
    for index in range(4):
        path = tmp_path / f"video{index}.mp4"
        assert sum(f"wrote {path} " in line for line in wrote) == 1
        assert probe_video(path)["num_frames"] == FRAMES
    assert len(wrote) == 4
    assert finished.stdout.count("Batch of 4 rows") == 1  # one summary, from the main process
    assert "4 done, 0 skipped, 0 failed" in finished.stdout and "on 2 processes" in finished.stdout
