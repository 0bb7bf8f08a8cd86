"""Invertible image transforms T used by EquS (this is where the flip is applied).

Each transform is a small object with `__call__` (T) and `inverse` (T^-1) acting on
(B, C, H, W) tensors; they compose and are all orthogonal permutations of pixels,
so T^-1 = T^T. `get_transform("hflip")` and `get_transforms("d4")` turn names from
the command line into objects.
"""
from typing import List, Optional, Sequence, Tuple

import torch


class Transform:
    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self):
        return self.name


Identity = Transform


class Flip(Transform):
    """Mirror along width ('hflip', the official EquS default) or height ('vflip')."""

    def __init__(self, dim: int):
        self.dim = dim
        self.name = "hflip" if dim == -1 else "vflip"

    def __call__(self, x):
        return torch.flip(x, dims=(self.dim,))

    inverse = __call__


class Rotate(Transform):
    """Rotation by a multiple of 90 degrees (counter-clockwise) in the H-W plane."""

    def __init__(self, quarter_turns: int):
        self.k = quarter_turns % 4
        self.name = f"rot{90 * self.k}"

    def __call__(self, x):
        return torch.rot90(x, self.k, dims=(-2, -1))

    def inverse(self, x):
        return torch.rot90(x, -self.k, dims=(-2, -1))


class Shift(Transform):
    """Circular shift by (dy, dx) pixels."""

    def __init__(self, dy: int, dx: int):
        self.dy, self.dx = int(dy), int(dx)
        self.name = f"shift{self.dy}:{self.dx}"

    def __call__(self, x):
        return torch.roll(x, shifts=(self.dy, self.dx), dims=(-2, -1))

    def inverse(self, x):
        return torch.roll(x, shifts=(-self.dy, -self.dx), dims=(-2, -1))


class Compose(Transform):
    """Apply `first`, then `second`; inverse in the opposite order."""

    def __init__(self, first: Transform, second: Transform):
        self.first, self.second = first, second
        self.name = f"{first.name}+{second.name}"

    def __call__(self, x):
        return self.second(self.first(x))

    def inverse(self, x):
        return self.first.inverse(self.second.inverse(x))


def _parse_shift(name: str) -> Tuple[int, int]:
    body = name[len("shift"):].strip(":")
    if not body:
        return 8, 8
    parts = [p for p in body.replace(":", ",").split(",") if p]
    if len(parts) == 1:
        parts = parts * 2
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"transform '{name}': write a shift as shift, shift8 or shift8,16 / shift8:16 (dy, dx in pixels)") from None


TRANSFORM_NAMES = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "shift", "transpose", "antitranspose")


def get_transform(name: str) -> Transform:
    """A single transform from its name; 'shift' takes offsets as shift8 or shift8,16."""
    name = name.strip().lower()
    table = {
        "identity": Transform, "id": Transform,
        "hflip": lambda: Flip(-1), "vflip": lambda: Flip(-2),
        "rot90": lambda: Rotate(1), "rot180": lambda: Rotate(2), "rot270": lambda: Rotate(3),
        "transpose": lambda: Compose(Rotate(1), Flip(-2)),
        "antitranspose": lambda: Compose(Rotate(1), Flip(-1)),
    }
    if name in table:
        return table[name]()
    if name.startswith("shift"):
        return Shift(*_parse_shift(name))
    raise ValueError(f"transform '{name}' is unknown; choose one of: {', '.join(TRANSFORM_NAMES)} "
                     f"(or a set: d4, flips, rotations, 'a,b,c')")


GROUPS = {
    "flips": ("identity", "hflip"),
    "rotations": ("identity", "rot90", "rot180", "rot270"),
    "d4": ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"),
    # the paper's "random": one of flipping, rotation or shift per step
    "random": ("hflip", "rot90", "shift"),
}


def _split_names(spec: str) -> List[str]:
    """'hflip,shift8,16,rot90' -> ['hflip', 'shift8:16', 'rot90']: a number after a shift is its dx."""
    names: List[str] = []
    for token in (t.strip() for t in spec.replace("+", ",").split(",")):
        if not token:
            continue
        dy = names[-1][len("shift"):].strip(":") if names and names[-1].startswith("shift") else ""
        if dy.lstrip("-").isdigit() and token.lstrip("-").isdigit():   # a shift with dy only so far
            names[-1] = f"shift{dy}:{token}"
        else:
            names.append(token)
    return names


def get_transforms(spec: str) -> List[Transform]:
    """A set of transforms: a named group (flips, rotations, d4, random) or a comma list."""
    spec = spec.strip().lower()
    names: Sequence[str] = GROUPS.get(spec) or _split_names(spec)
    if not names:
        raise ValueError("empty transform set; give a group (d4, flips, rotations, random) or names like 'identity,hflip'")
    return [get_transform(n) for n in names]


def first_missing_composition(transforms: Sequence[Transform], size: int) -> Optional[Tuple[str, str]]:
    """(a, b) whose composition a(b(.)) is not in the set on size x size images, or None when the
    set is closed (a group): only then is the average over it an equivariant denoiser."""
    probe = torch.arange(size * size, dtype=torch.float64).reshape(1, 1, size, size)
    images = [T(probe) for T in transforms]
    for a in transforms:
        for b in transforms:
            ab = a(b(probe))
            if not any(torch.equal(ab, img) for img in images):
                return a.name, b.name
    return None
