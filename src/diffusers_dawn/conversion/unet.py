"""Conversion of official DAWN A2V-FDM checkpoints (`DAWN_128.pth` / `DAWN_256.pth`) to [`UNet3DFlowModel`]."""

import functools
import math
import os
import re
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..models.embeddings import RotaryEmbedding
from ..models.unet_3d_flow import UNet3DFlowModel
from ..schedulers.scheduling_dawn_ddim import dawn_cosine_betas
from .common import (
    CheckpointConversionError,
    check_keys,
    load_converted_state_dict,
    load_official_checkpoint,
    require_tensor,
)


UNET_PREFIX = "denoise_fn."
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
FACE_LOCATION_KEYS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")
# No official checkpoint holds the face-location encoder (it was never trained); converted models get this seeded
# PyTorch-default initialisation, stored with the model from then on.
FACE_LOCATION_SEED = 1234

# Per-res-block renames (official suffix → ours); `to_kv` and `null_kv` are split separately.
RESNET_RENAMES = {
    "time_mlp.1.": "time_emb_proj.",
    "audio_mlp.1.": "audio_proj.",
    "pose_mlp.1.": "pose_proj.",
    "eye_mlp.1.": "blink_proj.",
    "block1.proj.": "conv1.",
    "block1.norm.": "norm1.",
    "block2.proj.": "conv2.",
    "block2.norm.": "norm2.",
    "res_conv.": "conv_shortcut.",
}
CROSS_ATTENTIONS = {
    "cross_attn_aud": "audio_attention",
    "cross_attn_pose": "pose_attention",
    "cross_attn_eye": "blink_attention",
}
CROSS_ATTENTION_RENAMES = {
    "q_scale": "query_scale",
    "k_scale": "key_scale",
    "norm.g": "norm_in.weight",
    "to_q.weight": "to_q.weight",
    "to_out.0.weight": "to_out.0.weight",
    "to_out.1.g": "norm_out.weight",
}
LEVEL = re.compile(r"(downs|ups)\.(\d+)\.(\d)\.(.+)")
HEAD = re.compile(r"(final_conv|occlusion_map)\.(\d)\.(.+)")


def dawn_cosine_schedule_buffers(timesteps: int = 1000, s: float = 0.008) -> Dict[str, torch.Tensor]:
    r"""
    The twelve diffusion buffers stored in an official DAWN checkpoint: cosine schedule (Nichol & Dhariwal, offset
    `s`, betas clipped to 0.9999) and the derived quantities, computed in float64 and stored as float32.
    """
    betas = dawn_cosine_betas(timesteps, s)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }
    return {name: value.float() for name, value in buffers.items()}


def seeded_face_location_state_dict(hidden_channels: int = 8, out_channels: int = 16) -> Dict[str, torch.Tensor]:
    r"""
    Weights of the face-location encoder for checkpoints that have none (every official one): PyTorch's default
    convolution initialisation (Kaiming-uniform with `a = √5` for the weights, `U(±1/√fan_in)` for the biases) drawn
    in the order conv1.weight, conv1.bias, conv2.weight, conv2.bias from `torch.Generator().manual_seed(1234)`.
    Reproducible on every machine; it is not the (unrecoverable) random encoder the official models were trained with.
    """
    generator = torch.Generator().manual_seed(FACE_LOCATION_SEED)
    state_dict = {}
    for name, (in_channels, out) in (("conv1", (1, hidden_channels)), ("conv2", (hidden_channels, out_channels))):
        weight = torch.empty(out, in_channels, 3, 3)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(in_channels * 9)
        bias = torch.empty(out).uniform_(-bound, bound, generator=generator)
        state_dict[f"{name}.weight"], state_dict[f"{name}.bias"] = weight, bias
    return state_dict


_require = functools.partial(require_tensor, what="DAWN checkpoint", layout="A2V-FDM", prefix=UNET_PREFIX)


def _split(prefix: str, fused: torch.Tensor, names) -> Dict[str, torch.Tensor]:
    return {f"{prefix}{name}.weight": part.clone() for name, part in zip(names, fused.chunk(len(names), dim=0))}


