#!/usr/bin/env python
"""
Turn a folder of talking-head videos (any fps, any size) into the DAWN training dataset.

    python training/preprocess.py --input_dir videos/ --output_dir data/hdtf128 --resolution 128 \
        --hubert ./hubert-large-ls960-ft --num_workers 4

Writes `OUT/dataset` (`datasets.Dataset.save_to_disk`; the schema is in `diffusers_dawn/training/dataset.py`),
one shard per video in `OUT/shards` (a re-run skips the finished ones), the videos that could not be used with the
reason in `OUT/skipped.jsonl`, and a summary in `OUT/preprocess_report.json`. `--push_to_hub REPO` uploads the
dataset to the Hub.

`--hubert` is a local folder with a transformers HuBERT (the official one is facebook/hubert-large-ls960-ft);
`--tiny-hubert-seed N` uses a tiny random HuBERT instead (tests, synthetic demonstrations; built here, from
`diffusers_dawn.testing.tiny_hubert`, and handed to the library as its audio encoder). With
`--landmarks sidecar` the face is not detected: per-frame 68-point landmarks are read from `<video>.npz` (as written
by `diffusers_dawn.testing.synthetic.write_synthetic_dataset`).
"""

import argparse
import functools
import logging
import sys
from typing import List, Optional

from tqdm.auto import tqdm

from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert
from diffusers_dawn.training.dataset import PreprocessingSettings, preprocess_videos


logger = logging.getLogger("preprocess")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="Folder of videos (searched recursively).")
    parser.add_argument("--output_dir", required=True, help="Where shards, the report and the dataset go.")
    parser.add_argument("--resolution", type=int, default=128, help="Side of the square face crops.")
    audio = parser.add_mutually_exclusive_group(required=True)
    audio.add_argument("--hubert", help="Local folder of a transformers HuBERT model + feature extractor.")
    audio.add_argument("--tiny-hubert-seed", "--tiny_hubert_seed", dest="tiny_hubert_seed", type=int,
                       help="Use the tiny random HuBERT with this seed (tests only).")
    parser.add_argument("--face_backend", default="auto", help="FaceAnalyzer backend: auto, face_alignment, mediapipe.")
    parser.add_argument("--landmarks", choices=("detect", "sidecar"), default="detect",
                        help="Detect faces, or read per-frame landmarks from <video>.npz.")
    parser.add_argument("--crop_scale", type=float, default=2.0, help="Crop side / the face box's larger side.")
    parser.add_argument("--no_crop", action="store_true",
                        help="Keep whole frames (videos already framed as face crops, e.g. the synthetic ones).")
    parser.add_argument("--pose_smoothing", type=int, default=1, help="Moving-average width of the pose (odd).")
    parser.add_argument("--num_workers", type=int, default=1, help="Videos processed in parallel (processes).")
    parser.add_argument("--retry_skipped", action="store_true", help="Retry videos an earlier run skipped.")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="Upload the dataset to this repo.")
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--private", action="store_true", help="Create the Hub dataset as private.")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tiny_hubert = None
    if args.tiny_hubert_seed is not None:
        tiny_hubert = functools.partial(build_tiny_hubert, seed=args.tiny_hubert_seed)
    settings = PreprocessingSettings(
        resolution=args.resolution,
        hubert=args.hubert,
        audio_encoder=tiny_hubert,
        face_backend=args.face_backend,
        landmarks=args.landmarks,
        crop_scale=None if args.no_crop else args.crop_scale,
        pose_smoothing=args.pose_smoothing,
    )
    dataset, report = preprocess_videos(
        args.input_dir,
        args.output_dir,
        settings,
        num_workers=args.num_workers,
        retry_skipped=args.retry_skipped,
        progress=lambda items: tqdm(items, desc="Videos"),
    )
    logger.info(
        f"{len(dataset)} videos in {report.dataset_path} ({len(report.processed)} new, {len(report.reused)} reused, "
        f"{len(report.skipped)} skipped)"
    )
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub, token=args.hub_token, private=args.private)
        logger.info(f"Pushed to the Hub as {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
