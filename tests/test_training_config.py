"""
The typed settings of the DAWN trainings: every flag of `training/train_*.py` is a config field with the official
default, the command line maps onto the config, and inconsistent settings are refused with the flag's name.
"""

import dataclasses
import subprocess
import sys

import pytest

from diffusers_dawn.loaders.lora import LORA_TARGET_SUFFIXES
from diffusers_dawn.training.config import SHARED_GROUP, TrainingConfig
from diffusers_dawn.training.lfg_trainer import PERCEPTUAL_SCALES
from diffusers_dawn.training.run_a2v import A2VTrainingConfig
from diffusers_dawn.training.run_lfg import LFGTrainingConfig
from diffusers_dawn.training.run_lora import LoraModelAdapter, LoraTrainingConfig
from diffusers_dawn.training.run_pbnet import PBNetTrainingConfig
from diffusers_dawn.utils.config_cli import build_config_parser, parse_config

from _training_utils import REPO_ROOT


REQUIRED = {
    LFGTrainingConfig: ["--dataset_name_or_path", "data", "--output_dir", "out"],
    PBNetTrainingConfig: ["--state", "pose", "--dataset_name_or_path", "data", "--output_dir", "out"],
    A2VTrainingConfig: ["--stage", "1", "--dataset_name_or_path", "data", "--pretrained_model_name_or_path", "dawn",
                        "--output_dir", "out"],
    LoraTrainingConfig: ["--dataset_name_or_path", "data", "--pretrained_model_name_or_path", "dawn",
                         "--output_dir", "out"],
}

# The flags the training scripts had before their settings became configs (README, recipes and users rely on them).
SHARED_FLAGS = {
    "output_dir", "seed", "mixed_precision", "gradient_accumulation_steps", "gradient_checkpointing", "use_ema",
    "ema_decay", "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "validation_steps",
    "max_train_steps", "num_train_epochs", "learning_rate", "lr_scheduler", "lr_warmup_steps", "lr_schedule_steps",
    "train_batch_size", "dataloader_num_workers", "report_to", "logging_dir", "push_to_hub", "hub_model_id",
    "hub_token",
}
A2V_FLAGS = SHARED_FLAGS | {
    "stage", "dataset_name_or_path", "pretrained_model_name_or_path", "revision", "init_from", "clips_per_video",
    "min_clip_length", "max_clip_length", "motion_target_cache_mb", "null_condition_probability", "lip_loss_weight",
    "flow_loss_weight", "skip_nan_gradients", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "lr_min",
    "max_grad_norm", "validation_video_index", "validation_frames", "validation_inference_steps",
}
FLAGS = {
    LFGTrainingConfig: SHARED_FLAGS | {
        "dataset_name_or_path", "pretrained_model_name_or_path", "lfg_config", "num_repeats", "no_augment",
        "vgg_weights", "perceptual_scales", "equivariance_shift_weight", "equivariance_affine_weight", "sigma_affine",
        "sigma_tps", "pixel_loss_weight", "lip_loss_weight", "lip_box_margin", "adam_beta1", "adam_beta2", "lr_min",
        "max_grad_norm", "validation_video_index", "validation_frames",
    },
    PBNetTrainingConfig: SHARED_FLAGS | {
        "state", "dataset_name_or_path", "pretrained_model_name_or_path", "pbnet_config", "window_frames",
        "kl_schedule", "kl_lambda", "kl_start_epoch", "kl_ramp_epochs", "adversarial_weight", "adversarial_update",
        "fit_latent_prior", "discriminator_learning_rate", "adam_weight_decay", "lr_min", "max_grad_norm",
        "validation_video_index",
    },
    A2VTrainingConfig: A2V_FLAGS,
    LoraTrainingConfig: A2V_FLAGS | {"rank", "lora_alpha", "lora_dropout", "lora_target_modules"},
}


@pytest.mark.parametrize("config_class", list(FLAGS))
def test_every_flag_is_a_config_field(config_class):
    parser = build_config_parser(config_class, last_group=SHARED_GROUP)
    flags = {action.dest for action in parser._actions if action.dest != "help"}
    assert flags == FLAGS[config_class] == {item.name for item in dataclasses.fields(config_class)}
    # The shared flags come last in --help, after the model's own groups.
    assert parser._action_groups[-1].title == SHARED_GROUP


