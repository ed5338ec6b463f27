"""
Landmark detectors for `FaceAnalyzer`. Each backend returns, per face, its 68 iBUG landmarks (68, 3) and all the
points it has (e.g. the full mesh), in image pixels.
"""

import os
from typing import List, Tuple

import numpy as np
from diffusers.utils import logging

from ..utils.errors import DAWNInputError
from ..utils.quiet import third_party_output_silenced


logger = logging.get_logger(__name__)

# MediaPipe face-mesh vertex for each of the 68 iBUG landmarks: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47
# (each from the outer or inner corner, along the upper lid, back along the lower lid), lips 48-67.
MEDIAPIPE_TO_IBUG68 = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip

Face = Tuple[np.ndarray, np.ndarray]


class FaceBackendUnavailable(DAWNInputError, RuntimeError):
    """The backend cannot run here (package missing, weights not downloadable): another `face_backend` is needed."""


class MediaPipeFaceMesh:
    """
    MediaPipe's face detector (full-range model, finds small faces in large photos) followed by its 468-point face
    mesh on each detected face; all weights ship inside the mediapipe==0.10.14 wheel, no download.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = 5, min_confidence: float = 0.5):
        try:
            with third_party_output_silenced():
                from mediapipe.python.solutions import face_detection, face_mesh
        except Exception as error:  # ImportError, or a wheel without the bundled solution graphs
            raise FaceBackendUnavailable(f"mediapipe face mesh unavailable ({error}); pip install mediapipe==0.10.14")
        self.max_faces = max_faces
        with third_party_output_silenced():
            self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=min_confidence
            )

    def _mesh_points(self, image: np.ndarray):
        height, width = image.shape[:2]
        with third_party_output_silenced():
            result = self._mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        # Normalised x, y; z is relative depth on the scale of x.
        return np.array([(p.x * width, p.y * height, p.z * width) for p in result.multi_face_landmarks[0].landmark])

    def detect(self, image: np.ndarray) -> List[Face]:
        height, width = image.shape[:2]
        with third_party_output_silenced():
            detections = self._detector.process(np.ascontiguousarray(image)).detections or []
        faces = []
        for detection in detections[: self.max_faces]:
            box = detection.location_data.relative_bounding_box
            centre_x, centre_y = (box.xmin + box.width / 2) * width, (box.ymin + box.height / 2) * height
            # The mesh model wants the face to fill a good part of its input: a square of twice the box around it.
            side = 2.0 * max(box.width * width, box.height * height)
            left, top = int(max(0, centre_x - side / 2)), int(max(0, centre_y - side / 2))
            right, bottom = int(min(width, centre_x + side / 2)), int(min(height, centre_y + side / 2))
            if right - left < 8 or bottom - top < 8:
                continue
            points = self._mesh_points(image[top:bottom, left:right])
            if points is None:
                continue
            points = points + np.array([left, top, 0.0])
            faces.append((points[list(MEDIAPIPE_TO_IBUG68)], points))
        if not faces:
            # Close-ups can defeat the detector while the mesh's own detector still finds the face.
            points = self._mesh_points(image)
            if points is not None:
                faces.append((points[list(MEDIAPIPE_TO_IBUG68)], points))
        return faces


class FaceAlignmentFAN:
    """face-alignment's 3-D FAN (68 landmarks); its weights are downloaded on first use."""

    name = "face_alignment"

    def __init__(self, device: str = "cpu"):
        try:
            import face_alignment

            self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.THREE_D, device=device)
        except Exception as error:  # ImportError, or no network for the weight download
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise FaceBackendUnavailable(
                f"face-alignment unavailable ({type(error).__name__}: {first_line}); "
                "it downloads its weights on first use, which needs network access once"
            )

    def detect(self, image: np.ndarray) -> List[Face]:
        landmarks = self._model.get_landmarks_from_image(image) or []
        return [(np.asarray(points, dtype=np.float64), np.asarray(points, dtype=np.float64)) for points in landmarks]


# Weight files face-alignment's 3-D FAN fetches into the torch hub cache (detector, landmarks, depth).
FACE_ALIGNMENT_WEIGHT_PREFIXES = ("s3fd-", "3DFAN4-", "depth-")


def face_alignment_weights_cached() -> bool:
    """Whether face-alignment's weights are already in the torch hub cache (so using it downloads nothing)."""
    import torch.hub

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return all(any(name.startswith(prefix) for name in names) for prefix in FACE_ALIGNMENT_WEIGHT_PREFIXES)


BACKENDS = {"face_alignment": FaceAlignmentFAN, "mediapipe": MediaPipeFaceMesh}
AUTO_ORDER = ("face_alignment", "mediapipe")


def select_backend(spec="auto"):
    """
    A backend instance from a name, from `"auto"` (the first in `AUTO_ORDER` that runs here; skipped ones are logged
    with their reason), or a user object with a `detect(image)` method, returned as is.
    """
    if not isinstance(spec, str):
        if not hasattr(spec, "detect"):
            raise TypeError("a face backend object needs a detect(image) method")
        if not hasattr(spec, "name"):
            spec.name = type(spec).__name__
        return spec
    if spec != "auto":
        if spec not in BACKENDS:
            raise ValueError(f"unknown face backend {spec!r}; choose from {sorted(BACKENDS)} or 'auto'")
        backend = BACKENDS[spec]()
        logger.info(f"Face analysis uses the {spec} backend.")
        return backend
    reasons = []
    for name in AUTO_ORDER:
        if name == "face_alignment" and not face_alignment_weights_cached():
            # "auto" never starts a download; face_backend="face_alignment" does, once.
            reasons.append(
                "face_alignment: its weights are not downloaded yet (use face_backend='face_alignment' once with "
                "network access)"
            )
            continue
        try:
            backend = BACKENDS[name]()
        except FaceBackendUnavailable as error:
            reasons.append(f"{name}: {error}")
            continue
        if reasons:
            # A warning, not info: the user asked for the best backend and gets a fallback.
            logger.warning(f"Face analysis uses the {name} backend; skipped " + "; ".join(reasons))
        else:
            logger.info(f"Face analysis uses the {name} backend.")
        return backend
    raise FaceBackendUnavailable("no face backend can run here: " + "; ".join(reasons))
