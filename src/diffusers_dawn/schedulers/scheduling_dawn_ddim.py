"""DAWN's DDIM sampler, exactly as the official A2V-FDM samples motion latents, in the diffusers scheduler protocol."""

import inspect
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..utils.diffusers_compat import mark_config_defaults


@dataclass
class DAWNDDIMSchedulerOutput(BaseOutput):
    """
    Output of [`DAWNDDIMScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): The sample at the next (less noisy) timestep, input to the next model call.
        pred_original_sample (`torch.Tensor`): The dynamically thresholded prediction of the clean sample x̂₀.
    """

    prev_sample: torch.Tensor = None
    pred_original_sample: Optional[torch.Tensor] = None


def dawn_cosine_betas(num_train_timesteps: int = 1000, cosine_s: float = 0.008, max_beta: float = 0.9999) -> torch.Tensor:
    r"""
    The cosine schedule of Nichol & Dhariwal as DAWN trains with it: ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), betas clipped
    to `max_beta` (0.9999, not diffusers' 0.999), computed in float64.
    """
    steps = torch.linspace(0, num_train_timesteps, num_train_timesteps + 1, dtype=torch.float64)
    cumulative = torch.cos((steps / num_train_timesteps + cosine_s) / (1 + cosine_s) * math.pi * 0.5) ** 2
    cumulative = cumulative / cumulative[0]
    return torch.clip(1 - cumulative[1:] / cumulative[:-1], 0, max_beta)


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    r"""
    `torch.quantile(values, q, dim=-1)` with linear interpolation, for inputs of any size.

    `torch.quantile` refuses more than 2²⁴ elements per call, which a long video's motion latent exceeds
    (3·F·L² elements: F > 5461 at latent 32). This sorts once and interpolates exactly as `torch.quantile` does
    (rank computed in the input's dtype, `torch.lerp`), so results are bit-identical where both work. (`kthvalue`
    would be linear time on average but is quadratic on reverse-sorted input.)
    """
    count = values.shape[-1]
    if count == 0:
        raise ValueError("cannot take the quantile of an empty tensor")
    rank = torch.tensor(q, dtype=values.dtype, device=values.device) * (count - 1)
    rank_below = int(torch.floor(rank).item())
    rank_above = min(rank_below + 1, count - 1)
    ordered = torch.sort(values, dim=-1).values
    return torch.lerp(ordered[..., rank_below], ordered[..., rank_above], rank - rank_below)


def dynamic_threshold(sample: torch.Tensor, percentile: float = 0.9, floor: float = 1.0) -> torch.Tensor:
    r"""
    DAWN's dynamic thresholding of a predicted clean sample: per sample, s = max(`floor`, `percentile`-quantile of |x|
    over all its elements), then x = clamp(x, −s, s) / s.
    """
    absolute = sample.detach().abs().reshape(sample.shape[0], -1)
    scale = linear_quantile(absolute, percentile).clamp(min=floor)
    scale = scale.view(-1, *([1] * (sample.ndim - 1)))
    return torch.maximum(torch.minimum(sample, scale), -scale) / scale


