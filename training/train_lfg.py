#!/usr/bin/env python
"""
Train DAWN's latent flow generator (LFG) on a DAWN training dataset (output of `training/preprocess.py`).

    accelerate launch training/train_lfg.py --dataset_name_or_path data/hdtf128 --output_dir runs/lfg128 \
        --mixed_precision fp16

Objective (facts §6.1): multi-scale VGG19 perceptual pyramid + equivariance losses; Adam(0.5, 0.999), cosine LR to
2e-6; two frames of one video per sample with flips and colour jitter. The model is `LFGAutoencoder` with its
default (official) configuration, or `--lfg_config config.json`, or initialised from `--pretrained_model_name_or_path`
(an LFG folder, or a DAWN pipeline folder with an `lfg` subfolder). The trained model is saved to `OUTPUT_DIR/lfg`.

VGG19 ImageNet weights come from torchvision, or from `--vgg_weights FILE` (a torchvision vgg19 state dict); without
either the loss runs with random VGG weights and says so (fine for tests, useless for real training).
"""

import logging
import sys
from typing import List, Optional

from diffusers_dawn.training.accelerate_utils import TrainingResult
from diffusers_dawn.training.config import SHARED_GROUP
from diffusers_dawn.training.run_lfg import LFGTrainingConfig, train_lfg
from diffusers_dawn.utils.config_cli import parse_config


def main(argv: Optional[List[str]] = None) -> TrainingResult:
    config = parse_config(LFGTrainingConfig, argv, description=__doc__, last_group=SHARED_GROUP)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return train_lfg(config)


if __name__ == "__main__":
    main()
    sys.exit(0)