@pytest.mark.parametrize("config_class", list(FLAGS))
def test_command_line_defaults_are_the_config_defaults(config_class):
    from_command_line = parse_config(config_class, REQUIRED[config_class])
    arguments = build_config_parser(config_class).parse_args(REQUIRED[config_class])
    assert from_command_line == config_class(**vars(arguments))
    assert isinstance(from_command_line, TrainingConfig)


def test_defaults_are_the_official_settings():
    # LFG (facts §6.1, 128-px run): Adam(0.5, 0.999) 4e-4 cosine to 2e-6, batch 82, 1000 epochs of 100 repeats.
    lfg = parse_config(LFGTrainingConfig, REQUIRED[LFGTrainingConfig])
    assert (lfg.learning_rate, lfg.lr_min, lfg.adam_beta1, lfg.adam_beta2) == (4e-4, 2e-6, 0.5, 0.999)
    assert (lfg.train_batch_size, lfg.num_train_epochs, lfg.num_repeats, lfg.max_grad_norm) == (82, 1000, 100, None)
    assert lfg.perceptual_scales == list(PERCEPTUAL_SCALES) == [1.0, 0.5, 0.25, 0.125]
    assert (lfg.equivariance_shift_weight, lfg.equivariance_affine_weight, lfg.sigma_affine, lfg.sigma_tps) == (
        10.0, 10.0, 0.05, 0.005
    )
    # PBNet (facts §5.6): AdamW 4e-4 (weight decay 1e-2) cosine to 2e-5, clip 2.0, batch 40, 100000 epochs,
    # windows of 200 frames, KL 0.004 from epoch 10000 over 70000.
    pbnet = parse_config(PBNetTrainingConfig, REQUIRED[PBNetTrainingConfig])
    assert (pbnet.learning_rate, pbnet.adam_weight_decay, pbnet.lr_min, pbnet.max_grad_norm) == (4e-4, 1e-2, 2e-5, 2.0)
    assert (pbnet.train_batch_size, pbnet.num_train_epochs, pbnet.window_frames) == (40, 100000, 200)
    assert (pbnet.kl_schedule, pbnet.kl_lambda, pbnet.kl_start_epoch, pbnet.kl_ramp_epochs) == (
        "official", 0.004, 10000, 70000
    )
    # A2V-FDM (design notes §6.2): Adam(0.9, 0.99) 2e-4 cosine to 1e-6, clip 2.0, 12500 epochs; batch 20 and
    # 20-frame clips in stage 1, batch 40 and 30-40-frame clips in stage 2, where non-finite updates are skipped.
    stage1 = parse_config(A2VTrainingConfig, REQUIRED[A2VTrainingConfig])
    assert (stage1.learning_rate, stage1.lr_min, stage1.adam_beta1, stage1.adam_beta2) == (2e-4, 1e-6, 0.9, 0.99)
    assert (stage1.max_grad_norm, stage1.num_train_epochs) == (2.0, 12500)
    assert (stage1.train_batch_size, stage1.clip_length, stage1.skip_nan_gradients) == (20, (20, 20), False)
    assert (stage1.null_condition_probability, stage1.lip_loss_weight, stage1.flow_loss_weight) == (0.1, 0.15, 0.15)
    stage2_arguments = REQUIRED[A2VTrainingConfig][2:] + ["--stage", "2", "--init_from", "stage1"]
    stage2 = parse_config(A2VTrainingConfig, stage2_arguments)
    assert (stage2.train_batch_size, stage2.clip_length, stage2.skip_nan_gradients) == (40, (30, 40), True)
    # LoRA (README): stage-2 clips, batch 4, 32 clips per video, 1e-4 for 100 epochs, rank 16 on the attention.
    lora = parse_config(LoraTrainingConfig, REQUIRED[LoraTrainingConfig])
    assert (lora.stage, lora.train_batch_size, lora.clips_per_video, lora.learning_rate) == (2, 4, 32, 1e-4)
    assert (lora.num_train_epochs, lora.rank, lora.lora_alpha, lora.lora_dropout) == (100, 16, None, 0.0)
    assert lora.lora_target_modules == list(LORA_TARGET_SUFFIXES) and lora.clip_length == (30, 40)


