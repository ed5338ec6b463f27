from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..processing.audio import AUDIO_SAMPLING_RATE, VIDEO_FPS


@dataclass
class DAWNPipelineOutput(BaseOutput):
    r"""
    Output of [`DAWNPipeline`].

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `List[List[PIL.Image.Image]]`):
            The generated video: `(batch, frames, height, width, 3)` floats in [0, 1] for `output_type="np"` (with
            `paste_back`, a list holding one [`~processing.compositing.CompositedVideo`] of full uint8 frames),
            `(batch, frames, 3, height, width)` for `"pt"`, a list (per video) of lists of PIL images for `"pil"`, and
            the motion latents `(batch, 3, frames, latent, latent)` for `"latent"`.
        pose (`np.ndarray` of shape `(frames, 6)`):
            Head pose per frame in the official units: yaw, pitch, roll (degrees), scale, tx, ty.
        blink (`np.ndarray` of shape `(frames, 2)`): Eye aspect ratios (left, right) per frame.
        fps (`float`): Frame rate of the video (25).
        audio (`np.ndarray`, *optional*): The speech as 16 kHz mono float32, trimmed to the video's duration.
        audio_sampling_rate (`int`): Sampling rate of `audio`.
        crops (`np.ndarray`, *optional*): The generated face-crop video `(batch, frames, size, size, 3)` for
            `output_type="np"` (the same array as `frames` unless `paste_back` made full-frame videos).
        crop_box ([`~processing.image.CropTransform`], *optional*): Where the crop was cut from `photo` (face crops).
        photo (`PIL.Image.Image`, *optional*): The whole (EXIF-rotated) input picture the crop was cut from.
    """

    frames: Union[np.ndarray, torch.Tensor, List[List[PIL.Image.Image]]] = None
    pose: np.ndarray = None
    blink: np.ndarray = None
    fps: float = float(VIDEO_FPS)
    audio: Optional[np.ndarray] = None
    audio_sampling_rate: int = AUDIO_SAMPLING_RATE
    crops: Optional[np.ndarray] = None
    crop_box: Optional[object] = None
    photo: Optional[PIL.Image.Image] = None