def infer_unet_config(unet_state_dict: Mapping[str, torch.Tensor], face_location_channels: int = 16) -> Dict:
    """[`UNet3DFlowModel`] configuration read off the shapes of an official U-Net state dict (without `denoise_fn.`)."""
    init_conv = _require(unet_state_dict, "init_conv.weight")
    conv_in_channels, in_channels, _, _, kernel = init_conv.shape
    heads = _require(unet_state_dict, "time_rel_pos_bias.relative_attention_bias.weight").shape[1]
    num_buckets = unet_state_dict["time_rel_pos_bias.relative_attention_bias.weight"].shape[0]
    temporal_inner = _require(unet_state_dict, "init_temporal_attn.fn.fn.fn.to_qkv.weight").shape[0] // 3
    spatial_inner = _require(unet_state_dict, "downs.0.2.fn.fn.to_qkv.weight").shape[0] // 3
    matches = [LEVEL.fullmatch(key) for key in unet_state_dict]
    num_levels = len({int(match.group(2)) for match in matches if match and match.group(1) == "downs"})
    block_out_channels = tuple(
        _require(unet_state_dict, f"downs.{level}.0.block1.proj.weight").shape[0] for level in range(num_levels)
    )
    audio_dim = _require(unet_state_dict, "downs.0.0.audio_mlp.1.weight").shape[1]
    pose_dim = _require(unet_state_dict, "downs.0.0.pose_mlp.1.weight").shape[1]
    blink_dim = _require(unet_state_dict, "downs.0.0.eye_mlp.1.weight").shape[1]
    cross_head_dim = _require(unet_state_dict, "downs.0.0.cross_attn_aud.null_kv").shape[1]
    cross_inner = _require(unet_state_dict, "downs.0.0.cross_attn_aud.to_q.weight").shape[0]
    flow_channels = _require(unet_state_dict, "final_conv.1.weight").shape[0]
    occlusion_channels = _require(unet_state_dict, "occlusion_map.1.weight").shape[0]
    rotary_dim = 2 * _require(unet_state_dict, "init_temporal_attn.fn.fn.fn.rotary_emb.freqs").shape[0]
    source_latent_channels = in_channels - flow_channels - occlusion_channels - face_location_channels
    if source_latent_channels < 1 or temporal_inner % heads or spatial_inner % heads or cross_inner % cross_head_dim:
        raise CheckpointConversionError(
            f"DAWN checkpoint: inconsistent shapes (input channels {in_channels}, {heads} heads, temporal width "
            f"{temporal_inner}, spatial width {spatial_inner}); this is not an official DAWN A2V-FDM checkpoint"
        )
    time_embedding_dim = _require(unet_state_dict, "time_mlp.1.weight").shape[0]
    return dict(
        flow_channels=flow_channels,
        occlusion_channels=occlusion_channels,
        source_latent_channels=source_latent_channels,
        face_location_channels=face_location_channels,
        block_out_channels=block_out_channels,
        # `None` where the shapes give what the model derives anyway, so converted configs equal hand-built ones.
        conv_in_channels=None if conv_in_channels == block_out_channels[0] else conv_in_channels,
        audio_dim=audio_dim,
        pose_dim=pose_dim,
        blink_dim=blink_dim,
        num_attention_heads=heads,
        attention_head_dim=temporal_inner // heads,
        spatial_attention_head_dim=spatial_inner // heads,
        num_cross_attention_heads=cross_inner // cross_head_dim,
        cross_attention_head_dim=cross_head_dim,
        conv_in_kernel=kernel,
        time_embedding_dim=None if time_embedding_dim == 4 * conv_in_channels else time_embedding_dim,
        num_position_buckets=num_buckets,
        rotary_dim=None if rotary_dim == min(32, temporal_inner // heads) else rotary_dim,
    )


def _convert_resnet(official: str, ours: str, rest: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    for old, new in RESNET_RENAMES.items():
        if rest.startswith(old):
            return {ours + new + rest[len(old) :]: value}
    attention, _, parameter = rest.partition(".")
    if attention in CROSS_ATTENTIONS:
        prefix = f"{ours}{CROSS_ATTENTIONS[attention]}."
        if parameter == "to_kv.weight":
            return _split(prefix, value, ("to_k", "to_v"))
        if parameter == "null_kv":
            return {prefix + "null_key": value[0].clone(), prefix + "null_value": value[1].clone()}
        if parameter in CROSS_ATTENTION_RENAMES:
            return {prefix + CROSS_ATTENTION_RENAMES[parameter]: value}
    raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{official}")


def _convert_attention(official: str, ours: str, rest: str, value: torch.Tensor, spatial_linear: bool = False):
    """Temporal / spatial attention wrapped as Residual(PreNorm(...)); `rest` starts after the level index."""
    if rest == "fn.norm.gamma":
        return {ours + "norm.weight": value.flatten()}
    inner = "fn.fn." if spatial_linear else "fn.fn.fn."
    target = ours if spatial_linear else ours + "attention."
    if rest == inner + "to_qkv.weight":
        # Fused 1×1 2-D convolution weights become 1×1×1 3-D ones in the spatial linear attention.
        return _split(target, value[..., None] if spatial_linear else value, ("to_q", "to_k", "to_v"))
    if rest == inner + "to_out.weight":
        return {target + "to_out.0.weight": value[..., None] if spatial_linear else value}
    if spatial_linear and rest == inner + "to_out.bias":
        return {target + "to_out.0.bias": value}
    if rest == inner + "rotary_emb.freqs":
        return {}
    raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{official}")


def convert_unet_state_dict(unet_state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Maps an official U-Net state dict (keys without `denoise_fn.`) to [`UNet3DFlowModel`] names (no face encoder)."""
    converted = {}
    for key, value in unet_state_dict.items():
        level = LEVEL.fullmatch(key)
        head = HEAD.fullmatch(key)
        if key == "time_rel_pos_bias.relative_attention_bias.weight":
            parts = {"time_position_bias.relative_attention_bias.weight": value}
        elif key.startswith("init_conv."):
            parts = {"conv_in." + key[len("init_conv.") :]: value}
        elif key.startswith("time_mlp."):
            index, _, parameter = key[len("time_mlp.") :].partition(".")
            layers = {"1": "linear_1", "3": "linear_2"}
            if index not in layers:
                raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{key}")
            parts = {f"time_embedding.{layers[index]}.{parameter}": value}
        elif key.startswith("init_temporal_attn."):
            parts = _convert_attention(key, "init_temporal_attention.", key[len("init_temporal_attn.") :], value)
        elif key.startswith(("mid_block1.", "mid_block2.")):
            index = int(key[len("mid_block")]) - 1
            parts = _convert_resnet(key, f"mid_block.resnets.{index}.", key[len("mid_block1.") :], value)
        elif key.startswith("mid_spatial_attn."):
            parts = _convert_attention(key, "mid_block.spatial_attention.", key[len("mid_spatial_attn.") :], value)
        elif key.startswith("mid_temporal_attn."):
            parts = _convert_attention(key, "mid_block.temporal_attention.", key[len("mid_temporal_attn.") :], value)
        elif level:
            direction, index, slot, rest = level.groups()
            ours = f"{'down' if direction == 'downs' else 'up'}_blocks.{index}."
            if slot in "01":
                parts = _convert_resnet(key, f"{ours}resnets.{slot}.", rest, value)
            elif slot == "2":
                parts = _convert_attention(key, ours + "spatial_attention.", rest, value, spatial_linear=True)
            elif slot == "3":
                parts = _convert_attention(key, ours + "temporal_attention.", rest, value)
            elif slot == "4":
                parts = {f"{ours}resampler.{rest}": value}
            else:
                raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{key}")
        elif head:
            name, slot, rest = head.groups()
            ours = "flow_head." if name == "final_conv" else "occlusion_head."
            if slot == "1":
                parts = {f"{ours}proj_out.{rest}": value}
            elif slot == "0" and rest.split(".", 1)[0] in CROSS_ATTENTIONS:
                # The output heads own cross-attentions that the official forward never calls: dropped.
                parts = {}
            elif slot == "0":
                parts = _convert_resnet(key, f"{ours}resnet.", rest, value)
            else:
                raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{key}")
        else:
            raise CheckpointConversionError(f"DAWN checkpoint: unknown key {UNET_PREFIX}{key}")
        converted.update(parts)
    return converted


def dropped_official_keys(num_levels: int):
    """Official U-Net keys without a counterpart: the rotary-frequency copies and the output heads' cross-attentions."""
    freqs = "fn.fn.fn.rotary_emb.freqs"
    keys = [f"init_temporal_attn.{freqs}", f"mid_temporal_attn.{freqs}"]
    keys += [f"{direction}.{level}.3.{freqs}" for direction in ("downs", "ups") for level in range(num_levels)]
    parameters = (
        "null_kv", "q_scale", "k_scale", "norm.g", "to_q.weight", "to_kv.weight", "to_out.0.weight", "to_out.1.g",
    )  # fmt: skip
    keys += [
        f"{head}.0.{attention}.{parameter}"
        for head in ("final_conv", "occlusion_map")
        for attention in CROSS_ATTENTIONS
        for parameter in parameters
    ]
    return keys


def model_rotary_dim(config: Mapping) -> int:
    """Rotated channels per temporal head of a [`UNet3DFlowModel`] configuration."""
    return config["rotary_dim"] or min(32, config["attention_head_dim"])


def _check_rotary(unet_state_dict: Mapping[str, torch.Tensor], rotary_dim: int) -> None:
    expected = RotaryEmbedding(rotary_dim).inv_freq
    for key, value in unet_state_dict.items():
        if not key.endswith("rotary_emb.freqs"):
            continue
        if value.shape != expected.shape or not torch.allclose(value.float(), expected):
            raise CheckpointConversionError(
                f"DAWN checkpoint: {UNET_PREFIX}{key} does not hold the rotary frequencies 10000^(-2i/{rotary_dim}); "
                "the model would not match the official one"
            )


def _check_schedule(schedule: Mapping[str, torch.Tensor]) -> None:
    expected = dawn_cosine_schedule_buffers()
    for name, reference in expected.items():
        stored = schedule[name]
        # rtol as well: sqrt_recip(m1)_alphas_cumprod reach ~1e4 near t = 1000.
        matches = stored.shape == reference.shape and torch.allclose(
            stored.double(), reference.double(), rtol=1e-6, atol=1e-6
        )
        if not matches:
            raise CheckpointConversionError(
                f"DAWN checkpoint: schedule buffer {name!r} is not DAWN's cosine schedule (T=1000, s=0.008, betas "
                "clipped at 0.9999); this checkpoint was trained with another noise schedule and the DAWN samplers "
                "would not fit it"
            )


def convert_unet_checkpoint(
    diffusion_state_dict: Mapping[str, torch.Tensor],
    face_location_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    window: Optional[int] = 40,
    **config_overrides,
) -> UNet3DFlowModel:
    r"""
    Builds a [`UNet3DFlowModel`] from the `checkpoint['diffusion']` entry of an official DAWN checkpoint.

    The configuration is read off the tensor shapes; every key is mapped (fused `to_qkv` / `to_kv` projections are
    split, the unused cross-attentions of the output heads are dropped), unknown or missing keys are refused, the
    ten stored rotary-frequency copies and the twelve schedule buffers are checked against what DAWN computes and
    then dropped.

    Args:
        diffusion_state_dict (`Mapping[str, torch.Tensor]`): `checkpoint['diffusion']` (`denoise_fn.*` + schedule).
        face_location_state_dict (`Mapping[str, torch.Tensor]`, *optional*): Face-location encoder weights with the
            official names (`conv1.weight`, `conv1.bias`, `conv2.weight`, `conv2.bias`). No official checkpoint
            contains them; by default they are drawn with [`seeded_face_location_state_dict`].
        window (`int`, *optional*, defaults to 40): Temporal attention window (`win_width` of the official configs).
        config_overrides: Other [`UNet3DFlowModel`] configuration values (e.g. `norm_num_groups`, which no shape
            determines).

    Raises:
        CheckpointConversionError: the state dict is not an official DAWN A2V-FDM one.
    """
    unet_state_dict, schedule, unknown = {}, {}, []
    for key, value in diffusion_state_dict.items():
        if key.startswith(UNET_PREFIX):
            unet_state_dict[key[len(UNET_PREFIX) :]] = value
        elif key in SCHEDULE_BUFFERS:
            schedule[key] = value
        else:
            unknown.append(key)
    check_keys(SCHEDULE_BUFFERS, list(schedule) + unknown, "DAWN checkpoint (diffusion schedule)")
    _check_schedule(schedule)

    face_channels = 16
    if face_location_state_dict is not None:
        check_keys(FACE_LOCATION_KEYS, face_location_state_dict.keys(), "face-location encoder state dict")
        face_channels = face_location_state_dict["conv2.weight"].shape[0]
    config = infer_unet_config(unet_state_dict, config_overrides.get("face_location_channels", face_channels))
    if face_location_state_dict is not None:
        config["face_location_hidden_channels"] = face_location_state_dict["conv1.weight"].shape[0]
    config["window"] = window
    config.update(config_overrides)
    dropped = dropped_official_keys(len(config["block_out_channels"]))
    missing = [UNET_PREFIX + key for key in dropped if key not in unet_state_dict]
    if missing:
        check_keys(missing, [], "DAWN checkpoint (U-Net weights)")
    _check_rotary(unet_state_dict, model_rotary_dim(config))

    model = UNet3DFlowModel(**config)
    converted = convert_unet_state_dict(unet_state_dict)
    if face_location_state_dict is None:
        face_location_state_dict = seeded_face_location_state_dict(
            model.config.face_location_hidden_channels, model.config.face_location_channels
        )
    converted.update({f"face_location_encoder.{key}": value for key, value in face_location_state_dict.items()})
    check_keys(model.state_dict().keys(), converted.keys(), "DAWN checkpoint (U-Net weights)")
    config_note = "the inferred configuration (pass the configuration values that differ as keyword arguments)"
    return load_converted_state_dict(model, converted, "DAWN checkpoint", config_note)


def convert_dawn_file(
    path: "str | os.PathLike",
    face_location_state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    **config_overrides,
) -> UNet3DFlowModel:
    """Loads `DAWN_128.pth` / `DAWN_256.pth` and converts its `diffusion` entry with [`convert_unet_checkpoint`]."""
    checkpoint = load_official_checkpoint(path, "dawn")
    return convert_unet_checkpoint(checkpoint["diffusion"], face_location_state_dict, **config_overrides)
