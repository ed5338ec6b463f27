"""
Training objective and data of the LFG (latent flow generator), after the official recipe (facts §6.1):

- a multi-scale perceptual loss: prediction and driving frame at scales [1, 0.5, 0.25, 0.125] (anti-aliased), each
  through VGG19 (ImageNet-normalised input) cut after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1; L1 per layer,
  weight 10 everywhere;
- equivariance losses (weight 10 each): the region centres and affines predicted on a randomly deformed driving frame
  (affine + thin-plate-spline, sigma_affine 0.05, sigma_tps 0.005, 5 × 5 control points) must map back to those of the
  undeformed frame;
- data: two frames of one video (uniform with replacement, in time order), random horizontal flip, time flip and
  colour jitter (brightness / contrast / saturation / hue 0.1), applied alike to both frames.

Two optional terms are this package's (off by default, as officially): a pixel L1 loss, and an L1 loss restricted to
the driving frame's lip box (enlarged by a margin). The perceptual pyramid averages over the whole frame, where the
parted lips are a few pixels; without ImageNet VGG weights (none can be downloaded on some machines) it is also a much
weaker loss. The lip term makes the motion model carry the mouth, which the A2V-FDM then learns to drive from speech.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

from ..models.lfg import LFGAutoencoder, LFGRegionParams
from ..models.lfg_blocks import AntiAliasDownsample2d, make_coordinate_grid
from ..processing.face import lip_mask
from ..processing.image import image_to_tensor
from .dataset import decode_frame, keep_frames_encoded


logger = logging.getLogger(__name__)

PERCEPTUAL_SCALES = (1.0, 0.5, 0.25, 0.125)
PERCEPTUAL_WEIGHTS = (10.0, 10.0, 10.0, 10.0, 10.0)
EQUIVARIANCE_SHIFT_WEIGHT = 10.0
EQUIVARIANCE_AFFINE_WEIGHT = 10.0
SIGMA_AFFINE = 0.05
SIGMA_TPS = 0.005
TPS_CONTROL_POINTS = 5
LIP_BOX_MARGIN = 0.25
COLOR_JITTER = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG19 `features` indices ending each slice (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1), torchvision numbering.
VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
# Smallest image side that survives the four max-pools before relu5_1.
VGG_MIN_SIZE = 16


# ----------------------------------------------------------------------------------------------------------------
# Perceptual pyramid
# ----------------------------------------------------------------------------------------------------------------
class Vgg19Features(nn.Module):
    r"""
    The first 30 layers of VGG19's `features` (up to relu5_1), numbered as torchvision numbers them so that its
    ImageNet weights load by key. `forward` takes images in [0, 1], normalises them with the ImageNet statistics and
    returns the activations after relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1.
    """

    def __init__(self):
        super().__init__()
        layers = []
        channels = 3
        for entry in VGG19_LAYOUT:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = entry
        self.features = nn.Sequential(*layers[: VGG19_SLICE_ENDS[-1]])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pretrained = False
        self.requires_grad_(False)

    @classmethod
    def from_imagenet(cls, weights_path: Optional[str] = None) -> "Vgg19Features":
        """
        VGG19 with ImageNet weights: from `weights_path` (a torchvision `vgg19` state dict, `.pth` or `.safetensors`)
        when given, else through torchvision (downloads on first use). When neither is available the network keeps
        random weights and a warning says so: the loss still runs (tests), but it is not a perceptual loss.
        """
        model = cls()
        state_dict = None
        source = None
        try:
            if weights_path is not None:
                if str(weights_path).endswith(".safetensors"):
                    from safetensors.torch import load_file

                    state_dict = load_file(weights_path)
                else:
                    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
                source = str(weights_path)
            else:
                import torchvision

                state_dict = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1).state_dict()
                source = "torchvision"
        except Exception as error:  # torchvision missing, no network, bad file
            logger.warning(
                f"VGG19 ImageNet weights are not available ({type(error).__name__}: {error}); the perceptual loss uses "
                "RANDOM VGG weights. Install torchvision (with network access once) or pass --vgg_weights FILE for "
                "real training."
            )
        if state_dict is not None:
            features = {key[len("features."):]: value for key, value in state_dict.items() if key.startswith("features.")}
            wanted = model.features.state_dict().keys()
            model.features.load_state_dict({key: features[key] for key in wanted})
            model.pretrained = True
            logger.info(f"VGG19 ImageNet weights loaded from {source}")
        return model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        hidden = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        outputs = []
        start = 0
        for end in VGG19_SLICE_ENDS:
            hidden = self.features[start:end](hidden)
            outputs.append(hidden)
            start = end
        return tuple(outputs)


class PerceptualPyramidLoss(nn.Module):
    r"""
    Σ over scales and VGG layers of weight × mean |VGG(prediction) − VGG(target)|, with both images brought to each
    scale by anti-aliased downsampling (the target's features carry no gradient).

    Scales at which the image would be smaller than 16 pixels (too small for VGG's four max-pools) are left out, with
    a log message, so that tiny test resolutions work.
    """

    def __init__(self, vgg: Vgg19Features, scales: Sequence[float] = PERCEPTUAL_SCALES,
                 layer_weights: Sequence[float] = PERCEPTUAL_WEIGHTS):
        super().__init__()
        if len(layer_weights) != len(VGG19_SLICE_ENDS):
            raise ValueError(f"give one weight per VGG slice ({len(VGG19_SLICE_ENDS)}), got {len(layer_weights)}")
        self.vgg = vgg
        self.scales = tuple(scales)
        self.layer_weights = tuple(layer_weights)
        self.downsamplers = nn.ModuleDict(
            {_scale_key(scale): AntiAliasDownsample2d(3, scale) for scale in self.scales if scale != 1}
        )
        self._reported_sizes = set()

    def _usable_scales(self, size: int):
        scales = [scale for scale in self.scales if int(size * scale) >= VGG_MIN_SIZE]
        if not scales:
            raise ValueError(f"images of {size} pixels are too small for the VGG perceptual loss (at least {VGG_MIN_SIZE})")
        if len(scales) < len(self.scales) and size not in self._reported_sizes:
            self._reported_sizes.add(size)
            logger.info(f"At {size} pixels the perceptual pyramid uses scales {scales} (smaller ones are under {VGG_MIN_SIZE} px)")
        return scales

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = prediction.new_zeros(())
        for scale in self._usable_scales(prediction.shape[-1]):
            if scale == 1:
                scaled_prediction, scaled_target = prediction, target
            else:
                downsample = self.downsamplers[_scale_key(scale)]
                scaled_prediction, scaled_target = downsample(prediction), downsample(target)
            predicted_features = self.vgg(scaled_prediction)
            with torch.no_grad():
                target_features = self.vgg(scaled_target)
            for weight, predicted, wanted in zip(self.layer_weights, predicted_features, target_features):
                total = total + weight * (predicted - wanted).abs().mean()
        return total


def _scale_key(scale: float) -> str:
    return f"scale_{scale:g}".replace(".", "_")


# ----------------------------------------------------------------------------------------------------------------
# Equivariance
# ----------------------------------------------------------------------------------------------------------------
class RandomTPSTransform:
    r"""
    A random smooth deformation of the plane, per batch element: an affine map near the identity (entries perturbed
    with standard deviation `sigma_affine`) plus a thin-plate spline on a `points` × `points` grid of control points
    with weights of standard deviation `sigma_tps`, added to both coordinates. Coordinates are (x, y) in [-1, 1].

    The spline kernel uses the L1 distance r = |x − p_x| + |y − p_y| and U(r) = r² log(r + 1e-6), as MRAA does.
    """

    def __init__(self, batch_size: int, sigma_affine: float = SIGMA_AFFINE, sigma_tps: float = SIGMA_TPS,
                 points: int = TPS_CONTROL_POINTS, generator: Optional[torch.Generator] = None,
                 device=None, dtype=torch.float32):
        noise = torch.randn((batch_size, 2, 3), generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3)).to(device=device, dtype=dtype)
        self.control_points = make_coordinate_grid(points, points, dtype=dtype, device=device).view(-1, 2)
        self.control_weights = (torch.randn((batch_size, points * points), generator=generator) * sigma_tps).to(
            device=device, dtype=dtype
        )

    def _spline_terms(self, coordinates: torch.Tensor):
        """Per control point: signed coordinate offsets (B, N, P, 2) and L1 distances r (B, N, P)."""
        offsets = coordinates.unsqueeze(-2) - self.control_points.view(1, 1, -1, 2)
        return offsets, offsets.abs().sum(-1)

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Maps (batch, N, 2) coordinates through the deformation."""
        linear, offset = self.theta[:, :, :2], self.theta[:, :, 2]
        warped = torch.einsum("bij,bnj->bni", linear, coordinates) + offset.unsqueeze(1)
        _, distance = self._spline_terms(coordinates)
        spline = (distance**2 * torch.log(distance + 1e-6) * self.control_weights.unsqueeze(1)).sum(-1)
        return warped + spline.unsqueeze(-1)

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(batch, N, 2, 2) derivative of `warp_coordinates` at `coordinates` (closed form)."""
        offsets, distance = self._spline_terms(coordinates)
        # d/dr [r² log(r + ε)] = 2 r log(r + ε) + r² / (r + ε); dr/dx = sign(x − p_x).
        radial = 2 * distance * torch.log(distance + 1e-6) + distance**2 / (distance + 1e-6)
        gradient = (radial.unsqueeze(-1) * torch.sign(offsets) * self.control_weights.view(*self.control_weights.shape[:1], 1, -1, 1)).sum(-2)
        linear = self.theta[:, :, :2].unsqueeze(1).expand(-1, coordinates.shape[1], -1, -1)
        # The spline term is added to both output coordinates: both rows get the same gradient.
        return linear + gradient.unsqueeze(-2).expand(-1, -1, 2, -1)

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """
        Resamples (batch, C, H, W) images through the deformation (reflection padding). The grid's end points are
        the corner pixel centres (as the region centres are measured), hence `align_corners=True`: the identity
        transform then returns the image unchanged.
        """
        batch, _, height, width = frame.shape
        grid = make_coordinate_grid(height, width, dtype=frame.dtype, device=frame.device).view(1, -1, 2)
        grid = self.warp_coordinates(grid.expand(batch, -1, -1)).view(batch, height, width, 2)
        return F.grid_sample(frame, grid, padding_mode="reflection", align_corners=True)


def equivariance_losses(
    driving_regions: LFGRegionParams,
    transformed_regions: LFGRegionParams,
    transform: RandomTPSTransform,
    revert_axis_swap: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    (shift loss, affine loss), unweighted. Regions found on the deformed frame, mapped back through the deformation,
    must equal those of the original frame: mean |shift − T(shift')| and mean |I − A⁻¹ · J_T(shift') · A'| (with the
    sign of the (0, 0) entry fixed when `revert_axis_swap`, as the model's relative affines are).
    """
    shift_loss = (driving_regions.shift - transform.warp_coordinates(transformed_regions.shift)).abs().mean()
    mapped_affine = torch.matmul(transform.jacobian(transformed_regions.shift), transformed_regions.affine)
    relative = torch.matmul(torch.inverse(driving_regions.affine), mapped_affine)
    if revert_axis_swap:
        relative = relative * torch.sign(relative[:, :, 0:1, 0:1])
    identity = torch.eye(2, dtype=relative.dtype, device=relative.device).view(1, 1, 2, 2)
    affine_loss = (identity - relative).abs().mean()
    return shift_loss, affine_loss


@dataclass
class LFGLossOutput(BaseOutput):
    r"""
    Args:
        loss (`torch.Tensor`): The weighted total.
        perceptual (`torch.Tensor`), equivariance_shift (`torch.Tensor`), equivariance_affine (`torch.Tensor`):
            The weighted terms.
        pixel (`torch.Tensor`), lip (`torch.Tensor`): The weighted pixel and lip-region L1 terms (zero when off).
        prediction (`torch.Tensor` of shape `(batch, 3, S, S)`): The reconstruction of the driving frame.
    """

    loss: torch.Tensor = None
    perceptual: torch.Tensor = None
    equivariance_shift: torch.Tensor = None
    equivariance_affine: torch.Tensor = None
    pixel: torch.Tensor = None
    lip: torch.Tensor = None
    prediction: torch.Tensor = None


def lip_region_masks(lip_boxes: torch.Tensor, size: int, margin: float = LIP_BOX_MARGIN) -> torch.Tensor:
    """
    (batch, 1, size, size) masks of lip boxes [x_min, x_max, y_min, y_max] (pixels of a `size` image), each side
    pushed out by `margin` × the box's height, so that the parted lips and the skin they move are inside.
    """
    masks = []
    for x_min, x_max, y_min, y_max in lip_boxes.detach().cpu().double().tolist():
        pad = margin * (y_max - y_min)
        masks.append(lip_mask([x_min - pad, x_max + pad, y_min - pad, y_max + pad], (size, size), size))
    return torch.stack(masks).unsqueeze(1).to(lip_boxes.device)


def lfg_loss(
    lfg: LFGAutoencoder,
    perceptual_loss: PerceptualPyramidLoss,
    source_image: torch.Tensor,
    driving_image: torch.Tensor,
    equivariance_shift_weight: float = EQUIVARIANCE_SHIFT_WEIGHT,
    equivariance_affine_weight: float = EQUIVARIANCE_AFFINE_WEIGHT,
    sigma_affine: float = SIGMA_AFFINE,
    sigma_tps: float = SIGMA_TPS,
    generator: Optional[torch.Generator] = None,
    pixel_weight: float = 0.0,
    lip_weight: float = 0.0,
    lip_masks: Optional[torch.Tensor] = None,
) -> LFGLossOutput:
    """
    The LFG training objective on a batch of (source, driving) frames in [0, 1]. With `lip_weight`, `lip_masks`
    ((batch, 1, S, S), see [`lip_region_masks`]) select the pixels of the lip term.
    """
    output = lfg(source_image, driving_image)
    perceptual = perceptual_loss(output.prediction, driving_image)
    zero = perceptual.new_zeros(())
    pixel, lip = zero, zero
    if pixel_weight or lip_weight:
        error = (output.prediction.float() - driving_image.float()).abs()
        pixel = pixel_weight * error.mean()
        if lip_weight:
            if lip_masks is None:
                raise ValueError("lip_weight needs lip_masks (the driving frames' lip boxes)")
            lip = lip_weight * (error * lip_masks).sum() / (lip_masks.sum() * error.shape[1]).clamp(min=1.0)
    shift, affine = zero, zero
    if equivariance_shift_weight or equivariance_affine_weight:
        region_predictor = lfg.module.region_predictor if hasattr(lfg, "module") else lfg.region_predictor
        transform = RandomTPSTransform(driving_image.shape[0], sigma_affine, sigma_tps, generator=generator,
                                       device=driving_image.device)
        transformed_regions = region_predictor(transform.transform_frame(driving_image.float()))
        revert = (lfg.module if hasattr(lfg, "module") else lfg).config.revert_axis_swap
        shift, affine = equivariance_losses(output.driving_regions, transformed_regions, transform, revert)
        shift, affine = equivariance_shift_weight * shift, equivariance_affine_weight * affine
    total = perceptual + shift + affine + pixel + lip
    return LFGLossOutput(loss=total, perceptual=perceptual, equivariance_shift=shift, equivariance_affine=affine,
                         pixel=pixel, lip=lip, prediction=output.prediction)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def color_jitter(images: torch.Tensor, rng: np.random.Generator, strength: float = COLOR_JITTER) -> torch.Tensor:
    """
    One random brightness, contrast, saturation and hue change (each of relative size `strength`, in random order)
    applied alike to all `images` (…, 3, H, W) in [0, 1].
    """
    factors = {
        "brightness": rng.uniform(1 - strength, 1 + strength),
        "contrast": rng.uniform(1 - strength, 1 + strength),
        "saturation": rng.uniform(1 - strength, 1 + strength),
        "hue": rng.uniform(-strength, strength),
    }
    luma_weights = images.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    for name in rng.permutation(list(factors)):
        factor = factors[name]
        if name == "brightness":
            images = images * factor
        elif name == "contrast":
            mean = (images * luma_weights).sum(-3, keepdim=True).mean((-2, -1), keepdim=True)
            images = mean + factor * (images - mean)
        elif name == "saturation":
            grey = (images * luma_weights).sum(-3, keepdim=True)
            images = grey + factor * (images - grey)
        else:
            # Hue: rotate the chroma plane of YIQ by factor × 360°.
            angle = 2 * np.pi * factor
            to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            rotation = images.new_tensor(
                [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
            )
            matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
            images = torch.einsum("ij,...jhw->...ihw", matrix, images)
        images = images.clamp(0, 1)
    return images


class LFGFramePairDataset(torch.utils.data.Dataset):
    r"""
    (source, driving) frame pairs for LFG training from a DAWN training dataset.

    Keys are `(video_index, seed)` pairs (see `accelerate_utils.EpochSampler`); the seed decides the two frames
    (uniform with replacement, in time order) and the augmentation, so a key always gives the same pair.

    Args:
        dataset (`datasets.Dataset`): Rows of the DAWN schema (`frames`, `num_frames`, and `lip_box` when asked).
        augment (`bool`, defaults to `True`): Random horizontal flip, time flip and colour jitter.
        with_lip_boxes (`bool`, defaults to `False`): Also return `driving_lip_box` (flipped with the frames).
    """

    def __init__(self, dataset, augment: bool = True, with_lip_boxes: bool = False):
        columns = ["frames", "num_frames"] + (["lip_box"] if with_lip_boxes else [])
        self.dataset = keep_frames_encoded(dataset.select_columns(columns))
        self.augment = augment
        self.with_lip_boxes = with_lip_boxes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        row = self.dataset[int(index)]
        frame_indices = np.sort(rng.integers(0, row["num_frames"], size=2))
        pair = torch.cat([image_to_tensor(decode_frame(row["frames"][index])) for index in frame_indices])
        lip_boxes = np.asarray(row["lip_box"], dtype=np.float64)[frame_indices] if self.with_lip_boxes else None
        if self.augment:
            if rng.random() < 0.5:
                pair = pair.flip(-1)
                if lip_boxes is not None:
                    width = pair.shape[-1]
                    lip_boxes = np.stack([width - lip_boxes[:, 1], width - lip_boxes[:, 0], lip_boxes[:, 2], lip_boxes[:, 3]], 1)
            if rng.random() < 0.5:
                pair = pair.flip(0)
                lip_boxes = lip_boxes[::-1] if lip_boxes is not None else None
            pair = color_jitter(pair, rng)
        sample = {"source": pair[0], "driving": pair[1]}
        if lip_boxes is not None:
            sample["driving_lip_box"] = torch.tensor(lip_boxes[1].copy(), dtype=torch.float32)
        return sample


def collate_frame_pairs(samples) -> Dict[str, torch.Tensor]:
    return {name: torch.stack([sample[name] for sample in samples]) for name in samples[0]}
