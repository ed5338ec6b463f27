#!/usr/bin/env python
"""
Train DAWN's audio-to-video flow diffusion model (A2V-FDM) with the two-stage curriculum (TCL).

    # Stage 1: 20-frame clips, reference = first frame of the clip.
    accelerate launch training/train_a2v.py --stage 1 --pretrained_model_name_or_path DAWN_DIR \
        --dataset_name_or_path data/hdtf128 --output_dir runs/a2v-s1 --mixed_precision fp16
    # Stage 2: 30-40-frame clips, reference = random frame of the whole video, initialised from stage 1.
    accelerate launch training/train_a2v.py --stage 2 --init_from runs/a2v-s1 --pretrained_model_name_or_path DAWN_DIR \
        --dataset_name_or_path data/hdtf128 --output_dir runs/a2v-s2

`--pretrained_model_name_or_path` is a DAWN pipeline folder or Hub repository: its frozen `lfg` gives the motion
targets, its `scheduler` the noise schedule, and its `unet` config the architecture (stage 1 starts from random
weights unless `--init_from` is given). The dataset is the output of `training/preprocess.py`.
"""

import logging
import sys
from typing import List, Optional

from diffusers_dawn.training.accelerate_utils import TrainingResult
from diffusers_dawn.training.config import SHARED_GROUP
from diffusers_dawn.training.run_a2v import A2VTrainingConfig, train_a2v
from diffusers_dawn.utils.config_cli import parse_config


def main(argv: Optional[List[str]] = None) -> TrainingResult:
    config = parse_config(A2VTrainingConfig, argv, description=__doc__, last_group=SHARED_GROUP)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train_a2v(config)


if __name__ == "__main__":
    main(sys.argv[1:])
