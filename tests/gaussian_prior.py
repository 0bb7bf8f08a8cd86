"""Analytic priors for sampler tests: a Gaussian N(mean, var I) has an exact noise predictor.

eps(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mean) / (abar_t var + 1 - abar_t)
(the same denoiser that made the reference goldens).
"""
import torch

from functions.diffusion import make_betas, NoiseLevels

BETAS = make_betas({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_diffusion_timesteps": 1000})


class GaussianEps:
    """var: one variance for every pixel (a float), or a tensor of per-pixel variances that
    broadcasts against the image (then the measured part of x0 feeds into the unmeasured part)."""

    def __init__(self, mean: torch.Tensor, var, betas: torch.Tensor = BETAS):
        self.mean = mean
        self.var = var if isinstance(var, torch.Tensor) else float(var)
        self.abar = NoiseLevels(betas, device=mean.device).table.to(mean.dtype)
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        a = self.abar[t.long() + 1].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / (a * self.var + 1 - a)


def asymmetric_mean(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth mean with a left-right gradient: not invariant under any flip or rotation."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.6, 0.6, size)
    base = ramp.view(1, 1, 1, size) + 0.3 * ramp.view(1, 1, size, 1) ** 2
    return base.expand(1, channels, size, size) + 0.1 * torch.randn(1, channels, size, size, generator=g)


def d4_symmetric_mean(size: int, channels: int = 3) -> torch.Tensor:
    """A mean invariant under all 8 rotations and flips (a function of the folded coordinates)."""
    idx = torch.arange(size)
    folded = torch.minimum(idx, size - 1 - idx).float() / size
    f = torch.cos(6 * folded)
    m = f.view(size, 1) * f.view(1, size) + 0.2 * (f.view(size, 1) + f.view(1, size))
    return (m - m.mean()).expand(1, channels, size, size).clone() * torch.tensor([0.5, 0.3, -0.2]).view(1, 3, 1, 1)[:, :channels]
