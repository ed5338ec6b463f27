#!/usr/bin/env python
"""
Train the small DAWN shipped as the `synthetic-demo` model (LFG, pose and blink PBNets, A2V-FDM stages 1 and 2) on
procedural talking faces, end to end with the package's own training scripts, and assemble it into a pipeline folder.

    python training/recipes/synthetic_demo.py --output_dir runs/synthetic-demo
    python benchmarks/lfg_reconstruction.py --model runs/synthetic-demo/pipeline --json
    python benchmarks/synthetic_lipsync.py --model runs/synthetic-demo/pipeline --json

The settings are those of `synthetic_demo.json` beside this file (the shipped model's folder holds the copy it was
trained with, `recipe.json`: pass it with `--recipe` to rebuild that model). Every stage resumes from its latest
complete checkpoint and a finished stage is skipped, so a killed run continues where it stopped when the same
command is run again; `--only STAGE ...` runs some stages. `--smoke` runs every stage for two steps on two short
videos, to check the recipe itself.

Stages: `data` (synthetic videos, the audio encoder, `training/preprocess.py`), `lfg`, `pose`, `blink`,
`a2v-stage1`, `a2v-stage2`, `pipeline` (the assembled folder, with the face-crop scale of the training data).
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from diffusers_dawn import DAWNDDIMScheduler, DAWNPipeline, LFGAutoencoder, PBNetModel, UNet3DFlowModel
from diffusers_dawn.testing.synthetic import write_synthetic_dataset
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert
from diffusers_dawn.training.dataset import load_dawn_dataset


HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE / "synthetic_demo.json"
STAGES = ("data", "lfg", "pose", "blink", "a2v-stage1", "a2v-stage2", "pipeline")


def training_script(name: str):
    """One of the training scripts beside this folder, as a module (each stage calls its `main`)."""
    spec = importlib.util.spec_from_file_location(f"dawn_recipe_{name}", HERE.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_settings(path=DEFAULT_RECIPE) -> dict:
    """The recipe's settings (JSON)."""
    return json.loads(Path(path).read_text())


def recipe_lfg(settings: dict) -> LFGAutoencoder:
    """A new (untrained) LFG of the recipe's architecture."""
    return LFGAutoencoder(**settings["lfg_config"])


def a2v_unet(lfg: LFGAutoencoder, audio_dim: int, settings: dict) -> UNet3DFlowModel:
    """
    The small A2V-FDM U-Net of the recipe (its source-latent width is the LFG bottleneck's). Built with `from_config`,
    which also reads the U-Net keys of recipes written before they took diffusers' names.
    """
    torch.manual_seed(settings["seed"])
    config = dict(settings["unet"], source_latent_channels=lfg.latent_channels, audio_dim=audio_dim)
    return UNet3DFlowModel.from_config(config)


def diffusion_lfg(out: Path, settings: dict) -> LFGAutoencoder:
    """The trained LFG with the recipe's motion-latent presentation (what the A2V-FDM generates and the pipeline decodes)."""
    return LFGAutoencoder.from_pretrained(out / "lfg" / "lfg", **settings.get("motion_latent", {}))


def recipe_scheduler(settings: dict) -> DAWNDDIMScheduler:
    """DAWN's sampler with the recipe's overrides (no x0 thresholding for a scaled relative motion latent)."""
    return DAWNDDIMScheduler(**settings.get("scheduler", {}))


def stage_done(folder: Path, model_folder: str) -> bool:
    return (folder / model_folder / "config.json").is_file()


def common_arguments(settings: dict, stage_settings: dict):
    """Seed, resumable checkpoints and the step budget (with the LR schedule's length when it is longer)."""
    arguments = ["--seed", str(settings["seed"]), "--checkpointing_steps", str(settings["checkpointing_steps"]),
                 "--checkpoints_total_limit", "2", "--resume_from_checkpoint", "latest",
                 "--max_train_steps", str(stage_settings["steps"])]
    if stage_settings.get("lr_schedule_steps"):
        arguments += ["--lr_schedule_steps", str(stage_settings["lr_schedule_steps"])]
    return arguments


def run_data(out: Path, settings: dict) -> None:
    encoder, extractor = build_tiny_hubert(**settings["audio_encoder"])
    encoder.save_pretrained(out / "audio_encoder")
    extractor.save_pretrained(out / "audio_encoder")
    write_synthetic_dataset(out / "videos", num_videos=settings["videos"], num_frames=settings["frames"],
                            resolution=settings["resolution"], seed=0)
    training_script("preprocess").main([
        "--input_dir", str(out / "videos"), "--output_dir", str(out / "data"),
        "--resolution", str(settings["resolution"]), "--hubert", str(out / "audio_encoder"),
        "--landmarks", "sidecar", "--no_crop",
    ])  # fmt: skip


def run_lfg(out: Path, dataset: str, settings: dict) -> None:
    (out / "lfg.json").write_text(json.dumps(settings["lfg_config"]))
    lfg = settings["lfg"]
    training_script("train_lfg").main([
        "--dataset_name_or_path", dataset, "--output_dir", str(out / "lfg"), "--lfg_config", str(out / "lfg.json"),
        "--train_batch_size", str(lfg["batch_size"]),
        "--learning_rate", str(lfg["learning_rate"]), "--pixel_loss_weight", str(lfg["pixel_loss_weight"]),
        "--lip_loss_weight", str(lfg["lip_loss_weight"]),
        "--perceptual_scales", *[str(scale) for scale in lfg["perceptual_scales"]], *common_arguments(settings, lfg),
    ])  # fmt: skip


