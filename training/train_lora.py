#!/usr/bin/env python
"""
Fine-tune DAWN on a new identity with LoRA: low-rank adapters (peft) on the attention projections (`to_q`, `to_k`,
`to_v`, `to_out.0`) of the A2V-FDM U-Net, trained with the A2V objective on a few minutes of that person's video
(preprocessed by `training/preprocess.py`). Only the adapter is saved, as `pytorch_lora_weights.safetensors`:

    accelerate launch training/train_lora.py --pretrained_model_name_or_path DAWN_DIR \
        --dataset_name_or_path data/speaker --output_dir runs/speaker-lora --rank 16 --max_train_steps 2000

    pipe = DAWNPipeline.from_pretrained(DAWN_DIR)
    pipe.load_lora_weights("runs/speaker-lora", adapter_name="speaker")

Clips follow the stage-2 curriculum by default (30-40 frames, reference drawn from the whole video).
"""

import logging
import sys
from typing import List, Optional

from diffusers_dawn.training.accelerate_utils import TrainingResult
from diffusers_dawn.training.config import SHARED_GROUP
from diffusers_dawn.training.run_lora import LoraTrainingConfig, train_lora
from diffusers_dawn.utils.config_cli import parse_config


def main(argv: Optional[List[str]] = None) -> TrainingResult:
    config = parse_config(LoraTrainingConfig, argv, description=__doc__, last_group=SHARED_GROUP)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train_lora(config)


if __name__ == "__main__":
    main(sys.argv[1:])
