"""Portrait loading (every input form → the same RGB image), the official squash resize, face crops and paste-back."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dawn.processing.image import ImageLoadError, crop_to_face, image_to_tensor, load_image, resize_square


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_image_inputs_all_become_the_same_rgb(tmp_path):
    rgb = random_rgb(20, 30)
    path = tmp_path / "face.png"
    PIL.Image.fromarray(rgb).save(path)
    for given in (
        rgb,
        str(path),
        path,
        PIL.Image.fromarray(rgb),
        rgb.astype(np.float32) / 255,
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255,
    ):
        image = load_image(given)
        assert image.mode == "RGB" and image.size == (30, 20)
        np.testing.assert_array_equal(np.asarray(image), rgb)


def test_grayscale_and_high_bit_depth_inputs():
    gray = random_rgb(6, 5)[..., 0]
    for given in (gray, gray[..., None], PIL.Image.fromarray(gray), torch.from_numpy(gray)[None].float() / 255):
        np.testing.assert_array_equal(np.asarray(load_image(given)), np.repeat(gray[..., None], 3, axis=2))
    sixteen_bit = gray.astype(np.uint16) * 257  # 8-bit value v is 16-bit value 257·v
    np.testing.assert_array_equal(np.asarray(load_image(sixteen_bit))[..., 0], gray)
    pil_sixteen = PIL.Image.fromarray(sixteen_bit)  # mode "I;16"
    assert pil_sixteen.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(load_image(pil_sixteen))[..., 0], gray)


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = [255, 0, 0, 255]
    rgba[2:] = [0, 0, 255, 0]  # fully transparent blue
    image = np.asarray(load_image(rgba))
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[3, 3], [255, 255, 255])
    palette = PIL.Image.fromarray(rgba).convert("P")
    palette.info["transparency"] = palette.getpixel((3, 3))
    np.testing.assert_array_equal(np.asarray(load_image(palette))[3, 3], [255, 255, 255])


def test_exif_orientation_is_applied(tmp_path):
    tall = random_rgb(40, 20)
    stored = PIL.Image.fromarray(tall)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.size == (40, 20)  # upright: width and height swapped


def test_bad_images_give_clear_errors(tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(not_image)
    truncated = tmp_path / "cut.png"
    PIL.Image.fromarray(random_rgb(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="no such image"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="must be"):
        load_image(np.zeros((4, 4, 5)))
    with pytest.raises(ImageLoadError, match=r"in \[0, 1\]"):
        load_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(ImageLoadError, match=r"in \[0, 1\]"):
        load_image(torch.full((3, 4, 4), -0.5))
    with pytest.raises(ImageLoadError, match="unsupported image input"):
        load_image(42)


def test_resize_square_squashes_like_the_official_preprocessing():
    image = load_image(np.full((50, 80, 3), 128, np.uint8))
    square = resize_square(image, 64)
    assert square.size == (64, 64)
    tensor = image_to_tensor(square)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.full_like(tensor, 128 / 255))
    # Left half dark, right half bright stays split in the middle after squashing the width.
    split = np.zeros((50, 80, 3), np.uint8)
    split[:, 40:] = 255
    squashed = np.asarray(resize_square(load_image(split), 64))
    assert squashed[:, :31].max() == 0 and squashed[:, 33:].min() == 255


def test_face_crop_centres_the_face_and_maps_both_ways():
    image = PIL.Image.fromarray(random_rgb(300, 400, seed=1))
    box = [150.3, 250.8, 60.1, 180.6]
    crop, transform = crop_to_face(image, box, size=128, scale=2.0)
    assert crop.size == (128, 128)
    in_crop = transform.box_to_crop(box)
    # The face is exactly centred and its larger side (height, 120.5 px) is half the crop.
    np.testing.assert_allclose([(in_crop[0] + in_crop[1]) / 2, (in_crop[2] + in_crop[3]) / 2], [64, 64], atol=1e-9)
    np.testing.assert_allclose(in_crop[3] - in_crop[2], 64, atol=1e-9)
    corners = np.array([[box[0], box[2]], [box[1], box[3]]])
    np.testing.assert_allclose(transform.point_to_original(transform.point_to_crop(corners)), corners, atol=1e-9)
    # The affine matrices are each other's inverse and agree with the point mappings.
    homogeneous = np.vstack([transform.matrix, [0, 0, 1]]) @ np.vstack([transform.inverse_matrix, [0, 0, 1]])
    np.testing.assert_allclose(homogeneous, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(transform.matrix @ [10.0, 20.0, 1.0], transform.point_to_original([10.0, 20.0]))


def test_face_crop_content_matches_the_mapping():
    # A smooth image (value = linear function of the position) lets us check where crop pixels come from.
    y, x = np.mgrid[0:200, 0:300].astype(np.float64)
    ramp = np.stack([x / 300 * 255, y / 200 * 255, np.full_like(x, 90)], -1).round().astype(np.uint8)
    crop, transform = crop_to_face(PIL.Image.fromarray(ramp), [120, 160, 70, 110], size=64, scale=2.5)
    centres = np.stack(np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5), -1)  # (v, u) grid of (u, v)
    original = transform.point_to_original(centres)
    expected_red = (original[..., 0] - 0.5) / 300 * 255  # pixel i holds the value of its centre i + 0.5
    assert np.abs(np.asarray(crop)[..., 0] - expected_red).max() < 1.5


def test_face_crop_beyond_the_border_pads_with_edges_or_zeros():
    array = np.zeros((100, 100, 3), np.uint8)
    array[:, :50] = 200
    box = [0, 40, 10, 50]
    edge_crop, transform = crop_to_face(PIL.Image.fromarray(array), box, size=64, scale=3.0)
    assert transform.left < 0  # the square leaves the image on the left
    assert np.asarray(edge_crop)[:, 0].min() == 200  # left padding copies the image's left edge
    zero_crop, _ = crop_to_face(PIL.Image.fromarray(array), box, size=64, scale=3.0, padding_mode="constant")
    assert np.asarray(zero_crop)[:, 0].max() == 0
    with pytest.raises(ValueError, match="padding_mode"):
        crop_to_face(PIL.Image.fromarray(array), box, size=64, padding_mode="reflect101")
    with pytest.raises(ValueError, match="degenerate face box"):
        crop_to_face(PIL.Image.fromarray(array), [10, 10, 5, 20], size=64)


def test_paste_back_restores_the_original():
    y, x = np.mgrid[0:120, 0:160]
    smooth = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    original = PIL.Image.fromarray(smooth)
    # Upsampling crop (face region 48 px → 96 px) so that pasting back loses almost nothing.
    crop, transform = crop_to_face(original, [60, 84, 40, 64], size=96, scale=2.0)
    restored = np.asarray(transform.paste(crop, original)).astype(int)
    assert np.abs(restored - smooth).max() <= 2
    # Pasting a different crop changes only the crop's footprint.
    pasted = np.asarray(transform.paste(PIL.Image.new("RGB", (96, 96), (255, 0, 0)), original))
    assert (pasted[40:64, 60:84] == [255, 0, 0]).all()
    np.testing.assert_array_equal(pasted[:10], smooth[:10])
    with pytest.raises(ValueError, match="96x96"):
        transform.paste(PIL.Image.new("RGB", (32, 32)), original)
