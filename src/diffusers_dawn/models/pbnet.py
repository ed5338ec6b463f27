"""PBNet: DAWN's transformer CVAE that samples head pose or blink sequences from speech features."""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .attention_processor import DAWNAttention
from .embeddings import BandedPositionBias, RelativePositionBias, RotaryEmbedding


# Normalisation range of the pose network's states [yaw, pitch, roll (degrees), scale, tx, ty (pixels)].
POSE_STATE_MIN = (-90.0, -90.0, -90.0, 0.0, 0.0, 0.0)
POSE_STATE_MAX = (90.0, 90.0, 90.0, 1.0, 720.0, 1080.0)


@dataclass
class PBNetOutput(BaseOutput):
    r"""
    Output of the training pass of [`PBNetModel`].

    Args:
        prediction (`torch.Tensor` of shape `(batch, frames, state_dim)`):
            Decoded per-frame residual Δ̂ with respect to the first frame, in network units; zero at padded frames.
        target_delta (`torch.Tensor` of shape `(batch, frames, state_dim)`):
            The ground-truth residual `states - states[:, :1]`; zero at padded frames.
        mu (`torch.Tensor` of shape `(batch, frames, latent_dim)`):
            Mean of the per-frame posterior (finite but meaningless at padded frames).
        logvar (`torch.Tensor` of shape `(batch, frames, latent_dim)`): Log-variance of the per-frame posterior.
        mask (`torch.BoolTensor` of shape `(batch, frames)`): `True` at valid (non-padded) frames.
    """

    prediction: torch.Tensor = None
    target_delta: torch.Tensor = None
    mu: torch.Tensor = None
    logvar: torch.Tensor = None
    mask: torch.Tensor = None


