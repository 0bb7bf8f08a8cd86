"""The forward-process noise levels shared by every sampler.

The reference indexes abar with t = -1 meaning "no noise" (abar = 1) so that the
last reverse step lands exactly on x0; `NoiseLevels.abar(t)` keeps that
convention, with the table built once on the sampling device.
"""
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


class NoiseLevels:
    """abar(t) = prod_{s<=t} (1 - beta_s), with abar(-1) = 1, kept on one device."""

    def __init__(self, betas: torch.Tensor, device=None):
        betas = betas.to(device=device, dtype=torch.float32)
        padded = torch.cat([torch.zeros(1, device=betas.device), betas])
        self._abar = (1 - padded).cumprod(0)  # index t + 1
        self.num_timesteps = betas.numel()

    def abar(self, t: int) -> torch.Tensor:
        """A 0-dim tensor on the sampling device (no host sync)."""
        return self._abar[t + 1]
