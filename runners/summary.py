"""Result folders -> a markdown table laid out like the EquS paper's Table 1, paper numbers beside ours.

    python -m runners.summary [--exp exp] [FOLDER ...] [-o table.md]

Reads every `<exp>/image_samples/*/results.json` (or the folders given) and
places each run by what it ran, read from its recorded settings, never from the
folder name: the dataset (config data.dataset; LSUN runs by data.category), the
task (deg, deg_scale) and the method (sampler + EquS mode + schedule). Noise-free runs of the paper's five
tasks fill Table 1; noisy runs and other tasks get tables of their own. The
"A^+ y" row is the baseline recorded by a run of that task: the image the
official runner saves as Apy (`baseline_reference` where that is not A^+ y).

LPIPS in these tables is the official variant (VGG on un-normalised [0, 1]
images), the one the published numbers used; results.json has the correctly
normalised one too. Colorization reports Cons / FID / LPIPS as the paper does;
Cons here is this project's definition (functions/metrics.py), whose
normalisation the paper never published, so only trends compare.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

DATASETS = {"CelebA_HQ": "CelebA-HQ", "ImageNet": "ImageNet"}
# the LSUN configs share data.dataset "LSUN": the category names the model (DDPM's church is church_outdoor)
LSUN_LABELS = {"bedroom": "LSUN-Bedroom", "cat": "LSUN-Cat", "church_outdoor": "LSUN-Church", "church": "LSUN-Church"}
TASKS = ("deblur (gauss)", "CS 25% (block)", "inpainting", "SR 4x bicubic", "colorization Cons/FID/LPIPS")
METHODS = ("A^+ y", "DDRM", "DDRM-EquS+", "DDNM", "DDNM-EquS+")
REFERENCE_APY_TASKS = ("deblur (gauss)", "inpainting")   # where the reference's saved Apy is not A^+ y

# EquS paper (arXiv 2511.09965, WACV 2026), Table 1: PSNR / SSIM / LPIPS, colorization Cons / FID / LPIPS.
# Only the rows this project can run are kept; tests check them against ../shared/paper/table1.md.
PUBLISHED: Dict[str, Dict[str, Tuple[Tuple[float, float, float], ...]]] = {
    "ImageNet": {
        "A^+ y": ((18.57, 0.586, 0.376), (12.83, 0.192, 0.724), (14.62, 0.661, 0.413), (26.27, 0.771, 0.302),
                  (53.92, 44.95, 0.167)),
        "DDRM": ((43.01, 0.986, 0.014), (27.54, 0.766, 0.276), (34.60, 0.965, 0.030), (27.39, 0.801, 0.241),
                 (144.4, 36.77, 0.162)),
        "DDRM-EquS+": ((44.69, 0.990, 0.010), (31.70, 0.886, 0.109), (35.93, 0.973, 0.025), (27.54, 0.807, 0.248),
                       (142.9, 39.70, 0.162)),
        "DDNM": ((44.94, 0.990, 0.011), (28.59, 0.795, 0.225), (34.93, 0.968, 0.025), (27.45, 0.801, 0.231),
                 (21.92, 36.87, 0.157)),
        "DDNM-EquS+": ((46.99, 0.993, 0.006), (31.87, 0.887, 0.103), (36.13, 0.976, 0.021), (27.63, 0.809, 0.242),
                       (21.68, 39.34, 0.158)),
    },
    "CelebA-HQ": {
        "A^+ y": ((18.85, 0.686, 0.305), (12.11, 0.155, 0.790), (14.65, 0.653, 0.459), (30.64, 0.881, 0.214),
                  (54.86, 46.65, 0.138)),
        "DDRM": ((43.07, 0.985, 0.023), (32.50, 0.896, 0.128), (38.30, 0.973, 0.035), (31.63, 0.886, 0.123),
                 (170.6, 31.20, 0.105)),
        "DDRM-EquS+": ((43.15, 0.986, 0.023), (34.47, 0.925, 0.103), (38.69, 0.975, 0.034), (32.39, 0.901, 0.134),
                       (169.4, 31.20, 0.102)),
        "DDNM": ((46.73, 0.992, 0.011), (33.51, 0.907, 0.111), (39.37, 0.982, 0.017), (31.64, 0.885, 0.116),
                 (28.49, 26.19, 0.090)),
        "DDNM-EquS+": ((46.88, 0.993, 0.010), (34.76, 0.926, 0.091), (39.85, 0.983, 0.016), (32.44, 0.901, 0.126),
                       (31.01, 26.08, 0.086)),
    },
}

DEFAULT_SR, DEFAULT_CS = 4.0, 0.25
# the benchmark image folders (--path_y) of evaluation.sh and of the demo; runs on others are labelled
BENCHMARK_IMAGES = ("celeba_hq", "imagenet", "demo", "lsun_bedroom", "lsun_cat", "lsun_church")
TABLE_CONFIGS = ("celeba_hq.yml", "imagenet_256.yml")  # the paper's two models
# configs the dataset label already names; other configs (imagenet_256_cc.yml, ...) are named in the method
DATASET_CONFIGS = TABLE_CONFIGS + ("bedroom.yml", "cat.yml", "church.yml")


def dataset_of(data: Dict) -> str:
    """A run's dataset label from its config's data section: 'CelebA-HQ', 'ImageNet', 'LSUN-Church', ..."""
    name = str(data.get("dataset", "?"))
    if name == "LSUN":
        category = str(data.get("category") or "")
        return LSUN_LABELS.get(category, f"LSUN-{category}" if category else "LSUN")
    return DATASETS.get(name, name)


def task_of(settings: Dict) -> str:
    """Table 1 column for a run's (deg, deg_scale), or a plain description for other tasks."""
    deg, scale = settings.get("deg"), settings.get("deg_scale")
    if deg == "deblur_gauss":
        return TASKS[0]
    if deg == "cs_blockbased" and float(DEFAULT_CS if scale is None else scale) == 0.25:
        return TASKS[1]
    if deg == "inpainting":  # runs with another mask than the reference's mask.npy: see method_of
        return TASKS[2]
    if deg == "sr_bicubic" and float(DEFAULT_SR if scale is None else scale) == 4:
        return TASKS[3]
    if deg == "colorization":
        return TASKS[4]
    return deg if scale is None else f"{deg} {scale:g}"


