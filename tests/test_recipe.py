"""The synthetic-demo training recipe runs every stage with the package's training functions and yields a pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.testing.synthetic import generate_synthetic_clip

from _a2v_utils import single_thread  # noqa: F401
from _training_utils import REPO_ROOT


def run_recipe(*arguments):
    """`python training/recipes/synthetic_demo.py ARGUMENTS`, the recipe's command line, as users run it."""
    command = [sys.executable, str(REPO_ROOT / "training" / "recipes" / "synthetic_demo.py"), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow
def test_smoke_recipe_trains_all_models_and_assembles_a_pipeline(tmp_path):
    run_recipe("--output_dir", str(tmp_path), "--smoke", "--threads", "1")

    event_files = {}
    for stage in ("lfg", "pose", "blink", "a2v-stage1", "a2v-stage2"):
        event_files[stage] = sorted((tmp_path / stage / "logs").rglob("events.out.tfevents.*"))
        assert event_files[stage], stage
    recipe_used = json.loads((tmp_path / "pipeline" / "recipe.json").read_text())
    assert recipe_used["a2v_stage2"]["steps"] == 2 and recipe_used["videos"] == 2
    # Run again: every finished stage is skipped (no new training logs), the pipeline is assembled again.
    run_recipe("--output_dir", str(tmp_path), "--smoke", "--threads", "1")
    for stage, files in event_files.items():
        assert sorted((tmp_path / stage / "logs").rglob("events.out.tfevents.*")) == files, stage
    pipe = DAWNPipeline.from_pretrained(tmp_path / "pipeline")
    # The audio encoder is the recipe's: group-normalised front end, no transformer layers.
    assert pipe.audio_encoder.config.feat_extract_norm == "group" and pipe.audio_encoder.config.num_hidden_layers == 0
    pipe.set_progress_bar_config(disable=True)
    trained_unet = pipe.unet.state_dict()
    stage2 = type(pipe.unet).from_pretrained(tmp_path / "a2v-stage2" / "unet").state_dict()
    assert all(torch.equal(trained_unet[key], stage2[key]) for key in stage2)  # the pipeline holds the stage-2 U-Net

    clip = generate_synthetic_clip(7, num_frames=10, resolution=64)
    result = pipe(image=clip.frames[0], face_landmarks=clip.landmarks[0], audio=clip.audio,
                  sampling_rate=clip.sampling_rate, crop="none", num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0))
    assert result.frames.shape == (1, 10, 64, 64, 3) and np.isfinite(result.pose).all()
