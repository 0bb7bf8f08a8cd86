"""The SVD-free ("simplified") step rule: the reference goldens, its corrected noise mode, EquS."""
import math

import pytest
import torch

from functions.diffusion import NoiseLevels
from functions.noise import PerImageNoise, ZeroNoise
from functions.operators import build_operator
from functions.operators.composite import build_composite
from functions.samplers import DDNMRule, SamplerConfig, SimplifiedRule, make_rule, restore
from tests.gaussian_prior import BETAS, GaussianEps, asymmetric_mean, d4_symmetric_mean
from tests.shared import fixture

# ---------------------------------------------------------------- reference goldens

GOLDEN_OPS = {"mask_color_sr_2": ("mask_color_sr", 2), "sr_averagepooling_4": ("sr_averagepooling", 4),
              "colorization": ("colorization", None), "inpainting": ("inpainting", None)}
GOLDEN_RUNS = ["mask_color_sr_2/simplified_eta0.85_sigma0.04_travel2x2",
               "mask_color_sr_2/simplified_eta0.85_sigma0_travel1x1",
               "sr_averagepooling_4/simplified_eta0.85_sigma0.2_travel1x1",
               "colorization/simplified_eta0.85_sigma0_travel1x1",
               "inpainting/simplified_eta0.85_sigma0_travel1x1"]


def _golden_run(key, **overrides):
    gold = fixture("simplified_goldens_64.pt")
    assert torch.equal(gold["betas"], BETAS)
    op_name, run = key.split("/")
    spec, scale = GOLDEN_OPS[op_name]
    op = build_composite(spec, 64, deg_scale=scale, mask=gold["mask"])
    y = op.A(gold["x_orig"])
    # the reference's measurement (its grey images have 3 equal channels where ours have one)
    assert (y - gold["y"][op_name][:, : op.measurement_shape[0]].reshape(1, -1)).abs().max() <= 1e-6
    sigma = float(run.split("sigma")[1].split("_")[0])
    length, repeat = map(int, run.split("travel")[1].split("x"))
    cfg = SamplerConfig(sampler="simplified", eta=gold["eta"], steps=gold["T_sampling"], sigma_y=sigma,
                        travel_length=length, travel_repeat=repeat, **overrides)
    eps = GaussianEps(gold["prior_mean"], gold["prior_var"])
    return restore(eps, op, y, BETAS, cfg, noise=ZeroNoise(), x_T=gold["x_T"].clone()).x0, gold["runs"][key]


@pytest.mark.parametrize("key", GOLDEN_RUNS)
def test_simplified_goldens(key):
    out, ref = _golden_run(key)
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("key", ["mask_color_sr_2/simplified_eta0.85_sigma0.04_travel2x2",
                                 "sr_averagepooling_4/simplified_eta0.85_sigma0.2_travel1x1"])
def test_corrected_noise_is_not_the_reference(key):
    """The goldens see the quirks: the corrected mode lands well outside their 1e-4 tolerance."""
    out, ref = _golden_run(key, simplified_noise="ddim")
    assert (out - ref).abs().max() > 1e-3


def test_goldens_exercise_both_branches_of_lambda():
    """sigma_y 0.2 (model space): Lambda = 1 at high noise, < 1 (gamma = 0) near the end, 0 at t = -1."""
    op = build_composite("sr_averagepooling", 16)
    rule = SimplifiedRule(op, torch.zeros(1, op.num_measurements), 0.85, 0.2, "reference")
    levels = NoiseLevels(BETAS)
    lam_hi, g_hi = rule.scalars(levels.abar(800))
    lam_lo, g_lo = rule.scalars(levels.abar(0))
    lam_end, g_end = rule.scalars(1.0)
    assert lam_hi == 1 and g_hi > 0 and 0 < lam_lo < 1 and g_lo == 0 and lam_end == 0 and g_end == 0


# ---------------------------------------------------------------- the scalars, against the documented formulas

