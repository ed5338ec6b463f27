"""U-Net config keys: diffusers' names, earlier names still read (with a warning), shipped configs already current."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from diffusers_dawn.embedded import embedded_model_path
from diffusers_dawn.models.unet_3d_flow import LEGACY_CONFIG_KEYS, UNet3DFlowModel
from diffusers_dawn.testing.tiny_pipeline import tiny_unet_config
from diffusers_dawn.utils.errors import DAWNInputError


REPOSITORY = Path(__file__).resolve().parents[1]
# `tiny_unet_config()` as a config.json written before the U-Net keys took diffusers' names held it.
EARLIER_TINY_CONFIG = """{"_class_name": "UNet3DFlowModel", "flow_channels": 2, "occlusion_channels": 1,
 "source_latent_channels": 32, "face_location_channels": 4, "face_location_hidden_channels": 4, "base_channels": 8,
 "channel_multipliers": [1, 2], "cond_dim": 40, "pose_dim": 6, "blink_dim": 2, "attention_heads": 2,
 "attention_head_dim": 16, "spatial_attention_head_dim": 8, "cross_attention_heads": 2, "cross_attention_head_dim": 8,
 "resnet_groups": 4, "init_kernel_size": 3, "time_embedding_dim": null, "window": 40, "num_position_buckets": 32,
 "max_position_distance": 32, "rotary_dim": null}"""


def current_keys(config):
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items() if key[0] != "_"}


def inputs_for(model, frames=3, size=8):
    generator = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(1, 3, frames, size, size, generator=generator),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, frames, model.cond_dim, generator=generator),
        source_latent=torch.randn(1, model.config.source_latent_channels, size, size, generator=generator),
        face_mask=torch.ones(1, 1, 4 * size, 4 * size),
    )


@pytest.fixture(scope="module")
def saved_tiny_unet(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet3DFlowModel(**tiny_unet_config()).eval()
    folder = tmp_path_factory.mktemp("current")
    model.save_pretrained(folder)
    return model, folder


def test_a_config_with_the_earlier_names_loads_the_same_model_with_a_warning(saved_tiny_unet, tmp_path):
    model, folder = saved_tiny_unet
    earlier = tmp_path / "earlier"
    shutil.copytree(folder, earlier)
    (earlier / "config.json").write_text(EARLIER_TINY_CONFIG)
    with pytest.warns(FutureWarning, match=r"earlier key names \(attention_heads, .*Re-save the model"):
        loaded = UNet3DFlowModel.from_pretrained(earlier).eval()
    assert current_keys(loaded.config) == current_keys(model.config)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs_for(model)).sample, model(**inputs_for(model)).sample)

    # Saving it again writes the current names only, and those load without the warning.
    loaded.save_pretrained(tmp_path / "resaved")
    written = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert not set(written) & set(LEGACY_CONFIG_KEYS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        reloaded = UNet3DFlowModel.from_pretrained(tmp_path / "resaved")
    assert current_keys(reloaded.config) == current_keys(model.config)


def test_a_first_level_wider_than_the_first_convolution_keeps_its_shapes():
    # Earlier configs could widen the first level (multiplier ≠ 1): `conv_in_channels` keeps the stem's width.
    earlier = dict(json.loads(EARLIER_TINY_CONFIG), channel_multipliers=[2, 4])
    with pytest.warns(FutureWarning):
        model = UNet3DFlowModel.from_config(earlier)
    assert (tuple(model.config.block_out_channels), model.config.conv_in_channels) == ((16, 32), 8)
    assert model.conv_in.out_channels == model.time_embedding.linear_1.in_features == 8
    assert model.down_blocks[0].resnets[0].conv1.out_channels == 16
    assert model.flow_head.resnet.conv1.in_channels == 2 * 8


def test_earlier_names_left_out_take_their_earlier_defaults():
    # Recipes listed only some keys; the others had the defaults of the time (base 64, multipliers 1, 2, 4, 8).
    with pytest.warns(FutureWarning, match="resnet_groups"):
        config = UNet3DFlowModel.from_config({"resnet_groups": 4, "cond_dim": 40}).config
    assert (config.norm_num_groups, config.audio_dim) == (4, 32)
    assert tuple(config.block_out_channels) == (64, 128, 256, 512)


def test_an_earlier_name_beside_its_replacement_is_refused():
    with pytest.raises(DAWNInputError, match="both `resnet_groups` .* keep only `norm_num_groups`"):
        UNet3DFlowModel.from_config({"resnet_groups": 4, "norm_num_groups": 4})


def test_the_shipped_unet_configs_use_the_current_names():
    folders = [Path(embedded_model_path("synthetic-demo")) / "unet"]
    folders += sorted((REPOSITORY / "training" / "recipes" / "synthetic-demo-run").glob("a2v-stage*/unet"))
    assert len(folders) == 3
    for folder in folders:
        assert not set(json.loads((folder / "config.json").read_text())) & set(LEGACY_CONFIG_KEYS), folder
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            UNet3DFlowModel.from_pretrained(folder)
