"""Forward time of the two full-size UNets (random weights, no checkpoint needed).

Compares the CelebA-HQ "simple" UNet (configs/celeba_hq.yml) and guided-diffusion's
ImageNet UNet (configs/imagenet_256.yml) at batch 1, 256x256. On CPU it times float32;
on CUDA it also times float16 (the reference's use_fp16 body for the ImageNet model,
autocast for the simple one) and channels_last. Prints a markdown table.

    python benchmarks/unet.py                 # CPU, 2 timed iterations
    python benchmarks/unet.py --device cuda   # adds fp16 and channels_last rows
"""
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.models import EpsModel, build_model, load_config  # noqa: E402
from runners.restoration import sync_device  # noqa: E402

ARCHS = (("simple (CelebA-HQ)", "celeba_hq.yml"), ("openai (ImageNet 256)", "imagenet_256.yml"))


def time_forward(eps, x, t, warmup: int, iters: int) -> list:
    """Seconds per forward for `iters` timed calls after `warmup` untimed ones."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync_device(x.device)
            start = time.perf_counter()
            eps(x, t)
            sync_device(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def variants(device: torch.device):
    """(precision, layout) pairs to time, float32 first (the fp16 body conversion is one-way)."""
    if device.type != "cuda":
        return [("fp32", "contiguous")]
    return [("fp32", "contiguous"), ("fp32", "channels_last"), ("fp16", "contiguous"), ("fp16", "channels_last")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 2 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 1 on CPU, 5 on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    iters = args.iters if args.iters is not None else (20 if device.type == "cuda" else 2)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# UNet forward, batch {args.batch}, {args.size}x{args.size}, random weights, {where}, "
          f"torch {torch.__version__}, median of {iters} (after {warmup} warm-up)\n")
    print("| model | parameters | precision | layout | ms / forward | min ms |")
    print("|---|---:|---|---|---:|---:|")

    gen = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    t = torch.full((args.batch,), 500, dtype=torch.long, device=device)
    for label, config_name in ARCHS:
        config = load_config(config_name)
        torch.manual_seed(0)
        model = build_model(config).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        for precision, layout in variants(device):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=fmt)
            x = x_cpu.to(device).contiguous(memory_format=fmt)
            eps = EpsModel(model, config, dtype=precision)
            times = time_forward(eps, x, t, warmup, iters)
            print(f"| {label} | {n_params / 1e6:.1f} M | {precision} | {layout} | "
                  f"{1e3 * statistics.median(times):.1f} | {1e3 * min(times):.1f} |", flush=True)
        del model, eps
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
