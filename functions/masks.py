"""Inpainting masks: (H, W) bool tensors, True = pixel kept.

`size` is an int (a square image) or (H, W). Sources, all resolved by `resolve_mask(spec, size)`:
- None: `default_mask(size)`, the project's own default, drawn from fixed shapes
  (no random generator, so it is the same on every machine and torch version);
  at 256 x 256 it plays the part of the reference's `exp/inp_masks/mask.npy`; at H x W
  the same shapes are stretched over the image (they are drawn in coordinates in (0, 1));
- a path to a .png (any mode; kept = brighter than half the maximum) or .npy (0/1
  or bool), of any size, resized to `size` with nearest neighbour (torch's
  'nearest': source index floor(i * in / out), so 256 -> 64 takes every 4th pixel),
  each axis on its own (so a square mask is stretched to a non-square image);
- "random:R": each pixel missing with probability R (seeded), `random_pixel_mask`;
- "box:R": a centred box of the image's aspect covering a fraction R of it, `center_box_mask`;
- a (H, W) tensor or array of 0/1 (resized like a file if its size differs).
"""
import math
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

MASK_KINDS = ("None (default mask)", "path.png", "path.npy", "random:R", "box:R", "(H, W) 0/1 tensor/array")


def mask_hw(size) -> Tuple[int, int]:
    """(H, W) from a mask size given as an int (square) or (H, W)."""
    if isinstance(size, (tuple, list, torch.Size)):
        if len(size) != 2:
            raise ValueError(f"mask size must be an int or (H, W), got {tuple(size)}")
        sides = tuple(size)
    else:
        sides = (size, size)
    try:
        ok = all(not isinstance(v, bool) and int(v) == v and int(v) >= 1 for v in sides)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"mask size must be a positive integer or (H, W) of positive integers, got {size!r}")
    return int(sides[0]), int(sides[1])


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of a (h, w) bool mask to `size` ((size, size) or (H, W))."""
    H, W = mask_hw(size)
    if tuple(mask.shape) == (H, W):
        return mask
    out = F.interpolate(mask[None, None].float(), size=(H, W), mode="nearest")
    return out[0, 0] > 0.5


def default_mask(size=256) -> torch.Tensor:
    """Deterministic default mask: three strokes and two blobs removed, about 26% of the pixels."""
    H, W = mask_hw(size)
    rows = (torch.arange(H, dtype=torch.float64) + 0.5) / H
    cols = (torch.arange(W, dtype=torch.float64) + 0.5) / W
    v, u = torch.meshgrid(rows, cols, indexing="ij")       # v: down, u: right, both in (0, 1)
    missing = torch.zeros(H, W, dtype=torch.bool)

    def stroke(p0, p1, width):
        (u0, v0), (u1, v1) = p0, p1
        du, dv = u1 - u0, v1 - v0
        t = (((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv)).clamp(0, 1)
        return (u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2 <= width ** 2

    def blob(cu, cv, ru, rv):
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1

    missing |= stroke((0.08, 0.12), (0.45, 0.38), 0.045)
    missing |= stroke((0.62, 0.10), (0.90, 0.52), 0.040)
    missing |= (v - (0.62 + 0.06 * torch.sin(4 * math.pi * u))).abs() <= 0.030
    missing |= blob(0.28, 0.82, 0.12, 0.15)
    missing |= blob(0.78, 0.84, 0.15, 0.10)
    return ~missing


def random_pixel_mask(size, missing_ratio: float, seed: int = 0) -> torch.Tensor:
    """Each pixel missing independently with probability `missing_ratio`.

    Drawn by numpy's PCG64 from (seed, a mask tag), not by a torch generator seeded with
    `seed`: run seed 0 gives image 0 the torch seed 0 for x_T, and the same uniforms would
    then decide both the mask and x_T's magnitudes at the missing pixels."""
    _check_ratio(missing_ratio, "random")
    rng = np.random.default_rng([int(seed), 0x6D61736B])
    return torch.from_numpy(rng.random(mask_hw(size)) >= missing_ratio)


def center_box_mask(size, missing_ratio: float) -> torch.Tensor:
    """A centred hole of the image's aspect (a square on a square image), each side sqrt(R) of the
    image's, so that it covers (as nearly as pixels allow) `missing_ratio` of the image."""
    _check_ratio(missing_ratio, "box")
    H, W = mask_hw(size)
    h, w = int(round(H * math.sqrt(missing_ratio))), int(round(W * math.sqrt(missing_ratio)))
    top, left = (H - h) // 2, (W - w) // 2
    mask = torch.ones(H, W, dtype=torch.bool)
    mask[top:top + h, left:left + w] = False
    return mask


def load_mask(path, size) -> torch.Tensor:
    """A .png or .npy mask file of any size, resized to `size` (int side or (H, W))."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mask file {str(path)!r} does not exist (valid masks: {', '.join(MASK_KINDS)})")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        return resize_mask(_to_bool(arr, f"mask {path.name}"), size)
    if suffix == ".png":
        from PIL import Image
        arr = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        top = arr.max()
        return resize_mask(torch.from_numpy(arr > top / 2 if top > 0 else arr > 0), size)
    raise ValueError(f"mask file must be .png or .npy, got {path.name!r}")


def resolve_mask(mask, size, seed: int = 0) -> torch.Tensor:
    """Any accepted mask spec (module docstring) -> validated (H, W) bool tensor on the CPU;
    size is the int side of a square image or (H, W)."""
    size = mask_hw(size)
    if mask is None:
        out = default_mask(size)
    elif isinstance(mask, str) and ":" in mask and mask.split(":", 1)[0] in ("random", "box"):
        kind, value = mask.split(":", 1)
        try:
            ratio = float(value)
        except ValueError:
            raise ValueError(f"mask {mask!r}: ratio must be a number in [0, 1), e.g. '{kind}:0.5'") from None
        out = random_pixel_mask(size, ratio, seed) if kind == "random" else center_box_mask(size, ratio)
    elif isinstance(mask, (str, Path)):
        out = load_mask(mask, size)
    elif isinstance(mask, (torch.Tensor, np.ndarray)):
        out = resize_mask(_to_bool(mask, "mask"), size)
    else:
        raise ValueError(f"mask must be one of {', '.join(MASK_KINDS)}; got {type(mask).__name__}")
    if not bool(out.any()):
        raise ValueError("mask keeps no pixel (it is all 0); 1 marks a kept pixel")
    return out


def _to_bool(arr, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr) if isinstance(arr, np.ndarray) else arr).detach().cpu()
    if t.dim() != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{what} values must be 0 or 1 (1 = kept pixel)")
        t = t == 1
    return t


def _check_ratio(r: float, kind: str) -> None:
    if not 0 <= r < 1:
        raise ValueError(f"{kind} mask missing ratio must be in [0, 1), got {r}")
