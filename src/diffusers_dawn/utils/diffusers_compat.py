"""
The package's only uses of diffusers' private API, each behind a small function.

diffusers keeps these names private, so a release may change them without notice. Every coupling lives here, with
what it relies on and why, so that a new diffusers release is checked (and, where needed, shimmed) in one module.
The range of diffusers releases CI tests is the one `setup.py` allows.
"""

import collections
import contextlib
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple


@contextlib.contextmanager
def loadable_component_modules(modules: Iterable[str]) -> Iterator[None]:
    """
    Makes `DiffusionPipeline.download` accept components from `modules` for the duration of the block.

    Relies on `diffusers.pipelines.pipeline_loading_utils.LOADABLE_CLASSES`, the dict of libraries whose classes
    `download` knows how to fetch (diffusers, transformers, ...). A `model_index.json` entry from any other library is
    treated as custom code expected inside the repository, and its files are not downloaded. DAWN's components come
    from this installed package under their module paths, so those modules are registered (with no class list, which
    `download` only needs to know the library) and removed again afterwards, leaving diffusers' table as it was.
    """
    from diffusers.pipelines import pipeline_loading_utils

    known = pipeline_loading_utils.LOADABLE_CLASSES
    added = [module for module in dict.fromkeys(modules) if module not in known]
    known.update({module: {} for module in added})
    try:
        yield
    finally:
        for module in added:
            known.pop(module, None)


def mark_config_defaults(config_owner: Any, names: Iterable[str], exclude: Iterable[str] = ()) -> None:
    """
    Adds `names` (less `exclude`) to the `_use_default_values` list of a `ConfigMixin`'s config.

    Relies on `ConfigMixin._internal_dict` (a `FrozenDict`, replaced whole since it cannot be edited) and on the
    `_use_default_values` key, the keys `from_config` leaves out so that the target class uses its own defaults. That
    is how diffusers lets one scheduler's config build another scheduler class without unknown-option warnings.
    """
    internal = config_owner._internal_dict
    defaults = set(internal.get("_use_default_values", [])) | set(names)
    defaults -= set(exclude)
    config_owner._internal_dict = type(internal)({**internal, "_use_default_values": sorted(defaults)})


def fetch_lora_state_dict(path_or_state_dict, **kwargs) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """
    `(state_dict, lora_metadata)` from a local folder, a Hub repository or an in-memory state dict.

    Relies on `diffusers.loaders.lora_base._fetch_state_dict`, the reader every diffusers LoRA loader mixin uses: it
    resolves a weight file in a folder or a Hub repository (`weight_name`, `use_safetensors`, `allow_pickle` and the
    Hub download options as keyword arguments) and reads the adapter configuration that diffusers stores in the
    safetensors metadata. Reusing it keeps adapter files interchangeable with diffusers' own loaders. Releases that
    return a third item (the file's raw metadata) are handled.

    Shim: diffusers 0.36 refuses to guess the file name inside a local folder when offline (`local_files_only` or
    `HF_HUB_OFFLINE=1`), although nothing is downloaded; the standard adapter file name is passed for it then.
    """
    from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE, _fetch_state_dict

    by_name = not isinstance(path_or_state_dict, dict)
    if by_name and kwargs.get("weight_name") is None and kwargs.get("use_safetensors"):
        folder = os.path.join(os.fspath(path_or_state_dict), kwargs.get("subfolder") or "")
        if os.path.isfile(os.path.join(folder, LORA_WEIGHT_NAME_SAFE)):
            kwargs["weight_name"] = LORA_WEIGHT_NAME_SAFE
    fetched = _fetch_state_dict(pretrained_model_name_or_path_or_dict=path_or_state_dict, **kwargs)
    state_dict, metadata = fetched[0], fetched[1]
    return state_dict, metadata


def register_lora_scale_passthrough(model_class_name: str) -> None:
    """
    Lets `set_adapters` on a model of class `model_class_name` use the adapter weights as given.

    Relies on `diffusers.loaders.peft._SET_ADAPTER_SCALE_FN_MAPPING`, where `PeftAdapterMixin.set_adapters` looks up
    how to expand per-block LoRA scales for the model's class. From diffusers 0.38 it is a `defaultdict` that passes
    the weights through for every class it does not list; in 0.36 and 0.37 a plain dict, which raises `KeyError` for
    any other class. Shim: registers the pass-through for `model_class_name` on those releases.
    """
    from diffusers.loaders import peft

    mapping = peft._SET_ADAPTER_SCALE_FN_MAPPING
    if not isinstance(mapping, collections.defaultdict) and model_class_name not in mapping:
        mapping[model_class_name] = lambda model, weights: weights


def pipeline_dtype_kwargs(torch_dtype) -> Dict[str, Any]:
    """
    The keyword that sets the weights' dtype in `DiffusionPipeline.from_pretrained` for the installed diffusers.

    diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name warns); older releases only know `torch_dtype`.
    There is no public marker of the rename, so it is recognised by
    `diffusers.pipelines.pipeline_utils._resolve_dtype`, the private helper that came with it and merges the two.
    """
    from diffusers.pipelines import pipeline_utils

    return {"dtype": torch_dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": torch_dtype}
