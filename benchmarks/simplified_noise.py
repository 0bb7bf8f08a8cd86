"""The simplified rule's two noise modes on real photographs: 'reference' (the official loop's
quirks: noise std sqrt(1 - abar_next^2), abar_next in the sigma_y test, gamma on the noise-free
stochastic term) against 'ddim' (the corrected DDNM Eq. 19 form, DDNM itself at sigma_y = 0).

Restores 64 x 64 tiles of scikit-image's chelsea and coffee (the demo's held-out set,
runners/demo_data.held_out_tiles) with the embedded demo prior (configs/demo.yml,
weights/demo_ema.pt), for
- mask_color_sr, factor 2, a scratch mask (two thin strokes and a blot), and
- sr_averagepooling, factor 4,
each at --sigma_y 0 and 0.05 (CLI units: model-space std 2 * sigma_y, the noise added to y),
and prints, per row, the mean (std over tiles x seeds) PSNR against the clean tile (images
clamped to [0, 1]), the consistency RMS ||A x - y|| / sqrt(m) against the y the sampler saw,
and against the noise-free A x_orig. Not a test; CPU or --device.

    python benchmarks/simplified_noise.py [--steps 100] [--seeds 3] [--tiles 8] [--device cpu]
"""
import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.diffusion import make_betas                                  # noqa: E402
from functions.metrics import psnr                                          # noqa: E402
from functions.noise import PerImageNoise                                   # noqa: E402
from functions.operators.composite import build_composite                  # noqa: E402
from functions.samplers import SamplerConfig, restore                       # noqa: E402
from guided_diffusion.checkpoints import load_weights, resolve_checkpoint   # noqa: E402
from guided_diffusion.models import EpsModel, build_model, load_config      # noqa: E402
from runners.demo_data import held_out_tiles                                # noqa: E402


def scratch_mask(size: int = 64) -> torch.Tensor:
    """Kept = True: a one-pixel diagonal scratch, a two-pixel curved one, and a small blot."""
    c = torch.arange(size, dtype=torch.float64)
    v, u = torch.meshgrid(c, c, indexing="ij")
    missing = (v - (0.8 * u + 5)).abs() < 0.5
    missing |= (u - (size * 0.7 + 6 * torch.sin(v / 7))).abs() < 1.0
    missing |= (u - 15) ** 2 + (v - 45) ** 2 < 16
    return ~missing


def tiles(n: int) -> torch.Tensor:
    """n tiles (alternating chelsea / coffee) as (n, 3, 64, 64) in [-1, 1]."""
    chelsea, coffee = list(held_out_tiles("chelsea").values()), list(held_out_tiles("coffee").values())
    order = [t for pair in zip(chelsea, coffee) for t in pair][:n]
    x = torch.from_numpy(np.stack(order)).permute(0, 3, 1, 2).float() / 255
    return x * 2 - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", default="mask_color_sr,sr_averagepooling", help="comma-separated subset")
    ap.add_argument("--clip_x0", action="store_true", help="clamp x0 to [-1, 1] (off in the reference)")
    args = ap.parse_args()
    device = torch.device(args.device)

    config = load_config("demo.yml")
    model = build_model(config)
    load_weights(model, resolve_checkpoint(config, download=False))
    eps_model = EpsModel(model.to(device).eval().requires_grad_(False), config)
    betas = make_betas(config["diffusion"]).to(device)

    x = tiles(args.tiles).to(device)
    seeds = list(range(args.seeds))
    batch_x = x.repeat_interleave(len(seeds), 0)                       # tile-major, seeds inside
    batch_seeds = [1000 * i + s for i in range(len(x)) for s in seeds]
    tasks = [t for t in [("mask_color_sr", 2, scratch_mask()), ("sr_averagepooling", 4, None)]
             if t[0] in args.tasks.split(",")]

    print(f"# simplified rule noise modes: demo prior, {len(x)} tiles x {len(seeds)} seeds, {args.steps} steps, "
          f"eta 0.85, clip_x0 {args.clip_x0}; {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")
    print(f"{'task':<22}{'sigma_y':>8}{'mode':>11}{'PSNR dB':>16}{'|Ax-y| rms':>12}{'|Ax-Ax0| rms':>14}{'s':>7}")
    for deg, scale, mask in tasks:
        op = build_composite(deg, 64, deg_scale=scale, mask=mask, device=device)
        y_clean = op.A(batch_x)
        for sigma_cli in (0.0, 0.05):
            sigma = 2 * sigma_cli
            noise_y = PerImageNoise([s + 7919 for s in batch_seeds], device=device).randn_like(y_clean)
            y = y_clean + sigma * noise_y
            for mode in ("reference", "ddim"):
                cfg = SamplerConfig(sampler="simplified", simplified_noise=mode, steps=args.steps, eta=0.85,
                                    sigma_y=sigma, clip_x0=args.clip_x0)
                t0 = time.time()
                out = restore(eps_model, op, y, betas, cfg, seeds=batch_seeds).x0
                dt = time.time() - t0
                p = psnr(((out + 1) / 2).clamp(0, 1), (batch_x + 1) / 2).tolist()
                m = op.num_measurements
                cons = ((op.A(out) - y).norm(dim=1) / math.sqrt(m)).mean().item()
                clean = ((op.A(out) - y_clean).norm(dim=1) / math.sqrt(m)).mean().item()
                spread = statistics.stdev(p) if len(p) > 1 else 0.0
                print(f"{deg + f'_{scale}':<22}{sigma_cli:>8.2f}{mode:>11}{statistics.mean(p):>10.2f} ± {spread:<4.2f}"
                      f"{cons:>12.4f}{clean:>14.4f}{dt:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
