"""
Does an audio encoder's output carry the lip motion? A linear probe on procedural talking faces, before any training.

    python benchmarks/audio_probe.py [--train-clips 48] [--test-clips 12] [--frames 100] [--context 3] [--json]

For each candidate encoder (small random HuBERTs of `diffusers_dawn.testing.tiny_hubert`, varied in the front end's
normalisation and the number of transformer layers), features at 25 fps are computed exactly as the pipeline does
(`compute_hubert_features`), stacked over ±`--context` frames, and a ridge regression to the ground-truth mouth
opening of `generate_synthetic_clip`'s motion model is fitted on the training clips (seeds from 0) and scored on
held-out clips (seeds from 100000) by Pearson correlation. The speech energy itself (per-frame RMS, the signal the
renderer opens the mouth with) is the ceiling. A DAWN U-Net on top of the encoder can at best learn what such a probe
finds; choose the demo's encoder by it.
"""

import argparse
import json
import sys

import numpy as np
import torch

from diffusers_dawn.processing.audio import compute_hubert_features
from diffusers_dawn.testing.measures import ridge_probe, speech_and_mouth, with_context
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert


CANDIDATES = {
    "layer-norm, 2 layers": dict(feat_extract_norm="layer", num_hidden_layers=2),
    "group-norm, 2 layers": dict(feat_extract_norm="group", num_hidden_layers=2),
    "group-norm, 0 layers": dict(feat_extract_norm="group", num_hidden_layers=0),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-clips", type=int, default=48)
    parser.add_argument("--test-clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--context", type=int, default=3, help="frames of context on each side")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.0, help="ridge penalty")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the random encoders")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    splits = {
        "train": [speech_and_mouth(seed, args.frames) for seed in range(args.train_clips)],
        "test": [speech_and_mouth(100000 + seed, args.frames) for seed in range(args.test_clips)],
    }
    targets = {name: np.concatenate([mouth for _, _, mouth in clips]) for name, clips in splits.items()}
    report = {}
    for label, options in CANDIDATES.items():
        encoder, extractor = build_tiny_hubert(seed=args.seed, hidden_size=args.hidden_size, **options)
        inputs = {}
        with torch.no_grad():
            for name, clips in splits.items():
                inputs[name] = np.concatenate([
                    with_context(compute_hubert_features(audio, encoder, extractor, num_frames=args.frames).numpy(),
                                 args.context)
                    for audio, _, _ in clips
                ])  # fmt: skip
        report[label] = round(ridge_probe(inputs["train"], targets["train"], inputs["test"], targets["test"], args.alpha), 3)
        print(f"{label}: held-out r = {report[label]}", file=sys.stderr)
    energy_context = args.context + 1
    energy = {
        name: np.concatenate([with_context(envelope[:, None], energy_context) for _, envelope, _ in clips])
        for name, clips in splits.items()
    }
    report[f"speech energy (±{energy_context} frames)"] = round(
        ridge_probe(energy["train"], targets["train"], energy["test"], targets["test"], args.alpha), 3
    )
    if args.json:
        print(json.dumps({"held_out_r": report, "context": args.context, "train_clips": args.train_clips,
                          "test_clips": args.test_clips, "frames": args.frames}))
    else:
        for label, value in report.items():
            print(f"{label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
