"""
Shared scaffolding of the DAWN trainings (Accelerate), configured by a [`~training.config.TrainingConfig`].

A training (`train_lfg`, `train_pbnet`, `train_a2v`) builds its models, optimisers and data (through
[`build_dataloader`]), then hands one training step to [`run_training`], which does the rest the same way for every
model: resuming (`resume_from_checkpoint="latest"`), the deterministic data order (a resumed run reproduces the
uninterrupted one), gradient accumulation, EMA updates, checkpoints with rotation, validation calls, the progress
bar and tensorboard logging, and returns a [`TrainingResult`]. Models go into checkpoints with `save_pretrained`
(diffusers layout), through the save / load hooks of [`register_checkpoint_hooks`]; EMAs are diffusers `EMAModel`s
(of a whole model, saved beside it, or of the trained parameters only, e.g. LoRA matrices, checkpointed by
Accelerate).

Determinism. A resumed run continues with exactly the numbers of the uninterrupted one because
- `accelerator.save_state` / `load_state` store and restore the model, optimiser, LR-scheduler and RNG states
  (torch, numpy, python, CUDA) and the objects given to `accelerator.register_for_checkpointing`;
- the data order and every random choice of the data pipeline come from [`EpochSampler`]: sample `i` of epoch `e`
  gets a seed derived from `(seed, e, i)`, never from a global generator, so skipping the batches already seen
  (`accelerator.skip_first_batches`) lands on exactly the batch the uninterrupted run would see next;
- the `DataLoader` gets its own generator, so creating an iterator does not consume the global torch RNG.
"""

import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..utils.io import PARTIAL_TAG, atomic_folder, replace_folder
from .config import TrainingConfig


if TYPE_CHECKING:  # imported where used: diffusers' training utilities are only needed with EMA
    from diffusers.training_utils import EMAModel


logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


def create_accelerator(config: TrainingConfig) -> Accelerator:
    """An `Accelerator` configured from the shared settings (precision, accumulation, logging); seeds everything."""
    report_to = None if config.report_to in (None, "none") else config.report_to
    if report_to in ("tensorboard", "all"):
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ImportError("--report_to tensorboard needs `pip install tensorboard` (or pass --report_to none)")
    project_config = ProjectConfiguration(
        project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=report_to,
        project_config=project_config,
    )
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
    set_seed(config.seed)
    return accelerator


# ----------------------------------------------------------------------------------------------------------------
# Deterministic data order
# ----------------------------------------------------------------------------------------------------------------
def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for sample `position` of `epoch`, independent of any global generator."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


