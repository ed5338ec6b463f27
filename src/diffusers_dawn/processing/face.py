"""
Face analysis: 68 landmarks → head pose in the official units, eye aspect ratios, face and lip boxes and masks.

Detection backends are pluggable (see `face_detectors.py`); the geometry here only needs 3-D landmarks in the
68-point iBUG layout, which a user may also pass directly.

Pose. The official pipeline reads pose off a 3DMM fit (3DDFA_V2): [yaw, pitch, roll] in degrees from the rotation,
then scale and translation of the 3DMM camera in a 120 × 120 crop around the face (facts §2.3). Without that
model, the rotation here is the head frame spanned by the landmarks (x: from the right to the left eye centre; y:
from the eyes down to the mouth, orthogonalised and tilted back by the mouth's usual depth in front of the eyes;
z = x × y), expressed in a y-up camera frame like 3DDFA's and converted with the same Euler formula. Scale and
translation use the same crop (centre shifted down 0.14 × box size, side 1.58 × mean box side, 120 px):
translation is the nose centre in crop pixels (y up), scale the jaw width in crop pixels divided by
`MODEL_FACE_WIDTH`, a constant chosen so that a face filling the crop gets the official typical scale (≈ 4.8e-4).
These are approximations of the 3DMM fit, not reproductions of it; the conditions only use pose *differences* from
the portrait, in which the calibration constants cancel.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput, logging

from ..utils.errors import DAWNInputError


logger = logging.get_logger(__name__)

# 3DDFA's pose crop (facts §2.3).
POSE_CROP_SIZE = 120.0
POSE_CROP_SHIFT = 0.14
POSE_CROP_SCALE = 1.58
# Jaw width (landmark 0 to 16) of the 3DMM mean face in its model units, calibrated so that a face whose box
# fills the pose crop gets the official typical scale 4.8e-4.
MODEL_FACE_WIDTH = POSE_CROP_SIZE / POSE_CROP_SCALE / 4.8e-4

# In a frontal face the mouth lies in front of the eyes by about this fraction of their vertical distance; the
# head frame is tilted back by atan(ratio) so that a frontal face has zero pitch.
MOUTH_DEPTH_RATIO = 0.2

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
NOSE = slice(27, 36)
MOUTH = slice(48, 68)
LIP_POINTS = slice(48, 67)  # the 19 points the official mouth mask uses


class NoFaceError(DAWNInputError):
    """
    No face was found; the message says what to do. `finding` is the message without the advice, so that a caller
    with other options (the command line) can give its own.
    """

    def __init__(self, finding: str, advice: str = ""):
        super().__init__(f"{finding}; {advice}" if advice else finding)
        self.finding = finding
        self.advice = advice


@dataclass
class FaceAnalysis(BaseOutput):
    """
    Measurements of one face in one image.

    Args:
        landmarks (`np.ndarray` (68, 3)): iBUG 68 landmarks in image pixels (z in the same scale as x).
        pose (`np.ndarray` (6,)): yaw, pitch, roll (degrees), scale, tx, ty in the official units.
        eye_ratios (`np.ndarray` (2,)): left, right eye aspect ratios (3-D distances).
        face_box (`np.ndarray` (6,)): [x_min, x_max, y_min, y_max, H, W] in image pixels (official layout).
        lip_box (`np.ndarray` (4,)): [x_min, x_max, y_min, y_max] of the lip landmarks.
        num_faces (`int`): Faces the detector found (the largest is measured).
        backend (`str`): The backend that produced the landmarks.
    """

    landmarks: np.ndarray = None
    pose: np.ndarray = None
    eye_ratios: np.ndarray = None
    face_box: np.ndarray = None
    lip_box: np.ndarray = None
    num_faces: int = 1
    backend: str = "user"


@dataclass
class FaceTrack(BaseOutput):
    """Per-frame measurements of one face through a video: arrays with a leading frame axis."""

    landmarks: np.ndarray = None
    pose: np.ndarray = None
    eye_ratios: np.ndarray = None
    face_box: np.ndarray = None
    lip_box: np.ndarray = None
    detected: np.ndarray = None  # (F,) bool: False where values were interpolated from neighbours


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------
def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (y-up camera frame) whose `euler_from_rotation` is (yaw, pitch, roll), angles in degrees."""
    yaw, pitch, roll = np.radians([yaw, pitch, roll])
    # R = Rz(roll) · Ry(yaw) · Rx(pitch) gives R[2,0] = -sin(yaw); the official formula reads yaw = asin(R[2,0]),
    # so the yaw rotation enters with the opposite sign.
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(-yaw), 0, np.sin(-yaw)], [0, 1, 0], [-np.sin(-yaw), 0, np.cos(-yaw)]])
    rz = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """[yaw, pitch, roll] in degrees with the official (3DDFA) formula, including its gimbal-lock branches."""
    r = np.asarray(rotation, dtype=np.float64)
    if abs(r[2, 0]) < 0.998:
        yaw = np.arcsin(r[2, 0])
        pitch = np.arctan2(r[2, 1] / np.cos(yaw), r[2, 2] / np.cos(yaw))
        roll = np.arctan2(r[1, 0] / np.cos(yaw), r[0, 0] / np.cos(yaw))
    else:
        roll = 0.0
        if r[2, 0] > 0:
            yaw = np.pi / 2
            pitch = roll + np.arctan2(-r[0, 1], -r[0, 2])
        else:
            yaw = -np.pi / 2
            pitch = -roll + np.arctan2(r[0, 1], r[0, 2])
    return np.degrees([yaw, pitch, roll])


