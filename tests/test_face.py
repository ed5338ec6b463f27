"""Face geometry against known answers (a 3-D face rotated by known angles) and detection on a real portrait."""

import logging

import numpy as np
import pytest
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

from diffusers_dawn.processing import face_detectors
from diffusers_dawn.processing.face import (
    FaceAnalyzer,
    NoFaceError,
    euler_from_rotation,
    eye_aspect_ratios,
    face_mask,
    head_rotation,
    lip_mask,
    measure_face,
    rotation_from_euler,
    smooth_over_time,
)


def synthetic_face(eye_ratio=0.3):
    """A symmetric 68-point 3-D face (frontal, image coordinates: x right, y down, z away from the camera), its mouth
    in front of the eyes by 0.2 of their vertical distance (the anthropometric ratio the pose estimate assumes)."""
    points = np.zeros((68, 3))
    jaw_angle = np.linspace(-np.pi * 0.45, np.pi * 0.45, 17)
    jaw = [60 * np.sin(jaw_angle), 55 * np.cos(jaw_angle) - 10, 25 * np.abs(np.sin(jaw_angle))]
    points[0:17] = np.stack(jaw, 1)
    points[17:22] = [[-45 + 8 * i, -45, -5] for i in range(5)]
    points[22:27] = [[13 + 8 * i, -45, -5] for i in range(5)]
    points[27:31] = [[0, -35 + 8 * i, -10 - 4 * i] for i in range(4)]
    points[31:36] = [[-12 + 6 * i, 0, -12] for i in range(5)]
    for start, centre in ((36, -25.0), (42, 25.0)):
        half_width, half_height = 10.0, 10.0 * eye_ratio
        # corner, two upper-lid points, corner, two lower-lid points (iBUG order)
        xs = [-half_width, -half_width / 3, half_width / 3, half_width, half_width / 3, -half_width / 3]
        ys = [0, -half_height, -half_height, 0, half_height, half_height]
        points[start : start + 6] = [[centre + x, -25 + y, 0] for x, y in zip(xs, ys)]
    mouth = np.linspace(0, 2 * np.pi, 13)[:-1]
    points[48:60] = np.stack([20 * np.cos(mouth), 25 + 8 * np.sin(mouth), -10 + 0 * mouth], 1)
    inner = np.linspace(0, 2 * np.pi, 9)[:-1]
    points[60:68] = np.stack([12 * np.cos(inner), 25 + 3 * np.sin(inner), -10 + 0 * inner], 1)
    return points


def place(points, yaw, pitch, roll, scale=1.0, offset=(200.0, 150.0)):
    flip = np.diag([1.0, -1.0, -1.0])  # image frame <-> y-up camera frame
    rotation = flip @ rotation_from_euler(yaw, pitch, roll) @ flip
    return (points @ rotation.T) * scale + np.array([*offset, 0.0])


@pytest.mark.parametrize("angles", [(0, 0, 0), (20, 0, 0), (0, -15, 0), (0, 0, 10), (25, 10, -8), (-30, 12, 5)])
def test_pose_recovers_known_rotation(angles):
    landmarks = place(synthetic_face(), *angles)
    np.testing.assert_allclose(euler_from_rotation(head_rotation(landmarks)), angles, atol=0.5)


def test_scale_and_translation_follow_the_face():
    base = measure_face(place(synthetic_face(), 0, 0, 0), (400, 400))
    bigger = measure_face(place(synthetic_face(), 0, 0, 0, scale=2.0), (400, 400))
    shifted = measure_face(place(synthetic_face(), 0, 0, 0, offset=(230.0, 150.0)), (400, 400))
    # Scale and translation live in a crop that follows the face box, so they are invariant to zoom and shift.
    np.testing.assert_allclose(bigger.pose, base.pose, atol=1e-6)
    np.testing.assert_allclose(shifted.pose, base.pose, atol=1e-6)
    assert 2e-4 < base.pose[3] < 1e-3  # the official order of magnitude (4.8e-4 typical)
    assert 30 < base.pose[4] < 90 and 30 < base.pose[5] < 90