class EpochSampler(torch.utils.data.Sampler):
    """
    Yields `(item_index, sample_seed)` pairs: a permutation of `num_items` (repeated `repeats` times) drawn from
    `(seed, epoch)`, each with its own seed for the random choices of the dataset (frames, windows, augmentation).
    Call `set_epoch` before iterating; the order depends on nothing else.
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True, repeats: int = 1):
        if num_items < 1:
            raise ValueError("the dataset is empty; preprocess some videos first (training/preprocess.py)")
        self.num_items, self.seed, self.shuffle, self.repeats = num_items, seed, shuffle, repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items * self.repeats

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.concatenate([rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
                                for _ in range(self.repeats)])
        for position, index in enumerate(order):
            yield int(index), sample_seed(self.seed, self.epoch, position)


def build_dataloader(dataset, sampler, batch_size: Optional[int], collate_fn=None, num_workers: int = 0,
                     drop_last: bool = True) -> torch.utils.data.DataLoader:
    """
    A `DataLoader` over the keys of `sampler`: an [`EpochSampler`] batched by `batch_size`, or, with `batch_size=None`,
    a batch sampler (e.g. `A2VBatchSampler`) whose batches are used as they are. Its iterators never touch the global
    torch RNG.
    """
    if batch_size is None:
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(sampler.seed),
        )
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(sampler.seed),
    )


def total_train_steps(config: TrainingConfig, dataloader) -> int:
    """`--max_train_steps`, or `--num_train_epochs` × optimiser steps per epoch."""
    updates_per_epoch = math.ceil(len(dataloader) / config.gradient_accumulation_steps)
    return config.max_train_steps or config.num_train_epochs * updates_per_epoch


def create_lr_scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer, num_training_steps: int,
                        num_processes: int = 1, min_learning_rate: float = 0.0):
    """
    The LR schedule of `--lr_scheduler`: `"cosine"` anneals from `--learning_rate` to `min_learning_rate` over the
    run (the official `CosineAnnealingLR` with its `eta_min`, stepped per optimiser step instead of per epoch);
    any other name goes to `diffusers.optimization.get_scheduler`. Accelerate steps a prepared scheduler once per
    process, hence the factor `num_processes`. `--lr_schedule_steps` sets the schedule's length apart from the run's,
    so that a run stopped early (a model picked at an intermediate checkpoint) is reproduced by a run of that length.
    """
    total = (config.lr_schedule_steps or num_training_steps) * num_processes
    if config.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1), eta_min=min_learning_rate)
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps * num_processes,
                         num_training_steps=total)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------
def save_model_folder(name: str, model: torch.nn.Module, checkpoint_dir: str) -> None:
    """Default checkpoint writer: `model.save_pretrained(checkpoint_dir/name)`."""
    model.save_pretrained(os.path.join(checkpoint_dir, name))


def load_model_folder(name: str, model: torch.nn.Module, checkpoint_dir: str) -> None:
    """Default checkpoint reader: the weights of `checkpoint_dir/name` (written by `save_model_folder`) into `model`."""
    loaded = type(model).from_pretrained(os.path.join(checkpoint_dir, name))
    model.load_state_dict(loaded.state_dict())


def register_checkpoint_hooks(
    accelerator: Accelerator,
    models: Dict[str, torch.nn.Module],
    ema_models: Optional[Dict[str, "EMAModel"]] = None,
    save_model: Callable[[str, torch.nn.Module, str], None] = save_model_folder,
    load_model: Callable[[str, torch.nn.Module, str], None] = load_model_folder,
) -> None:
    """
    Makes `accelerator.save_state` write each prepared model into `checkpoint-N/<name>` with `save_pretrained` (and
    the EMA of a whole model into `checkpoint-N/<name>_ema`), and `load_state` read them back, as the diffusers
    training examples do.

    Args:
        models: name → the model as passed to `accelerate.prepare` (unwrapped); every model handed to `prepare`
            must be listed.
        ema_models: name → [`create_ema`] of that model. (An EMA of only some parameters, e.g. LoRA matrices, has no
            model to save; give it to `accelerator.register_for_checkpointing` instead.)
        save_model, load_model: `(name, unwrapped model, checkpoint folder)` → writes / reads one model, for models
            that are not saved whole (e.g. only a LoRA adapter); default [`save_model_folder`] /
            [`load_model_folder`].
    """
    ema_models = ema_models or {}

    def name_of(model) -> str:
        unwrapped = accelerator.unwrap_model(model)
        for name, candidate in models.items():
            if candidate is unwrapped:
                return name
        raise ValueError(f"a {type(unwrapped).__name__} was prepared but not registered for checkpointing")

    def save_model_hook(prepared_models, weights, output_dir):
        if accelerator.is_main_process:
            for name, ema in ema_models.items():
                ema.save_pretrained(os.path.join(output_dir, f"{name}_ema"))
            for model in prepared_models:
                save_model(name_of(model), accelerator.unwrap_model(model), output_dir)
        # The models are saved above; accelerate must not pickle them a second time.
        while weights:
            weights.pop()

    def load_model_hook(prepared_models, input_dir):
        for name, ema in ema_models.items():
            # `EMAModel.save_pretrained` stores the averaged weights as a model and the EMA counters in its config.
            folder = os.path.join(input_dir, f"{name}_ema")
            config = type(models[name]).load_config(folder)
            averaged = type(models[name]).from_pretrained(folder)
            state = {key: config[key] for key in ema.state_dict() if key != "shadow_params" and key in config}
            state["shadow_params"] = [parameter.detach().clone() for parameter in averaged.parameters()]
            ema.load_state_dict(state)
            ema.to(accelerator.device)
            del averaged
        while prepared_models:
            model = prepared_models.pop()
            load_model(name_of(model), accelerator.unwrap_model(model), input_dir)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def list_checkpoints(output_dir: str) -> List[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and re.fullmatch(r"checkpoint-\d+", path.name)]
    return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]))


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from: `None`, the latest in `output_dir` for `"latest"` (None if there is none), or a path."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder; pass a "
            f"{CHECKPOINT_PREFIX}N folder or 'latest'"
        )
    return path


def checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a {CHECKPOINT_PREFIX}N folder")
    return int(match.group(1))


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: Optional[int] = None) -> Path:
    """
    Saves the full training state to `output_dir/checkpoint-<step>`, then removes the oldest checkpoints beyond
    `total_limit` (only once the new one is complete, so a run killed while saving keeps its last checkpoint).
    """
    path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    # Every process writes into one staging folder (not matched by `list_checkpoints`), which becomes
    # `checkpoint-<step>` only once complete: an interrupted save never leaves a half checkpoint to resume from.
    staged = Path(output_dir) / f".{path.name}{PARTIAL_TAG}"
    if accelerator.is_main_process:
        shutil.rmtree(staged, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staged))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(staged, path)
        if total_limit is not None:
            older = [checkpoint for checkpoint in list_checkpoints(output_dir) if checkpoint != path]
            for old in older[: max(0, len(older) + 1 - total_limit)]:
                logger.info(f"Removing old checkpoint {old}")
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info(f"Saved state to {path}")
    return path


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class StepInfo:
    """Where the loop is when it calls the training step: optimiser steps done so far and the 0-based epoch."""

    global_step: int
    epoch: int


@dataclass
class TrainingResult:
    """
    What a training did (every DAWN training returns one): the last step, the step it started from (a resumed run
    starts at its checkpoint), the folder of its outputs and the logged values of each optimiser step of this run.
    """

    global_step: int
    first_step: int
    output_dir: Optional[str] = None
    history: List[Dict[str, float]] = field(default_factory=list)

    @property
    def losses(self) -> List[float]:
        """The loss of every optimiser step run here."""
        return [step["loss"] for step in self.history]


def run_training(
    accelerator: Accelerator,
    config: TrainingConfig,
    dataloader: torch.utils.data.DataLoader,
    sampler,
    training_step: Callable[[Dict, StepInfo], Dict[str, float]],
    models: Sequence[torch.nn.Module],
    ema_updates: Sequence[Tuple["EMAModel", Union[torch.nn.Module, List[torch.nn.Parameter]]]] = (),
    validation: Optional[Callable[[int], None]] = None,
    on_epoch_end: Optional[Callable[[int], None]] = None,
) -> TrainingResult:
    """
    The training loop shared by the DAWN trainings.

    Args:
        dataloader: The prepared dataloader (built with [`build_dataloader`] over `sampler`).
        sampler: Its [`EpochSampler`], or any (batch) sampler whose order is a function of `set_epoch(epoch)` alone.
        training_step: Called with a micro-batch and a [`StepInfo`]; runs forward, `accelerator.backward`, and (when
            `accelerator.sync_gradients`) clipping, optimiser and scheduler steps, `zero_grad`. It runs inside
            `accelerator.accumulate(*models)` and returns the values to log (floats; `"loss"` is shown).
        models: The prepared trainable models (for gradient accumulation).
        ema_updates: (EMA, prepared model or list of parameters) pairs; each EMA is updated from its model (or those
            parameters, e.g. only the LoRA matrices) after every optimiser step.
        validation: Called with the step every `--validation_steps` steps and at the end (main process only).
        on_epoch_end: Called with the finished epoch (e.g. epoch-stepped LR schedules).

    Returns:
        [`TrainingResult`] with the step reached and the logged values of each optimiser step run here.
    """
    updates_per_epoch = math.ceil(len(dataloader) / config.gradient_accumulation_steps)
    max_train_steps = total_train_steps(config, dataloader)
    global_step = 0
    checkpoint = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if config.resume_from_checkpoint is not None and checkpoint is None:
        logger.info(f"No checkpoint in {config.output_dir} to resume from; starting a new run.")
    if checkpoint is not None:
        logger.info(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
    first_step = global_step

    if accelerator.is_main_process and accelerator.log_with:
        values = {item.name: getattr(config, item.name) for item in fields(config)}
        tracker_config = {key: value for key, value in values.items() if isinstance(value, (int, float, str, bool))}
        accelerator.init_trackers(Path(config.output_dir).name or "dawn", config=tracker_config)

    progress = tqdm(range(max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    result = TrainingResult(global_step=global_step, first_step=first_step, output_dir=config.output_dir)
    # Position in the data: whole epochs done, and micro-batches of the current epoch already consumed.
    epoch = global_step // updates_per_epoch
    batches_to_skip = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    while global_step < max_train_steps:
        batches = dataloader
        if batches_to_skip:
            batches = accelerator.skip_first_batches(dataloader, batches_to_skip)
            batches_to_skip = 0
        sampler.set_epoch(epoch)
        if hasattr(batches, "set_epoch"):
            # Accelerate's loaders set their sampler's epoch from their own pass counter when iterated: align it.
            batches.set_epoch(epoch)
        step_values: Dict[str, List[float]] = {}
        for batch in batches:
            with accelerator.accumulate(*models):
                values = training_step(batch, StepInfo(global_step=global_step, epoch=epoch))
            for key, value in values.items():
                step_values.setdefault(key, []).append(float(value))
            if not accelerator.sync_gradients:
                continue
            for ema, target in ema_updates:
                ema.step(target if isinstance(target, (list, tuple)) else accelerator.unwrap_model(target).parameters())
            global_step += 1
            logs = {key: float(np.mean(value)) for key, value in step_values.items()}
            step_values = {}
            result.history.append(logs)
            progress.update(1)
            progress.set_postfix(**{key: f"{value:.4g}" for key, value in logs.items() if key == "loss"})
            accelerator.log(logs, step=global_step)
            if global_step % config.checkpointing_steps == 0:
                save_checkpoint(accelerator, config.output_dir, global_step, config.checkpoints_total_limit)
            if validation is not None and config.validation_steps and global_step % config.validation_steps == 0:
                if accelerator.is_main_process:
                    validation(global_step)
            if global_step >= max_train_steps:
                break
        else:  # the epoch ran to its end
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            epoch += 1
    progress.close()
    accelerator.wait_for_everyone()
    if validation is not None and accelerator.is_main_process and config.validation_steps:
        if not result.history or global_step % config.validation_steps:
            validation(global_step)
    result.global_step = global_step
    return result


def create_ema(model: torch.nn.Module, decay: float) -> "EMAModel":
    """A diffusers `EMAModel` of `model` that can be saved / loaded with `save_pretrained` / `from_pretrained`."""
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay, model_cls=type(model), model_config=model.config)


def save_final_model(accelerator: Accelerator, model: torch.nn.Module, output_dir: str, name: str,
                     ema: Optional["EMAModel"] = None, finalize: Optional[Callable[[torch.nn.Module], None]] = None
                     ) -> Path:
    """
    Saves the trained model to `output_dir/<name>` with `save_pretrained` (EMA weights if `ema` is given);
    `finalize(model)` runs just before, on the weights that are saved (e.g. to fit what depends on them).
    """
    target = Path(output_dir) / name
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
    if finalize is not None:
        finalize(unwrapped)
    if accelerator.is_main_process:
        with atomic_folder(target) as partial:
            unwrapped.save_pretrained(partial)
    if ema is not None:
        ema.restore(unwrapped.parameters())
    return target


# ----------------------------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------------------------
def push_to_hub(
    config: TrainingConfig,
    title: str,
    description: str,
    tags: Sequence[str] = (),
    folder: Optional[str] = None,
    allow_patterns: Optional[Sequence[str]] = None,
) -> str:
    """
    Writes a model card into `folder` (default `--output_dir`) and uploads the folder to `--hub_model_id` (default:
    the output folder's name), leaving out checkpoints and logs, or only `allow_patterns` (plus the card) when given.
    Returns the repository id.
    """
    from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

    folder = str(folder or config.output_dir)
    repo_id = config.hub_model_id or Path(config.output_dir).name
    repo_id = create_repo(repo_id, exist_ok=True, token=config.hub_token).repo_id
    card_data = ModelCardData(library_name="diffusers", tags=["dawn", "talking-head", "diffusers-dawn", *tags])
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{description}\n")
    card.save(os.path.join(folder, "README.md"))
    upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message="End of training",
        ignore_patterns=None if allow_patterns else [f"{CHECKPOINT_PREFIX}*", f"{config.logging_dir}/*", "*.partial"],
        allow_patterns=[*allow_patterns, "README.md"] if allow_patterns else None,
        token=config.hub_token,
    )
    logger.info(f"Pushed {folder} to {repo_id}")
    return repo_id
