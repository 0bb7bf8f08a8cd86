"""Classifier guidance (functions/guidance.py): the reference's guided DDNM run, the cond_fn gradient,
composition with every step rule, time travel and EquS, no autograd graph kept, bad input."""
import gc

import pytest
import torch

from functions.guidance import REFERENCE_CLASS, GuidedEps, guidance_labels
from functions.noise import ZeroNoise
from functions.operators import build_operator
from functions.samplers import SamplerConfig, restore
from guided_diffusion.classifier import EncoderUNetModel
from guided_diffusion.openai_unet import unet_from_config
from tests.gaussian_prior import BETAS, GaussianEps, asymmetric_mean, d4_symmetric_mean
from tests.shared import one_thread  # noqa: F401  (autouse: one torch thread here)
from tests.shared import fixture

ABAR = torch.cumprod(1 - BETAS.double(), 0).float()




# ---------------------------------------------------------------- the reference's guided DDNM


@pytest.fixture(scope="module")
def reference():
    fx = fixture("classifier_small.pt")
    gold = fixture("sampler_goldens_64.pt")
    assert torch.equal(fx["betas"], BETAS) and torch.equal(fx["x_T"], gold["x_T"])
    unet = unet_from_config(fx["cond_unet_config"])
    unet.load_state_dict(fx["cond_unet_state_dict"], strict=True)
    clf = EncoderUNetModel(**fx["config"])
    clf.load_state_dict(fx["state_dict"], strict=True)
    gauss = GaussianEps(gold["prior_mean"], gold["prior_var"])
    labels = guidance_labels("reference", None, 1)   # the UNet gets class 951 too

    def eps(x, t):
        return gauss(x, t) + 0.05 * unet(x, t, labels.repeat(x.shape[0]))[:, :3]

    return fx, eps, clf.eval().requires_grad_(False)


def _sr4(fx, eps_model):
    op = build_operator("sr_averagepooling", image_size=64, deg_scale=4)
    cfg = SamplerConfig(eta=0.85, steps=10)
    return restore(eps_model, op, fx["sr4_y"], BETAS, cfg, noise=ZeroNoise(), x_T=fx["x_T"].clone()).x0


def test_unguided_cc_run_matches_reference(reference):
    fx, eps, _ = reference
    assert (_sr4(fx, eps) - fx["sr4_unguided_reference"]).abs().max().item() <= 1e-4


def test_reference_mode_reproduces_the_official_guided_run(reference):
    fx, eps, clf = reference
    guided = GuidedEps(eps, clf, BETAS, fx["guidance_scale"], mode="reference", x_T=fx["x_T"])
    out = _sr4(fx, guided)
    assert (out - fx["sr4_guided_reference"]).abs().max().item() <= 1e-4
    assert (out - fx["sr4_unguided_reference"]).abs().max().item() > 1e-2   # the guidance is visible
    assert guided.calls == 10


def test_reference_mode_captures_x_T_from_the_first_call():
    prior, clf = GaussianEps(asymmetric_mean(SIZE), 0.25), LinearClassifier(classes=1000)
    captured = GuidedEps(prior, clf, BETAS, 3.0, mode="reference")
    out = _toy_run(captured)
    assert torch.equal(captured.x_T, _toy_x_T())
    assert all(torch.equal(x, _toy_x_T()) for x in clf.inputs)      # the gradient at x_T at every step
    assert torch.equal(out, _toy_run(GuidedEps(prior, clf, BETAS, 3.0, mode="reference", x_T=_toy_x_T())))
    assert not torch.equal(out, _toy_run(GuidedEps(prior, clf, BETAS, 3.0, labels=LABELS)))


def test_correct_mode_subtracts_the_scaled_cond_fn_gradient(reference):
    fx, _, clf = reference
    zero = lambda x, t: torch.zeros(x.shape[0], 6, *x.shape[2:])   # noqa: E731 (6: variance channels dropped)
    guided = GuidedEps(zero, clf, BETAS, fx["guidance_scale"], labels=fx["classes"])
    with torch.no_grad():
        eps = guided(fx["x"], fx["t"])
    expected = -(1 - ABAR[fx["t"].long()]).sqrt().view(-1, 1, 1, 1) * fx["guidance_grad"]
    assert eps.shape == fx["x"].shape
    assert (eps - expected).abs().max().item() <= 1e-4
    assert not eps.requires_grad
    with torch.inference_mode():     # a caller sampling in inference mode gets the same
        assert torch.equal(guided(fx["x"], fx["t"]), eps)


