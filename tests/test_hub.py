"""Hub round trips (push_to_hub → from_pretrained, LoRA adapters) against a Hub-compatible server on 127.0.0.1."""

import json

import pytest
import torch
from huggingface_hub import HfApi
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load

from diffusers_dawn.loaders import DAWNLoraLoaderMixin
from diffusers_dawn.loaders.lora import lora_target_modules
from diffusers_dawn.models.unet_3d_flow import BLINK_DIM, POSE_DIM, UNet3DFlowModel

from _a2v_utils import TINY_AUDIO_DIM, TINY_LATENT_SIZE, TINY_RESOLUTION, single_thread, tiny_unet  # noqa: F401
from hub_server import USER_NAME, HubServer


TOKEN = "hf_local_test_token"


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_endpoint(hub, tmp_path):
    """huggingface_hub pointed at the local server; yields a private cache folder."""
    with hub.activate(token=TOKEN):
        yield tmp_path / "cache"


def _unet_output(unet):
    generator = torch.Generator().manual_seed(0)
    size = TINY_LATENT_SIZE
    with torch.no_grad():
        return unet(
            torch.randn(1, 3, 3, size, size, generator=generator),
            torch.tensor([400]),
            torch.randn(1, 3, TINY_AUDIO_DIM + POSE_DIM + BLINK_DIM, generator=generator),
            torch.randn(1, 16, size, size, generator=generator),
            face_mask=torch.ones(1, 1, TINY_RESOLUTION, TINY_RESOLUTION),
        ).sample


def test_model_push_to_hub_and_from_pretrained(hub, hub_endpoint):
    repo_id = f"{USER_NAME}/tiny-a2v-unet"
    unet = tiny_unet(seed=1)
    unet.push_to_hub(repo_id, token=TOKEN)
    files = hub.files(repo_id)
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= set(files)
    assert json.loads(files["config.json"])["_class_name"] == "UNet3DFlowModel"
    pushed = load(files["diffusion_pytorch_model.safetensors"])
    assert pushed.keys() == unet.state_dict().keys()
    assert any(request.startswith(f"POST /api/models/{repo_id}/commit/main") for request in hub.requests)

    loaded = UNet3DFlowModel.from_pretrained(repo_id, cache_dir=hub_endpoint)
    for key, value in unet.config.items():
        if not key.startswith("_"):
            assert loaded.config[key] == (list(value) if isinstance(value, tuple) else value), key
    for name, tensor in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # Identical weights; CPU kernels may still round differently on differently aligned (memory-mapped) tensors.
    torch.testing.assert_close(_unet_output(loaded), _unet_output(unet), atol=1e-5, rtol=0)

    # A second push makes a new commit; the first one stays reachable by its id.
    first_commit = HfApi(endpoint=hub.url).model_info(repo_id, token=TOKEN).sha
    tiny_unet(seed=2).push_to_hub(repo_id, token=TOKEN)
    assert HfApi(endpoint=hub.url).model_info(repo_id, token=TOKEN).sha != first_commit
    pinned = UNet3DFlowModel.from_pretrained(repo_id, revision=first_commit, cache_dir=hub_endpoint)
    latest = UNet3DFlowModel.from_pretrained(repo_id, cache_dir=hub_endpoint)
    assert torch.equal(pinned.conv_in.weight, unet.conv_in.weight)
    assert not torch.equal(latest.conv_in.weight, unet.conv_in.weight)


def test_missing_repository_raises(hub_endpoint):
    with pytest.raises(EnvironmentError, match="not-there"):
        UNet3DFlowModel.from_pretrained(f"{USER_NAME}/not-there", cache_dir=hub_endpoint)


def test_lora_adapter_round_trip_through_the_hub(hub, hub_endpoint, tmp_path):
    trained = tiny_unet()
    trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(trained)))
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    folder = tmp_path / "adapter"
    DAWNLoraLoaderMixin.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(trained),
        unet_lora_adapter_metadata=trained.peft_config["default"].to_dict(),
    )
    repo_id = f"{USER_NAME}/tiny-a2v-lora"
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert "pytorch_lora_weights.safetensors" in hub.files(repo_id)

    # The pipeline's loading path: read the adapter from the Hub, then load it into a fresh base U-Net.
    state_dict, metadata = DAWNLoraLoaderMixin.lora_state_dict(
        repo_id, cache_dir=hub_endpoint, return_lora_metadata=True
    )
    assert all(key.startswith("unet.") and ".lora_" in key for key in state_dict)
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 8
    base = tiny_unet()
    DAWNLoraLoaderMixin.load_lora_into_unet(state_dict, base, adapter_name="speaker", metadata=metadata)
    torch.testing.assert_close(_unet_output(base), _unet_output(trained), atol=1e-6, rtol=0)


def test_pipeline_push_to_hub_and_from_pretrained(hub, hub_endpoint):
    """The whole pipeline (model_index.json with third-party components) goes to the Hub and comes back by repo id."""
    from diffusers_dawn import DAWNPipeline
    from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline

    repo_id = f"{USER_NAME}/tiny-dawn-pipeline"
    pipe = tiny_pipeline(seed=3)
    pipe.push_to_hub(repo_id, token=TOKEN)
    files = hub.files(repo_id)
    index = json.loads(files["model_index.json"])
    assert index["_class_name"] == "DAWNPipeline"
    assert index["unet"] == ["diffusers_dawn.models.unet_3d_flow", "UNet3DFlowModel"]
    assert index["audio_encoder"] == ["transformers", "HubertModel"]
    assert {"unet/diffusion_pytorch_model.safetensors", "lfg/diffusion_pytorch_model.safetensors"} <= set(files)

    loaded = DAWNPipeline.from_pretrained(repo_id, cache_dir=hub_endpoint)
    for name in ("lfg", "unet", "pbnet_pose", "pbnet_blink", "audio_encoder"):
        original, pulled = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == pulled.keys()
        assert all(torch.equal(original[key], pulled[key]) for key in original), name
    assert loaded.scheduler.config.trained_betas == pipe.scheduler.config.trained_betas
    assert loaded.config.resolution == pipe.config.resolution
