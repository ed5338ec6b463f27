"""
Can a latent flow generator (LFG) carry the lips? Reconstruction of held-out procedural talking faces.

    python benchmarks/lfg_reconstruction.py --model DIR [--clips 4] [--frames 100] [--json]
    python benchmarks/lfg_reconstruction.py --model synthetic-demo --json

`--model` is a pipeline folder (its `lfg` is used), an embedded model's name or an `LFGAutoencoder` folder. Each held-out clip of
`generate_synthetic_clip` (seeds from 100000, at the LFG's resolution) is reconstructed frame by frame with the
clip's first frame as the source and every frame as the driving frame — the motion the A2V-FDM is trained to produce.
Ground-truth and reconstructed frames are measured the same way as in `benchmarks/synthetic_lipsync.py` (MediaPipe
mesh): `mouth_correlation` (mouth-gap series, each clip centred, all clips pooled), `reconstructed_face_found_fraction`,
`eye_correlation` (the eye-ratio series alike) with the blinks per minute of truth and reconstruction, and the pixel
L1 / PSNR of the reconstructions. If the mouth (or the eyes) do not follow here, no A2V-FDM on top of this LFG can
move the lips (or blink).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_dawn import LFGAutoencoder
from diffusers_dawn.processing.face import FaceAnalyzer
from diffusers_dawn.testing.measures import (
    EYE,
    HELD_OUT_FIRST_SEED,
    blinks_per_minute,
    measure,
    pooled_correlation,
    print_report,
)
from diffusers_dawn.testing.synthetic import generate_synthetic_clip


def load_lfg(path: str) -> LFGAutoencoder:
    from diffusers_dawn.embedded import EMBEDDED_MODELS, embedded_model_path

    path = embedded_model_path(path) if path in EMBEDDED_MODELS else path
    folder = Path(path)
    subfolder = "lfg" if (folder / "lfg" / "config.json").is_file() else None
    return LFGAutoencoder.from_pretrained(path, subfolder=subfolder).eval()


@torch.no_grad()
def reconstruct(lfg: LFGAutoencoder, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Frames (F, S, S, 3) uint8 → reconstructions from the first frame, uint8."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    source = video[:1]
    outputs = []
    for start in range(0, len(video), batch_size):
        driving = video[start : start + batch_size]
        outputs.append(lfg(source.expand(len(driving), -1, -1, -1), driving).prediction.clamp(0, 1))
    prediction = torch.cat(outputs).permute(0, 2, 3, 1).numpy()
    return (prediction * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder, embedded model name or LFGAutoencoder folder")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64, help="side of the held-out clips (the LFG's training size)")
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lfg = load_lfg(args.model)
    analyzer = FaceAnalyzer(backend="mediapipe")
    truth_rows, reconstructed_rows, absolute_errors, squared_errors = [], [], [], []
    truth_blinks, reconstructed_blinks = [], []
    started = time.perf_counter()
    for index in range(args.clips):
        clip = generate_synthetic_clip(args.first_seed + index, num_frames=args.frames, resolution=args.resolution)
        reconstruction = reconstruct(lfg, clip.frames)
        difference = (reconstruction.astype(np.float64) - clip.frames) / 255
        absolute_errors.append(np.abs(difference).mean(axis=(1, 2, 3)))
        squared_errors.append((difference**2).mean(axis=(1, 2, 3)))
        truth_rows.append(measure(analyzer, clip.frames))
        reconstructed_rows.append(measure(analyzer, reconstruction))
        truth_blinks.append(blinks_per_minute(truth_rows[-1][:, EYE], clip.fps))
        reconstructed_blinks.append(blinks_per_minute(reconstructed_rows[-1][:, EYE], clip.fps))
        print(f"clip {index + 1}/{args.clips} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    correlation, measured = pooled_correlation(truth_rows, reconstructed_rows)
    eye_correlation, _ = pooled_correlation(truth_rows, reconstructed_rows, EYE)
    produced = np.concatenate(reconstructed_rows)
    frame_mse = np.concatenate(squared_errors)
    report = {
        "model": args.model,
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "mouth_correlation": round(correlation, 4),
        "frames_measured": measured,
        "reconstructed_face_found_fraction": round(float(np.mean(~np.isnan(produced[:, 0]))), 3),
        "eye_correlation": round(eye_correlation, 4),
        "blinks_per_minute_truth": round(float(np.nanmean(truth_blinks)), 2),
        "blinks_per_minute_reconstructed": round(float(np.nanmean(reconstructed_blinks)), 2),
        "l1": round(float(np.mean(np.concatenate(absolute_errors))), 4),
        "psnr_db": round(float(np.mean(10 * np.log10(1.0 / np.maximum(frame_mse, 1e-12)))), 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
