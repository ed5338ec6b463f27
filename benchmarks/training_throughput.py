"""
Training throughput of the synthetic-demo recipe's models, today's (reference) path and the optimised one side by
side in one process, on random weights and random inputs of the recipe's shapes.

    python benchmarks/training_throughput.py --model a2v --threads 1
    python benchmarks/training_throughput.py --model pbnet --json

`--model a2v`: the recipe's A2V-FDM U-Net (`a2v_unet` of `diffusers_dawn.training.synthetic_demo` with the LFG of
`synthetic_demo.json`; 64 px, latent 16×16, batch 4 × 20 frames), two measurements:
  - `unet_step`: noise, U-Net forward, DAWN loss, backward and Adam step on a fixed motion target; reference =
    `unet.set_fused_kernels(False)` (the official formulation and `LocalAttnProcessor`), optimised = the default
    fused kernels (`--compile` adds `torch.compile`);
  - `training_step`: the same plus the frozen LFG's motion targets and source latents (`a2v_batch_loss`);
    reference = recomputed at every step, optimised = from a warm `MotionTargetCache` (every clip seen before, as
    after the first epoch; a first visit still runs the LFG). Data decoding is not included (it runs in DataLoader
    workers with `--dataloader_num_workers`).
`--model pbnet`: the recipe's pose PBNet (batch 8 × 100 frames) with its discriminator; reference =
`LocalAttnProcessor`, optimised = the default `FusedLocalAttnProcessor` (rotary embedding folded into the
projections). `--model lfg`: the recipe's LFG at batch 8 with the perceptual and equivariance losses; it has no
optimised path yet, so both columns run the same code and the ratio only shows the measurement noise.

Steps of the two paths alternate, so both see the same machine load. Each path reports samples/s from the median
wall time and from the median CPU time of the process (robust on a loaded machine when `--threads 1`); the ratios
are optimised / reference.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusers_dawn.models.unet_3d_flow import BLINK_DIM, POSE_DIM


REPOSITORY = Path(__file__).resolve().parents[1]
RECIPES = REPOSITORY / "training" / "recipes"


def load_recipe():
    """The synthetic-demo recipe's model builders (the package's) and its settings (the repository's JSON)."""
    from diffusers_dawn.training import synthetic_demo

    return synthetic_demo


def recipe_lfg():
    torch.manual_seed(0)
    recipe = load_recipe()
    return recipe.recipe_lfg(recipe.load_settings(RECIPES / "synthetic_demo.json")).eval().requires_grad_(False)


def recipe_condition_dim() -> int:
    """Speech features + Δpose (6) + Δblink (2), as the recipe's U-Net is built."""
    recipe = load_recipe()
    return recipe.load_settings(RECIPES / "synthetic_demo.json")["audio_encoder"]["hidden_size"] + POSE_DIM + BLINK_DIM


def a2v_batch(lfg, batch=4, frames=20, resolution=64, seed=0):
    """A collated `A2VClipDataset` batch of the recipe's shapes (random frames and conditions)."""
    generator = torch.Generator().manual_seed(seed)
    latent = resolution // lfg.latent_downsampling
    face_mask = torch.zeros(batch, 1, resolution, resolution)
    face_mask[..., resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 1
    mouth_mask = torch.zeros(batch, frames, latent, latent)
    mouth_mask[..., latent // 2 : 3 * latent // 4, latent // 3 : 2 * latent // 3] = 1
    return {
        "frames": torch.rand(batch, frames, 3, resolution, resolution, generator=generator),
        "reference_image": torch.rand(batch, 3, resolution, resolution, generator=generator),
        "conditions": torch.randn(batch, frames, recipe_condition_dim(), generator=generator),
        "face_mask": face_mask,
        "mouth_mask": mouth_mask,
        "video_index": torch.arange(batch),
        "reference_index": torch.zeros(batch, dtype=torch.long),
        "frame_indices": torch.arange(frames).expand(batch, -1),
    }


def a2v_steps(args):
    from diffusers_dawn import DAWNDDIMScheduler
    from diffusers_dawn.training.a2v_trainer import MotionTargetCache, a2v_batch_loss, a2v_loss

    lfg = recipe_lfg()
    recipe = load_recipe()
    scheduler = DAWNDDIMScheduler()
    batch = a2v_batch(lfg)
    with torch.no_grad():
        cache = MotionTargetCache()
        motion_target, source_latent = cache.targets(lfg, batch)  # also warms the cache
    size = batch["frames"].shape[0]

    compile_note = ""

    def trainer(fused: bool, compiled: bool = False):
        nonlocal compile_note
        settings = recipe.load_settings(RECIPES / "synthetic_demo.json")
        unet = recipe.a2v_unet(lfg, settings["audio_encoder"]["hidden_size"], settings).train()
        unet.set_fused_kernels(fused)
        model = unet
        if compiled:
            # Compilation happens at the first call: try it once and fall back to eager mode when it fails.
            try:
                model = torch.compile(unet)
                with torch.no_grad():
                    model(torch.zeros_like(motion_target), torch.zeros(size, dtype=torch.long), batch["conditions"],
                          source_latent=source_latent, face_mask=batch["face_mask"])
                compile_note = " + torch.compile"
            except Exception as error:  # compiler missing or unsupported operation
                model = unet
                compile_note = f" (torch.compile failed, eager: {type(error).__name__}: {str(error)[:200]})"
        optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        return unet, model, optimizer, generator

    def unet_step(state):
        unet, model, optimizer, generator = state
        loss = a2v_loss(model, scheduler, motion_target, batch["conditions"], source_latent, batch["face_mask"],
                        batch["mouth_mask"], generator=generator).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def training_step(state, motion_cache):
        unet, model, optimizer, generator = state
        loss = a2v_batch_loss(model, lfg, scheduler, batch, motion_cache=motion_cache, generator=generator).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    reference, optimised = trainer(False), trainer(True, args.compile)
    measurements = {
        "unet_step": (lambda: unet_step(reference), lambda: unet_step(optimised)),
        "training_step": (lambda: training_step(reference, None), lambda: training_step(optimised, cache)),
    }
    notes = {
        "reference": "set_fused_kernels(False): official-formula norms and cross-attentions, LocalAttnProcessor; "
        "LFG motion targets recomputed every step",
        "optimised": f"fused kernels (default){compile_note}; LFG motion targets from a warm MotionTargetCache",
    }
    return measurements, size, notes


def pbnet_steps(args):
    from diffusers_dawn import PBNetModel
    from diffusers_dawn.models.attention_processor import FusedLocalAttnProcessor, LocalAttnProcessor
    from diffusers_dawn.training.pbnet_trainer import PatchDiscriminator1D, pbnet_loss

    recipe = load_recipe()
    settings = recipe.load_settings(RECIPES / "synthetic_demo.json")
    config = dict(settings["pbnet_config"]["pose"], audio_dim=settings["audio_encoder"]["hidden_size"])
    batch, frames = 8, 100
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(batch, frames, config["state_dim"], generator=generator)
    audio = torch.randn(batch, frames, config["audio_dim"], generator=generator)
    lengths = torch.full((batch,), frames)

    def trainer(processor):
        torch.manual_seed(0)
        pbnet = PBNetModel(**config).train()
        pbnet.set_attn_processor(processor)
        discriminator = PatchDiscriminator1D(state_dim=config["state_dim"])
        optimizer = torch.optim.Adam(list(pbnet.parameters()) + list(discriminator.parameters()), lr=1e-4)
        return pbnet, discriminator, optimizer, torch.Generator().manual_seed(0)

    def step(state):
        pbnet, discriminator, optimizer, step_generator = state
        pbnet_loss(pbnet, discriminator, states, audio, lengths, 1e-3, generator=step_generator).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    reference, optimised = trainer(LocalAttnProcessor()), trainer(FusedLocalAttnProcessor())
    notes = {"reference": "LocalAttnProcessor", "optimised": "FusedLocalAttnProcessor (default)"}
    return {"training_step": (lambda: step(reference), lambda: step(optimised))}, batch, notes


def lfg_steps(args):
    from diffusers_dawn.training.lfg_trainer import PerceptualPyramidLoss, Vgg19Features, lfg_loss

    batch, resolution = 8, 64
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(batch, 3, resolution, resolution, generator=generator)
    driving = torch.rand(batch, 3, resolution, resolution, generator=generator)
    perceptual = PerceptualPyramidLoss(Vgg19Features())  # random VGG: the same cost as the ImageNet one

    def trainer():
        lfg = recipe_lfg().train().requires_grad_(True)
        return lfg, torch.optim.Adam(lfg.parameters(), lr=1e-4), torch.Generator().manual_seed(0)

    def step(state):
        lfg, optimizer, step_generator = state
        lfg_loss(lfg, perceptual, source, driving, generator=step_generator).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    reference, optimised = trainer(), trainer()
    notes = {"reference": "today's LFG", "optimised": "the same code: the LFG has no optimised path yet"}
    return {"training_step": (lambda: step(reference), lambda: step(optimised))}, batch, notes


MODELS = {"a2v": a2v_steps, "lfg": lfg_steps, "pbnet": pbnet_steps}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (after one untimed warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compile", action="store_true", help="a2v: torch.compile the optimised U-Net (falls back to eager on failure)"
    )
    parser.add_argument("--json", action="store_true", help="print only one JSON line")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def time_interleaved(reference, optimised, steps: int):
    """Alternating steps of the two paths after one warm-up each; per-step wall and process CPU seconds."""
    times = {"reference": ([], []), "optimised": ([], [])}
    for step in range(steps + 1):
        for name, run in (("reference", reference), ("optimised", optimised)):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            if step:  # the first step of each path warms up (allocations, compilation)
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return times


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measurements, batch_size, notes = MODELS[args.model](args)
    result = {"model": args.model, "threads": torch.get_num_threads(), "steps": args.steps, "batch": batch_size,
              "paths": notes}
    for name, (reference, optimised) in measurements.items():
        times = time_interleaved(reference, optimised, args.steps)
        entry = {}
        for path, (wall, cpu) in times.items():
            entry[path] = {
                "samples_per_s": batch_size / statistics.median(wall),
                "samples_per_cpu_s": batch_size / statistics.median(cpu),
                "median_step_s": statistics.median(wall),
            }
        entry["ratio"] = entry["optimised"]["samples_per_s"] / entry["reference"]["samples_per_s"]
        entry["ratio_cpu"] = entry["optimised"]["samples_per_cpu_s"] / entry["reference"]["samples_per_cpu_s"]
        result[name] = entry
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: batch {batch_size}, {result['threads']} torch thread(s), median of {args.steps} steps")
        for path, note in notes.items():
            print(f"  {path}: {note}")
        for name in measurements:
            entry = result[name]
            print(f"  {name}: reference {entry['reference']['samples_per_s']:.2f} samples/s "
                  f"({entry['reference']['samples_per_cpu_s']:.2f} per CPU-s), optimised "
                  f"{entry['optimised']['samples_per_s']:.2f} samples/s "
                  f"({entry['optimised']['samples_per_cpu_s']:.2f} per CPU-s), ratio {entry['ratio']:.2f} "
                  f"(CPU {entry['ratio_cpu']:.2f})")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
