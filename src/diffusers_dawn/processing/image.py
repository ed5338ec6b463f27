"""Portrait input: any image form → RGB, face-centred square crops with their mapping back, tensors."""

import os
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch

ImageLike = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]


class ImageLoadError(ValueError):
    """The portrait cannot be used; the message says why and what to do."""


def load_image(image: ImageLike) -> PIL.Image.Image:
    """
    Returns an RGB PIL image from a path, a PIL image of any mode (RGBA is composited on white), a numpy array
    (H, W), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1], or a tensor (3, H, W) / (1, 3, H, W) in [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ImageLoadError(f"{path}: no such image file")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (PIL.UnidentifiedImageError, OSError) as error:
            raise ImageLoadError(f"{path}: not a readable image ({error}); pass a JPEG/PNG/WebP portrait") from None
    if torch.is_tensor(image):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ImageLoadError(f"an image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        image = tensor.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ImageLoadError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        if array.dtype != np.uint8:
            if not np.isfinite(array).all():
                raise ImageLoadError("the image contains NaN or infinite values")
            array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        image = PIL.Image.fromarray(array)
    if not isinstance(image, PIL.Image.Image):
        raise ImageLoadError(f"unsupported image input of type {type(image).__name__}; pass a path, PIL, numpy or tensor")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    elif image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = PIL.Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    return image.convert("RGB")


def resize_square(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """The official preprocessing: bilinear resize of the whole image to size × size (aspect ratio not kept)."""
    return image.resize((size, size), PIL.Image.BILINEAR)


@dataclass
class CropTransform:
    """Maps between the pixels of a square crop (of side `size`) and the original image."""

    left: float  # original-image x of the crop's left edge
    top: float  # original-image y of the crop's top edge
    side: float  # crop side in original pixels
    size: int  # crop side in output pixels

    @property
    def scale(self) -> float:
        return self.size / self.side

    def point_to_crop(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.stack([(points[..., 0] - self.left) * self.scale, (points[..., 1] - self.top) * self.scale], -1)

    def point_to_original(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.stack([points[..., 0] / self.scale + self.left, points[..., 1] / self.scale + self.top], -1)

    def box_to_crop(self, box: Sequence[float]) -> np.ndarray:
        """[x_min, x_max, y_min, y_max] in original pixels → the same box in crop pixels."""
        x_min, x_max, y_min, y_max = np.asarray(box, dtype=np.float64)[:4]
        (x0, y0), (x1, y1) = self.point_to_crop(np.array([[x_min, y_min], [x_max, y_max]]))
        return np.array([x0, x1, y0, y1])


def crop_to_face(
    image: PIL.Image.Image, face_box: Sequence[float], size: int, scale: float = 2.0
) -> Tuple[PIL.Image.Image, CropTransform]:
    """
    Cuts a square centred on the face box, `scale` × the box's larger side, resized to `size` × `size`. Parts of
    the square outside the image are filled by edge replication (no black borders for the models to animate).

    Returns:
        The crop and the [`CropTransform`] between crop and original pixels.
    """
    x_min, x_max, y_min, y_max = np.asarray(face_box, dtype=np.float64)[:4]
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(f"degenerate face box {list(face_box)[:4]}; expected [x_min, x_max, y_min, y_max]")
    side = max(x_max - x_min, y_max - y_min) * scale
    centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2
    left, top = centre_x - side / 2, centre_y - side / 2
    array = np.asarray(image)
    height, width = array.shape[:2]
    # Integer pixel window, padded by edge replication where it leaves the image.
    side_pixels = max(1, int(np.ceil(side)))
    x0, y0 = int(np.floor(left)), int(np.floor(top))
    x1, y1 = x0 + side_pixels, y0 + side_pixels
    pad = ((max(0, -y0), max(0, y1 - height)), (max(0, -x0), max(0, x1 - width)), (0, 0))
    padded = np.pad(array, pad, mode="edge")
    window = padded[y0 + pad[0][0] : y1 + pad[0][0], x0 + pad[1][0] : x1 + pad[1][0]]
    crop = PIL.Image.fromarray(window).resize((size, size), PIL.Image.BILINEAR)
    transform = CropTransform(left=float(x0), top=float(y0), side=float(side_pixels), size=size)
    return crop, transform


def image_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
