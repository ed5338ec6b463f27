"""
Do the PBNets move the head and blink like the people they were trained on? Samples on held-out procedural speech.

    python benchmarks/pbnet_samples.py --model PIPELINE_DIR [--clips 8] [--frames 200] [--json]

For each held-out clip of `generate_synthetic_clip` (seeds from 100000), the pipeline's speech features drive
`pbnet_pose` and `pbnet_blink` from the clip's first-frame pose and eye ratios (measured from its drawn landmarks, as
the pipeline measures a portrait). Printed: the spread (standard deviation over frames) of sampled yaw / pitch / roll
beside the ground truth's, and blinks per minute of the sampled eye ratios beside the ground truth's, counted the same
way as `benchmarks/synthetic_lipsync.py` counts them (ratio below 3/4 of the clip's median), with their ratios, and
`head_step_ratio`: the mean frame-to-frame change of the sampled angles over the truth's (near 1 for motion as smooth as
the truth at the same spread; far above 1 for jitter).
"""

import argparse
import sys

import numpy as np
import torch

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.processing.audio import compute_hubert_features
from diffusers_dawn.processing.face import measure_face
from diffusers_dawn.testing.measures import HELD_OUT_FIRST_SEED, blinks_per_minute, print_report
from diffusers_dawn.testing.synthetic import generate_synthetic_clip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder with pbnet_pose, pbnet_blink, audio_encoder")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_FIRST_SEED)
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the samples")
    parser.add_argument("--noise-scale", type=float, default=None,
                        help="scale of the PBNets' latent noise (default: the pipeline's own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    pipe = DAWNPipeline.from_pretrained(args.model)
    noise = {} if args.noise_scale is None else {"noise_scale": args.noise_scale}
    truth_spread, sampled_spread, truth_blinks, sampled_blinks = [], [], [], []
    truth_steps, sampled_steps = [], []
    for index in range(args.clips):
        clip = generate_synthetic_clip(args.first_seed + index, num_frames=args.frames, resolution=pipe.config.resolution)
        source = measure_face(clip.landmarks[0], clip.frames[0].shape)
        with torch.no_grad():
            audio = compute_hubert_features(clip.audio, pipe.audio_encoder, pipe.feature_extractor, args.frames)[None]
        generator = torch.Generator().manual_seed(args.seed + index)
        pose = pipe.pbnet_pose.generate_states(torch.tensor(source.pose, dtype=torch.float32).view(1, 1, 6), audio,
                                               generator=generator, **noise)[0].numpy()
        blink = pipe.pbnet_blink.generate_states(torch.tensor(source.eye_ratios, dtype=torch.float32).view(1, 1, 2),
                                                 audio, generator=generator, **noise)[0].numpy()
        truth = np.stack([measure_face(points, clip.frames[0].shape).pose[:3] for points in clip.landmarks])
        truth_spread.append(truth.std(0))
        sampled_spread.append(pose[:, :3].std(0))
        # Frame-to-frame change: smooth head motion has small steps; noise of the same spread has large ones.
        truth_steps.append(np.abs(np.diff(truth, axis=0)).mean(0))
        sampled_steps.append(np.abs(np.diff(pose[:, :3], axis=0)).mean(0))
        truth_blinks.append(blinks_per_minute(clip.eye_ratios.mean(1), clip.fps))
        sampled_blinks.append(blinks_per_minute(blink.mean(1), clip.fps))

    truth_spread, sampled_spread = np.mean(truth_spread, 0), np.mean(sampled_spread, 0)
    report = {
        "model": args.model,
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "head_motion_std_truth_deg": [round(float(value), 3) for value in truth_spread],
        "head_motion_std_sampled_deg": [round(float(value), 3) for value in sampled_spread],
        "head_motion_ratio": round(float(np.mean(sampled_spread / np.maximum(truth_spread, 1e-6))), 3),
        "head_step_ratio": round(float(np.mean(np.mean(sampled_steps, 0) / np.maximum(np.mean(truth_steps, 0), 1e-6))), 3),
        "blinks_per_minute_truth": round(float(np.mean(truth_blinks)), 2),
        "blinks_per_minute_sampled": round(float(np.mean(sampled_blinks)), 2),
        "blink_rate_ratio": round(float(np.mean(sampled_blinks) / max(np.mean(truth_blinks), 1e-6)), 3),
    }
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
