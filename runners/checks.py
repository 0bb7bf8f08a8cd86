"""Phase 1 of a restoration run: the checks on flags, config values, masks and output paths.

Each check raises the runner's InputError with one line naming the input and the fix,
before anything is written or any network is loaded (runners/plan.py calls them).
"""
import math
import os
from pathlib import Path

from runners.errors import InputError

MAX_SEED = (2 ** 63 - 2 ** 32) // 100003   # seed * 100003 + index stays a valid 64-bit generator seed
MASK_SPECS = ("random:", "box:")


def _check_flags(args) -> None:
    if not (args.sigma_y >= 0 and math.isfinite(args.sigma_y)):
        raise InputError(f"--sigma_y must be a number >= 0 (got {args.sigma_y}); it is the noise std in [0, 1] "
                         f"image units")
    if args.sigma_y > 1:
        raise InputError(f"--sigma_y must be at most 1 (got {args.sigma_y:g}): it is the noise std in [0, 1] image "
                         f"units, so 8-bit noise of std {args.sigma_y:g} is --sigma_y {args.sigma_y / 255:.4g}")
    if not 0.0 <= args.eta <= 1.0:
        raise InputError(f"--eta must be in [0, 1] (got {args.eta})")
    if not 0.0 <= args.etaB <= 1.0:
        raise InputError(f"--etaB must be in [0, 1] (got {args.etaB})")
    if args.noise_type != "gaussian":
        raise InputError(f"--noise_type {args.noise_type} is not supported; only gaussian is")
    if args.EquS and args.EquSplus:
        raise InputError("--EquS and --EquSplus are exclusive; choose one")
    photos = getattr(args, "native_size", False) or getattr(args, "resize_y", False)
    if not photos and (getattr(args, "tiling", "average") != "average" or getattr(args, "tile_stride", None) is not None
                       or getattr(args, "tile_blend", "cosine") != "cosine"):
        raise InputError("--tiling / --tile_stride / --tile_blend apply to images larger than the model; add "
                         "--native_size (or --resize_y) or drop them")
    if getattr(args, "tile_stride", None) is not None and args.tile_stride < 1:
        raise InputError(f"--tile_stride must be >= 1 pixel (got {args.tile_stride})")
    if getattr(args, "classifier_scale", None) is not None and not (args.classifier_scale >= 0
                                                                    and math.isfinite(args.classifier_scale)):
        raise InputError(f"--classifier_scale must be a number >= 0 (got {args.classifier_scale})")
    if getattr(args, "class_label", None) is not None and args.class_label < 0:
        raise InputError(f"--class must be a class index >= 0 (got {args.class_label})")
    if photos and getattr(args, "guidance", "correct") == "reference":
        raise InputError("--guidance reference (the official runner's defect) is for the benchmark path; drop "
                         "--native_size / --resize_y or use --guidance correct")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0 (got {args.seed})")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1 (got {args.batch_size})")
    if args.timesteps is not None and args.steps is not None and args.timesteps != args.steps:
        raise InputError(f"--timesteps {args.timesteps} and --steps {args.steps} disagree; give one")
    if args.deg_scale is not None and not math.isfinite(args.deg_scale):
        raise InputError(f"--deg_scale must be a finite number (got {args.deg_scale})")
    if args.seed > MAX_SEED:   # image i's seed, seed * 100003 + i, must fit a 64-bit generator seed
        raise InputError(f"--seed must be at most {MAX_SEED} (got {args.seed})")


def _mask_side(path: Path):
    """(H, W) of a mask file without resizing it."""
    if path.suffix.lower() == ".npy":
        import numpy as np

        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:   # truncated, empty or not an .npy at all
            raise InputError(f"cannot read mask {path}: {str(exc).splitlines()[0] or type(exc).__name__}") from None
        if array.size == 0:
            raise InputError(f"mask {path} is empty; give a square 0/1 array")
        if array.dtype.kind not in "biuf":
            raise InputError(f"mask {path} holds {array.dtype} values; give 0/1 (or boolean) values")
        return tuple(array.shape[-2:]) if array.ndim >= 2 else None
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except OSError as exc:
        raise InputError(f"cannot read mask {path}: {str(exc).splitlines()[0]}") from None


def _mask_source(args, image_size: int):
    """The inpainting mask the operator gets: a checked file path, a 'random:R'/'box:R' spec, or None.

    A mask file must be square with a side equal to the image size or an integer
    multiple of it (it is then subsampled, as the reference's 256x256 mask.npy
    taken every 4th pixel gives the 64x64 fixture mask); anything else is refused.
    """
    if args.mask is not None and args.mask.startswith(MASK_SPECS):
        return args.mask
    if args.mask is not None:
        path = Path(args.mask)
        if not path.is_file():
            raise InputError(f"--mask file not found: {args.mask}")
    elif args.deg == "inpainting" and (Path(args.exp) / "inp_masks" / "mask.npy").is_file():
        path = Path(args.exp) / "inp_masks" / "mask.npy"  # where the reference reads it
    else:
        return None
    side = _mask_side(path)
    if side is None or side[0] != side[1] or side[0] % image_size:
        shown = "x".join(map(str, side)) if side else "not 2-D"
        raise InputError(f"mask {path} is {shown} but the model works at {image_size}x{image_size}; "
                         f"give a square mask of side {image_size} (or a multiple of it)")
    return str(path)


def _check_output_path(root: Path) -> None:
    """The output folder, or its first existing ancestor, must be a folder."""
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            return
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output path {probe} is a file, not a folder; choose another --exp or -i")


def _check_apart(out_root: Path, data_root: Path) -> None:
    """The output folder may not be the dataset folder, inside it or around it: restored images
    would overwrite the inputs, or be read back as inputs by the next run. For a dataset of one
    image file the same test refuses an output folder that holds it or surrounds it, and allows
    one below the file's folder (exp/ beside a photo), since a single file is read alone."""
    out_real, data_real = Path(os.path.realpath(out_root)), Path(os.path.realpath(data_root))
    if out_real == data_real or data_real in out_real.parents or out_real in data_real.parents:
        raise InputError(f"output folder {out_root} and dataset {data_root} overlap (outputs would overwrite "
                         f"or join the inputs); choose an -i (or --exp) outside the dataset")


def _config_int(args, section: dict, section_name: str, key: str, default: int) -> int:
    """A positive whole number from the config, or one line naming the key and the file."""
    value = section.get(key, default) if isinstance(section, dict) else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise InputError(f"{section_name}.{key} in {args.config} must be a whole number >= 1 (got {value!r}); "
                         f"fix the config" + (" or pass --batch_size" if key == "batch_size" else ""))
    return int(value)
