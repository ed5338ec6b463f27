"""Portrait loading and cropping; MP4 writing checked by decoding it back."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dawn.processing.image import ImageLoadError, crop_to_face, image_to_tensor, load_image, resize_square
from diffusers_dawn.processing.video import VideoReadError, export_to_video_with_audio, probe_video, read_video


def test_image_inputs_all_become_the_same_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    PIL.Image.fromarray(rgb).save(path)
    expected = load_image(rgb)
    assert expected.mode == "RGB" and expected.size == (30, 20)
    for given in (str(path), PIL.Image.fromarray(rgb), rgb.astype(np.float32) / 255,
                  torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255):
        np.testing.assert_array_equal(np.asarray(load_image(given)), rgb)
    gray = load_image(rgb[..., 0])
    np.testing.assert_array_equal(np.asarray(gray)[..., 1], rgb[..., 0])


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = [255, 0, 0, 255]
    image = np.asarray(load_image(rgba))
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[3, 3], [255, 255, 255])


def test_bad_images_give_clear_errors(tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(not_image)
    with pytest.raises(ImageLoadError, match="no such image"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="must be"):
        load_image(np.zeros((4, 4, 5)))


def test_face_crop_maps_boxes_both_ways():
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    box = [150.0, 250.0, 60.0, 180.0]
    crop, transform = crop_to_face(image, box, size=128, scale=2.0)
    assert crop.size == (128, 128)
    in_crop = transform.box_to_crop(box)
    # The face is centred and its larger side is half the crop.
    assert abs((in_crop[0] + in_crop[1]) / 2 - 64) < 1.0 and abs((in_crop[2] + in_crop[3]) / 2 - 64) < 1.0
    assert abs((in_crop[3] - in_crop[2]) - 64) < 1.0
    corners = np.array([[box[0], box[2]], [box[1], box[3]]])
    np.testing.assert_allclose(transform.point_to_original(transform.point_to_crop(corners)), corners, atol=1e-9)


def test_face_crop_beyond_the_border_replicates_edges():
    array = np.zeros((100, 100, 3), np.uint8)
    array[:, :50] = 200
    crop, _ = crop_to_face(PIL.Image.fromarray(array), [0, 40, 10, 50], size=64, scale=3.0)
    assert np.asarray(crop)[:, 0].min() == 200  # left padding copies the image's left edge, not black


def test_resize_square_and_tensor():
    image = load_image(np.full((50, 80, 3), 128, np.uint8))
    square = resize_square(image, 64)
    tensor = image_to_tensor(square)
    assert tensor.shape == (1, 3, 64, 64)
    torch.testing.assert_close(tensor, torch.full_like(tensor, 128 / 255))


def smooth_frames(count, height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([
        np.stack([(x * 2 + 3 * i) % 256, (y * 2) % 256, np.full_like(x, 100 + i)], -1).astype(np.uint8)
        for i in range(count)
    ])


def test_mp4_with_speech_decodes_back(tmp_path):
    frames = smooth_frames(30, 64, 48)
    speech = 0.3 * np.sin(2 * np.pi * 300 * np.arange(20000) / 16000).astype(np.float32)  # 1.25 s > 1.2 s video
    path = export_to_video_with_audio(frames, tmp_path / "out.mp4", audio=speech)
    info = probe_video(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["fps"] == 25.0 and info["num_frames"] == 30
    assert (info["width"], info["height"]) == (48, 64)
    assert abs(info["audio_duration"] - info["video_duration"]) < 0.05  # trimmed; AAC priming < 1 frame
    decoded, fps, audio, rate = read_video(path)
    assert decoded.shape == frames.shape and fps == 25.0 and rate == 16000
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3.0


def test_float_frames_quantised_by_truncation_and_odd_sizes_padded(tmp_path):
    frames = np.full((3, 33, 31, 3), 0.999, np.float32)  # 254.7 truncates to 254
    path = export_to_video_with_audio(frames, tmp_path / "odd.mp4")
    info = probe_video(path)
    assert (info["width"], info["height"]) == (32, 34) and "audio_codec" not in info
    decoded, _, audio, _ = read_video(path)
    assert audio is None
    assert abs(decoded[:, :33, :31].mean() - 254) < 1.5


def test_read_video_resamples_frame_rate(tmp_path):
    import av

    path = tmp_path / "thirty.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=50)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(50):
            frame = np.full((32, 32, 3), i * 5, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames, fps, _, _ = read_video(path, fps=25)
    assert fps == 25 and len(frames) == 25
    # Every second source frame is kept.
    np.testing.assert_allclose(frames[:, 16, 16, 0].astype(float), np.arange(25) * 10, atol=3)


def test_corrupt_video_gives_clear_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 50)
    with pytest.raises(VideoReadError, match="cannot decode video|no video stream"):
        read_video(path)
