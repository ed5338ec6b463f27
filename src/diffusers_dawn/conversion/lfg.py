"""Conversion of official LFG checkpoints (`LFG_128_1000ep.pth`, `LFG_256_400ep.pth`) to [`LFGAutoencoder`]."""

import functools
import inspect
import os
import re
from typing import Callable, Dict, List, Mapping, Optional

import torch

from ..models.lfg import LFGAutoencoder
from ..models.lfg_blocks import gaussian_blur_kernel, hourglass_widths
from .common import (
    CheckpointConversionError,
    check_keys,
    load_converted_state_dict,
    load_official_checkpoint,
    require_tensor,
)


SUB_DICTS = ("generator", "region_predictor", "bg_predictor")

# (official prefix, prefix in LFGAutoencoder); the first matching rule applies. `{i}` marks the residual block index,
# which the official model names `r{i}`.
KEY_RULES = (
    ("generator.first.", "encoder.input_block."),
    ("generator.down_blocks.", "encoder.down_blocks."),
    ("generator.bottleneck.r{i}.", "decoder.bottleneck.{i}."),
    ("generator.up_blocks.", "decoder.up_blocks."),
    ("generator.final.", "decoder.output_conv."),
    ("generator.pixelwise_flow_predictor.hourglass.", "dense_motion.hourglass."),
    ("generator.pixelwise_flow_predictor.mask.", "dense_motion.mask_head."),
    ("generator.pixelwise_flow_predictor.occlusion.", "dense_motion.occlusion_head."),
    ("region_predictor.predictor.", "region_predictor.hourglass."),
    ("region_predictor.regions.", "region_predictor.region_head."),
    ("bg_predictor.encoder.", "background_predictor.encoder."),
    ("bg_predictor.fc.", "background_predictor.transform_head."),
)

# Constant anti-alias kernels stored by the official model; ours are rebuilt from the config, so they are compared
# instead of loaded. Official key -> (config key of the scale, module attribute path).
KERNEL_KEYS = {
    "region_predictor.down.weight": ("region_scale_factor", "region_predictor.downsample"),
    "generator.pixelwise_flow_predictor.down.weight": ("motion_scale_factor", "dense_motion.downsample"),
}


def _rename(key: str, source_side: int) -> Optional[str]:
    """Maps an official key to ours (source_side=0) or ours to official (source_side=1); None when no rule applies."""
    for rule in KEY_RULES:
        source, target = rule[source_side], rule[1 - source_side]
        if "{i}" in source:
            pattern = re.escape(source).replace(re.escape("{i}"), r"(\d+)")
            match = re.match(pattern, key)
            if match:
                return target.replace("{i}", match.group(1)) + key[match.end() :]
        elif key.startswith(source):
            return target + key[len(source) :]
    return None


def official_key_to_diffusers(key: str) -> Optional[str]:
    """Name in [`LFGAutoencoder`] of an official `<sub-dict>.<state-dict key>`, or None for unknown keys."""
    return _rename(key, 0)


def diffusers_key_to_official(key: str) -> Optional[str]:
    """Official `<sub-dict>.<state-dict key>` of an [`LFGAutoencoder`] state-dict key."""
    return _rename(key, 1)


