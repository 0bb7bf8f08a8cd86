"""Benchmark images: which files, in which order, and how they become tensors.

This reproduces the reference's data paths so that the same command picks the
same images and prepares them identically (checked against
../shared/fixtures/preprocess_metrics.pt):

- `--path_y NAME` is the folder `<exp>/datasets/NAME`, or NAME itself when that
  does not exist; images are found recursively. NAME may also be one image file:
  the dataset is that image, named after the file's stem.
- ImageNet configs with `data.subset_1k: true` read the list file
  `imagenet_val_1k.txt` (from `<exp>/` as the reference lays it out, else from
  the dataset folder): it chooses and orders the images. Preprocessing: centre
  crop of the long edge to a square, torchvision `Resize(size)` on the PIL image.
- ImageNet without `subset_1k`: guided-diffusion's `center_crop_arr`.
- Every other dataset (CelebA-HQ, ...): torchvision `Resize([size, size])`.
- CelebA-HQ / FFHQ folders are ordered as the reference's ImageFolder +
  `np.random.seed(2019)` shuffle orders them, so `--subset_start/--subset_end`
  select the same images as the reference does.
- Every image is converted to RGB (grey, palette, RGBA inputs work).

Each image keeps its index in that full order; the runner derives the image's
random seed from it, so a subset run and a full run agree image by image.

For images restored at their own size, `native_size` reads an image's size from its
header (nothing decoded) and `load_native` loads it unresized, centre-cropped to a
multiple of what the operator needs (an SR factor).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from runners.errors import InputError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LIST_FILE = "imagenet_val_1k.txt"
PREPROCESS_MODES = ("resize_square", "crop_long_edge", "center_crop_arr")


class DatasetError(InputError):
    """A dataset problem the user must fix (missing folder, unreadable image, ...)."""


@dataclass(frozen=True)
class ImageItem:
    index: int      # position in the dataset's full order (seeds derive from it)
    name: str       # output file stem, unique within the dataset
    path: Path
    label: int = -1  # ImageNet class from the list file, -1 when unknown


def _root_candidates(path_y: str, exp: str) -> List[Path]:
    return [Path(exp) / "datasets" / str(path_y), Path(str(path_y))]


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMG_EXTENSIONS)


def existing_root(path_y: str, exp: str) -> Optional[Path]:
    """The folder or image file --path_y names (`<exp>/datasets/<path_y>`, else `path_y`), or None:
    no side effects."""
    return next((c for c in _root_candidates(path_y, exp) if c.is_dir() or _is_image_file(c)), None)


def resolve_root(path_y: str, exp: str) -> Path:
    """`<exp>/datasets/<path_y>` if it exists, else `path_y` as a path: a folder, or one image file.

    The demo's sets (`demo`, `demo_train`, and the whole photographs `demo_photos`, `demo_lowres`)
    are written from scikit-image's bundled photographs on first use (runners/demo_data.py).
    """
    candidates = _root_candidates(path_y, exp)
    if path_y in ("demo", "demo_train") and not (candidates[0].is_dir() and any(candidates[0].iterdir())):
        from runners.demo_data import materialise_demo_sets

        materialise_demo_sets(exp)
    if path_y in ("demo_photos", "demo_lowres") and not (candidates[0].is_dir() and any(candidates[0].iterdir())):
        from runners.demo_data import materialise_photo_sets

        materialise_photo_sets(exp)
    found = existing_root(path_y, exp)
    if found is not None:
        return found
    for c in candidates:
        if c.exists():
            raise DatasetError(f"dataset path {c} is neither a folder nor an image file "
                               f"({', '.join(IMG_EXTENSIONS)}); give one of those")
    raise DatasetError(f"dataset folder not found: --path_y {path_y} (looked for {candidates[0]} and {candidates[1]})")


def _cfg_data(config) -> dict:
    return dict(config.get("data", {})) if isinstance(config, dict) else {}


def preprocess_mode(config) -> str:
    data = _cfg_data(config)
    if str(data.get("dataset", "")).lower() == "imagenet":
        return "crop_long_edge" if data.get("subset_1k", False) else "center_crop_arr"
    return "resize_square"


def find_list_file(config, exp: str, root: Path) -> Optional[Path]:
    """The ImageNet subset_1k list file, if the config asks for one and it exists."""
    data = _cfg_data(config)
    if str(data.get("dataset", "")).lower() != "imagenet" or not data.get("subset_1k", False):
        return None
    for candidate in (Path(exp) / LIST_FILE, root / LIST_FILE):
        if candidate.is_file():
            return candidate
    return None


def _scan(root: Path) -> List[Path]:
    """Image files below root, sorted, following symlinked folders (the usual way to put a dataset
    at exp/datasets/NAME/...) but entering each real folder once, so a link loop ends."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(IMG_EXTENSIONS):
                found.append(Path(dirpath) / f)
    return found