def run_pbnet(out: Path, dataset: str, state: str, settings: dict, audio_dim: int) -> None:
    config = dict(settings["pbnet_config"][state], audio_dim=audio_dim)
    (out / f"pbnet_{state}.json").write_text(json.dumps(config))
    pbnet = settings["pbnet"]
    training_script("train_pbnet").main([
        "--state", state, "--dataset_name_or_path", dataset, "--output_dir", str(out / state),
        "--pbnet_config", str(out / f"pbnet_{state}.json"), "--train_batch_size", str(pbnet["batch_size"]),
        "--window_frames", str(settings["frames"]), *pbnet["arguments"], *common_arguments(settings, pbnet),
    ])  # fmt: skip


def run_a2v(out: Path, dataset: str, stage: int, settings: dict, audio_dim: int) -> None:
    # A base folder with the frozen LFG, the scheduler and the U-Net architecture, then the stage's training.
    base = out / "a2v-base"
    if not stage_done(base, "unet"):
        lfg = diffusion_lfg(out, settings)
        lfg.save_pretrained(base / "lfg")
        recipe_scheduler(settings).save_pretrained(base / "scheduler")
        a2v_unet(lfg, audio_dim, settings).save_pretrained(base / "unet")
    a2v = settings[f"a2v_stage{stage}"]
    arguments = [
        "--stage", str(stage), "--pretrained_model_name_or_path", str(base), "--dataset_name_or_path", dataset,
        "--output_dir", str(out / f"a2v-stage{stage}"),
        "--train_batch_size", str(a2v["batch_size"]), "--clips_per_video", str(a2v["clips_per_video"]),
        "--learning_rate", str(a2v["learning_rate"]), "--lip_loss_weight", str(a2v["lip_loss_weight"]),
        "--flow_loss_weight", str(a2v["flow_loss_weight"]), *common_arguments(settings, a2v),
    ]  # fmt: skip
    if stage == 2:
        arguments += ["--init_from", str(out / "a2v-stage1")]
    training_script("train_a2v").main(arguments)


def face_crop_scale(dataset) -> float:
    """Crop side / face-box side of the training frames (median over videos): the pipeline crops portraits alike."""
    ratios = [row["resolution"] / max(box[1] - box[0], box[3] - box[2])
              for row in dataset.select_columns(["resolution", "face_box"]) for box in row["face_box"][:1]]
    return float(np.median(ratios))


def assemble(out: Path, dataset, settings: dict) -> Path:
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    final_stage = out / ("a2v-stage2" if settings["a2v_stage2"]["steps"] > 0 else "a2v-stage1")
    pipeline = DAWNPipeline(
        lfg=diffusion_lfg(out, settings),
        unet=UNet3DFlowModel.from_pretrained(final_stage / "unet"),
        scheduler=recipe_scheduler(settings),
        pbnet_pose=PBNetModel.from_pretrained(out / "pose" / "pbnet_pose"),
        pbnet_blink=PBNetModel.from_pretrained(out / "blink" / "pbnet_blink"),
        audio_encoder=HubertModel.from_pretrained(out / "audio_encoder").eval(),
        feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(out / "audio_encoder"),
        resolution=settings["resolution"],
        # The model was trained on whole frames (`--no_crop`): a portrait framed like them is used whole; with
        # crop="face" the crop keeps the training data's face size.
        crop="resize",
        crop_scale=round(face_crop_scale(dataset), 3),
    )
    pipeline.save_pretrained(out / "pipeline")
    (out / "pipeline" / "recipe.json").write_text(json.dumps(settings, indent=2))
    return out / "pipeline"


def smoke_settings(settings: dict) -> dict:
    settings = json.loads(json.dumps(settings))
    settings.update(videos=2, frames=40, checkpointing_steps=100000)
    for name in ("lfg", "pbnet", "a2v_stage1", "a2v_stage2"):
        settings[name]["steps"] = 2
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="settings (JSON)")
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on 2 busy cores)")
    parser.add_argument("--smoke", action="store_true", help="two steps per stage on two short videos")
    args = parser.parse_args(argv)
    settings = load_settings(args.recipe)
    if args.smoke:
        settings = smoke_settings(settings)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = args.only or STAGES

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset_path = out / "data" / "dataset"
    if "data" in stages and not dataset_path.is_dir():
        run_data(out, settings)
    dataset = load_dawn_dataset(str(dataset_path), columns=("hubert", "resolution", "face_box"))
    audio_dim = dataset.features["hubert"].shape[-1]
    if "lfg" in stages and not stage_done(out / "lfg", "lfg"):
        run_lfg(out, str(dataset_path), settings)
    for state in ("pose", "blink"):
        if state in stages and not stage_done(out / state, f"pbnet_{state}"):
            run_pbnet(out, str(dataset_path), state, settings, audio_dim)
    for stage in (1, 2):
        wanted = f"a2v-stage{stage}" in stages and settings[f"a2v_stage{stage}"]["steps"] > 0
        if wanted and not stage_done(out / f"a2v-stage{stage}", "unet"):
            run_a2v(out, str(dataset_path), stage, settings, audio_dim)
    if "pipeline" in stages:
        folder = assemble(out, dataset, settings)
        print(f"Pipeline written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
