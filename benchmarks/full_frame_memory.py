"""
Peak memory of `diffusers-dawn generate --full-frame` on a long clip and a large photo (tiny random-weight model,
few steps: the compositing and encoding dominate, which is what this measures).

    python benchmarks/full_frame_memory.py --seconds 60 --width 1920 --height 1080 --steps 2

Runs the command in a fresh child process and prints its peak resident memory (as the OS reports it), the video it
wrote (decoded back: size, frames) and, for comparison, the size of the full-frame video held as uint8 frames at once.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image
import soundfile
from skimage.data import astronaut, coffee

from diffusers_dawn.processing.video import probe_video


def write_inputs(folder: str, seconds: float, width: int, height: int):
    """A landscape photo with a portrait off-centre, and a syllable-like speech clip of `seconds`."""
    canvas = np.array(PIL.Image.fromarray(coffee()).resize((width, height), PIL.Image.BICUBIC))
    if width < 640 or height < 540:
        raise SystemExit("use a photo of at least 640x540 (the portrait pasted into it is 512x512)")
    # Off-centre (right of the middle, upper half), where the mediapipe detector finds the face.
    left, top = min(width - 512, int(width * 0.573)), min(height - 512, int(height * 0.185))
    canvas[top : top + 512, left : left + 512] = astronaut()
    photo = os.path.join(folder, "photo.png")
    PIL.Image.fromarray(canvas).save(photo)
    rate = 16000
    time_axis = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 180 * time_axis) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * time_axis))
    speech = os.path.join(folder, "speech.wav")
    soundfile.write(speech, voice.astype(np.float32), rate)
    return photo, speech


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="speech length (default: 60)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-size", type=int, default=None, help="passed to --max-size")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        photo, speech = write_inputs(folder, args.seconds, args.width, args.height)
        output = os.path.join(folder, "full.mp4")
        command = [
            sys.executable, "-m", "diffusers_dawn.cli", "generate", "--model", "tiny-random", "--image", photo,
            "--audio", speech, "--output", output, "--steps", str(args.steps), "--device", "cpu", "--full-frame",
        ]  # fmt: skip
        if args.max_size:
            command += ["--max-size", str(args.max_size)]
        started = time.perf_counter()
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if finished.returncode != 0:
            sys.exit(f"generate failed:\n{finished.stderr[-2000:]}")
        seconds = time.perf_counter() - started
        # ru_maxrss of the (only) child, in KiB on Linux.
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        info = probe_video(output)

    frames, width, height = info["num_frames"], info["width"], info["height"]
    all_at_once_gb = frames * width * height * 3 / 1024**3
    print(f"clip: {args.seconds:g} s speech, photo {args.width}x{args.height}, tiny-random, {args.steps} steps")
    print(f"video: {width}x{height}, {frames} frames at {info['fps']:g} fps, audio {info.get('audio_codec')}")
    print(f"wall time: {seconds:.1f} s")
    print(f"peak resident memory of the generate process: {peak_gb:.2f} GB")
    print(f"(the frames held at once would take {all_at_once_gb:.2f} GB as uint8, {4 * all_at_once_gb:.2f} GB as float32)")


if __name__ == "__main__":
    main()