def head_rotation(landmarks: np.ndarray) -> np.ndarray:
    """Rotation of the head frame spanned by 68 3-D landmarks (image pixels, y down), in a y-up camera frame."""
    points = np.asarray(landmarks, dtype=np.float64)
    right_eye, left_eye = points[RIGHT_EYE].mean(0), points[LEFT_EYE].mean(0)
    mouth = points[MOUTH].mean(0)
    x_axis = left_eye - right_eye
    x_axis /= np.linalg.norm(x_axis)
    down = mouth - (left_eye + right_eye) / 2
    eyes_to_mouth = down - down.dot(x_axis) * x_axis
    eyes_to_mouth /= np.linalg.norm(eyes_to_mouth)
    forward = np.cross(x_axis, eyes_to_mouth)
    tilt = np.arctan(MOUTH_DEPTH_RATIO)
    y_axis = np.cos(tilt) * eyes_to_mouth + np.sin(tilt) * forward
    z_axis = np.cross(x_axis, y_axis)
    image_frame = np.stack([x_axis, y_axis, z_axis], axis=1)  # columns: head axes in image coordinates
    # Image coordinates (x right, y down, z away) → y-up camera coordinates, for head axes (x, down → up, z).
    flip = np.diag([1.0, -1.0, -1.0])
    return flip @ image_frame @ flip


def pose_crop(face_box: Sequence[float]):
    """3DDFA's pose crop for a face box: (left, top, side) in image pixels."""
    x_min, x_max, y_min, y_max = np.asarray(face_box, dtype=np.float64)[:4]
    size = ((x_max - x_min) + (y_max - y_min)) / 2
    centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2 + POSE_CROP_SHIFT * size
    side = POSE_CROP_SCALE * size
    return centre_x - side / 2, centre_y - side / 2, side


def estimate_pose(landmarks: np.ndarray, face_box: Sequence[float]) -> np.ndarray:
    """[yaw, pitch, roll, scale, tx, ty] in the official units from 68 3-D landmarks and the face box."""
    points = np.asarray(landmarks, dtype=np.float64)
    yaw, pitch, roll = euler_from_rotation(head_rotation(points))
    left, top, side = pose_crop(face_box)
    to_crop = POSE_CROP_SIZE / side
    jaw_width = np.linalg.norm(points[16] - points[0]) * to_crop
    nose = points[NOSE].mean(0)
    tx = (nose[0] - left) * to_crop
    ty = POSE_CROP_SIZE - (nose[1] - top) * to_crop  # 3DDFA's crop frame has y up
    return np.array([yaw, pitch, roll, jaw_width / MODEL_FACE_WIDTH, tx, ty])


