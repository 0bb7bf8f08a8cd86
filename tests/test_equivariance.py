"""The EquS denoiser wrappers: which trajectory the model sees, and what comes back."""
import torch

from functions.equivariance import AlternateEquS, AverageEquS, make_denoiser, predict_x0
from functions.transforms import get_transform, get_transforms

A = torch.tensor(0.6)


class Recorder:
    """A model whose eps is an asymmetric function of x; it records what it was shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, t):
        self.seen.append(x.clone())
        ramp = torch.linspace(0, 1, x.shape[-1], dtype=x.dtype)
        return 0.5 * x + ramp


def test_alternate_sees_the_flipped_xt_on_even_steps_only():
    x = torch.randn(2, 3, 8, 8)
    model = Recorder()
    d = make_denoiser(model, "alternate", "hflip")
    hflip = get_transform("hflip")
    d(x, 500, A, u=3)
    d(x, 400, A, u=2)
    assert torch.equal(model.seen[0], x) and torch.equal(model.seen[1], hflip(x))
    assert d.nfe == 2


def test_official_eps_is_not_mapped_back_but_x0_is():
    x = torch.randn(1, 3, 8, 8)
    hflip = get_transform("hflip")
    official = AlternateEquS(Recorder(), [hflip], "official")
    consistent = AlternateEquS(Recorder(), [hflip], "consistent")
    x0_o, eps_o = official(x, 100, A, u=0)
    x0_c, eps_c = consistent(x, 100, A, u=0)
    eps_g = Recorder()(hflip(x), None)
    assert torch.allclose(eps_o, eps_g) and torch.allclose(eps_c, hflip(eps_g))
    assert torch.allclose(x0_o, hflip(predict_x0(hflip(x), eps_g, A)))
    assert torch.allclose(x0_o, x0_c, atol=1e-6)
    # the consistent pair describes the same x_t: x_t = sqrt(a) x0 + sqrt(1-a) eps
    assert torch.allclose(A.sqrt() * x0_c + (1 - A).sqrt() * eps_c, x, atol=1e-5)


def test_average_is_one_batched_call_of_the_group_mean():
    x = torch.randn(2, 3, 8, 8)
    model = Recorder()
    group = get_transforms("d4")
    d = AverageEquS(model, group)
    _, eps = d(x, 300, A, u=1)
    assert len(model.seen) == 1 and model.seen[0].shape[0] == 2 * 8
    expected = torch.stack([T.inverse(Recorder()(T(x), None)) for T in group]).mean(0)
    assert torch.allclose(eps, expected, atol=1e-6) and d.nfe == 8


def test_average_over_a_single_transform_includes_the_identity():
    d = make_denoiser(Recorder(), "average", "hflip")
    assert [T.name for T in d.transforms] == ["identity", "hflip"]


def test_random_transform_choice_is_seeded_and_batch_independent():
    def picks(seed):
        d = make_denoiser(Recorder(), "alternate", "random", seed=seed)
        return [T.name if T else None for T in (d.transform_for(u) for u in range(40, 0, -1))]

    assert picks(5) == picks(5) and picks(5)[1] is None and len({p for p in picks(5) if p}) > 1
    assert len({tuple(picks(s)) for s in range(4)}) == 4        # the run seed chooses the sequence


def test_random_transform_draws_do_not_replay_an_images_noise():
    """The transform choices have a stream of their own: a generator seeded with the run seed
    itself would be image 0's x_T generator at run seed 0."""
    from functions.noise import seed_for

    for run_seed in range(3):
        d = make_denoiser(Recorder(), "alternate", "random", seed=run_seed)
        first, last = seed_for(run_seed, 0), seed_for(run_seed, 100002)
        assert not first <= d._choice.initial_seed() <= last
