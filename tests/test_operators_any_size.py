"""Operators at any image size H x W (functions/operators, functions/masks).

(a) (n, n) builds bit for bit the operator that n builds, and an n x m image is measured
as the m x m operator measures it padded with zero rows; (b) at non-square and odd
sizes the pseudo-inverse identities, the null-space projector, V V^T = I, the
adjoint and DDNM+'s Lambda at sigma_y = 0 hold, rows and columns are not swapped
(transposing the image transposes the measurement), and direct forms agree with
dense matrices; (c) CS and non-dividing SR factors refuse in one line; (d) masks
at H x W.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functions.masks import center_box_mask, default_mask, random_pixel_mask, resize_mask, resolve_mask
from functions.operators import blur_kernels, build_operator, reference_apy
from functions.operators.deblur import NullBlocks, conv_matrix
from functions.operators.super_resolution import bicubic_kernel, strided_conv_matrix

# (deg, deg_scale) at every size below; SR factors divide all of them
CASES = [("sr_averagepooling", 2), ("sr_averagepooling", 3), ("inpainting", None), ("colorization", None),
         ("denoising", None), ("sr_bicubic", 2), ("sr_bicubic", 3), ("deblur_uni", None), ("deblur_gauss", None),
         ("deblur_aniso", None)]
SIZES = [(24, 42), (42, 24), (21, 33)]
LAMBDA_ARGS = dict(a=0.9, sigma_y=0.2, sigma_t=0.3, eta=0.85)


def _build(deg, scale, size, **kw):
    kw.setdefault("mask", "random:0.4" if deg == "inpainting" else None)
    return build_operator(deg, image_size=size, channels=3, deg_scale=scale, **kw)


def _x(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- (a) square given as (n, n) == the int operator ---------------------------------------------
@pytest.mark.parametrize("deg,scale,n", [(d, s, n) for d, s in CASES for n in (24, 21) if not (s and n % s)])
def test_square_tuple_is_the_int_operator(deg, scale, n):
    op_int, op_tup = _build(deg, scale, n), _build(deg, scale, [n, n])
    assert op_tup.image_size == n and op_int.image_size == n
    assert (op_tup.height, op_tup.width) == (n, n) and op_tup.image_shape == (3, n, n)
    x = _x((2, 3, n, n))
    y = op_int.A(x)
    for f in ("A", "null_space", "Vt"):
        assert torch.equal(getattr(op_int, f)(x), getattr(op_tup, f)(x)), f
    assert torch.equal(op_int.A_pinv(y), op_tup.A_pinv(y))
    assert torch.equal(op_int.singulars(), op_tup.singulars())
    assert torch.equal(op_int.Lambda(x, **LAMBDA_ARGS), op_tup.Lambda(x, **LAMBDA_ARGS))
    eps = _x((2, 3, n, n), 1)
    assert torch.equal(op_int.Lambda_noise(x, eps=eps, **LAMBDA_ARGS), op_tup.Lambda_noise(x, eps=eps, **LAMBDA_ARGS))


@pytest.mark.parametrize("deg,scale,n,m", [(d, s, n, m) for d, s in CASES if not d.startswith("deblur")
                                           for n, m in ((24, 42), (21, 33)) if not (s and (n % s or m % s))])
def test_a_wide_image_is_measured_as_the_square_operator_measures_it_zero_padded(deg, scale, n, m):
    """An n x m operator against the m x m one on the image padded with zero rows below: pooling,
    grey, identity and masks act pixel by pixel, so every measurement agrees; bicubic's rows agree
    away from the bottom edge, where the n-row matrix truncates its taps (the blurs: dense
    matrices in (b), as their truncated SVD depends on the size)."""
    r = scale or 1
    x = _x((2, 3, n, m))
    padded = F.pad(x, (0, 0, 0, m - n))
    if deg == "inpainting":
        square_mask = resolve_mask("random:0.4", m, seed=5)
        op = _build(deg, scale, (n, m), mask=square_mask[:n])
        square = _build(deg, scale, m, mask=square_mask)
        got = op.A_pinv(op.A(x)).reshape(x.shape)
        want = square.A_pinv(square.A(padded)).reshape(2, 3, m, m)[:, :, :n]
        assert torch.equal(got, want) and torch.equal(got, x * square_mask[:n])
        return
    op, square = _build(deg, scale, (n, m)), _build(deg, scale, m)
    c = op.num_measurements // (n * m // r // r)
    got = op.A(x).reshape(2, c, n // r, m // r)
    want = square.A(padded).reshape(2, c, m // r, m // r)[:, :, :n // r]
    rows = n // r - (2 if deg == "sr_bicubic" else 0)         # bicubic's taps reach 2 output rows past the edge
    torch.testing.assert_close(got[:, :, :rows], want[:, :, :rows], rtol=0, atol=1e-5)
    if deg == "sr_bicubic":
        assert (got[:, :, rows:] - want[:, :, rows:]).abs().max() > 1e-3   # the edge rows do differ


# ---- (b) non-square invariants -----------------------------------------------------------------
@pytest.mark.parametrize("deg,scale,size", [(d, s, hw) for d, s in CASES for hw in SIZES
                                            if not (s and (hw[0] % s or hw[1] % s))])
def test_pseudo_inverse_and_projector_at_hxw(deg, scale, size):
    H, W = size
    op = _build(deg, scale, size, dtype=torch.float64)
    assert (op.height, op.width) == (H, W) and op.image_shape == (3, H, W) and op.image_size == (H, W)
    assert op.N == 3 * H * W
    x = _x((2, 3, H, W), dtype=torch.float64)
    y = op.A(x)
    assert y.shape == (2, op.num_measurements)
    assert _rel(op.A(op.A_pinv(y)), y) < 1e-5                               # A A^+ A = A
    p = op.A_pinv(y)
    assert _rel(op.A_pinv(op.A(p)), p) < 1e-5                               # A^+ A A^+ = A^+
    ns = op.null_space(x)
    assert float(op.A(ns).norm()) < 1e-5 * float(y.norm())                  # A (I - A^+ A) x = 0
    assert _rel(ns + op.A_pinv(y), x) < 1e-5 or op.full_rank                # x = null part + A^+ A x
    assert _rel(op.V(op.Vt(x)), x) < 1e-5                                   # V V^T = I
    v = _x((2, op.N), 2, torch.float64)
    assert _rel(op.Vt(op.V(v)), v) < 1e-5
    s = op.singulars()                                                      # the SVD is the direct A
    assert _rel(op.U(s * op.Vt(x)[:, : s.numel()]), y) < 1e-5
    z = _x(y.shape, 3, torch.float64)                                       # <A x, z> = <x, A^T z>
    assert abs(float((y * z).sum() - (x * op.At(z)).sum())) < 1e-8 * float(y.norm() * z.norm())
    assert op.A(x.reshape(2, -1)).equal(y)                                  # flat images too
    for mode in ("reference", "svd"):                                       # DDNM+ Lambda at sigma_y = 0 is I
        op.lambda_mode = mode
        assert _rel(op.Lambda(x, a=0.9, sigma_y=0.0, sigma_t=0.3, eta=0.85), x) < 1e-5
    eps = _x(x.shape, 4, torch.float64)                                     # ... and its noise DDIM's
    noise = op.Lambda_noise(x, a=0.9, sigma_y=0.0, sigma_t=0.3, eta=0.85, eps=eps)   # (svd mode)
    assert _rel(noise, 0.3 * 0.85 * x + 0.3 * (1 - 0.85 ** 2) ** 0.5 * eps) < 1e-5


@pytest.mark.parametrize("deg,scale", [c for c in CASES if c[0] != "inpainting"])   # (a random mask is not symmetric)
def test_transposing_the_image_transposes_the_result(deg, scale):
    """Rows and columns are not mixed up: the (W, H) operator on x^T is the (H, W) one's, transposed."""
    H, W = 24, 42
    kw = dict(dtype=torch.float64)
    kw_t = dict(kw)
    if deg.startswith("deblur"):
        # the true blur: the reference's mismatched singular values follow the sort order, not the axes
        kw["blur_svd"] = kw_t["blur_svd"] = "matched"
        k_rows, k_cols = blur_kernels(deg)
        kw_t["kernels"] = (k_cols, k_rows)                   # aniso: the sigmas follow the axes
    op, op_t = _build(deg, scale, (H, W), **kw), _build(deg, scale, (W, H), **kw_t)
    x = _x((1, 3, H, W), dtype=torch.float64)
    y, y_t = op.A(x), op_t.A(x.transpose(2, 3))
    k = op.num_measurements // (H * W // (scale or 1) ** 2)          # channels in y
    h, w = H // (scale or 1), W // (scale or 1)
    assert torch.allclose(y.reshape(1, k, h, w).transpose(2, 3).reshape(1, -1), y_t, atol=1e-10)
    assert torch.allclose(op.A_pinv(y).transpose(2, 3), op_t.A_pinv(y_t), atol=1e-10)
    assert torch.allclose(op.null_space(x).transpose(2, 3), op_t.null_space(x.transpose(2, 3)), atol=1e-10)