@pytest.mark.parametrize("abar_next,sigma_y", [(0.3, 0.0), (0.3, 0.2), (0.999, 0.2), (0.9999, 0.04), (1.0, 0.0)])
def test_scalars(abar_next, sigma_y):
    op = build_composite("colorization", 8)
    ref = SimplifiedRule(op, torch.zeros(1, op.num_measurements), 0.85, sigma_y, "reference")
    ddim = SimplifiedRule(op, torch.zeros(1, op.num_measurements), 0.85, sigma_y, "ddim")
    s_ref, s_ddim = math.sqrt(1 - abar_next ** 2), math.sqrt(1 - abar_next)
    c_ref, c_ddim = abar_next * sigma_y, math.sqrt(abar_next) * sigma_y
    lam, g = ref.scalars(abar_next)
    if s_ref >= c_ref:
        assert lam == 1 and g == pytest.approx(math.sqrt(s_ref ** 2 - c_ref ** 2) * s_ddim, abs=1e-12)
    else:
        assert lam == pytest.approx(s_ref / c_ref) and g == 0
    lam, g = ddim.scalars(abar_next)
    if s_ddim >= c_ddim:
        assert lam == 1 and g == pytest.approx(math.sqrt(s_ddim ** 2 - c_ddim ** 2), abs=1e-12)
    else:
        assert lam == pytest.approx(s_ddim / c_ddim) and g == 0


# ---------------------------------------------------------------- the corrected mode is DDNM at sigma_y = 0

SIZE = 16


def _problem(op, seed=1):
    x = asymmetric_mean(SIZE, seed=seed).repeat(2, 1, 1, 1)
    x = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x, op.A(x)


@pytest.mark.parametrize("op", [build_composite("colorization+sr_averagepooling", SIZE, deg_scale=2),
                                build_composite("mask_color_sr", SIZE, deg_scale=2, mask="box:0.3"),
                                build_operator("sr_averagepooling", image_size=SIZE, deg_scale=4)],
                         ids=["colorization+sr", "mask_color_sr", "svd_sr4"])
def test_ddim_mode_at_zero_sigma_is_ddnm_bit_for_bit(op):
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    _, y = _problem(op)
    cfg = SamplerConfig(steps=8, eta=0.85, travel_length=2, travel_repeat=2)
    ddnm = restore(eps, op, y, BETAS, cfg, seeds=[3, 4]).x0
    cfg.sampler, cfg.simplified_noise = "simplified", "ddim"
    assert isinstance(make_rule(cfg, op, y), SimplifiedRule)
    simplified = restore(eps, op, y, BETAS, cfg, seeds=[3, 4]).x0
    assert torch.equal(ddnm, simplified)
    # the reference's loop is not DDNM even without noise in y
    cfg.simplified_noise = "reference"
    assert (restore(eps, op, y, BETAS, cfg, seeds=[3, 4]).x0 - ddnm).abs().max() > 1e-2


def test_simplified_on_an_svd_operator_matches_its_composite_form():
    """sr_averagepooling as an SVD operator and as pooling / MeanUpsample: the same rule, the same run."""
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    svd = build_operator("sr_averagepooling", image_size=SIZE, deg_scale=4)
    comp = build_composite("sr_averagepooling", SIZE, deg_scale=4)
    x, y = _problem(comp)
    cfg = SamplerConfig(sampler="simplified", steps=8, sigma_y=0.1)
    a = restore(eps, svd, svd.A(x), BETAS, cfg, seeds=[5, 6]).x0
    b = restore(eps, comp, y, BETAS, cfg, seeds=[5, 6]).x0
    assert (a - b).abs().max() <= 1e-5


# ---------------------------------------------------------------- composition with EquS and time travel

