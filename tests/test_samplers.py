"""Samplers against the reference goldens and analytic-prior invariants."""
import pytest
import torch

from functions.noise import ZeroNoise, PerImageNoise
from functions.operators import DEGRADATIONS, build_operator
from functions.samplers import DDNMPlusRule, DDNMRule, SamplerConfig, make_rule, restore
from tests.reference_blur import reference_machine_angle, rotated_blur
from tests.gaussian_prior import BETAS, GaussianEps, asymmetric_mean, d4_symmetric_mean
from tests.shared import fixture

# ---------------------------------------------------------------- reference goldens


def _golden_setup():
    gold = fixture("sampler_goldens_64.pt")
    ops = fixture("operators_64.pt")["inputs"]
    assert torch.equal(gold["betas"], BETAS), "the project's linear betas must equal the reference's"
    return gold, ops, GaussianEps(gold["prior_mean"], gold["prior_var"])


def _golden_operator(name, inputs):
    if name == "sr_averagepooling_4":
        return build_operator("sr_averagepooling", image_size=64, deg_scale=4)
    if name == "cs_walshhadamard_0.25":
        return build_operator("cs_walshhadamard", image_size=64, deg_scale=0.25, perm=inputs["perm"])
    if name == "inpainting":
        return build_operator("inpainting", image_size=64, mask=inputs["inpainting_mask_64"])
    if name == "deblur_gauss":
        # the reference machine's basis inside the blur's near-degenerate singular pair
        # (tests/reference_blur.py); this machine's LAPACK picks another one
        return rotated_blur(reference_machine_angle())
    raise KeyError(name)


METHODS = {"ddnm": dict(), "equs": dict(equs="alternate"), "equs_plus": dict(equs="alternate", schedule="tas")}


@pytest.mark.parametrize("key", ["sr_averagepooling_4/ddnm", "sr_averagepooling_4/equs", "sr_averagepooling_4/equs_plus",
                                 "cs_walshhadamard_0.25/ddnm", "cs_walshhadamard_0.25/equs",
                                 "cs_walshhadamard_0.25/equs_plus"])
def test_deterministic_goldens(key):
    gold, inputs, eps = _golden_setup()
    op_name, method = key.split("/")
    op = _golden_operator(op_name, inputs)
    cfg = SamplerConfig(eta=gold["eta"], steps=gold["T_sampling"], **METHODS[method])
    out = restore(eps, op, op.A(gold["x_orig"]), BETAS, cfg, noise=ZeroNoise(), x_T=gold["x_T"].clone()).x0
    assert (out - gold["runs"][key]).abs().max() <= 1e-4


ZERO_NOISE_RUNS = [f"{op}/{run}" for op in ("sr_averagepooling_4", "inpainting", "deblur_gauss") for run in (
    "ddnm_eta0.85", "ddnm_eta0.85_travel2x3", "ddnm_plus_eta0.85_sigma0.2", "equs_eta0.85", "equs_plus_eta0.85",
    "equs_ddnm_plus_eta0.85_sigma0.2", "ddrm_etaB1_eta0.85_sigma0.0", "ddrm_etaB1_eta0.85_sigma0.2")]


def _zero_noise_config(run: str, T: int) -> SamplerConfig:
    cfg = SamplerConfig(eta=0.85, steps=T)
    if run.startswith("ddrm"):
        cfg.sampler, cfg.etaB = "ddrm", 1.0
    if "equs" in run:
        cfg.equs = "alternate"
    if "equs_plus" in run:
        cfg.schedule = "tas"
    if "travel2x3" in run:
        cfg.travel_length, cfg.travel_repeat = 2, 3
    return cfg


@pytest.mark.parametrize("key", ZERO_NOISE_RUNS)
def test_zero_noise_goldens(key):
    gold, inputs, eps = _golden_setup()
    zero = fixture("sampler_zero_noise_goldens_64.pt")
    op_name, run = key.split("/")
    op = _golden_operator(op_name, inputs)
    y = op.A(gold["x_orig"])
    cfg = _zero_noise_config(run, zero["T_sampling"])
    if run.endswith("sigma0.2"):
        cfg.sigma_y = zero["sigma_y"]
        y = y + zero["sigma_y"] * zero["noise_y"][op_name].reshape(y.shape)
    out = restore(eps, op, y, BETAS, cfg, noise=ZeroNoise(), x_T=gold["x_T"].clone()).x0
    # The reference's DDNM+ noise term on the blur amplifies some coordinates up to
    # ~4000x (functions/operators/deblur.py), and with them float32 rounding: 2e-4 there.
    tol = 2e-4 if op_name == "deblur_gauss" and "plus" in run and "sigma0.2" in run else 1e-4
    assert (out - zero["runs"][key]).abs().max() <= tol