def _names(paths: Sequence[Path], root: Path) -> List[str]:
    """Output names: file stems when they are unique, else the relative path with '/' as '__',
    else that with the extension too ('a.png' and 'a.jpg' -> 'a_png', 'a_jpg'). Two images that
    would still share a name (a file listed twice) are refused: one would overwrite the other."""
    for name_of in (lambda p: p.stem,
                    lambda p: str(p.relative_to(root).with_suffix("")).replace(os.sep, "__"),
                    lambda p: str(p.relative_to(root).with_suffix("")).replace(os.sep, "__") + "_" + p.suffix[1:]):
        names = [name_of(p) for p in paths]
        if len(set(names)) == len(names):
            return names
    first = {}
    for p, n in zip(paths, names):
        if n in first:
            what = f"{p} is listed twice" if first[n] == p else f"{first[n]} and {p} would both be saved as {n}"
            raise DatasetError(f"{what}; each image must appear once under a name of its own (rename one)")
        first[n] = p
    raise AssertionError("unreachable")


def reference_shuffle(n: int) -> List[int]:
    """The permutation the reference applies to CelebA-HQ folders (np.random.seed(2019))."""
    indices = list(range(n))
    np.random.RandomState(2019).shuffle(indices)
    return indices


def list_images(root: Path, list_file: Optional[Path] = None, shuffle_like_reference: bool = False) -> List[ImageItem]:
    """All images of the dataset in the reference's order (no subset applied); root may be one image file."""
    files = [root] if root.is_file() else _scan(root)
    labels = [-1] * len(files)
    if list_file is not None:
        by_rel = {str(p.relative_to(root)).replace(os.sep, "/"): p for p in files}
        by_base = {}
        for p in files:
            by_base.setdefault(p.name, []).append(p)
        chosen, labels = [], []
        for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            entry = parts[0]
            path = by_rel.get(entry)
            if path is None:
                matches = by_base.get(Path(entry).name, [])
                if len(matches) != 1:
                    what = "is missing" if not matches else "is ambiguous"
                    raise DatasetError(f"image {entry} (line {lineno} of {list_file}) {what} under {root}")
                path = matches[0]
            chosen.append(path)
            labels.append(int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else -1)
        files = chosen
    elif shuffle_like_reference:
        order = reference_shuffle(len(files))
        files = [files[i] for i in order]
    if not files:
        raise DatasetError(f"no images found in {root} (looked for {', '.join(IMG_EXTENSIONS)})")
    names = _names(files, root)
    return [ImageItem(i, n, p, lab) for i, (n, p, lab) in enumerate(zip(names, files, labels))]


def select_subset(items: List[ImageItem], start: int = -1, end: int = -1) -> List[ImageItem]:
    """The reference's `--subset_start/--subset_end` (half-open; -1 means unset). An end past the
    last image means the last image (`--subset_end 100` is "at most 100"), as a slice does."""
    n = len(items)
    lo = 0 if start is None or start < 0 else start
    hi = n if end is None or end < 0 else min(end, n)
    if lo >= n or hi <= lo:
        raise DatasetError(f"--subset_start {start} / --subset_end {end} select nothing from {n} images "
                           f"(need 0 <= start < {n} and start < end)")
    return items[lo:hi]


def build_dataset(path_y: str, exp: str, config, subset_start: int = -1, subset_end: int = -1) -> List[ImageItem]:
    root = resolve_root(path_y, exp)
    # one image file is the whole dataset: no list file chooses among it
    list_file = None if root.is_file() else find_list_file(config, exp, root)
    dataset = str(_cfg_data(config).get("dataset", ""))
    items = list_images(root, list_file, shuffle_like_reference=dataset in ("CelebA_HQ", "FFHQ"))
    return select_subset(items, subset_start, subset_end)


