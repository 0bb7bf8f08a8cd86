"""benchmarks/reference_operators.py: the official classes' way of computing A and A^+ is the same
operator, so the sampler-overhead benchmark compares the same arithmetic done two ways."""
import pytest
import torch

from benchmarks.reference_operators import reference_style
from functions.operators import DEGRADATIONS, build_operator
from tests.shared import fixture
from tests.test_operators import FIXTURE_OPS, fixture_operator, fixture_tol, max_err

SCALES = {"sr_averagepooling": 4, "sr_bicubic": 4, "cs_walshhadamard": 0.25, "cs_blockbased": 0.25}


@pytest.mark.parametrize("name", list(FIXTURE_OPS))
def test_official_style_operator_reproduces_the_reference_fixture(name):
    f = fixture("operators_64.pt")
    ref = f["ops"][name]
    official = reference_style(fixture_operator(name))
    deg = FIXTURE_OPS[name][0]
    y = official.A(f["x"].reshape(f["x"].shape[0], -1))
    assert y.shape == ref["y"].shape
    assert max_err(y, ref["y"]) <= fixture_tol(deg, "y", ref["y"])
    pinv = official.A_pinv(y)
    assert max_err(pinv, ref["pinv_A_x"].reshape(pinv.shape)) <= fixture_tol(deg, "pinv_A_x", ref["pinv_A_x"])


@pytest.mark.parametrize("deg", DEGRADATIONS)
def test_official_style_operator_is_this_projects_operator(deg):
    """At the benchmark's own settings (seeded random parts, a size other than the fixtures')."""
    op = build_operator(deg, image_size=96 if deg != "cs_walshhadamard" else 128, deg_scale=SCALES.get(deg))
    official = reference_style(op)
    x = torch.randn(2, 3, op.image_size, op.image_size, generator=torch.Generator().manual_seed(1))
    y = op.A(x)
    assert max_err(official.A(x.reshape(2, -1)), y) < 1e-5
    assert max_err(official.A_pinv(y), op.A_pinv(y).reshape(2, -1)) < 1e-5
    # a call leaves its input alone (the official classes clone before they write)
    before = y.clone()
    official.A_pinv(y)
    assert torch.equal(y, before)


def test_official_style_refuses_what_the_official_code_does_not_run():
    with pytest.raises(ValueError, match="float32"):
        reference_style(build_operator("denoising", image_size=8, dtype=torch.float64))
    with pytest.raises(ValueError, match="blur_svd"):
        reference_style(build_operator("deblur_uni", image_size=16, blur_svd="matched"))