def test_deblur_goldens_differ_only_by_the_lapack_basis():
    """With this machine's own SVD the deblur runs stay within 3e-3 of the goldens: the
    whole difference is the basis inside one near-degenerate singular pair."""
    gold, inputs, eps = _golden_setup()
    zero = fixture("sampler_zero_noise_goldens_64.pt")
    op = build_operator("deblur_gauss", image_size=64)
    out = restore(eps, op, op.A(gold["x_orig"]), BETAS, _zero_noise_config("ddnm_eta0.85", 10),
                  noise=ZeroNoise(), x_T=gold["x_T"].clone()).x0
    assert (out - zero["runs"]["deblur_gauss/ddnm_eta0.85"]).abs().max() <= 3e-3


# ---------------------------------------------------------------- analytic-prior invariants

SIZE = 32


def _op(name, size=SIZE, **kw):
    scale = {"sr_averagepooling": 4, "sr_bicubic": 4, "cs_walshhadamard": 0.25, "cs_blockbased": 0.25}.get(name)
    return build_operator(name, image_size=size, deg_scale=scale, **kw)


@pytest.mark.parametrize("deg", DEGRADATIONS)
def test_noise_free_ddnm_is_data_consistent(deg):
    """A x = y to 1e-4 at the end of noise-free DDNM, before any clipping, for every operator."""
    torch.manual_seed(0)
    op = _op(deg)
    eps = GaussianEps(asymmetric_mean(SIZE), 0.25)
    x = asymmetric_mean(SIZE, seed=1).repeat(2, 1, 1, 1) + 0.2 * torch.randn(2, 3, SIZE, SIZE)
    y = op.A(x)
    out = restore(eps, op, y, BETAS, SamplerConfig(steps=8, eta=0.85), seeds=[3, 4]).x0
    assert (op.A(out) - y).abs().max() <= 1e-4


def _run_pair(prior_mean, cfg_a, cfg_b, deg="sr_averagepooling"):
    op = _op(deg)
    eps = GaussianEps(prior_mean, 0.3)
    x = asymmetric_mean(SIZE, seed=2)
    y = op.A(x)
    a = restore(eps, op, y, BETAS, cfg_a, seeds=[7]).x0
    b = restore(eps, op, y, BETAS, cfg_b, seeds=[7]).x0
    return a, b


def test_consistent_equs_equals_ddnm_for_a_mirror_symmetric_prior():
    sym = d4_symmetric_mean(SIZE)
    a, b = _run_pair(sym, SamplerConfig(steps=10), SamplerConfig(steps=10, equs="alternate", eps_mapping="consistent"))
    assert (a - b).abs().max() <= 1e-5


def test_official_equs_differs_from_consistent_one_even_for_a_symmetric_prior():
    """The official update uses the flipped eps with the unflipped x_t: not the same trajectory."""
    sym = d4_symmetric_mean(SIZE)
    a, b = _run_pair(sym, SamplerConfig(steps=10, equs="alternate", eps_mapping="official"),
                     SamplerConfig(steps=10, equs="alternate", eps_mapping="consistent"))
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("group", ["flips", "d4"])
def test_average_mode_equals_plain_denoiser_for_a_symmetric_prior(group):
    sym = d4_symmetric_mean(SIZE)
    a, b = _run_pair(sym, SamplerConfig(steps=10), SamplerConfig(steps=10, equs="average", transform=group))
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("equs,mapping", [("alternate", "consistent"), ("alternate", "official"), ("average", "official")])
def test_equs_differs_from_ddnm_for_an_asymmetric_prior(equs, mapping):
    a, b = _run_pair(asymmetric_mean(SIZE), SamplerConfig(steps=10),
                     SamplerConfig(steps=10, equs=equs, eps_mapping=mapping, transform="flips" if equs == "average" else "hflip"))
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("cfg,expected", [
    (SamplerConfig(steps=12), 12),
    (SamplerConfig(steps=12, equs="alternate"), 12),
    (SamplerConfig(steps=12, equs="alternate", transform="random"), 12),
    (SamplerConfig(steps=12, equs="average", transform="flips"), 24),
    (SamplerConfig(steps=12, equs="average", transform="d4"), 96),
    (SamplerConfig(steps=100, schedule="tas"), 100),
    (SamplerConfig(steps=100, schedule="tas_dedup"), 97),
])
def test_nfe(cfg, expected):
    """Alternate EquS adds no NFE; the average mode counts every copy; TAS dedup saves the repeated t=0."""
    op = _op("inpainting", size=16)
    eps = GaussianEps(asymmetric_mean(16), 0.3)
    res = restore(eps, op, op.A(asymmetric_mean(16, seed=5)), BETAS, cfg, seeds=[0])
    assert res.nfe == expected
    # the average mode batches its copies: one model call per step
    assert eps.calls == len([s for s in res.schedule if s.is_reverse])


