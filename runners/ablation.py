"""What EquS does on real images: the ablation on the held-out demo images.

    python -m runners.ablation --seeds 0 1 2 --steps 100 --out exp/ablation

Rows: DDNM, DDNM-EquS, DDNM-EquS+, DDRM, DDRM-EquS+, EquS with eps mapped back
(consistent), the average mode over {id, hflip} and over all 8 rotations and
flips (d4), plus classical rows: bicubic upsampling made consistent with y (SR)
and scikit-image's biharmonic inpainting. Tasks: Table 1's five (Gaussian
deblur, block CS 25%, inpainting, 4x bicubic SR, colorization) and noisy 4x SR
(sigma_y 0.05 in [0, 1] units). Every diffusion row uses the same per-image seeds,
so rows differ only by the method; DDNM and DDNM-EquS+ are also scored as the mean of
their per-seed samples (an estimate of the posterior mean, which PSNR favours). Writes `ablation.md` (mean +- std over seeds
of the per-seed means over images: PSNR / SSIM / consistency / seconds per image),
`ablation.json` and `ablation_grid.png`; an earlier run's three files in --out are kept
beside them as `ablation_<time>.*`.
"""
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from functions import metrics
from functions.diffusion import make_betas
from functions.noise import measurement_seed, seed_for
from functions.operators import build_operator
from functions.samplers import SamplerConfig, restore
from guided_diffusion.checkpoints import load_weights, resolve_checkpoint
from runners.restoration import resolve_device, sync_device
from guided_diffusion.models import EpsModel, build_model, load_config
from runners import data

TASKS = {
    "deblur_gauss": dict(deg="deblur_gauss", label="deblur (gauss)"),
    "cs_blockbased": dict(deg="cs_blockbased", deg_scale=0.25, label="CS 25% (block)"),
    "inpainting": dict(deg="inpainting", mask="box:0.140625", label="inpainting (24x24 box)"),
    "sr_bicubic": dict(deg="sr_bicubic", deg_scale=4, label="SR 4x bicubic"),
    "colorization": dict(deg="colorization", label="colorization"),
    "sr_bicubic_noisy": dict(deg="sr_bicubic", deg_scale=4, sigma_y=0.05, label="SR 4x bicubic, sigma_y 0.05"),
}

ROWS = {
    "DDNM": dict(),
    "DDNM-EquS": dict(equs="alternate"),
    "DDNM-EquS+": dict(equs="alternate", schedule="tas"),
    "DDRM": dict(sampler="ddrm"),
    "DDRM-EquS+": dict(sampler="ddrm", equs="alternate", schedule="tas"),
    "EquS, eps mapped back": dict(equs="alternate", eps_mapping="consistent"),
    "average {id, hflip}": dict(equs="average", transform="flips"),
    "average d4 (8 copies)": dict(equs="average", transform="d4"),
}

MEAN_ROWS = ("DDNM", "DDNM-EquS+")  # also reported as the mean of their per-seed samples


def classical(task: str, op, y, size):
    """Non-learned baselines, in model space: consistent bicubic SR, biharmonic inpainting.

    `y` lives on the operator's device; scikit-image works on host copies."""
    if task.startswith("sr_bicubic"):
        # y is the low-resolution image (the strided filter samples at r*row + r/2 - 1/2, the
        # pixel-centre convention of align_corners=False): upsample it, then add A^+ of what is off
        up = F.interpolate(op._small_image(y), size=(size, size), mode="bicubic", align_corners=False)
        return up + op.A_pinv(y - op.A(up)), "bicubic, made consistent with y"
    if task == "inpainting":
        from skimage.restoration import inpaint_biharmonic

        keep = op.mask.cpu()                         # the inpainting operator's kept pixels
        known = op.A_pinv(y).cpu()
        out = []
        for img in known:
            arr = img.permute(1, 2, 0).numpy().astype(np.float64)
            out.append(torch.from_numpy(inpaint_biharmonic(arr, (~keep).numpy(), channel_axis=-1)).permute(2, 0, 1))
        return torch.stack(out).to(y.device, y.dtype), "biharmonic (scikit-image)"
    return None, None


def evaluate(x_hat, x, op, y):
    r01, o01 = ((x_hat.clamp(-1, 1) + 1) / 2), ((x + 1) / 2)
    return {"psnr": metrics.psnr(r01, o01).tolist(), "ssim": metrics.ssim(r01, o01),
            "consistency": metrics.consistency(op, x_hat, y).tolist()}


def summarise(per_seed):
    """per_seed: list (over seeds) of dicts of per-image lists -> (mean, sample std with ddof=1)
    over seeds of the image means; the per-seed means themselves under "per_seed"."""
    out, kept = {}, {}
    for key in ("psnr", "ssim", "consistency", "seconds"):
        means = [float(np.mean(s[key])) for s in per_seed]
        # one seed (or a deterministic row) has no sample std: None, printed as the mean alone
        out[key] = (float(np.mean(means)), float(np.std(means, ddof=1)) if len(means) > 1 else None)
        kept[key] = means
    out["per_seed"] = kept
    return out


