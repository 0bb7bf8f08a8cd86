"""Tiled eps (functions/tiling.py) and Mask-Shift (functions/mask_shift.py)."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from functions.equivariance import predict_x0
from functions.mask_shift import HeldDenoiser, operator_builder, restore_mask_shift
from functions.operators import build_operator
from functions.samplers import SamplerConfig, restore
from functions.tiling import TiledEps, window_starts
from tests.gaussian_prior import BETAS, GaussianEps

ROOT = Path(__file__).resolve().parents[1]


class Stencil:
    """A fixed 3x3 filter with zero padding: local and translation-equivariant. Built from slices
    and elementwise ops, so each image's output does not depend on the batch it is in."""

    def __init__(self, seed=0):
        self.k = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        H, W = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1))
        return sum(self.k[i, j] * p[..., i:i + H, j:j + W] for i in range(3) for j in range(3))


def _constant_mean(channels=3):
    return torch.tensor([0.2, -0.1, 0.05]).view(1, channels, 1, 1)


def test_window_starts_cover_the_axis_with_the_last_flush():
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(150, 64, 32) == [0, 32, 64, 86]
    assert window_starts(100, 32, 30) == [0, 30, 60, 68]


def test_image_of_the_window_size_is_untouched_and_restore_bit_identical():
    model = GaussianEps(_constant_mean(), 0.3)
    tiled = TiledEps(model, window=32, batch_size=8)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 500.0)
    assert torch.equal(tiled(x, t), model(x, t)) and tiled.forwards == 1 and tiled.windows == 2

    op = build_operator("sr_averagepooling", image_size=32, deg_scale=2)
    y = op.A(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    cfg = SamplerConfig(steps=8)
    plain = restore(model, op, y, BETAS, cfg, seeds=[5, 6])
    via_tiles = restore(TiledEps(model, window=32), op, y, BETAS, cfg, seeds=[5, 6])
    assert torch.equal(plain.x0, via_tiles.x0)


@pytest.mark.parametrize("H, W, stride", [(40, 72, None), (33, 50, 7), (17, 90, 5), (16, 40, 16)])
@pytest.mark.parametrize("blend", ["uniform", "gaussian", "cosine"])
def test_constant_eps_blends_to_the_constant(H, W, stride, blend):
    """The weights sum to one at every pixel, also where stride does not divide the size."""
    tiled = TiledEps(lambda x, t: torch.full_like(x, 0.7), window=16, stride=stride, blend=blend)
    eps = tiled(torch.zeros(2, 3, H, W), torch.zeros(2))
    assert eps.shape == (2, 3, H, W)
    torch.testing.assert_close(eps, torch.full_like(eps, 0.7), rtol=0, atol=2e-7)
    n = len(window_starts(H, 16, tiled.stride)) * len(window_starts(W, 16, tiled.stride))
    assert tiled.windows == 2 * n and tiled.forwards == math.ceil(2 * n / 8)


def _interior_border_mask(H, W, window, stride):
    """Pixels on the edge of some window where that edge is not the image's edge."""
    bad = torch.zeros(H, W, dtype=torch.bool)
    for top in window_starts(H, window, stride):
        for left in window_starts(W, window, stride):
            r, c = slice(top, top + window), slice(left, left + window)
            if top > 0:
                bad[top, c] = True
            if top + window < H:
                bad[top + window - 1, c] = True
            if left > 0:
                bad[r, left] = True
            if left + window < W:
                bad[r, left + window - 1] = True
    return bad


def test_local_equivariant_model_gives_the_untiled_eps_away_from_window_borders():
    H, W, window, stride = 45, 70, 16, 6
    model = Stencil()
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3))
    full = model(x, None)
    tiled = TiledEps(model, window, stride)(x, torch.zeros(2))
    bad = _interior_border_mask(H, W, window, stride)
    assert 0.3 < (~bad).float().mean() < 0.9
    torch.testing.assert_close(tiled[..., ~bad], full[..., ~bad], rtol=0, atol=1e-6)
    assert (tiled[..., bad] - full[..., bad]).abs().max() > 1e-2     # the check sees a border error


def test_windows_per_forward_do_not_change_the_eps():
    model = Stencil(1)
    x = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10.0, 500.0, 900.0])
    outs = {}
    for bs in (1, 3, 8, 100):
        tiled = TiledEps(model, 16, batch_size=bs)
        outs[bs] = tiled(x, t)
        assert tiled.forwards == math.ceil(3 * 4 * 6 / bs)
    assert all(torch.equal(outs[1], o) for o in outs.values())


def test_each_window_gets_its_images_timestep():
    seen = []
    model = lambda x, t: (seen.append(t.clone()), x * 0 + t.view(-1, 1, 1, 1))[1]  # noqa: E731
    t = torch.tensor([3.0, 7.0])
    eps = TiledEps(model, 16, batch_size=5)(torch.zeros(2, 1, 16, 40), t)
    assert torch.equal(eps[0], torch.full_like(eps[0], 3.0)) and torch.equal(eps[1], torch.full_like(eps[1], 7.0))
    assert sum(s.numel() for s in seen) == 2 * 4      # 4 windows across 40 at stride 8