@pytest.mark.parametrize("cfg", [
    SamplerConfig(steps=6, eta=0.85),
    SamplerConfig(steps=6, eta=0.85, sigma_y=0.1, equs="alternate", schedule="tas"),
    SamplerConfig(steps=6, sampler="ddrm", sigma_y=0.1, equs="alternate", transform="random"),
    SamplerConfig(steps=6, eta=0.5, travel_length=2, travel_repeat=2, equs="average", transform="flips"),
])
def test_batch_size_does_not_change_results(cfg):
    op = _op("deblur_gauss")
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    x = asymmetric_mean(SIZE, seed=9).repeat(4, 1, 1, 1) + 0.1 * torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    y = op.A(x)
    seeds = [11, 12, 13, 14]
    batch = restore(eps, op, y, BETAS, cfg, seeds=seeds).x0
    singles = torch.cat([restore(eps, op, y[i:i + 1], BETAS, cfg, seeds=[s]).x0 for i, s in enumerate(seeds)])
    assert torch.allclose(batch, singles, atol=1e-5, rtol=0)
    # the same measurement with two seeds gives two samples, and a seed repeated gives one
    twice = restore(eps, op, y[:1].repeat(3, 1), BETAS, cfg, seeds=[11, 12, 11]).x0
    assert (twice[0] - twice[1]).abs().max() > 1e-3
    assert torch.equal(twice[0], twice[2])


def test_per_image_noise_rows_are_each_seeds_own_stream():
    """Row i is what torch.randn gives image i's seed, whatever else shares the batch."""
    seeds = [7, 3, 11]
    batch = PerImageNoise(seeds).randn((3, 5, 4))
    for i, s in enumerate(seeds):
        alone = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(s))
        assert torch.equal(batch[i], alone)
    assert torch.equal(PerImageNoise([3]).randn((3, 5, 4))[0], batch[1])


def test_noisy_y_always_runs_ddnm_plus():
    op = _op("sr_averagepooling")
    y = op.A(asymmetric_mean(SIZE))
    for equs in (None, "alternate", "average"):
        assert isinstance(make_rule(SamplerConfig(sigma_y=0.1, equs=equs), op, y), DDNMPlusRule)
    assert not isinstance(make_rule(SamplerConfig(sigma_y=0.0), op, y), DDNMPlusRule)


@pytest.mark.parametrize("deg", ["sr_averagepooling", "inpainting", "cs_walshhadamard"])
def test_ddnm_plus_with_zero_sigma_y_is_ddnm(deg):
    """With the SVD-derived Lambda (lambda_mode='svd'), DDNM+ at sigma_y = 0 is DDNM.
    (The reference's own average-pooling noise term scales raw patch pixels, so in
    'reference' mode it is not; see functions/operators/super_resolution.py.)"""
    op = _op(deg, lambda_mode="svd")
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    y = op.A(asymmetric_mean(SIZE, seed=4))
    a = restore(eps, op, y, BETAS, SamplerConfig(steps=8, eta=0.85), seeds=[5]).x0
    b = restore(eps, op, y, BETAS, SamplerConfig(steps=8, eta=0.85, sampler="ddnm_plus"), seeds=[5]).x0
    assert (a - b).abs().max() <= 1e-5


def test_float64_and_device_are_kept():
    op = _op("colorization", dtype=torch.float64)
    mean = asymmetric_mean(SIZE).double()
    eps = GaussianEps(mean, 0.3)
    y = op.A(mean)
    seen = []
    out = restore(eps, op, y, BETAS, SamplerConfig(steps=4), seeds=[0],
                  callback=lambda i, step, x, x0: seen.append((x.dtype, x.device))).x0
    assert out.dtype == torch.float64 and out.device == y.device
    assert len(seen) == 4 and all(d == (torch.float64, y.device) for d in seen)


