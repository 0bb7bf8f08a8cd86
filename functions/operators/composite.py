"""Image-domain degradations and their compositions, for the SVD-free ("simplified") DDNM rule.

The reference's simplified path (DDNM `simplified_ddnm_plus`, and hq_demo) needs only A and
an approximate inverse Ap, never an SVD, so degradations chain freely: `--deg a+b+c` applies
a, then b, then c, and Ap applies the parts' inverses in the reverse order. Parts:
- inpainting: A = Ap = multiply by the mask (the measurement keeps the image's shape);
- colorization: A = the channel mean (one grey channel), Ap = that channel repeated to the
  input's channels (the reference's color2gray / gray2color: equal weights 1/3, where the
  SVD colorization operator weighs 0.3333 / 0.3334 / 0.3333);
- sr_averagepooling: A = s x s average pooling, Ap = each pixel repeated s x s (MeanUpsample);
- sr_bicubic, deblur_uni / deblur_gauss / deblur_aniso: the SVD operators of
  functions/operators (A = the filtered image, Ap = their truncated pseudo-inverse);
- denoising: the identity.
Named composites (the reference's names): `mask_color_sr` = inpainting+colorization+
sr_averagepooling, `sr_color` = sr_averagepooling+colorization (hq_demo).

Ap is exact (A Ap y = y) for each part alone and for chains whose parts commute with the
next part's inverse; `mask_color_sr` is not: the mask, applied after the upsampling, cuts
pooled cells, and the reference lives with that.
"""
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from functions.masks import resolve_mask
from functions.operators.base import image_hw

PARTS = ("inpainting", "colorization", "sr_averagepooling", "sr_bicubic", "deblur_uni", "deblur_gauss",
         "deblur_aniso", "denoising")
NAMED = {"mask_color_sr": ("inpainting", "colorization", "sr_averagepooling"),
         "sr_color": ("sr_averagepooling", "colorization")}
DEFAULT_SR_FACTOR = 4


def color2gray(x: torch.Tensor) -> torch.Tensor:
    """The channel mean, as one channel."""
    return x.mean(dim=1, keepdim=True)


def gray2color(g: torch.Tensor, channels: int) -> torch.Tensor:
    """Channel 0 of g repeated to `channels` channels."""
    return g[:, :1].repeat(1, channels, 1, 1)


def mean_upsample(y: torch.Tensor, scale: int) -> torch.Tensor:
    """Each pixel repeated scale x scale (the reference's MeanUpsample)."""
    B, C, h, w = y.shape
    return y[:, :, :, None, :, None].expand(B, C, h, scale, w, scale).reshape(B, C, h * scale, w * scale)


def is_composite(deg: str) -> bool:
    """Whether `--deg` names a composite (a '+' chain or a named one) rather than one SVD operator."""
    return isinstance(deg, str) and ("+" in deg or deg in NAMED)


def parse_spec(spec: str):
    """The part names of a spec, left to right; ValueError naming a bad part."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"degradation spec must be a non-empty string such as 'inpainting+colorization', got {spec!r}")
    if spec in NAMED:
        return NAMED[spec]
    parts = tuple(spec.split("+"))
    for p in parts:
        if p.startswith("cs_"):
            raise ValueError(f"composite part {p!r} has no image-domain form (its measurement is not an image); "
                             f"valid parts: {', '.join(PARTS)}")
        if p not in PARTS:
            raise ValueError(f"unknown composite part {p!r} in {spec!r}; valid parts: {', '.join(PARTS)} "
                             f"(or one of the named composites {', '.join(NAMED)})")
    return parts


def _factor(deg_scale, h: int, w: int, part: str) -> int:
    f = DEFAULT_SR_FACTOR if deg_scale is None else deg_scale
    try:
        ok = math.isfinite(float(f)) and float(f) == int(float(f)) and int(float(f)) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok or h % int(float(f)) or w % int(float(f)):
        raise ValueError(f"deg_scale (SR factor of part {part}) must be an integer dividing its input size "
                         f"{h}x{w}, got {deg_scale}")
    return int(float(f))


def mask_input_hw(spec: str, image_size, deg_scale=None) -> Tuple[int, int]:
    """(h, w) of the image the inpainting part of `spec` sees: the image's own size, or
    smaller where an SR part comes before it (sr_averagepooling+inpainting masks y's pixels)."""
    h, w = image_hw(image_size)
    for name in parse_spec(spec):
        if name == "inpainting":
            return h, w
        if name.startswith("sr_"):
            f = _factor(deg_scale, h, w, name)
            h, w = h // f, w // f
    raise ValueError(f"{spec!r} has no inpainting part")


class _Part:
    """One stage: A maps a (B, C, H, W) image to the next stage's image, Ap goes back."""

    def __init__(self, name, in_shape, out_shape):
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), tuple(out_shape)


class _Mask(_Part):
    def __init__(self, in_shape, mask, device):
        super().__init__("inpainting", in_shape, in_shape)
        self.mask = resolve_mask(mask, in_shape[1:]).to(device)   # at the part's input size

    def A(self, x):
        return x * self.mask          # bool * float keeps x's dtype

    Ap = A


