"""
The shipped demo model gives the outputs recorded when it was shipped, so that refactors cannot change its numbers.

The recording is made by this module itself, from the repository's own code at the commit that shipped the model:

    python tests/test_recorded_outputs.py --record

It must only be re-recorded when a change of numbers is intended (a retrained demo model), never to make a refactor
pass: a refactor that renames configs, moves the condition layout or the training code keeps these outputs.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.embedded import embedded_demo_inputs, embedded_model_path
from diffusers_dawn.processing.audio import SAMPLES_PER_FRAME, load_audio


RECORDED = Path(__file__).resolve().parent / "fixtures" / "recorded" / "synthetic_demo_outputs.safetensors"
DEMO = "synthetic-demo"
NUM_FRAMES = 8


def demo_outputs() -> dict:
    """Motion latents, pose, blink and frames of the shipped model on 8 frames of its demo inputs, 3 DDIM steps."""
    pipe = DAWNPipeline.from_pretrained(embedded_model_path(DEMO))
    pipe.set_progress_bar_config(disable=True)
    image, audio = embedded_demo_inputs(DEMO)
    speech = load_audio(audio)[: NUM_FRAMES * SAMPLES_PER_FRAME]
    final = {}

    def keep_latents(pipeline, step, timestep, tensors):
        # The latents after the last step are the ones decoded: one call gives both latents and frames.
        final["latents"] = tensors["latents"].clone()
        return tensors

    video = pipe(
        image=image, audio=speech, sampling_rate=16000, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), callback_on_step_end=keep_latents,
    )  # fmt: skip
    return {
        "motion_latents": np.ascontiguousarray(final["latents"], dtype=np.float32),
        "pose": np.ascontiguousarray(video.pose, dtype=np.float32),
        "blink": np.ascontiguousarray(video.blink, dtype=np.float32),
        "frames": np.ascontiguousarray(video.frames, dtype=np.float32),
    }


def test_shipped_demo_model_gives_the_recorded_outputs():
    recorded = load_file(str(RECORDED))
    outputs = demo_outputs()
    assert set(outputs) == set(recorded)
    assert outputs["frames"].shape == (1, NUM_FRAMES, 64, 64, 3)
    # Float32 on different CPUs (vector widths, thread counts) differs in the last bits only.
    for name in ("pose", "blink"):
        np.testing.assert_allclose(outputs[name], recorded[name], rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(outputs["motion_latents"], recorded["motion_latents"], atol=2e-3, err_msg="latents")
    np.testing.assert_allclose(outputs["frames"], recorded["frames"], atol=2e-3, err_msg="frames")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    RECORDED.parent.mkdir(parents=True, exist_ok=True)
    save_file(demo_outputs(), str(RECORDED))
    print(f"recorded {RECORDED}")