def test_bad_sampler_settings_raise_clear_errors():
    op = _op("denoising")
    y = op.A(asymmetric_mean(SIZE))
    eps = GaussianEps(asymmetric_mean(SIZE), 0.3)
    with pytest.raises(ValueError, match="sampler 'nope' is unknown; choose one of: ddnm, ddnm_plus, ddrm"):
        restore(eps, op, y, BETAS, SamplerConfig(sampler="nope"), seeds=[0])
    with pytest.raises(ValueError, match="sigma_y must be >= 0"):
        restore(eps, op, y, BETAS, SamplerConfig(sigma_y=-1), seeds=[0])
    with pytest.raises(ValueError, match="EquS mode 'sometimes' is unknown"):
        restore(eps, op, y, BETAS, SamplerConfig(equs="sometimes"), seeds=[0])
    with pytest.raises(ValueError, match="eps_mapping 'both' is unknown"):
        restore(eps, op, y, BETAS, SamplerConfig(equs="alternate", eps_mapping="both"), seeds=[0])


def test_corrected_ddnm_plus_fixes_noisy_gaussian_deblurring():
    """The reference's DDNM+ formulas on deblur_gauss mis-scale the noise (up to ~4000x on some
    coordinates; functions/operators/deblur.py): on the goldens' Gaussian problem with noisy y
    (sigma 0.2, 4 seeds) it ends 3.5x farther from x than DDRM, the public "noisy deblurring
    gives PSNR < 10" report. lambda_mode='svd' (Lambda from the operator's own SVD) brings
    DDNM+ level with DDRM; on average-pooling SR, where the reference is sound, the modes agree."""
    gold = fixture("sampler_goldens_64.pt")
    eps = GaussianEps(gold["prior_mean"], gold["prior_var"])
    x = gold["x_orig"]

    def mse(op, sampler):
        errs = []
        for s in range(4):
            y = op.A(x)
            y = y + 0.2 * torch.randn(y.shape, generator=torch.Generator().manual_seed(100 + s))
            out = restore(eps, op, y, BETAS, SamplerConfig(sampler=sampler, sigma_y=0.2, steps=10), seeds=[s]).x0
            errs.append(float((out - x).pow(2).mean()))
        return sum(errs) / len(errs)

    reference = build_operator("deblur_gauss", image_size=64, lambda_mode="reference")
    corrected = build_operator("deblur_gauss", image_size=64, lambda_mode="svd")
    ddrm = mse(reference, "ddrm")
    assert mse(reference, "ddnm") > 3 * ddrm
    assert mse(corrected, "ddnm") < 1.05 * ddrm
    pool_ref = build_operator("sr_averagepooling", image_size=64, deg_scale=4, lambda_mode="reference")
    pool_svd = build_operator("sr_averagepooling", image_size=64, deg_scale=4, lambda_mode="svd")
    assert abs(mse(pool_ref, "ddnm") - mse(pool_svd, "ddnm")) < 0.02


def test_clip_x0_bounds_the_null_space_and_keeps_consistency():
    """A prior whose mean lies far outside the image range in the chroma (colorization's
    null space): without clipping the result's chroma follows it out of range; with
    clip_x0 every x0 the step rule sees is in [-1, 1], the result stays near the range,
    and A x = y still holds (the projection comes after the clip)."""
    op = _op("colorization")
    chroma = torch.tensor([3.0, 0.0, -3.0]).view(1, 3, 1, 1)  # zero grey component: invisible to A
    eps = GaussianEps(chroma.expand(1, 3, SIZE, SIZE).clone(), 0.05)
    x = asymmetric_mean(SIZE, seed=1).clamp(-0.9, 0.9)
    y = op.A(x)
    seen = []
    plain = restore(eps, op, y, BETAS, SamplerConfig(steps=10), seeds=[0]).x0
    clipped = restore(eps, op, y, BETAS, SamplerConfig(steps=10, clip_x0=True), seeds=[0],
                      callback=lambda i, step, x_t, x0: seen.append(x0)).x0
    assert plain.abs().max() > 2.5                      # the prior drags the unclipped chroma out of range
    assert clipped.abs().max() < 1.5                    # clip + projection keep it near the range
    assert (op.A(clipped) - y).abs().max() <= 1e-4      # still data-consistent
    assert (op.A(plain) - y).abs().max() <= 1e-4
    assert len(seen) == 10


