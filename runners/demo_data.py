"""The demo's images, materialised from scikit-image's bundled photographs.

Nothing is committed: `materialise_demo_sets(exp)` writes, on first use,
- exp/datasets/demo_train/: the training photographs (astronaut, rocket, the left
  motorcycle of stereo_motorcycle(), hubble_deep_field, immunohistochemistry, retina);
- exp/datasets/demo/: the held-out evaluation set, tiles of chelsea and coffee;
- exp/datasets/demo_photos/: the same two photographs whole, downscaled to 128 x 192 (for
  --native_size runs), with exp/datasets/demo_masks/scratches.png, a scratch mask of that size
  (white = kept) for the old-photo composite;
- exp/datasets/demo_lowres/: the photographs at 64 x 96, as measurements for --resize_y.
`data.cat()` is pixel-identical to chelsea, so it is in neither set.
"""
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from runners.results import UMASK

TRAIN_NAMES = ("astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina")
HELD_OUT_NAMES = ("chelsea", "coffee")


def _load(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if name == "stereo_motorcycle":
        img = img[0]  # (left, right, disparity): the left view
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return img[..., :3]


def held_out_tiles(name: str, size: int = 64, grid: int = 2):
    """Centre square, resized so its side is size*grid, cut into grid x grid tiles."""
    img = Image.fromarray(_load(name))
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = np.asarray(img.resize((size * grid, size * grid), Image.BICUBIC))
    return {f"{name}_{r}{c}": img[r * size:(r + 1) * size, c * size:(c + 1) * size]
            for r in range(grid) for c in range(grid)}


PHOTO_SIZE = (128, 192)     # (H, W) of the whole demo photographs


def held_out_photos(size=PHOTO_SIZE):
    """chelsea and coffee whole (centre-cropped to the aspect of `size`), resized to `size`."""
    h, w = size
    out = {}
    for name in HELD_OUT_NAMES:
        img = Image.fromarray(_load(name))
        W, H = img.size
        cw, ch = (W, round(W * h / w)) if W * h <= H * w else (round(H * w / h), H)
        left, top = (W - cw) // 2, (H - ch) // 2
        out[name] = np.asarray(img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC))
    return out


def scratch_mask(size=PHOTO_SIZE) -> np.ndarray:
    """Thin dark scratches (0 = missing) over a white (kept) image of `size`: an old photo's damage."""
    h, w = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    kept = np.ones((h, w), dtype=bool)
    for (u0, v0, u1, v1, width) in ((0.1, 0.05, 0.35, 0.95, 1.2), (0.55, 0.0, 0.9, 0.6, 1.0),
                                    (0.0, 0.7, 1.0, 0.55, 1.5)):
        p0, p1 = np.array([u0 * w, v0 * h]), np.array([u1 * w, v1 * h])
        d = p1 - p0
        s = np.clip(((u - p0[0]) * d[0] + (v - p0[1]) * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(u - p0[0] - s * d[0], v - p0[1] - s * d[1])
        kept &= dist > width
    return np.where(kept, 255, 0).astype(np.uint8)


def _write_folder(target: Path, make_images) -> None:
    """Write make_images()'s {stem: image} as PNGs into `target`, all at once: they go to a
    fresh hidden folder beside it, which is then renamed into place. An interrupted first
    use leaves no half-filled set, and processes that race (torchrun ranks) each build
    their own copy; the first rename wins and the others discard theirs."""
    if target.is_dir():
        if any(target.iterdir()):
            return
        try:
            target.rmdir()  # an empty folder (left by an older version): fill it
        except OSError:     # another process removed or filled it first
            if target.is_dir() and any(target.iterdir()):
                return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)     # mkdtemp makes it 0700 whatever the umask
        for stem, img in make_images().items():
            Image.fromarray(img).save(tmp / f"{stem}.png", format="PNG")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def materialise_demo_sets(exp: str = "exp", size: int = 64) -> dict:
    """Write the demo's training and held-out folders if they are missing; return their paths."""
    root = Path(exp) / "datasets"
    train, held = root / "demo_train", root / "demo"
    _write_folder(train, lambda: {name: _load(name) for name in TRAIN_NAMES})
    _write_folder(held, lambda: {tile: img for name in HELD_OUT_NAMES for tile, img in held_out_tiles(name, size).items()})
    return {"train": str(train), "demo": str(held)}


def materialise_photo_sets(exp: str = "exp") -> dict:
    """Write the whole-photo demo folders (demo_photos, demo_lowres, demo_masks) if they are missing."""
    root = Path(exp) / "datasets"
    photos, lowres, masks = root / "demo_photos", root / "demo_lowres", root / "demo_masks"
    _write_folder(photos, held_out_photos)
    half = (PHOTO_SIZE[0] // 2, PHOTO_SIZE[1] // 2)
    _write_folder(lowres, lambda: {name: np.asarray(Image.fromarray(img).resize(half[::-1], Image.BOX))
                                   for name, img in held_out_photos().items()})
    _write_folder(masks, lambda: {"scratches": scratch_mask()})
    return {"demo_photos": str(photos), "demo_lowres": str(lowres), "demo_masks": str(masks)}
