"""
LoRA fine-tuning of the A2V-FDM U-Net on a new identity: [`LoraTrainingConfig`] (the settings of
`training/train_lora.py`), [`LoraModelAdapter`] and [`train_lora`]. Low-rank adapters (peft) go on the attention
projections (`to_q`, `to_k`, `to_v`, `to_out.0`) and are trained with the A2V objective by [`~training.run_a2v.train_a2v`];
only the adapter is saved, as `pytorch_lora_weights.safetensors` (load it with `DAWNPipeline.load_lora_weights`).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..loaders.lora import LORA_TARGET_SUFFIXES, DAWNLoraLoaderMixin, lora_target_modules
from ..models.unet_3d_flow import UNet3DFlowModel
from ..utils.io import atomic_file
from .accelerate_utils import TrainingResult
from .config import option
from .run_a2v import DATA, A2VModelAdapter, A2VTrainingConfig, load_pretrained_unet, resolve_unet_folder, train_a2v


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA = "LoRA"


@dataclass(kw_only=True)
class LoraTrainingConfig(A2VTrainingConfig):
    """
    Settings of a LoRA fine-tuning: the A2V settings with defaults for one identity (a few long videos, so many clips
    per video and small batches; stage-2 clips of 30-40 frames with a reference from the whole video) and the
    adapter's shape.
    """

    stage: int = option(2, choices=(1, 2), group=DATA, help="Curriculum stage.")
    clips_per_video: int = option(32, group=DATA, help="Clips drawn from each video per epoch.")
    rank: int = option(16, group=LORA, help="LoRA rank r.")
    lora_alpha: Optional[int] = option(None, group=LORA, help="LoRA alpha (defaults to the rank: scale 1).")
    lora_dropout: float = option(0.0, group=LORA)
    lora_target_modules: List[str] = option(
        group=LORA, default_factory=lambda: list(LORA_TARGET_SUFFIXES),
        help="Name suffixes of the nn.Linear layers that get adapters.",
    )
    learning_rate: float = option(1e-4)
    train_batch_size: Optional[int] = option(4, help="Batch size per device.")
    num_train_epochs: int = option(100)

    def check_model_source(self) -> None:
        """The adapter goes on the pretrained U-Net (or `--init_from`), whatever the stage."""


class LoraModelAdapter(A2VModelAdapter):
    """Freezes the U-Net, adds a LoRA adapter of the given shape, and saves only the adapter weights."""

    model_card_tags = A2VModelAdapter.model_card_tags + ["lora"]
    hub_allow_patterns = [LORA_WEIGHT_NAME]

    def __init__(self, rank: int = 16, lora_alpha: Optional[int] = None, lora_dropout: float = 0.0,
                 target_modules: Sequence[str] = LORA_TARGET_SUFFIXES):
        self.rank = rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else rank
        self.lora_dropout = lora_dropout
        self.target_modules = list(target_modules)

    @classmethod
    def from_config(cls, config: LoraTrainingConfig) -> "LoraModelAdapter":
        return cls(config.rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)

    def load_unet(self, config: A2VTrainingConfig) -> UNet3DFlowModel:
        """`--init_from` weights, else the pretrained U-Net."""
        if config.init_from is not None:
            return UNet3DFlowModel.from_pretrained(resolve_unet_folder(config.init_from))
        return load_pretrained_unet(config)

    def prepare(self, unet: UNet3DFlowModel) -> List[torch.nn.Parameter]:
        from peft import LoraConfig

        unet.requires_grad_(False)
        self.config = LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=lora_target_modules(unet, self.target_modules),
        )
        unet.add_adapter(self.config)
        return [parameter for parameter in unet.parameters() if parameter.requires_grad]

    def _save(self, unet: UNet3DFlowModel, folder, weight_name: str = LORA_WEIGHT_NAME) -> Path:
        from peft.utils import get_peft_model_state_dict

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
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state_dict = load_file(os.path.join(folder, LORA_WEIGHT_NAME))
        prefix = f"{DAWNLoraLoaderMixin.unet_name}."
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
        result = set_peft_model_state_dict(unet, state_dict, adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"the checkpoint in {folder} has LoRA weights this adapter lacks: {unexpected[:3]}")

    def save_final(self, unet: UNet3DFlowModel, output_dir: str) -> Path:
        # Written under a temporary name beside the final file and renamed when complete.
        with atomic_file(Path(output_dir) / LORA_WEIGHT_NAME) as partial:
            self._save(unet, os.path.dirname(partial), weight_name=os.path.basename(partial))
        return Path(output_dir)

    def model_card_description(self, config: A2VTrainingConfig, steps: int) -> str:
        return (
            f"LoRA adapter (rank {self.rank}) for the A2V-FDM U-Net of `{config.pretrained_model_name_or_path}`, "
            f"trained with `training/train_lora.py` on `{config.dataset_name_or_path}` for {steps} "
            "steps. Load it with `pipe.load_lora_weights(repo_id, adapter_name=...)` on a `DAWNPipeline`."
        )


def train_lora(config: LoraTrainingConfig) -> TrainingResult:
    """Trains a LoRA adapter of the A2V-FDM U-Net as `config` says; saves `OUTPUT_DIR/pytorch_lora_weights.safetensors`."""
    return train_a2v(config, adapter=LoraModelAdapter.from_config(config))