def test_clip_x0_flag_and_config_default_reach_the_sampler():
    from runners import cli
    from runners.restoration import _sampler_config

    base = ["--config", "demo.yml", "--deg", "sr_bicubic", "--path_y", "demo"]
    parse = cli.build_parser().parse_args
    assert _sampler_config(parse(base), {}).clip_x0 is False                       # reference default: off
    assert _sampler_config(parse(base + ["--clip_x0"]), {}).clip_x0 is True
    assert _sampler_config(parse(base), {"sampling": {"clip_x0": True}}).clip_x0 is True


def test_time_travel_flags_override_the_config_and_refuse_zero():
    from runners import cli
    from runners.errors import InputError
    from runners.restoration import _sampler_config

    base = ["--config", "demo.yml", "--deg", "inpainting", "--path_y", "demo", "--steps", "10"]
    parse = cli.build_parser().parse_args
    travel = {"time_travel": {"travel_length": 3, "travel_repeat": 2}}
    cfg = _sampler_config(parse(base), travel)
    assert (cfg.travel_length, cfg.travel_repeat) == (3, 2)                    # the config's, as the reference
    cfg = _sampler_config(parse(base + ["--travel_length", "2", "--travel_repeat", "4"]), travel)
    assert (cfg.travel_length, cfg.travel_repeat) == (2, 4)
    assert (_sampler_config(parse(base), {}).travel_length, _sampler_config(parse(base), {}).travel_repeat) == (1, 1)
    with pytest.raises(InputError, match="--travel_repeat must be >= 1"):
        _sampler_config(parse(base + ["--travel_repeat", "0"]), {})


def test_sampling_keeps_no_autograd_graph_even_for_a_trainable_model():
    """A model whose weights require grad (a library user's nn.Module) must not make the loop keep
    every step's activations: the result carries no graph."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    op = _op("inpainting")
    y = op.A(asymmetric_mean(SIZE))
    out = restore(lambda x, t: conv(x), op, y, BETAS, SamplerConfig(steps=5), seeds=[0]).x0
    assert conv.weight.requires_grad and not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("eta", [0.0, 0.85])
def test_a_float64_run_stays_float64_whatever_eta(eta):
    """The model's eps is float32; a float64 operator and x_T keep the trajectory in float64."""
    op = _op("sr_averagepooling", dtype=torch.float64)
    mean = asymmetric_mean(SIZE).double()
    eps = GaussianEps(mean.float(), 0.3)
    y = op.A(mean)
    x_T = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = restore(eps, op, y, BETAS, SamplerConfig(steps=6, eta=eta), seeds=[0], x_T=x_T).x0
    assert out.dtype == torch.float64
    assert (op.A(out) - y).abs().max() <= 1e-10      # consistent to double precision


def _official_ddnm_with_time_travel(eps_model, op, y, x_T, steps, length, repeat, eta=0.85):
    """The official DDNM loop (ddnm_diffusion) written out with zero noise: x0_preds keeps x0_t, the
    model's prediction before the projection, and a jump back in time re-noises x0_preds[-1]."""
    from functions.diffusion import NoiseLevels
    from functions.schedules import jump_units

    levels, skip = NoiseLevels(BETAS), 1000 // steps
    units = jump_units(steps, length, repeat)
    xs, x0_preds = [x_T], []
    for i, j in zip(units[:-1], units[1:]):
        t, t_next = i * skip, max(j * skip, -1)
        at, at_next = levels.abar(t), levels.abar(t_next)
        if j < i:
            xt = xs[-1]
            et = eps_model(xt, torch.full((xt.shape[0],), float(t)))
            x0_t = (xt - et * (1 - at) ** 0.5) / at ** 0.5
            x0_t_hat = x0_t - op.A_pinv(op.A(x0_t) - y)
            xs.append(at_next ** 0.5 * x0_t_hat + (1 - at_next) ** 0.5 * (1 - eta ** 2) ** 0.5 * et)
            x0_preds.append(x0_t)
        else:
            xs.append(at_next ** 0.5 * x0_preds[-1])
    return xs[-1]


