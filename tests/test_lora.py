"""LoRA on the A2V-FDM U-Net: adapter files, pipeline loading, fusing, adapter weights, disabling and unloading."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from diffusers_dawn import DAWNPipeline
from diffusers_dawn.loaders.lora import LORA_TARGET_SUFFIXES, lora_target_modules
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel
from diffusers_dawn.testing.tiny_pipeline import (
    MEASURED_SOURCE_POSE,
    measured_inputs,
    tiny_pipeline,
    tiny_pipeline_components,
)
from diffusers_dawn.training.a2v_trainer import a2v_loss

from _a2v_utils import one_thread, single_thread  # noqa: F401  (autouse fixture)


RANK, ALPHA = 4, 8


def _loss_inputs(unet: UNet3DFlowModel, latent_size: int, frames: int = 4):
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    mouth_mask = torch.zeros(1, frames, latent_size, latent_size)
    mouth_mask[:, :, latent_size // 2 :, latent_size // 4 : latent_size // 2] = 1
    return dict(
        motion_target=torch.rand(1, 3, frames, latent_size, latent_size, generator=generator) * 2 - 1,
        conditions=torch.randn(1, frames, unet.cond_dim, generator=generator),
        source_latent=torch.randn(1, config.source_latent_channels, latent_size, latent_size, generator=generator),
        face_mask=torch.ones(1, 1, 4 * latent_size, 4 * latent_size),
        mouth_mask=mouth_mask,
    )


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter trained for a few steps with the A2V objective on the tiny pipeline's U-Net, saved to disk."""
    components = tiny_pipeline_components()
    unet, scheduler = components["unet"], components["scheduler"]
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=lora_target_modules(unet)))
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=5e-2)
    # The U-Net is convolutional: an adapter trained on small latents applies at any size.
    inputs = _loss_inputs(unet, latent_size=8)
    with one_thread():
        for step in range(3):
            output = a2v_loss(unet, scheduler, **inputs, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
    folder = tmp_path_factory.mktemp("lora")
    DAWNPipeline.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    return folder


@pytest.fixture
def pipe():
    pipeline = tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe, frames=4, **kwargs):
    return pipe(
        **measured_inputs(pipe.unet.audio_dim, frames),
        pose=np.zeros((frames, 6)) + MEASURED_SOURCE_POSE,
        blink=np.full((frames, 2), 0.3),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **kwargs,
    ).frames


def lora_scalings(unet):
    """{layer name: {adapter: scale}} of the U-Net's LoRA layers."""
    return {name: dict(module.scaling) for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)}


def test_loaded_weights_add_their_low_rank_update_to_the_named_unet_projection(pipe):
    name = lora_target_modules(pipe.unet)[0]
    layer = pipe.unet.get_submodule(name)
    generator = torch.Generator().manual_seed(5)
    lora_a = torch.randn(2, layer.in_features, generator=generator)
    lora_b = torch.randn(layer.out_features, 2, generator=generator)
    inputs = torch.randn(3, layer.in_features, generator=generator)
    with torch.no_grad():
        base = layer(inputs)
    state_dict = {f"unet.{name}.lora_A.weight": lora_a, f"unet.{name}.lora_B.weight": lora_b}
    pipe.load_lora_weights(state_dict, adapter_name="probe")
    assert pipe.get_list_adapters() == {"unet": ["probe"]}
    assert list(lora_scalings(pipe.unet)) == [name]  # that projection only
    with torch.no_grad():
        adapted = pipe.unet.get_submodule(name)(inputs)
    # Without adapter metadata the alpha is the rank, so the update enters with scale 1: W x + B A x.
    torch.testing.assert_close(adapted, base + inputs @ lora_a.T @ lora_b.T, atol=1e-5, rtol=1e-5)


def test_adapter_file_holds_only_lora_weights(adapter_dir):
    path = adapter_dir / "pytorch_lora_weights.safetensors"
    unet = tiny_pipeline_components()["unet"]
    targets = lora_target_modules(unet)
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    expected = {f"unet.{name}.lora_{part}.weight" for name in targets for part in "AB"}
    assert keys == expected
    assert len(targets) > 0 and all(name.endswith(LORA_TARGET_SUFFIXES) for name in targets)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert (config["unet.r"], config["unet.lora_alpha"]) == (RANK, ALPHA)
    base_keys = set(unet.state_dict())
    assert not any(key[len("unet.") :] in base_keys for key in keys)