def test_bad_sizes_are_refused_in_one_line():
    tiled = TiledEps(Stencil(), 32)
    with pytest.raises(ValueError, match=r"height 20 is smaller than the window 32"):
        tiled(torch.zeros(1, 3, 20, 64), torch.zeros(1))
    for kwargs, word in [(dict(window=16, stride=17), "stride"), (dict(window=16, stride=0), "stride"),
                         (dict(window=0), "window"), (dict(window=16, batch_size=0), "batch_size"),
                         (dict(window=16, blend="max"), "blend")]:
        with pytest.raises(ValueError, match=word):
            TiledEps(Stencil(), **kwargs)


def test_held_denoiser_returns_the_held_values_with_a_consistent_eps():
    model = GaussianEps(_constant_mean(), 0.3)
    from functions.equivariance import PlainDenoiser
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:, :5] = True
    values = torch.rand(1, 3, 16, 16) - 0.5
    x_t = torch.randn(1, 3, 16, 16)
    abar = 0.4
    x0, eps = HeldDenoiser(PlainDenoiser(model), mask, values)(x_t, 600, abar, 1)
    assert torch.equal(x0[..., mask], values[..., mask])
    torch.testing.assert_close(predict_x0(x_t, eps, abar)[..., mask], values[..., mask], rtol=0, atol=1e-6)
    free_x0, free_eps = PlainDenoiser(model)(x_t, 600, abar, 1)
    assert torch.equal(eps[..., ~mask], free_eps[..., ~mask]) and torch.equal(x0[..., ~mask], free_x0[..., ~mask])


def _mask_shift_run(H=40, W=72, window=32, stride=None, seeds=(3, 4), steps=10):
    op = build_operator("sr_averagepooling", image_size=(H, W), deg_scale=2)
    x = torch.rand(len(seeds), 3, H, W, generator=torch.Generator().manual_seed(9)) * 2 - 1
    y = op.A(x)
    model = GaussianEps(_constant_mean(), 0.3)
    finals, steps_seen = {}, {}

    def callback(w, top, left, i, step, x_w, x0_hat):
        steps_seen.setdefault(w, []).append((x0_hat.clone()))
        finals[w] = (top, left, x_w.clone())

    out = restore_mask_shift(model, operator_builder("sr_averagepooling", deg_scale=2), op, y, BETAS,
                             SamplerConfig(steps=steps), seeds=list(seeds), window=window, stride=stride,
                             callback=callback)
    return op, y, out, finals, steps_seen


def test_mask_shift_holds_finished_pixels_and_is_consistent_with_y_on_a_non_square_image():
    op, y, out, finals, steps_seen = _mask_shift_run()
    assert out.x0.shape == (2, 3, 40, 72) and len(finals) == 2 * 4 and out.nfe == 8 * 10
    win = 32
    composite = torch.zeros_like(out.x0)
    done = torch.zeros(40, 72, dtype=torch.bool)
    for w in sorted(finals):
        top, left, x_w = finals[w]
        r, c = slice(top, top + win), slice(left, left + win)
        held = done[r, c]
        if w > 0:
            assert held.any() and not held.all()
            # during the run: every step's x0_hat in the held region is the finished result
            for x0_hat in steps_seen[w]:
                torch.testing.assert_close(x0_hat[..., held], composite[:, :, r, c][..., held], rtol=0, atol=1e-5)
            # in the output: the finished pixels are kept exactly
            assert torch.equal(out.x0[:, :, r, c][..., held], composite[:, :, r, c][..., held])
        composite[:, :, r, c] = torch.where(held, composite[:, :, r, c], x_w)
        done[r, c] = True
    assert done.all() and torch.equal(composite, out.x0)
    torch.testing.assert_close(op.A(out.x0), y, rtol=0, atol=1e-4)


def test_mask_shift_result_does_not_depend_on_batching():
    """Image 0 of a pair (its y is the same: the ground truths come from one seeded draw) restores
    to the same bits alone with its seed; another seed gives another sample."""
    _, _, pair, _, _ = _mask_shift_run(seeds=(3, 4), steps=4)
    _, _, alone, _, _ = _mask_shift_run(seeds=(3,), steps=4)
    _, _, reseeded, _, _ = _mask_shift_run(seeds=(4,), steps=4)
    assert torch.equal(pair.x0[:1], alone.x0)
    assert (reseeded.x0 - alone.x0).abs().max() > 1e-2


def test_mask_shift_refuses_windows_off_the_pooling_grid():
    op = build_operator("sr_averagepooling", image_size=(40, 72), deg_scale=4)
    y = op.A(torch.zeros(1, 3, 40, 72))
    with pytest.raises(ValueError, match="pooling grid"):
        restore_mask_shift(GaussianEps(_constant_mean(), 0.3), operator_builder("sr_averagepooling", deg_scale=4),
                           op, y, BETAS, SamplerConfig(steps=2), seeds=[0], window=32, stride=14)


