"""The audio-encoder probe: its regression and context stacking, and the encoder variants it compares."""

import numpy as np
import torch

from diffusers_dawn.processing.audio import compute_hubert_features
from diffusers_dawn.testing import measures as probe
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert


def test_ridge_probe_recovers_a_linear_relation_held_out():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(5)
    train_x, test_x = rng.standard_normal((200, 5)), rng.standard_normal((50, 5))
    assert probe.ridge_probe(train_x, train_x @ weights, test_x, test_x @ weights, alpha=1e-6) > 0.999
    # Unrelated targets are not predicted.
    assert abs(probe.ridge_probe(train_x, rng.standard_normal(200), test_x, rng.standard_normal(50), alpha=1.0)) < 0.4


def test_context_stacks_neighbouring_frames_with_repeated_edges():
    features = np.arange(4, dtype=float)[:, None]
    stacked = probe.with_context(features, 1)
    np.testing.assert_array_equal(stacked, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])


def _loudness_fit(**encoder_options) -> float:
    """In-sample r of a linear read-out of the encoder's features to 0.2 s loud/quiet noise bursts."""
    encoder, extractor = build_tiny_hubert(seed=0, hidden_size=16, **encoder_options)
    rng = np.random.default_rng(0)
    loudness = np.repeat(np.tile([1.0, 0.02], 5), 3200)  # 2 s at 16 kHz
    waveform = (rng.standard_normal(len(loudness)) * loudness).astype(np.float32)
    with torch.no_grad():
        features = compute_hubert_features(waveform, encoder, extractor, num_frames=50).numpy()
    target = np.repeat(np.tile([1.0, 0.0], 5), 5)
    design = np.concatenate([features, np.ones((50, 1))], axis=1)
    fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return float(np.corrcoef(fitted, target)[0, 1])


def test_group_norm_encoder_without_layers_keeps_the_loudness_envelope():
    """The demo's encoder (group-normalised front end, no layers) carries loudness; the per-frame layer norm does not."""
    encoder, _ = build_tiny_hubert(seed=0, hidden_size=16, num_hidden_layers=0, feat_extract_norm="group")
    assert len(encoder.encoder.layers) == 0
    group = _loudness_fit(num_hidden_layers=0, feat_extract_norm="group")
    layer = _loudness_fit(num_hidden_layers=2, feat_extract_norm="layer")
    assert group > 0.8 and group > layer + 0.3, (group, layer)  # measured: 0.89 and 0.43
