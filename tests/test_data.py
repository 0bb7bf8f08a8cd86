"""runners/data.py: the reference's image choice, order and preprocessing."""
import numpy as np
import pytest
import torch
from PIL import Image

from runners import data
from tests.shared import fixture, shared_path

IMAGENET_CFG = {"data": {"dataset": "ImageNet", "image_size": 256, "subset_1k": True}}
CELEBA_CFG = {"data": {"dataset": "CelebA_HQ", "image_size": 256}}


def _uint8(x):
    return torch.round(255 * x).to(torch.int16)


def test_imagenet_subset_1k_matches_reference():
    ref = fixture("preprocess_metrics.pt")
    root = shared_path("data", "imagenet")
    items = data.build_dataset(str(root), "/nonexistent-exp", IMAGENET_CFG)
    # the list file chooses and orders the images
    assert [it.path.name for it in items] == ref["imagenet_names"]
    assert items[0].label == 0 and items[1].label == 1
    assert data.preprocess_mode(IMAGENET_CFG) == "crop_long_edge"
    x = data.load_batch(items, 256, "crop_long_edge")
    diff = (_uint8(x) - ref["imagenet_uint8"].to(torch.int16)).abs().max().item()
    assert diff <= 1, diff


def test_celeba_matches_reference():
    ref = fixture("preprocess_metrics.pt")
    root = shared_path("data", "celeba_hq")
    items = data.list_images(root)  # sorted order, as the fixture lists them
    assert [it.path.name for it in items] == ref["celeba_names"]
    assert data.preprocess_mode(CELEBA_CFG) == "resize_square"
    x = data.load_batch(items, 256, "resize_square")
    diff = (_uint8(x) - ref["celeba_uint8"].to(torch.int16)).abs().max().item()
    assert diff <= 1, diff


def test_celeba_order_is_the_reference_shuffle():
    root = shared_path("data", "celeba_hq")
    items = data.build_dataset(str(root), "/nonexistent-exp", CELEBA_CFG)
    names = sorted(p.name for p in root.iterdir())
    # the reference: indices = list(range(n)); np.random.seed(2019); np.random.shuffle(indices)
    state = np.random.get_state()
    np.random.seed(2019)
    idx = list(range(len(names)))
    np.random.shuffle(idx)
    np.random.set_state(state)
    assert [it.path.name for it in items] == [names[i] for i in idx]
    assert [it.index for it in items] == list(range(len(names)))
    assert idx != sorted(idx)


def _write(path, size=(40, 30), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return img


def test_non_rgb_images_are_converted(tmp_path):
    _write(tmp_path / "g.png", mode="L")
    _write(tmp_path / "p.png", mode="P")
    _write(tmp_path / "a.png", mode="RGBA")
    items = data.list_images(tmp_path)
    x = data.load_batch(items, 16, "resize_square")
    assert x.shape == (3, 3, 16, 16)
    g = x[[it.name for it in items].index("g")]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def test_crop_long_edge_and_center_crop_arr_are_square(tmp_path):
    img = _write(tmp_path / "wide.png", size=(90, 40))
    a = data.preprocess(img, 32, "crop_long_edge")
    b = data.preprocess(img, 32, "center_crop_arr")
    assert a.shape == b.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop_long_edge"):
        data.preprocess(img, 32, "bogus")


def test_recursive_search_and_unique_names(tmp_path):
    _write(tmp_path / "a" / "x.png")
    _write(tmp_path / "b" / "x.png", seed=1)
    _write(tmp_path / "b" / "y.jpg", seed=2)
    (tmp_path / "notes.txt").write_text("not an image")
    items = data.list_images(tmp_path)
    assert [it.name for it in items] == ["a__x", "b__x", "b__y"]
    _write(tmp_path / "c" / "z.png")
    assert [it.name for it in data.list_images(tmp_path / "b")] == ["x", "y"]


def test_images_that_would_share_an_output_name_get_their_extension_or_are_refused(tmp_path):
    _write(tmp_path / "ds" / "a.png")
    _write(tmp_path / "ds" / "a.jpg", seed=1)
    _write(tmp_path / "ds" / "b.png", seed=2)
    assert [it.name for it in data.list_images(tmp_path / "ds")] == ["a_jpg", "a_png", "b_png"]
    listed = tmp_path / "list.txt"
    listed.write_text("b.png 1\nb.png 2\n")
    with pytest.raises(data.DatasetError, match="listed twice"):
        data.list_images(tmp_path / "ds", listed)


def test_symlinked_folders_are_followed_once(tmp_path):
    """exp/datasets/NAME/sub -> elsewhere is how datasets are usually put in place; a link back
    up the tree must not loop."""
    _write(tmp_path / "store" / "faces" / "f.png")
    _write(tmp_path / "store" / "faces" / "g.png", seed=1)
    root = tmp_path / "exp" / "datasets" / "celeba_hq"
    root.mkdir(parents=True)
    (root / "celeba_hq").symlink_to(tmp_path / "store" / "faces", target_is_directory=True)
    (tmp_path / "store" / "faces" / "loop").symlink_to(tmp_path / "store" / "faces", target_is_directory=True)
    assert [it.name for it in data.list_images(root)] == ["f", "g"]


def test_resolve_root_prefers_exp_datasets(tmp_path):
    _write(tmp_path / "exp" / "datasets" / "faces" / "f.png")
    assert data.resolve_root("faces", str(tmp_path / "exp")) == tmp_path / "exp" / "datasets" / "faces"
    assert data.resolve_root(str(tmp_path / "exp" / "datasets" / "faces"), "/nope") == tmp_path / "exp" / "datasets" / "faces"
    with pytest.raises(data.DatasetError, match="not found"):
        data.resolve_root("missing", str(tmp_path / "exp"))


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetError, match="no images"):
        data.build_dataset(str(tmp_path / "empty"), str(tmp_path), CELEBA_CFG)


