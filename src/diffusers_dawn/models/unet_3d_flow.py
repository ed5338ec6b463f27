"""DAWN's A2V-FDM denoiser: a 3-D U-Net that predicts the noise of motion latents (flow grid + occlusion) per frame."""

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import USE_PEFT_BACKEND, BaseOutput, logging, scale_lora_layers, unscale_lora_layers
from torch import nn

from ..utils.errors import DAWNInputError
from .attention_processor import DAWNAttention, FusedLocalAttnProcessor, LocalAttnProcessor
from .embeddings import RelativePositionBias, RotaryEmbedding
from .unet_3d_blocks import (
    FaceLocationEncoder,
    OutputHead3D,
    ResnetBlock3D,
    SpatialLinearAttention,
    TemporalAttention,
    UNetLevel3D,
    UNetMidBlock3D,
    timestep_sinusoidal_embedding,
)


logger = logging.get_logger(__name__)


POSE_DIM = 6
"""Head pose per frame in the condition: yaw, pitch, roll (degrees), scale, tx, ty."""
BLINK_DIM = 2
"""Eye aspect ratios per frame in the condition: left, right."""


def build_condition(
    audio_features: torch.Tensor,
    pose: torch.Tensor,
    blink: torch.Tensor,
    reference_pose: torch.Tensor,
    reference_blink: torch.Tensor,
) -> torch.Tensor:
    r"""
    The per-frame condition the U-Net reads, `[audio | pose − reference pose | blink − reference blink]`, in raw units
    (degrees, scale, translation; eye aspect ratios) as in the official training and sampling. The one place where
    the layout is stated: the pipeline and the trainer both build their conditions here.

    Args:
        audio_features (`torch.Tensor` of shape `(..., frames, A)`), pose (`(..., frames, P)`), blink
        (`(..., frames, B)`): Per-frame features.
        reference_pose (`torch.Tensor` of shape `(..., P)`), reference_blink (`(..., B)`): Of the reference (source)
            frame.

    Returns:
        `torch.Tensor` of shape `(..., frames, A + P + B)`, float32.
    """
    pose_delta = pose.float() - reference_pose.float().unsqueeze(-2)
    blink_delta = blink.float() - reference_blink.float().unsqueeze(-2)
    return torch.cat([audio_features.float(), pose_delta, blink_delta], dim=-1)


# Config keys written before the U-Net followed diffusers' names, renamed one to one ...
RENAMED_CONFIG_KEYS = {
    "attention_heads": "num_attention_heads",
    "cross_attention_heads": "num_cross_attention_heads",
    "resnet_groups": "norm_num_groups",
    "init_kernel_size": "conv_in_kernel",
}
# ... and all earlier keys, including those whose values are recomputed: `base_channels` and `channel_multipliers`
# become `block_out_channels` (and `conv_in_channels` when the first level widens), `cond_dim` becomes `audio_dim`.
LEGACY_CONFIG_KEYS = (*RENAMED_CONFIG_KEYS, "base_channels", "channel_multipliers", "cond_dim")
# The defaults the earlier keys had, for configs that left some of them out.
_LEGACY_DEFAULTS = {"base_channels": 64, "channel_multipliers": (1, 2, 4, 8)}


def upgrade_legacy_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    r"""
    Reads a [`UNet3DFlowModel`] config written with the earlier key names ([`LEGACY_CONFIG_KEYS`]) as the current
    ones; the model it builds has the same parameters, so the saved weights load unchanged.

    Returns:
        `(config, legacy_keys)`: the config with current keys only, and the earlier keys it had (empty when none).

    Raises:
        DAWNInputError: the config holds an earlier key and the current one that replaces it.
    """
    legacy_keys = [key for key in LEGACY_CONFIG_KEYS if key in config]
    upgraded = {key: value for key, value in config.items() if key not in LEGACY_CONFIG_KEYS}

    def set_current(name: str, value: Any, earlier: str) -> None:
        if name in upgraded:
            raise DAWNInputError(
                f"the UNet3DFlowModel config has both `{earlier}` (an earlier name) and `{name}`; keep only `{name}`"
            )
        upgraded[name] = value

    for earlier, name in RENAMED_CONFIG_KEYS.items():
        if earlier in config:
            set_current(name, config[earlier], earlier)
    if "base_channels" in config or "channel_multipliers" in config:
        base = config.get("base_channels", _LEGACY_DEFAULTS["base_channels"])
        multipliers = config.get("channel_multipliers", _LEGACY_DEFAULTS["channel_multipliers"])
        earlier = "base_channels` / `channel_multipliers"
        set_current("block_out_channels", [base * multiplier for multiplier in multipliers], earlier)
        if multipliers[0] != 1:
            set_current("conv_in_channels", base, earlier)
    if "cond_dim" in config:
        pose_dim, blink_dim = config.get("pose_dim", POSE_DIM), config.get("blink_dim", BLINK_DIM)
        set_current("audio_dim", config["cond_dim"] - pose_dim - blink_dim, "cond_dim")
    return upgraded, legacy_keys