@pytest.mark.parametrize("deg", ["sr_averagepooling", "colorization"])   # A mixes pixels / channels
def test_time_travel_renoises_the_raw_x0_prediction_as_the_official_ddnm(deg):
    """A prior with one variance for every pixel (the goldens') cannot tell re-noising x0_t from
    re-noising x0_hat: what A measures never feeds back into what it does not. Per-pixel
    variances can; there the default must follow the official loop and x0_hat must differ."""
    size, g = 16, torch.Generator().manual_seed(1)
    op = _op(deg, size=size)
    mean = asymmetric_mean(size)
    eps = GaussianEps(mean, 0.05 + torch.rand(1, 3, size, size, generator=g))
    y = op.A(mean + 0.3 * torch.randn(1, 3, size, size, generator=g))
    x_T = torch.randn(1, 3, size, size, generator=g)
    official = _official_ddnm_with_time_travel(eps, op, y, x_T, steps=10, length=2, repeat=3)

    def run(**kw):
        return restore(eps, op, y, BETAS, SamplerConfig(steps=10, **kw), noise=ZeroNoise(), x_T=x_T).x0

    assert (run(travel_length=2, travel_repeat=3) - official).abs().max() < 1e-5
    assert (run(travel_length=2, travel_repeat=3, travel_from="x0_hat") - official).abs().max() > 1e-3
    assert torch.equal(run(travel_from="x0"), run(travel_from="x0_hat"))      # no jump, nothing re-noised
    with pytest.raises(ValueError, match="travel_from"):
        run(travel_length=2, travel_repeat=3, travel_from="x_t")


def test_travel_from_reaches_the_sampler_and_the_run_settings_only_with_travel():
    from runners import cli
    from runners.restoration import _sampler_config, _travels

    base = ["--config", "demo.yml", "--deg", "inpainting", "--path_y", "demo", "--steps", "10"]
    parse = cli.build_parser().parse_args
    assert _sampler_config(parse(base), {}).travel_from == "x0"                 # the official DDNM's
    assert _sampler_config(parse(base + ["--travel_from", "x0_hat"]), {}).travel_from == "x0_hat"
    assert not _travels(_sampler_config(parse(base), {}), {})
    assert _travels(_sampler_config(parse(base + ["--travel_length", "2", "--travel_repeat", "2"]), {}), {})
    assert not _travels(_sampler_config(parse(base + ["--travel_length", "10", "--travel_repeat", "2"]), {}), {})


@pytest.mark.parametrize("steps,kind", [(5, "tas"), (5, "uniform"), (100, "uniform")])
def test_first_step_error_gain_is_what_a_step_does_to_an_eps_error(steps, kind):
    """An error d in the first eps prediction, inside the operator's null space, reaches x_{t_next}
    multiplied by first_step_error_gain (eta 1: the step adds no eps term of its own)."""
    from functions.diffusion import NoiseLevels
    from functions.samplers import DDNMRule, first_step_error_gain
    from functions.schedules import build_schedule

    levels = NoiseLevels(BETAS)
    schedule = build_schedule(steps, kind)
    first = schedule[0]
    a_t, a_next = levels.abar(first.t), levels.abar(first.t_next)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    op = build_operator("inpainting", image_size=8, mask=mask)
    g = torch.Generator().manual_seed(0)
    x_t, eps, d = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(3))
    y = op.A(torch.randn(1, 3, 8, 8, generator=g))
    rule = DDNMRule(op, y, eta=1.0)

    def step(e):
        x0 = (x_t - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
        return rule.step(x_t, x0, e, a_t, a_next, ZeroNoise())[0]

    change = (step(eps + d) - step(eps))[..., 2:6, 2:6]
    gain = first_step_error_gain(schedule, levels)
    assert torch.allclose(change.abs(), gain * d[..., 2:6, 2:6].abs(), rtol=1e-3, atol=1e-5)
    assert (gain > 30) == (steps == 5 and kind == "tas")


def test_full_rank_projection_never_aliases_the_callers_y():
    """Denoising's x0_hat is A^+ y every step, handed out as one tensor: a copy, not a view of y."""
    op = build_operator("denoising", 16)
    y = torch.rand(1, 3 * 16 * 16) * 2 - 1
    before = y.clone()
    rule = DDNMRule(op, y, 0.85)
    x0_hat = rule.project(torch.zeros(1, 3, 16, 16), 0.5)
    assert torch.equal(x0_hat.reshape(1, -1), y)
    x0_hat.add_(1.0)
    assert torch.equal(y, before)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_ddrm_starts_at_the_right_scale_with_few_steps(steps):
    """DDRM's x_T is sqrt(abar_T) (x0 + sigma_T z). The reference's 1 / sigma_T for sqrt(abar_T) is
    100x too large at t = 0 (one step): the result came out ~100x the image."""
    op = build_operator("sr_averagepooling", 16, deg_scale=2)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op.A(x)
    out = restore(GaussianEps(torch.zeros(1, 3, 16, 16), 0.5), op, y, BETAS,
                  SamplerConfig(sampler="ddrm", steps=steps), seeds=[0]).x0
    assert out.abs().max() < 3
    assert (op.A(out) - y).abs().max() < 0.2


@pytest.mark.parametrize("field,value", [("eta", 1.5), ("eta", -0.5), ("eta", float("nan")), ("etaB", 2.0),
                                         ("sigma_y", float("nan"))])
def test_sampler_settings_out_of_range_are_refused(field, value):
    op = build_operator("denoising", 8)
    y = op.A(torch.zeros(1, 3, 8, 8))
    cfg = SamplerConfig(steps=2)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=field):
        make_rule(cfg, op, y)