def test_list_file_from_exp_and_missing_entry(tmp_path):
    exp = tmp_path / "exp"
    root = exp / "datasets" / "imagenet"
    _write(root / "imagenet" / "b.JPEG")
    _write(root / "imagenet" / "a.JPEG", seed=3)
    (exp / "imagenet_val_1k.txt").write_text("b.JPEG 7\na.JPEG 3\n")
    cfg = {"data": {"dataset": "ImageNet", "subset_1k": True}}
    items = data.build_dataset("imagenet", str(exp), cfg)
    assert [(it.name, it.label) for it in items] == [("b", 7), ("a", 3)]
    (exp / "imagenet_val_1k.txt").write_text("b.JPEG 7\nc.JPEG 3\n")
    with pytest.raises(data.DatasetError, match="c.JPEG.*line 2.*missing"):
        data.build_dataset("imagenet", str(exp), cfg)


def test_subset_selection():
    items = [data.ImageItem(i, str(i), None) for i in range(5)]
    assert [it.index for it in data.select_subset(items, 1, 3)] == [1, 2]
    assert [it.index for it in data.select_subset(items, -1, -1)] == list(range(5))
    assert [it.index for it in data.select_subset(items, 2, -1)] == [2, 3, 4]
    # an end past the last image is the last image: --subset_end 100 means at most 100
    assert [it.index for it in data.select_subset(items, 0, 9)] == list(range(5))
    assert [it.index for it in data.select_subset(items, 3, 100)] == [3, 4]
    for bad in [(3, 3), (4, 2), (5, 9), (7, -1)]:
        with pytest.raises(data.DatasetError, match="subset"):
            data.select_subset(items, *bad)


