"""The demo's images, materialised from scikit-image's bundled photographs.

Nothing is committed: `materialise_demo_sets(exp)` writes, on first use,
- exp/datasets/demo_train/: the training photographs (astronaut, rocket, the left
  motorcycle of stereo_motorcycle(), hubble_deep_field, immunohistochemistry, retina);
- exp/datasets/demo/: the held-out evaluation set, tiles of chelsea and coffee.
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