def test_measurements_of_the_wrong_width_are_refused():
    op = build_operator("colorization", 8)
    with pytest.raises(ValueError, match=r"y must be \(batch, 64\)"):
        restore(lambda x, t: torch.zeros_like(x), op, torch.zeros(1, 128), BETAS, SamplerConfig(steps=2))
    with pytest.raises(ValueError, match="got shape"):      # an empty batch: a clear error, not a reshape crash
        make_rule(SamplerConfig(steps=2), op, torch.zeros(0, 64))


def test_a_fractional_step_count_is_refused():
    from functions.schedules import build_schedule
    with pytest.raises(ValueError, match="steps must be an integer"):
        build_schedule(2.5)
    assert len(build_schedule(3.0)) == 3


def test_ddnm_draws_no_noise_for_the_last_step_where_its_scale_is_zero():
    """At t_next = -1 the eta noise is scaled by sqrt(1 - abar_next) eta = 0: DDNM draws it on
    every step but that one, and the last x is that step's x0_hat exactly."""
    from functions.diffusion import NoiseLevels
    from functions.equivariance import make_denoiser
    from functions.samplers import sample
    from functions.schedules import build_schedule

    class Counting(PerImageNoise):
        draws = 0

        def randn(self, shape, dtype=torch.float32, std=1.0):
            Counting.draws += 1
            return super().randn(shape, dtype, std)

    op = _op("sr_averagepooling")
    x = asymmetric_mean(SIZE, seed=2)
    y = op.A(x)
    seen = []
    out = sample(make_denoiser(GaussianEps(asymmetric_mean(SIZE), 0.3)), DDNMRule(op, y, 0.85), torch.randn(1, 3, SIZE, SIZE),
                 build_schedule(7, "uniform"), NoiseLevels(BETAS), Counting([5]),
                 callback=lambda i, step, x, x0_hat: seen.append((step.t_next, x0_hat.clone())))
    assert Counting.draws == 6
    assert seen[-1][0] == -1 and torch.equal(out, seen[-1][1])
    assert (op.A(out) - y).abs().max() <= 1e-4


class _Recording(PerImageNoise):
    """PerImageNoise that keeps every draw, in order, for a reference to replay."""

    def __init__(self, seeds):
        super().__init__(seeds)
        self.log = []

    def randn(self, shape, dtype=torch.float32, std=1.0):
        out = super().randn(shape, dtype, std)
        self.log.append(out.clone())
        return out


