"""LoRA loading for [`DAWNPipeline`]: adapters on the A2V-FDM U-Net's attention projections, in diffusers' format."""

import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers.loaders.lora_base import LoraBaseMixin
from diffusers.utils import logging
from huggingface_hub.utils import validate_hf_hub_args

from ..utils.diffusers_compat import fetch_lora_state_dict, register_lora_scale_passthrough


logger = logging.get_logger(__name__)

UNET_NAME = "unet"
LORA_TARGET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0")

# `set_adapters` applies each adapter's weight to the whole U-Net (no per-block scales), on every diffusers release.
register_lora_scale_passthrough("UNet3DFlowModel")


def lora_target_modules(model: torch.nn.Module, suffixes: Sequence[str] = LORA_TARGET_SUFFIXES) -> List[str]:
    r"""
    Full names of the `nn.Linear` layers of `model` whose names end with one of `suffixes` (default: the attention
    projections `to_q`, `to_k`, `to_v`, `to_out.0`), for `LoraConfig(target_modules=...)`.

    Matching by suffix alone would also wrap the 1x1x1 `nn.Conv3d` projections of the U-Net's spatial linear
    attentions, which peft cannot merge (its 1x1-kernel shortcut assumes 2-D convolutions), so `fuse_lora` would fail.
    """
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)
    ]
    if not names:
        raise ValueError(f"no nn.Linear layer of {type(model).__name__} ends with any of {list(suffixes)}")
    return sorted(names)