# ---------------------------------------------------------------- composition, on a closed-form toy


class LinearClassifier(torch.nn.Module):
    """logits_c = (1 + t / 1000) <W_c, x>: grad log p(c|x) = k (W_c - sum_j p_j W_j) in closed form.
    Templates symmetric under the horizontal flip make it flip-invariant."""

    def __init__(self, size=32, classes=5, symmetric=False, seed=0):
        super().__init__()
        w = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.05
        self.W = torch.nn.Parameter((w + w.flip(-1)) / 2 if symmetric else w)   # trainable on purpose
        self.inputs = []

    def forward(self, x, t):
        self.inputs.append(x.detach().clone())
        return (1 + t.view(-1, 1) / 1000) * torch.einsum("bchw,kchw->bk", x, self.W)

    def grad(self, x, t, labels):
        with torch.no_grad():
            k = (1 + t.view(-1, 1, 1, 1) / 1000)
            p = torch.softmax(self.forward(x, t), -1)
            return k * (self.W[labels] - torch.einsum("bk,kchw->bchw", p, self.W))


def closed_form_guided(eps_model, clf, scale, labels):
    def eps(x, t):
        g = clf.grad(x, t, labels.repeat(x.shape[0] // labels.shape[0]))
        return eps_model(x, t) - (1 - ABAR[t.long()]).sqrt().view(-1, 1, 1, 1) * scale * g
    return eps


SIZE = 32
LABELS = torch.tensor([1, 3])


def _toy_x_T():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _toy_run(eps_model, **cfg):
    x_orig = 0.5 * torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x_T = _toy_x_T()
    op = build_operator("sr_averagepooling", image_size=SIZE, deg_scale=4)
    y = op.A(x_orig)
    if cfg.get("sigma_y"):
        y = y + cfg["sigma_y"] * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    return restore(eps_model, op, y, BETAS, SamplerConfig(steps=10, **cfg), noise=ZeroNoise(), x_T=x_T).x0


RUNS = {"ddnm": dict(eta=0.85), "ddnm_plus": dict(sampler="ddnm_plus", sigma_y=0.2),
        "ddrm": dict(sampler="ddrm", sigma_y=0.2), "time_travel": dict(travel_length=2, travel_repeat=2),
        "equs_official": dict(equs="alternate"), "equs_tas": dict(equs="alternate", schedule="tas"),
        "simplified": dict(sampler="simplified", sigma_y=0.2),
        "simplified_ddim": dict(sampler="simplified", simplified_noise="ddim")}


@pytest.mark.parametrize("run", list(RUNS))
def test_guidance_composes_with_every_step_rule_and_schedule(run):
    prior = GaussianEps(asymmetric_mean(SIZE), 0.25)
    clf = LinearClassifier()
    guided = _toy_run(GuidedEps(prior, clf, BETAS, 3.0, labels=LABELS), **RUNS[run])
    expected = _toy_run(closed_form_guided(prior, clf, 3.0, LABELS), **RUNS[run])
    assert (guided - expected).abs().max().item() <= 1e-4
    assert (guided - _toy_run(prior, **RUNS[run])).abs().max().item() > 1e-2


@pytest.mark.parametrize("equs", [dict(equs="alternate", eps_mapping="consistent"),
                                  dict(equs="average", transform="hflip")])
def test_equs_guided_equals_plain_guided_for_flip_equivariant_model_and_invariant_classifier(equs):
    prior = GaussianEps(d4_symmetric_mean(SIZE), 0.25)          # flip-equivariant eps
    clf = LinearClassifier(symmetric=True)                      # flip-invariant log p(c | x)
    plain = _toy_run(GuidedEps(prior, clf, BETAS, 3.0, labels=LABELS))
    equs_run = _toy_run(GuidedEps(prior, clf, BETAS, 3.0, labels=LABELS), **equs)
    assert (equs_run - plain).abs().max().item() <= 1e-5
    assert (plain - _toy_run(prior)).abs().max().item() > 1e-2
    # with a classifier that is not flip-invariant the flipped steps change the result: EquS
    # hands the classifier the transformed x_t, and its gradient comes back through T^-1
    asym = LinearClassifier(symmetric=False)
    assert (_toy_run(GuidedEps(prior, asym, BETAS, 3.0, labels=LABELS), **equs)
            - _toy_run(GuidedEps(prior, asym, BETAS, 3.0, labels=LABELS))).abs().max().item() > 1e-3


def test_under_equs_the_classifier_sees_what_the_model_sees():
    seen = []
    prior = GaussianEps(asymmetric_mean(SIZE), 0.25)
    clf = LinearClassifier()

    def model(x, t):
        seen.append(x.clone())
        return prior(x, t)

    _toy_run(GuidedEps(model, clf, BETAS, 3.0, labels=LABELS), equs="alternate")
    assert len(seen) == len(clf.inputs) == 10
    assert all(torch.equal(a, b) for a, b in zip(seen, clf.inputs))
    x_first = seen[1]   # u = 8: a flipped step, whose input is not the loop's x
    assert not torch.equal(x_first, x_first.flip(-1))


# ---------------------------------------------------------------- memory: no graph kept


def _live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))