def run(args, write=None):
    device = resolve_device(args.device)  # the runner's choice and checks of --device
    config = load_config(args.config)
    size = int(config["data"]["image_size"])
    model = build_model(config)
    load_weights(model, resolve_checkpoint(config, exp=args.exp, override=args.ckpt))
    model = model.to(device).eval()
    eps_model = EpsModel(model, config)
    betas = make_betas(config["diffusion"])
    items = data.build_dataset(args.path_y, args.exp, config)
    x = data.load_batch(items, size, data.preprocess_mode(config)).to(device) * 2 - 1
    names = [it.name for it in items]
    tasks = args.tasks or list(TASKS)
    rows = args.rows or list(ROWS)
    results, grid_tiles = {}, []
    for task in tasks:
        spec = TASKS[task]
        op = build_operator(spec["deg"], image_size=size, deg_scale=spec.get("deg_scale"), device=device,
                            mask=spec.get("mask"), seed=0)
        sigma = 2 * spec.get("sigma_y", 0.0)  # model space
        y_clean = op.A(x)
        table = results.setdefault(task, {})
        noise_y = torch.stack([torch.randn(y_clean.shape[1:], generator=torch.Generator().manual_seed(
            measurement_seed(args.seeds[0], i))) for i in range(len(items))]).to(device)
        y = y_clean + sigma * noise_y
        apy = op.A_pinv(y)
        m = evaluate(apy, x, op, y)
        table["A^+ y"] = summarise([dict(m, seconds=[0.0])])
        t0 = time.time()
        base, label = classical(task, op, y, size)
        if base is not None:
            m = evaluate(base.to(device), x, op, y)
            table[label] = summarise([dict(m, seconds=[(time.time() - t0) / len(items)])])
        tiles = {"ground truth": x[0], "A^+ y": apy[0]}
        for row in rows:
            per_seed = []
            heavy = ROWS[row].get("equs") == "average" and ROWS[row].get("transform") == "d4"
            for seed in (args.heavy_seeds or args.seeds[:1]) if heavy else args.seeds:
                cfg = SamplerConfig(steps=args.steps, eta=args.eta, sigma_y=sigma, transform_seed=seed,
                                    clip_x0=args.clip_x0, travel_length=args.travel_length,
                                    travel_repeat=args.travel_repeat, travel_from=args.travel_from, **ROWS[row])
                t0 = time.time()
                with torch.no_grad():
                    res = restore(eps_model, op, y, betas, cfg, seeds=[seed_for(seed, i) for i in range(len(items))])
                sync_device(device)
                m = evaluate(res.x0, x, op, y)
                m["seconds"] = [(time.time() - t0) / len(items)]
                per_seed.append(m)
                total = res.x0 if len(per_seed) == 1 else total + res.x0
                if seed == args.seeds[0] or len(per_seed) == 1:
                    tiles[row] = res.x0[0]
            table[row] = dict(summarise(per_seed), nfe=res.nfe, seeds=len(per_seed))
            named = [row]
            if len(per_seed) > 1 and row in MEAN_ROWS:
                # the mean of the per-seed samples estimates the posterior mean, which PSNR rewards;
                # A is linear, so the mean of consistent samples is consistent too
                mean_row = f"{row}, mean of {len(per_seed)} samples"
                m = evaluate(total / len(per_seed), x, op, y)
                m["seconds"] = [sum(s["seconds"][0] for s in per_seed)]
                table[mean_row] = dict(summarise([m]), nfe=res.nfe * len(per_seed), seeds=len(per_seed))
                named.append(mean_row)
            for name in named:
                print(f"{task:18s} {name:24s} PSNR {_pm(table[name]['psnr'], 2)}  "
                      f"SSIM {table[name]['ssim'][0]:.3f}  Cons {table[name]['consistency'][0]:.3f}  "
                      f"{table[name]['seconds'][0]:.2f} s/img", flush=True)
        grid_tiles.append(tiles)
        if write is not None:
            write(results, grid_tiles, names)   # what is done so far survives an interrupted run
    return results, grid_tiles, names