class DAWNLoraLoaderMixin(LoraBaseMixin):
    r"""
    Loads, saves, fuses and switches LoRA adapters of the [`UNet3DFlowModel`] of a [`DAWNPipeline`].

    Adapter files hold only the LoRA matrices under diffusers' names, prefixed by the component, e.g.
    `unet.down_blocks.0.temporal_attention.attention.to_q.lora_A.weight`, in `pytorch_lora_weights.safetensors`; the
    LoRA configuration (rank, alpha, target modules) travels in the safetensors metadata, so an adapter trained with
    `lora_alpha != r` loads with the same scale. `train_lora.py` writes such files.

    Inherited from [`~loaders.lora_base.LoraBaseMixin`]: `set_adapters`, `disable_lora`, `enable_lora`,
    `delete_adapters`, `get_active_adapters`, `get_list_adapters`, `unload_lora_weights`.
    """

    _lora_loadable_modules = [UNET_NAME]
    unet_name = UNET_NAME

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: Union[str, Dict[str, torch.Tensor]], **kwargs):
        r"""
        Reads a LoRA state dict (and its adapter metadata) from a folder, a file, a Hub repository or a dict.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A Hub repository id, a local folder, a path to a `.safetensors` file, or a state dict.
            weight_name (`str`, *optional*): File name inside the folder or repository.
            cache_dir, force_download, proxies, local_files_only, token, revision, subfolder: Hub download options.
            use_safetensors (`bool`, *optional*): Only read safetensors files.
            return_lora_metadata (`bool`, defaults to `False`): Also return the adapter metadata.

        Returns:
            The state dict with keys prefixed by `unet.`, or `(state_dict, metadata)`.
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        weight_name = kwargs.pop("weight_name", None)
        path = pretrained_model_name_or_path_or_dict
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            # A direct file path: split it into the folder and the weight name the fetcher expects.
            path, weight_name = os.path.split(os.fspath(path))
        use_safetensors = kwargs.pop("use_safetensors", None)
        state_dict, metadata = fetch_lora_state_dict(
            path,
            weight_name=weight_name,
            use_safetensors=True if use_safetensors is None else use_safetensors,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            # Pickled `.bin` adapters are only read when the caller did not ask for safetensors explicitly.
            allow_pickle=use_safetensors is None,
        )
        if kwargs:
            raise TypeError(f"lora_state_dict() got unexpected keyword arguments {sorted(kwargs)}")
        not_lora = sorted(key for key in state_dict if "lora" not in key)
        if not_lora:
            raise ValueError(
                f"this is not a LoRA checkpoint: {len(not_lora)} keys are not LoRA weights (e.g. {not_lora[0]!r}); "
                "every key must contain 'lora' (lora_A / lora_B)"
            )
        prefix = f"{cls.unet_name}."
        if state_dict and not any(key.startswith(prefix) for key in state_dict):
            # Files saved straight from `get_peft_model_state_dict(unet)` have no component prefix.
            state_dict = {prefix + key: value for key, value in state_dict.items()}
            if metadata:
                metadata = {prefix + key: value for key, value in metadata.items()}
        return (state_dict, metadata) if return_lora_metadata else state_dict

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, Dict[str, torch.Tensor]],
        adapter_name: Optional[str] = None,
        hotswap: bool = False,
        **kwargs,
    ):
        r"""
        Loads LoRA weights into `self.unet` as a new adapter (made active).

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                See [`lora_state_dict`]: a Hub repository, a folder, a `.safetensors` file or a state dict.
            adapter_name (`str`, *optional*): Name of the adapter (`default_{i}` when omitted).
            hotswap (`bool`, defaults to `False`): Replace the weights of the already loaded `adapter_name` in place.
            low_cpu_mem_usage (`bool`, *optional*): Create the LoRA layers on the meta device first.
            kwargs: Passed to [`lora_state_dict`].
        """
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            # The loader pops entries from the dict it is given; keep the caller's intact.
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        if not state_dict:
            raise ValueError("the LoRA checkpoint is empty")
        self.load_lora_into_unet(
            state_dict,
            unet=getattr(self, self.unet_name),
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_unet(
        cls,
        state_dict: Dict[str, torch.Tensor],
        unet,
        adapter_name: Optional[str] = None,
        metadata: Optional[dict] = None,
        _pipeline=None,
        low_cpu_mem_usage: bool = False,
        hotswap: bool = False,
    ):
        r"""
        Loads the `unet.`-prefixed LoRA layers of `state_dict` into `unet` through its `load_lora_adapter`.

        Args:
            state_dict (`dict`): LoRA weights with `unet.`-prefixed keys.
            unet ([`UNet3DFlowModel`]): The model receiving the adapter.
            adapter_name (`str`, *optional*): Adapter name.
            metadata (`dict`, *optional*): LoRA configuration saved with the weights (rank, alpha, targets).
            low_cpu_mem_usage, hotswap: See [`load_lora_weights`].
        """
        if unet is None:
            raise ValueError("the pipeline has no `unet` to load LoRA weights into")
        logger.info(f"Loading LoRA weights into {cls.unet_name}.")
        unet.load_lora_adapter(
            state_dict,
            prefix=cls.unet_name,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        unet_lora_layers: Dict[str, Union[torch.nn.Module, torch.Tensor]],
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Callable] = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: Optional[dict] = None,
    ):
        r"""
        Saves U-Net LoRA layers as `pytorch_lora_weights.safetensors` (keys prefixed by `unet.`).

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write to (created if needed).
            unet_lora_layers (`dict`): LoRA state dict of the U-Net, e.g.
                `convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`.
            is_main_process (`bool`, defaults to `True`): Only the main process writes under distributed training.
            weight_name (`str`, *optional*): File name (default `pytorch_lora_weights.safetensors`).
            save_function (`Callable`, *optional*): Replaces the writer (e.g. for distributed saving).
            safe_serialization (`bool`, defaults to `True`): safetensors (else a pickled `.bin`).
            unet_lora_adapter_metadata (`dict`, *optional*): The adapter's `LoraConfig.to_dict()`, stored in the file
                so the adapter reloads with its alpha and target modules.
        """
        if not unet_lora_layers:
            raise ValueError("`unet_lora_layers` is empty: pass the U-Net's LoRA state dict")
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.unet_name: unet_lora_layers},
            lora_metadata={cls.unet_name: unet_lora_adapter_metadata},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def fuse_lora(
        self,
        components: List[str] = [UNET_NAME],
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Optional[List[str]] = None,
        **kwargs,
    ):
        r"""
        Merges the active (or the given) adapters into the U-Net weights, `W ← W + lora_scale · ΔW`; the LoRA layers
        stay in place so [`unfuse_lora`] can subtract them again.

        Args:
            components (`List[str]`, defaults to `["unet"]`): Components to fuse.
            lora_scale (`float`, defaults to 1.0): Scale of the merged update.
            safe_fusing (`bool`, defaults to `False`): Refuse to fuse adapters whose merged weights hold NaNs.
            adapter_names (`List[str]`, *optional*): Adapters to fuse (the active ones when omitted).
        """
        super().fuse_lora(
            components=components, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs
        )

    def unfuse_lora(self, components: List[str] = [UNET_NAME], **kwargs):
        r"""
        Subtracts fused adapters from the U-Net weights again.

        Args:
            components (`List[str]`, defaults to `["unet"]`): Components to unfuse.
        """
        super().unfuse_lora(components=components, **kwargs)