def method_of(settings: Dict) -> str:
    """'DDNM', 'DDRM-EquS+', ... with the non-default choices in brackets."""
    noisy = float(settings.get("sigma_y") or 0) > 0
    base = {"ddrm": "DDRM", "ddnm_plus": "DDNM+"}.get(settings.get("sampler"), "DDNM+" if noisy else "DDNM")
    equs, schedule = settings.get("equs"), settings.get("schedule", "uniform")
    if equs == "alternate":
        base += "-EquS+" if schedule in ("tas", "tas_dedup") else "-EquS"
    elif equs == "average":
        base += "-EquS(avg)"
    elif schedule != "uniform":
        base += f" ({schedule})"
    extras = []
    if settings.get("config") not in (None, *DATASET_CONFIGS):
        extras.append(str(settings["config"]))
    if settings.get("ckpt"):      # another checkpoint than the config's own (a fine-tuned or random one)
        extras.append(f"ckpt {Path(str(settings['ckpt'])).name}")
    if settings.get("path_y") not in (None, *BENCHMARK_IMAGES):
        extras.append(f"images {Path(str(settings['path_y'])).name}")
    if equs == "average" and schedule != "uniform":
        extras.append(schedule)
    if equs and settings.get("transform", "hflip") != "hflip":
        extras.append(settings["transform"])
    if equs and settings.get("eps_mapping", "official") != "official":
        extras.append(f"{settings['eps_mapping']} eps")
    if equs and schedule == "tas_dedup":
        extras.append("tas_dedup")
    if settings.get("steps", 100) != 100:
        extras.append(f"{settings['steps']} steps")
    if settings.get("eta", 0.85) != 0.85:
        extras.append(f"eta {settings['eta']}")
    if settings.get("sampler") == "ddrm" and float(settings.get("etaB", 1.0)) != 1.0:
        extras.append(f"etaB {settings['etaB']}")
    length, repeat = int(settings.get("travel_length", 1) or 1), int(settings.get("travel_repeat", 1) or 1)
    if length > 1 or repeat > 1:
        # runs made before travel_from was recorded re-noised x0_hat
        extras.append(f"time travel {length}x{repeat}"
                      + (" from x0_hat" if settings.get("travel_from", "x0_hat") == "x0_hat" else ""))
    if settings.get("clip_x0"):
        extras.append("clip_x0")
    if settings.get("deg") == "inpainting":
        # Table 1's inpainting cells take runs with the reference's exp/inp_masks/mask.npy only, so that
        # a DDNM cell and an EquS+ cell are never measured with different masks
        mask = settings.get("mask")
        if not mask:
            extras.append("built-in mask")
        elif Path(str(mask)).name != "mask.npy":
            extras.append(f"mask {mask if str(mask).startswith(('random:', 'box:')) else Path(str(mask)).name}")
    for key, default in (("lambda_mode", "reference"), ("blur_svd", "reference")):
        if settings.get(key, default) != default:
            extras.append(f"{key} {settings[key]}")
    return base + (f" [{', '.join(extras)}]" if extras else "")