def test_no_graph_is_kept_and_memory_does_not_grow_with_steps():
    prior = GaussianEps(asymmetric_mean(SIZE), 0.25)
    clf = LinearClassifier()          # its weight requires grad: still no graph through it
    guided = GuidedEps(prior, clf, BETAS, 3.0, labels=LABELS)
    counts = []

    def callback(i, step, x, x0_hat):
        assert not x.requires_grad and x.grad_fn is None
        clf.inputs.clear()
        if i in (2, 5, 9):
            counts.append(_live_tensors())

    op = build_operator("sr_averagepooling", image_size=SIZE, deg_scale=4)
    y = op.A(torch.zeros(2, 3, SIZE, SIZE))
    out = restore(guided, op, y, BETAS, SamplerConfig(steps=10), noise=ZeroNoise(),
                  x_T=torch.randn(2, 3, SIZE, SIZE), callback=callback).x0
    assert not out.requires_grad and clf.W.grad is None and guided.calls == 10
    assert counts[0] == counts[1] == counts[2], counts   # flat from step to step


# ---------------------------------------------------------------- labels and bad input


def test_guidance_labels():
    assert torch.equal(guidance_labels("reference", torch.tensor([4, 5]), 2), torch.tensor([951, 951]))
    assert REFERENCE_CLASS == 951
    assert torch.equal(guidance_labels("correct", [4, 5], 2), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="needs class labels"):
        guidance_labels("correct", None, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        guidance_labels("correct", torch.tensor([1.0, 2.0]), 2)
    with pytest.raises(ValueError, match="mode"):
        guidance_labels("official", None, 2)


def test_bad_input_is_refused_in_one_line():
    prior, clf = GaussianEps(asymmetric_mean(SIZE), 0.25), LinearClassifier()
    for kwargs, message in [(dict(), "needs class labels"), (dict(labels=LABELS, mode="x"), "mode"),
                            (dict(labels=LABELS, x_T=torch.zeros(1)), "x_T is used only"),
                            (dict(labels=LABELS, scale=-1.0), "scale")]:
        with pytest.raises(ValueError, match=message) as err:
            GuidedEps(prior, clf, BETAS, **{"scale": 1.0, **kwargs})
        assert "\n" not in str(err.value)
    guided = GuidedEps(prior, clf, BETAS, 1.0, labels=LABELS)
    with pytest.raises(ValueError, match="2 labels for a call on 3 images"):
        guided(torch.zeros(3, 3, SIZE, SIZE), torch.full((3,), 500.0))
    ref = GuidedEps(prior, clf, BETAS, 1.0, mode="reference", x_T=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="x_T"):
        ref(torch.zeros(1, 3, SIZE, SIZE), torch.full((1,), 500.0))
