"""Scheduler swapping through the pipeline's own sampling loop, checked against an exact analytic denoiser.

For data x0 ~ N(mean, std²) (i.i.d. per element) the optimal noise prediction at noise level ᾱ is known in closed
form, so any correct sampler driven by it must return samples with that mean and variance. The U-Net of a tiny
pipeline is replaced by this analytic predictor; everything else (conditions, loop, scheduler calls) is the
pipeline's.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.models.modeling_outputs import BaseOutput

from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler

from diffusers_dawn.testing.tiny_pipeline import tiny_pipeline_components

DATA_MEAN, DATA_STD = 0.3, 0.2


class _Eps(BaseOutput):
    sample: torch.Tensor


class AnalyticGaussianDenoiser(torch.nn.Module):
    """E[eps | x_t] for x0 ~ N(DATA_MEAN, DATA_STD²), for integer or fractional (Euler) timesteps."""

    def __init__(self, alphas_cumprod: torch.Tensor, config):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.double())
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # gives the module a device and dtype

    @property
    def dtype(self):
        return torch.float32

    def alpha_bar(self, timestep: torch.Tensor) -> torch.Tensor:
        # Fractional timesteps (Euler) come from interpolating log-sigma linearly in t; invert the same way.
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        t = timestep.double().cpu().numpy()
        log_sigma = np.interp(t, np.arange(len(sigmas)), sigmas.log().numpy())
        sigma = torch.from_numpy(np.exp(log_sigma))
        return 1.0 / (1.0 + sigma**2)

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        alpha = self.alpha_bar(timestep.reshape(-1)[:1]).to(torch.float64).item()
        x = sample.double()
        eps = (1 - alpha) ** 0.5 * (x - alpha**0.5 * DATA_MEAN) / (alpha * DATA_STD**2 + 1 - alpha)
        return _Eps(sample=eps.to(sample.dtype))


@pytest.mark.parametrize(
    "scheduler_class, steps, extra",
    [
        (DAWNDDIMScheduler, 20, {}),
        (DDIMScheduler, 50, {}),
        (DPMSolverMultistepScheduler, 25, {}),
        (EulerDiscreteScheduler, 50, {}),
        (UniPCMultistepScheduler, 25, {}),
    ],
)
def test_swapped_scheduler_recovers_gaussian_data(scheduler_class, steps, extra):
    from diffusers_dawn import DAWNPipeline

    components = tiny_pipeline_components()
    pipe = DAWNPipeline(**components)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **extra)
    # Every scheduler built from DAWN's config must see DAWN's exact training schedule.
    np.testing.assert_allclose(
        pipe.scheduler.alphas_cumprod.numpy(), DAWNDDIMScheduler().alphas_cumprod.numpy(), rtol=1e-6, atol=1e-8
    )
    pipe.unet = AnalyticGaussianDenoiser(pipe.scheduler.alphas_cumprod, components["unet"].config)
    pipe.set_progress_bar_config(disable=True)

    frames = 12
    latents = pipe(
        image=torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)),
        crop="none",
        face_box=[40, 90, 30, 100, 128, 128],
        source_pose=np.zeros(6),
        source_blink=np.full(2, 0.3),
        audio_features=np.zeros((frames, components["unet"].config.cond_dim - 8), dtype=np.float32),
        pose=np.zeros((frames, 6)),
        blink=np.full((frames, 2), 0.3),
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).frames
    values = latents.double().flatten()
    assert values.numel() == 3 * frames * 32 * 32
    assert abs(values.mean().item() - DATA_MEAN) < 0.02
    assert abs(values.std().item() / DATA_STD - 1) < 0.1
