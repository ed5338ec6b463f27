"""
Typed settings of the DAWN trainings.

[`TrainingConfig`] holds what every training shares (output folder, seed, precision, optimiser-step budget, LR
schedule, EMA, checkpoints, logging, Hub upload); each model's config (`LFGTrainingConfig`, `PBNetTrainingConfig`,
`A2VTrainingConfig`, `LoraTrainingConfig`) extends it with its data, model and objective settings and sets the
official defaults of that model. The fields are the command-line flags of the `training/train_*.py` scripts, same
names and defaults; each field's metadata carries its flag's help text and `--help` group (read by
[`~utils.config_cli.parse_config`]), so that a flag is declared once, here.
"""

import logging
import os
from dataclasses import MISSING, dataclass, field
from typing import Any, Optional, Sequence


logger = logging.getLogger(__name__)

SHARED_GROUP = "training (shared by all DAWN scripts)"
# `--help` groups that every model's training has under the same name.
OBJECTIVE_GROUP = "objective"
VALIDATION_GROUP = "validation"


def option(default: Any = MISSING, *, help: Optional[str] = None, group: str = SHARED_GROUP,
           choices: Optional[Sequence] = None, default_factory: Any = MISSING):
    """A config field with the help text, `--help` group and allowed values of its command-line flag."""
    metadata = {"help": help, "group": group, "choices": tuple(choices) if choices is not None else None}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class TrainingConfig:
    """Settings shared by every DAWN training (Accelerate, checkpoints, LR schedule, logging, Hub)."""

    output_dir: str = option(help="Where checkpoints, logs and the final model go.")
    seed: int = option(1234, help="Seed of models, data order and augmentation.")
    mixed_precision: Optional[str] = option(None, choices=("no", "fp16", "bf16"),
                                            help="Defaults to the `accelerate config` value.")
    gradient_accumulation_steps: int = option(1)
    gradient_checkpointing: bool = option(False, help="Trade compute for activation memory.")
    use_ema: bool = option(False, help="Keep an exponential moving average of the weights.")
    ema_decay: float = option(0.9999)
    checkpointing_steps: int = option(500, help="Save the training state every N steps.")
    checkpoints_total_limit: Optional[int] = option(None, help="Keep only the last N checkpoints.")
    resume_from_checkpoint: Optional[str] = option(None, help='A checkpoint folder, or "latest".')
    validation_steps: Optional[int] = option(None, help="Run validation every N steps.")
    max_train_steps: Optional[int] = option(None, help="Optimiser steps (overrides epochs).")
    num_train_epochs: int = option(1)
    learning_rate: float = option(1e-4)
    lr_scheduler: str = option("cosine", help="A diffusers `get_scheduler` name.")
    lr_warmup_steps: int = option(0)
    lr_schedule_steps: Optional[int] = option(
        None, help="Length of the LR schedule (default: the run's); longer stops the run part-way along it."
    )
    train_batch_size: Optional[int] = option(1, help="Batch size per device.")
    dataloader_num_workers: int = option(0)
    report_to: str = option("tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    logging_dir: str = option("logs", help="Relative to --output_dir.")
    push_to_hub: bool = option(False, help="Upload the final model to the Hub.")
    hub_model_id: Optional[str] = option(None, help="Repository id (default: the output folder's name).")
    hub_token: Optional[str] = option(None)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Rejects inconsistent settings with a message that says what to do (flag names, as users type them)."""
        for name in ("gradient_accumulation_steps", "checkpointing_steps", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"--max_train_steps must be at least 1, got {self.max_train_steps}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError("--checkpoints_total_limit must be at least 1 (or left out to keep every checkpoint)")
        if self.push_to_hub and self.hub_token is not None and os.environ.get("HF_HUB_DISABLE_TOKEN_WARNING") is None:
            logger.warning("--hub_token puts the token in the shell history; `hf auth login` stores it more safely.")
