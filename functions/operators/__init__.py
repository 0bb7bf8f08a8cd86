"""Degradation operators by their reference `--deg` names, built by `build_operator`.

Every operator is an `SVDOperator` (base.py): A, At, A_pinv, V, Vt, U, Ut,
singulars, add_zeros, Lambda, Lambda_noise, state_dict / load_state_dict.
One module per family: super_resolution, deblur, colorization,
compressed_sensing (walsh-hadamard and block-based), inpainting, denoising.
"""
import math

import torch

from .base import LAMBDA_MODES, SVDOperator, image_hw
from .colorization import Colorization
from .compressed_sensing import BlockCS, WalshHadamardCS
from .deblur import BLUR_SVD_MODES, SeparableBlur, gaussian_kernel, uniform_kernel
from .denoising import Denoising
from .inpainting import Inpainting
from .super_resolution import AveragePoolSR, BicubicSR, bicubic_kernel

DEGRADATIONS = ("sr_averagepooling", "sr_bicubic", "deblur_uni", "deblur_gauss", "deblur_aniso",
                "colorization", "cs_walshhadamard", "cs_blockbased", "inpainting", "denoising")

DEFAULT_SR_FACTOR = 4
DEFAULT_CS_RATIO = 0.25


def blur_kernels(deg: str):
    """(rows kernel, columns kernel) of the reference's deblurring tasks."""
    if deg == "deblur_uni":
        k = uniform_kernel(9)
        return k, k
    if deg == "deblur_gauss":
        k = gaussian_kernel(10.0, 2)
        return k, k
    if deg == "deblur_aniso":                  # sigma 1 down the rows axis, 20 along the columns
        return gaussian_kernel(1.0, 4), gaussian_kernel(20.0, 4)
    raise ValueError(f"{deg!r} is not a deblurring task; valid: deblur_uni, deblur_gauss, deblur_aniso")


def _sr_factor(deg_scale, height: int, width: int) -> int:
    f = DEFAULT_SR_FACTOR if deg_scale is None else deg_scale
    if not math.isfinite(float(f)) or float(f) != int(float(f)) or int(float(f)) < 1 \
            or height % int(float(f)) or width % int(float(f)):
        divisors = [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
        size = f"image_size {height}" if height == width else f"both sides of the {height}x{width} image"
        raise ValueError(f"deg_scale (SR factor) must be an integer dividing {size} "
                         f"(one of {divisors}), got {deg_scale}")
    return int(float(f))


def _cs_ratio(deg_scale) -> float:
    r = DEFAULT_CS_RATIO if deg_scale is None else float(deg_scale)
    if not 0 < r <= 1:
        raise ValueError(f"deg_scale (CS ratio) must be in (0, 1], got {deg_scale}")
    return r


def build_operator(deg: str, image_size=256, channels: int = 3, deg_scale=None, device="cpu",
                   dtype=torch.float32, mask=None, seed: int = 0, lambda_mode: str = "reference", *,
                   perm=None, sensing_matrix=None, blur_svd: str = "reference", kernels=None,
                   null_blocks=None) -> SVDOperator:
    """The operator for a reference `--deg` name.

    image_size: an int (a square image) or (H, W); (n, n) builds the same operator as n.
    Every degradation works at any H x W but the CS ones, which need their square native
    sizes (a power of two for cs_walshhadamard, a multiple of 32 for cs_blockbased).
    deg_scale: SR factor (int dividing H and W, default 4) for sr_*, CS ratio in
    (0, 1] (default 0.25) for cs_*, ignored otherwise. mask: see functions/masks.py.
    seed: draws the CS sensing matrix / WH permutation / random mask unless `perm`,
    `sensing_matrix` or `mask` inject them. blur_svd: "reference" (the reference's
    singular-value order, see deblur.py) or "matched" (the true truncated blur).
    kernels: override the blur / bicubic kernel(s) (a tensor, or (rows, cols) for blur).
    null_blocks: blur only; whether null_space works in blocks over the null coordinates
    (deblur.NullBlocks; None: on a CPU, where it pays).
    """
    if deg not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {deg!r}; valid: {', '.join(DEGRADATIONS)}")
    H, W = image_hw(image_size)
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels}")
    channels = int(channels)
    image_size = H if H == W else (H, W)
    if deg.startswith("cs_") and H != W:
        raise ValueError(f"{deg} needs a square image (its sensing works at native square sizes), got {H}x{W}; "
                         f"crop or resize to a square, or pick another degradation")
    common = dict(device=device, dtype=dtype, lambda_mode=lambda_mode)
    if deg == "sr_averagepooling":
        return AveragePoolSR(image_size, channels, _sr_factor(deg_scale, H, W), **common)
    if deg == "sr_bicubic":
        return BicubicSR(image_size, channels, _sr_factor(deg_scale, H, W), kernel=kernels, **common)
    if deg.startswith("deblur"):
        if kernels is None:
            k_rows, k_cols = blur_kernels(deg)
        elif isinstance(kernels, torch.Tensor):
            k_rows = k_cols = kernels
        else:
            k_rows, k_cols = kernels
        return SeparableBlur(deg, k_rows, k_cols, image_size, channels, blur_svd=blur_svd,
                             reference_lambda=deg != "deblur_aniso", null_blocks=null_blocks, **common)
    if deg == "colorization":
        return Colorization(image_size, channels, **common)
    if deg == "cs_walshhadamard":
        return WalshHadamardCS(image_size, channels, _cs_ratio(deg_scale), perm=perm, seed=seed, **common)
    if deg == "cs_blockbased":
        return BlockCS(image_size, channels, _cs_ratio(deg_scale), sensing_matrix=sensing_matrix, seed=seed,
                       **common)
    if deg == "inpainting":
        return Inpainting(image_size, channels, mask=mask, seed=seed, **common)
    return Denoising(image_size, channels, **common)


__all__ = ["DEGRADATIONS", "LAMBDA_MODES", "image_hw", "BLUR_SVD_MODES", "SVDOperator", "build_operator", "blur_kernels",
           "bicubic_kernel", "AveragePoolSR", "BicubicSR", "SeparableBlur", "Colorization", "WalshHadamardCS",
           "BlockCS", "Inpainting", "Denoising"]


def reference_apy(op: SVDOperator, y: torch.Tensor):
    """The image the reference saves as "Apy" where that is not A^+ y, else None.

    The official runner replaces A^+ y before saving it: for deblurring by y itself
    (the blurred image), for inpainting by A^+ y with the holes at -1 (black, not grey).
    The paper's "A^+ y" row of Table 1 scores those images (deblur_gauss: ~19 dB for
    the blurred y against ~42 dB for A^+ y), so the runner records both."""
    shape = (y.shape[0],) + tuple(op.image_shape)
    if isinstance(op, SeparableBlur):
        return y.reshape(shape)
    if isinstance(op, Inpainting):
        kept = op.A_pinv(op.A(torch.ones(shape, device=y.device, dtype=y.dtype))).reshape(shape)
        return op.A_pinv(y).reshape(shape) + kept - 1
    return None
