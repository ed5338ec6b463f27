"""
The DAWN training dataset: one row per talking-head video, with everything every training stage reads.

Schema ([`DAWN_DATASET_FEATURES`]):

| column | type | content |
|---|---|---|
| `video_id` | string | unique name (the video's path relative to the input folder) |
| `num_frames` | int32 | F, the frames at 25 fps (floor(duration × 25)) |
| `fps` | float32 | always 25 |
| `resolution` | int32 | S, the side of the square frames |
| `frames` | Sequence(Image) | F RGB frames, S × S, face-centred crop (one crop for the whole video) |
| `audio` | Sequence(float32) | 16 kHz mono speech, F × 640 samples |
| `hubert` | Array2D((None, H)) | HuBERT features per frame (official recipe, see `processing/audio.py`) |
| `pose` | Array2D((None, 6)) | [yaw, pitch, roll, scale, tx, ty] per frame, official units |
| `eye_ratios` | Array2D((None, 2)) | [left, right] eye aspect ratios per frame |
| `face_box` | Array2D((None, 6)) | [x_min, x_max, y_min, y_max, H, W] per frame, in crop pixels |
| `lip_box` | Array2D((None, 4)) | [x_min, x_max, y_min, y_max] per frame, in crop pixels |

[`preprocess_videos`] builds it from a folder of videos (resumable, parallel over videos, bad videos skipped and
reported); [`load_dawn_dataset`] reads it back from a `save_to_disk` folder or the Hub.
"""

import json
import logging
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import PIL.Image

from ..processing.audio import (
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    compute_hubert_features,
    num_video_frames,
)
from ..processing.face import FaceAnalyzer, FaceTrack, measure_face
from ..processing.image import crop_to_face
from ..processing.video import read_video
from ..utils.io import atomic_folder, atomic_write_text


logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
SHARDS_FOLDER = "shards"
DATASET_FOLDER = "dataset"
SKIPPED_FILE = "skipped.jsonl"
REPORT_FILE = "preprocess_report.json"
# A video shorter than this cannot give a PBNet / A2V training window worth having.
MIN_FRAMES = 2


def dawn_dataset_features(hubert_dim: int = 1024) -> datasets.Features:
    """The DAWN training schema with `hubert_dim`-wide speech features (1024 for hubert-large-ls960-ft)."""
    return datasets.Features(
        {
            "video_id": datasets.Value("string"),
            "num_frames": datasets.Value("int32"),
            "fps": datasets.Value("float32"),
            "resolution": datasets.Value("int32"),
            "frames": datasets.Sequence(datasets.Image()),
            "audio": datasets.Sequence(datasets.Value("float32")),
            "hubert": datasets.Array2D((None, hubert_dim), "float32"),
            "pose": datasets.Array2D((None, 6), "float32"),
            "eye_ratios": datasets.Array2D((None, 2), "float32"),
            "face_box": datasets.Array2D((None, 6), "float32"),
            "lip_box": datasets.Array2D((None, 4), "float32"),
        }
    )


DAWN_DATASET_FEATURES = dawn_dataset_features()


def check_dawn_dataset(dataset: datasets.Dataset, columns: Optional[Sequence[str]] = None) -> None:
    """Raises a `ValueError` naming the missing columns if `dataset` lacks any of `columns` (default: all)."""
    wanted = list(DAWN_DATASET_FEATURES) if columns is None else list(columns)
    missing = [name for name in wanted if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the dataset lacks the column(s) {missing} of the DAWN training schema; build it with "
            "`python training/preprocess.py --input_dir VIDEOS --output_dir OUT`"
        )


