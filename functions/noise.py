"""Injectable sources of the sampler's random draws.

Every draw (x_T, the eta noise, DDRM's noise, noise on y) comes from one of these,
so a run is reproducible and the reference's zero-noise goldens can be replayed.
`PerImageNoise` keeps one generator per image: image i gets the same numbers
whatever the batch size or the number of processes sharing the work.
"""
from typing import Sequence

import numpy as np
import torch


class PerImageNoise:
    def __init__(self, seeds: Sequence[int], device=None):
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.device = device
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape, dtype=torch.float32, std: float = 1.0) -> torch.Tensor:
        """A (B, *shape) draw times std, row i from image i's generator, made on the device.

        Each row is filled in place (the numbers torch.randn(shape, generator=g)
        would give, times std: bit for bit in float32 and float64 for rows of 16 or
        more numbers), so no per-image tensors are allocated and then stacked; the
        scaling happens inside the draw, not in a second pass."""
        out = torch.empty((len(self.generators),) + tuple(shape), device=self.device, dtype=dtype)
        for row, g in zip(out, self.generators):
            row.normal_(0.0, std, generator=g)
        return out

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn_like_scaled(x, 1.0)

    def randn_like_scaled(self, x: torch.Tensor, std: float) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise source has {len(self.generators)} generators for a batch of {x.shape[0]}")
        return self.randn(x.shape[1:], dtype=x.dtype, std=std)


class ZeroNoise:
    """Draws zeros: replays the reference with every randn_like replaced by zeros."""

    def randn_like(self, x):
        return torch.zeros_like(x)


def scaled_randn_like(noise, x: torch.Tensor, std: float) -> torch.Tensor:
    """std times a fresh draw like x, as a new tensor the caller may write into.

    In one pass where the source scales while drawing (`randn_like_scaled`), else
    its randn_like times std: any object with randn_like is a noise source."""
    scaled = getattr(noise, "randn_like_scaled", None)
    if scaled is not None:
        return scaled(x, std)
    return noise.randn_like(x).mul_(std)


def seed_for(seed: int, index: int) -> int:
    """Per-image seed from the run seed and the image's global index in the dataset."""
    return int(seed) * 100003 + int(index)


def measurement_seed(seed: int, index: int) -> int:
    """Seed of the noise added to image `index`'s measurement (--add_noise): a 32-bit value
    mixed from (seed, index) by numpy's SeedSequence, so its stream is not x_T's.

    torch's CPU generator keeps only the low 32 bits of a seed, so an offset such as
    seed_for(...) + 2**32 would repeat x_T's draws: the noise in y would be x_T itself."""
    state = np.random.SeedSequence([int(seed), int(index), 0x6E6F697A]).generate_state(1, np.uint32)
    return int(state[0])
