"""Conversion of official PBNet checkpoints (`pbnet_seperate/{pose,blink}/checkpoint_*.pth.tar`) to [`PBNetModel`]."""

import functools
import os
import re
from typing import Dict, Mapping, Optional

import torch
import yaml
from diffusers.utils import logging

from ..models.embeddings import RotaryEmbedding
from ..models.pbnet import POSE_STATE_MAX, POSE_STATE_MIN, PBNetModel, sinusoidal_position_encoding
from .common import (
    CheckpointConversionError,
    check_keys,
    load_converted_state_dict,
    load_official_checkpoint,
    require_tensor,
)


logger = logging.get_logger(__name__)

# Attention window of each supported official architecture (`archiname` in opt.yaml); they share every weight.
ARCHITECTURE_WINDOWS = {"transformerreemb5": 200, "transformerreemb6": 100}
DEFAULT_ARCHITECTURE = "transformerreemb5"

# Values of the official option parser for settings that no weight shape determines.
OPTION_DEFAULTS = {"max_distance": 128, "dropout": 0.1, "activation": "gelu"}

# (official prefix, prefix in PBNetModel) for weights that only change name.
RENAMES = (
    ("encoder.mu_layer.", "encoder.mu_head."),
    ("encoder.sigma_layer.", "encoder.logvar_head."),
    ("encoder.poseEmbedding.", "encoder.delta_embedding."),
    ("encoder.firstposeEmbedding.", "encoder.initial_state_embedding."),
    ("encoder.audioEmbedding.", "encoder.audio_embedding."),
    ("encoder.seqTransEncoder.layers.", "encoder.transformer.layers."),
    ("decoder.firstposeEmbedding.", "decoder.initial_state_embedding."),
    ("decoder.audioEmbedding.", "decoder.audio_embedding."),
    ("decoder.ztimelinear.", "decoder.memory_proj."),
    ("decoder.time_rel_pos_bias_tgt.", "decoder.self_attention_bias."),
    ("decoder.time_rel_pos_bias_mem.", "decoder.cross_attention_bias."),
    ("decoder.init_temporal_attn.fn.fn.to_out.weight", "decoder.query_attn.to_out.0.weight"),
    ("decoder.finallayer.", "decoder.proj_out."),
)
LAYER_RENAMES = (
    ("self_attn.to_out.weight", "self_attn.to_out.0.weight"),
    ("multihead_attn.to_q.", "cross_attn.to_q."),
    ("multihead_attn.to_k.", "cross_attn.to_k."),
    ("multihead_attn.to_v.", "cross_attn.to_v."),
    ("multihead_attn.to_out.weight", "cross_attn.to_out.0.weight"),
    ("ffn.linear1.", "ff_in."),
    ("ffn.linear2.", "ff_out."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("layer_norm3.", "norm3."),
)
DECODER_LAYER = re.compile(r"decoder\.seqTransDecoder\.decoder_layers\.(\d+)\.(.+)")
ENCODER_LAYER = re.compile(r"encoder\.seqTransEncoder\.layers\.(\d+)\..+")

QUERY_ATTN = "decoder.init_temporal_attn.fn.fn."
POSITION_BUFFERS = ("encoder.sequence_pos_encoder.pe", "decoder.sequence_pos_encoder.pe")


_require = functools.partial(require_tensor, what="PBNet checkpoint", layout="PBNet")


def _rotary_keys(num_layers: int):
    keys = [QUERY_ATTN + "rotary_emb.freqs"]
    for index in range(num_layers):
        prefix = f"decoder.seqTransDecoder.decoder_layers.{index}."
        keys += [prefix + "self_attn.rotary_emb.freqs", prefix + "multihead_attn.rotary_emb.freqs"]
    return keys


def _count_layers(state_dict: Mapping[str, torch.Tensor], pattern: "re.Pattern") -> int:
    indices = {int(match.group(1)) for key in state_dict for match in [pattern.fullmatch(key)] if match}
    if not indices or indices != set(range(len(indices))):
        raise CheckpointConversionError(
            f"PBNet checkpoint: layers matching {pattern.pattern} are numbered {sorted(indices)}, expected 0..n-1"
        )
    return len(indices)


def _rotary_dim(state_dict: Mapping[str, torch.Tensor], num_heads: int, num_layers: int) -> int:
    """Rotated channels per head, after checking that every rotary table has the `transformerreemb5` layout."""
    shapes = {key: tuple(_require(state_dict, key).shape) for key in _rotary_keys(num_layers)}
    expected = (min(32, num_heads) // 2,)
    wrong = {key: shape for key, shape in shapes.items() if shape != expected}
    if wrong:
        query_shape = shapes[QUERY_ATTN + "rotary_emb.freqs"]
        layer_shapes = {shape for key, shape in shapes.items() if not key.startswith(QUERY_ATTN)}
        if query_shape == (16,) and layer_shapes == {(8,)}:
            reason = (
                "these are the (16,)/(8,) rotary tables of the `transformerreemb8` architecture, which was removed "
                "from the official repository and which the official inference code cannot load either: its decoder "
                "skips the initial temporal attention and rotates 32/16 channels per head, so it is a different "
                "model"
            )
        else:
            reason = "no official PBNet architecture has this layout"
        raise CheckpointConversionError(
            f"PBNet checkpoint: rotary `freqs` shapes {_preview_shapes(wrong)} where `transformerreemb5`/"
            f"`transformerreemb6` with {num_heads} heads store {expected}; {reason}. Only transformerreemb5/6 "
            "checkpoints (the released pose and blink networks) can be converted"
        )
    rotary_dim = 2 * expected[0]
    reference = RotaryEmbedding(rotary_dim).inv_freq
    for key in shapes:
        if not torch.allclose(state_dict[key].float(), reference, rtol=1e-6, atol=1e-7):
            raise CheckpointConversionError(
                f"PBNet checkpoint: {key} = {state_dict[key].tolist()} is not the standard rotary frequency table "
                f"{reference.tolist()}; the checkpoint was modified and cannot be converted faithfully"
            )
    return rotary_dim


def _preview_shapes(shapes: Dict[str, tuple], limit: int = 3) -> str:
    items = [f"{key}: {shape}" for key, shape in list(shapes.items())[:limit]]
    return "{" + ", ".join(items) + (", …" if len(shapes) > limit else "") + "}"


def _window(options: Optional[Mapping]) -> int:
    architecture = None if options is None else options.get("archiname")
    if architecture is None:
        logger.info(
            "PBNet conversion: no `archiname` option given; assuming %s (attention window ±%d frames). Pass the "
            "checkpoint's opt.yaml to be sure.",
            DEFAULT_ARCHITECTURE,
            ARCHITECTURE_WINDOWS[DEFAULT_ARCHITECTURE],
        )
        architecture = DEFAULT_ARCHITECTURE
    if architecture not in ARCHITECTURE_WINDOWS:
        raise CheckpointConversionError(
            f"PBNet options: archiname {architecture!r} is not supported; the released networks use one of "
            f"{sorted(ARCHITECTURE_WINDOWS)}"
        )
    return ARCHITECTURE_WINDOWS[architecture]


def infer_pbnet_config(state_dict: Mapping[str, torch.Tensor], options: Optional[Mapping] = None) -> Dict:
    """
    Reads the [`PBNetModel`] config off an official PBNet state dict (and its parsed `opt.yaml`, if given, for the
    architecture window, `max_distance`, `dropout` and `activation`, which no weight shape determines).
    """
    options = {} if options is None else options
    bias_table = _require(state_dict, "decoder.time_rel_pos_bias_tgt.relative_attention_bias.weight")
    num_buckets, num_heads = (int(size) for size in bias_table.shape)
    num_layers = _count_layers(state_dict, re.compile(r"decoder\.seqTransDecoder\.decoder_layers\.(\d+)\..+"))
    encoder_layers = _count_layers(state_dict, ENCODER_LAYER)
    if encoder_layers != num_layers:
        raise CheckpointConversionError(
            f"PBNet checkpoint: {encoder_layers} encoder layers but {num_layers} decoder layers; the official model "
            "has the same number in both"
        )
    final_layer = _require(state_dict, "decoder.finallayer.weight")
    state_dim, pose_latent_dim = (int(size) for size in final_layer.shape)
    audio_embedding = _require(state_dict, "decoder.audioEmbedding.weight")
    audio_latent_dim, audio_dim = (int(size) for size in audio_embedding.shape)
    latent_dim = int(_require(state_dict, "encoder.mu_layer.weight").shape[0])
    qkv_rows = int(_require(state_dict, QUERY_ATTN + "to_qkv.weight").shape[0])
    if qkv_rows % (3 * num_heads):
        raise CheckpointConversionError(
            f"PBNet checkpoint: {QUERY_ATTN}to_qkv.weight has {qkv_rows} rows, not a multiple of 3 x {num_heads} heads"
        )
    if state_dim == 6:
        state_range = {"state_min": list(POSE_STATE_MIN), "state_max": list(POSE_STATE_MAX)}
    elif state_dim == 2:
        state_range = {"state_min": None, "state_max": None}
    else:
        raise CheckpointConversionError(
            f"PBNet checkpoint: the network predicts {state_dim}-D states; only the separate pose (6) and blink (2) "
            "networks used by DAWN's inference are supported (their normalisation is known)"
        )
    config = dict(
        audio_dim=audio_dim,
        state_dim=state_dim,
        pose_latent_dim=pose_latent_dim,
        audio_latent_dim=audio_latent_dim,
        latent_dim=latent_dim,
        ff_size=int(_require(state_dict, "decoder.seqTransDecoder.decoder_layers.0.ffn.linear1.weight").shape[0]),
        num_layers=num_layers,
        num_heads=num_heads,
        attention_head_dim=qkv_rows // (3 * num_heads),
        num_buckets=num_buckets,
        window=_window(options),
        rotary_dim=_rotary_dim(state_dict, num_heads, num_layers),
        **state_range,
    )
    for name, default in OPTION_DEFAULTS.items():
        config[name] = type(default)(options.get(name, default))
    return config


def _check_position_buffers(state_dict: Mapping[str, torch.Tensor]) -> None:
    """The official `pe` buffers are recomputed on the fly; make sure they are the standard sinusoid."""
    for key in POSITION_BUFFERS:
        stored = _require(state_dict, key)
        if stored.ndim != 3 or stored.shape[1] != 1:
            raise CheckpointConversionError(
                f"PBNet checkpoint: {key} has shape {tuple(stored.shape)}, expected (positions, 1, channels)"
            )
        expected = sinusoidal_position_encoding(stored.shape[0], stored.shape[2])
        if not torch.allclose(stored[:, 0].float(), expected, atol=1e-5, rtol=0):
            raise CheckpointConversionError(
                f"PBNet checkpoint: {key} is not the standard sinusoidal position encoding that the model recomputes; "
                "the checkpoint was modified and cannot be converted faithfully"
            )


def _split_fused_projection(prefix: str, fused: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Official `to_qkv` (rows: queries, keys, values, heads-major inside each) → separate `to_q`/`to_k`/`to_v`."""
    return {f"{prefix}{name}.weight": rows for name, rows in zip(("to_q", "to_k", "to_v"), fused.chunk(3, dim=0))}


def _convert_key(key: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Official key and tensor → the [`PBNetModel`] entries it becomes (empty for dropped constants)."""
    if key in POSITION_BUFFERS or key.endswith("rotary_emb.freqs"):
        return {}
    if key == "decoder.init_proj.weight":
        return {}  # multiplies an all-zero input: only the bias matters
    if key == "decoder.init_proj.bias":
        return {"decoder.initial_query": value}
    if key == QUERY_ATTN + "to_qkv.weight":
        return _split_fused_projection("decoder.query_attn.", value)
    if key == "decoder.init_temporal_attn.fn.norm.gamma":
        return {"decoder.query_norm.weight": value.reshape(-1)}
    match = DECODER_LAYER.fullmatch(key)
    if match:
        index, rest = match.groups()
        prefix = f"decoder.layers.{index}."
        if rest == "self_attn.to_qkv.weight":
            return _split_fused_projection(prefix + "self_attn.", value)
        for source, target in LAYER_RENAMES:
            if rest.startswith(source):
                return {prefix + target + rest[len(source) :]: value}
        return {}
    for source, target in RENAMES:
        if key.startswith(source):
            return {target + key[len(source) :]: value}
    return {}


def official_pbnet_keys(num_layers: int) -> set:
    """The exact key set of an official `transformerreemb5`/`6` PBNet state dict with `num_layers` layers."""
    weight_and_bias = ("weight", "bias")
    keys = set(POSITION_BUFFERS) | set(_rotary_keys(num_layers))
    for name in ("mu_layer", "sigma_layer", "poseEmbedding", "firstposeEmbedding", "audioEmbedding"):
        keys |= {f"encoder.{name}.{suffix}" for suffix in weight_and_bias}
    for name in ("firstposeEmbedding", "audioEmbedding", "ztimelinear", "init_proj", "finallayer"):
        keys |= {f"decoder.{name}.{suffix}" for suffix in weight_and_bias}
    keys |= {
        "decoder.time_rel_pos_bias_tgt.relative_attention_bias.weight",
        "decoder.time_rel_pos_bias_mem.relative_attention_bias.weight",
        "decoder.init_temporal_attn.fn.norm.gamma",
        QUERY_ATTN + "to_qkv.weight",
        QUERY_ATTN + "to_out.weight",
    }
    for index in range(num_layers):
        prefix = f"encoder.seqTransEncoder.layers.{index}."
        keys |= {prefix + "self_attn.in_proj_weight", prefix + "self_attn.in_proj_bias"}
        for name in ("self_attn.out_proj", "linear1", "linear2", "norm1", "norm2"):
            keys |= {f"{prefix}{name}.{suffix}" for suffix in weight_and_bias}
        prefix = f"decoder.seqTransDecoder.decoder_layers.{index}."
        keys |= {prefix + f"{name}.weight" for name in ("self_attn.to_qkv", "self_attn.to_out")}
        keys |= {prefix + f"multihead_attn.{name}.weight" for name in ("to_q", "to_k", "to_v", "to_out")}
        for name in ("ffn.linear1", "ffn.linear2", "layer_norm1", "layer_norm2", "layer_norm3"):
            keys |= {f"{prefix}{name}.{suffix}" for suffix in weight_and_bias}
    return keys


def convert_pbnet_checkpoint(state_dict: Mapping[str, torch.Tensor], options: Optional[Mapping] = None) -> PBNetModel:
    r"""
    Builds a [`PBNetModel`] from an official PBNet state dict (`torch.save(model.state_dict())`, 88 entries).

    Sizes come from the tensor shapes; the architecture (window ±200 for `transformerreemb5`, ±100 for
    `transformerreemb6`), `max_distance`, `dropout` and `activation` from `options`, the parsed `opt.yaml` of the
    checkpoint folder (defaults: transformerreemb5 and the official parser's values). The fused self-attention
    projections are split into `to_q`/`to_k`/`to_v`; the stored sinusoidal and rotary tables are checked against
    the ones the model recomputes and dropped.

    Raises:
        CheckpointConversionError: missing or unknown keys (all named in one message), rotary tables of the removed
            `transformerreemb8` layout, an unknown `archiname`, or constants that differ from the official ones.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointConversionError(
            "a PBNet checkpoint is a flat state dict ('encoder.*'/'decoder.*' keys), got "
            f"{type(state_dict).__name__}; load the file with `load_official_checkpoint(path, 'pbnet')` or use "
            "`convert_pbnet_file`"
        )
    config = infer_pbnet_config(state_dict, options)
    model = PBNetModel(**config)
    check_keys(official_pbnet_keys(model.config.num_layers), state_dict, "PBNet checkpoint")
    _check_position_buffers(state_dict)

    converted = {}
    for key, value in state_dict.items():
        converted.update(_convert_key(key, value))
    converted = {key: value.float() for key, value in converted.items()}
    return load_converted_state_dict(model, converted, "PBNet checkpoint", "the inferred config")


class _TolerantYamlLoader(yaml.SafeLoader):
    """Safe loader that reads Python-tagged nodes (`!!python/tuple`, `!!python/object:…`) as plain data."""


def _construct_plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantYamlLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_plain)


def load_pbnet_options(path: "str | os.PathLike") -> Dict:
    """
    Parses an official PBNet `opt.yaml`. The official files are dumped by PyYAML from Python objects and may carry
    Python tags; they are then read with a safe loader that turns tagged nodes into plain values (never with the
    unsafe loader, which could run code from the file).
    """
    with open(path, "r", encoding="utf-8") as handle:
        text = handle.read()
    try:
        options = yaml.safe_load(text)
    except yaml.constructor.ConstructorError:
        options = yaml.load(text, Loader=_TolerantYamlLoader)
    if not isinstance(options, Mapping):
        raise CheckpointConversionError(f"{path}: expected a mapping of options, got {type(options).__name__}")
    return dict(options)


def convert_pbnet_file(
    path: "str | os.PathLike", options_path: Optional["str | os.PathLike"] = None
) -> PBNetModel:
    """
    Loads an official PBNet `checkpoint_*.pth.tar` (safely, see `load_official_checkpoint`) and converts it. The
    options come from `options_path`, or from an `opt.yaml` next to the checkpoint when there is one.
    """
    state_dict = load_official_checkpoint(path, "pbnet")
    if options_path is None:
        beside = os.path.join(os.path.dirname(os.fspath(path)), "opt.yaml")
        options_path = beside if os.path.isfile(beside) else None
    options = load_pbnet_options(options_path) if options_path is not None else None
    return convert_pbnet_checkpoint(state_dict, options)
