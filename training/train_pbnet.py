#!/usr/bin/env python
"""
Train PBNet, DAWN's pose / blink CVAE, on a DAWN training dataset (output of `training/preprocess.py`).

    accelerate launch training/train_pbnet.py --state pose --dataset_name_or_path data/hdtf128 --output_dir runs/pose
    accelerate launch training/train_pbnet.py --state blink --dataset_name_or_path data/hdtf128 --output_dir runs/blink

Objective (facts §5.6): reconstruction MSE over valid frames + KL (schedule `--kl_schedule official|linear_warmup`)
+ 1-D PatchGAN adversarial BCE losses; AdamW 4e-4 for both networks, cosine LR to 2e-5, gradient clipping 2.0 on
PBNet; random windows of up to 200 frames per video with padding masks; pose normalised with the model config's
`state_min` / `state_max`, blink raw. The model is `PBNetModel` with its default (official) configuration for the
state (`audio_dim` from the dataset), or `--pbnet_config config.json`, or initialised from
`--pretrained_model_name_or_path` (a PBNet folder, or a DAWN pipeline folder with `pbnet_pose` / `pbnet_blink`). The
trained model is saved to `OUTPUT_DIR/pbnet_<state>`, the discriminator to `OUTPUT_DIR/discriminator`.

One "epoch" is one pass over the videos, as in the official loop; the KL schedule counts these epochs.
"""

import logging
import sys
from typing import List, Optional

from diffusers_dawn.training.accelerate_utils import TrainingResult
from diffusers_dawn.training.config import SHARED_GROUP
from diffusers_dawn.training.run_pbnet import PBNetTrainingConfig, train_pbnet
from diffusers_dawn.utils.config_cli import parse_config


def main(argv: Optional[List[str]] = None) -> TrainingResult:
    config = parse_config(PBNetTrainingConfig, argv, description=__doc__, last_group=SHARED_GROUP)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return train_pbnet(config)


if __name__ == "__main__":
    main()
    sys.exit(0)
