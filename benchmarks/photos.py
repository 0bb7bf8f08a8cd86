"""Whole photographs with the demo prior: tiled eps (`average`) against Mask-Shift (`mask_shift`).

Not a test: prints a table. For each held-out photo of the demo (chelsea and coffee
whole at 128 x 192, runners/demo_data.py), 2x average-pooling SR restored by DDNM
with the embedded 64 x 64 demo prior, windows of 64 with stride 32:
- PSNR of the result and of A^+ y against the photo;
- the seam measure: the mean |gradient| across window borders over its mean at the
  same parity elsewhere (the worse of rows and columns), as tests/test_tiling.py checks,
  beside the photo's own value at the same places (on images this small the border
  positions are few, so even the ground truth is not at 1);
- seconds per image (sampler only) on this machine's CPU.

    python benchmarks/photos.py --steps 50 --seeds 2
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from functions import metrics  # noqa: E402
from functions.diffusion import make_betas  # noqa: E402
from functions.mask_shift import operator_builder, restore_mask_shift  # noqa: E402
from functions.operators import build_operator  # noqa: E402
from functions.samplers import SamplerConfig, restore  # noqa: E402
from functions.tiling import TiledEps, window_starts  # noqa: E402


def demo_eps():
    from guided_diffusion.checkpoints import load_weights
    from guided_diffusion.models import EpsModel, build_model, load_config

    config = load_config(str(ROOT / "configs" / "demo.yml"))
    model = load_weights(build_model(config), ROOT / "weights" / "demo_ema.pt").eval().requires_grad_(False)
    return EpsModel(model, config)


def seam_ratio(img: torch.Tensor, window: int, stride: int, factor: int) -> float:
    """The larger of |ratio - 1| over rows and columns, as a ratio: mean |gradient| across the
    window borders over its mean across the other steps on the SR grid (steps inside a pooling cell
    carry only the prior's null-space detail, so they are left out of both)."""
    worst = 1.0
    for axis in (2, 3):
        size = img.shape[axis]
        starts = window_starts(size, window, stride)
        borders = {s for s in starts if s > 0} | {s + window for s in starts if s + window < size}
        grad = img.diff(dim=axis).abs().mean(dim=[d for d in range(4) if d != axis])
        at = torch.tensor(sorted(b - 1 for b in borders if b % factor == 0))
        rest = torch.tensor([b - 1 for b in range(factor, size, factor) if b not in borders])
        r = float(grad[at].mean() / grad[rest].mean())
        worst = r if abs(r - 1) > abs(worst - 1) else worst
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="windows per forward (average)")
    p.add_argument("--modes", default="cosine,uniform,mask_shift",
                   help="--tiling average with its blends (cosine, gaussian, uniform), or mask_shift")
    args = p.parse_args()
    from runners.demo_data import held_out_photos

    eps_model, window, stride, factor = demo_eps(), 64, 32, 2
    betas = make_betas({})
    cfg = SamplerConfig(steps=args.steps)
    print(f"2x SR, DDNM, {args.steps} steps, demo prior (64 px windows, stride 32), {args.seeds} seeds, "
          f"{torch.get_num_threads()} threads")
    print(f"{'photo':8} {'tiling':11} {'PSNR':>6} {'A^+y':>6} {'seam':>6} {'GT seam':>7} {'s/img':>7}")
    for name, img in held_out_photos().items():
        x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
        H, W = x.shape[2:]
        op = build_operator("sr_averagepooling", image_size=(H, W), deg_scale=factor)
        y = op.A(x)
        gt_seam = seam_ratio((x + 1) / 2, window, stride, factor)    # the photo's own value at those places
        apy = metrics.psnr(((op.A_pinv(y).reshape(x.shape) + 1) / 2).clamp(0, 1), (x + 1) / 2).item()
        for mode in args.modes.split(","):
            psnr, seam, secs = [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                with torch.no_grad():
                    if mode in ("uniform", "gaussian", "cosine"):
                        tiled = TiledEps(eps_model, window, stride, args.batch, blend=mode)
                        out = restore(tiled, op, y, betas, cfg, seeds=[seed]).x0
                    else:
                        build = operator_builder("sr_averagepooling", op, deg_scale=factor)
                        out = restore_mask_shift(eps_model, build, op, y, betas, cfg, seeds=[seed],
                                                 window=window, stride=stride).x0
                secs.append(time.perf_counter() - t0)
                out01 = ((out + 1) / 2).clamp(0, 1)
                psnr.append(metrics.psnr(out01, (x + 1) / 2).item())
                seam.append(seam_ratio(out01, window, stride, factor))
            n = len(psnr)
            print(f"{name:8} {mode:11} {sum(psnr) / n:6.2f} {apy:6.2f} {sum(seam) / n:6.3f} {gt_seam:7.3f} {sum(secs) / n:7.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