def test_average_pooling_at_hxw_is_avg_pool():
    x = _x((2, 3, 24, 42))
    op = build_operator("sr_averagepooling", image_size=(24, 42), deg_scale=3)
    assert op.small == (8, 14)
    assert torch.equal(op.A(x), F.avg_pool2d(x, 3).reshape(2, -1))
    assert torch.equal(op.A_pinv(op.A(x)), F.interpolate(F.avg_pool2d(x, 3), scale_factor=3, mode="nearest"))


def test_inpainting_at_hxw_keeps_the_mask_pixels():
    mask = torch.from_numpy(np.random.default_rng(1).random((24, 42)) > 0.3)
    op = build_operator("inpainting", image_size=(24, 42), mask=mask)
    x = _x((2, 3, 24, 42))
    assert torch.equal(op.A(x), x.permute(0, 2, 3, 1)[:, mask].reshape(2, -1))
    assert torch.equal(op.null_space(x), x * ~mask)
    apy = reference_apy(op, op.A(x))
    assert torch.allclose(apy, torch.where(mask, x, torch.full_like(x, -1.0)), atol=1e-6)   # x + 1 - 1 rounds


def test_bicubic_at_hxw_is_the_strided_filter_on_each_axis():
    """(H/r x H) down the columns, (W/r x W) along the rows; nothing is truncated at these sizes."""
    for (H, W), r in (((24, 42), 2), ((21, 33), 3)):
        op = build_operator("sr_bicubic", image_size=(H, W), deg_scale=r, dtype=torch.float64)
        assert op.small == (H // r, W // r) and bool((op.singulars() > 0).all())
        k = bicubic_kernel(r).double()
        x = _x((2, 3, H, W), dtype=torch.float64)
        dense = strided_conv_matrix(k, H, r).double() @ x @ strided_conv_matrix(k, W, r).double().T
        assert _rel(op.A(x), dense.reshape(2, -1)) < 1e-5            # float32 factors of the float32 matrix


def test_blur_at_hxw_is_the_separable_convolution():
    """Rows matrix of size H, columns matrix of size W; a well-conditioned kernel keeps every singular value."""
    k_rows, k_cols = torch.tensor([0.25, 0.5, 0.25]), torch.tensor([0.1, 0.6, 0.3])
    op = build_operator("deblur_aniso", image_size=(24, 42), kernels=(k_rows, k_cols), blur_svd="matched",
                        dtype=torch.float64)
    assert bool((op.singulars() > 0).all())
    x = _x((2, 3, 24, 42), dtype=torch.float64)
    dense = conv_matrix(k_rows, 24).double() @ x @ conv_matrix(k_cols, 42).double().T
    assert _rel(op.A(x), dense.reshape(2, -1)) < 1e-5
    assert _rel(op.A_pinv(op.A(x)), x) < 1e-5                        # full rank: A^+ A = I


@pytest.mark.parametrize("size", [(40, 72), (45, 26)])
def test_null_blocks_at_hxw_are_the_dense_projector(size):
    op = build_operator("deblur_gauss", image_size=size, dtype=torch.float64)
    assert bool(op._null_grid.any())
    x = _x((2, 3) + size, dtype=torch.float64)
    dense = op._Vr @ (op._null_grid * (op._Vr.T @ x @ op._Vc)) @ op._Vc.T
    for height in (8, 16):
        blocks = NullBlocks(op._Vr, op._Vc, op._null_grid, height)
        assert len(blocks.blocks) >= 1
        assert torch.allclose(blocks(x), dense, atol=1e-12)
    H, W = size
    assert NullBlocks.macs(op._null_grid, 8)[1] == 2 * H * W * (H + W) + 4 * 4e5


def test_per_image_batching_at_hxw():
    for deg, scale in CASES:
        op = _build(deg, scale, (24, 42) if scale == 2 else (21, 33))
        x = _x((3,) + op.image_shape)
        y = op.A(x)
        assert torch.equal(torch.cat([op.A(x[i:i + 1]) for i in range(3)]), y), deg
        assert torch.equal(torch.cat([op.A_pinv(y[i:i + 1]) for i in range(3)]), op.A_pinv(y)), deg


def test_reference_apy_of_a_blur_at_hxw_is_y():
    op = build_operator("deblur_gauss", image_size=(24, 42))
    y = op.A(_x((2, 3, 24, 42)))
    assert torch.equal(reference_apy(op, y), y.reshape(2, 3, 24, 42))


def test_save_load_at_hxw(tmp_path):
    op = build_operator("inpainting", image_size=(24, 42), mask="random:0.5", seed=3)
    op.save(tmp_path / "op.pt")
    other = build_operator("inpainting", image_size=(24, 42), mask="box:0.2")
    other.load(tmp_path / "op.pt")
    assert torch.equal(other.mask, op.mask)
    with pytest.raises(ValueError, match="size"):
        build_operator("inpainting", image_size=(42, 24)).load(tmp_path / "op.pt")
    square = build_operator("inpainting", image_size=24, mask="random:0.5")
    square.save(tmp_path / "sq.pt")
    build_operator("inpainting", image_size=(24, 24)).load(tmp_path / "sq.pt")      # (n, n) is n


def test_wrong_image_shape_is_refused_naming_h_and_w():
    op = build_operator("colorization", image_size=(24, 42))
    with pytest.raises(ValueError, match=r"\(B, 3, 24, 42\)"):
        op.A(torch.zeros(1, 3, 42, 24))


# ---- (c) refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize("deg,size,scale,match", [
    ("cs_walshhadamard", (64, 128), 0.25, "square"),
    ("cs_blockbased", (64, 96), 0.25, "square"),
    ("cs_walshhadamard", (48, 48), 0.25, "power of two"),
    ("cs_blockbased", (40, 40), 0.25, "multiple of 32"),
    ("sr_averagepooling", (24, 42), 4, "dividing both sides"),
    ("sr_averagepooling", (42, 24), 4, "dividing both sides"),
    ("sr_averagepooling", (24, 40), 3, "dividing both sides"),
    ("sr_bicubic", (4, 64), 4, "too large for an image side of 4"),
    ("denoising", (24, 0), None, "image_size"),
    ("denoising", (24, 40, 3), None, "image_size"),
    ("denoising", (24.5, 40), None, "image_size"),
])
def test_refusals_are_one_line(deg, size, scale, match):
    with pytest.raises(ValueError, match=match) as info:
        build_operator(deg, image_size=size, deg_scale=scale)
    assert "\n" not in str(info.value)