@pytest.mark.parametrize("mode", ["reference", "ddim"])
@pytest.mark.parametrize("equs,schedule", [(None, "uniform"), ("alternate", "uniform"), ("alternate", "tas")])
def test_noise_free_simplified_is_data_consistent(mode, equs, schedule):
    """At t = -1 Lambda = 1 and no noise is added: A x = y wherever Ap is exact, with or without EquS."""
    op = build_composite("colorization+sr_averagepooling", SIZE, deg_scale=2)
    eps = GaussianEps(asymmetric_mean(SIZE), 0.25)
    _, y = _problem(op, seed=2)
    cfg = SamplerConfig(sampler="simplified", simplified_noise=mode, steps=8, equs=equs, schedule=schedule,
                        travel_length=2, travel_repeat=2)
    out = restore(eps, op, y, BETAS, cfg, seeds=[1, 2]).x0
    assert (op.A(out) - y).abs().max() <= 1e-5


def test_consistent_equs_equals_plain_simplified_for_a_symmetric_prior():
    """EquS is a denoiser wrapper: with a mirror-symmetric prior it changes nothing, under this rule too."""
    op = build_composite("inpainting+colorization", SIZE, mask="box:0.25")
    eps = GaussianEps(d4_symmetric_mean(SIZE), 0.3)
    _, y = _problem(op, seed=3)
    plain = SamplerConfig(sampler="simplified", steps=10, sigma_y=0.05)
    equs = SamplerConfig(sampler="simplified", steps=10, sigma_y=0.05, equs="alternate", eps_mapping="consistent")
    a = restore(eps, op, y, BETAS, plain, seeds=[7, 8]).x0
    b = restore(eps, op, y, BETAS, equs, seeds=[7, 8]).x0
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("mapping", ["official", "consistent"])
def test_equs_changes_the_simplified_run_for_an_asymmetric_prior(mapping):
    op = build_composite("inpainting+colorization", SIZE, mask="box:0.25")
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    _, y = _problem(op, seed=3)
    plain = SamplerConfig(sampler="simplified", steps=10)
    equs = SamplerConfig(sampler="simplified", steps=10, equs="alternate", eps_mapping=mapping)
    a = restore(eps, op, y, BETAS, plain, seeds=[7, 8]).x0
    b = restore(eps, op, y, BETAS, equs, seeds=[7, 8]).x0
    assert (a - b).abs().max() > 1e-2


# ---------------------------------------------------------------- refusals

def test_refusals():
    op = build_composite("mask_color_sr", SIZE, deg_scale=2, mask="box:0.25")
    y = torch.zeros(1, op.num_measurements)
    with pytest.raises(ValueError, match="simplified_noise"):
        make_rule(SamplerConfig(sampler="simplified", simplified_noise="ddpm"), op, y)
    with pytest.raises(ValueError, match=r"y must be \(batch, 64\)"):
        make_rule(SamplerConfig(sampler="simplified"), op, torch.zeros(1, 3 * 8 * 8))
    # DDNM+ and DDRM need an SVD: a composite says which sampler to use
    for cfg in (SamplerConfig(sigma_y=0.1), SamplerConfig(sampler="ddnm_plus"), SamplerConfig(sampler="ddrm")):
        with pytest.raises(ValueError, match="use sampler 'simplified'"):
            make_rule(cfg, op, y)
    assert isinstance(make_rule(SamplerConfig(), op, y), DDNMRule)     # noise-free DDNM needs only A^+


def test_oldphoto_config_is_celeba_hq_with_time_travel():
    """The reference's oldphoto.yml: the CelebA-HQ model and checkpoint, T_sampling 100, time travel 2 x 2."""
    from guided_diffusion.models import load_config
    old, celeba = load_config("oldphoto.yml"), load_config("celeba_hq.yml")
    assert old["model"] == celeba["model"] and old["diffusion"] == celeba["diffusion"]
    assert old["data"]["image_size"] == 256 and old["sampling"]["batch_size"] == 1
    assert old["time_travel"] == {"T_sampling": 100, "travel_length": 2, "travel_repeat": 2}