def eye_aspect_ratios(landmarks: np.ndarray) -> np.ndarray:
    """
    [left, right] eye aspect ratios, as the official code: ‖p43 − p47‖ / ‖p45 − p42‖ and ‖p37 − p41‖ / ‖p39 − p36‖
    with 3-D distances (0-based iBUG indices).
    """
    p = np.asarray(landmarks, dtype=np.float64)
    left = np.linalg.norm(p[43] - p[47]) / np.linalg.norm(p[45] - p[42])
    right = np.linalg.norm(p[37] - p[41]) / np.linalg.norm(p[39] - p[36])
    return np.array([left, right])


def bounding_box(points: np.ndarray) -> np.ndarray:
    """[x_min, x_max, y_min, y_max] of (N, 2 or 3) points."""
    points = np.asarray(points, dtype=np.float64)
    return np.array([points[:, 0].min(), points[:, 0].max(), points[:, 1].min(), points[:, 1].max()])


def face_mask(face_box: Sequence[float], size: int) -> torch.Tensor:
    """
    Binary face-location mask (1, 1, size, size), exactly the official `generate_bbox_mask`: x bounds are divided by
    element 4 and y bounds by element 5 of [x_min, x_max, y_min, y_max, H, W], scaled to `size`, truncated, with
    inclusive bottom-right (+1). Unlike the official function the input is not modified.
    """
    box = np.asarray(face_box, dtype=np.float64).reshape(-1)
    if box.shape[0] != 6:
        raise ValueError(f"face_box must be [x_min, x_max, y_min, y_max, H, W], got {box.tolist()}")
    # float32 arithmetic, as the official tensor code.
    box32 = torch.tensor(box, dtype=torch.float32)
    x_min, x_max = box32[0] / box32[4] * size, box32[1] / box32[4] * size
    y_min, y_max = box32[2] / box32[5] * size, box32[3] / box32[5] * size
    left, top = int(x_min), int(y_min)
    right, bottom = int(x_max + 1), int(y_max + 1)
    mask = torch.zeros(1, 1, size, size)
    mask[:, :, max(top, 0) : max(bottom + 1, 0), max(left, 0) : max(right + 1, 0)] = 1.0
    return mask


def lip_mask(lip_box: Sequence[float], image_size: Sequence[int], latent_size: int) -> torch.Tensor:
    """
    Mouth mask (latent_size, latent_size) for the lip-weighted loss: the lip box scaled by latent_size / image
    size (width for x, height for y), truncated, inclusive bounds (facts §4.5).
    """
    x_min, x_max, y_min, y_max = np.asarray(lip_box, dtype=np.float64)[:4]
    height, width = image_size
    columns = (int(x_min / width * latent_size), int(x_max / width * latent_size))
    rows = (int(y_min / height * latent_size), int(y_max / height * latent_size))
    mask = torch.zeros(latent_size, latent_size)
    mask[max(rows[0], 0) : max(rows[1] + 1, 0), max(columns[0], 0) : max(columns[1] + 1, 0)] = 1.0
    return mask


