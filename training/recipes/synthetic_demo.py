#!/usr/bin/env python
"""
Train a small DAWN (LFG, pose and blink PBNets, A2V-FDM stages 1 and 2) on procedural talking faces, end to end with
the package's own training scripts, and assemble it into a pipeline folder.

    python training/recipes/synthetic_demo.py --output_dir runs/synthetic-demo
    python benchmarks/synthetic_lipsync.py --model runs/synthetic-demo/pipeline --json

Defaults are the run recorded in the README (64 px, 16 videos of 4 s, a tiny random HuBERT with 32 features). The
step counts are the knobs: they set the quality and the time. `--smoke` runs every stage for two steps on two short
videos, to check the recipe itself.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from diffusers_dawn import DAWNDDIMScheduler, DAWNPipeline, LFGAutoencoder, PBNetModel, UNet3DFlowModel
from diffusers_dawn.testing.synthetic import write_synthetic_dataset
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert

HERE = Path(__file__).resolve().parent
TRAINING = HERE.parent
HUBERT_SEED, HUBERT_FEATURES = 0, 32


def training_script(name: str):
    spec = importlib.util.spec_from_file_location(f"dawn_recipe_{name}", TRAINING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def a2v_unet(lfg: LFGAutoencoder) -> UNet3DFlowModel:
    """The small A2V-FDM U-Net trained by this recipe (its source-latent width is the LFG bottleneck's)."""
    torch.manual_seed(0)
    return UNet3DFlowModel(
        source_latent_channels=lfg.latent_channels,
        face_location_channels=8,
        face_location_hidden_channels=8,
        base_channels=16,
        channel_multipliers=(1, 2, 4),
        cond_dim=HUBERT_FEATURES + 8,
        attention_heads=2,
        attention_head_dim=16,
        spatial_attention_head_dim=16,
        cross_attention_heads=2,
        cross_attention_head_dim=16,
        resnet_groups=8,
        init_kernel_size=5,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--lfg_steps", type=int, default=280)
    parser.add_argument("--pbnet_steps", type=int, default=600)
    parser.add_argument("--stage1_steps", type=int, default=300)
    parser.add_argument("--stage2_steps", type=int, default=0, help="0 skips stage 2")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--smoke", action="store_true", help="two steps per stage on two short videos")
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.frames = 2, 40
        args.lfg_steps = args.pbnet_steps = args.stage1_steps = args.stage2_steps = 2

    out = Path(args.output_dir)
    common = ["--seed", str(args.seed), "--checkpointing_steps", "100000"]
    write_synthetic_dataset(out / "videos", num_videos=args.videos, num_frames=args.frames,
                            resolution=args.resolution, seed=0)
    training_script("preprocess").main([
        "--input_dir", str(out / "videos"), "--output_dir", str(out / "data"), "--resolution", str(args.resolution),
        "--tiny-hubert-seed", str(HUBERT_SEED), "--landmarks", "sidecar",
    ])  # fmt: skip
    dataset = str(out / "data" / "dataset")

    (out / "lfg.json").write_text((HERE / "synthetic_lfg64.json").read_text())
    training_script("train_lfg").main([
        "--dataset_name_or_path", dataset, "--output_dir", str(out / "lfg"), "--lfg_config", str(out / "lfg.json"),
        "--train_batch_size", "8", "--num_repeats", "100", "--max_train_steps", str(args.lfg_steps), *common,
    ])  # fmt: skip
    for state in ("pose", "blink"):
        training_script("train_pbnet").main([
            "--state", state, "--dataset_name_or_path", dataset, "--output_dir", str(out / state),
            "--pbnet_config", str(HERE / f"synthetic_pbnet_{state}.json"), "--train_batch_size", "8",
            "--window_frames", str(args.frames), "--max_train_steps", str(args.pbnet_steps), *common,
        ])  # fmt: skip

    # A2V-FDM: a base folder with the frozen LFG, the scheduler and the U-Net architecture, then the two stages.
    lfg = LFGAutoencoder.from_pretrained(out / "lfg" / "lfg")
    base = out / "a2v-base"
    lfg.save_pretrained(base / "lfg")
    a2v_unet(lfg).save_pretrained(base / "unet")
    DAWNDDIMScheduler().save_pretrained(base / "scheduler")
    a2v_common = ["--pretrained_model_name_or_path", str(base), "--dataset_name_or_path", dataset,
                  "--train_batch_size", "4", "--clips_per_video", "4", "--learning_rate", "3e-4", *common]
    train_a2v = training_script("train_a2v")
    train_a2v.main(["--stage", "1", "--output_dir", str(out / "a2v-stage1"),
                    "--max_train_steps", str(args.stage1_steps), *a2v_common])
    final_stage = out / "a2v-stage1"
    if args.stage2_steps > 0:
        train_a2v.main(["--stage", "2", "--init_from", str(final_stage), "--output_dir", str(out / "a2v-stage2"),
                        "--max_train_steps", str(args.stage2_steps), *a2v_common])
        final_stage = out / "a2v-stage2"

    hubert, feature_extractor = build_tiny_hubert(seed=HUBERT_SEED, hidden_size=HUBERT_FEATURES)
    pipeline = DAWNPipeline(
        lfg=lfg,
        unet=UNet3DFlowModel.from_pretrained(final_stage / "unet"),
        scheduler=DAWNDDIMScheduler(),
        pbnet_pose=PBNetModel.from_pretrained(out / "pose" / "pbnet_pose"),
        pbnet_blink=PBNetModel.from_pretrained(out / "blink" / "pbnet_blink"),
        audio_encoder=hubert,
        feature_extractor=feature_extractor,
        resolution=args.resolution,
    )
    pipeline.save_pretrained(out / "pipeline")
    (out / "recipe.json").write_text(json.dumps(vars(args), indent=2))
    print(f"Pipeline written to {out / 'pipeline'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
