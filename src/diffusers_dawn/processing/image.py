"""Portrait input: any image form → RGB, face-centred square crops with their mapping back, tensors."""

import os
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from ..utils.errors import DAWNInputError


ImageLike = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]


class ImageLoadError(DAWNInputError):
    """The portrait cannot be used; the message says why and what to do."""


def load_image(image: ImageLike) -> PIL.Image.Image:
    """
    Returns the portrait as an RGB PIL image.

    Args:
        image: A path to any image file Pillow reads; a PIL image of any mode (RGBA / LA / transparent palette
            images are composited on white, 16-bit grayscale is scaled to 8 bits); a numpy array (H, W), (H, W, 3)
            or (H, W, 4) as uint8, uint16 or float in [0, 1]; or a tensor (3, H, W), (1, H, W) or (1, 3, H, W) in
            [0, 1]. The EXIF orientation of files and PIL images is applied, so phone photos come out upright.

    Raises:
        ImageLoadError: missing or unreadable file, unsupported shape or type, float values outside [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ImageLoadError(f"{path}: no such image file")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (PIL.UnidentifiedImageError, OSError, ValueError) as error:
            raise ImageLoadError(f"{path}: not a readable image ({error}); pass a JPEG/PNG/WebP portrait") from None
    if torch.is_tensor(image):
        tensor = image.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ImageLoadError(
                f"an image tensor must be (3, H, W), (1, H, W) or (1, 3, H, W) in [0, 1], got {tuple(image.shape)}"
            )
        image = tensor.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(_array_to_uint8(image))
    if not isinstance(image, PIL.Image.Image):
        raise ImageLoadError(
            f"unsupported image input of type {type(image).__name__}; pass a path, PIL image, numpy array or tensor"
        )
    if image.width == 0 or image.height == 0:
        raise ImageLoadError("the image is empty (0 pixels wide or high)")
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    elif image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        image = PIL.Image.fromarray(_array_to_uint8(np.asarray(image), high_bit_depth=True))
    return image.convert("RGB")


def _array_to_uint8(array: np.ndarray, high_bit_depth: bool = False) -> np.ndarray:
    """uint8 (H, W[, 3|4]) from uint8, uint16 (or int images with values above 255) or float [0, 1] arrays."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 65535:
            raise ImageLoadError(f"integer image values must lie in [0, 65535], got [{array.min()}, {array.max()}]")
        if array.dtype == np.uint16 or (high_bit_depth and array.max() > 255):
            return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        if array.max() > 255:
            raise ImageLoadError(f"integer image values above 255 need dtype uint16, got {array.dtype}")
        return array.astype(np.uint8)
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ImageLoadError("the image contains NaN or infinite values")
    if high_bit_depth and array.max() > 1.0:  # Pillow "F" images hold 0–255 values
        array = array / 255.0
    if array.min() < -1e-3 or array.max() > 1.0 + 1e-3:
        raise ImageLoadError(
            f"float images must lie in [0, 1], got values in [{array.min():.3g}, {array.max():.3g}]; "
            "for 0–255 values pass a uint8 array, for [-1, 1] values pass (x + 1) / 2"
        )
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resize_square(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """The official preprocessing: bilinear resize of the whole image to size × size (aspect ratio not kept)."""
    return image.resize((size, size), PIL.Image.BILINEAR)


@dataclass
class CropTransform:
    """
    The similarity transform between a square crop and the image it was cut from.

    Coordinates are continuous pixel coordinates with (0, 0) at the top-left corner of the top-left pixel (Pillow's
    convention; a pixel's centre is at +0.5). Crop point (u, v) is original point (left + u / scale, top + v / scale).
    """

    left: float  # original-image x of the crop's left edge
    top: float  # original-image y of the crop's top edge
    side: float  # crop side in original pixels
    size: int  # crop side in crop pixels

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel."""
        return self.size / self.side

    @property
    def matrix(self) -> np.ndarray:
        """2×3 affine matrix mapping homogeneous crop coordinates (u, v, 1) to original coordinates (x, y)."""
        inverse_scale = 1.0 / self.scale
        return np.array([[inverse_scale, 0.0, self.left], [0.0, inverse_scale, self.top]])

    @property
    def inverse_matrix(self) -> np.ndarray:
        """2×3 affine matrix mapping original coordinates (x, y, 1) to crop coordinates (u, v)."""
        return np.array([[self.scale, 0.0, -self.left * self.scale], [0.0, self.scale, -self.top * self.scale]])

    def point_to_crop(self, points: np.ndarray) -> np.ndarray:
        """Original → crop coordinates for points (..., 2) as (x, y)."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.inverse_matrix[:, :2].T + self.inverse_matrix[:, 2]

    def point_to_original(self, points: np.ndarray) -> np.ndarray:
        """Crop → original coordinates for points (..., 2) as (u, v)."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def box_to_crop(self, box: Sequence[float]) -> np.ndarray:
        """[x_min, x_max, y_min, y_max] in original pixels → the same box in crop pixels."""
        x_min, x_max, y_min, y_max = np.asarray(box, dtype=np.float64)[:4]
        (x0, y0), (x1, y1) = self.point_to_crop(np.array([[x_min, y_min], [x_max, y_max]]))
        return np.array([x0, x1, y0, y1])

    def paste(self, crop: PIL.Image.Image, original: PIL.Image.Image) -> PIL.Image.Image:
        """
        Returns a copy of `original` with `crop` (e.g. a generated frame of the crop) resized back and pasted where
        the crop was cut; parts of the crop that lie outside the original are dropped.
        """
        if crop.size != (self.size, self.size):
            raise ValueError(f"the crop must be {self.size}x{self.size}, got {crop.size[0]}x{crop.size[1]}")
        canvas = np.array(original.convert("RGB"))
        height, width = canvas.shape[:2]
        x0, y0 = max(0, int(np.floor(self.left))), max(0, int(np.floor(self.top)))
        x1 = min(width, int(np.ceil(self.left + self.side)))
        y1 = min(height, int(np.ceil(self.top + self.side)))
        if x1 <= x0 or y1 <= y0:
            return original.convert("RGB")
        # Sample the crop at the original pixels it covers (box in crop coordinates), anti-aliased.
        (u0, v0), (u1, v1) = self.point_to_crop(np.array([[x0, y0], [x1, y1]], dtype=np.float64))
        region = crop.convert("RGB").resize((x1 - x0, y1 - y0), PIL.Image.BILINEAR, box=(u0, v0, u1, v1))
        canvas[y0:y1, x0:x1] = np.asarray(region)
        return PIL.Image.fromarray(canvas)


def crop_to_face(
    image: PIL.Image.Image,
    face_box: Sequence[float],
    size: int,
    scale: float = 2.0,
    padding_mode: str = "edge",
) -> Tuple[PIL.Image.Image, CropTransform]:
    """
    Cuts a square centred on the face box, `scale` × the box's larger side, resized (bilinear, anti-aliased) to
    `size` × `size`. The square is placed with sub-pixel precision, so the face box is exactly centred in the crop.

    Args:
        image: The portrait (see [`load_image`]).
        face_box: [x_min, x_max, y_min, y_max] in the image's pixels (extra entries are ignored).
        size: Output side in pixels (the model resolution).
        scale: Crop side / the face box's larger side.
        padding_mode: How the parts of the square outside the image are filled: "edge" replicates the border
            pixels (no black bars for the model to animate), "constant" fills with zeros (black).

    Returns:
        The crop and the [`CropTransform`] between crop and original pixels.
    """
    if padding_mode not in ("edge", "constant"):
        raise ValueError(f"padding_mode must be 'edge' or 'constant', got {padding_mode!r}")
    if scale <= 0 or size <= 0:
        raise ValueError(f"scale and size must be positive, got scale={scale}, size={size}")
    x_min, x_max, y_min, y_max = np.asarray(face_box, dtype=np.float64)[:4]
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(f"degenerate face box {list(face_box)[:4]}; expected [x_min, x_max, y_min, y_max]")
    side = max(x_max - x_min, y_max - y_min) * scale
    left, top = (x_min + x_max - side) / 2, (y_min + y_max - side) / 2
    array = np.asarray(load_image(image))
    height, width = array.shape[:2]
    # Pad by whole pixels so the (fractional) square lies inside, then resize from a fractional box.
    pad_left, pad_top = max(0, int(np.ceil(-left))), max(0, int(np.ceil(-top)))
    pad_right = max(0, int(np.ceil(left + side - width)))
    pad_bottom = max(0, int(np.ceil(top + side - height)))
    if pad_left or pad_top or pad_right or pad_bottom:
        array = np.pad(array, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), mode=padding_mode)
    padded_height, padded_width = array.shape[:2]
    # min() guards against the last ulp of float rounding pushing the box past the padded border.
    box = (
        max(0.0, left + pad_left),
        max(0.0, top + pad_top),
        min(float(padded_width), left + pad_left + side),
        min(float(padded_height), top + pad_top + side),
    )
    crop = PIL.Image.fromarray(array).resize((size, size), PIL.Image.BILINEAR, box=box)
    return crop, CropTransform(left=float(left), top=float(top), side=float(side), size=int(size))


def image_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] (no mean/std normalisation, like the official code)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def float_image_tensor(image: ImageLike):
    """
    A float RGB tensor input, (3, H, W) or (1, 3, H, W) in [0, 1], as a (1, 3, H, W) float32 tensor without the 8-bit
    rounding of [`load_image`]; `None` for any other input. Used when the image is taken as it is (no crop).
    """
    if not torch.is_tensor(image) or not image.is_floating_point():
        return None
    tensor = image.detach().cpu().float()
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[:2] != (1, 3):
        return None
    if tensor.min() < 0 or tensor.max() > 1:
        raise ImageLoadError("a float image tensor must hold values in [0, 1]")
    return tensor.contiguous()
