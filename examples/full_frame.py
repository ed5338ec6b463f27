"""Full-frame talking-head video from any photo: the generated face crop pasted back into the whole picture.

    python examples/full_frame.py --model path/to/converted-dawn-128 --image photo.jpg --audio speech.wav \
        --output full.mp4 [--max-size 1280] [--feather 0.1] [--color-match] [--preview before_after.png]

`--model tiny-random` runs the tiny random-weight pipeline (no download; the face is scrambled, not lip-synced).
The frames are composited and encoded a chunk at a time, so long clips on large photos stay within a few GB.
"""

import argparse

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from diffusers_dawn.cli import load_pipeline
from diffusers_dawn.processing.video import export_to_video_with_audio


def before_after(photo: PIL.Image.Image, frame: np.ndarray, box, width: int = 480) -> PIL.Image.Image:
    """The photo and one full-frame output side by side, the paste-back box outlined on the output."""
    scale = width / photo.width
    height = round(photo.height * scale)
    after = PIL.Image.fromarray(frame).resize((width, height), PIL.Image.LANCZOS)
    frame_scale = width / frame.shape[1]
    outline = [coordinate * frame_scale for coordinate in box]
    PIL.ImageDraw.Draw(after).rectangle(outline, outline=(255, 210, 0), width=2)
    canvas = PIL.Image.new("RGB", (2 * width + 12, height), (255, 255, 255))
    canvas.paste(photo.resize((width, height), PIL.Image.LANCZOS), (0, 0))
    canvas.paste(after, (width + 12, 0))
    return canvas


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted pipeline folder, Hub id, or tiny-random")
    parser.add_argument("--image", required=True, help="any photo with a face (EXIF rotation is applied)")
    parser.add_argument("--audio", required=True)
    parser.add_argument("--output", default="full_frame.mp4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=None, help="cap the long side of the video")
    parser.add_argument("--feather", type=float, default=0.1, help="soft edge, fraction of the box side")
    parser.add_argument("--color-match", action="store_true")
    parser.add_argument("--preview", help="also write the photo and one output frame side by side (PNG)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(args.model).to(device)
    result = pipe(
        image=args.image,
        audio=args.audio,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        paste_back=True,
        feather=args.feather,
        color_match=args.color_match,
        max_size=args.max_size,
    )
    video = result.frames[0]  # a CompositedVideo: full frames made on demand, chunk by chunk
    export_to_video_with_audio(
        video.iter_chunks(), args.output, fps=result.fps, audio=result.audio,
        audio_sampling_rate=result.audio_sampling_rate,
    )  # fmt: skip
    frames, height, width = video.shape[:3]
    print(f"wrote {args.output}: {frames} frames of {width}x{height} at {result.fps:g} fps")
    # The crops and where they came from stay available for compositing another way.
    print(f"crops {result.crops.shape[1:]}, cut from a {result.photo.size[0]}x{result.photo.size[1]} photo at "
          f"left={result.crop_box.left:.0f}, top={result.crop_box.top:.0f}, side={result.crop_box.side:.0f}")  # fmt: skip

    if args.preview:
        before_after(result.photo, video[len(video) // 2], video.compositor.box).save(args.preview, optimize=True)
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