def load_dawn_dataset(
    path_or_repo: Union[str, os.PathLike],
    split: str = "train",
    revision: Optional[str] = None,
    token: Optional[str] = None,
    columns: Optional[Sequence[str]] = None,
) -> datasets.Dataset:
    """
    Loads a DAWN training dataset.

    Args:
        path_or_repo: A folder written by `Dataset.save_to_disk` (e.g. `OUT/dataset` of `training/preprocess.py`, or
            `OUT` itself), or a Hub dataset repository id.
        split: Split to read from the Hub (ignored for folders).
        revision, token: Hub revision and token.
        columns: Columns the caller needs (default: the whole schema); a clear error names the missing ones.
    """
    path = Path(path_or_repo)
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and (path / DATASET_FOLDER / "dataset_info.json").exists():
            path = path / DATASET_FOLDER
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(str(path_or_repo), split=split, revision=revision, token=token)
    check_dawn_dataset(dataset, columns)
    return dataset


def keep_frames_encoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """
    `dataset` with its `frames` column left as encoded images (`{"bytes", "path"}`, read with [`decode_frame`]), so
    that reading a row does not decode every frame of the video.
    """
    return dataset.cast_column("frames", datasets.List(datasets.Image(decode=False)))


def decode_frame(frame) -> PIL.Image.Image:
    """A frame of the `frames` column as a PIL image, whether decoded already or stored as `{"bytes", "path"}`."""
    if isinstance(frame, PIL.Image.Image):
        return frame
    if isinstance(frame, dict):
        if frame.get("bytes") is not None:
            import io

            return PIL.Image.open(io.BytesIO(frame["bytes"]))
        if frame.get("path"):
            return PIL.Image.open(frame["path"])
    raise TypeError(f"cannot read a frame from {type(frame).__name__}; expected a PIL image or an encoded image dict")


# ----------------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------------
class VideoSkipped(Exception):
    """A video that cannot become a training row; the message is the reason logged and reported."""


def landmark_track(frames: np.ndarray, landmarks: np.ndarray) -> FaceTrack:
    """A [`FaceTrack`] from given per-frame 68-point landmarks (image pixels), as if every frame was detected."""
    if landmarks.ndim != 3 or landmarks.shape[1] != 68 or landmarks.shape[0] != len(frames):
        raise VideoSkipped(
            f"the landmark file holds {landmarks.shape} landmarks; expected ({len(frames)}, 68, 2 or 3), one set per "
            "frame at 25 fps"
        )
    measured = [measure_face(points, frame.shape) for points, frame in zip(landmarks, frames)]
    fields = {
        name: np.stack([getattr(face, name) for face in measured])
        for name in ("landmarks", "pose", "eye_ratios", "face_box", "lip_box")
    }
    return FaceTrack(detected=np.ones(len(frames), dtype=bool), **fields)


def read_sidecar_landmarks(video_path: Union[str, os.PathLike]) -> np.ndarray:
    """Per-frame landmarks from the `.npz` next to a video (key `landmarks`, (F, 68, 2|3), image pixels, 25 fps)."""
    sidecar = Path(video_path).with_suffix(".npz")
    if not sidecar.exists():
        raise VideoSkipped(f"no landmark file {sidecar.name} next to the video (needed with landmarks='sidecar')")
    with np.load(sidecar) as data:
        if "landmarks" not in data:
            raise VideoSkipped(f"{sidecar.name} has no `landmarks` array")
        return np.asarray(data["landmarks"], dtype=np.float64)


