"""The forward-process noise levels shared by every sampler.

The reference indexes abar with t = -1 meaning "no noise" (abar = 1) so that the
last reverse step lands exactly on x0; `NoiseLevels.abar(t)` keeps that
convention, with the table built once on the sampling device.
"""
import numpy as np
import torch


def make_betas(diffusion_cfg: dict) -> torch.Tensor:
    """Betas from a config's `diffusion` section (the reference's keys), float32 on CPU."""
    schedule = diffusion_cfg.get("beta_schedule", "linear")
    start = float(diffusion_cfg.get("beta_start", 1e-4))
    end = float(diffusion_cfg.get("beta_end", 0.02))
    n = int(diffusion_cfg.get("num_diffusion_timesteps", 1000))
    if schedule == "linear":
        # the reference builds them in float64 with numpy, then casts to float32
        return torch.linspace(start, end, n, dtype=torch.float64).float()
    if schedule == "quad":
        return (torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2).float()
    if schedule == "const":
        return torch.full((n,), end, dtype=torch.float32)
    raise ValueError(f"diffusion.beta_schedule '{schedule}' is not supported; choose one of: linear, quad, const")


def diffuse(x0: torch.Tensor, abar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: a draw of q(x_t | x0) for a given eps, the
    input a denoiser is trained on (its target is eps), and what the sampler's x0 prediction
    (x_t - sqrt(1 - abar) eps) / sqrt(abar) inverts."""
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


class NoiseLevels:
    """abar(t) = prod_{s<=t} (1 - beta_s), with abar(-1) = 1.

    The table is computed once in float32 (the reference's arithmetic) and kept
    twice: as a tensor on the sampling device (`table`), and as Python floats for
    the sampling loop. A step's coefficients are then plain numbers handed to the
    kernels as arguments: no 0-dim tensor arithmetic per step (on a GPU, each such
    op is a kernel launch) and no host sync.
    """

    def __init__(self, betas: torch.Tensor, device=None):
        # float32 factors, products accumulated in float64 and rounded to float32:
        # what torch's CPU cumprod of (1 - betas) computes, without dispatching a tensor op
        one_minus = 1 - np.asarray(betas.tolist(), dtype=np.float32)
        table = np.concatenate([[1.0], np.cumprod(one_minus.astype(np.float64))]).astype(np.float32)
        self._host = table.tolist()  # index t + 1
        self._abar = torch.tensor(self._host, dtype=torch.float32, device=device)
        self.num_timesteps = len(one_minus)

    @property
    def table(self) -> torch.Tensor:
        """abar on the device, indexed by t + 1."""
        return self._abar

    def abar(self, t: int) -> float:
        """abar(t) as a Python float (t = -1 gives 1.0)."""
        return self._host[t + 1]
