"""
Draws `docs/synthetic_demo_frames.png`, the README's strip of the first command's video.

    python docs/make_synthetic_demo_frames.py [--output docs/synthetic_demo_frames.png]

Runs `diffusers-dawn generate` with its defaults (the embedded demo model on its own portrait and speech), reads
the MP4 back and tiles frames 0–36 and 40–76 (every 4th) in two rows, shown at 2×.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from diffusers_dawn.cli import main as cli_main
from diffusers_dawn.processing.video import read_video


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "synthetic_demo_frames.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "demo.mp4"
        if cli_main(["generate", "--output", str(video)]) != 0:
            return 1
        frames = read_video(video)[0]
    rows = [np.concatenate(list(frames[start : start + 40 : 4]), axis=1) for start in (0, 40)]
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    strip.resize((strip.width * 2, strip.height * 2), Image.NEAREST).save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
