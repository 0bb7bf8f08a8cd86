"""Composite image-domain degradations: exact inverses where the reference's Ap is exact, the
documented inexactness of mask_color_sr, the order of a chain, sizes, refusals."""
import pytest
import torch

from functions.operators import build_operator
from functions.operators.composite import (NAMED, PARTS, build_composite, color2gray, gray2color, is_composite,
                                           mask_input_hw, mean_upsample)
from tests.shared import fixture

G = torch.Generator().manual_seed(0)


def _x(h, w, b=2, c=3):
    return torch.randn(b, c, h, w, generator=G)


def _y(op, b=2):
    return torch.randn(b, op.num_measurements, generator=G)


# ---------------------------------------------------------------- the reference's primitives

def test_primitives_against_their_definitions():
    x = _x(6, 4)
    assert torch.allclose(color2gray(x), (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) / 3, atol=1e-6)
    g = _x(6, 4, c=1)
    assert torch.equal(gray2color(g, 3), torch.cat([g, g, g], 1))
    up = mean_upsample(g, 2)
    assert up.shape == (2, 1, 12, 8) and torch.equal(up[:, :, 5, 3], g[:, :, 2, 1])
    assert torch.allclose(torch.nn.functional.avg_pool2d(up, 2), g)


def test_the_goldens_measurements():
    """The simplified path's operators give the reference's y (its grey images: 3 equal channels)."""
    gold = fixture("simplified_goldens_64.pt")
    for name, spec, scale in [("mask_color_sr_2", "mask_color_sr", 2), ("sr_averagepooling_4", "sr_averagepooling", 4),
                              ("colorization", "colorization", None), ("inpainting", "inpainting", None)]:
        op = build_composite(spec, 64, deg_scale=scale, mask=gold["mask"])
        ref = gold["y"][name][:, : op.measurement_shape[0]]
        assert (op.A(gold["x_orig"]) - ref.reshape(1, -1)).abs().max() <= 1e-6, name


# ---------------------------------------------------------------- A(Ap(y)) = y where Ap is exact

EXACT = [("sr_averagepooling", 4, None), ("colorization", None, None), ("inpainting", None, "random:0.4"),
         ("denoising", None, None), ("colorization+sr_averagepooling", 2, None), ("sr_color", 2, None),
         ("sr_averagepooling+inpainting", 2, "random:0.5"), ("inpainting+sr_averagepooling+colorization", 1, "box:0.3")]


