"""Training images for runners.train: a folder read as tensors, and the random crops cut from it.

Crops at random scales with flips and optional quarter turns, so the prior learns
the invariances EquS relies on; CropBank keeps a pool of them on the training
device so a GPU step does no host work.
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from runners.data import IMG_EXTENSIONS, DatasetError, _to_rgb

IMAGE_EXTS = set(IMG_EXTENSIONS)   # what main.py reads


def load_folder(folder: str):
    """All images under `folder` (recursive) as float tensors (3, H, W) in [0, 1].

    `<exp>/datasets/demo_train` (and `demo`) are written from scikit-image's bundled
    photographs when missing, as the restoring commands do (runners/demo_data.py)."""
    path = Path(folder)
    if path.name in ("demo_train", "demo") and path.parent.name == "datasets" \
            and not (path.is_dir() and any(path.iterdir())):
        from runners.demo_data import materialise_demo_sets

        materialise_demo_sets(str(path.parent.parent))
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise ValueError(f"--data {folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
    images = []
    for p in paths:
        try:
            img = _to_rgb(Image.open(p))   # 16-bit scaled by its depth, float images refused: as restoring reads
        except (OSError, DatasetError) as e:
            raise ValueError(f"--data: cannot read image {p}: {e}") from None
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return paths, images


class CropSampler:
    """Random crops at random scales, flips and (optionally) quarter turns.

    A crop of side size/scale is cut from a random image (chosen with probability
    proportional to its area) and resized to `size`, with scale log-uniform in
    [min_scale, 1] (capped so that the crop fits in the image).
    """

    def __init__(self, images, size: int, min_scale: float = 0.2, rot90: bool = False, generator=None):
        self.images, self.size, self.rot90 = images, size, rot90  # images may live on any device
        self.min_scale = min_scale
        areas = torch.tensor([float(im.shape[1] * im.shape[2]) for im in images])
        self.weights = areas / areas.sum()
        self.g = generator or torch.Generator().manual_seed(0)

    def _uniform(self):
        return float(torch.rand((), generator=self.g))

    def sample(self, batch: int) -> torch.Tensor:
        out = []
        for _ in range(batch):
            img = self.images[int(torch.multinomial(self.weights, 1, generator=self.g))]
            _, H, W = img.shape
            lo = math.log(max(self.min_scale, self.size / min(H, W)))
            scale = math.exp(lo + (0 - lo) * self._uniform()) if lo < 0 else 1.0
            side = min(H, W, max(self.size, int(round(self.size / scale))))
            top = int(self._uniform() * (H - side + 1))
            left = int(self._uniform() * (W - side + 1))
            crop = img[:, top:top + side, left:left + side][None]
            if side != self.size:
                crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            if self._uniform() < 0.5:
                crop = crop.flip(-1)
            if self.rot90:
                crop = torch.rot90(crop, int(self._uniform() * 4) % 4, dims=(-2, -1))
            out.append(crop[0])
        return torch.stack(out).clamp(0, 1) * 2 - 1  # model space [-1, 1]


class CropBank:
    """A fixed pool of crops on the training device, drawn from with flips and turns.

    Cutting and antialiased resizing of single crops costs more than a training
    step of a small UNet on a GPU, so a GPU run cuts `n` crops once (with
    CropSampler, deterministic from the seed) and each step takes a random batch
    of them, flipping (and turning) each independently: one gather, no host work.
    """

    def __init__(self, sampler: CropSampler, n: int, device, dtype=torch.float16, chunk: int = 256,
                 rot90: bool = False):
        # quarter turns (and flips) are drawn per batch, so the pool's own crops need none
        parts = [sampler.sample(min(chunk, n - start)).to(device, dtype) for start in range(0, n, chunk)]
        self.bank, self.rot90 = torch.cat(parts), rot90

    def sample(self, batch: int, generator) -> torch.Tensor:
        dev = self.bank.device
        idx = torch.randint(0, self.bank.shape[0], (batch,), generator=generator, device=dev)
        x = self.bank[idx].float()
        flip = torch.randint(0, 2, (batch, 1, 1, 1), generator=generator, device=dev).bool()
        x = torch.where(flip, x.flip(-1), x)
        if self.rot90:  # square crops: a quarter turn is a transpose and a flip
            turn = torch.randint(0, 4, (batch, 1, 1, 1), generator=generator, device=dev)
            for k in (1, 2, 3):
                x = torch.where(turn == k, torch.rot90(x, k, dims=(-2, -1)), x)
        return x
