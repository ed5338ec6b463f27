"""Output dataclasses have defaults, as diffusers' do, so that libraries which rebuild them (Accelerate) keep them."""

import dataclasses

import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32

from diffusers_dawn.models.lfg import LFGAutoencoder, LFGOutput, LFGRegionParams
from diffusers_dawn.models.pbnet import PBNetModel, PBNetOutput
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowOutput
from diffusers_dawn.pipelines.pipeline_output import DAWNPipelineOutput
from diffusers_dawn.processing.face import FaceAnalysis, FaceTrack
from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMSchedulerOutput
from diffusers_dawn.testing.tiny_pipeline import TINY_LFG_CONFIG, TINY_PBNET_POSE_CONFIG, TINY_RESOLUTION
from diffusers_dawn.training.pbnet_trainer import PBNetLossOutput


@pytest.mark.parametrize(
    "output_class",
    [
        LFGOutput, LFGRegionParams, PBNetOutput, UNet3DFlowOutput, DAWNPipelineOutput, DAWNDDIMSchedulerOutput,
        FaceAnalysis, FaceTrack, PBNetLossOutput,
    ],
)  # fmt: skip
def test_every_field_has_a_default(output_class):
    missing = [field.name for field in dataclasses.fields(output_class) if field.default is dataclasses.MISSING]
    assert missing == []


def leaf_dtypes(output):
    dtypes = set()
    for value in output.values():
        dtypes |= leaf_dtypes(value) if isinstance(value, dict) else {value.dtype}
    return dtypes


def assert_same_outputs(converted, reference):
    assert type(converted) is type(reference)
    assert list(converted.keys()) == list(reference.keys())
    for name, value in reference.items():
        if isinstance(value, dict):
            assert_same_outputs(converted[name], value)
        else:
            assert converted[name].dtype == torch.float32, name
            assert torch.equal(converted[name], value.float()), name
            assert torch.equal(getattr(converted, name), converted[name]), name


def test_accelerate_mixed_precision_keeps_the_lfg_output():
    # Under mixed precision `Accelerator.prepare` wraps `forward` in autocast and `convert_outputs_to_fp32`, which
    # rebuilds each output mapping as `type(output)({name: value})`: that needs every field but the first to have a
    # default (the LFG's inverse of the region covariances needs float32 weights, hence autocast, as in training).
    torch.manual_seed(0)
    lfg = LFGAutoencoder(**TINY_LFG_CONFIG).eval()
    source, driving = torch.rand(2, 1, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    forward = torch.autocast("cpu", dtype=torch.bfloat16)(lfg.forward)
    with torch.no_grad():
        reference = forward(source, driving)
        converted = convert_outputs_to_fp32(forward)(source, driving)
    assert torch.bfloat16 in leaf_dtypes(reference)  # so the conversion has work to do
    assert isinstance(converted.source_regions, LFGRegionParams)
    assert_same_outputs(converted, reference)


def test_accelerate_mixed_precision_keeps_the_pbnet_output():
    torch.manual_seed(0)
    pbnet = PBNetModel(**TINY_PBNET_POSE_CONFIG).to(torch.bfloat16).eval()
    states = torch.rand(2, 6, 6, dtype=torch.bfloat16)
    audio = torch.rand(2, 6, TINY_PBNET_POSE_CONFIG["audio_dim"], dtype=torch.bfloat16)
    with torch.no_grad():
        reference = pbnet(states, audio, lengths=[6, 4], generator=torch.Generator().manual_seed(1))
        converted = convert_outputs_to_fp32(pbnet.forward)(
            states, audio, lengths=[6, 4], generator=torch.Generator().manual_seed(1)
        )
    # The mask is boolean: Accelerate casts only floating-point tensors.
    assert converted.mask.dtype == torch.bool and torch.equal(converted.mask, reference.mask)
    assert_same_outputs(
        PBNetOutput(**{name: value for name, value in converted.items() if name != "mask"}),
        PBNetOutput(**{name: value for name, value in reference.items() if name != "mask"}),
    )