def _pm(pair, digits):
    """'mean ± std', or the mean alone where there is no std (one seed)."""
    mean, std = pair
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_outputs(results, grid_tiles, args, names, quiet=False):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Held-out demo images ({len(names)} tiles of chelsea and coffee, 64x64), demo prior "
             f"({args.config}), {args.steps} steps, eta {args.eta}, seeds {args.seeds} (the d4 row: "
             f"{args.heavy_seeds or args.seeds[:1]}){', x0 clipped to [-1, 1]' if args.clip_x0 else ''}"
             f"{f', time travel {args.travel_length}x{args.travel_repeat} from {args.travel_from}' if args.travel_length > 1 else ''}: mean ± sample std (ddof 1) over seeds of the per-seed mean over images. "
             f"Cons = RMS of A(x) - y in 8-bit units (after clipping to the image range).", ""]
    for task, table in results.items():
        noisy = TASKS[task].get("sigma_y", 0) > 0
        lines += [f"### {TASKS[task]['label']}", ""]
        if noisy:
            lines += ["With sigma_y > 0 the DDNM rows run DDNM+ (noise-aware), as main.py does.", ""]
        lines += ["| method | PSNR | SSIM | Cons | NFE | s / image | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for row, r in table.items():
            lines.append(f"| {row} | {_pm(r['psnr'], 2)} | {_pm(r['ssim'], 3)} "
                         f"| {r['consistency'][0]:.3f} | {r.get('nfe', '-')} | {r['seconds'][0]:.2f} | {r.get('seeds', '-')} |")
        lines.append("")
    tmp = out / "ablation.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "ablation.md")
    tmp = out / "ablation.json.tmp"
    tmp.write_text(json.dumps({"settings": vars(args), "images": names, "results": results}, indent=1))
    os.replace(tmp, out / "ablation.json")
    from torchvision.utils import make_grid, save_image

    cols = max(len(t) for t in grid_tiles)
    tiles = []
    for t in grid_tiles:
        row = [((v.detach().cpu().clamp(-1, 1) + 1) / 2) for v in t.values()]
        row += [torch.ones_like(row[0])] * (cols - len(row))
        tiles += row
    save_image(make_grid(torch.stack(tiles), nrow=cols, padding=2, pad_value=1.0), out / "ablation_grid.png")
    if not quiet:
        print("\n".join(lines))


OUTPUTS = ("ablation.md", "ablation.json", "ablation_grid.png")


def keep_earlier(out: Path) -> Optional[str]:
    """Move an earlier run's tables aside (ablation_<time>.md, ...) instead of writing over them;
    returns the kept markdown's name, or None when there was nothing."""
    if not (out / "ablation.json").is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime((out / "ablation.json").stat().st_mtime))
    suffix, n = stamp, 1
    while any((out / name.replace("ablation", f"ablation_{suffix}", 1)).exists() for name in OUTPUTS):
        n += 1
        suffix = f"{stamp}-{n}"
    for name in OUTPUTS:
        if (out / name).exists():
            os.replace(out / name, out / name.replace("ablation", f"ablation_{suffix}", 1))
    return f"ablation_{suffix}.md"


def check_args(args) -> None:
    """Refuse impossible values in one line before the model, the images or a classical row runs."""
    if not 1 <= args.steps <= 1000:
        raise ValueError(f"--steps {args.steps}: must be in [1, 1000]")
    if not 0 <= args.eta <= 1:
        raise ValueError(f"--eta {args.eta}: must be in [0, 1]")
    for name in ("travel_length", "travel_repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be >= 1 (1 means no time travel)")
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        raise ValueError(f"--ckpt {args.ckpt}: no such file")


def main(argv=None):
    from guided_diffusion.checkpoints import CheckpointError
    from runners.cli import OneLineParser
    from runners.errors import InputError

    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo.yml", help="model config (a file in configs/ or a path)")
    p.add_argument("--path_y", default="demo", help="held-out images: folder <exp>/datasets/NAME, or a path")
    p.add_argument("--exp", default="exp", help="root for datasets/ and checkpoints")
    p.add_argument("--ckpt", default=None, help="checkpoint file (default: the config's)")
    p.add_argument("--out", default="exp/ablation", help="folder for ablation.md, ablation.json, ablation_grid.png")
    p.add_argument("--steps", type=int, default=100, help="sampling steps of every diffusion row")
    p.add_argument("--eta", type=float, default=0.85, help="DDIM eta (DDRM etaA = etaC) of every diffusion row")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="run seeds: each row is run once per seed, reported as mean and spread")
    p.add_argument("--heavy_seeds", type=int, nargs="*", default=None,
                   help="seeds for the 8-copy d4 average row (default: the first of --seeds)")
    p.add_argument("--tasks", nargs="*", choices=list(TASKS), default=None, metavar="TASK",
                   help=f"tasks to run (default: all): {', '.join(TASKS)}")
    p.add_argument("--rows", nargs="*", choices=list(ROWS), default=None, metavar="ROW",
                   help=f"diffusion rows to run (default: all; the classical rows always run): "
                        f"{', '.join(repr(r) for r in ROWS)}")
    p.add_argument("--clip_x0", action="store_true", help="clamp x0 predictions to [-1, 1] in every diffusion row")
    p.add_argument("--travel_length", type=int, default=1, help="RePaint time travel for every diffusion row")
    p.add_argument("--travel_repeat", type=int, default=1, help="RePaint time travel: repeats of each jump")
    p.add_argument("--travel_from", choices=("x0", "x0_hat"), default="x0",
                   help="what a jump back re-noises: x0 (the official DDNM's) or the projected x0_hat")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    try:
        check_args(args)
        kept = keep_earlier(Path(args.out))
        if kept:
            print(f"note: the earlier ablation in {args.out} was kept as {kept}", file=sys.stderr)
        run(args, write=lambda results, tiles, names: write_outputs(results, tiles, args, names, quiet=True))
    except (ValueError, InputError, CheckpointError, OSError) as e:   # DatasetError is an InputError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # the tables are rewritten after every row: what finished is kept
        print(f"interrupted: the rows finished so far are in {Path(args.out) / 'ablation.md'}", file=sys.stderr)
        return 130
    print((Path(args.out) / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
