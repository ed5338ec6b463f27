"""Paste-back compositing on a 1920×1080 photo, independent of any model weights."""

import numpy as np
import PIL.Image
import pytest
from skimage.data import astronaut, coffee

from diffusers_dawn.processing.compositing import CompositedVideo, FrameCompositor, full_frame_size
from diffusers_dawn.processing.image import crop_to_face


WIDTH, HEIGHT = 1920, 1080
CROP = 128
FEATHER = 0.1
# Face boxes [x_min, x_max, y_min, y_max]: off-centre (right upper third), and near the bottom-left corner so that
# the crop square (2 × the box) reaches beyond the photo on two sides.
OFF_CENTRE = (1250.0, 1530.0, 260.0, 560.0)
NEAR_BORDER = (40.0, 300.0, 820.0, 1060.0)


@pytest.fixture(scope="module")
def photo():
    background = PIL.Image.fromarray(coffee()).resize((WIDTH, HEIGHT), PIL.Image.BICUBIC)
    canvas = np.array(background)
    face = np.asarray(PIL.Image.fromarray(astronaut()).resize((700, 700), PIL.Image.BICUBIC))
    canvas[100:800, 1050:1750] = face
    return canvas


def compositor_for(photo, face_box, **options):
    crop, transform = crop_to_face(PIL.Image.fromarray(photo), face_box, size=CROP)
    source = np.asarray(crop, dtype=np.float32) / 255.0
    return FrameCompositor.from_photo(photo, transform, source, **options), source


def outside_box(compositor):
    """Pixels whose centre lies outside the paste-back box."""
    x0, y0, x1, y1 = compositor.box
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    return ~((xs > x0) & (xs < x1) & (ys > y0) & (ys < y1))


def random_crops(count, seed=0):
    return np.random.default_rng(seed).random((count, CROP, CROP, 3), dtype=np.float32)