def _fmt(v: Optional[float], digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def triple(metrics: Dict, colorization: bool) -> str:
    """'PSNR / SSIM / LPIPS' (or 'Cons / FID / LPIPS') from a summary or baseline dict."""
    lp = metrics.get("lpips_official")
    if colorization:
        return f"{_fmt(metrics.get('consistency'), 2)} / {_fmt(metrics.get('fid'), 2)} / {_fmt(lp, 3)}"
    return f"{_fmt(metrics.get('psnr'), 2)} / {_fmt(metrics.get('ssim'), 3)} / {_fmt(lp, 3)}"


def _paper(values: Sequence[float], colorization: bool) -> str:
    a, b, c = values
    return f"{a:g} / {b:.2f} / {c:.3f}" if colorization else f"{a:.2f} / {b:.3f} / {c:.3f}"


def load_runs(folders: Sequence[Path]) -> List[Dict]:
    runs = []
    for folder in folders:
        path = Path(folder) / "results.json"
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(res, dict) or "settings" not in res or "summary" not in res:
            continue
        settings = res["settings"]
        data = (res.get("config", {}) or {}).get("data", {}) or {}
        runs.append({
            "folder": Path(folder), "dataset": dataset_of(data), "task": task_of(settings),
            "method": method_of(settings), "noisy": float(settings.get("sigma_y") or 0) > 0,
            "sigma_y": settings.get("sigma_y"), "add_noise": settings.get("add_noise"),
            "mask": Path(str(settings["mask"])).name if settings.get("mask") else None,
            "summary": res["summary"], "device": res.get("device"), "updated": res.get("updated"),
        })
    return runs


def _best(runs: List[Dict]) -> Dict:
    return max(runs, key=lambda r: (r["summary"].get("num_images") or 0, r.get("updated") or ""))


def table1(dataset: str, runs: List[Dict]) -> List[str]:
    """One dataset's Table 1: each cell 'measured (paper ...)'."""
    mine = [r for r in runs if r["dataset"] == dataset and not r["noisy"] and r["task"] in TASKS]
    published = PUBLISHED.get(dataset, {})
    lines = [f"## {dataset}", "",
             "| method | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for method in METHODS:
        cells = []
        for j, task in enumerate(TASKS):
            color = j == len(TASKS) - 1
            here = [r for r in mine if r["task"] == task]
            if method == "A^+ y":
                # runs of Table 1's settings only (method_of marks the others, e.g. another mask)
                found = [r for r in here if r["method"] == "DDNM"] or [r for r in here if r["method"] in METHODS]
                summary = _best(found)["summary"] if found else {}
                # the paper's row scores the image the reference saves as Apy (deblur: y itself;
                # inpainting: black holes), recorded as baseline_reference where it is not A^+ y
                baseline = summary.get("baseline_reference") or summary.get("baseline", {})
                measured = triple(baseline, color) if found else "–"
                if found and task in REFERENCE_APY_TASKS and "baseline_reference" not in summary:
                    measured += " [A^+ y: a run from before the reference's Apy was recorded]"
            else:
                found = [r for r in here if r["method"] == method]
                measured = triple(_best(found)["summary"], color) if found else "–"
            paper = published.get(method)
            cells.append(measured + (f" (paper {_paper(paper[j], color)})" if paper else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def other_table(title: str, runs: List[Dict]) -> List[str]:
    if not runs:
        return []
    lines = [f"## {title}", "", "| dataset | task | method | PSNR / SSIM / LPIPS | A^+ y | images |",
             "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["dataset"], r["task"], r["method"])):
        task = r["task"] + (f", sigma_y {r['sigma_y']:g}" + ("" if r["add_noise"] else " (y noise-free)")
                            if r["noisy"] else "")
        lines.append(f"| {r['dataset']} | {task} | {r['method']} | {triple(r['summary'], False)} | "
                     f"{triple(r['summary'].get('baseline', {}), False)} | {r['summary'].get('num_images')} |")
    return lines


def render(runs: List[Dict]) -> str:
    lines = ["# Measured results beside the EquS paper (Table 1)", "",
             "Cells: measured PSNR / SSIM / LPIPS (colorization: Cons / FID / LPIPS), then the paper's in "
             "brackets. LPIPS is the official variant (VGG on [0, 1] inputs); Cons is this project's "
             "(RMS of A x - y in 8-bit units), so only its trend compares. The A^+ y row is what the "
             "official runner saves as Apy and the paper scores: A^+ y, except y itself for deblurring and "
             "A^+ y with black holes for inpainting ('baseline_reference' in results.json). '–': not measured.", ""]
    datasets = [d for d in ("ImageNet", "CelebA-HQ") if any(r["dataset"] == d for r in runs)] or ["ImageNet",
                                                                                                 "CelebA-HQ"]
    for d in datasets:
        lines += table1(d, runs) + [""]
    noisy = [r for r in runs if r["noisy"]]
    other = [r for r in runs if not r["noisy"] and (r["task"] not in TASKS or r["dataset"] not in PUBLISHED
                                                    or r["method"] not in METHODS)]
    for title, group in (("Noisy tasks (no published numbers)", noisy), ("Other tasks and settings", other)):
        block = other_table(title, group)
        if block:
            lines += block + [""]
    lines += ["## Runs", "", "| folder | dataset | task | method | images | device | updated |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: str(r["folder"])):
        task = r["task"] + (f" (mask {r['mask']})" if r["mask"] else "")
        lines.append(f"| {r['folder'].name} | {r['dataset']} | {task} | {r['method']} | "
                     f"{r['summary'].get('num_images')} | {r['device']} | {r['updated']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runners.summary", description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*",
                   help="result folders, as paths or as main.py's -i names (default: every <exp>/image_samples/*)")
    p.add_argument("--exp", default="exp", help="experiment root, as given to main.py")
    p.add_argument("-o", "--output", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    # a name that is not a folder here is main.py's -i name: <exp>/image_samples/<name>
    folders = [Path(f) if Path(f).is_dir() or not (Path(args.exp) / "image_samples" / f).is_dir()
               else Path(args.exp) / "image_samples" / f for f in args.folders]
    folders = folders or sorted((Path(args.exp) / "image_samples").glob("*"))
    runs = load_runs(folders)
    loaded = {r["folder"] for r in runs}
    unfinished = [f for f in folders if f not in loaded and (f / "run.json").is_file()]
    if unfinished:   # a run.json without results.json: the run was interrupted before its summary
        names = ", ".join(str(f) for f in unfinished[:3]) + (", ..." if len(unfinished) > 3 else "")
        print(f"note: {len(unfinished)} folder(s) hold an unfinished run, left out ({names}); rerun the command in "
              f"their run.json to finish them", file=sys.stderr)
    if not runs:
        print(f"error: no results.json found in {', '.join(map(str, folders)) or Path(args.exp) / 'image_samples'}",
              file=sys.stderr)
        return 2
    text = render(runs)
    sys.stdout.write(text)
    if args.output:
        from runners.results import atomic_write_text

        atomic_write_text(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
