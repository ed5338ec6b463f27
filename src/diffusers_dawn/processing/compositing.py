"""
Paste-back: generated face crops resized back into their box of the original photo and blended in with a feathered
mask, giving frames at the photo's own resolution. Frames are composited a chunk at a time, so a long clip on a
large photo never holds all its full-size frames at once.
"""

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .image import CropTransform, load_image


# Largest crop-pixel change (in [0, 1] units, max over the channels) up to which the photo's own fine detail is kept
# inside the box; where the generated frame differs more (the face moved), the generated pixels are shown alone.
DETAIL_TOLERANCE = 0.08
# Bounds of the per-channel contrast gain of colour matching, so a flat ring cannot blow the crop up.
COLOR_GAIN_RANGE = (0.5, 2.0)


def full_frame_size(width: int, height: int, max_size: Optional[int] = None) -> Tuple[int, int]:
    """
    The output frame size for a `width` × `height` photo: its own size, or scaled down (aspect kept) so that the long
    side is at most `max_size`; both sides rounded down to even numbers, as H.264 in yuv420p needs.
    """
    if max_size is not None:
        if max_size < 2:
            raise ValueError(f"max_size must be at least 2 pixels, got {max_size}")
        factor = min(1.0, max_size / max(width, height))
        width, height = max(2, int(round(width * factor))), max(2, int(round(height * factor)))
    return width - width % 2, height - height % 2