def _flatten(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise CheckpointConversionError(
            f"an LFG checkpoint is a dict with {SUB_DICTS}, got {type(checkpoint).__name__}; load the .pth with "
            "`load_official_checkpoint(path, 'lfg')` or use `convert_lfg_file`"
        )
    absent = [name for name in SUB_DICTS if name not in checkpoint]
    if absent:
        raise CheckpointConversionError(
            f"the LFG checkpoint has no {absent} entries (top-level keys: {sorted(map(str, checkpoint))}); expected "
            "the dict saved by the official LFG training ('generator', 'region_predictor', 'bg_predictor')"
        )
    flat = {}
    for name in SUB_DICTS:
        for key, value in checkpoint[name].items():
            flat[f"{name}.{key}"] = value
    return flat


_require = functools.partial(require_tensor, what="LFG checkpoint", layout="LFG")


def _count_blocks(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for key in state_dict for match in [regex.fullmatch(key)] if match}
    if indices != set(range(len(indices))):
        raise CheckpointConversionError(
            f"LFG checkpoint: blocks matching {pattern} are not numbered 0..n-1: {sorted(indices)}"
        )
    return len(indices)


def _infer_max_features(
    widths: List[int], width_fn: Callable[[int], List[int]], default: int, what: str
) -> int:
    """The channel cap that reproduces `widths`: the default when it does, else the cap that bites, else the widest."""
    if width_fn(default) == widths:
        return default
    candidate = max(widths)
    if width_fn(candidate) != widths:
        raise CheckpointConversionError(
            f"LFG checkpoint: the {what} widths {widths} do not follow min(max_features, block_expansion * 2**i); "
            "this is not an official DAWN LFG checkpoint layout"
        )
    return candidate


def _hourglass_config(state_dict, prefix: str, default_max: int, what: str):
    """(block_expansion, num_blocks, max_features) of an official hourglass (or encoder) under `prefix`."""
    num_blocks = _count_blocks(state_dict, re.escape(prefix) + r"encoder\.down_blocks\.(\d+)\.conv\.weight")
    if num_blocks == 0:
        raise CheckpointConversionError(f"LFG checkpoint: no {prefix}encoder.down_blocks.* found for the {what}")
    widths = [
        int(_require(state_dict, f"{prefix}encoder.down_blocks.{i}.conv.weight").shape[0]) for i in range(num_blocks)
    ]
    decoder_key = f"{prefix}decoder.up_blocks.{num_blocks - 1}.conv.weight"
    # The last decoder block outputs exactly block_expansion channels; an encoder alone starts at 2 * block_expansion.
    block_expansion = int(state_dict[decoder_key].shape[0]) if decoder_key in state_dict else widths[0] // 2
    max_features = _infer_max_features(
        widths, lambda cap: hourglass_widths(block_expansion, num_blocks, cap), default_max, what
    )
    return block_expansion, num_blocks, max_features


def infer_lfg_config(state_dict: Mapping[str, torch.Tensor]) -> Dict:
    """
    Reads the [`LFGAutoencoder`] config off the tensor shapes of a flattened official checkpoint
    (`<sub-dict>.<key>`). Values that no weight determines (temperature, scale factors, flags) keep their defaults.
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(LFGAutoencoder.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    first = _require(state_dict, "generator.first.conv.weight")
    block_expansion, num_channels = int(first.shape[0]), int(first.shape[1])
    num_down_blocks = _count_blocks(state_dict, r"generator\.down_blocks\.(\d+)\.conv\.weight")
    generator_widths = [
        int(_require(state_dict, f"generator.down_blocks.{i}.conv.weight").shape[0]) for i in range(num_down_blocks)
    ]
    max_features = _infer_max_features(
        generator_widths,
        lambda cap: hourglass_widths(block_expansion, num_down_blocks, cap),
        defaults["max_features"],
        "generator",
    )
    region_expansion, region_blocks, region_max = _hourglass_config(
        state_dict, "region_predictor.predictor.", defaults["region_max_features"], "region predictor"
    )
    motion_expansion, motion_blocks, motion_max = _hourglass_config(
        state_dict, "generator.pixelwise_flow_predictor.hourglass.", defaults["motion_max_features"], "dense motion"
    )
    config = dict(
        num_regions=int(_require(state_dict, "region_predictor.regions.weight").shape[0]),
        num_channels=num_channels,
        block_expansion=block_expansion,
        max_features=max_features,
        num_down_blocks=num_down_blocks,
        num_bottleneck_blocks=_count_blocks(state_dict, r"generator\.bottleneck\.r(\d+)\.conv1\.weight"),
        region_block_expansion=region_expansion,
        region_max_features=region_max,
        region_num_blocks=region_blocks,
        motion_block_expansion=motion_expansion,
        motion_max_features=motion_max,
        motion_num_blocks=motion_blocks,
    )
    if "bg_predictor.fc.weight" in state_dict:
        outputs = int(state_dict["bg_predictor.fc.weight"].shape[0])
        if outputs not in (6, 8):
            raise CheckpointConversionError(
                f"LFG checkpoint: bg_predictor.fc has {outputs} outputs; expected 6 (affine) or 8 (perspective)"
            )
        config["bg_type"] = "affine" if outputs == 6 else "perspective"
        expansion, blocks, cap = _hourglass_config(
            state_dict, "bg_predictor.", defaults["background_max_features"], "background predictor"
        )
        config.update(background_block_expansion=expansion, background_num_blocks=blocks, background_max_features=cap)
    else:
        config["bg_type"] = "zero"
    return config


def convert_lfg_checkpoint(checkpoint: Mapping, **config_overrides) -> LFGAutoencoder:
    r"""
    Builds an [`LFGAutoencoder`] from an official LFG checkpoint.

    Args:
        checkpoint (`Mapping`): `{"generator": sd, "region_predictor": sd, "bg_predictor": sd}` as saved by the
            official training (other top-level entries such as `optimizer` or `epoch` are ignored).
        config_overrides: Config values that the weights do not determine (e.g. `temperature`,
            `region_scale_factor`), or explicit values for inferred ones.

    Returns:
        The model in eval mode, float32, with every weight and BatchNorm statistic loaded strictly.

    Raises:
        CheckpointConversionError: missing or unknown keys (all named in one message), shapes that contradict the
            config, or stored anti-alias kernels that differ from the ones the config implies.
    """
    state_dict = _flatten(checkpoint)
    config = infer_lfg_config(state_dict)
    config.update(config_overrides)
    model = LFGAutoencoder(**config)

    expected = {diffusers_key_to_official(key) for key in model.state_dict()} | set(KERNEL_KEYS)
    check_keys(expected, state_dict, "LFG checkpoint")

    for official_key, (scale_key, module_path) in KERNEL_KEYS.items():
        owner, attribute = module_path.rsplit(".", 1)
        # No downsampling module (scale 1) means the config cannot explain a stored kernel.
        has_kernel = getattr(model.get_submodule(owner), attribute) is not None
        computed = gaussian_blur_kernel(model.config.num_channels, model.config[scale_key]) if has_kernel else None
        stored = state_dict[official_key]
        matches = computed is not None and stored.shape == computed.shape
        if not (matches and torch.allclose(stored.float(), computed, atol=1e-7)):
            raise CheckpointConversionError(
                f"LFG checkpoint: {official_key} is not the anti-alias kernel of {scale_key}="
                f"{model.config[scale_key]}; pass the right {scale_key}=... to the converter"
            )

    converted = {
        official_key_to_diffusers(key): value for key, value in state_dict.items() if key not in KERNEL_KEYS
    }
    config_note = f"the config {dict(config_overrides) or '(inferred)'}"
    return load_converted_state_dict(model, converted, "LFG checkpoint", config_note, diffusers_key_to_official)


def convert_lfg_file(path: "str | os.PathLike", **config_overrides) -> LFGAutoencoder:
    """Loads an official LFG `.pth` (safely, see `load_official_checkpoint`) and converts it."""
    return convert_lfg_checkpoint(load_official_checkpoint(path, "lfg"), **config_overrides)