class _Gray(_Part):
    def __init__(self, in_shape):
        super().__init__("colorization", in_shape, (1,) + tuple(in_shape[1:]))

    def A(self, x):
        return color2gray(x)

    def Ap(self, y):
        return gray2color(y, self.in_shape[0])


class _Pool(_Part):
    def __init__(self, in_shape, factor):
        c, h, w = in_shape
        super().__init__("sr_averagepooling", in_shape, (c, h // factor, w // factor))
        self.factor = factor

    def A(self, x):
        return F.avg_pool2d(x, self.factor)

    def Ap(self, y):
        return mean_upsample(y, self.factor)


class _Identity(_Part):
    def __init__(self, in_shape):
        super().__init__("denoising", in_shape, in_shape)

    def A(self, x):
        return x

    Ap = A


class _SVDPart(_Part):
    """A functions.operators operator whose measurement is an image (blur: the blurred image;
    sr_bicubic: the (C, H/r, W/r) filtered image), used through its A and A^+."""

    def __init__(self, name, in_shape, deg_scale, device, dtype):
        from functions.operators import build_operator     # lazily: the package may come to import this module
        c, h, w = in_shape
        size = h if h == w else (h, w)
        if name == "sr_bicubic":
            r = _factor(deg_scale, h, w, name)
            out = (c, h // r, w // r)
            self.op = build_operator(name, image_size=size, channels=c, deg_scale=r, device=device, dtype=dtype)
        else:
            out = tuple(in_shape)
            self.op = build_operator(name, image_size=size, channels=c, device=device, dtype=dtype)
        super().__init__(name, in_shape, out)

    def A(self, x):
        return self.op.A(x).reshape(x.shape[0], *self.out_shape)

    def Ap(self, y):
        return self.op.A_pinv(y.reshape(y.shape[0], -1)).reshape(y.shape[0], *self.in_shape)


class CompositeOperator:
    """A chain of image-domain parts: A(x) = (B, m) flat, A_pinv(y) = an image, no SVD.

    Offers what the simplified rule and DDNM's noise-free rule use (A, A_pinv, null_space,
    full_rank, num_measurements, image_shape); DDNM+ and DDRM need an SVD and refuse it."""

    full_rank = False

    def __init__(self, name: str, parts, image_shape, device):
        self.name = name
        self.parts = tuple(parts)
        self.image_shape = tuple(image_shape)
        self.channels, self.height, self.width = self.image_shape
        self.image_size = self.height if self.height == self.width else (self.height, self.width)
        self.measurement_shape = self.parts[-1].out_shape if self.parts else self.image_shape
        self.device = torch.device(device)

    @property
    def part_names(self):
        return tuple(p.name for p in self.parts)

    @property
    def num_measurements(self) -> int:
        return int(np.prod(self.measurement_shape))

    def _image(self, x):
        if x.dim() == 2:
            return x.reshape(x.shape[0], *self.image_shape)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.name} takes images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return x

    def A(self, x: torch.Tensor) -> torch.Tensor:
        x = self._image(x)
        for p in self.parts:
            x = p.A(x)
        return x.reshape(x.shape[0], -1)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """The parts' inverses in reverse order (exact only where the module docstring says)."""
        if y[0].numel() != self.num_measurements:
            raise ValueError(f"y must hold {self.num_measurements} measurements per image for {self.name}, "
                             f"got shape {tuple(y.shape)}")
        z = y.reshape(y.shape[0], *self.measurement_shape)
        for p in reversed(self.parts):
            z = p.Ap(z)
        return z

    def null_space(self, x: torch.Tensor) -> torch.Tensor:
        x = self._image(x)
        return x - self.A_pinv(self.A(x))

    def __repr__(self):
        return (f"CompositeOperator({self.name!r}: {' -> '.join(self.part_names)}, "
                f"image {self.image_shape}, measurement {self.measurement_shape})")


def build_composite(spec: str, image_size, channels: int = 3, deg_scale=None, mask=None, device="cpu",
                    dtype=torch.float32) -> CompositeOperator:
    """The composite for `spec` ('a+b+c', a named composite, or one part alone).

    image_size: int or (H, W). deg_scale: the SR factor of every sr_* part (default 4).
    mask: the inpainting mask at the inpainting part's input size: a (H, W) 0/1 or bool
    tensor, or anything functions.masks.resolve_mask accepts (None: the default mask)."""
    names = parse_spec(spec)
    h, w = image_hw(image_size)
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels}")
    shape = (int(channels), h, w)
    parts = []
    for name in names:
        if name == "inpainting":
            part = _Mask(shape, mask, device)
        elif name == "colorization":
            part = _Gray(shape)
        elif name == "sr_averagepooling":
            part = _Pool(shape, _factor(deg_scale, shape[1], shape[2], name))
        elif name == "denoising":
            part = _Identity(shape)
        else:
            part = _SVDPart(name, shape, deg_scale, device, dtype)
        parts.append(part)
        shape = part.out_shape
    return CompositeOperator(spec, parts, (int(channels), h, w), device)
