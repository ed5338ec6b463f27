"""
Time and peak memory of one `UNet3DFlowModel` forward pass (real configuration, random weights) against the number
of frames.

    python benchmarks/unet_scaling.py --frames 400 --latent-size 32 --attention local --threads 2 --json

Prints one JSON line: frames, latent_size, attention, device, dtype, seconds, seconds_per_frame, peak_rss_gb (peak
resident memory of this process as reported by the OS, model included) and peak_cuda_gb (peak memory allocated by
torch on the GPU, `null` on CPU). Run each size in a fresh process: the peak RSS of a process never goes down.
"""

import argparse
import json
import resource
import sys
import time

import torch

from diffusers_dawn.models.attention_processor import FullAttnProcessor, LocalAttnProcessor
from diffusers_dawn.models.unet_3d_flow import UNet3DFlowModel


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROCESSORS = {"local": LocalAttnProcessor, "full": FullAttnProcessor}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, required=True, help="number of video frames in the one pass")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side L (32 for 128 px, 64 for 256 px)")
    parser.add_argument("--attention", choices=sorted(PROCESSORS), default="local", help="temporal attention processor")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", action="store_true", help="run one untimed pass first (useful on CUDA)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.latent_size < 4 or args.latent_size % 4:
        parser.error("--frames must be positive and --latent-size a positive multiple of 4")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch sees no CUDA device")
    return args


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    model = UNet3DFlowModel().to(device).eval()
    if dtype != torch.float32:
        model = model.to(dtype)
    model.set_attn_processor(PROCESSORS[args.attention]())
    frames, size = args.frames, args.latent_size
    config = model.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    sample = randn(1, config.flow_channels + config.occlusion_channels, frames, size, size)
    condition = randn(1, frames, model.cond_dim)
    source_latent = randn(1, config.source_latent_channels, size, size)
    face_mask = torch.zeros(1, 1, 4 * size, 4 * size, device=device, dtype=dtype)
    face_mask[..., size : 3 * size, size : 3 * size] = 1
    timestep = torch.tensor([500], device=device)

    def forward():
        return model(sample, timestep, condition, source_latent=source_latent, face_mask=face_mask).sample

    with torch.inference_mode():
        if args.warmup:
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        output = forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    if not torch.isfinite(output).all():
        raise RuntimeError("the forward pass produced non-finite values")

    result = {
        "frames": frames,
        "latent_size": size,
        "attention": args.attention,
        "device": device.type,
        "dtype": args.dtype,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "seconds": round(seconds, 3),
        "seconds_per_frame": round(seconds / frames, 5),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None,
    }
    if not args.json:
        print(f"UNet3DFlowModel, {frames} frames at {size}×{size}, {args.attention} attention:", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