def test_lora_changes_output_and_unloading_restores_it_exactly(pipe, adapter_dir):
    base = generate(pipe)
    pipe.load_lora_weights(adapter_dir, adapter_name="speaker")
    assert pipe.get_list_adapters() == {"unet": ["speaker"]}
    adapted = generate(pipe)
    assert (adapted - base).abs().max() > 1e-3
    pipe.unload_lora_weights()
    assert torch.equal(generate(pipe), base)
    assert not any("lora" in name for name in pipe.unet.state_dict())


def test_fused_equals_unfused_and_unfuse_restores(pipe, adapter_dir):
    pipe.load_lora_weights(adapter_dir / "pytorch_lora_weights.safetensors", adapter_name="speaker")
    adapted = generate(pipe)
    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-4, rtol=0)
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-4, rtol=0)


def test_attention_kwargs_scale_the_adapter_for_one_call(pipe, adapter_dir):
    base = generate(pipe)
    pipe.load_lora_weights(adapter_dir, adapter_name="speaker")
    adapted = generate(pipe)
    scalings = lora_scalings(pipe.unet)
    assert scalings and all(scale == {"speaker": ALPHA / RANK} for scale in scalings.values())

    # Scale 0 is the base model (LoRA-wrapped layers run the reference kernels: fp32 rounding), 1 the adapted one.
    torch.testing.assert_close(generate(pipe, attention_kwargs={"scale": 0.0}), base, atol=1e-5, rtol=0)
    assert lora_scalings(pipe.unet) == scalings
    torch.testing.assert_close(generate(pipe, attention_kwargs={"scale": 1.0}), adapted, atol=1e-6, rtol=0)
    # A scale in between weighs the adapter like set_adapters does, for that call only.
    half = generate(pipe, attention_kwargs={"scale": 0.5})
    assert lora_scalings(pipe.unet) == scalings
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-6, rtol=0)
    pipe.set_adapters("speaker", adapter_weights=0.5)
    torch.testing.assert_close(generate(pipe), half, atol=1e-6, rtol=0)
    assert (half - base).abs().max() > 1e-4 and (half - adapted).abs().max() > 1e-4


def test_adapter_weights_and_disabling(pipe, adapter_dir):
    base = generate(pipe)
    pipe.load_lora_weights(adapter_dir, adapter_name="speaker")
    adapted = generate(pipe)
    pipe.set_adapters(["speaker"], adapter_weights=[0.0])
    # LoRA-wrapped projections run the reference kernels, the base model the fused ones: equal maths, fp32 rounding.
    torch.testing.assert_close(generate(pipe), base, atol=1e-5, rtol=0)
    pipe.set_adapters("speaker", adapter_weights=1.0)
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-6, rtol=0)
    pipe.disable_lora()
    torch.testing.assert_close(generate(pipe), base, atol=1e-5, rtol=0)  # reference vs fused kernels, as above
    pipe.enable_lora()
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-6, rtol=0)


def test_two_adapters_and_unprefixed_state_dicts(pipe, adapter_dir):
    pipe.load_lora_weights(adapter_dir, adapter_name="first")
    first = generate(pipe)
    # A state dict straight from get_peft_model_state_dict (no "unet." prefix) loads too.
    with safe_open(str(adapter_dir / "pytorch_lora_weights.safetensors"), "pt") as handle:
        unprefixed = {key[len("unet.") :]: handle.get_tensor(key) for key in handle.keys()}
    pipe.load_lora_weights(unprefixed, adapter_name="second")
    assert sorted(pipe.get_list_adapters()["unet"]) == ["first", "second"]
    pipe.set_adapters(["first"])
    torch.testing.assert_close(generate(pipe), first, atol=1e-6, rtol=0)
    pipe.delete_adapters("second")
    assert pipe.get_list_adapters() == {"unet": ["first"]}


def test_bad_checkpoints_are_rejected(pipe, tmp_path):
    with pytest.raises(ValueError, match="not a LoRA checkpoint"):
        pipe.load_lora_weights({"unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unet_lora_layers"):
        DAWNPipeline.save_lora_weights(tmp_path, unet_lora_layers={})
    with pytest.raises(ValueError, match="no nn.Linear"):
        lora_target_modules(torch.nn.Conv2d(1, 1, 1), ["to_q"])
