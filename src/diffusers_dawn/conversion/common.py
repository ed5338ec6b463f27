"""Reading official DAWN checkpoints and checking their keys, shared by the per-model converters."""

import os
import pickle
import re
import zipfile
from typing import Callable, Dict, Iterable, Mapping, Optional

import torch

from ..utils.errors import DAWNInputError


# What each official file holds at its top level (facts §9).
CHECKPOINT_KINDS = {
    "lfg": "an LFG checkpoint (LFG_128_1000ep.pth / LFG_256_400ep.pth: 'generator', 'region_predictor', 'bg_predictor')",
    "dawn": "a DAWN A2V-FDM checkpoint (DAWN_128.pth / DAWN_256.pth: 'diffusion')",
    "pbnet": "a PBNet checkpoint (pbnet_seperate/{pose,blink}/checkpoint_*.pth.tar: flat 'encoder.*' / 'decoder.*' keys)",
}


class CheckpointConversionError(DAWNInputError):
    """An official checkpoint cannot be converted; the message says which file/keys and what to do."""


def detect_checkpoint_kind(checkpoint: Mapping) -> Optional[str]:
    """Returns 'lfg', 'dawn' or 'pbnet' from the top-level layout of a loaded checkpoint, or None."""
    if not isinstance(checkpoint, Mapping):
        return None
    keys = set(checkpoint.keys())
    if {"generator", "region_predictor", "bg_predictor"} <= keys:
        return "lfg"
    if "diffusion" in keys:
        return "dawn"
    if keys and all(isinstance(k, str) and k.split(".", 1)[0] in ("encoder", "decoder") for k in keys):
        return "pbnet"
    return None


def load_tensors_only(path: "str | os.PathLike"):
    """
    `torch.load(path, weights_only=True)` on the CPU. A pickle that holds other Python objects (which could run code
    when unpickled) is refused with a [`CheckpointConversionError`] that says so; official DAWN files hold only
    tensors, containers and numbers.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" (it names {found.group(1)})" if found else ""
        raise CheckpointConversionError(
            f"{os.fspath(path)}: refused for safety: the file holds Python objects{what}, not only tensors, and "
            "unpickling it could run code; official DAWN checkpoints hold only tensors, so check that this is the "
            "file you meant and where it came from"
        ) from None


def load_official_checkpoint(path: "str | os.PathLike", expected_kind: str) -> Dict:
    """
    Loads an official `.pth` file safely (`weights_only=True`) and checks that it is of `expected_kind`.

    Raises:
        CheckpointConversionError: missing, truncated or non-checkpoint file, or a checkpoint of another kind.
    """
    path = os.fspath(path)
    if expected_kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {expected_kind!r}; expected one of {sorted(CHECKPOINT_KINDS)}")
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"{path}: no such file; expected {CHECKPOINT_KINDS[expected_kind]}")
    try:
        checkpoint = load_tensors_only(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as error:
        raise CheckpointConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is truncated or corrupt, download it again"
        ) from None
    kind = detect_checkpoint_kind(checkpoint)
    if kind != expected_kind:
        found = CHECKPOINT_KINDS[kind] if kind else "no known DAWN checkpoint layout"
        raise CheckpointConversionError(
            f"{path}: expected {CHECKPOINT_KINDS[expected_kind]}, but the file is {found}; check which file you "
            "passed to which option"
        )
    return checkpoint


def check_keys(expected: Iterable[str], found: Iterable[str], what: str) -> None:
    """Raises one error naming every missing and every unexpected key of a state dict."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unknown keys {_preview(unexpected)}")
        raise CheckpointConversionError(f"{what}: {'; '.join(parts)}; this is not an official DAWN checkpoint layout")


def require_tensor(state_dict: Mapping[str, torch.Tensor], key: str, what: str, layout: str, prefix: str = ""):
    """`state_dict[key]`, needed to infer the model size; a missing key is named (as `prefix + key`, its name in the file)."""
    if key not in state_dict:
        raise CheckpointConversionError(
            f"{what}: missing key {prefix}{key}, needed to infer the model size; this is not an official DAWN "
            f"{layout} checkpoint layout"
        )
    return state_dict[key]


def load_converted_state_dict(
    model: torch.nn.Module,
    converted: Mapping[str, torch.Tensor],
    what: str,
    config_note: str,
    official_name: Optional[Callable[[str], str]] = None,
) -> torch.nn.Module:
    """
    Loads a converted state dict (the model's names) into `model` strictly and returns the model in eval mode, after
    checking every shape: tensors that do not fit the configuration are all named in one error (by their official
    names when `official_name` maps them back), with `config_note` saying which configuration they contradict.
    """
    target = model.state_dict()
    name = official_name or str
    mismatched = [
        f"{name(key)} {tuple(value.shape)} (model expects {tuple(target[key].shape)})"
        for key, value in converted.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    if mismatched:
        raise CheckpointConversionError(f"{what}: shapes do not fit {config_note}: {_preview(mismatched)}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _preview(keys, limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', … ({len(keys) - limit} more)' if len(keys) > limit else ''}]"