def preprocess_video(
    video_path: Union[str, os.PathLike],
    resolution: int,
    face_analyzer: Optional[FaceAnalyzer],
    audio_encoder,
    feature_extractor,
    crop_scale: Optional[float] = 2.0,
    landmarks: Optional[np.ndarray] = None,
    pose_smoothing: int = 1,
    video_id: Optional[str] = None,
) -> Dict:
    """
    Turns one talking-head video into a row of the DAWN training schema.

    The video is decoded at 25 fps; frames beyond the audio are dropped (and audio beyond the frames), so that
    `num_frames = floor(duration × 25)` of the shorter stream. The face is measured in the original frames (pose and
    eye ratios do not change under the crop: they are measured relative to the face box), then every frame is cut
    with the square that `crop_to_face` centres on the first frame's face box, and the boxes are mapped into it.

    Args:
        video_path: Any video PyAV reads, with an audio track.
        resolution: Side of the square output frames.
        face_analyzer: Measures the face when `landmarks` is not given.
        audio_encoder, feature_extractor: A transformers `HubertModel` and its feature extractor.
        crop_scale: Crop side / the face box's larger side (`crop_to_face`'s `scale`); `None` keeps the whole frame
            (the centred square of its longer side), for videos already framed as the model's input.
        landmarks: (F, 68, 2|3) landmarks in the original frames at 25 fps, instead of running face detection.
        pose_smoothing: Moving-average width of the detected pose (see `FaceAnalyzer.analyze_video`).
        video_id: Name of the row (default: the file name without extension).

    Raises:
        VideoSkipped: the video cannot be used; the message says why.
    """
    video_path = Path(video_path)
    try:
        frames, _, audio, _ = read_video(video_path, fps=VIDEO_FPS)
    except ValueError as error:
        raise VideoSkipped(str(error)) from None
    if audio is None:
        raise VideoSkipped("the video has no (decodable) audio track; DAWN trains on speech + frames")
    num_frames = min(len(frames), num_video_frames(len(audio)))
    if num_frames < MIN_FRAMES:
        raise VideoSkipped(f"only {num_frames} frame(s) with audio at 25 fps; at least {MIN_FRAMES} are needed")
    frames = frames[:num_frames]
    audio = np.asarray(audio[: num_frames * SAMPLES_PER_FRAME], dtype=np.float32)
    if len(audio) < num_frames * SAMPLES_PER_FRAME:
        # AAC priming can leave the audio a few samples short of the last frame.
        audio = np.pad(audio, (0, num_frames * SAMPLES_PER_FRAME - len(audio)))

    try:
        if landmarks is not None:
            track = landmark_track(frames, np.asarray(landmarks)[:num_frames])
        else:
            if face_analyzer is None:
                raise ValueError("pass a FaceAnalyzer or per-frame landmarks")
            track = face_analyzer.analyze_video(frames, pose_smoothing=pose_smoothing)
    except VideoSkipped:
        raise
    except ValueError as error:  # NoFaceError and malformed landmarks
        raise VideoSkipped(f"face analysis failed: {error}") from None

    if crop_scale is None:
        # The square on the whole frame: `crop_to_face` with the frame as the box and scale 1.
        height, width = frames.shape[1:3]
        reference_box, crop_scale = np.array([0.0, width, 0.0, height]), 1.0
    else:
        reference_box = track.face_box[0]
    cropped_frames = []
    transform = None
    for frame in frames:
        crop, transform = crop_to_face(PIL.Image.fromarray(frame), reference_box, resolution, scale=crop_scale)
        cropped_frames.append(crop)
    face_box = np.stack([np.concatenate([transform.box_to_crop(box), [resolution, resolution]]) for box in track.face_box])
    lip_box = np.stack([transform.box_to_crop(box) for box in track.lip_box])

    hubert = compute_hubert_features(audio, audio_encoder, feature_extractor, num_frames=num_frames)
    return {
        "video_id": video_id or video_path.stem,
        "num_frames": num_frames,
        "fps": float(VIDEO_FPS),
        "resolution": int(resolution),
        "frames": cropped_frames,
        "audio": audio,
        "hubert": hubert.numpy().astype(np.float32),
        "pose": track.pose.astype(np.float32),
        "eye_ratios": track.eye_ratios.astype(np.float32),
        "face_box": face_box.astype(np.float32),
        "lip_box": lip_box.astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------------------------
# A folder of videos
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PreprocessingSettings:
    """
    Everything a worker process needs to rebuild the analysers and process videos (picklable).

    Args:
        resolution: Side of the square output frames.
        hubert: Local folder of a transformers HuBERT (model + preprocessor config), e.g. hubert-large-ls960-ft.
        audio_encoder: Instead of `hubert`, a function returning `(HubertModel, feature extractor)`, called once in
            each worker process; it must pickle (a module-level function or a `functools.partial` of one), e.g. a
            random tiny HuBERT for tests and synthetic demonstrations.
        face_backend: `FaceAnalyzer` backend name.
        landmarks: `"detect"` (run the face analyser) or `"sidecar"` (read `<video>.npz`'s `landmarks`, e.g. the
            ground truth of `testing/synthetic.py`).
        crop_scale, pose_smoothing: See [`preprocess_video`].
    """

    resolution: int = 128
    hubert: Optional[str] = None
    audio_encoder: Optional[Callable[[], Tuple[Any, Any]]] = None
    face_backend: str = "auto"
    landmarks: str = "detect"
    crop_scale: Optional[float] = 2.0
    pose_smoothing: int = 1

    def __post_init__(self):
        if (self.hubert is None) == (self.audio_encoder is None):
            raise ValueError("give exactly one of `hubert` (a local HuBERT folder) and `audio_encoder`")
        if self.landmarks not in ("detect", "sidecar"):
            raise ValueError(f"landmarks must be 'detect' or 'sidecar', got {self.landmarks!r}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {self.resolution}")

    def build_audio_encoder(self):
        """(HubertModel in eval mode, feature extractor)."""
        if self.audio_encoder is not None:
            audio_encoder, feature_extractor = self.audio_encoder()
            return audio_encoder.eval(), feature_extractor
        from transformers import AutoFeatureExtractor, HubertModel

        return HubertModel.from_pretrained(self.hubert).eval(), AutoFeatureExtractor.from_pretrained(self.hubert)

    def hubert_dim(self) -> int:
        if self.audio_encoder is not None:
            return self.build_audio_encoder()[0].config.hidden_size
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.hubert).hidden_size