class DAWNDDIMScheduler(SchedulerMixin, ConfigMixin):
    r"""
    The official DAWN sampler: DDIM with DAWN's timestep list, its re-noising coefficients and dynamic thresholding.

    With `set_timesteps(n)` the timesteps are `int(linspace(0, T, n + 2)[:-1])` reversed, without the final 0, so
    `n = 20` gives the official 952, 904, …, 47 and the last step goes to t = 0. One step from t to t_next:

    1. x̂₀ = sqrt(1/ᾱ_t)·x_t − sqrt(1/ᾱ_t − 1)·ε̂ with ᾱ_t = `alphas_cumprod[t]`;
    2. dynamic thresholding of x̂₀ (per sample, 0.9-quantile of |x̂₀| floored at 1);
    3. α = ᾱ_{t−1}, α_next = ᾱ_{t_next−1} (`alphas_cumprod_prev`; the official code is off by one here compared with
       step 1, kept by default and switchable with `renoise_with_previous_alphas=False`);
    4. σ = η·sqrt((1 − α/α_next)(1 − α_next)/(1 − α)), c = sqrt(1 − α_next − σ²),
       x_{t_next} = sqrt(α_next)·x̂₀ + c·ε̂ + σ·z, with z ~ N(0, I) except on the last step.

    The config carries DAWN's exact betas as `trained_betas`, so any diffusers scheduler built with
    `X.from_config(dawn_scheduler.config)` samples with DAWN's training schedule.

    Args:
        num_train_timesteps (`int`, defaults to 1000): Diffusion steps of the training schedule.
        cosine_s (`float`, defaults to 0.008): Offset of the cosine schedule.
        max_beta (`float`, defaults to 0.9999): Clip of the betas (DAWN's value; diffusers' cosine uses 0.999).
        trained_betas (`list` of `float`, *optional*): Explicit betas; computed from the cosine schedule when absent
            and written back to the config.
        beta_schedule (`str`, defaults to `"squaredcos_cap_v2"`): Family name, informative for other schedulers
            (they use `trained_betas`).
        prediction_type (`str`, defaults to `"epsilon"`): DAWN's U-Net predicts the noise.
        eta (`float`, defaults to 1.0): Weight of the fresh noise in each step (η = 1 is the official setting).
        dynamic_thresholding_ratio (`float`, defaults to 0.9): Quantile of |x̂₀| used as the threshold.
        sample_min_threshold (`float`, defaults to 1.0): Lower bound of the threshold.
        thresholding (`bool`, defaults to `True`): Apply dynamic thresholding to x̂₀.
        renoise_with_previous_alphas (`bool`, defaults to `True`): Use `alphas_cumprod_prev` for re-noising (official).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    # Options that only this scheduler has (no diffusers scheduler takes them).
    _dawn_only_options = ("cosine_s", "max_beta", "eta", "sample_min_threshold", "renoise_with_previous_alphas")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        cosine_s: float = 0.008,
        max_beta: float = 0.9999,
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        eta: float = 1.0,
        dynamic_thresholding_ratio: float = 0.9,
        sample_min_threshold: float = 1.0,
        thresholding: bool = True,
        renoise_with_previous_alphas: bool = True,
    ):
        if prediction_type != "epsilon":
            raise ValueError(f"DAWNDDIMScheduler supports prediction_type='epsilon' only, got {prediction_type!r}")
        if trained_betas is None:
            betas = dawn_cosine_betas(num_train_timesteps, cosine_s, max_beta)
            # Other schedulers read the schedule from `trained_betas`; store DAWN's exact values there.
            self.register_to_config(trained_betas=betas.tolist())
        self._mark_default_values()
        if trained_betas is not None:
            betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float64)
            if betas.shape != (num_train_timesteps,):
                raise ValueError(
                    f"trained_betas has {betas.numel()} values but num_train_timesteps is {num_train_timesteps}"
                )
        # As in the official buffers: products in float64, stored in float32.
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.betas = betas.float()
        self.alphas = (1.0 - betas).float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float()
        self.sqrt_recip_alphas_cumprod = (1.0 / alphas_cumprod).sqrt().float()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1).sqrt().float()

        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(self._official_timesteps(num_train_timesteps, 20)[:-1].copy())
        self._step_index = None
        self._begin_index = None

    def _mark_default_values(self) -> None:
        """
        Lists in the config's `_use_default_values` (keys that every `from_config` skips) the DAWN-only options that
        hold their default values, and never `trained_betas`. So `DDIMScheduler.from_config(pipe.scheduler.config)`
        receives DAWN's betas and no option it would warn about, even from a loaded pipeline folder (whose config
        names every option), while a DAWN scheduler rebuilt from the config gets the same values back.
        """
        signature = inspect.signature(type(self).__init__).parameters
        at_default = [name for name in self._dawn_only_options if self.config[name] == signature[name].default]
        mark_config_defaults(self, at_default, exclude=["trained_betas"])

    @staticmethod
    def _official_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
        # torch.linspace in float32 then int(), as the official sampler, so the list matches it exactly.
        times = torch.linspace(0.0, num_train_timesteps, steps=num_inference_steps + 2)[:-1].int().tolist()
        return np.array(list(reversed(times)), dtype=np.int64)

    @property
    def step_index(self) -> Optional[int]:
        """Index of the current timestep in `timesteps`, advanced by one after each `step`."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index of the first timestep, set by the pipeline with `set_begin_index` (e.g. for partial denoising)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """DAWN's U-Net takes x_t unscaled."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device] = None):
        """
        Sets the timesteps for sampling: `int(linspace(0, T, n + 2)[:-1])` reversed without the trailing 0
        (n = 20 → 952, 904, …, 47).
        """
        if num_inference_steps < 1 or num_inference_steps > self.config.num_train_timesteps - 1:
            raise ValueError(
                f"num_inference_steps must be between 1 and {self.config.num_train_timesteps - 1}, "
                f"got {num_inference_steps}"
            )
        schedule = self._official_timesteps(self.config.num_train_timesteps, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._sampling_pairs = list(zip(schedule[:-1].tolist(), schedule[1:].tolist()))
        self.timesteps = torch.from_numpy(schedule[:-1].copy()).to(device)
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep: Union[int, torch.Tensor]):
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        timestep = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        matches = (self.timesteps.cpu() == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps; call set_timesteps first")
        self._step_index = int(matches[0].item())

    def next_timestep(self, timestep: int) -> int:
        """The timestep a `step` from `timestep` lands on (0 after the last one)."""
        index = self._step_index if self._step_index is not None else None
        if index is None:
            matches = (self.timesteps.cpu() == int(timestep)).nonzero()
            index = int(matches[0].item())
        return self._sampling_pairs[index][1]

    def _renoising_alpha(self, timestep: int) -> torch.Tensor:
        table = self.alphas_cumprod_prev if self.config.renoise_with_previous_alphas else self.alphas_cumprod
        if not self.config.renoise_with_previous_alphas and timestep == 0:
            return torch.tensor(1.0)
        return table[timestep]

    def predict_original_sample(
        self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor
    ) -> torch.Tensor:
        r"""x̂₀ = sqrt(1/ᾱ_t)·x_t − sqrt(1/ᾱ_t − 1)·ε̂ (before thresholding), with per-sample timesteps allowed."""
        timestep = torch.as_tensor(timestep, device=self.sqrt_recip_alphas_cumprod.device).long().reshape(-1)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        recip = self.sqrt_recip_alphas_cumprod[timestep].to(sample.device).view(shape)
        recipm1 = self.sqrt_recipm1_alphas_cumprod[timestep].to(sample.device).view(shape)
        return recip * sample - recipm1 * model_output

    def threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        r"""
        Dynamic thresholding of a predicted clean sample with this scheduler's settings (`dynamic_thresholding_ratio`,
        `sample_min_threshold`), as `step` applies it when `thresholding` is on; training applies it to x̂₀ alike.
        """
        return dynamic_threshold(sample, self.config.dynamic_thresholding_ratio, self.config.sample_min_threshold)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[DAWNDDIMSchedulerOutput, Tuple]:
        """
        One DAWN DDIM step from `timestep` to the next one of `timesteps` (0 after the last).

        Args:
            model_output (`torch.Tensor`): The predicted noise ε̂.
            timestep (`int` or `torch.Tensor`): The current timestep (an element of `timesteps`).
            sample (`torch.Tensor`): The current sample x_t.
            eta (`float`, *optional*): Overrides the configured η for this step.
            generator (`torch.Generator`, *optional*): Source of the fresh noise.
            variance_noise (`torch.Tensor`, *optional*): The fresh noise itself (for replaying a recorded run).
            return_dict (`bool`, defaults to `True`): Return a [`DAWNDDIMSchedulerOutput`] instead of a tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        current, following = self._sampling_pairs[self._step_index]
        if int(timestep) != current:
            raise ValueError(f"step() got timestep {int(timestep)} but the schedule is at {current}")
        eta = self.config.eta if eta is None else eta

        # Work in float32 (the official sampler's precision) whatever the model's dtype.
        output_dtype = sample.dtype
        sample_fp32, model_output_fp32 = sample.float(), model_output.float()
        pred_original_sample = self.predict_original_sample(model_output_fp32, current, sample_fp32)
        if self.config.thresholding:
            pred_original_sample = self.threshold_sample(pred_original_sample)

        alpha = self._renoising_alpha(current).to(sample.device)
        alpha_next = self._renoising_alpha(following).to(sample.device)
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        direction = ((1 - alpha_next) - sigma**2).sqrt()
        prev_sample = pred_original_sample * alpha_next.sqrt() + direction * model_output_fp32
        if following > 0 and eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    sample.shape, generator=generator, device=sample.device, dtype=torch.float32
                )
            prev_sample = prev_sample + sigma * variance_noise.float()

        self._step_index += 1
        prev_sample = prev_sample.to(output_dtype)
        pred_original_sample = pred_original_sample.to(output_dtype)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DAWNDDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        r"""Forward process q(x_t | x₀) = sqrt(ᾱ_t)·x₀ + sqrt(1 − ᾱ_t)·ε, per-sample timesteps (training)."""
        alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = timesteps.to(original_samples.device).long()
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_alpha = alphas_cumprod[timesteps].sqrt().view(shape)
        sqrt_one_minus_alpha = (1 - alphas_cumprod[timesteps]).sqrt().view(shape)
        return sqrt_alpha * original_samples + sqrt_one_minus_alpha * noise

    def __len__(self):
        return self.config.num_train_timesteps
