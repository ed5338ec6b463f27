"""
Training objective and data of PBNet, the pose / blink CVAE (facts §5.6):

- reconstruction: MSE between the decoded residual Δ̂ and the true Δ (relative to the first frame) over valid
  frames;
- KL divergence of the per-frame posterior, weighted by a schedule over epochs (see [`kl_weight`]: the official
  formula by default, or the linear warm-up it was most likely meant to be);
- adversarial: a 1-D PatchGAN discriminator ([`PatchDiscriminator1D`]) on whole state sequences, real = the true
  states, fake = Δ̂ + first state, binary cross-entropy with logits;
- data: a random window of at most 200 frames per video (shorter videos whole, zero-padded with a mask), pose
  normalised with the model's `state_min` / `state_max`, blink raw.

The official training sums reconstruction, KL, generator and discriminator losses into one backward pass and steps
both optimisers (`adversarial_update="official"`): the discriminator is thereby also trained to call fakes real and
the generator to make fakes recognisable, which pulls the discriminator's fake logits towards 0 — an adversarial
regulariser rather than a GAN game. `adversarial_update="alternating"` is the textbook update (the discriminator on
detached fakes, the generator through a frozen discriminator).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..models.pbnet import PBNetModel


KL_LAMBDA = 0.004
KL_START_EPOCH = 10000
KL_RAMP_EPOCHS = 70000
WINDOW_FRAMES = 200
KL_SCHEDULES = ("official", "linear_warmup")
ADVERSARIAL_UPDATES = ("official", "alternating")
STATE_COLUMNS = {"pose": "pose", "blink": "eye_ratios"}


def kl_weight(
    epoch: int,
    schedule: str = "official",
    kl_lambda: float = KL_LAMBDA,
    start_epoch: int = KL_START_EPOCH,
    ramp_epochs: int = KL_RAMP_EPOCHS,
) -> float:
    r"""
    Weight of the KL term at `epoch` (1-based, as the official loop counts).

    - `"official"`: 0 before `start_epoch`, then `kl_lambda · max(epoch − start_epoch, ramp_epochs) / ramp_epochs`,
      which is `kl_lambda` until `start_epoch + ramp_epochs` and then keeps growing linearly (the `max` was most
      likely meant to be a `min`).
    - `"linear_warmup"`: 0 before `start_epoch`, rising linearly to `kl_lambda` over `ramp_epochs`, then constant.
    """
    if schedule not in KL_SCHEDULES:
        raise ValueError(f"kl schedule must be one of {KL_SCHEDULES}, got {schedule!r}")
    if ramp_epochs <= 0:
        raise ValueError(f"ramp_epochs must be positive, got {ramp_epochs}")
    if epoch < start_epoch:
        return 0.0
    progress = (epoch - start_epoch) / ramp_epochs
    if schedule == "official":
        return kl_lambda * max(progress, 1.0)
    return kl_lambda * min(progress, 1.0)


class PatchDiscriminator1D(ModelMixin, ConfigMixin):
    r"""
    1-D PatchGAN discriminator on state sequences (batch, state_dim, frames): strided convolutions (kernel 4) with
    BatchNorm and LeakyReLU(0.2), giving one real/fake logit per temporal patch (facts §5.6).

    Parameters:
        state_dim (`int`, defaults to 6): Channels of the state (6 pose, 2 blink).
        channels (`Sequence[int]`, defaults to `(64, 128, 256, 256)`): Widths of the four convolution stages; the
            first three halve the time axis, the last keeps it.
        negative_slope (`float`, defaults to 0.2): LeakyReLU slope.
    """

    @register_to_config
    def __init__(self, state_dim: int = 6, channels: Sequence[int] = (64, 128, 256, 256), negative_slope: float = 0.2):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"channels needs the 4 stage widths, got {list(channels)}")
        layers: List[nn.Module] = [
            nn.Conv1d(state_dim, channels[0], kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(negative_slope),
        ]
        for index, (in_channels, out_channels) in enumerate(zip(channels[:-1], channels[1:])):
            stride = 2 if index < 2 else 1
            layers += [
                nn.Conv1d(in_channels, out_channels, kernel_size=4, stride=stride, padding=1),
                nn.BatchNorm1d(out_channels),
                nn.LeakyReLU(negative_slope),
            ]
        layers.append(nn.Conv1d(channels[-1], 1, kernel_size=4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """`states` (batch, frames, state_dim) → patch logits (batch, patches)."""
        if states.ndim != 3 or states.shape[-1] != self.config.state_dim:
            raise ValueError(f"states must be (batch, frames, {self.config.state_dim}), got {tuple(states.shape)}")
        if states.shape[1] < 24:
            raise ValueError(f"the discriminator needs at least 24 frames (its receptive field), got {states.shape[1]}")
        return self.layers(states.transpose(1, 2)).squeeze(1)


@dataclass
class PBNetLossOutput(BaseOutput):
    r"""
    Args:
        loss (`torch.Tensor`): What to back-propagate (its composition depends on the adversarial update).
        reconstruction (`torch.Tensor`), kl (`torch.Tensor`): Unweighted terms.
        kl_weight (`float`): The schedule's weight at this epoch.
        generator_adversarial (`torch.Tensor`), discriminator (`torch.Tensor`): BCE losses of the two players.
        prediction (`torch.Tensor` of shape `(batch, frames, state_dim)`): Δ̂ in network units.
    """

    loss: torch.Tensor = None
    reconstruction: torch.Tensor = None
    kl: torch.Tensor = None
    kl_weight: float = None
    generator_adversarial: torch.Tensor = None
    discriminator: torch.Tensor = None
    prediction: torch.Tensor = None


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def pbnet_loss(
    pbnet: PBNetModel,
    discriminator: Optional[PatchDiscriminator1D],
    states: torch.Tensor,
    audio_features: torch.Tensor,
    lengths: torch.Tensor,
    kl_weight_value: float,
    adversarial_weight: float = 1.0,
    adversarial_update: str = "official",
    generator: Optional[torch.Generator] = None,
) -> PBNetLossOutput:
    """
    The PBNet objective on a batch of network-unit states (batch, frames, D) with speech features and lengths.
    Without a discriminator (or with `adversarial_weight=0`) only reconstruction and KL are used.
    """
    if adversarial_update not in ADVERSARIAL_UPDATES:
        raise ValueError(f"adversarial_update must be one of {ADVERSARIAL_UPDATES}, got {adversarial_update!r}")
    output = pbnet(states, audio_features, lengths=lengths, generator=generator)
    mask = output.mask
    valid = mask[..., None].to(output.prediction.dtype)
    squared_error = (output.prediction - output.target_delta) ** 2 * valid
    reconstruction = squared_error.sum() / (valid.sum() * states.shape[-1])
    # KL averaged over valid frames only (the official mean also covers padded frames).
    kl_terms = (1 + output.logvar - output.mu**2 - output.logvar.exp()) * valid
    kl = -0.5 * kl_terms.sum() / (valid.sum() * output.mu.shape[-1])
    total = reconstruction + kl_weight_value * kl
    zero = total.new_zeros(())
    generator_loss, discriminator_loss = zero, zero
    if discriminator is not None and adversarial_weight:
        # Padded frames are zero in both sequences, so padding tells the discriminator nothing.
        real = states * valid
        fake = (output.prediction + states[:, :1]) * valid
        if adversarial_update == "official":
            fake_logits = discriminator(fake)
            generator_loss = _bce(fake_logits, 1.0)
            discriminator_loss = _bce(discriminator(real), 1.0) + _bce(fake_logits, 0.0)
        else:
            discriminator.requires_grad_(False)
            generator_loss = _bce(discriminator(fake), 1.0)
            discriminator.requires_grad_(True)
            discriminator_loss = _bce(discriminator(real), 1.0) + _bce(discriminator(fake.detach()), 0.0)
        total = total + adversarial_weight * (generator_loss + discriminator_loss)
    return PBNetLossOutput(
        loss=total,
        reconstruction=reconstruction,
        kl=kl,
        kl_weight=kl_weight_value,
        generator_adversarial=generator_loss,
        discriminator=discriminator_loss,
        prediction=output.prediction,
    )


class PBNetSequenceDataset(torch.utils.data.Dataset):
    r"""
    State sequences for PBNet training from a DAWN training dataset.

    Keys are `(video_index, seed)` pairs (see `accelerate_utils.EpochSampler`); the seed picks the window start.

    Args:
        dataset (`datasets.Dataset`): Rows of the DAWN schema (`pose` or `eye_ratios`, `hubert`, `num_frames`).
        state (`str`): `"pose"` (6-D head pose, raw official units) or `"blink"` (2 eye-aspect ratios).
        window (`int`, defaults to 200): Longest sequence; longer videos give a random window of this length.
    """

    def __init__(self, dataset, state: str, window: int = WINDOW_FRAMES):
        if state not in STATE_COLUMNS:
            raise ValueError(f"state must be 'pose' or 'blink', got {state!r}")
        self.dataset = dataset.select_columns([STATE_COLUMNS[state], "hubert", "num_frames"]).with_format("numpy")
        self.column = STATE_COLUMNS[state]
        self.window = window

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        index, seed = key
        row = self.dataset[int(index)]
        num_frames = int(row["num_frames"])
        length = min(num_frames, self.window)
        start = int(np.random.default_rng(seed).integers(0, num_frames - length + 1))
        states = np.asarray(row[self.column], dtype=np.float32)[start : start + length]
        audio = np.asarray(row["hubert"], dtype=np.float32)[start : start + length]
        return {"states": torch.from_numpy(states), "audio_features": torch.from_numpy(audio)}


def collate_sequences(samples) -> Dict[str, torch.Tensor]:
    """Zero-pads sequences to the longest in the batch; `lengths` holds the valid frames."""
    lengths = torch.tensor([len(sample["states"]) for sample in samples])
    longest = int(lengths.max())

    def pad(tensor):
        return F.pad(tensor, (0, 0, 0, longest - tensor.shape[0]))

    return {
        "states": torch.stack([pad(sample["states"]) for sample in samples]),
        "audio_features": torch.stack([pad(sample["audio_features"]) for sample in samples]),
        "lengths": lengths,
    }


@torch.no_grad()
def fit_latent_prior(
    pbnet: PBNetModel,
    dataset,
    state: str,
    window: int = WINDOW_FRAMES,
    jitter: float = 1e-5,
    quantile_levels: int = 64,
) -> Dict[str, list]:
    r"""
    Fits the Gaussian latent prior of [`PBNetModel`] (`latent_prior_*` config entries) to the encoder's posterior
    means over every training video, and writes it into the model's config.

    The means of all frames give the prior's mean and covariance (`L` = its Cholesky factor, with `jitter` on the
    diagonal). Each channel of the whitened means `w = L⁻¹(μ − mean)` gives its quantiles (`quantile_levels`
    probabilities `(k + 1/2) / levels`; 0 keeps the channels Gaussian) and, on its normal scores `Φ⁻¹(rank)`, its
    lag-one autocorrelation (pooled over videos, clipped to [0, 0.999]). Videos longer than `window` frames are
    encoded in consecutive windows.

    Sampling from `N(0, I)` suits a CVAE whose KL term has pulled the posterior to it; a PBNet trained with a small
    or zero KL weight (as the official schedule is for its first 10,000 epochs) has posterior means far from white
    noise, and its decoder then turns white noise into little, jittery motion.

    Args:
        pbnet ([`PBNetModel`]): The trained network (its `normalize_states` is applied to the states).
        dataset (`datasets.Dataset`): Training rows with the state column and `hubert`.
        state (`str`): `"pose"` or `"blink"`.
        window (`int`, defaults to 200): Longest sequence given to the encoder.
        jitter (`float`, defaults to 1e-5): Added to the covariance's diagonal.
        quantile_levels (`int`, defaults to 64): Quantiles stored per channel (0: a Gaussian prior).

    Returns:
        The fitted config entries (`latent_prior_mean`, `latent_prior_scale_tril`, `latent_prior_correlation`,
        `latent_prior_quantiles`).
    """
    if state not in STATE_COLUMNS:
        raise ValueError(f"state must be 'pose' or 'blink', got {state!r}")
    rows = dataset.select_columns([STATE_COLUMNS[state], "hubert"]).with_format("numpy")
    was_training = pbnet.training
    pbnet.eval()
    device = next(pbnet.parameters()).device
    means = []
    for row in rows:
        states = torch.as_tensor(np.asarray(row[STATE_COLUMNS[state]], dtype=np.float32))
        audio = torch.as_tensor(np.asarray(row["hubert"], dtype=np.float32))
        length = min(len(states), len(audio))
        for start in range(0, length, window):
            chunk = slice(start, min(start + window, length))
            if chunk.stop - chunk.start < 2:
                continue
            network_states = pbnet.normalize_states(states[chunk][None].to(device))
            output = pbnet(network_states, audio[chunk][None].to(device))
            means.append(output.mu[0].float().cpu())
    pbnet.train(was_training)
    if not means:
        raise ValueError("the dataset has no sequence of 2 frames or more to fit the latent prior on")
    frames = torch.cat(means)
    mean = frames.mean(0)
    covariance = torch.cov((frames - mean).T.double()) + jitter * torch.eye(frames.shape[1], dtype=torch.float64)
    scale_tril = torch.linalg.cholesky(covariance)
    whitened = [
        torch.linalg.solve_triangular(scale_tril, (sequence - mean).T.double(), upper=False).T for sequence in means
    ]
    all_whitened = torch.cat(whitened)
    # Normal scores (Gaussianised ranks) of each channel: the AR(1) process runs in that space before the quantile map.
    ranks = all_whitened.argsort(0).argsort(0).double()
    scores = torch.special.ndtri((ranks + 0.5) / len(all_whitened)) if quantile_levels else all_whitened
    lagged = torch.zeros(frames.shape[1], dtype=torch.float64)
    total = torch.zeros(frames.shape[1], dtype=torch.float64)
    start = 0
    for sequence in whitened:
        channel_scores = scores[start : start + len(sequence)]
        start += len(sequence)
        lagged += (channel_scores[1:] * channel_scores[:-1]).sum(0)
        total += (channel_scores**2).sum(0)
    correlation = (lagged / total.clamp(min=1e-12)).clamp(0.0, 0.999)
    prior = {
        "latent_prior_mean": mean.tolist(),
        "latent_prior_scale_tril": scale_tril.float().tolist(),
        "latent_prior_correlation": correlation.float().tolist(),
        "latent_prior_quantiles": None,
    }
    if quantile_levels:
        levels = (torch.arange(quantile_levels, dtype=torch.float64) + 0.5) / quantile_levels
        prior["latent_prior_quantiles"] = torch.quantile(all_whitened, levels, dim=0).float().tolist()
    pbnet.register_to_config(**prior)
    return prior
