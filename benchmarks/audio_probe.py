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
from diffusers_dawn.testing.synthetic import SAMPLES_PER_FRAME, sample_face_motion, speech_envelope, synthesize_speech
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert


CANDIDATES = {
    "layer-norm, 2 layers": dict(feat_extract_norm="layer", num_hidden_layers=2),
    "group-norm, 2 layers": dict(feat_extract_norm="group", num_hidden_layers=2),
    "group-norm, 0 layers": dict(feat_extract_norm="group", num_hidden_layers=0),
}


def speech_and_mouth(seed: int, num_frames: int):
    """A clip's audio and ground-truth mouth opening, drawn as `generate_synthetic_clip` draws them (no rendering)."""
    audio_rng, motion_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    audio = synthesize_speech(audio_rng, num_frames * SAMPLES_PER_FRAME)
    envelope = speech_envelope(audio, num_frames)
    return audio, envelope, sample_face_motion(motion_rng, envelope)["mouth_opening"]


def with_context(features: np.ndarray, context: int) -> np.ndarray:
    """(F, D) → (F, (2 · context + 1) · D): each frame with its neighbours (edges repeated)."""
    padded = np.pad(features, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[offset : offset + len(features)] for offset in range(2 * context + 1)], axis=1)


def ridge_probe(train_x, train_y, test_x, test_y, alpha: float) -> float:
    """Held-out Pearson r of a ridge regression (features standardised on the training set)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_x = np.concatenate([train_x, np.ones((len(train_x), 1))], axis=1)
    test_x = np.concatenate([test_x, np.ones((len(test_x), 1))], axis=1)
    regulariser = alpha * np.eye(train_x.shape[1])
    regulariser[-1, -1] = 0.0
    weights = np.linalg.solve(train_x.T @ train_x + regulariser, train_x.T @ train_y)
    return float(np.corrcoef(test_x @ weights, test_y)[0, 1])


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