def test_euler_round_trip_and_gimbal_lock():
    for angles in [(10, 20, 30), (-40, 5, -60), (80, -30, 15)]:
        np.testing.assert_allclose(euler_from_rotation(rotation_from_euler(*angles)), angles, atol=1e-9)
    locked = euler_from_rotation(rotation_from_euler(90, 30, 0))
    assert locked[0] == pytest.approx(90) and locked[2] == 0.0
    # In gimbal lock only pitch - roll is defined; the official branch sets roll = 0 and keeps the rotation.
    np.testing.assert_allclose(rotation_from_euler(*locked), rotation_from_euler(90, 30, 0), atol=1e-9)


def test_eye_aspect_ratio_known_value():
    for ratio in (0.1, 0.3, 0.45):
        face = place(synthetic_face(eye_ratio=ratio), 15, -10, 5, scale=1.7)
        # lids at ±10·ratio, corners at ±10: opening / width = ratio for both eyes, whatever the head pose
        np.testing.assert_allclose(eye_aspect_ratios(face), [ratio, ratio], rtol=1e-9)


def test_face_mask_matches_the_official_function(fixtures_dir):
    io = load_file(fixtures_dir / "e2e_tiny_sample_one_video_io.safetensors")
    box = io["in.sample_bbox"].reshape(6).numpy().copy()
    mask = face_mask(box, 128)
    np.testing.assert_array_equal(mask.numpy(), io["trace.bbox_mask"].numpy())
    np.testing.assert_array_equal(box, io["in.sample_bbox"].reshape(6).numpy())  # input untouched


def test_lip_mask_on_known_box():
    mask = lip_mask([40.0, 80.0, 90.0, 100.0], (128, 128), 32)
    rows, columns = np.nonzero(mask.numpy())
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (22, 25, 10, 20)


def test_given_landmarks_skip_detection():
    landmarks = place(synthetic_face(), 10, 0, 0)
    analysis = FaceAnalyzer(backend="mediapipe").analyze(np.zeros((400, 400, 3), np.uint8), landmarks=landmarks)
    assert analysis.backend == "user"
    assert analysis.pose[0] == pytest.approx(10, abs=0.5)


def test_given_face_box_is_kept_and_pose_uses_it():
    landmarks = place(synthetic_face(), 0, 0, 0)
    box = [120.0, 280.0, 70.0, 230.0]
    image = np.zeros((300, 400, 3), np.uint8)
    analysis = FaceAnalyzer(backend="mediapipe").analyze(image, landmarks=landmarks, face_box=box)
    np.testing.assert_array_equal(analysis.face_box, [*box, 300, 400])
    # Nose centre (x = 200) in the 120 px pose crop centred on the box: the middle column.
    assert analysis.pose[4] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="min < max"):
        FaceAnalyzer().analyze(image, landmarks=landmarks, face_box=[280, 120, 70, 230])


class ScriptedBackend:
    """Returns prepared faces frame by frame (None = no face), keyed on the frame's fill value."""

    name = "scripted"

    def __init__(self, faces_by_value):
        self.faces_by_value = faces_by_value

    def detect(self, image):
        return self.faces_by_value[int(image[0, 0, 0])]


def test_video_tracks_the_same_face_and_smooths_pose():
    big_left = place(synthetic_face(), 10, 0, 0, offset=(100.0, 150.0))
    small_right = place(synthetic_face(), -20, 0, 0, scale=0.5, offset=(300.0, 150.0))
    bigger_right = place(synthetic_face(), -20, 0, 0, scale=1.5, offset=(300.0, 150.0))
    backend = ScriptedBackend(
        {
            0: [(big_left, big_left)],
            1: [(small_right, small_right), (big_left, big_left)],
            2: [(bigger_right, bigger_right), (big_left, big_left)],  # now the other face is larger
            3: [],
        }
    )
    frames = np.zeros((5, 300, 400, 3), np.uint8)
    frames[:, 0, 0, 0] = [0, 1, 2, 3, 2]
    track = FaceAnalyzer(backend=backend).analyze_video(frames)
    assert track.detected.tolist() == [True, True, True, False, True]
    np.testing.assert_allclose(track.pose[:, 0], 10.0, atol=0.5)  # always the left face (yaw 10), never the right
    smoothed = FaceAnalyzer(backend=backend).analyze_video(frames, pose_smoothing=3)
    np.testing.assert_allclose(smoothed.pose[2], track.pose[1:4].mean(0))
    with pytest.raises(ValueError, match="odd"):
        FaceAnalyzer(backend=backend).analyze_video(frames, pose_smoothing=2)


