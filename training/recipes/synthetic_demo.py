#!/usr/bin/env python
"""
Train the small DAWN shipped as the `synthetic-demo` model (LFG, pose and blink PBNets, A2V-FDM stages 1 and 2) on
procedural talking faces, end to end with the package's own training functions, and assemble it into a pipeline folder.

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
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from diffusers_dawn import DAWNPipeline, PBNetModel, UNet3DFlowModel
from diffusers_dawn.testing.synthetic import write_synthetic_dataset
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert
from diffusers_dawn.training.dataset import PreprocessingSettings, load_dawn_dataset, preprocess_videos
from diffusers_dawn.training.run_a2v import A2VTrainingConfig, train_a2v
from diffusers_dawn.training.run_lfg import LFGTrainingConfig, train_lfg
from diffusers_dawn.training.run_pbnet import PBNetTrainingConfig, train_pbnet
from diffusers_dawn.training.synthetic_demo import a2v_unet, diffusion_lfg, load_settings, recipe_scheduler


HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE / "synthetic_demo.json"
STAGES = ("data", "lfg", "pose", "blink", "a2v-stage1", "a2v-stage2", "pipeline")


def stage_done(folder: Path, model_folder: str) -> bool:
    return (folder / model_folder / "config.json").is_file()


def run_settings(settings: dict, stage_settings: dict) -> dict:
    """Seed, resumable checkpoints and the step budget (with the LR schedule's length when it is longer)."""
    return dict(seed=settings["seed"], checkpointing_steps=settings["checkpointing_steps"], checkpoints_total_limit=2,
                resume_from_checkpoint="latest", max_train_steps=stage_settings["steps"],
                lr_schedule_steps=stage_settings.get("lr_schedule_steps"))


def run_data(out: Path, settings: dict) -> None:
    encoder, extractor = build_tiny_hubert(**settings["audio_encoder"])
    encoder.save_pretrained(out / "audio_encoder")
    extractor.save_pretrained(out / "audio_encoder")
    write_synthetic_dataset(out / "videos", num_videos=settings["videos"], num_frames=settings["frames"],
                            resolution=settings["resolution"], seed=0)
    preprocessing = PreprocessingSettings(resolution=settings["resolution"], hubert=str(out / "audio_encoder"),
                                          landmarks="sidecar", crop_scale=None)
    preprocess_videos(str(out / "videos"), str(out / "data"), preprocessing)


def run_lfg(out: Path, dataset: str, settings: dict) -> None:
    (out / "lfg.json").write_text(json.dumps(settings["lfg_config"]))
    lfg = settings["lfg"]
    train_lfg(LFGTrainingConfig(
        dataset_name_or_path=dataset, output_dir=str(out / "lfg"), lfg_config=str(out / "lfg.json"),
        train_batch_size=lfg["batch_size"], learning_rate=lfg["learning_rate"],
        pixel_loss_weight=lfg["pixel_loss_weight"], lip_loss_weight=lfg["lip_loss_weight"],
        perceptual_scales=list(lfg["perceptual_scales"]), **run_settings(settings, lfg),
    ))


def run_pbnet(out: Path, dataset: str, state: str, settings: dict, audio_dim: int) -> None:
    config = dict(settings["pbnet_config"][state], audio_dim=audio_dim)
    (out / f"pbnet_{state}.json").write_text(json.dumps(config))
    pbnet = settings["pbnet"]
    train_pbnet(PBNetTrainingConfig(
        state=state, dataset_name_or_path=dataset, output_dir=str(out / state),
        pbnet_config=str(out / f"pbnet_{state}.json"), train_batch_size=pbnet["batch_size"],
        window_frames=settings["frames"], fit_latent_prior=pbnet["fit_latent_prior"], **run_settings(settings, pbnet),
    ))


def run_a2v(out: Path, dataset: str, stage: int, settings: dict, audio_dim: int) -> None:
    # A base folder with the frozen LFG, the scheduler and the U-Net architecture, then the stage's training.
    base = out / "a2v-base"
    if not stage_done(base, "unet"):
        lfg = diffusion_lfg(out / "lfg" / "lfg", settings)
        lfg.save_pretrained(base / "lfg")
        recipe_scheduler(settings).save_pretrained(base / "scheduler")
        a2v_unet(lfg, audio_dim, settings).save_pretrained(base / "unet")
    a2v = settings[f"a2v_stage{stage}"]
    train_a2v(A2VTrainingConfig(
        stage=stage, pretrained_model_name_or_path=str(base), dataset_name_or_path=dataset,
        output_dir=str(out / f"a2v-stage{stage}"), init_from=str(out / "a2v-stage1") if stage == 2 else None,
        train_batch_size=a2v["batch_size"], clips_per_video=a2v["clips_per_video"],
        learning_rate=a2v["learning_rate"], lip_loss_weight=a2v["lip_loss_weight"],
        flow_loss_weight=a2v["flow_loss_weight"], **run_settings(settings, a2v),
    ))


def face_crop_scale(dataset) -> float:
    """Crop side / face-box side of the training frames (median over videos): the pipeline crops portraits alike."""
    ratios = [row["resolution"] / max(box[1] - box[0], box[3] - box[2])
              for row in dataset.select_columns(["resolution", "face_box"]) for box in row["face_box"][:1]]
    return float(np.median(ratios))


def assemble(out: Path, dataset, settings: dict) -> Path:
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    final_stage = out / ("a2v-stage2" if settings["a2v_stage2"]["steps"] > 0 else "a2v-stage1")
    pipeline = DAWNPipeline(
        lfg=diffusion_lfg(out / "lfg" / "lfg", settings),
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
        # Sampling default of the assembled model, chosen on validation clips (see the model card).
        guidance_scale=settings.get("guidance_scale", 1.0),
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
