"""Inpainting masks: the reference mask files, the default mask, random and box masks, errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from functions.masks import center_box_mask, default_mask, load_mask, random_pixel_mask, resize_mask, resolve_mask
from tests.shared import fixture, shared_path


def test_reference_mask_resized_to_64_is_the_fixture_mask():
    """Nearest resize 256 -> 64 takes every 4th pixel, as the fixture's 64 x 64 mask was made."""
    mask = load_mask(shared_path("data", "masks", "mask.npy"), 64)
    expected = fixture("operators_64.pt")["inputs"]["inpainting_mask_64"]
    assert mask.dtype == torch.bool and torch.equal(mask, expected == 1)


def test_png_and_npy_reference_masks_agree():
    npy = load_mask(shared_path("data", "masks", "mask.npy"), 256)
    png = load_mask(shared_path("data", "masks", "mask.png"), 256)        # RGB 0/255
    assert torch.equal(npy, png) and torch.equal(npy, torch.from_numpy(np.load(shared_path("data", "masks",
                                                                                           "mask.npy")) == 1))
    mouth = load_mask(shared_path("data", "masks", "mask_mouth.png"), 128)  # grayscale
    assert mouth.shape == (128, 128) and 0 < mouth.float().mean() < 1


def test_any_size_png_and_npy_are_resized_nearest(tmp_path):
    arr = np.zeros((30, 50), dtype=np.uint8)
    arr[:, 25:] = 255                                # right half kept
    Image.fromarray(arr).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", (arr > 0).astype(np.int64))
    for name in ("m.png", "m.npy"):
        mask = load_mask(tmp_path / name, 64)
        assert mask.shape == (64, 64)
        assert not mask[:, :32].any() and mask[:, 32:].all()
    # a 0/1 PNG (maximum 1) is read the same way
    Image.fromarray((arr > 0).astype(np.uint8)).save(tmp_path / "m01.png")
    assert torch.equal(load_mask(tmp_path / "m01.png", 64), load_mask(tmp_path / "m.png", 64))


def test_resize_is_identity_at_the_same_size():
    m = random_pixel_mask(32, 0.5, seed=0)
    assert resize_mask(m, 32) is m
    assert torch.equal(resize_mask(m, 64)[::2, ::2], m)


def test_default_mask_is_deterministic_and_covers_a_quarter():
    m = default_mask(256)
    assert m.shape == (256, 256) and m.dtype == torch.bool
    assert torch.equal(m, default_mask(256))
    assert 0.7 < m.float().mean() < 0.85              # the reference's demo mask keeps 74%
    assert torch.equal(resolve_mask(None, 256), m)
    small = default_mask(64)
    assert abs(small.float().mean() - m.float().mean()) < 0.02


def test_random_pixel_mask():
    m = random_pixel_mask(256, 0.8, seed=3)
    assert abs(1 - m.float().mean() - 0.8) < 0.01
    assert torch.equal(m, random_pixel_mask(256, 0.8, seed=3))
    assert not torch.equal(m, random_pixel_mask(256, 0.8, seed=4))
    assert torch.equal(resolve_mask("random:0.8", 256, seed=3), m)


def test_center_box_mask():
    m = center_box_mask(256, 0.25)
    assert int((~m).sum()) == 128 * 128
    assert not m[64:192, 64:192].any() and m[:64].all() and m[192:].all()
    assert torch.equal(resolve_mask("box:0.25", 256), m)


@pytest.mark.parametrize("spec,words", [
    (torch.zeros(16, 16), ["no pixel"]),
    (np.ones((2, 16, 16)), ["2-D", "(2, 16, 16)"]),
    (np.full((16, 16), 2), ["0 or 1"]),
    ("random:1.0", ["[0, 1)", "1.0"]),
    ("box:x", ["ratio", "box:"]),
    ("nowhere/mask.png", ["does not exist", "random:R"]),
    (3.5, ["must be one of", "float"]),
])
def test_bad_masks_give_one_clear_line(spec, words):
    with pytest.raises(ValueError) as err:
        resolve_mask(spec, 16)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value), (str(err.value), word)


def test_bad_mask_suffix(tmp_path):
    (tmp_path / "m.txt").write_text("1")
    with pytest.raises(ValueError, match=r"\.png or \.npy"):
        load_mask(tmp_path / "m.txt", 16)


def test_random_mask_is_independent_of_image_zeros_initial_noise():
    """Run seed 0 gives image 0 the torch seed 0 for x_T. A mask drawn by a torch generator
    seeded 0 used the same uniforms, so x_T was 0.63 in size over the missing pixels against
    0.95 over the kept ones; the mask's own stream removes that."""
    from functions.noise import PerImageNoise, seed_for

    x_T = PerImageNoise([seed_for(0, 0)]).randn((3, 64, 64))[0, 0].abs()
    m = random_pixel_mask(64, 0.5, seed=0)
    assert abs(float(x_T[~m].mean()) - float(x_T[m].mean())) < 0.05
    assert 0.45 < float((~m).float().mean()) < 0.55