@dataclass
class UNet3DFlowOutput(BaseOutput):
    r"""
    Output of [`UNet3DFlowModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch, flow_channels + occlusion_channels, frames, height, width)`):
            Predicted noise (epsilon) of the motion latents.
    """

    sample: torch.Tensor = None


class UNet3DFlowModel(ModelMixin, AttentionMixin, ConfigMixin, PeftAdapterMixin):
    r"""
    The audio-to-video flow diffusion U-Net of DAWN (arXiv 2410.13726). It denoises the motion latents of a whole clip
    at once, conditioned on the source-image latent, an encoded face-location mask, the timestep, and per-frame
    conditions `[audio features | pose delta | blink delta]`.

    Every level has two res-blocks (each with three cosine cross-attentions to the audio, pose and blink conditions),
    a per-frame spatial linear attention and a temporal attention with rotary embeddings and a windowed T5
    relative-position bias; the middle level has a full spatial attention instead. The temporal attentions and the
    middle spatial attention are [`DAWNAttention`] modules, listed by `attn_processors`; by default they run the exact
    [`LocalAttnProcessor`], whose memory grows linearly with the number of frames, and any number of frames can be
    generated in one pass.

    The frame-invariant conditioning (source latent, face location) enters through the first convolution, which is
    linear: it is convolved once per call and broadcast over frames instead of being repeated for every frame.

    The default configuration is the official one (DAWN_128 and DAWN_256 share it). Configuration keys follow
    diffusers' U-Nets where they mean the same thing; configs written with the earlier names (see
    [`LEGACY_CONFIG_KEYS`]) still load, with a `FutureWarning` that asks to re-save them.

    Parameters:
        flow_channels (`int`, defaults to 2): Flow-grid channels of the motion latent (first output head).
        occlusion_channels (`int`, defaults to 1): Occlusion channels of the motion latent (second output head).
        source_latent_channels (`int`, defaults to 256): Channels of the LFG source latent.
        face_location_channels (`int`, defaults to 16): Channels of the encoded face-location mask.
        face_location_hidden_channels (`int`, defaults to 8): Hidden channels of the face-location encoder.
        block_out_channels (`Tuple[int]`, defaults to `(64, 128, 256, 512)`): Output channels of each level.
        conv_in_channels (`int`, *optional*): Channels after the first convolution, which are also the width of the
            sinusoidal timestep features and the hidden width of the output heads; defaults to
            `block_out_channels[0]`.
        audio_dim (`int`, defaults to 1024): Width of the speech features in the condition.
        pose_dim (`int`, defaults to 6): Width of the pose delta.
        blink_dim (`int`, defaults to 2): Width of the blink delta. The condition is `audio_dim + pose_dim +
            blink_dim` wide (`cond_dim`); each res-block cross-attends to the three parts separately.
        num_attention_heads (`int`, defaults to 8): Heads of the temporal and spatial attentions (and of the
            temporal relative-position bias).
        attention_head_dim (`int`, defaults to 32): Channels per head of the temporal attentions.
        spatial_attention_head_dim (`int`, defaults to 32): Channels per head of the spatial attentions.
        num_cross_attention_heads (`int`, defaults to 8), cross_attention_head_dim (`int`, defaults to 8): Shape of
            the cosine cross-attentions to the audio, pose and blink conditions.
        norm_num_groups (`int`, defaults to 8): GroupNorm groups of the res-blocks.
        conv_in_kernel (`int`, defaults to 7): Spatial kernel of the first convolution (odd).
        time_embedding_dim (`int`, *optional*): Width of the time embedding; defaults to `4 · conv_in_channels`.
        window (`int`, *optional*, defaults to 40): Largest frame distance the temporal attentions see (`None`: all).
        num_position_buckets (`int`, defaults to 32), max_position_distance (`int`, defaults to 32): T5 buckets.
        rotary_dim (`int`, *optional*): Rotated channels per temporal head; defaults to `min(32, attention_head_dim)`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["UNetLevel3D", "UNetMidBlock3D", "OutputHead3D", "TemporalAttention"]

    @register_to_config
    def __init__(
        self,
        flow_channels: int = 2,
        occlusion_channels: int = 1,
        source_latent_channels: int = 256,
        face_location_channels: int = 16,
        face_location_hidden_channels: int = 8,
        block_out_channels: Sequence[int] = (64, 128, 256, 512),
        conv_in_channels: Optional[int] = None,
        audio_dim: int = 1024,
        pose_dim: int = POSE_DIM,
        blink_dim: int = BLINK_DIM,
        num_attention_heads: int = 8,
        attention_head_dim: int = 32,
        spatial_attention_head_dim: int = 32,
        num_cross_attention_heads: int = 8,
        cross_attention_head_dim: int = 8,
        norm_num_groups: int = 8,
        conv_in_kernel: int = 7,
        time_embedding_dim: Optional[int] = None,
        window: Optional[int] = 40,
        num_position_buckets: int = 32,
        max_position_distance: int = 32,
        rotary_dim: Optional[int] = None,
    ):
        super().__init__()
        if min(audio_dim, pose_dim, blink_dim) < 1:
            raise ValueError(
                f"`audio_dim`, `pose_dim` and `blink_dim` must be positive, got {audio_dim}, {pose_dim}, {blink_dim}"
            )
        if len(block_out_channels) < 1:
            raise ValueError("`block_out_channels` must name the channels of at least one level")
        if conv_in_kernel % 2 == 0:
            raise ValueError(f"`conv_in_kernel` must be odd to keep the latent size, got {conv_in_kernel}")
        conv_in_channels = block_out_channels[0] if conv_in_channels is None else conv_in_channels
        rotary_dim = min(32, attention_head_dim) if rotary_dim is None else rotary_dim
        time_embedding_dim = 4 * conv_in_channels if time_embedding_dim is None else time_embedding_dim
        condition_dims = (audio_dim, pose_dim, blink_dim)
        self.gradient_checkpointing = False

        self.face_location_encoder = FaceLocationEncoder(face_location_hidden_channels, face_location_channels)
        in_channels = flow_channels + occlusion_channels + source_latent_channels + face_location_channels
        padding = conv_in_kernel // 2
        self.conv_in = nn.Conv3d(
            in_channels, conv_in_channels, (1, conv_in_kernel, conv_in_kernel), padding=(0, padding, padding)
        )
        self.time_embedding = TimestepEmbedding(conv_in_channels, time_embedding_dim, act_fn="gelu")
        # One rotary table and one bias module shared by every temporal attention; the bias is computed once per call.
        self.rotary_emb = RotaryEmbedding(rotary_dim)
        self.time_position_bias = RelativePositionBias(
            num_attention_heads, num_position_buckets, max_position_distance, window
        )
        self.init_temporal_attention = TemporalAttention(conv_in_channels, num_attention_heads, attention_head_dim)

        level_kwargs = dict(
            temb_channels=time_embedding_dim,
            condition_dims=condition_dims,
            groups=norm_num_groups,
            attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            spatial_attention_head_dim=spatial_attention_head_dim,
            cross_attention_heads=num_cross_attention_heads,
            cross_attention_head_dim=cross_attention_head_dim,
        )
        channels = [conv_in_channels, *block_out_channels]
        levels = list(zip(channels[:-1], channels[1:]))
        self.down_blocks = nn.ModuleList(
            [
                UNetLevel3D(level_in, level_out, resample="down" if index < len(levels) - 1 else None, **level_kwargs)
                for index, (level_in, level_out) in enumerate(levels)
            ]
        )
        self.mid_block = UNetMidBlock3D(channels[-1], **level_kwargs)
        # Each up level reads the concatenation [features, skip of the matching down level].
        self.up_blocks = nn.ModuleList(
            [
                UNetLevel3D(2 * level_out, level_in, resample="up" if index < len(levels) - 1 else None, **level_kwargs)
                for index, (level_in, level_out) in enumerate(reversed(levels))
            ]
        )
        self.flow_head = OutputHead3D(2 * conv_in_channels, conv_in_channels, flow_channels, norm_num_groups)
        self.occlusion_head = OutputHead3D(2 * conv_in_channels, conv_in_channels, occlusion_channels, norm_num_groups)
        # Chunk budget given to the default attention processors (None: the processors' own default).
        self._attention_chunk_bytes = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        r"""
        Builds the model from a config, as [`~ConfigMixin.from_config`] does; `from_pretrained` loads through it. A
        config written with the earlier key names is read as the current ones (see [`upgrade_legacy_config`]), with a
        `FutureWarning`: re-saving the model (`save_pretrained`) writes the current names.
        """
        if isinstance(config, Mapping):
            config, legacy_keys = upgrade_legacy_config(config)
            if legacy_keys:
                warnings.warn(
                    f"This UNet3DFlowModel config uses earlier key names ({', '.join(legacy_keys)}), read as diffusers' "
                    "names (block_out_channels, num_attention_heads, norm_num_groups, ...). Re-save the model with "
                    "`save_pretrained` to write the new names; a future release will no longer read the earlier ones.",
                    FutureWarning,
                    stacklevel=2,
                )
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def set_attention_chunking(
        self,
        attention_bytes: Optional[int] = None,
        linear_attention_bytes: Optional[int] = None,
        cross_attention_bytes: Optional[int] = None,
    ) -> None:
        r"""
        Sets the memory budgets of the chunked computations: each bounds the temporaries of one chunk, so lower values
        use less peak memory for long videos at the cost of more, smaller matrix products. Chunking is exact (frames
        and batch rows are independent), so results only change by float rounding. `None` keeps a budget as it is.

        Args:
            attention_bytes (`int`, *optional*, defaults to 256 MiB): Batch chunks of the temporal attentions and
                the middle spatial attention (the `max_chunk_bytes` of their processors; processors set later with
                `set_attn_processor` keep their own).
            linear_attention_bytes (`int`, *optional*, defaults to 256 MiB): Frame chunks of the per-frame spatial
                linear attentions.
            cross_attention_bytes (`int`, *optional*, defaults to 128 MiB): Frame chunks of the res-blocks'
                cross-attentions to the audio, pose and blink conditions.
        """
        budgets = dict(
            attention_bytes=attention_bytes,
            linear_attention_bytes=linear_attention_bytes,
            cross_attention_bytes=cross_attention_bytes,
        )
        for name, value in budgets.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive number of bytes, got {value!r}")
        if attention_bytes is not None:
            self._attention_chunk_bytes = attention_bytes
        for module in self.modules():
            if attention_bytes is not None and isinstance(module, DAWNAttention):
                if hasattr(module.processor, "max_chunk_bytes"):
                    module.processor.max_chunk_bytes = attention_bytes
            elif linear_attention_bytes is not None and isinstance(module, SpatialLinearAttention):
                module.max_chunk_bytes = linear_attention_bytes
            elif cross_attention_bytes is not None and isinstance(module, ResnetBlock3D):
                module.cross_attention_chunk_bytes = cross_attention_bytes

    def set_default_attn_processor(self) -> None:
        r"""
        Disables custom attention processors: every attention runs the default [`FusedLocalAttnProcessor`] again (or
        [`LocalAttnProcessor`] after `set_fused_kernels(False)`), with the budget of `set_attention_chunking`.
        """
        fused = any(getattr(module, "fused_kernels", False) for module in self.modules())
        processor_class = FusedLocalAttnProcessor if fused else LocalAttnProcessor
        kwargs = {} if self._attention_chunk_bytes is None else {"max_chunk_bytes": self._attention_chunk_bytes}
        self.set_attn_processor(processor_class(**kwargs))

    def set_fused_kernels(self, enabled: bool = True) -> None:
        r"""
        Chooses between the fused forward paths of the blocks (the default: one shared normalisation and projection
        for the three cross-attentions of a res-block, single-pass layer norms; see `fused_kernels.py`) and the
        reference paths written as the official model. Both compute the same function with the same parameters; they
        differ in float32 rounding and in speed (the fused paths are several times faster on CPU). Attentions that
        run the default [`FusedLocalAttnProcessor`] switch to [`LocalAttnProcessor`] and back; other processors set
        with `set_attn_processor` are kept.
        """
        for module in self.modules():
            if hasattr(module, "fused_kernels"):
                module.fused_kernels = enabled
            processor = getattr(module, "processor", None)
            if isinstance(module, DAWNAttention) and type(processor) in (LocalAttnProcessor, FusedLocalAttnProcessor):
                if isinstance(processor, FusedLocalAttnProcessor) != enabled:
                    replacement = FusedLocalAttnProcessor() if enabled else LocalAttnProcessor()
                    replacement.__dict__.update(processor.__dict__)  # block size and chunk bound
                    module.set_processor(replacement)

    def time_relative_position_bias(self, num_frames: int) -> torch.Tensor:
        """Dense `(heads, num_frames, num_frames)` temporal bias with `-1e8` outside the window (official layout)."""
        return self.time_position_bias.dense(num_frames)

    def encode_face_location(self, face_mask: torch.Tensor) -> torch.Tensor:
        """Binary face-box mask `(batch, 1, S, S)` → face-location features `(batch, channels, S/4, S/4)`."""
        if face_mask.ndim != 4 or face_mask.shape[1] != 1:
            raise ValueError(f"`face_mask` must have shape (batch, 1, S, S), got {tuple(face_mask.shape)}")
        return self.face_location_encoder(face_mask)

    def _static_features(
        self, source_latent: torch.Tensor, face_location_features: torch.Tensor, motion_channels: int
    ) -> torch.Tensor:
        """First-convolution response to the frame-invariant inputs, `(batch, base, [F,] L, L)`."""
        weight = self.conv_in.weight
        source_weight, face_weight = weight[:, motion_channels:].split(
            [self.config.source_latent_channels, self.config.face_location_channels], dim=1
        )
        padding = self.conv_in.padding

        def convolve(features, part_weight):
            # 2-D inputs are convolved once, not once per frame.
            if features.ndim == 4:
                return F.conv2d(features, part_weight[:, :, 0], padding=padding[1:])
            return F.conv3d(features, part_weight, padding=padding)

        source_response = convolve(source_latent, source_weight)
        face_response = convolve(face_location_features, face_weight)
        if source_response.ndim != face_response.ndim:
            if source_response.ndim == 4:
                source_response = source_response.unsqueeze(2)
            else:
                face_response = face_response.unsqueeze(2)
        return source_response + face_response

    def _check_inputs(self, sample, encoder_hidden_states, source_latent, face_location_features):
        config = self.config
        motion_channels = config.flow_channels + config.occlusion_channels
        if sample.ndim != 5 or sample.shape[1] != motion_channels:
            raise ValueError(
                f"`sample` must be the noisy motion latent of shape (batch, {motion_channels}, frames, height, width), "
                f"got {tuple(sample.shape)}"
            )
        batch, _, frames, height, width = sample.shape
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[1:] != (frames, self.cond_dim):
            raise ValueError(
                f"`encoder_hidden_states` must have shape (batch, {frames}, {self.cond_dim}) = [audio | pose delta | "
                f"blink delta] per frame, got {tuple(encoder_hidden_states.shape)}"
            )
        for name, tensor, channels in (
            ("source_latent", source_latent, config.source_latent_channels),
            ("face_location_features", face_location_features, config.face_location_channels),
        ):
            spatial = (height, width) if tensor.ndim == 4 else (frames, height, width)
            if tensor.ndim not in (4, 5) or tensor.shape[1] != channels or tuple(tensor.shape[2:]) != spatial:
                raise ValueError(
                    f"`{name}` must have shape (batch, {channels}, {height}, {width}) or (batch, {channels}, {frames}, "
                    f"{height}, {width}) to match `sample`, got {tuple(tensor.shape)}"
                )
        for name, tensor in (
            ("encoder_hidden_states", encoder_hidden_states),
            ("source_latent", source_latent),
            ("face_location_features", face_location_features),
        ):
            if tensor.shape[0] not in (1, batch):
                raise ValueError(f"`{name}` has batch size {tensor.shape[0]}, expected 1 or {batch} like `sample`")

    @property
    def audio_dim(self) -> int:
        """Width of the speech features in the condition (see [`build_condition`])."""
        return self.config.audio_dim

    @property
    def cond_dim(self) -> int:
        """Width of the per-frame condition `[audio | pose delta | blink delta]`: `audio_dim + pose_dim + blink_dim`."""
        return self.config.audio_dim + self.config.pose_dim + self.config.blink_dim

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        source_latent: torch.Tensor,
        face_location_features: Optional[torch.Tensor] = None,
        face_mask: Optional[torch.Tensor] = None,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ) -> Union[UNet3DFlowOutput, tuple]:
        r"""
        Predicts the noise of the motion latents.

        Args:
            sample (`torch.Tensor` of shape `(batch, 3, frames, L, L)`):
                Noisy motion latent: flow grid (x, y) and `2 · occlusion − 1`.
            timestep (`torch.Tensor` of shape `(batch,)`, or a number): Diffusion timestep(s).
            encoder_hidden_states (`torch.Tensor` of shape `(batch, frames, cond_dim)`):
                Per-frame `[audio features | pose − source pose | blink − source blink]`; zeros are the null
                condition of classifier-free guidance.
            source_latent (`torch.Tensor` of shape `(batch, source_latent_channels, L, L)`):
                LFG latent of the source image; a per-frame `(batch, C, frames, L, L)` tensor is accepted too.
            face_location_features (`torch.Tensor` of shape `(batch, face_location_channels, L, L)`, *optional*):
                Encoded face-location mask (or per frame, `(batch, C, frames, L, L)`).
            face_mask (`torch.Tensor` of shape `(batch, 1, 4·L, 4·L)`, *optional*):
                Binary face-box mask, encoded by the built-in face-location encoder. Give exactly one of
                `face_mask` and `face_location_features`.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` multiplies the updates of the loaded LoRA adapters
                by `s` for this call (0 gives the base model); their scale is restored on return.
            return_dict (`bool`, defaults to `True`): Return a [`UNet3DFlowOutput`] instead of a tuple.

        Returns:
            [`UNet3DFlowOutput`] or `(sample,)`: the predicted noise, shaped like `sample`.
        """
        if (face_mask is None) == (face_location_features is None):
            raise ValueError("pass exactly one of `face_mask` (binary face-box mask) and `face_location_features`")
        lora_scale = 1.0
        if attention_kwargs is not None:
            unknown = sorted(set(attention_kwargs) - {"scale"})
            if unknown:
                raise ValueError(f"attention_kwargs takes only 'scale' (the LoRA scale), got {unknown}")
            lora_scale = attention_kwargs.get("scale", 1.0)
            if not USE_PEFT_BACKEND and lora_scale != 1.0:
                logger.warning("attention_kwargs['scale'] has no effect without the PEFT backend (install peft).")
        if face_mask is not None:
            face_location_features = self.encode_face_location(face_mask)
        self._check_inputs(sample, encoder_hidden_states, source_latent, face_location_features)
        # The LoRA layers are scaled for this call only, as diffusers' models do with their attention kwargs.
        if USE_PEFT_BACKEND:
            scale_lora_layers(self, lora_scale)
        try:
            output = self._predict_noise(
                sample, timestep, encoder_hidden_states, source_latent, face_location_features
            )
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (output,)
        return UNet3DFlowOutput(sample=output)

    def _predict_noise(self, sample, timestep, encoder_hidden_states, source_latent, face_location_features):
        batch, motion_channels, num_frames = sample.shape[:3]

        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(batch)
        time_features = timestep_sinusoidal_embedding(timestep, self.conv_in.out_channels)
        temb = self.time_embedding(time_features.to(self.time_embedding.linear_1.weight.dtype))

        motion_weight = self.conv_in.weight[:, :motion_channels]
        hidden_states = F.conv3d(sample, motion_weight, self.conv_in.bias, padding=self.conv_in.padding)
        static = self._static_features(source_latent, face_location_features, motion_channels)
        hidden_states = hidden_states + (static.unsqueeze(2) if static.ndim == 4 else static)
        init_features = hidden_states

        rotary_emb = self.rotary_emb
        position_bias = self.time_position_bias(num_frames)
        condition = encoder_hidden_states.expand(batch, -1, -1)
        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing

        def run(block, *args):
            if checkpointing:
                return self._gradient_checkpointing_func(block, *args)
            return block(*args)

        hidden_states = run(self.init_temporal_attention, hidden_states, rotary_emb, position_bias)
        skips = []
        for block in self.down_blocks:
            skip, hidden_states = run(block, hidden_states, temb, condition, rotary_emb, position_bias)
            skips.append(skip)
        hidden_states = run(self.mid_block, hidden_states, temb, condition, rotary_emb, position_bias)
        for block in self.up_blocks:
            hidden_states = torch.cat((hidden_states, skips.pop()), dim=1)
            _, hidden_states = run(block, hidden_states, temb, condition, rotary_emb, position_bias)

        hidden_states = torch.cat((hidden_states, init_features), dim=1)
        del init_features
        return torch.cat((run(self.flow_head, hidden_states), run(self.occlusion_head, hidden_states)), dim=1)
