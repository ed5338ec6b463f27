"""Cross-identity reenactment: lips from the speech, head motion and blinks from a driving video.

    python examples/pose_from_driving_video.py --model DIR --image me.jpg --audio speech.wav --driving-video other.mp4
"""

import argparse

import torch

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.processing.video import export_to_video_with_audio


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--driving-video", required=True)
    parser.add_argument("--output", default="dawn_reenacted.mp4")
    args = parser.parse_args()

    pipe = DAWNPipeline.from_pretrained(args.model)
    result = pipe(image=args.image, audio=args.audio, driving_video=args.driving_video,
                  generator=torch.Generator().manual_seed(0))
    export_to_video_with_audio(result.frames[0], args.output, audio=result.audio,
                               audio_sampling_rate=result.audio_sampling_rate)
    print(f"wrote {args.output}; pose range (deg): yaw {result.pose[:, 0].min():.1f}..{result.pose[:, 0].max():.1f}")


if __name__ == "__main__":
    main()
