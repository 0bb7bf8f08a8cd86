"""Your own photographs: images at their own size (--native_size) or measurements read from files (--resize_y).

The benchmark path resizes every image to the model's square size. Here each image
keeps its size, so the run is image by image:
- the operator is built for each image at its restored size (operators and composites
  work at any H x W), and the projection runs on the whole image;
- the denoiser is tiled over windows of the model's size (functions/tiling.TiledEps,
  --tiling average), or the image is restored window after window (functions/mask_shift,
  --tiling mask_shift, the reference's hq_demo order);
- with --resize_y the file is the measurement y itself (a real low-resolution, grey or
  damaged photo): there is no ground truth, so only consistency is scored.

Planning (`photo_sizes`) reads the image headers only and refuses what cannot run
before anything is written; `restore_photos` is the per-image loop (runners/batches.py
hands photo runs to it).
"""
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from functions import metrics
from functions.noise import measurement_seed, seed_for
from runners import data
from runners.errors import InputError

LOG = logging.getLogger("equs")
GRID_HEIGHT = 256    # each grid tile is shown at this height, whatever the image's size


def photo_mode(args) -> bool:
    return bool(getattr(args, "native_size", False) or getattr(args, "resize_y", False))


def parts_of(deg: str) -> Tuple[str, ...]:
    """The degradations a --deg names: one, a named composite's parts, or 'a+b+c'."""
    from functions.operators.composite import NAMED

    return NAMED.get(deg) or tuple(p.strip() for p in deg.split("+"))


def sr_factor(deg: str, deg_scale) -> int:
    """The scale between y and the image: the SR factor where a part is super-resolution, else 1."""
    if not any(p.startswith("sr_") for p in parts_of(deg)):
        return 1
    f = 4 if deg_scale is None else deg_scale
    if float(f) != int(float(f)) or int(float(f)) < 1:
        raise InputError(f"--deg_scale (SR factor) must be a whole number >= 1 for --native_size / --resize_y "
                         f"(got {deg_scale})")
    return int(float(f))


def photo_sizes(args, items: List[data.ImageItem], window: int) -> Tuple[Dict[str, Tuple[int, int]], List[str]]:
    """name -> restored (H, W) per image, and the notes; refuses images too small for the window."""
    if args.deg.startswith("cs_") and "+" not in args.deg:   # a CS part of a composite: parse_spec says why
        raise InputError(f"--deg {args.deg}: compressed sensing works only at the model's square size; drop "
                         f"--native_size / --resize_y")
    f = sr_factor(args.deg, args.deg_scale)
    sizes, notes = {}, []
    for it in items:
        h, w = data.native_size(it)
        if args.resize_y:
            H, W = h * f, w * f
        else:
            H, W = h - h % f, w - w % f
            if (H, W) != (h, w):
                notes.append(f"note: {it.path.name}: {w}x{h} cropped to {W}x{H} (a multiple of the SR factor {f})")
        if H < window or W < window:
            what = f"restores to {W}x{H}" if args.resize_y else f"is {W}x{H}"
            raise InputError(f"image {it.path} {what}, smaller than the model's {window}x{window} window; "
                             f"give images of at least {window}x{window}" +
                             (f" ({-(-window // f)}x{-(-window // f)} with --resize_y at {f}x)" if args.resize_y else ""))
        sizes[it.name] = (H, W)
    return sizes, notes


def check_tiling(args, window: int) -> None:
    """--tile_stride within the window; Mask-Shift's windows on the SR factor's grid (a window
    that cuts pooling cells would get a wrong y of its own)."""
    stride = args.tile_stride or window // 2
    if stride > window:
        raise InputError(f"--tile_stride {stride} is larger than the model's {window}-pixel window (gaps would "
                         f"be left); give 1..{window}")
    f = sr_factor(args.deg, args.deg_scale)
    if args.tiling == "mask_shift" and f > 1 and (stride % f or window % f):
        raise InputError(f"--tiling mask_shift needs --tile_stride (here {stride}) and the window ({window}) to be "
                         f"multiples of the SR factor {f}; give e.g. --tile_stride {max(f, stride - stride % f)}")


def check_photo_mask(args, sizes: Dict[str, Tuple[int, int]]) -> None:
    """A --mask file must have each photo's restored size exactly (it is not stretched onto a photo)."""
    from runners.checks import _mask_side

    if args.mask is None or args.mask.startswith(("random:", "box:")):
        return
    path = Path(args.mask)
    if not path.is_file():
        raise InputError(f"--mask file not found: {args.mask}")
    side = _mask_side(path)
    for name, (H, W) in sizes.items():
        h, w = mask_hw_for(args, (H, W))
        if side != (h, w):
            shown = "x".join(map(str, side[::-1])) if side else "not 2-D"
            if (h, w) == (H, W):
                raise InputError(f"mask {path} is {shown} but {name} restores to {W}x{H}; give a mask of the "
                                 f"photo's size (white = kept), e.g. drawn over the photo itself")
            raise InputError(f"mask {path} is {shown} but the inpainting in --deg {args.deg} sees {name} at "
                             f"{w}x{h} (after the parts before it); give a mask of {w}x{h} (white = kept)")


