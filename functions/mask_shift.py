"""Mask-Shift (DDNM's `hq_demo`): restore a large image one window at a time.

Windows of the network's size are visited in raster order (rows of windows top to
bottom, each row left to right, the last window of an axis flush with the edge).
Each window is a full diffusion run on a window-sized operator A_w with
y_w = A_w(crop(A^+ y)); the part of the window that earlier windows already
restored is held to their result at every step (`HeldDenoiser`), so each new window
continues the image across the seam instead of starting a second one. The
finished image is the union of the windows' results, the held pixels keeping the
earlier value exactly.

y_w = A_w(crop(A^+ y)) is exact where A acts pixel-locally and the windows do not
cut its support: average-pooling SR with window positions on the factor's grid,
colorization, inpainting (with the window's crop of the mask) and denoising. For
blur (and bicubic SR, CS) a window's measurements also depend on pixels outside it,
so the crop of A^+ y re-blurred is an approximation of the true y_w.

EquS wraps each window's own run (`make_denoiser` per window), so its transform flips
the window; the tiled eps (functions/tiling.py) is wrapped the other way round, the
whole image transformed before it is cut.

Differences from the reference, on purpose: x_T of each window is the crop of one
full-size x_T drawn from the image's seed (the reference carries the previous
window's final sample over as the next window's start), so a result does not depend
on batching; the held region is replaced in the model's x0 with a matching eps
before the step rule (the reference overwrites the projected x0_hat afterwards).
"""
import math
from typing import Callable, Optional, Sequence

import torch

from functions.diffusion import NoiseLevels
from functions.equivariance import make_denoiser
from functions.noise import PerImageNoise
from functions.samplers import SampleResult, SamplerConfig, make_rule, sample, schedule_for
from functions.tiling import check_window, window_starts


class HeldDenoiser:
    """A denoiser whose x0 is `values` where `mask` is set, with the eps that goes with it.

    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar) in the held region, so that the step
    rule sees an (x0, eps) pair that describes the same x_t. mask: bool, broadcasting
    against the images ((H, W) or (B, 1, H, W)); values: (B, C, H, W)."""

    def __init__(self, denoiser, mask: torch.Tensor, values: torch.Tensor):
        self.denoiser, self.mask, self.values = denoiser, mask, values

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def __call__(self, x_t, t: int, abar_t, u: int):
        x0, eps = self.denoiser(x_t, t, abar_t, u)
        held_eps = torch.add(x_t, self.values, alpha=-math.sqrt(abar_t)).div_(math.sqrt(1 - abar_t))
        return torch.where(self.mask, self.values, x0), torch.where(self.mask, held_eps, eps)


def operator_builder(deg: str, op=None, **kwargs) -> Callable:
    """deg_builder(top, left, window) for `restore_mask_shift` from functions.operators.build_operator.

    kwargs go to build_operator (channels, deg_scale, device, dtype, lambda_mode, ...).
    For inpainting the window gets its crop of `op`'s mask; for sr_averagepooling a
    window off the factor's grid is refused (its y_w would mix pooling cells)."""
    from functions.operators import build_operator

    def build(top: int, left: int, window: int):
        extra = dict(kwargs)
        if deg == "inpainting":
            if op is None or not hasattr(op, "mask"):
                raise ValueError("inpainting windows need the global operator: pass op= (its mask is cropped)")
            extra["mask"] = op.mask[top:top + window, left:left + window].cpu()
        w_op = build_operator(deg, image_size=window, **extra)
        factor = getattr(w_op, "factor", 1)
        if deg == "sr_averagepooling" and (top % factor or left % factor):
            raise ValueError(f"window at ({top}, {left}) is off the {factor}x pooling grid; use a window, "
                             f"stride and image size that are multiples of {factor}")
        return w_op
    return build


@torch.no_grad()
def restore_mask_shift(eps_model, deg_builder: Callable, op, y: torch.Tensor, betas: torch.Tensor,
                       cfg: SamplerConfig, seeds: Sequence[int] = None, window: int = 256,
                       stride: Optional[int] = None, callback: Optional[Callable] = None) -> SampleResult:
    """Restore a batch (B, C, H, W = op.image_shape) from y (B, m) window by window.

    deg_builder(top, left, window) -> the window's operator (see `operator_builder`).
    stride defaults to window // 2 (the reference's 128 for 256). callback(w, top,
    left, i, step, x, x0_hat) sees window w's sampling loop (read-only tensors).
    Returns a SampleResult whose nfe sums the windows' network evaluations.
    """
    window, stride = check_window(window, stride)
    if y.dim() < 2 or y.shape[0] == 0:
        raise ValueError(f"y must be (batch, measurements) with at least one image, got shape {tuple(y.shape)}")
    C, H, W = op.image_shape
    B, device = y.shape[0], y.device
    positions = [(top, left) for top in window_starts(H, window, stride, "height")
                 for left in window_starts(W, window, stride, "width")]
    noise = PerImageNoise(seeds if seeds is not None else range(B), device=device)
    x_T = noise.randn((C, H, W), dtype=y.dtype)      # one full-size draw per image seed, cropped per window
    start = op.A_pinv(y).reshape(B, C, H, W)
    levels = NoiseLevels(betas, device=device)
    schedule = schedule_for(cfg, levels.num_timesteps)
    result = torch.zeros_like(x_T)
    done = torch.zeros(H, W, dtype=torch.bool, device=device)
    nfe = 0
    for w, (top, left) in enumerate(positions):
        rows, cols = slice(top, top + window), slice(left, left + window)
        w_op = deg_builder(top, left, window)
        y_w = w_op.A(start[:, :, rows, cols])
        denoiser = make_denoiser(eps_model, cfg.equs, cfg.transform, cfg.eps_mapping, cfg.transform_seed)
        held = done[rows, cols].clone()
        values = result[:, :, rows, cols].clone()
        if w > 0:            # raster order with stride <= window: every later window overlaps the earlier ones
            denoiser = HeldDenoiser(denoiser, held, values)
        inner = None
        if callback is not None:
            def inner(i, step, x, x0_hat, w=w, top=top, left=left):
                callback(w, top, left, i, step, x, x0_hat)
        x = sample(denoiser, make_rule(cfg, w_op, y_w), x_T[:, :, rows, cols].clone(), schedule, levels, noise,
                   inner, clip_x0=cfg.clip_x0, travel_from=cfg.travel_from)
        result[:, :, rows, cols] = torch.where(held, values, x)
        done[rows, cols] = True
        nfe += denoiser.nfe
    return SampleResult(x0=result, nfe=nfe, schedule=schedule)
