"""
Shared helpers of the training tests: a tiny DAWN training dataset built from synthetic talking faces through the
real preprocessing (`preprocess_videos`, what `training/preprocess.py` runs), with a tiny random HuBERT.
"""

import functools
from pathlib import Path

from diffusers_dawn.testing.synthetic import write_synthetic_dataset
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert
from diffusers_dawn.training.dataset import PreprocessingSettings, preprocess_videos


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DATASET_RESOLUTION = 64
TINY_DATASET_FRAMES = 38  # ~1.5 s at 25 fps
TINY_HUBERT_DIM = 32  # hidden size of diffusers_dawn.testing.tiny_hubert


def write_tiny_videos(folder: Path, num_videos: int = 2, seed: int = 0) -> list:
    """`num_videos` synthetic talking-face MP4s (64 px, 38 frames) with ground-truth `.npz` files."""
    return write_synthetic_dataset(
        folder, num_videos=num_videos, num_frames=TINY_DATASET_FRAMES, resolution=TINY_DATASET_RESOLUTION, seed=seed
    )


def preprocess_tiny_videos(videos: Path, output: Path, resolution: int = TINY_DATASET_RESOLUTION, crop: bool = True,
                           num_workers: int = 1):
    """
    Preprocesses `videos` into `output` as `training/preprocess.py --tiny-hubert-seed 0 --landmarks sidecar` does
    (the tiny HuBERT with seed 0, the landmarks of the `.npz` files). Returns `(dataset, report)`.
    """
    settings = PreprocessingSettings(
        resolution=resolution,
        audio_encoder=functools.partial(build_tiny_hubert, seed=0),
        landmarks="sidecar",
        crop_scale=2.0 if crop else None,
    )
    return preprocess_videos(videos, output, settings, num_workers=num_workers)


def build_tiny_dataset(root: Path, num_videos: int = 2, seed: int = 0, resolution: int = TINY_DATASET_RESOLUTION) -> Path:
    """
    Writes synthetic videos to `root/videos` and preprocesses them (tiny HuBERT, ground-truth landmarks) into
    `root/data`. Returns the `save_to_disk` folder of the dataset.
    """
    videos = Path(root) / "videos"
    write_tiny_videos(videos, num_videos=num_videos, seed=seed)
    output = Path(root) / "data"
    preprocess_tiny_videos(videos, output, resolution=resolution)
    return output / "dataset"