def _ddrm_step_per_coordinate(op, y, x0, eps, abar_next, sigma_0, etaA, etaB, etaC, z_C, z_A, z_B):
    """DDRM's step (Kawar et al., Eq. 7-8 as `efficient_generalized_steps` applies them), one
    spectral coordinate at a time in Python floats: missing (no measurement, or s sigma' = sigma_0),
    less noisy than y (s sigma' < sigma_0) or noisier (s sigma' > sigma_0)."""
    import math
    sig = math.sqrt((1 - abar_next) / abar_next)
    s = op.singulars().tolist()
    v, e = op.Vt(x0)[0].tolist(), op.Vt(eps)[0].tolist()
    uty = op.Ut(y)[0].tolist()
    zc, za, zb = z_C[0].tolist(), z_A[0].tolist(), z_B[0].tolist()
    out = []
    for k in range(len(v)):
        sk = s[k] if k < len(s) else 0.0
        if k < len(s) and sk * sig < sigma_0:
            out.append(v[k] + math.sqrt(sig ** 2 - (sig * etaA) ** 2) * (uty[k] - sk * v[k]) / sigma_0 + sig * etaA * za[k])
        elif k < len(s) and sk * sig > sigma_0:
            out.append(etaB * uty[k] / sk + (1 - etaB) * v[k]
                       + math.sqrt(sig ** 2 - sigma_0 ** 2 * etaB ** 2 / sk ** 2) * zb[k])
        else:
            out.append(v[k] + math.sqrt(sig ** 2 - (sig * etaC) ** 2) * e[k] + sig * etaC * zc[k])
    return math.sqrt(abar_next) * op.V(torch.tensor([out], dtype=torch.float64))


@pytest.mark.parametrize("etaB", [1.0, 0.4])
@pytest.mark.parametrize("sigma_0", [0.0, 0.2])
@pytest.mark.parametrize("deg", ["deblur_gauss", "sr_averagepooling"])
def test_ddrm_step_matches_the_per_coordinate_update_with_its_noise(deg, etaB, sigma_0):
    """Every term of DDRM's step, noise included, for etaB below 1 too (the goldens have etaB = 1
    and no noise): against the three cases written out coordinate by coordinate."""
    from functions.samplers import DDRMRule
    op = build_operator(deg, image_size=8, dtype=torch.float64, deg_scale=2 if deg.startswith("sr") else None)
    g = torch.Generator().manual_seed(4)
    x0, eps, x_t = (torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    y = op.A(torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1)
    abar_next = 0.8                                                    # sigma' = 0.5
    rule = DDRMRule(op, y, sigma_0, etaA=0.85, etaB=etaB, etaC=0.7)
    noise = _Recording([3])
    x_next, _ = rule.step(x_t, x0, eps, 0.6, abar_next, noise)
    assert len(noise.log) == 3
    z_C, z_A, z_B = noise.log
    expected = _ddrm_step_per_coordinate(op, y, x0, eps, abar_next, sigma_0, 0.85, etaB, 0.7, z_C, z_A, z_B)
    assert torch.allclose(x_next.reshape(1, -1), expected.reshape(1, -1), atol=1e-10, rtol=0)
    # the cases this operator and sigma_0 hold are all exercised: noisier than y everywhere;
    # less noisy than y on the blur with sigma_0 > 0; unmeasured coordinates in super-resolution
    s = op.singulars() * 0.5
    assert bool((s > sigma_0).any())
    if deg == "deblur_gauss" and sigma_0 > 0:
        assert bool((s < sigma_0).any())
    if deg == "sr_averagepooling":
        assert s.numel() < x0.numel()


def test_time_travel_renoises_with_the_forward_process():
    """A travel step up to t_next is x = sqrt(abar) x0 + sqrt(1 - abar) z: with z fixed at 0.5
    (a constant noise source), every travel step's x is that, from the last x0 it kept."""
    from functions.diffusion import NoiseLevels
    from functions.equivariance import make_denoiser
    from functions.samplers import sample
    from functions.schedules import build_schedule

    class Half:
        def randn_like(self, x):
            return torch.full_like(x, 0.5)

    op = _op("inpainting")
    y = op.A(asymmetric_mean(SIZE, seed=2))
    levels = NoiseLevels(BETAS)
    schedule = build_schedule(6, "uniform", travel_length=2, travel_repeat=2)
    seen = []
    sample(make_denoiser(GaussianEps(asymmetric_mean(SIZE), 0.3)), DDNMRule(op, y, 0.85), torch.randn(1, 3, SIZE, SIZE),
           schedule, levels, Half(), callback=lambda i, step, x, x0_hat: seen.append((step, x.clone(), x0_hat.clone())),
           travel_from="x0_hat")
    travels = 0
    for (_, _, kept), (step, x, _) in zip(seen, seen[1:]):
        if not step.is_reverse:
            travels += 1
            a = levels.abar(step.t_next)
            assert torch.allclose(x, a ** 0.5 * kept + (1 - a) ** 0.5 * 0.5, atol=1e-6, rtol=0)
    assert travels >= 2
