"""Restoring images larger than the network: tiled eps ("average") against Mask-Shift.

Runs 2x average-pooling SR with the embedded demo prior (configs/demo.yml, 64 x 64
windows, stride 32, DDNM) on images of two sizes, and prints a markdown table:

- windows/s: window crops through the network per second (all images, all steps);
- s/MP: seconds per megapixel of restored image for the whole run;
- outside: share of the run spent outside the network's forwards (cutting windows,
  blending, the projection, the step update);
- peak dRSS: growth of the process's peak resident memory over its value after the
  model was loaded and ran one forward of the same batch (each configuration runs in
  its own process), beside the size of one image batch tensor.

"batch" is the windows per forward: for "average" TiledEps's batch_size on one image;
Mask-Shift visits one window at a time, so its forwards hold one window per image and
batch 8 means 8 images restored together.

    python benchmarks/tiling.py                      # CPU, 2 steps
    python benchmarks/tiling.py --device cuda --steps 10
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from functions.diffusion import make_betas  # noqa: E402
from functions.mask_shift import operator_builder, restore_mask_shift  # noqa: E402
from functions.operators import build_operator  # noqa: E402
from functions.samplers import SamplerConfig, restore  # noqa: E402
from functions.tiling import TiledEps  # noqa: E402
from runners.restoration import sync_device  # noqa: E402


class TimedEps:
    """The network with its forwards timed (synchronised, so the time is the network's)."""

    def __init__(self, eps_model, device):
        self.eps_model, self.device = eps_model, device
        self.seconds, self.windows = 0.0, 0

    def __call__(self, x, t):
        sync_device(self.device)
        start = time.perf_counter()
        out = self.eps_model(x, t)
        sync_device(self.device)
        self.seconds += time.perf_counter() - start
        self.windows += x.shape[0]
        return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: kilobytes


def run_one(method: str, batch: int, H: int, W: int, steps: int, window: int, stride: int, device: str) -> dict:
    from guided_diffusion.checkpoints import load_weights
    from guided_diffusion.models import EpsModel, build_model, load_config

    device = torch.device(device)
    config = load_config(str(ROOT / "configs" / "demo.yml"))
    model = load_weights(build_model(config), ROOT / "weights" / "demo_ema.pt").to(device).eval().requires_grad_(False)
    net = EpsModel(model, config)
    images = batch if method == "mask_shift" else 1
    with torch.no_grad():
        net(torch.zeros(batch, 3, window, window, device=device), torch.full((batch,), 500.0, device=device))
    base = peak_rss_mb()
    timed = TimedEps(net, device)
    op = build_operator("sr_averagepooling", image_size=(H, W), deg_scale=2, device=device)
    g = torch.Generator().manual_seed(0)
    y = op.A((torch.rand(images, 3, H, W, generator=g) * 2 - 1).to(device))
    betas = make_betas(config["diffusion"])
    cfg = SamplerConfig(steps=steps)
    seeds = list(range(images))
    sync_device(device)
    start = time.perf_counter()
    if method == "average":
        restore(TiledEps(timed, window, stride, batch_size=batch, blend="cosine"), op, y, betas, cfg, seeds=seeds)
    else:
        restore_mask_shift(timed, operator_builder("sr_averagepooling", deg_scale=2, device=device), op, y, betas,
                           cfg, seeds=seeds, window=window, stride=stride)
    sync_device(device)
    total = time.perf_counter() - start
    return {"method": method, "batch": batch, "size": f"{H}x{W}", "windows": timed.windows,
            "windows_per_s": timed.windows / total, "s_per_mp": total / (images * H * W / 1e6),
            "outside": 1 - timed.seconds / total, "peak_drss_mb": peak_rss_mb() - base,
            "image_mb": images * 3 * H * W * 4 / 1e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="128x192,192x320", help="comma-separated HxW")
    parser.add_argument("--batches", default="1,8", help="windows per forward")
    parser.add_argument("--methods", default="average,mask_shift")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "BATCH", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, batch, H, W = args.child
        print(json.dumps(run_one(method, int(batch), int(H), int(W), args.steps, args.window, args.stride,
                                 args.device)))
        return
    print(f"device {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, demo prior, window {args.window} stride {args.stride}, {args.steps} steps, "
          f"2x average-pooling SR, DDNM")
    print("| method | batch | size | windows | windows/s | s/MP | outside | peak dRSS MB | image MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for batch in map(int, args.batches.split(",")):
            for size in args.sizes.split(","):
                H, W = map(int, size.lower().split("x"))
                cmd = [sys.executable, __file__, "--child", method, str(batch), str(H), str(W),
                       "--steps", str(args.steps), "--window", str(args.window), "--stride", str(args.stride),
                       "--device", args.device]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                print(f"| {r['method']} | {r['batch']} | {r['size']} | {r['windows']} | {r['windows_per_s']:.1f} | "
                      f"{r['s_per_mp']:.1f} | {100 * r['outside']:.1f}% | {r['peak_drss_mb']:.0f} | "
                      f"{r['image_mb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