def measure_face(
    landmarks: np.ndarray,
    image_shape,
    all_points: Optional[np.ndarray] = None,
    face_box: Optional[Sequence[float]] = None,
    **extra,
) -> FaceAnalysis:
    """
    All measurements from 68 landmarks (image pixels). The face box is `face_box` ([x_min, x_max, y_min, y_max])
    when given, else the bounding box of `all_points` (e.g. a dense mesh, which covers the forehead) or of the
    landmarks.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape == (68, 2):
        # 2-D landmarks: flat depth (pose then has no out-of-plane rotation information).
        landmarks = np.concatenate([landmarks, np.zeros((68, 1))], axis=1)
    if landmarks.shape != (68, 3):
        raise ValueError(f"landmarks must be (68, 2) or (68, 3) in the iBUG layout, got {landmarks.shape}")
    height, width = image_shape[:2]
    if face_box is None:
        face_box = bounding_box(landmarks if all_points is None else all_points)
    face_box = np.array([*np.asarray(face_box, dtype=np.float64)[:4], height, width])
    return FaceAnalysis(
        landmarks=landmarks,
        pose=estimate_pose(landmarks, face_box),
        eye_ratios=eye_aspect_ratios(landmarks),
        face_box=face_box,
        lip_box=bounding_box(landmarks[LIP_POINTS]),
        **extra,
    )


# ----------------------------------------------------------------------------------------------------------------
# Analyzer
# ----------------------------------------------------------------------------------------------------------------
class FaceAnalyzer:
    r"""
    Measures faces in images and videos.

    Landmarks or a face box may also be given per call (`analyze(image, landmarks=..., face_box=...)`), which skips
    detection.

    Args:
        backend (`str` or backend object, defaults to `"auto"`):
            `"face_alignment"` (face-alignment's 3-D FAN; downloads its weights on first use), `"mediapipe"`
            (MediaPipe face detector + 468-point face mesh, weights inside the mediapipe wheel), or `"auto"`: the
            first of these that can run here, in that order; skipped backends are logged with the reason. Any object
            with `detect(image) -> list of (landmarks68 (68, 3), points (N, 3))` in image pixels also works.
    """

    def __init__(self, backend="auto"):
        self._backend_spec = backend
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            from .face_detectors import select_backend

            # select_backend says which backend runs (and why others were skipped).
            self._backend = select_backend(self._backend_spec)
        return self._backend

    def analyze(
        self, image, landmarks: Optional[np.ndarray] = None, face_box: Optional[Sequence[float]] = None
    ) -> FaceAnalysis:
        """
        Measures the largest face of `image` (RGB uint8 array or anything `load_image` takes).

        Args:
            image: The picture.
            landmarks (`np.ndarray` (68, 2) or (68, 3), *optional*):
                iBUG-68 landmarks in image pixels; detection is skipped. 2-D landmarks carry no depth, so the pose
                then only has its in-plane part (roll) right.
            face_box (`Sequence[float]`, *optional*):
                [x_min, x_max, y_min, y_max] (extra entries ignored). It becomes the measured face box; landmarks
                (for pose and eye ratios) are still needed, so without `landmarks` the detector runs on this region
                only.
        """
        array = _as_rgb_array(image)
        user_box = None if face_box is None else np.asarray(face_box, dtype=np.float64).reshape(-1)[:4]
        box_is_valid = user_box is None or (
            user_box.shape[0] == 4 and user_box[0] < user_box[1] and user_box[2] < user_box[3]
        )
        if not box_is_valid:
            raise ValueError(f"face_box must be [x_min, x_max, y_min, y_max] with min < max, got {face_box}")
        if landmarks is not None:
            return measure_face(landmarks, array.shape, face_box=user_box, backend="user")
        faces = self._detect(array, user_box)
        if len(faces) > 1:
            logger.warning(f"{len(faces)} faces found; measuring the largest one.")
        landmarks68, points = faces[0]
        return measure_face(
            landmarks68,
            array.shape,
            all_points=points,
            face_box=user_box,
            num_faces=len(faces),
            backend=self.backend.name,
        )

    def _detect(self, array: np.ndarray, user_box: Optional[np.ndarray] = None):
        """Detected faces as (landmarks68, points) in image pixels, largest first; `NoFaceError` if there are none."""
        offset = np.zeros(3)
        search = array
        if user_box is not None:
            # Search a margin around the given box: landmark models need some context around the face.
            x_min, x_max, y_min, y_max = [int(round(value)) for value in user_box]
            pad = int(0.25 * max(x_max - x_min, y_max - y_min))
            x0, y0 = max(0, x_min - pad), max(0, y_min - pad)
            search = array[y0 : min(array.shape[0], y_max + pad), x0 : min(array.shape[1], x_max + pad)]
            offset = np.array([x0, y0, 0.0])
        faces = self.backend.detect(search)
        if not faces:
            where = "inside the given face box" if user_box is not None else "in the image"
            raise NoFaceError(
                f"no face found {where} by the {self.backend.name} backend",
                "pass a photo with a clearly visible, roughly frontal face, or give the 68 iBUG landmarks yourself "
                "(`face_landmarks=` in DAWNPipeline, `landmarks=` here) or a `face_box=` around the face",
            )
        faces = [(landmarks68 + offset, points + offset) for landmarks68, points in faces]
        return sorted(faces, key=lambda face: _box_area(bounding_box(face[1])), reverse=True)

    def analyze_video(self, frames, pose_smoothing: int = 1) -> FaceTrack:
        """
        Per-frame measurements of one face through a video.

        The face is the largest one in the first frame with a detection, then in every frame the face closest to its
        previous position (so a second face walking by does not steal the track). Frames without a detection are
        filled by linear interpolation from their neighbours (logged).

        Args:
            frames (`np.ndarray` (F, H, W, 3) uint8): The video.
            pose_smoothing (`int`, defaults to 1):
                Width in frames of a centred moving average over the pose. The default 1 keeps the raw per-frame
                values, as the official per-frame 3DDFA fits; odd values like 3 or 5 remove landmark jitter.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape}")
        if pose_smoothing < 1 or pose_smoothing % 2 == 0:
            raise ValueError(f"pose_smoothing must be an odd number of frames >= 1, got {pose_smoothing}")
        results = []
        previous_centre = None
        for frame in frames:
            try:
                faces = self._detect(frame)
            except NoFaceError:
                results.append(None)
                continue
            if previous_centre is None:
                chosen = faces[0]
            else:
                chosen = min(faces, key=lambda face: np.linalg.norm(_box_centre(face[1]) - previous_centre))
            previous_centre = _box_centre(chosen[1])
            measured = measure_face(
                chosen[0], frame.shape, all_points=chosen[1], num_faces=len(faces), backend=self.backend.name
            )
            results.append(measured)
        detected = np.array([result is not None for result in results])
        if not detected.any():
            raise NoFaceError("no face found in any frame of the video; pass a video that shows a face")
        if not detected.all():
            missing = int((~detected).sum())
            logger.warning(f"No face in {missing} of {len(frames)} frames; interpolated from neighbours.")
        fields = {}
        for name in ("landmarks", "pose", "eye_ratios", "face_box", "lip_box"):
            known = np.stack([getattr(result, name) for result in results if result is not None])
            fields[name] = _interpolate_missing(known, detected)
        fields["pose"] = smooth_over_time(fields["pose"], pose_smoothing)
        return FaceTrack(detected=detected, **fields)


def smooth_over_time(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0 over `window` (odd) frames; the ends are padded with their edge values."""
    if window == 1:
        return values
    half = window // 2
    padded = np.concatenate([np.repeat(values[:1], half, 0), values, np.repeat(values[-1:], half, 0)])
    cumulative = np.concatenate([np.zeros_like(values[:1]), np.cumsum(padded, axis=0)])
    return (cumulative[window:] - cumulative[:-window]) / window


def _interpolate_missing(known: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Fills undetected frames by linear interpolation over time (held constant beyond the ends)."""
    times = np.flatnonzero(detected)
    flat = known.reshape(len(known), -1)
    everything = np.arange(len(detected))
    filled = np.stack([np.interp(everything, times, flat[:, column]) for column in range(flat.shape[1])], axis=1)
    return filled.reshape((len(detected),) + known.shape[1:])


def _box_area(box: np.ndarray) -> float:
    return float((box[1] - box[0]) * (box[3] - box[2]))


def _box_centre(points: np.ndarray) -> np.ndarray:
    """Centre (x, y) of the bounding box of `points`."""
    box = bounding_box(points)
    return np.array([(box[0] + box[1]) / 2, (box[2] + box[3]) / 2])


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    from .image import load_image

    return np.asarray(load_image(image))