def _center_crop_arr(img: Image.Image, size: int) -> Image.Image:
    """guided-diffusion's centre crop: box-halve, bicubic resize of the short side, crop."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's convert("RGB") clips 16-bit grey (modes I;16*, and I for 16-bit files
    under older Pillow) to 0-255, which turns most of an image white: those are scaled down
    first, by their bit depth (a dark 16-bit image stays dark).
    Floating-point images have no agreed range and are refused."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise DatasetError(f"{getattr(img, 'filename', 'image')}: 32-bit integer pixels outside 0-65535; "
                               f"save it as an 8- or 16-bit image")
        img = Image.fromarray((arr // 257).astype(np.uint8))   # 16-bit files open as I;16 (or I, older Pillow)
    elif img.mode == "F":
        raise DatasetError(f"{getattr(img, 'filename', 'image')}: floating-point pixels (PIL mode F) have no "
                           f"agreed range; save it as an 8- or 16-bit image")
    return img.convert("RGB")


def preprocess(img: Image.Image, size: int, mode: str) -> torch.Tensor:
    """PIL image -> (3, size, size) float tensor in [0, 1]."""
    import torchvision.transforms.functional as TF

    img = _to_rgb(img)
    if mode == "resize_square":
        img = TF.resize(img, [size, size])
    elif mode == "crop_long_edge":
        img = TF.resize(TF.center_crop(img, min(img.size)), size)
    elif mode == "center_crop_arr":
        img = _center_crop_arr(img, size)
    else:
        raise ValueError(f"preprocess mode '{mode}' is unknown; choose one of: {', '.join(PREPROCESS_MODES)}")
    return TF.to_tensor(img)


def load_image(item: ImageItem, size: int, mode: str) -> torch.Tensor:
    try:
        with Image.open(item.path) as img:
            img.load()
            return preprocess(img, size, mode)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {item.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def verify_images(items: Sequence[ImageItem]) -> List[Tuple[int, int]]:
    """Fail early, naming the file, on images that cannot be read whole or have no agreed range;
    return each image's (width, height).

    PNGs are checked by PIL's verify() (every chunk's CRC, truncation included) without
    decoding; other formats are decoded, since a truncated JPEG passes verify()."""
    sizes = []
    for item in items:
        try:
            with Image.open(item.path) as img:
                sizes.append(img.size)
                if img.mode == "F":
                    _to_rgb(img)   # refuses floating-point pixels, naming the file
                if img.format == "PNG":
                    img.verify()
                else:
                    img.load()
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"cannot read image {item.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return sizes


def reshaped_note(items: Sequence[ImageItem], sizes: Sequence[Tuple[int, int]], size: int, mode: str) -> Optional[str]:
    """A note where preprocessing changes what the images show: smaller ones are enlarged (blurred
    ground truth), and non-square ones are stretched by the square resize (CelebA-HQ / FFHQ configs)."""
    small = [(it, wh) for it, wh in zip(items, sizes) if min(wh) < size]
    stretched = [(it, wh) for it, wh in zip(items, sizes) if mode == "resize_square" and wh[0] != wh[1]]
    parts = []
    for found, what in ((small, f"smaller than {size} on a side, enlarged"),
                        (stretched, f"not square, stretched to {size}x{size} (this config resizes without cropping)")):
        if found:
            it, (w, h) = found[0]
            parts.append(f"{len(found)} of {len(items)} images are {what} (e.g. {it.name}, {w}x{h})")
    return f"note: {'; '.join(parts)}" if parts else None


def load_batch(items: Sequence[ImageItem], size: int, mode: str) -> torch.Tensor:
    """(B, 3, size, size) in [0, 1] on the CPU."""
    return torch.stack([load_image(it, size, mode) for it in items])


def native_size(item: ImageItem) -> Tuple[int, int]:
    """(H, W) of the image as stored, from its header (nothing is decoded), so that a plan can refuse
    images the model cannot work on before anything is written. Note: verify_images gives (W, H)."""
    try:
        with Image.open(item.path) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {item.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return height, width


def load_native(item: ImageItem, multiple: int = 1, reason: str = "") -> Tuple[torch.Tensor, Optional[str]]:
    """(3, H, W) in [0, 1] at the image's own size, RGB, centre-cropped so that H and W are multiples
    of `multiple` (what the operator needs, e.g. the SR factor, which `reason` names in the note), and a
    one-line note saying the crop, or None where nothing was cropped."""
    import torchvision.transforms.functional as TF

    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a whole number >= 1 (got {multiple!r}); pass e.g. the SR factor")
    try:
        with Image.open(item.path) as img:
            img.load()
            rgb = _to_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {item.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    width, height = rgb.size
    w, h = width - width % multiple, height - height % multiple
    why = f"{reason} {multiple}" if reason else str(multiple)
    if not (w and h):
        raise DatasetError(f"image {item.path} is {width}x{height}, smaller than {why} on a side; "
                           f"give an image of at least {multiple}x{multiple}")
    if (w, h) == (width, height):
        return TF.to_tensor(rgb), None
    left, top = (width - w) // 2, (height - h) // 2
    note = f"{item.path.name}: {width}x{height} cropped to {w}x{h} (a multiple of {why})"
    return TF.to_tensor(rgb.crop((left, top, left + w, top + h))), note
