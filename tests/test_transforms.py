"""Invertible transforms used by EquS."""
import pytest
import torch

from functions.transforms import GROUPS, TRANSFORM_NAMES, get_transform, get_transforms

X = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)


@pytest.mark.parametrize("name", list(TRANSFORM_NAMES) + ["shift3", "shift2,5"])
def test_inverse_undoes_the_transform(name):
    T = get_transform(name)
    assert torch.equal(T.inverse(T(X)), X) and torch.equal(T(T.inverse(X)), X)


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_transforms_are_orthogonal(name):
    """<T x, z> = <x, T^-1 z>: T is a pixel permutation, so T^-1 = T^T."""
    T = get_transform(name)
    x, z = X.double(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose((T(x) * z).sum(), (x * T.inverse(z)).sum(), rtol=1e-12, atol=1e-9)
    # a permutation: the same values, rearranged
    assert torch.equal(T(X).flatten().sort().values, X.flatten().sort().values)


def test_hflip_mirrors_the_width():
    assert torch.equal(get_transform("hflip")(X)[..., 0], X[..., -1])
    assert torch.equal(get_transform("vflip")(X)[..., 0, :], X[..., -1, :])


def test_d4_has_eight_distinct_elements_and_rotations_compose():
    images = [T(X) for T in get_transforms("d4")]
    assert len(images) == 8
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8
    r90 = get_transform("rot90")
    assert torch.equal(r90(r90(X)), get_transform("rot180")(X))
    assert torch.equal(r90(r90(r90(r90(X)))), X)


def test_sets_and_errors():
    assert [T.name for T in get_transforms("flips")] == list(GROUPS["flips"])
    assert [T.name for T in get_transforms("hflip,rot90")] == ["hflip", "rot90"]
    with pytest.raises(ValueError, match="transform 'spin' is unknown; choose one of"):
        get_transform("spin")


def test_a_shift_with_two_offsets_is_one_member_of_a_set():
    """--transform 'hflip,shift8,16' is two transforms (the comma after a shift's dy starts its dx),
    and every transform's name reads back as itself."""
    from functions.transforms import get_transforms
    group = get_transforms("hflip,shift8,16,rot90")
    assert [T.name for T in group] == ["hflip", "shift8:16", "rot90"]
    assert [T.name for T in get_transforms(",".join(T.name for T in group))] == [T.name for T in group]
    x = torch.arange(2 * 16 * 16.0).reshape(1, 2, 16, 16)
    assert torch.equal(group[1](x), torch.roll(x, shifts=(8, 16), dims=(-2, -1)))


def test_closure_of_transform_sets():
    """Only a closed set (a group) makes the average an equivariant denoiser."""
    from functions.equivariance import make_denoiser
    from functions.transforms import first_missing_composition

    def group(spec):
        return make_denoiser(lambda x, t: x, "average", spec).transforms

    for spec in ("hflip", "flips", "rotations", "d4", "rot180", "vflip"):
        assert first_missing_composition(group(spec), 16) is None, spec
    assert first_missing_composition(group("rot90"), 16) == ("rot90", "rot90")     # {id, rot90}: rot180 missing
    assert first_missing_composition(group("hflip,vflip"), 16) is not None        # rot180 missing
    assert first_missing_composition(group("shift8"), 16) is None                    # 8 + 8 = 16 = 0
    assert first_missing_composition(group("shift8"), 32) is not None
