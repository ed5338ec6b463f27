"""
Lip sync, head motion and blinks of a DAWN pipeline on held-out procedural talking faces with known ground truth.

    python benchmarks/synthetic_lipsync.py --model DIR_OR_HUB_ID [--clips 4] [--frames 100] [--steps 20] --json
    python benchmarks/synthetic_lipsync.py --model synthetic-demo --first-seed 300000 --clips 8 --guidance-scale 1.5
    python benchmarks/synthetic_lipsync.py --model tiny-random      # the random-weight baseline

Each clip comes from `diffusers_dawn.testing.synthetic.generate_synthetic_clip` with seeds from `--first-seed`
(100000 by default, far from the seeds a training set written with `write_synthetic_dataset` uses). The pipeline gets
the clip's first frame (with its drawn landmarks, so no detection is involved there) and its speech; pose and blinks
come from the pipeline's PBNets; the classifier-free guidance is the pipeline config's (the model's recommendation)
unless `--guidance-scale` is given. Choose settings on other seeds (e.g. `--first-seed 300000`), not on the clips that
score the model. The ground-truth frames and the generated frames are then measured **the same
way**, with the MediaPipe face mesh (`FaceAnalyzer(backend="mediapipe")`):

- mouth opening: inner-lip gap (landmarks 62-66) divided by the face-box height;
- blinks: eye aspect ratio below 3/4 of its clip median, counted per minute (onsets; the mesh under-reads closed
  synthetic eyes, so a blink reads as 50-80 % of the open ratio);
- head motion: standard deviation over frames of yaw, pitch and roll.

Prints `mouth_correlation` (Pearson over the frames measurable in both videos, all clips together, each clip's series
centred first; 0 when the generated frames show no measurable face), `generated_face_found_fraction`,
`blink_rate_ratio` (generated / ground truth), `head_motion_ratio` (mean over the three angles) and the raw numbers,
one JSON line with `--json`. Checked on ground-truth frames: the mouth measure correlates 0.97 with the renderer's
own mouth-opening parameter, and the blink count equals the rendered blinks on the first four held-out clips.
"""

import argparse
import sys
import time
import warnings

import numpy as np
import torch

from diffusers_dawn.cli import RANDOM_DEMO_MODEL, load_pipeline, resolve_model
from diffusers_dawn.processing.face import FaceAnalyzer
from diffusers_dawn.testing.measures import (
    HELD_OUT_FIRST_SEED,
    blinks_per_minute,
    measure,
    pooled_correlation,
    print_report,
)
from diffusers_dawn.testing.synthetic import generate_synthetic_clip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=f"pipeline folder, Hub id, or {RANDOM_DEMO_MODEL}")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: the pipeline config's, the model's own)")
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED)
    parser.add_argument("--shuffle-audio", action="store_true",
                        help="animate each clip with the next clip's speech (scored against its own truth: a control)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the pipeline")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # Means over all-NaN series (no measurable face at all) are reported as NaN without numpy's warnings.
    warnings.filterwarnings("ignore", category=RuntimeWarning, message="(Mean of empty slice|Degrees of freedom)")
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load_pipeline(resolve_model(args.model))
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.config.resolution
    analyzer = FaceAnalyzer(backend="mediapipe")
    truth_rows, generated_rows, truth_blinks, generated_blinks = [], [], [], []
    started = time.perf_counter()
    clips = [generate_synthetic_clip(args.first_seed + index, num_frames=args.frames, resolution=resolution)
             for index in range(args.clips)]
    for index, clip in enumerate(clips):
        speech = clips[(index + 1) % len(clips)].audio if args.shuffle_audio else clip.audio
        result = pipe(
            image=clip.frames[0],
            face_landmarks=clip.landmarks[0],
            audio=speech,
            sampling_rate=clip.sampling_rate,
            crop="none",
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(args.seed + index),
        )
        generated = (result.frames[0] * 255).astype(np.uint8)
        truth = measure(analyzer, clip.frames[: len(generated)])
        produced = measure(analyzer, generated)
        truth_rows.append(truth)
        generated_rows.append(produced)
        truth_blinks.append(blinks_per_minute(truth[:, 1], clip.fps))
        generated_blinks.append(blinks_per_minute(produced[:, 1], clip.fps))
        print(f"clip {index + 1}/{args.clips} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    correlation, measured = pooled_correlation(truth_rows, generated_rows)
    truth, produced = np.concatenate(truth_rows), np.concatenate(generated_rows)
    generated_found = float(np.mean(~np.isnan(produced[:, 0])))
    truth_motion = np.nanstd(truth[:, 2:5], axis=0)
    generated_motion = np.nanstd(produced[:, 2:5], axis=0)
    report = {
        "model": args.model,
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "steps": args.steps,
        "guidance_scale": pipe.config.guidance_scale if args.guidance_scale is None else args.guidance_scale,
        "mouth_correlation": round(correlation, 4),
        "shuffle_audio": args.shuffle_audio,
        "frames_measured": measured,
        "generated_face_found_fraction": round(generated_found, 3),
        "frames_total": int(len(truth)),
        "blinks_per_minute_truth": round(float(np.nanmean(truth_blinks)), 2),
        "blinks_per_minute_generated": round(float(np.nanmean(generated_blinks)), 2),
        "blink_rate_ratio": round(float(np.nanmean(generated_blinks) / max(np.nanmean(truth_blinks), 1e-6)), 3),
        "head_motion_std_truth_deg": [round(float(value), 3) for value in truth_motion],
        "head_motion_std_generated_deg": [round(float(value), 3) for value in generated_motion],
        "head_motion_ratio": round(float(np.mean(generated_motion / np.maximum(truth_motion, 1e-6))), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