def test_cs_at_native_square_size_given_as_tuple():
    a = build_operator("cs_walshhadamard", image_size=(32, 32), deg_scale=0.25, seed=1)
    b = build_operator("cs_walshhadamard", image_size=32, deg_scale=0.25, seed=1)
    x = _x((1, 3, 32, 32))
    assert torch.equal(a.A(x), b.A(x)) and a.image_size == 32


# ---- (d) masks at H x W ------------------------------------------------------------------------
def test_mask_of_another_size_is_resized_nearest_per_axis():
    """A mask of the wrong size is resized (not refused), each axis with torch's nearest index floor(i * in / out)."""
    src = torch.from_numpy(np.random.default_rng(0).random((12, 12)) > 0.5)
    out = resolve_mask(src, (24, 42))
    assert out.shape == (24, 42)
    rows, cols = (torch.arange(24) * 12) // 24, (torch.arange(42) * 12) // 42
    assert torch.equal(out, src[rows][:, cols])
    assert torch.equal(resolve_mask(src, 24), resolve_mask(src, (24, 24)))
    assert torch.equal(resize_mask(src, (24, 24)), resize_mask(src, 24))


def test_mask_files_at_hxw(tmp_path):
    src = np.random.default_rng(2).random((10, 30)) > 0.4
    np.save(tmp_path / "m.npy", src)
    out = resolve_mask(str(tmp_path / "m.npy"), (20, 60))
    assert torch.equal(out, torch.from_numpy(src).repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_png_mask_at_hxw(tmp_path):
    from PIL import Image
    src = np.random.default_rng(5).random((16, 8)) > 0.5
    Image.fromarray((src * 255).astype(np.uint8)).save(tmp_path / "m.png")
    out = resolve_mask(str(tmp_path / "m.png"), (48, 24))
    assert torch.equal(out, torch.from_numpy(src).repeat_interleave(3, 0).repeat_interleave(3, 1))


def test_bad_mask_size_is_refused_in_one_line():
    for size in ((0, 5), (4, 5, 6), "64"):
        with pytest.raises(ValueError, match="mask size") as info:
            resolve_mask("box:0.2", size)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("size,ratio", [((24, 40), 0.25), ((40, 24), 0.25), ((60, 100), 0.36), ((21, 33), 0.5)])
def test_box_mask_covers_the_stated_fraction(size, ratio):
    m = resolve_mask(f"box:{ratio}", size)
    H, W = size
    missing = ~m
    rows, cols = missing.any(1).nonzero().flatten(), missing.any(0).nonzero().flatten()
    h, w = rows.numel(), cols.numel()
    assert int(missing.sum()) == h * w                                      # one solid box
    assert abs(h - H * ratio ** 0.5) <= 0.5 and abs(w - W * ratio ** 0.5) <= 0.5
    assert abs(int(rows[0]) - (H - h - int(rows[0]))) <= 1                   # centred
    assert abs(int(cols[0]) - (W - w - int(cols[0]))) <= 1
    assert abs(h * w / (H * W) - ratio) < 0.05


def test_random_mask_at_hxw_covers_the_stated_fraction():
    m = resolve_mask("random:0.3", (120, 200), seed=4)
    assert m.shape == (120, 200)
    frac = float((~m).float().mean())
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / m.numel()) ** 0.5             # 4 sigma of a binomial
    assert torch.equal(random_pixel_mask((50, 50), 0.3, 4), random_pixel_mask(50, 0.3, 4))


def test_square_masks_unchanged_and_default_at_hxw():
    assert torch.equal(default_mask((64, 64)), default_mask(64))
    assert torch.equal(center_box_mask((30, 30), 0.3), center_box_mask(30, 0.3))
    d = default_mask((128, 256))
    assert d.shape == (128, 256)
    assert 0.15 < float((~d).float().mean()) < 0.4                          # about a quarter missing
    # drawn in (0, 1) coordinates: the (128, 256) mask is the (256, 256) one squeezed vertically
    assert float((d != resize_mask(default_mask(256), (128, 256))).float().mean()) < 0.01