def test_smoothing_known_values():
    values = np.array([[0.0], [3.0], [6.0], [0.0]])
    np.testing.assert_allclose(smooth_over_time(values, 3)[:, 0], [1.0, 3.0, 3.0, 2.0])


class Unavailable:
    def __init__(self):
        raise face_detectors.FaceBackendUnavailable("weights not downloadable")


def test_auto_backend_falls_back_and_says_why(monkeypatch, caplog):
    monkeypatch.setitem(face_detectors.BACKENDS, "first", Unavailable)
    monkeypatch.setitem(face_detectors.BACKENDS, "second", lambda: ScriptedBackend({}))
    monkeypatch.setattr(face_detectors, "AUTO_ORDER", ("first", "second"))
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            backend = face_detectors.select_backend("auto")
    finally:
        diffusers_logging.disable_propagation()
    assert isinstance(backend, ScriptedBackend)
    assert "first: weights not downloadable" in caplog.text
    monkeypatch.setitem(face_detectors.BACKENDS, "second", Unavailable)
    with pytest.raises(face_detectors.FaceBackendUnavailable, match="no face backend"):
        face_detectors.select_backend("auto")


def test_auto_backend_never_starts_a_face_alignment_download(monkeypatch, tmp_path):
    import torch.hub

    attempts = []

    class Recording:
        name = "face_alignment"

        def __init__(self):
            attempts.append(1)

    monkeypatch.setitem(face_detectors.BACKENDS, "face_alignment", Recording)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backend = face_detectors.select_backend("auto")  # empty cache: straight to mediapipe
    assert backend.name == "mediapipe" and attempts == []
    (tmp_path / "checkpoints").mkdir()
    for name in ("s3fd-619a316812.pth", "3DFAN4-7835d9f11d.pth.tar", "depth-2a464da4ea.pth.tar"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert isinstance(face_detectors.select_backend("auto"), Recording) and attempts == [1]


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(backend="mediapipe")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def test_real_portrait(analyzer, astronaut):
    analysis = analyzer.analyze(astronaut)
    assert analysis.num_faces == 1 and analysis.backend == "mediapipe"
    x_min, x_max, y_min, y_max, height, width = analysis.face_box
    assert (height, width) == (512, 512)
    assert 150 < x_min < x_max < 300 and 50 < y_min < y_max < 200  # her face, upper middle of the picture
    assert abs(analysis.pose[0]) < 25 and abs(analysis.pose[1]) < 25
    assert np.all((analysis.eye_ratios > 0.15) & (analysis.eye_ratios < 0.5))
    assert x_min < analysis.lip_box[0] < analysis.lip_box[1] < x_max


def test_no_face_is_a_clear_error(analyzer):
    with pytest.raises(NoFaceError, match="no face found"):
        analyzer.analyze(np.full((256, 256, 3), 127, np.uint8))


def test_several_faces_use_the_largest(analyzer, astronaut, caplog):
    import PIL.Image

    canvas = np.full((512, 1024, 3), 255, np.uint8)
    canvas[:, :512] = astronaut
    small = np.asarray(PIL.Image.fromarray(astronaut).resize((384, 384)))
    canvas[128:512, 600:984] = small
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            analysis = analyzer.analyze(canvas)
    finally:
        diffusers_logging.disable_propagation()
    assert analysis.num_faces == 2
    assert analysis.face_box[1] < 512  # the large face on the left
    assert "2 faces found" in caplog.text


def test_video_track_interpolates_missed_frames(analyzer, astronaut):
    frames = np.stack([astronaut, np.full_like(astronaut, 127), astronaut])
    track = analyzer.analyze_video(frames)
    assert track.detected.tolist() == [True, False, True]
    np.testing.assert_allclose(track.pose[1], (track.pose[0] + track.pose[2]) / 2)
    with pytest.raises(NoFaceError):
        analyzer.analyze_video(frames[1:2])