@dataclass
class FrameCompositor:
    r"""
    Blends generated crops into a photo.

    For each frame, inside the crop's box on the photo: `photo + mask · (content − photo)` where `content` is the
    generated crop resized to the box (bilinear) plus, where the generated crop still matches the source crop, the
    photo's fine detail that the crop's low resolution lost; `mask` rises from 0 at the box edge to 1 at `feather`
    × the box side inside it (smoothstep), so there is no visible seam. Box edges that lie outside the photo (a face
    near its border, cropped with padding) are not seams: the mask stays 1 up to the photo's border there.

    Pixels outside the box are the photo's, bit for bit; feeding back the unchanged source crop gives back the photo.

    Args:
        photo (`np.ndarray` of shape `(H, W, 3)`, uint8): The canvas, at the output size.
        box (`Tuple[float, float, float, float]`): The crop's square (x0, y0, x1, y1) in canvas pixels (may extend
            beyond the canvas).
        source_crop (`np.ndarray` of shape `(S, S, 3)`, float in [0, 1]): The crop the model was given.
        feather (`float`, defaults to 0.1): Width of the soft edge as a fraction of the box side (0: hard paste).
        color_match (`bool`, defaults to `False`): Shift and scale each channel of every generated crop so that its
            band along the box edge has the mean and spread of the photo's band there (hides a colour drift).
        keep_detail (`bool`, defaults to `True`): Keep the photo's full-resolution detail where the generated crop
            matches the source crop (static background, hair); `False` shows the upsampled crop alone.
    """

    photo: np.ndarray
    box: Tuple[float, float, float, float]
    source_crop: np.ndarray
    feather: float = 0.1
    color_match: bool = False
    keep_detail: bool = True

    def __post_init__(self):
        if not 0.0 <= self.feather <= 0.5:
            raise ValueError(f"feather must lie in [0, 0.5] (a fraction of the box side), got {self.feather}")
        self.photo = np.ascontiguousarray(self.photo, dtype=np.uint8)
        height, width = self.photo.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in self.box)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"degenerate paste-back box {self.box}")
        # The whole pixels the box touches, inside the canvas.
        self.region = (
            max(0, int(np.floor(x0))),
            max(0, int(np.floor(y0))),
            min(width, int(np.ceil(x1))),
            min(height, int(np.ceil(y1))),
        )
        left, top, right, bottom = self.region
        self.crop_size = int(self.source_crop.shape[0])
        self._source = _crops_to_255(np.asarray(self.source_crop)[None])  # (1, 3, S, S) in 0..255
        if right <= left or bottom <= top:
            self._grid = None  # the box lies wholly outside the photo: nothing to paste
            return
        # Sampling grid of the region's pixel centres in the crop's normalised coordinates (grid_sample convention).
        xs = (np.arange(left, right) + 0.5 - x0) / (x1 - x0) * 2.0 - 1.0
        ys = (np.arange(top, bottom) + 0.5 - y0) / (y1 - y0) * 2.0 - 1.0
        grid_x, grid_y = np.meshgrid(xs, ys)
        self._grid = torch.from_numpy(np.stack([grid_x, grid_y], axis=-1).astype(np.float32))[None]
        self._mask = torch.from_numpy(self._feather_mask(x0, y0, x1, y1, width, height))[None, None]
        region = self.photo[top:bottom, left:right].astype(np.float32)
        self._photo_region = torch.from_numpy(region).permute(2, 0, 1)[None]
        self._detail = self._photo_region - self._resample(self._source)
        # Colour-matching band: the crop pixels within the feather of its edge (at least 2 pixels wide).
        band = max(2, int(round(self.feather * self.crop_size)))
        ring = torch.ones(self.crop_size, self.crop_size, dtype=torch.bool)
        ring[band:-band, band:-band] = False
        self._ring = ring

    @classmethod
    def from_photo(
        cls,
        photo: Union[str, PIL.Image.Image, np.ndarray],
        crop_transform: CropTransform,
        source_crop: np.ndarray,
        feather: float = 0.1,
        color_match: bool = False,
        max_size: Optional[int] = None,
        keep_detail: bool = True,
    ) -> "FrameCompositor":
        """
        A compositor for the photo a crop was cut from (`crop_transform` maps crop ↔ photo pixels): the canvas is the
        photo at [`full_frame_size`] (trimmed to even sides, or scaled down to `max_size`).
        """
        picture = load_image(photo)
        width, height = picture.size
        out_width, out_height = full_frame_size(width, height, max_size)
        sx, sy = 1.0, 1.0
        if max_size is not None and max(width, height) > max_size:
            canvas = np.asarray(picture.resize((out_width, out_height), PIL.Image.LANCZOS))
            sx, sy = out_width / width, out_height / height
        else:
            canvas = np.asarray(picture)[:out_height, :out_width]
        left, top, side = crop_transform.left, crop_transform.top, crop_transform.side
        box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
        return cls(canvas, box, source_crop, feather=feather, color_match=color_match, keep_detail=keep_detail)

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the composited frames."""
        return self.photo.shape[1], self.photo.shape[0]

    def _feather_mask(self, x0, y0, x1, y1, width, height) -> np.ndarray:
        left, top, right, bottom = self.region
        xs = np.arange(left, right) + 0.5
        ys = np.arange(top, bottom) + 0.5
        # Distance of each pixel centre to the nearest box edge that lies inside the photo.
        inf = np.full_like(xs, np.inf)
        dx = np.minimum(xs - x0 if x0 > 0 else inf, x1 - xs if x1 < width else inf)
        inf = np.full_like(ys, np.inf)
        dy = np.minimum(ys - y0 if y0 > 0 else inf, y1 - ys if y1 < height else inf)
        distance = np.minimum(dx[None, :], dy[:, None])
        # Pixel centres outside the box (possible along a clipped edge) are never blended.
        inside = ((xs > x0) & (xs < x1))[None, :] & ((ys > y0) & (ys < y1))[:, None]
        feather = self.feather * min(x1 - x0, y1 - y0)
        if feather <= 0:
            ramp = (distance > 0).astype(np.float64)
        else:
            ramp = np.clip(distance / feather, 0.0, 1.0)
            ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no kink where the ramp meets the plateau
        return (ramp * inside).astype(np.float32)

    def _resample(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) → (N, C, h, w) at the region's pixels (bilinear)."""
        grid = self._grid.expand(crops.shape[0], -1, -1, -1)
        return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _match_colors(self, crops: torch.Tensor) -> torch.Tensor:
        """Per frame and channel, the affine map taking the crop's edge band statistics to the source crop's."""
        ring = self._ring
        generated = crops[..., ring]  # (N, 3, P)
        reference = self._source[..., ring]
        gain = reference.std(dim=-1, keepdim=True) / generated.std(dim=-1, keepdim=True).clamp_min(1e-3)
        gain = gain.clamp(*COLOR_GAIN_RANGE)
        offset = reference.mean(dim=-1, keepdim=True) - gain * generated.mean(dim=-1, keepdim=True)
        return (crops * gain[..., None] + offset[..., None]).clamp(0.0, 255.0)

    def composite(self, crops) -> np.ndarray:
        """
        Generated crops `(N, S, S, 3)` (float in [0, 1] or uint8) → full frames `(N, H, W, 3)` uint8. Float crops are
        quantised like the video writer does (truncation), so pasting adds no rounding of its own.
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (self.crop_size, self.crop_size, 3):
            raise ValueError(f"crops must be (N, {self.crop_size}, {self.crop_size}, 3), got {tuple(crops.shape)}")
        crops = _crops_to_255(crops)
        frames = np.repeat(self.photo[None], crops.shape[0], axis=0)
        if self._grid is None:
            return frames
        if self.color_match:
            crops = self._match_colors(crops)
        content = self._resample(crops)
        if self.keep_detail:
            change = (crops - self._source).abs().amax(dim=1, keepdim=True) / 255.0
            keep = (1.0 - change / DETAIL_TOLERANCE).clamp(0.0, 1.0)
            content = content + self._resample(keep) * self._detail
        blended = self._photo_region + self._mask * (content - self._photo_region)
        left, top, right, bottom = self.region
        region = blended.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        frames[:, top:bottom, left:right] = region
        return frames


def _crops_to_255(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 or float in [0, 1] → (N, 3, S, S) float32 whole numbers in 0..255."""
    crops = torch.as_tensor(crops)
    if crops.dtype == torch.uint8:
        crops = crops.float()
    else:
        # Truncation like the video writer; the tiny offset keeps k / 255 in float32 from truncating to k − 1.
        crops = torch.floor(crops.float().clamp(0.0, 1.0) * 255.0 + 1e-3)
    return crops.permute(0, 3, 1, 2).contiguous()


class CompositedVideo:
    """
    A full-frame video composited on demand from generated crops: `len()`, indexing (one `(H, W, 3)` uint8 frame)
    and [`iter_chunks`] (for writers). Only the crops are stored; full-size frames exist a chunk at a time.
    """

    def __init__(self, crops: np.ndarray, compositor: FrameCompositor, chunk_size: int = 16):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.crops = crops
        self.compositor = compositor
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        width, height = self.compositor.size
        return (len(self.crops), height, width, 3)

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, (int, np.integer)):
            raise TypeError("index a CompositedVideo with one frame number; use iter_chunks() for many frames")
        return self.compositor.composite(self.crops[index][None])[0]

    def iter_chunks(self, chunk_size: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yields consecutive `(n, H, W, 3)` uint8 chunks of at most `chunk_size` frames."""
        step = chunk_size or self.chunk_size
        for start in range(0, len(self.crops), step):
            yield self.compositor.composite(self.crops[start : start + step])

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.iter_chunks():
            yield from chunk
