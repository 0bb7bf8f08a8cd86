"""The forward process: beta schedules (the reference's formulas) and q(x_t | x0)."""
import numpy as np
import pytest
import torch

from functions.diffusion import NoiseLevels, diffuse, make_betas
from functions.equivariance import predict_x0


@pytest.mark.parametrize("schedule", ["linear", "quad", "const"])
def test_betas_follow_the_reference_formulas(schedule):
    """DDIM / DDNM's get_beta_schedule, built in float64 with numpy and cast to float32."""
    start, end, n = 1e-4, 0.02, 1000
    expected = {"linear": np.linspace(start, end, n, dtype=np.float64),
                "quad": np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2,
                "const": end * np.ones(n)}[schedule].astype(np.float32)
    betas = make_betas({"beta_schedule": schedule, "beta_start": start, "beta_end": end, "num_diffusion_timesteps": n})
    assert betas.dtype == torch.float32 and torch.equal(betas, torch.from_numpy(expected))


def test_an_unknown_beta_schedule_is_named_in_the_error():
    with pytest.raises(ValueError, match="cosine.*linear, quad, const"):
        make_betas({"beta_schedule": "cosine"})


def test_abar_is_the_cumulative_product_with_abar_minus_one_equal_to_one():
    betas = make_betas({})
    levels = NoiseLevels(betas)
    assert levels.abar(-1) == 1.0
    expected = np.cumprod(1 - betas.double().numpy())
    for t in (0, 1, 499, 999):
        assert levels.abar(t) == pytest.approx(expected[t], rel=1e-6)


def test_diffuse_is_what_the_x0_prediction_inverts_and_has_the_forward_variance():
    """Training noises x0 with diffuse; sampling predicts x0 back from (x_t, eps): the two agree,
    and for x0 = 0 the draw has variance 1 - abar."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    abar = torch.tensor([0.999, 0.7, 0.2, 0.01], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = diffuse(x0, abar, eps)
    assert torch.allclose(predict_x0(x_t, eps, abar), x0, atol=1e-10, rtol=0)
    noise_only = diffuse(torch.zeros(4, 3, 64, 64, dtype=torch.float64), abar,
                         torch.randn(4, 3, 64, 64, generator=g, dtype=torch.float64))
    var = noise_only.var(dim=(1, 2, 3))
    assert torch.allclose(var, 1 - abar.flatten(), rtol=0.05)