def sinusoidal_position_encoding(
    num_positions: int, dim: int, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""
    Absolute sinusoidal encoding of shape `(num_positions, dim)` with sine on even and cosine on odd channels,
    frequencies `10000**(-2i/dim)`. Computed in float32 exactly the way the official PBNet fills its buffers, so the
    converter can check stored tables against it.
    """
    if dim % 2:
        raise ValueError(f"the sinusoidal position encoding needs an even width, got {dim}")
    position = torch.arange(num_positions, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device).float() * (-math.log(10000.0) / dim))
    encoding = torch.zeros(num_positions, dim, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding.to(dtype)


def lengths_to_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(batch,)` lengths → `(batch, num_frames)` boolean mask, `True` at valid frames."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


class PBNetEncoder(nn.Module):
    r"""
    Posterior network of the CVAE (training only): embeds the residual states, the first state and the audio per
    frame, adds the sinusoidal position encoding and runs a post-norm `nn.TransformerEncoder` over the valid frames;
    per-frame heads give the posterior mean and log-variance.
    """

    def __init__(
        self,
        audio_dim: int,
        state_dim: int,
        pose_latent_dim: int,
        audio_latent_dim: int,
        latent_dim: int,
        ff_size: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        activation: str,
    ):
        super().__init__()
        hidden_dim = 2 * pose_latent_dim + audio_latent_dim
        self.delta_embedding = nn.Linear(state_dim, pose_latent_dim)
        self.initial_state_embedding = nn.Linear(state_dim, pose_latent_dim)
        self.audio_embedding = nn.Linear(audio_dim, audio_latent_dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden_dim,
            nhead=num_heads,
            dim_feedforward=ff_size,
            dropout=dropout,
            activation=activation,
            batch_first=True,
        )
        # No nested tensors: padded frames keep well-defined (finite) outputs instead of being dropped.
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.mu_head = nn.Linear(hidden_dim, latent_dim)
        self.logvar_head = nn.Linear(hidden_dim, latent_dim)

    def forward(self, states: torch.Tensor, audio_features: torch.Tensor, mask: torch.Tensor):
        """Returns `(mu, logvar)`, each `(batch, frames, latent_dim)`."""
        num_frames = states.shape[1]
        initial_state = states[:, :1]
        delta = states - initial_state
        hidden_states = torch.cat(
            [
                self.initial_state_embedding(initial_state).expand(-1, num_frames, -1),
                self.delta_embedding(delta),
                self.audio_embedding(audio_features),
            ],
            dim=-1,
        )
        position = sinusoidal_position_encoding(num_frames, hidden_states.shape[-1], hidden_states.device)
        hidden_states = self.dropout(hidden_states + position.to(hidden_states.dtype))
        hidden_states = self.transformer(hidden_states, src_key_padding_mask=~mask)
        return self.mu_head(hidden_states), self.logvar_head(hidden_states)


class PBNetDecoderLayer(nn.Module):
    r"""
    Post-norm transformer decoder layer: temporal self-attention, cross-attention to the per-frame memory and a GELU
    feed-forward block, each followed by dropout, a residual connection and a LayerNorm.
    """

    def __init__(self, dim: int, num_heads: int, attention_head_dim: int, ff_size: int, dropout: float):
        super().__init__()
        self.self_attn = DAWNAttention(dim, heads=num_heads, dim_head=attention_head_dim)
        self.cross_attn = DAWNAttention(dim, heads=num_heads, dim_head=attention_head_dim)
        self.ff_in = nn.Linear(dim, ff_size)
        self.ff_dropout = nn.Dropout(dropout)
        self.ff_out = nn.Linear(ff_size, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory: torch.Tensor,
        rotary_emb: RotaryEmbedding,
        self_attention_bias: BandedPositionBias,
        cross_attention_bias: BandedPositionBias,
    ) -> torch.Tensor:
        attended = self.self_attn(hidden_states, rotary_emb=rotary_emb, position_bias=self_attention_bias)
        hidden_states = self.norm1(hidden_states + self.dropout(attended))
        attended = self.cross_attn(
            hidden_states, encoder_hidden_states=memory, rotary_emb=rotary_emb, position_bias=cross_attention_bias
        )
        hidden_states = self.norm2(hidden_states + self.dropout(attended))
        # The official feed-forward block is GELU whatever the configured (encoder) activation.
        feed_forward = self.ff_out(self.ff_dropout(F.gelu(self.ff_in(hidden_states))))
        return self.norm3(hidden_states + self.dropout(feed_forward))


class PBNetDecoder(nn.Module):
    r"""
    Generative network of the CVAE: per-frame memory from `[first-state embedding, latent, audio embedding]`,
    identical learned queries refined by a pre-norm temporal self-attention, then post-norm decoder layers and a
    linear head giving the per-frame residual state.
    """

    def __init__(
        self,
        audio_dim: int,
        state_dim: int,
        pose_latent_dim: int,
        audio_latent_dim: int,
        latent_dim: int,
        ff_size: int,
        num_layers: int,
        num_heads: int,
        attention_head_dim: int,
        num_buckets: int,
        max_distance: int,
        window: Optional[int],
        rotary_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.initial_state_embedding = nn.Linear(state_dim, pose_latent_dim)
        self.audio_embedding = nn.Linear(audio_dim, audio_latent_dim)
        self.memory_proj = nn.Linear(pose_latent_dim + latent_dim + audio_latent_dim, pose_latent_dim)
        # The official model projects an all-zero query with a Linear layer, which leaves only its bias: the same
        # learned vector at every frame.
        self.initial_query = nn.Parameter(torch.zeros(pose_latent_dim))
        self.query_norm = nn.LayerNorm(pose_latent_dim, eps=1e-5, bias=False)
        self.query_attn = DAWNAttention(pose_latent_dim, heads=num_heads, dim_head=attention_head_dim)
        # Rotary tables are deterministic, so the official split (one for the query attention, one shared by the
        # layers) only names where each is used.
        self.query_rotary_emb = RotaryEmbedding(rotary_dim)
        self.rotary_emb = RotaryEmbedding(rotary_dim)
        self.self_attention_bias = RelativePositionBias(num_heads, num_buckets, max_distance, window)
        self.cross_attention_bias = RelativePositionBias(num_heads, num_buckets, max_distance, window)
        self.layers = nn.ModuleList(
            [
                PBNetDecoderLayer(pose_latent_dim, num_heads, attention_head_dim, ff_size, dropout)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nn.Linear(pose_latent_dim, state_dim)

    def forward(
        self, initial_state: torch.Tensor, latents: torch.Tensor, audio_features: torch.Tensor
    ) -> torch.Tensor:
        """Decodes unpadded sequences: `(batch, 1, D)` initial states and `(batch, F, latent_dim)` latents."""
        batch_size, num_frames = latents.shape[:2]
        memory = torch.cat(
            [
                self.initial_state_embedding(initial_state).expand(-1, num_frames, -1),
                latents,
                self.audio_embedding(audio_features),
            ],
            dim=-1,
        )
        memory = self.memory_proj(memory)
        self_attention_bias = self.self_attention_bias(num_frames)
        cross_attention_bias = self.cross_attention_bias(num_frames)

        queries = self.initial_query.to(memory.dtype).expand(batch_size, num_frames, -1)
        hidden_states = queries + self.query_attn(
            self.query_norm(queries), rotary_emb=self.query_rotary_emb, position_bias=self_attention_bias
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, memory, self.rotary_emb, self_attention_bias, cross_attention_bias)
        return self.proj_out(hidden_states)


def _check_latent_prior(latent_dim: int, mean, scale_tril, correlation, quantiles=None) -> None:
    given = [value is not None for value in (mean, scale_tril, correlation)]
    if not any(given):
        if quantiles is not None:
            raise ValueError("`latent_prior_quantiles` needs the rest of the latent prior (mean, scale_tril, correlation)")
        return
    if not all(given):
        raise ValueError(
            "give all of `latent_prior_mean`, `latent_prior_scale_tril` and `latent_prior_correlation` (a fitted "
            "prior) or none of them (the official N(0, I))"
        )
    shapes = tuple(tuple(torch.tensor(value).shape) for value in (mean, scale_tril, correlation))
    expected = ((latent_dim,), (latent_dim, latent_dim), (latent_dim,))
    if shapes != expected:
        raise ValueError(f"the latent prior needs shapes {expected} for latent_dim={latent_dim}, got {shapes}")
    if not all(0.0 <= value < 1.0 for value in correlation):
        raise ValueError(f"`latent_prior_correlation` values must lie in [0, 1), got {list(correlation)}")
    if quantiles is not None:
        table = torch.tensor(quantiles)
        if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] != latent_dim:
            raise ValueError(
                f"`latent_prior_quantiles` must have shape (levels >= 2, {latent_dim}), got {tuple(table.shape)}"
            )
        if bool((table[1:] < table[:-1]).any()):
            raise ValueError("`latent_prior_quantiles` must be non-decreasing along the levels of each channel")


def _interpolate_columns(values: torch.Tensor, levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Per channel d, piecewise-linear interpolation of `values[..., d]` in (`levels`, `table[:, d]`), clamped."""
    flat = values.reshape(-1, values.shape[-1]).clamp(levels[0], levels[-1])
    upper = torch.searchsorted(levels, flat.T.contiguous(), right=True).clamp(1, len(levels) - 1).T
    lower = upper - 1
    weight = (flat - levels[lower]) / (levels[upper] - levels[lower])
    low_values, high_values = table.gather(0, lower), table.gather(0, upper)
    return torch.lerp(low_values, high_values, weight).reshape(values.shape)


class PBNetModel(ModelMixin, ConfigMixin, AttentionMixin):
    r"""
    PBNet, DAWN's pose / blink generator: a transformer conditional VAE with one latent per frame that predicts the
    motion of a state (6-D head pose or 2 eye-aspect ratios) relative to the first frame, conditioned on per-frame
    speech features. The same class serves both networks; they differ only in `state_dim` and normalisation.

    At inference only the decoder runs ([`~PBNetModel.sample`], [`~PBNetModel.generate_states`]); the encoder is used
    for training ([`~PBNetModel.forward`]).

    Temporal attention is local: each frame attends to frames at most `window` away (plus a learned T5
    relative-position bias and a rotary embedding on the first `rotary_dim` channels of every head). The official
    model applies the window only in eval mode; here it is applied in training too, so fine-tuning sees the
    attention pattern used at inference. For the official training clips (at most 200 frames ≤ `window` + 1 with the
    ±200-frame window) both rules give the same result.

    Sequences of different lengths in one batch are decoded each at its own length (the official decoder has no
    padding mask, so padded frames would otherwise change the valid ones); results therefore do not depend on the
    batch composition.

    Parameters:
        audio_dim (`int`, defaults to 1024): Channels of the speech features (HuBERT-large hidden size).
        state_dim (`int`, defaults to 6): Channels of the state: 6 for pose (yaw, pitch, roll, scale, tx, ty), 2 for
            blink.
        pose_latent_dim (`int`, defaults to 64): Width of the state embeddings and of the decoder.
        audio_latent_dim (`int`, defaults to 256): Width of the audio embeddings.
        latent_dim (`int`, defaults to 256): Channels of the per-frame latent `z`.
        ff_size (`int`, defaults to 128): Hidden width of the feed-forward blocks (encoder and decoder).
        num_layers (`int`, defaults to 2): Number of encoder layers and of decoder layers.
        num_heads (`int`, defaults to 4): Attention heads (encoder and decoder).
        attention_head_dim (`int`, defaults to 32): Channels per head of the decoder attentions.
        num_buckets (`int`, defaults to 128): T5 relative-position buckets (both directions together).
        max_distance (`int`, defaults to 128): Distance at which the logarithmic buckets saturate.
        window (`int`, *optional*, defaults to 200): Largest attended frame distance in the decoder (200 for the
            official `transformerreemb5` architecture, 100 for `transformerreemb6`); `None` for unlimited attention.
        dropout (`float`, defaults to 0.1): Dropout probability.
        activation (`str`, defaults to `"gelu"`): Activation of the encoder's feed-forward blocks (`"gelu"` or
            `"relu"`); the decoder's are GELU, as in the official model.
        rotary_dim (`int`, defaults to 4): Rotated channels per head (`min(32, num_heads)` in the official model).
        state_min (`Sequence[float]`, *optional*): Per-channel minimum of the state range; with `state_max` the
            network works on `(state - state_min) / (state_max - state_min)`. `None` (blink) means raw states.
            Defaults to the pose range `[-90, -90, -90, 0, 0, 0]`.
        state_max (`Sequence[float]`, *optional*): Per-channel maximum, defaults to `[90, 90, 90, 1, 720, 1080]`.
        latent_prior_mean (`Sequence[float]`, *optional*), latent_prior_scale_tril (`Sequence[Sequence[float]]`,
        *optional*), latent_prior_correlation (`Sequence[float]`, *optional*), latent_prior_quantiles
        (`Sequence[Sequence[float]]`, *optional*):
            A prior fitted to the encoder's posterior means after training (see
            `diffusers_dawn.training.pbnet_trainer.fit_latent_prior`), used by [`~PBNetModel.sample`] instead of the
            official i.i.d. `N(0, I)`: `z_t = mean + L · w_t`, where `L` is the lower-triangular `scale_tril`
            (`latent_dim × latent_dim`) and each channel of `w` is a stationary AR(1) Gaussian process of unit
            variance with lag-one correlation `correlation`, mapped through the channel's quantile function when
            `quantiles` (`levels × latent_dim`, at probabilities `(k + 1/2) / levels`) is given: rare events such as
            blinks make some channels heavy-tailed, which a Gaussian does not reproduce. A model whose motion does not
            follow the speech (random head motion, blinks) needs such a prior: its decoder reads temporally smooth,
            correlated latents, which white noise is not. `None` (all): the official prior.
    """

    @register_to_config
    def __init__(
        self,
        audio_dim: int = 1024,
        state_dim: int = 6,
        pose_latent_dim: int = 64,
        audio_latent_dim: int = 256,
        latent_dim: int = 256,
        ff_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        attention_head_dim: int = 32,
        num_buckets: int = 128,
        max_distance: int = 128,
        window: Optional[int] = 200,
        dropout: float = 0.1,
        activation: str = "gelu",
        rotary_dim: int = 4,
        state_min: Optional[Sequence[float]] = POSE_STATE_MIN,
        state_max: Optional[Sequence[float]] = POSE_STATE_MAX,
        latent_prior_mean: Optional[Sequence[float]] = None,
        latent_prior_scale_tril: Optional[Sequence[Sequence[float]]] = None,
        latent_prior_correlation: Optional[Sequence[float]] = None,
        latent_prior_quantiles: Optional[Sequence[Sequence[float]]] = None,
    ):
        super().__init__()
        _check_latent_prior(
            latent_dim, latent_prior_mean, latent_prior_scale_tril, latent_prior_correlation, latent_prior_quantiles
        )
        if (state_min is None) != (state_max is None):
            raise ValueError("give both `state_min` and `state_max` (pose) or neither (blink: raw states)")
        if state_min is not None:
            if len(state_min) != state_dim or len(state_max) != state_dim:
                raise ValueError(
                    f"`state_min`/`state_max` need {state_dim} values (one per state channel), got "
                    f"{len(state_min)} and {len(state_max)}"
                )
            if any(high <= low for low, high in zip(state_min, state_max)):
                raise ValueError(f"every `state_max` must exceed `state_min`, got {state_min} / {state_max}")
        if (2 * pose_latent_dim + audio_latent_dim) % num_heads:
            raise ValueError(
                f"the encoder width 2 * pose_latent_dim + audio_latent_dim = {2 * pose_latent_dim + audio_latent_dim} "
                f"must be divisible by num_heads={num_heads}"
            )
        if rotary_dim % 2 or not 0 < rotary_dim <= attention_head_dim:
            raise ValueError(f"`rotary_dim` must be even and in 1..{attention_head_dim}, got {rotary_dim}")
        if window is not None and window < 1:
            raise ValueError(f"`window` must be a positive number of frames or None, got {window}")

        shared = dict(
            audio_dim=audio_dim,
            state_dim=state_dim,
            pose_latent_dim=pose_latent_dim,
            audio_latent_dim=audio_latent_dim,
            latent_dim=latent_dim,
            ff_size=ff_size,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout=dropout,
        )
        self.encoder = PBNetEncoder(activation=activation, **shared)
        self.decoder = PBNetDecoder(
            attention_head_dim=attention_head_dim,
            num_buckets=num_buckets,
            max_distance=max_distance,
            window=window,
            rotary_dim=rotary_dim,
            **shared,
        )

    # ----------------------------------------------------------------------------------------------- normalisation

    def _state_range(self, reference: torch.Tensor):
        low = torch.tensor(self.config.state_min, dtype=torch.float32, device=reference.device)
        high = torch.tensor(self.config.state_max, dtype=torch.float32, device=reference.device)
        return low, high - low

    def normalize_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw states `(..., state_dim)` → network units `(state - min) / (max - min)`; identity without a range."""
        self._check_state_channels(states, "states")
        if self.config.state_min is None:
            return states
        low, span = self._state_range(states)
        # float32 arithmetic: pixel offsets up to 1080 lose their fraction in half precision.
        return ((states.float() - low) / span).to(states.dtype)

    def denormalize_states(self, states: torch.Tensor) -> torch.Tensor:
        """Inverse of [`~PBNetModel.normalize_states`]: `states * (max - min) + min`."""
        self._check_state_channels(states, "states")
        if self.config.state_min is None:
            return states
        low, span = self._state_range(states)
        return (states.float() * span + low).to(states.dtype)

    def _check_state_channels(self, states: torch.Tensor, name: str) -> None:
        if states.shape[-1] != self.config.state_dim:
            raise ValueError(
                f"`{name}` has {states.shape[-1]} channels in its last axis, this PBNet models "
                f"{self.config.state_dim}-D states (shape {tuple(states.shape)})"
            )

    # ------------------------------------------------------------------------------------------------ validation

    def _check_inputs(self, initial_state: torch.Tensor, audio_features: torch.Tensor, name: str) -> None:
        if audio_features.ndim != 3 or audio_features.shape[-1] != self.config.audio_dim:
            raise ValueError(
                f"`audio_features` must be (batch, frames, {self.config.audio_dim}), got {tuple(audio_features.shape)}"
            )
        if initial_state.ndim != 3 or initial_state.shape[1] != 1 or initial_state.shape[0] != audio_features.shape[0]:
            raise ValueError(
                f"`{name}` must be (batch, 1, {self.config.state_dim}) with the batch size of `audio_features` "
                f"({audio_features.shape[0]}), got {tuple(initial_state.shape)}; reshape a single state with "
                f".reshape(1, 1, {self.config.state_dim})"
            )
        self._check_state_channels(initial_state, name)

    @staticmethod
    def _prepare_lengths(
        lengths: Optional[Union[torch.Tensor, Sequence[int]]], batch_size: int, num_frames: int, device
    ) -> torch.Tensor:
        if lengths is None:
            return torch.full((batch_size,), num_frames, dtype=torch.long, device=device)
        lengths = torch.as_tensor(lengths, device=device).long().reshape(-1)
        if lengths.shape[0] != batch_size:
            raise ValueError(f"`lengths` needs one entry per sequence ({batch_size}), got {lengths.shape[0]}")
        if (lengths < 1).any() or (lengths > num_frames).any():
            raise ValueError(
                f"`lengths` must lie in 1..{num_frames} (the padded number of frames), got {lengths.tolist()}"
            )
        return lengths

    # -------------------------------------------------------------------------------------------------- decoding

    def _decode(
        self, initial_state: torch.Tensor, latents: torch.Tensor, audio_features: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Decodes each group of equal length unpadded; `(batch, F, D)` with zeros at padded frames."""
        num_frames = latents.shape[1]
        if bool((lengths == num_frames).all()):
            return self.decoder(initial_state, latents, audio_features)
        rows: List[Optional[torch.Tensor]] = [None] * latents.shape[0]
        for length in lengths.unique().tolist():
            index = (lengths == length).nonzero().flatten()
            decoded = self.decoder(initial_state[index], latents[index, :length], audio_features[index, :length])
            decoded = F.pad(decoded, (0, 0, 0, num_frames - length))
            for row, sample_index in enumerate(index.tolist()):
                rows[sample_index] = decoded[row]
        return torch.stack(rows)

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        r"""
        Draws the per-frame latents `z ~ N(0, I)` of shape `(batch, frames, latent_dim)`.

        The draw is made frame-major, `(frames, batch, latent_dim)`, as the official `generate` does, so a generator
        (or the global RNG) in the same state yields the official noise. A list of generators gives one per
        sequence.
        """
        shape = (num_frames, batch_size, self.config.latent_dim)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}; pass one per sequence")
            draws = [self._randn((num_frames, 1, shape[2]), g, device, dtype) for g in generator]
            return torch.cat(draws, dim=1).transpose(0, 1)
        return self._randn(shape, generator, device, dtype).transpose(0, 1)

    @property
    def has_latent_prior(self) -> bool:
        """Whether [`~PBNetModel.sample`] uses a fitted latent prior instead of the official `N(0, I)`."""
        return self.config.latent_prior_mean is not None

    def apply_latent_prior(self, noise: torch.Tensor) -> torch.Tensor:
        r"""
        Standard normal draws `(batch, frames, latent_dim)` → latents of the fitted prior (unchanged without one):
        `a_0 = ε_0`, `a_t = ρ·a_{t−1} + sqrt(1 − ρ²)·ε_t` per channel, `w = Q(Φ(a))` with the channel's quantile
        function `Q` (or `w = a` without quantiles), then `z_t = mean + L·w_t`.
        """
        if not self.has_latent_prior:
            return noise
        options = dict(device=noise.device, dtype=torch.float32)
        mean = torch.tensor(self.config.latent_prior_mean, **options)
        scale_tril = torch.tensor(self.config.latent_prior_scale_tril, **options)
        correlation = torch.tensor(self.config.latent_prior_correlation, **options)
        innovation = (1 - correlation**2).sqrt()
        noise = noise.float()
        steps = [noise[:, 0]]
        for frame in range(1, noise.shape[1]):
            steps.append(correlation * steps[-1] + innovation * noise[:, frame])
        process = torch.stack(steps, dim=1)
        if self.config.latent_prior_quantiles is not None:
            table = torch.tensor(self.config.latent_prior_quantiles, **options)
            levels = (torch.arange(table.shape[0], **options) + 0.5) / table.shape[0]
            process = _interpolate_columns(torch.special.ndtr(process), levels, table)
        return (mean + process @ scale_tril.T).to(noise.dtype)

    @staticmethod
    def _randn(shape, generator, device, dtype) -> torch.Tensor:
        # Draw where the generator lives (a CPU generator for a GPU model), then move.
        draw_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)

    @torch.no_grad()
    def sample(
        self,
        initial_state: torch.Tensor,
        audio_features: torch.Tensor,
        lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""
        Samples the per-frame residual Δ of a state sequence from speech (decoder only, without autograd).

        Args:
            initial_state (`torch.Tensor` of shape `(batch, 1, state_dim)`):
                State of the first frame in network units (normalised with [`~PBNetModel.normalize_states`] for
                pose, raw for blink).
            audio_features (`torch.Tensor` of shape `(batch, frames, audio_dim)`): Speech features, 25 per second.
            lengths (`torch.Tensor` or list of `int`, *optional*): Valid frames per sequence; all by default.
            generator (`torch.Generator` or list of them, *optional*): Source of the latent noise.
            latents (`torch.Tensor` of shape `(batch, frames, latent_dim)`, *optional*): Standard normal draws to
                use instead of drawing them (they are still multiplied by `noise_scale` and, with a fitted prior,
                shaped by it).
            noise_scale (`float`, defaults to 1.0): Factor on the draws (the official `fact`).

        Returns:
            `torch.Tensor` of shape `(batch, frames, state_dim)`: Δ, in network units, zero at padded frames; the
            state of frame `t` is `initial_state + Δ[:, t]`.
        """
        self._check_inputs(initial_state, audio_features, "initial_state")
        batch_size, num_frames = audio_features.shape[:2]
        lengths = self._prepare_lengths(lengths, batch_size, num_frames, audio_features.device)
        expected = (batch_size, num_frames, self.config.latent_dim)
        if latents is None:
            latents = self.prepare_latents(
                batch_size, num_frames, generator, device=audio_features.device, dtype=audio_features.dtype
            )
        elif tuple(latents.shape) != expected:
            raise ValueError(
                f"`latents` must have shape {expected} (batch, frames, latent_dim), got {tuple(latents.shape)}"
            )
        latents = self.apply_latent_prior(latents * noise_scale)
        latents = latents.to(device=audio_features.device, dtype=audio_features.dtype)
        return self._decode(initial_state, latents, audio_features, lengths)

    @torch.no_grad()
    def generate_states(
        self,
        initial_state_raw: torch.Tensor,
        audio_features: torch.Tensor,
        lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""
        Samples a state sequence in raw units, with the official post-processing: pose =
        `denormalize(Δ + normalize(initial))`, blink = `Δ + initial`.

        Args:
            initial_state_raw (`torch.Tensor` of shape `(batch, 1, state_dim)`): First-frame state in raw units
                (degrees / scale / pixels for pose, eye-aspect ratios for blink).
            audio_features, lengths, generator, latents, noise_scale: As in [`~PBNetModel.sample`].

        Returns:
            `torch.Tensor` of shape `(batch, frames, state_dim)` in raw units and in the dtype of
            `initial_state_raw`; padded frames hold the initial state.
        """
        self._check_inputs(initial_state_raw, audio_features, "initial_state_raw")
        initial_normalized = self.normalize_states(initial_state_raw.float())
        delta = self.sample(
            initial_normalized.to(audio_features.dtype),
            audio_features,
            lengths=lengths,
            generator=generator,
            latents=latents,
            noise_scale=noise_scale,
        )
        # Summed in float32 against the float32 normalised initial state, whatever the model dtype.
        states = self.denormalize_states(delta.float() + initial_normalized)
        return states.to(initial_state_raw.dtype)

    # -------------------------------------------------------------------------------------------------- training

    def forward(
        self,
        states: torch.Tensor,
        audio_features: torch.Tensor,
        lengths: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ) -> Union[PBNetOutput, tuple]:
        r"""
        Training pass of the CVAE: encode the sequence, draw `z = mu + exp(logvar / 2) * eps` per frame, decode it
        with the first state.

        Args:
            states (`torch.Tensor` of shape `(batch, frames, state_dim)`):
                Ground-truth states in network units (apply [`~PBNetModel.normalize_states`] to raw pose first, as
                the official training does); padded frames may hold anything.
            audio_features (`torch.Tensor` of shape `(batch, frames, audio_dim)`): Speech features.
            lengths (`torch.Tensor` or list of `int`, *optional*): Valid frames per sequence; all by default.
            generator (`torch.Generator`, *optional*): Source of the reparameterisation noise `eps`.
            return_dict (`bool`, defaults to `True`): Return a [`PBNetOutput`] instead of a tuple.

        Returns:
            [`PBNetOutput`] or `(prediction, target_delta, mu, logvar, mask)`. The official losses are
            `mse(prediction[mask], target_delta[mask])` and `-0.5 * mean(1 + logvar - mu**2 - exp(logvar))` (the
            official KL averages over padded frames too).
        """
        if states.ndim != 3:
            raise ValueError(f"`states` must be (batch, frames, {self.config.state_dim}), got {tuple(states.shape)}")
        self._check_inputs(states[:, :1], audio_features, "states[:, :1]")
        if states.shape[1] != audio_features.shape[1]:
            raise ValueError(
                f"`states` has {states.shape[1]} frames but `audio_features` {audio_features.shape[1]}; pass one "
                "audio feature per state frame"
            )
        batch_size, num_frames = states.shape[:2]
        lengths = self._prepare_lengths(lengths, batch_size, num_frames, states.device)
        mask = lengths_to_mask(lengths, num_frames)
        mu, logvar = self.encoder(states, audio_features, mask)
        noise = self._randn(mu.shape, generator, mu.device, mu.dtype)
        latents = mu + torch.exp(0.5 * logvar) * noise
        initial_state = states[:, :1]
        prediction = self._decode(initial_state, latents, audio_features, lengths)
        target_delta = (states - initial_state) * mask[..., None]
        if not return_dict:
            return prediction, target_delta, mu, logvar, mask
        return PBNetOutput(prediction=prediction, target_delta=target_delta, mu=mu, logvar=logvar, mask=mask)