def test_flags_of_every_kind_reach_the_config():
    lfg = parse_config(LFGTrainingConfig, REQUIRED[LFGTrainingConfig] + [
        "--perceptual_scales", "1", "0.5", "--no_augment", "--max_grad_norm", "1.5", "--mixed_precision", "bf16",
        "--use_ema", "--checkpoints_total_limit", "3", "--train_batch_size", "2",
    ])  # fmt: skip
    assert lfg.perceptual_scales == [1.0, 0.5] and lfg.no_augment and lfg.max_grad_norm == 1.5
    assert lfg.mixed_precision == "bf16" and lfg.use_ema and lfg.checkpoints_total_limit == 3
    assert lfg.train_batch_size == 2 and lfg.output_dir == "out" and lfg.dataset_name_or_path == "data"
    stage2 = REQUIRED[A2VTrainingConfig][2:] + ["--stage", "2", "--init_from", "s1"]
    assert not parse_config(A2VTrainingConfig, stage2 + ["--no-skip_nan_gradients"]).skip_nan_gradients
    assert parse_config(A2VTrainingConfig, REQUIRED[A2VTrainingConfig] + ["--skip_nan_gradients"]).skip_nan_gradients
    clips = parse_config(A2VTrainingConfig, REQUIRED[A2VTrainingConfig] + ["--min_clip_length", "8"]).clip_length
    assert clips == (8, 20)
    lora = parse_config(LoraTrainingConfig, REQUIRED[LoraTrainingConfig] + [
        "--rank", "4", "--lora_alpha", "8", "--lora_target_modules", "to_q", "to_v", "--stage", "1",
    ])  # fmt: skip
    adapter = LoraModelAdapter.from_config(lora)
    assert (adapter.rank, adapter.lora_alpha, adapter.target_modules, lora.stage) == (4, 8, ["to_q", "to_v"], 1)
    assert LoraModelAdapter.from_config(parse_config(LoraTrainingConfig, REQUIRED[LoraTrainingConfig])).lora_alpha == 16


def test_bad_values_are_refused_with_the_flag_name(capsys):
    with pytest.raises(SystemExit):
        parse_config(PBNetTrainingConfig, REQUIRED[PBNetTrainingConfig][2:] + ["--state", "smile"])
    assert "--state" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(LFGTrainingConfig, ["--output_dir", "out"])  # --dataset_name_or_path is required
    with pytest.raises(ValueError, match="--gradient_accumulation_steps"):
        LFGTrainingConfig(dataset_name_or_path="data", output_dir="out", gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="--checkpoints_total_limit"):
        PBNetTrainingConfig(state="blink", dataset_name_or_path="data", output_dir="out", checkpoints_total_limit=0)
    with pytest.raises(ValueError, match="--motion_target_cache_mb"):
        A2VTrainingConfig(stage=1, dataset_name_or_path="d", pretrained_model_name_or_path="m", output_dir="o",
                          motion_target_cache_mb=-1)
    with pytest.raises(ValueError, match="--stage"):
        A2VTrainingConfig(stage=3, dataset_name_or_path="d", pretrained_model_name_or_path="m", output_dir="o")


def test_only_full_training_needs_stage1_weights_for_stage2():
    settings = dict(stage=2, dataset_name_or_path="d", pretrained_model_name_or_path="m", output_dir="o")
    with pytest.raises(ValueError, match="--init_from"):
        A2VTrainingConfig(**settings)
    # A LoRA adapter goes on the pretrained U-Net, whatever the stage.
    assert LoraTrainingConfig(**settings).init_from is None


def test_script_help_shows_the_config_flags():
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "training" / "train_lora.py"), "--help"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = completed.stdout
    assert "Fine-tune DAWN on a new identity with LoRA" in text  # the script's description
    assert "--rank RANK" in text and "LoRA rank r." in text and "--skip_nan_gradients, --no-skip_nan_gradients" in text
    assert text.index("LoRA:") < text.index(f"{SHARED_GROUP}:")