@pytest.mark.parametrize("spec,scale,mask", EXACT)
@pytest.mark.parametrize("size", [16, (12, 20)], ids=["16", "12x20"])
def test_ap_is_a_right_inverse(spec, scale, mask, size):
    op = build_composite(spec, size, deg_scale=scale, mask=mask)
    if mask:     # the mask lies at the inpainting part's input size, which an SR part before it shrinks
        stage = mask_input_hw(spec, size, scale)
        assert tuple(op.parts[[p.name for p in op.parts].index("inpainting")].mask.shape) == stage
        hw = (size, size) if isinstance(size, int) else size
        assert stage == (hw if spec.startswith("inpainting") else tuple(s // scale for s in hw))
    y = op.A(_x(*((size, size) if isinstance(size, int) else size)))    # y in A's range
    assert (op.A(op.A_pinv(y)) - y).abs().max() <= 1e-5
    # and A(null_space(x)) = 0: the null space is what the projection leaves free
    x = _x(op.height, op.width)
    assert torch.allclose(op.null_space(x), x - op.A_pinv(op.A(x)))
    assert op.A(op.null_space(x)).abs().max() <= 1e-5


def test_unconstrained_y_is_inverted_exactly_where_a_is_onto():
    """Colorization + pooling maps onto every grey small image: any y is reached."""
    op = build_composite("colorization+sr_averagepooling", 16, deg_scale=4)
    y = _y(op)
    assert (op.A(op.A_pinv(y)) - y).abs().max() <= 1e-5


# ---------------------------------------------------------------- mask_color_sr is not exact (documented)

def _cells_mask(size, scale, cut: bool):
    """Holes made of whole scale x scale cells; `cut` shifts them by one pixel so that they cut cells."""
    m = torch.ones(size, size, dtype=torch.bool)
    m[2 * scale: 5 * scale, 1 * scale: 4 * scale] = False
    return torch.roll(m, shifts=(1, 1), dims=(0, 1)) if cut else m


def test_mask_color_sr_inverse_is_inexact_when_the_mask_cuts_cells():
    x = _x(16, 16)
    cut = build_composite("mask_color_sr", 16, deg_scale=2, mask=_cells_mask(16, 2, cut=True))
    y = cut.A(x)
    assert (cut.A(cut.A_pinv(y)) - y).abs().max() > 0.05
    # the cut cells are where it fails: cells the mask keeps whole are recovered exactly
    aligned = build_composite("mask_color_sr", 16, deg_scale=2, mask=_cells_mask(16, 2, cut=False))
    y = aligned.A(x)
    assert (aligned.A(aligned.A_pinv(y)) - y).abs().max() <= 1e-5


# ---------------------------------------------------------------- order of a composition

def test_parts_apply_left_to_right_and_invert_right_to_left():
    mask = torch.rand(16, 16, generator=G) > 0.3
    x = _x(16, 16)
    op = build_composite("inpainting+colorization+sr_averagepooling", 16, deg_scale=4, mask=mask)
    assert op.part_names == ("inpainting", "colorization", "sr_averagepooling")
    manual = torch.nn.functional.avg_pool2d(color2gray(x * mask), 4)
    assert torch.allclose(op.A(x), manual.reshape(2, -1), atol=1e-6)
    y = _y(op)
    assert torch.allclose(op.A_pinv(y), mask * gray2color(mean_upsample(y.reshape(2, 1, 4, 4), 4), 3))
    assert op.measurement_shape == (1, 4, 4) and op.num_measurements == 16
    # the named composite is this chain; sr_color is pooling then grey
    named = build_composite("mask_color_sr", 16, deg_scale=4, mask=mask)
    assert torch.equal(named.A(x), op.A(x)) and named.part_names == NAMED["mask_color_sr"]
    assert build_composite("sr_color", 16, deg_scale=2).part_names == ("sr_averagepooling", "colorization")


def test_order_matters_for_a_blur_before_pooling():
    """deblur then pool is not pool then deblur: the blur acts at the size it sees."""
    x = _x(16, 16)
    a = build_composite("deblur_gauss+sr_averagepooling", 16, deg_scale=2)
    b = build_composite("sr_averagepooling+deblur_gauss", 16, deg_scale=2)
    blur16 = build_operator("deblur_gauss", image_size=16)
    blur8 = build_operator("deblur_gauss", image_size=8)
    pool = lambda v: torch.nn.functional.avg_pool2d(v, 2)        # noqa: E731
    assert torch.allclose(a.A(x), pool(blur16.A(x).reshape(2, 3, 16, 16)).reshape(2, -1), atol=1e-6)
    assert torch.allclose(b.A(x), blur8.A(pool(x)), atol=1e-6)
    assert (a.A(x) - b.A(x)).abs().max() > 1e-2


@pytest.mark.parametrize("deg", ["deblur_uni", "deblur_gauss", "deblur_aniso", "sr_bicubic"])
def test_svd_parts_are_the_operators_themselves(deg):
    """A blur / bicubic part is build_operator's A and A^+, in the image layout (square sizes)."""
    scale = 2 if deg == "sr_bicubic" else None
    op = build_composite(deg, 16, deg_scale=scale)
    ref = build_operator(deg, image_size=16, deg_scale=scale)
    x = _x(16, 16)
    assert torch.allclose(op.A(x), ref.A(x)) and op.num_measurements == ref.A(x).shape[1]
    y = op.A(x)
    assert torch.allclose(op.A_pinv(y), ref.A_pinv(y).reshape(2, 3, 16, 16))
    assert (op.A(op.A_pinv(y)) - y).abs().max() <= 1e-4        # A A^+ is the identity on A's range
    # after colorization the part works on one channel
    grey = build_composite(f"colorization+{deg}", 16, deg_scale=scale)
    assert grey.measurement_shape[0] == 1 and (grey.A(grey.A_pinv(grey.A(x))) - grey.A(x)).abs().max() <= 1e-4


# ---------------------------------------------------------------- interface and refusals

def test_interface():
    op = build_composite("inpainting+colorization", (12, 20), mask=torch.ones(12, 20, dtype=torch.bool))
    assert (op.name, op.channels, op.height, op.width, op.image_shape) == ("inpainting+colorization", 3, 12, 20,
                                                                           (3, 12, 20))
    assert op.full_rank is False and op.num_measurements == 12 * 20
    x = _x(12, 20)
    assert torch.equal(op.A(x), op.A(x.reshape(2, -1)))          # flat images are accepted, as by SVD operators
    assert op.A(x.double()).dtype == torch.float64               # dtype follows the input
    assert is_composite("mask_color_sr") and is_composite("sr_color") and is_composite("inpainting+denoising")
    assert not is_composite("inpainting") and not is_composite("cs_walshhadamard")


@pytest.mark.parametrize("spec,match", [
    ("inpainting+cs_walshhadamard", "'cs_walshhadamard' has no image-domain form"),
    ("cs_blockbased", "'cs_blockbased' has no image-domain form"),
    ("inpainting+blur", "unknown composite part 'blur'"),
    ("inpainting++colorization", "unknown composite part ''"),
    ("", "non-empty"),
])
def test_bad_parts_are_named_with_the_valid_ones(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        build_composite(spec, 16)
    if spec:
        assert all(p in str(err.value) for p in PARTS) and "\n" not in str(err.value)


def test_other_refusals():
    with pytest.raises(ValueError, match="SR factor of part sr_averagepooling.*12x20"):
        build_composite("sr_averagepooling", (12, 20), deg_scale=8)
    with pytest.raises(ValueError, match="SR factor"):
        build_composite("colorization+sr_averagepooling", 16, deg_scale=2.5)
    with pytest.raises(ValueError, match="image_size"):
        build_composite("colorization", 0)
    with pytest.raises(ValueError, match="keeps no pixel"):
        build_composite("inpainting", (12, 20), mask=torch.zeros(12, 20))
    with pytest.raises(ValueError, match="0 or 1"):
        build_composite("inpainting", (12, 20), mask=torch.full((12, 20), 0.5))
    op = build_composite("colorization", 8)
    with pytest.raises(ValueError, match=r"y must hold 64 measurements"):
        op.A_pinv(torch.zeros(1, 3 * 64))
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 3, 8, 8\)"):
        op.A(torch.zeros(1, 3, 8, 9))