@pytest.mark.parametrize("face_box", [OFF_CENTRE, NEAR_BORDER], ids=["off-centre", "near-border"])
def test_frames_have_the_photo_size_and_outside_the_box_are_the_photo_exactly(photo, face_box):
    compositor, _ = compositor_for(photo, face_box, feather=FEATHER)
    frames = compositor.composite(random_crops(3))
    assert frames.shape == (3, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    outside = outside_box(compositor)
    assert outside.mean() > 0.8
    for frame in frames:
        np.testing.assert_array_equal(frame[outside], photo[outside])
    # Inside the box, beyond the feather, the generated crops show (the frames differ from each other).
    assert np.abs(frames[0].astype(int) - frames[1]).max() > 100


@pytest.mark.parametrize("face_box", [OFF_CENTRE, NEAR_BORDER], ids=["off-centre", "near-border"])
@pytest.mark.parametrize("color_match", [False, True], ids=["plain", "color-match"])
def test_the_unchanged_crop_gives_back_the_photo(photo, face_box, color_match):
    compositor, source = compositor_for(photo, face_box, feather=FEATHER, color_match=color_match)
    frame = compositor.composite(np.stack([source, source]))[1]
    assert np.abs(frame.astype(int) - photo).max() <= 2


def test_without_detail_the_unchanged_crop_is_only_an_upsampled_copy(photo):
    # What the detail layer buys: a 128 px crop alone cannot reproduce a 560 px region of a detailed photo.
    compositor, source = compositor_for(photo, OFF_CENTRE, feather=FEATHER, keep_detail=False)
    frame = compositor.composite(source[None])[0]
    assert np.abs(frame.astype(int) - photo).max() > 20


def _seam_band(compositor):
    """Pixels within the feather inside the box edges that lie in the photo."""
    x0, y0, x1, y1 = compositor.box
    feather = FEATHER * (x1 - x0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    core = (xs > x0 + feather) & (xs < x1 - feather) & (ys > y0 + feather) & (ys < y1 - feather)
    return inside & ~core


def _gradient(image):
    """Largest absolute forward difference (horizontal or vertical, any channel) at each pixel."""
    image = image.astype(np.float64)
    dx = np.zeros(image.shape[:2])
    dy = np.zeros(image.shape[:2])
    dx[:, :-1] = np.abs(np.diff(image, axis=1)).max(axis=-1)
    dy[:-1, :] = np.abs(np.diff(image, axis=0)).max(axis=-1)
    return np.maximum(dx, dy)


@pytest.mark.parametrize("face_box", [OFF_CENTRE, NEAR_BORDER], ids=["off-centre", "near-border"])
def test_the_seam_is_no_steeper_than_the_photo_around_the_box(photo, face_box):
    # A generated crop that differs a lot from the photo along the box edge: the crop mirrored and brightened.
    compositor, source = compositor_for(photo, face_box, feather=FEATHER)
    generated = np.clip(source[:, ::-1] * 0.7 + 0.35, 0.0, 1.0)
    band = _seam_band(compositor)
    photo_gradient = _gradient(photo)[band].max()

    frame = compositor.composite(generated[None])[0]
    assert _gradient(frame)[band].max() <= photo_gradient

    # The check has teeth: pasting the same crop without a soft edge leaves a seam steeper than the photo.
    hard, _ = compositor_for(photo, face_box, feather=0.0)
    hard_frame = hard.composite(generated[None])[0]
    assert _gradient(hard_frame)[band].max() > photo_gradient


def test_a_face_at_the_border_is_generated_up_to_the_photo_edge(photo):
    # The crop was padded beyond the photo; where the box passes the photo's edge there is no seam to blend.
    compositor, _ = compositor_for(photo, NEAR_BORDER, feather=FEATHER, keep_detail=False)
    x0, y0, x1, y1 = compositor.box
    assert x0 < 0 and y1 > HEIGHT
    grey = np.full((1, CROP, CROP, 3), 0.5, dtype=np.float32)
    frame = compositor.composite(grey)[0]
    middle_row = int((y0 + y1) / 2)
    middle_column = int((x0 + x1) / 2)
    assert (frame[middle_row, 0] == 127).all()  # left photo edge, inside the box
    assert (frame[HEIGHT - 1, middle_column] == 127).all()  # bottom photo edge, inside the box


def test_max_size_caps_the_long_side_and_sizes_are_even(photo):
    assert full_frame_size(1920, 1080) == (1920, 1080)
    assert full_frame_size(1921, 1081) == (1920, 1080)
    assert full_frame_size(1920, 1080, max_size=1280) == (1280, 720)
    assert full_frame_size(1080, 1920, max_size=1000) == (562, 1000)
    assert full_frame_size(640, 480, max_size=1280) == (640, 480)  # never upscaled

    compositor, source = compositor_for(photo, OFF_CENTRE, feather=FEATHER, max_size=1280)
    frame = compositor.composite(source[None])[0]
    assert frame.shape == (720, 1280, 3)
    # The unchanged crop gives back the photo at the reduced size.
    reduced = np.asarray(PIL.Image.fromarray(photo).resize((1280, 720), PIL.Image.LANCZOS))
    assert np.abs(frame.astype(int) - reduced).max() <= 2

    odd = photo[:1079, :1919]
    crop, transform = crop_to_face(PIL.Image.fromarray(odd), OFF_CENTRE, size=CROP)
    trimmed = FrameCompositor.from_photo(odd, transform, np.asarray(crop) / 255.0).composite(random_crops(1))
    assert trimmed.shape == (1, 1078, 1918, 3)


def test_composited_video_chunks_equal_one_pass(photo):
    compositor, _ = compositor_for(photo, OFF_CENTRE, feather=FEATHER, color_match=True)
    crops = random_crops(7, seed=1)
    video = CompositedVideo(crops, compositor, chunk_size=3)
    chunks = list(video.iter_chunks())
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert video.shape == (7, HEIGHT, WIDTH, 3) and len(video) == 7
    np.testing.assert_array_equal(np.concatenate(chunks), compositor.composite(crops))
    np.testing.assert_array_equal(video[4], chunks[1][1])


def test_bad_feather_is_refused(photo):
    with pytest.raises(ValueError, match="feather"):
        compositor_for(photo, OFF_CENTRE, feather=0.8)


def test_a_phone_photo_is_composited_upright(photo, tmp_path):
    # Stored landscape with EXIF orientation 6 ("rotate 90° clockwise to view"): the video is portrait.
    stored = PIL.Image.fromarray(photo)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = PIL.Image.fromarray(photo).transpose(PIL.Image.ROTATE_270)
    crop, transform = crop_to_face(upright, (300.0, 560.0, 1250.0, 1530.0), size=CROP)
    compositor = FrameCompositor.from_photo(str(path), transform, np.asarray(crop) / 255.0)
    assert compositor.size == (HEIGHT, WIDTH)
    assert compositor.composite(random_crops(1)).shape == (1, WIDTH, HEIGHT, 3)