def find_videos(input_dir: Union[str, os.PathLike]) -> List[Path]:
    """Video files under `input_dir` (recursively), sorted."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir} is not a folder; pass the folder holding the talking-head videos")
    return sorted(path for path in input_dir.rglob("*") if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file())


def video_id_for(path: Path, input_dir: Path) -> str:
    """The relative path without extension, with `/` → `__` (unique within the folder, usable as a folder name)."""
    return "__".join(path.relative_to(input_dir).with_suffix("").parts)


_WORKER_STATE: Dict = {}


def _worker_models(settings: PreprocessingSettings):
    # Each process builds the HuBERT and the face analyser once and keeps them for its next videos.
    key = json.dumps(asdict(settings), sort_keys=True, default=repr)  # repr: the audio encoder function
    if _WORKER_STATE.get("key") != key:
        audio_encoder, feature_extractor = settings.build_audio_encoder()
        analyzer = FaceAnalyzer(settings.face_backend) if settings.landmarks == "detect" else None
        _WORKER_STATE.update(key=key, models=(analyzer, audio_encoder, feature_extractor))
    return _WORKER_STATE["models"]


def _process_one(video_path: str, video_id: str, shard_dir: str, settings: PreprocessingSettings) -> Tuple[str, Optional[str]]:
    """Processes one video into its shard folder. Returns (video_id, None) or (video_id, reason it was skipped)."""
    import torch

    torch.set_num_threads(1)  # parallelism is over videos
    try:
        analyzer, audio_encoder, feature_extractor = _worker_models(settings)
        landmarks = read_sidecar_landmarks(video_path) if settings.landmarks == "sidecar" else None
        row = preprocess_video(
            video_path,
            settings.resolution,
            analyzer,
            audio_encoder,
            feature_extractor,
            crop_scale=settings.crop_scale,
            landmarks=landmarks,
            pose_smoothing=settings.pose_smoothing,
            video_id=video_id,
        )
        features = dawn_dataset_features(audio_encoder.config.hidden_size)
        # Written beside its final place and renamed: a shard folder exists only once it is complete.
        with atomic_folder(shard_dir) as partial:
            datasets.Dataset.from_list([row], features=features).save_to_disk(partial)
        return video_id, None
    except VideoSkipped as reason:
        return video_id, str(reason)
    except Exception as error:  # any other failure of one video must not stop the run
        logger.debug(traceback.format_exc())
        return video_id, f"unexpected {type(error).__name__}: {error}"


@dataclass
class PreprocessingReport:
    """What a [`preprocess_videos`] run did; also written to `OUT/preprocess_report.json`."""

    processed: List[str] = field(default_factory=list)
    reused: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    dataset_path: Optional[str] = None


def preprocess_videos(
    input_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    settings: PreprocessingSettings,
    num_workers: int = 1,
    retry_skipped: bool = False,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Tuple[datasets.Dataset, PreprocessingReport]:
    """
    Preprocesses every video under `input_dir` into the DAWN training dataset at `output_dir/dataset`.

    Each video becomes its own shard (`output_dir/shards/<video_id>`), written atomically, so an interrupted run
    resumes where it stopped: finished videos are not processed again. Videos that cannot be used are skipped with
    the reason logged and appended to `output_dir/skipped.jsonl` (they are not retried unless `retry_skipped`).
    The dataset is assembled from all shards at the end (rows sorted by `video_id`).

    Args:
        input_dir: Folder of talking-head videos (searched recursively).
        output_dir: Where shards, the report and the dataset go.
        settings: See [`PreprocessingSettings`].
        num_workers: Processes working on different videos at the same time (1: in this process).
        retry_skipped: Try the videos that an earlier run skipped again.
        progress: Optional wrapper of the iterator over finished videos (e.g. `tqdm`).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    shards_dir = output_dir / SHARDS_FOLDER
    shards_dir.mkdir(parents=True, exist_ok=True)
    skipped_path = output_dir / SKIPPED_FILE
    earlier_skips = {}
    if skipped_path.exists() and not retry_skipped:
        for line in skipped_path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                earlier_skips[entry["video_id"]] = entry["reason"]
    elif skipped_path.exists():
        skipped_path.unlink()

    report = PreprocessingReport(skipped=dict(earlier_skips))
    todo = []
    for path in find_videos(input_dir):
        video_id = video_id_for(path, input_dir)
        if (shards_dir / video_id).is_dir():
            report.reused.append(video_id)
        elif video_id not in earlier_skips:
            todo.append((str(path), video_id, str(shards_dir / video_id)))
    logger.info(f"{len(todo)} video(s) to process, {len(report.reused)} already done, {len(earlier_skips)} skipped before")

    def record(video_id: str, reason: Optional[str]) -> None:
        if reason is None:
            report.processed.append(video_id)
            return
        logger.warning(f"Skipping video {video_id}: {reason}")
        report.skipped[video_id] = reason
        with open(skipped_path, "a") as handle:
            handle.write(json.dumps({"video_id": video_id, "reason": reason}) + "\n")

    wrap = progress or (lambda iterable: iterable)
    if num_workers <= 1:
        for item in wrap(todo):
            record(*_process_one(*item, settings))
    else:
        import multiprocessing

        # "spawn": forked copies of a process that already ran torch / PyAV threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=context) as pool:
            futures = [pool.submit(_process_one, *item, settings) for item in todo]
            for future in wrap(as_completed(futures)):
                record(*future.result())

    dataset = assemble_shards(output_dir)
    report.dataset_path = str(output_dir / DATASET_FOLDER)
    atomic_write_text(output_dir / REPORT_FILE, json.dumps(asdict(report), indent=2))
    return dataset, report


def assemble_shards(output_dir: Union[str, os.PathLike]) -> datasets.Dataset:
    """Concatenates the finished shards of `output_dir` (sorted by video id) and saves them to `output_dir/dataset`."""
    output_dir = Path(output_dir)
    # Hidden names are unfinished writes (see `atomic_folder`).
    shards = (output_dir / SHARDS_FOLDER).iterdir()
    shard_dirs = sorted(path for path in shards if path.is_dir() and not path.name.startswith("."))
    if not shard_dirs:
        raise RuntimeError(
            f"no video of the input could be processed (see {output_dir / SKIPPED_FILE} for the reasons)"
        )
    dataset = datasets.concatenate_datasets([datasets.load_from_disk(str(path)) for path in shard_dirs])
    target = output_dir / DATASET_FOLDER
    with atomic_folder(target) as partial:
        dataset.save_to_disk(partial)
    return datasets.load_from_disk(str(target))
