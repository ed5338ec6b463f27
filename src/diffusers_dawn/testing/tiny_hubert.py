"""A tiny, randomly initialised HuBERT with the real model's convolutional front end (320-sample hop, 400-sample
receptive field), so feature lengths and chunking behave exactly as with hubert-large-ls960-ft."""

from typing import Tuple

import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from ..processing.audio import AUDIO_SAMPLING_RATE


def tiny_hubert_config(
    hidden_size: int = 32, num_hidden_layers: int = 2, feat_extract_norm: str = "layer"
) -> HubertConfig:
    """
    A small HuBERT with hubert-large-ls960-ft's front end: the same conv kernels and strides (320-sample hop,
    400-sample receptive field) and the stable-layer-norm layout, but 16 conv channels and `hidden_size` features.

    `feat_extract_norm="group"` normalises each conv channel over time instead of each frame over channels (a
    layer norm per frame discards the loudness envelope, which random untrained features then no longer carry);
    `num_hidden_layers=0` keeps only the front end, projection and positional convolution.
    """
    return HubertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=True,
        # No dropout of any kind, so that training and evaluation compute the same features.
        **dict.fromkeys(("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout"), 0.0),
        layerdrop=0.0,
    )


def build_tiny_hubert(
    seed: int = 0, hidden_size: int = 32, num_hidden_layers: int = 2, feat_extract_norm: str = "layer"
) -> Tuple[HubertModel, Wav2Vec2FeatureExtractor]:
    """
    Returns (model in eval mode, feature extractor with whole-utterance normalisation like the real one); the
    arguments after `seed` are those of [`tiny_hubert_config`].
    """
    # HubertModel draws its initial weights from the global generator: fork it so callers' seeds are untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(tiny_hubert_config(hidden_size, num_hidden_layers, feat_extract_norm)).eval()
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=AUDIO_SAMPLING_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return model, extractor
