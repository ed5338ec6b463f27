"""The package's couplings to diffusers' private API (utils/diffusers_compat.py) against the installed diffusers."""

import warnings

import pytest
import safetensors.torch
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines import pipeline_loading_utils

from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler
from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline
from diffusers_dawn.utils.diffusers_compat import (
    fetch_lora_state_dict,
    loadable_component_modules,
    mark_config_defaults,
    pipeline_dtype_kwargs,
)


def test_loadable_component_modules_registers_for_the_block_only():
    table = pipeline_loading_utils.LOADABLE_CLASSES
    before = {library: dict(classes) for library, classes in table.items()}
    with loadable_component_modules(["diffusers_dawn.models.lfg", "diffusers", "diffusers_dawn.models.lfg"]):
        assert table["diffusers_dawn.models.lfg"] == {}
        # A library diffusers already knows keeps its class list.
        assert table["diffusers"] == before["diffusers"]
    assert table == before
    with pytest.raises(RuntimeError):
        with loadable_component_modules(["diffusers_dawn.models.pbnet"]):
            raise RuntimeError("download failed")
    assert table == before


def test_mark_config_defaults_is_what_from_config_skips():
    scheduler = DAWNDDIMScheduler(dynamic_thresholding_ratio=0.8, thresholding=True)
    mark_config_defaults(scheduler, ["thresholding", "trained_betas"], exclude=["trained_betas"])
    assert "thresholding" in scheduler.config["_use_default_values"]
    assert "trained_betas" not in scheduler.config["_use_default_values"]
    # The marked option is left to the target class's own default; the others are passed on.
    ddim = DDIMScheduler.from_config(scheduler.config)
    assert ddim.config.thresholding is False
    assert ddim.config.dynamic_thresholding_ratio == 0.8
    assert torch.allclose(ddim.betas.float(), scheduler.betas)


def test_fetch_lora_state_dict_reads_folders_files_and_dicts(tmp_path):
    weights = {"unet.to_q.lora_A.weight": torch.arange(6.0).reshape(2, 3)}
    safetensors.torch.save_file(weights, str(tmp_path / "pytorch_lora_weights.safetensors"))
    for path, weight_name in ((str(tmp_path), None), (str(tmp_path), "pytorch_lora_weights.safetensors")):
        state_dict, _ = fetch_lora_state_dict(
            path,
            weight_name=weight_name,
            use_safetensors=True,
            local_files_only=True,
            cache_dir=None,
            force_download=False,
            proxies=None,
            token=None,
            revision=None,
            subfolder=None,
            user_agent={},
            allow_pickle=False,
        )
        assert state_dict.keys() == weights.keys()
        assert torch.equal(state_dict["unet.to_q.lora_A.weight"], weights["unet.to_q.lora_A.weight"])
    state_dict, metadata = fetch_lora_state_dict(
        weights, weight_name=None, use_safetensors=True, local_files_only=True, cache_dir=None,
        force_download=False, proxies=None, token=None, revision=None, subfolder=None, user_agent={},
        allow_pickle=False,
    )
    assert state_dict is weights and metadata is None


def test_pipeline_dtype_kwargs_loads_in_that_dtype_without_deprecation(tmp_path):
    from diffusers_dawn.pipelines.pipeline_dawn import DAWNPipeline

    tiny_pipeline(seed=0).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = DAWNPipeline.from_pretrained(tmp_path, **pipeline_dtype_kwargs(torch.bfloat16))
    assert pipe.unet.dtype == torch.bfloat16 and pipe.lfg.dtype == torch.bfloat16