def test_corrupt_image_is_named(tmp_path):
    _write(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    items = data.list_images(tmp_path)
    with pytest.raises(data.DatasetError, match="bad.png"):
        data.verify_images(items)
    with pytest.raises(data.DatasetError, match="bad.png"):
        data.load_batch(items, 16, "resize_square")


@pytest.mark.parametrize("ext", ["jpg", "png", "tif"])
def test_truncated_and_float_images_are_refused_before_the_run(tmp_path, ext):
    """A half-copied JPEG passes PIL's verify(); it must fail while planning, not mid-run."""
    _write(tmp_path / "ds" / "good.png")
    whole = tmp_path / f"whole.{ext}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    (tmp_path / "ds" / f"half.{ext}").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(data.DatasetError, match=f"half.{ext}"):
        data.verify_images(data.list_images(tmp_path / "ds"))
    Image.fromarray(np.zeros((8, 8), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(data.DatasetError, match="floating-point"):
        data.verify_images([data.ImageItem(0, "float", tmp_path / "float.tif", -1)])


def test_demo_sets_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    """The demo's images are written into a hidden folder that is renamed into place: an
    interrupted first use leaves nothing behind, and a later one writes the whole set."""
    from runners import demo_data

    calls = []

    def failing(name, size=64, grid=2):
        calls.append(name)
        raise KeyboardInterrupt
    monkeypatch.setattr(demo_data, "held_out_tiles", failing)
    with pytest.raises(KeyboardInterrupt):
        demo_data.materialise_demo_sets(str(tmp_path))
    monkeypatch.undo()
    assert calls and sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["demo_train"]

    (tmp_path / "datasets" / "demo").mkdir()   # an empty folder gets filled too
    root = data.resolve_root("demo", str(tmp_path))
    names = sorted(p.stem for p in root.iterdir())
    assert names == sorted(f"{n}_{r}{c}" for n in demo_data.HELD_OUT_NAMES for r in range(2) for c in range(2))
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["demo", "demo_train"]


def test_sixteen_bit_grey_images_keep_their_range(tmp_path):
    """PIL's convert('RGB') clips 16-bit grey to 0-255 (almost all white); it is scaled instead."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
        t = data.preprocess(img, 32, "resize_square")
    eight_bit = torch.from_numpy((ramp // 257).astype(np.float32) / 255)
    assert t.shape == (3, 32, 32) and abs(float(t.mean()) - float(eight_bit.mean())) < 0.01
    assert float((t == 1).float().mean()) < 0.05
    with pytest.raises(data.DatasetError, match="floating-point"):
        data.preprocess(Image.fromarray(np.zeros((8, 8), np.float32)), 8, "resize_square")


def test_one_image_file_is_a_dataset_of_that_image(tmp_path):
    """--path_y may name one image: the dataset is that image under its stem, found in
    exp/datasets too; a list file (ImageNet subset_1k) does not choose among it."""
    _write(tmp_path / "photo.png")
    _write(tmp_path / "other.png", seed=1)                  # beside it, not part of the dataset
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / data.LIST_FILE).write_text("missing.JPEG 3\n")
    for cfg in (CELEBA_CFG, IMAGENET_CFG):
        (item,) = data.build_dataset(str(tmp_path / "photo.png"), str(tmp_path / "exp"), cfg)
        assert (item.index, item.name, item.path, item.label) == (0, "photo", tmp_path / "photo.png", -1)
    _write(tmp_path / "exp" / "datasets" / "in_exp.jpg", seed=2)
    assert data.resolve_root("in_exp.jpg", str(tmp_path / "exp")) == tmp_path / "exp" / "datasets" / "in_exp.jpg"
    assert data.existing_root(str(tmp_path / "photo.png"), "/nope") == tmp_path / "photo.png"
    assert [it.name for it in data.build_dataset("in_exp.jpg", str(tmp_path / "exp"), CELEBA_CFG)] == ["in_exp"]
    (tmp_path / "notes.txt").write_text("not an image")
    assert data.existing_root(str(tmp_path / "notes.txt"), "/nope") is None
    with pytest.raises(data.DatasetError, match="notes.txt is neither a folder nor an image file"):
        data.build_dataset(str(tmp_path / "notes.txt"), "/nope", CELEBA_CFG)


def _pixels(path, width, height, grey16=False):
    """A random (height, width) image (incompressible: a cut file misses pixels), saved losslessly."""
    rng = np.random.default_rng(width * height)
    if grey16:
        arr = rng.integers(0, 65536, (height, width)).astype(np.uint16)
    else:
        arr = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_load_native_keeps_the_size_and_centre_crops_to_a_multiple(tmp_path):
    arr = _pixels(tmp_path / "photo.png", width=10, height=7)
    item = data.ImageItem(0, "photo", tmp_path / "photo.png")
    x, note = data.load_native(item)                                 # multiple 1: the image as stored
    assert note is None and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    x, note = data.load_native(item, 4, reason="the SR factor")
    # 7 -> 4 rows from row 1, 10 -> 8 columns from column 1 (the centre, rounded towards the top-left)
    assert torch.equal(x, torch.from_numpy(arr[1:5, 1:9]).permute(2, 0, 1).float() / 255)
    assert note == "photo.png: 10x7 cropped to 8x4 (a multiple of the SR factor 4)"
    assert data.load_native(item, 7)[1] == "photo.png: 10x7 cropped to 7x7 (a multiple of 7)"
    assert data.load_native(item, 7)[0].shape == (3, 7, 7)
    with pytest.raises(data.DatasetError, match=r"photo.png is 10x7, smaller than the SR factor 8 on a side"):
        data.load_native(item, 8, reason="the SR factor")
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="multiple must be a whole number"):
            data.load_native(item, bad)


def test_load_native_converts_like_the_resized_path(tmp_path):
    """Grey 16-bit images are scaled by their bit depth (not clipped) into three equal channels;
    an unreadable file is named."""
    arr = _pixels(tmp_path / "g16.png", width=6, height=5, grey16=True)
    x, note = data.load_native(data.ImageItem(0, "g16", tmp_path / "g16.png"))
    expected = torch.from_numpy((arr // 257).astype(np.float32) / 255)
    assert note is None and x.shape == (3, 5, 6)
    assert all(torch.equal(x[c], expected) for c in range(3))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(data.DatasetError, match="cannot read image .*bad.png"):
        data.load_native(data.ImageItem(0, "bad", tmp_path / "bad.png"))


def test_native_size_reads_the_header_only(tmp_path):
    """(H, W) from the header: a file cut after its header still gives its size, which decoding refuses."""
    whole = tmp_path / "whole.png"
    _pixels(whole, width=90, height=40)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    assert data.native_size(data.ImageItem(0, "whole", whole)) == (40, 90)
    assert data.native_size(data.ImageItem(0, "cut", cut)) == (40, 90)
    with pytest.raises(data.DatasetError, match="cut.png"):
        data.load_native(data.ImageItem(0, "cut", cut))
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(data.DatasetError, match="cannot read image .*bad.png"):
        data.native_size(data.ImageItem(0, "bad", tmp_path / "bad.png"))