def _coffee(H=150, W=230):
    from skimage import data
    from skimage.transform import resize
    img = resize(data.coffee(), (154, 231), anti_aliasing=True)          # 400 x 600, aspect kept
    top, left = (154 - H) // 2, (231 - W) // 2
    x = torch.from_numpy(img[top:top + H, left:left + W]).permute(2, 0, 1).float()[None]
    return x * 2 - 1


def _demo_eps():
    from guided_diffusion.checkpoints import load_weights
    from guided_diffusion.models import EpsModel, build_model, load_config
    config = load_config(str(ROOT / "configs" / "demo.yml"))
    model = load_weights(build_model(config), ROOT / "weights" / "demo_ema.pt").eval().requires_grad_(False)
    return EpsModel(model, config)


@pytest.mark.parametrize("blend", ["cosine", "uniform"])
def test_tiled_demo_prior_leaves_no_seams_on_a_held_out_photo(blend):
    """2x SR of a 150 x 230 photo (coffee brought to 154 x 231, its aspect kept, and cropped) with
    the 64 x 64 demo prior, window eps blended (cosine: the runner's default; uniform: the plain
    mean): the mean |gradient| across window borders is within 10% of its mean elsewhere. Compared
    at the same parity (steps between pooling cells; borders sit on the 2x grid), since steps inside
    a cell carry only the prior's null-space detail. Measured: 0.97 / 0.99 (cosine), 0.98 / 0.97
    (uniform) (rows / columns); the same run with windows side by side (stride 64, no overlap)
    gives 1.11 / 1.16."""
    H, W, window, stride = 150, 230, 64, 32
    x = _coffee(H, W)
    op = build_operator("sr_averagepooling", image_size=(H, W), deg_scale=2)
    tiled = TiledEps(_demo_eps(), window, stride, batch_size=32, blend=blend)
    out = restore(tiled, op, op.A(x), BETAS, SamplerConfig(steps=2), seeds=[0]).x0
    assert torch.isfinite(out).all() and tiled.forwards == 2 and tiled.windows == 2 * 28

    def ratio(img, size, axis):
        starts = window_starts(size, window, stride)
        borders = {s for s in starts if s > 0} | {s + window for s in starts if s + window < size}
        grad = img.diff(dim=axis).abs().mean(dim=[d for d in range(4) if d != axis])     # grad[b-1]: b-1 | b
        at = torch.tensor(sorted(borders)) - 1
        same_parity = torch.tensor([b - 1 for b in range(2, size, 2) if b not in borders])
        return grad[at].mean() / grad[same_parity].mean()

    for size, axis in ((H, 2), (W, 3)):
        assert abs(ratio(out, size, axis) - 1) < 0.10


@pytest.mark.parametrize("deg", ["inpainting", "colorization"])
def test_mask_shift_window_operators_are_exact_crops(deg):
    """Inpainting windows get their crop of the global mask; both results agree with y."""
    op = build_operator(deg, image_size=(40, 72))
    y = op.A(torch.rand(1, 3, 40, 72, generator=torch.Generator().manual_seed(5)) * 2 - 1)
    out = restore_mask_shift(GaussianEps(_constant_mean(), 0.3), operator_builder(deg, op=op), op, y, BETAS,
                             SamplerConfig(steps=4), seeds=[0], window=32)
    torch.testing.assert_close(op.A(out.x0), y, rtol=0, atol=1e-5)


def test_equs_flips_the_whole_image_before_it_is_cut_into_windows():
    """restore(TiledEps(...)) is how the photo runs compose them: EquS wraps the tiled eps, so on a
    transformed step the network's windows are crops of the flipped image at the usual starts,
    not flipped crops (which are crops of the flipped image at the mirrored starts)."""
    H, W, window, stride = 16, 60, 16, 8
    starts = window_starts(W, window, stride)
    assert sorted(W - window - s for s in starts) != starts      # the mirrored starts differ
    seen = []

    def model(x, t):
        seen.append(x.clone())
        return 0.1 * x

    op = build_operator("sr_averagepooling", image_size=(H, W), channels=1, deg_scale=2)
    y = op.A(torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    x_T = torch.randn(1, 1, H, W, generator=torch.Generator().manual_seed(1))
    inputs = [x_T]
    cfg = SamplerConfig(steps=4, eta=0.0, equs="alternate", transform="hflip")
    restore(TiledEps(model, window, stride, batch_size=100), op, y, BETAS, cfg, seeds=[0], x_T=x_T,
            callback=lambda i, step, x, x0_hat: inputs.append(x.clone()))
    assert len(seen) == 4
    kinds = []
    for windows, x_t in zip(seen, inputs):
        crops = {name: torch.stack([img[0, :, :, s:s + window] for s in starts])
                 for name, img in (("plain", x_t), ("flipped", x_t.flip(-1)))}
        kind = [name for name, c in crops.items() if torch.allclose(windows, c, atol=1e-6)]
        assert len(kind) == 1, "the windows are neither crops of x_t nor of the flipped x_t"
        kinds.append(kind[0])
    assert set(kinds) == {"plain", "flipped"}
