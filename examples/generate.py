"""Generate a talking-head video from one portrait and one speech clip.

    python examples/generate.py --model path/to/converted-dawn-128 --image me.jpg --audio speech.wav --output me.mp4
"""

import argparse

import torch

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.processing.video import export_to_video_with_audio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted pipeline folder or Hub id")
    parser.add_argument("--image", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--output", default="dawn.mp4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = DAWNPipeline.from_pretrained(args.model, dtype=dtype).to(device)
    result = pipe(
        image=args.image,
        audio=args.audio,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(args.seed),
    )
    export_to_video_with_audio(result.frames[0], args.output, fps=result.fps, audio=result.audio,
                               audio_sampling_rate=result.audio_sampling_rate)
    print(f"wrote {args.output}: {len(result.frames[0])} frames at {result.fps} fps")


if __name__ == "__main__":
    main()
