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

import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file


# The shared A2V loop lives next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_a2v import A2VModelAdapter, build_parser, finalize_args, train  # noqa: E402

from diffusers_dawn.loaders import DAWNLoraLoaderMixin  # noqa: E402
from diffusers_dawn.loaders.lora import LORA_TARGET_SUFFIXES, lora_target_modules  # noqa: E402
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel  # noqa: E402
from diffusers_dawn.utils.io import atomic_file  # noqa: E402


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoraModelAdapter(A2VModelAdapter):
    """Freezes the U-Net, adds the LoRA adapter, and saves only the adapter weights."""

    def prepare(self, unet: UNet3DFlowModel, args) -> List[torch.nn.Parameter]:
        unet.requires_grad_(False)
        self.config = LoraConfig(
            r=args.rank,
            lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.rank,
            lora_dropout=args.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=lora_target_modules(unet, args.lora_target_modules),
        )
        unet.add_adapter(self.config)
        return [parameter for parameter in unet.parameters() if parameter.requires_grad]

    def _save(self, unet: UNet3DFlowModel, folder, weight_name: str = LORA_WEIGHT_NAME) -> Path:
        DAWNLoraLoaderMixin.save_lora_weights(
            folder,
            unet_lora_layers=get_peft_model_state_dict(unet),
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            weight_name=weight_name,
        )
        return Path(folder)

    def save_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        self._save(unet, folder)

    def load_checkpoint_model(self, unet: UNet3DFlowModel, folder: str) -> None:
        state_dict = load_file(os.path.join(folder, LORA_WEIGHT_NAME))
        prefix = f"{DAWNLoraLoaderMixin.unet_name}."
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
        result = set_peft_model_state_dict(unet, state_dict, adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"the checkpoint in {folder} has LoRA weights this adapter lacks: {unexpected[:3]}")

    def save_final(self, unet: UNet3DFlowModel, args) -> Path:
        # Written under a temporary name beside the final file and renamed when complete.
        with atomic_file(Path(args.output_dir) / LORA_WEIGHT_NAME) as partial:
            self._save(unet, os.path.dirname(partial), weight_name=os.path.basename(partial))
        return Path(args.output_dir)

    model_card_tags = A2VModelAdapter.model_card_tags + ["lora"]
    hub_allow_patterns = [LORA_WEIGHT_NAME]

    def model_card_description(self, args) -> str:
        return (
            f"LoRA adapter (rank {args.rank}) for the A2V-FDM U-Net of `{args.pretrained_model_name_or_path}`, "
            f"trained with `training/train_lora.py` on `{args.dataset_name_or_path}` for {args.max_train_steps} "
            "steps. Load it with `pipe.load_lora_weights(repo_id, adapter_name=...)` on a `DAWNPipeline`."
        )


def parse_args(argv: Optional[List[str]] = None):
    parser = build_parser(__doc__)
    # One identity: a few long videos, so many clips per video and small batches.
    parser.set_defaults(
        stage=2, learning_rate=1e-4, num_train_epochs=100, train_batch_size=4, clips_per_video=32, checkpointing_steps=500
    )
    for action in parser._actions:
        if action.dest == "stage":
            action.required = False
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=16, help="LoRA rank r.")
    lora.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (defaults to the rank: scale 1).")
    lora.add_argument("--lora_dropout", type=float, default=0.0)
    lora.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=list(LORA_TARGET_SUFFIXES),
        help="Name suffixes of the nn.Linear layers that get adapters.",
    )
    args = parser.parse_args(argv)
    args.lora = True
    return finalize_args(args)


def main(argv: Optional[List[str]] = None) -> List[float]:
    return train(parse_args(argv), adapter=LoraModelAdapter())


if __name__ == "__main__":
    main(sys.argv[1:])