def uses_mask(deg: str) -> bool:
    return "inpainting" in parts_of(deg)


def mask_hw_for(args, shape: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w) the mask has for an image restored at `shape`: the image's size, or y's where an
    SR part comes before the inpainting in a composite."""
    from functions.operators.composite import is_composite, mask_input_hw

    return mask_input_hw(args.deg, shape, args.deg_scale) if is_composite(args.deg) else tuple(shape)


def build_photo_operator(args, shape: Tuple[int, int], channels: int, device, simplified: bool, mask_spec=None,
                         mask_window: Tuple[int, int, int] = None):
    """The run's operator at the restored size `shape` (H, W).

    The simplified rule takes the reference's image-domain forms (functions/operators/composite.py:
    its colorization is the channel mean), every other rule the SVD operators. mask_window
    (top, left, window): the window's operator for Mask-Shift, with its crop of the mask. mask_spec:
    what functions.masks.resolve_mask takes (a checked file, random:R / box:R, None: the default)."""
    from functions.masks import resolve_mask
    from functions.operators.composite import is_composite

    mask = None
    if uses_mask(args.deg):    # resolved at the size the inpainting sees (a random:R mask from the run's seed)
        h, w = mask_hw_for(args, shape)
        mask = resolve_mask(mask_spec, (h, w), seed=args.seed)
    if mask_window is not None:
        top, left, window = mask_window
        if mask is not None:   # the window's crop, in the inpainting's pixels (windows lie on the SR grid)
            s = shape[0] // mask.shape[0]
            mask = mask[top // s:(top + window) // s, left // s:(left + window) // s]
        shape = (window, window)
    if is_composite(args.deg) or (simplified and not args.deg.startswith("cs_")):
        from functions.operators.composite import build_composite

        return build_composite(args.deg, image_size=tuple(shape), channels=channels, deg_scale=args.deg_scale,
                               mask=mask, device=device)
    from functions.operators import build_operator

    return build_operator(args.deg, image_size=tuple(shape), channels=channels, deg_scale=args.deg_scale,
                          device=device, mask=mask, seed=args.seed, lambda_mode=args.lambda_mode,
                          blur_svd=args.blur_svd)


def measurement_from_photo(op, deg: str, photo: torch.Tensor, factor: int) -> torch.Tensor:
    """y for --resize_y from the photo (B, C, h, w) in [-1, 1].

    SR and blur measure an image of the photo's own shape (bicubic and pooled pixels,
    blurred pixels, in that order), so y is the photo itself; the others (and the
    composites) see the photo brought to the restored size, each pixel repeated `factor`
    times, through A: a grey photo's grey, a damaged photo's kept pixels, an old photo's
    pooled grey."""
    if deg in ("sr_averagepooling", "sr_bicubic") or deg.startswith("deblur"):
        return photo.reshape(photo.shape[0], -1)
    from functions.operators.composite import mean_upsample

    return op.A(mean_upsample(photo, factor) if factor > 1 else photo)


def measurement_image(op, y: torch.Tensor) -> Optional[torch.Tensor]:
    """y as a picture (B, c, h, w) where its layout is an image (SR, blur, grey, composites), else None."""
    shape = getattr(op, "measurement_shape", None)
    if shape is None:
        C, H, W = op.image_shape
        m = op.num_measurements
        for c in (C, 1):
            if m % c:
                continue
            hw = m // c
            f = (H * W / hw) ** 0.5
            if f == int(f) and H % int(f) == 0 and W % int(f) == 0 and (H // int(f)) * (W // int(f)) == hw:
                shape = (c, H // int(f), W // int(f))
                break
    if shape is None or shape[0] not in (1, 3):
        return None
    img = y.reshape(y.shape[0], *shape)
    return img.expand(-1, 3, -1, -1) if shape[0] == 1 else img


def photo_eps(plan, eps_model):
    """The network's eps over the whole image: windows of the model's size, blended (TiledEps)."""
    from functions.tiling import TiledEps

    args = plan.args
    return TiledEps(eps_model, window=plan.image_size, stride=args.tile_stride, batch_size=plan.batch_size,
                    blend=args.tile_blend)


def restore_photos(plan, eps_model, pending: List[data.ImageItem], bar, psnrs: List[float], wrap=None) -> None:
    """Restore `pending` one image at a time at its own size, saving its images and its record.

    wrap([item]) -> eps_model: the network as the run conditions it for that image (labels, guidance),
    which goes under the tiling."""
    from functions.diffusion import make_betas
    from functions.mask_shift import restore_mask_shift
    from functions.noise import PerImageNoise
    from functions.samplers import restore
    from runners.batches import _metric_block, _to01, image_record
    from runners.devices import _precision, sync_device
    from runners.results import save_image

    args, out, device, cfg = plan.args, plan.out, plan.device, plan.sampler_cfg
    betas = make_betas(plan.config.get("diffusion", {}))
    lp = metrics.LPIPSMetric(None if args.lpips_net == "none" else args.lpips_net, device, warn=LOG.warning)
    precision = _precision(eps_model, device)
    simplified = cfg.sampler == "simplified"
    factor = sr_factor(args.deg, args.deg_scale)
    for it in pending:
        shape = plan.photo_sizes[it.name]
        op = build_photo_operator(args, shape, plan.channels, device, simplified, args.mask)
        seed = seed_for(args.seed, it.index)
        with torch.no_grad():
            if args.resize_y:
                photo, _ = data.load_native(it)
                x01 = None
                y = measurement_from_photo(op, args.deg, photo[None].to(device) * 2 - 1, factor)
            else:
                x01 = data.load_native(it, factor, "the SR factor")[0][None].to(device)
                y = op.A(x01 * 2 - 1)
                if args.add_noise and args.sigma_y > 0:
                    gen = PerImageNoise([measurement_seed(args.seed, it.index)])
                    y = y + 2.0 * args.sigma_y * gen.randn(y.shape[1:]).to(device=device, dtype=y.dtype)
            apy = op.A_pinv(y).reshape(1, *op.image_shape)
        model = eps_model if wrap is None else wrap([it])
        sync_device(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            if args.tiling == "mask_shift":
                def window_op(top, left, window):
                    return build_photo_operator(args, shape, plan.channels, device, simplified, args.mask,
                                                (top, left, window))

                result = restore_mask_shift(model, window_op, op, y, betas, cfg, seeds=[seed],
                                            window=plan.image_size, stride=args.tile_stride)
            else:
                tiled = photo_eps(plan, model)
                result = restore(tiled, op, y, betas, cfg, seeds=[seed])
        sync_device(device)
        seconds = time.perf_counter() - t0
        x0 = result.x0.reshape(apy.shape)
        rest01, apy01 = _to01(x0), _to01(apy)
        with torch.no_grad():
            cons, cons_apy = metrics.consistency(op, x0, y), metrics.consistency(op, apy, y)
            if x01 is not None:
                score = _metric_block(rest01, x01, lp, cons)[0]
                base = _metric_block(apy01, x01, lp, cons_apy)[0]
            else:   # --resize_y: no ground truth, consistency only
                keys = ("psnr", "ssim", "lpips", "lpips_official")
                score = {**dict.fromkeys(keys), "consistency": float(cons.reshape(-1)[0])}
                base = {**dict.fromkeys(keys), "consistency": float(cons_apy.reshape(-1)[0])}
            y_img = measurement_image(op, y)
        files = [out.restored(it.name), out.apy(it.name)]
        save_image(out.restored(it.name), rest01[0].cpu())
        save_image(out.apy(it.name), apy01[0].cpu())
        if x01 is not None:
            save_image(out.orig(it.name), x01[0].cpu())
            files.append(out.orig(it.name))
        if y_img is not None:
            save_image(out.y(it.name), _to01(y_img)[0].cpu())
            files.append(out.y(it.name))
        out.write_record(image_record(plan, it, score, base, int(result.nfe), seconds, precision, 1,
                                      size=[int(shape[0]), int(shape[1])], ground_truth=x01 is not None,
                                      files=[str(p.relative_to(out.root)) for p in files]))
        if score["psnr"] is not None:
            psnrs.append(score["psnr"])
        bar.update(1)
        mean = metrics.mean_of(psnrs)
        if mean is not None:
            bar.set_description(f"PSNR: {mean:.2f}")


def write_photo_grid(out, records: List[dict], rows: int) -> None:
    """y | A^+ y | result | ground truth (where there is one) per image, each shown GRID_HEIGHT pixels high."""
    import torch.nn.functional as F
    import torchvision.transforms.functional as TF
    from PIL import Image

    from runners.results import save_image

    lines = []
    for rec in records[:rows]:
        tiles = []
        for path in (out.y(rec["name"]), out.apy(rec["name"]), out.restored(rec["name"]), out.orig(rec["name"])):
            if not path.is_file():
                continue
            with Image.open(path) as img:
                t = TF.to_tensor(img.convert("RGB"))
            w = max(1, round(t.shape[2] * GRID_HEIGHT / t.shape[1]))
            mode = "nearest" if t.shape[1] < GRID_HEIGHT else "area"
            tiles.append(F.interpolate(t[None], size=(GRID_HEIGHT, w), mode=mode)[0])
        if tiles:
            gap = torch.ones(3, GRID_HEIGHT, 4)
            lines.append(torch.cat([c for t in tiles for c in (t, gap)][:-1], dim=2))
    if not lines:
        return
    width = max(line.shape[2] for line in lines)
    padded = [F.pad(line, (0, width - line.shape[2]), value=1.0) for line in lines]
    gap = torch.ones(3, 4, width)
    save_image(out.grid, torch.cat([c for line in padded for c in (line, gap)][:-1], dim=1))
