"""
Per-video time of `diffusers-dawn generate --batch` against one `generate` run per video (each run starts Python,
imports the libraries and loads the model again; the batch does that once).

    python benchmarks/batch_throughput.py --videos 4 --seconds 1 --steps 2 [--model tiny-random|DIR] [--full-frame]

Both are run as the user would run them (fresh processes, wall clock), side by side on the same inputs; prints the
seconds per video of each and their ratio (batch / separate: below 1 means the batch is faster per video).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image
import soundfile
from skimage.data import astronaut


def run(command):
    started = time.perf_counter()
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.0, help="speech length per video")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--full-frame", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        PIL.Image.fromarray(astronaut()).save(os.path.join(folder, "face.png"))
        rate = 16000
        for index in range(args.videos):
            time_axis = np.arange(int(args.seconds * rate)) / rate
            voice = 0.3 * np.sin(2 * np.pi * (150 + 20 * index) * time_axis)
            soundfile.write(os.path.join(folder, f"speech{index}.wav"), voice.astype(np.float32), rate)
        common = ["--model", args.model, "--steps", str(args.steps), "--device", "cpu"]
        common += ["--full-frame"] if args.full_frame else []
        base = [sys.executable, "-m", "diffusers_dawn.cli", "generate"]

        separate = 0.0
        for index in range(args.videos):
            separate += run(base + common + [
                "--image", os.path.join(folder, "face.png"), "--audio", os.path.join(folder, f"speech{index}.wav"),
                "--output", os.path.join(folder, f"separate{index}.mp4"), "--seed", str(index),
            ])  # fmt: skip

        jobs = os.path.join(folder, "jobs.csv")
        with open(jobs, "w") as handle:
            handle.write("image,audio,output,seed\n")
            for index in range(args.videos):
                handle.write(f"face.png,speech{index}.wav,batch{index}.mp4,{index}\n")
        batch = run(base + common + ["--batch", jobs])

    print(f"{args.videos} videos of {args.seconds:g} s, model {args.model}, {args.steps} steps"
          + (", full frame" if args.full_frame else ""))  # fmt: skip
    print(f"separate runs: {separate / args.videos:.2f} s per video ({separate:.1f} s in all)")
    print(f"one batch run: {batch / args.videos:.2f} s per video ({batch:.1f} s in all)")
    print(f"ratio batch / separate: {batch / separate:.2f}")


if __name__ == "__main__":
    main()
