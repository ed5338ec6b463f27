"""
Shared helpers of the training tests: a tiny DAWN training dataset built from synthetic talking faces through the
real preprocessing (`training/preprocess.py`), and loading the training scripts as modules.
"""

import importlib.util
import sys
from pathlib import Path

from diffusers_dawn.testing.synthetic import write_synthetic_dataset


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DATASET_RESOLUTION = 64
TINY_DATASET_FRAMES = 38  # ~1.5 s at 25 fps
TINY_HUBERT_DIM = 32  # hidden size of diffusers_dawn.testing.tiny_hubert


def load_repository_script(relative_path: str):
    """Imports a script of the repository (e.g. `training/train_lfg.py`), which is not part of the package."""
    path = REPO_ROOT / relative_path
    name = "dawn_script_" + path.with_suffix("").relative_to(REPO_ROOT).as_posix().replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_training_script(name: str):
    """Imports `training/<name>.py` as a module."""
    return load_repository_script(f"training/{name}.py")


def write_tiny_videos(folder: Path, num_videos: int = 2, seed: int = 0) -> list:
    """`num_videos` synthetic talking-face MP4s (64 px, 38 frames) with ground-truth `.npz` files."""
    return write_synthetic_dataset(
        folder, num_videos=num_videos, num_frames=TINY_DATASET_FRAMES, resolution=TINY_DATASET_RESOLUTION, seed=seed
    )


def build_tiny_dataset(root: Path, num_videos: int = 2, seed: int = 0, extra_args=()) -> Path:
    """
    Writes synthetic videos to `root/videos` and preprocesses them (tiny HuBERT, ground-truth landmarks) into
    `root/data`. Returns the `save_to_disk` folder of the dataset.
    """
    videos = Path(root) / "videos"
    write_tiny_videos(videos, num_videos=num_videos, seed=seed)
    preprocess = load_training_script("preprocess")
    output = Path(root) / "data"
    preprocess.main(
        [
            "--input_dir", str(videos),
            "--output_dir", str(output),
            "--resolution", str(TINY_DATASET_RESOLUTION),
            "--tiny-hubert-seed", "0",
            "--landmarks", "sidecar",
            *extra_args,
        ]
    )
    return output / "dataset"
