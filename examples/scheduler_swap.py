"""Swap DAWN's sampler for any diffusers scheduler; all of them see DAWN's exact training schedule.

    python examples/scheduler_swap.py --model path/to/converted-dawn-128 --image me.jpg --audio speech.wav
"""

import argparse

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.processing.video import export_to_video_with_audio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--audio", required=True)
    args = parser.parse_args()

    pipe = DAWNPipeline.from_pretrained(args.model)
    for scheduler_class, steps in ((DPMSolverMultistepScheduler, 10), (UniPCMultistepScheduler, 10)):
        # from_config carries DAWN's betas (trained_betas), so the swapped scheduler samples the trained process.
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        result = pipe(image=args.image, audio=args.audio, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(0))
        path = f"dawn_{scheduler_class.__name__}.mp4"
        export_to_video_with_audio(result.frames[0], path, audio=result.audio,
                                   audio_sampling_rate=result.audio_sampling_rate)
        print(f"{scheduler_class.__name__}: {steps} steps -> {path}")


if __name__ == "__main__":
    main()
