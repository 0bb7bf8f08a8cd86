"""The end of a restoration run: the folder's finished records -> results.json, results.txt, grid.png.

Everything here is rebuilt from the records on disk (runners/results.py), so records
from a resumed run or from several torchrun ranks merge by sharing the folder.
"""
import logging
import platform
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import torch

from functions import metrics
from runners.plan import Plan
from runners.results import OutputFolder, atomic_write_json, atomic_write_text, results_txt, save_image, summarize

LOG = logging.getLogger("equs")
GRID_ROWS = 8


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scikit-image", "lpips", "pytorch-fid", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        repo = Path(__file__).resolve().parents[1]
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _finished_records(out: OutputFolder, fingerprint: str) -> List[dict]:
    """Every finished record in the folder made with these settings, by dataset index."""
    if not out.records_dir.is_dir():
        return []
    records = []
    for path in sorted(out.records_dir.glob("*.json")):
        rec = out.read_record(path.stem, fingerprint)
        if rec is not None:
            records.append(rec)
    return sorted(records, key=lambda r: (r.get("index", 0), r["name"]))


def _write_grid(out: OutputFolder, records: List[dict]) -> None:
    """A^+ y | result | ground truth for the first few images, from the saved files."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.utils import make_grid

    tiles = []
    for rec in records[:GRID_ROWS]:
        for path in (out.apy(rec["name"]), out.restored(rec["name"]), out.orig(rec["name"])):
            with Image.open(path) as img:
                tiles.append(TF.to_tensor(img.convert("RGB")))
    if not tiles:
        return
    grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)
    save_image(out.grid, grid)


def _fid(out: OutputFolder, records: List[dict], device) -> Dict:
    names = [r["name"] for r in records]
    orig = [str(out.orig(n)) for n in names]
    value = metrics.fid_from_files([str(out.restored(n)) for n in names], orig, device, warn=LOG.warning)
    baseline = None
    if value is not None:
        baseline = metrics.fid_from_files([str(out.apy(n)) for n in names], orig, device, warn=LOG.warning)
    # no images counted where FID could not be computed (offline): the count describes the value
    return {"fid": value, "baseline_fid": baseline, "fid_num_images": len(names) if value is not None else 0}


def finalize(plan: Plan, model_path: Optional[str], fid: bool) -> Dict:
    """Rebuild results.json, results.txt and grid.png from the folder's records."""
    out = plan.out
    records = _finished_records(out, plan.fingerprint)
    summary = summarize(records)
    for key, kinds in summary["non_finite_counts"].items():
        what = ", ".join(f"{n} {'NaN (diverged)' if kind == 'nan' else kind}" for kind, n in sorted(kinds.items()))
        LOG.warning(f"warning: {key}: {what} image(s) left out of the mean over {len(records)}; "
                    f"see 'non_finite' in their records")
    photo = bool(plan.photo_sizes)
    if fid and records and photo:
        LOG.info("note: no FID for images of their own sizes (--native_size / --resize_y)")
    if fid and records and not photo:
        extra = _fid(out, records, plan.device)
        summary["fid"], summary["baseline"]["fid"] = extra["fid"], extra["baseline_fid"]
        summary["fid_num_images"] = extra["fid_num_images"]
    else:
        summary["fid"], summary["baseline"]["fid"], summary["fid_num_images"] = None, None, 0
    results = {
        "command": "python main.py " + shlex.join(plan.argv),
        "comment": plan.args.comment or None,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(plan.device),
        "world_size": plan.dist.world_size,
        "precision": sorted({r["precision"] for r in records if r.get("precision")}),
        "settings": plan.settings,
        "fingerprint": plan.fingerprint,
        "sampler": plan.sampler_cfg.to_dict(),
        "checkpoint": model_path,
        "config": plan.config,
        "versions": _versions(),
        "nfe": summary["nfe"],
        "seconds_per_image": summary["seconds_per_image"],
        "metric_notes": {
            "psnr_ssim": "on [0, 1] float images before 8-bit rounding; SSIM = skimage defaults, channel_axis=0",
            "lpips": f"lpips package v0.1, {plan.args.lpips_net} backbone, inputs mapped to [-1, 1]",
            "lpips_official": "VGG LPIPS fed [0, 1] images un-normalised, as the official EquS code (results.txt)",
            "consistency": "RMS of A(x_hat) - y over the measurements, in 8-bit units (x127.5 of model space)",
            "fid": "pytorch-fid (Inception pool3) restored vs ground-truth PNGs; indicative below 2048 images",
            "baseline": "the same metrics for A^+ y, the pseudo-inverse of the measurement",
            "baseline_reference": "deblurring and inpainting only: the same metrics for the image the official "
                                  "runner saves as Apy (y itself for deblurring; A^+ y with black holes for "
                                  "inpainting), which the paper's A^+ y row scores",
            "seconds_per_image": "wall time of the sampler per image (batch time / batch size)",
        },
        "summary": summary,
        "images": records,
    }
    if photo:
        results["ground_truth"] = not plan.args.resize_y
        if plan.args.resize_y:
            results["metric_notes"]["psnr_ssim"] = ("none: with --resize_y each file is the measurement y itself, "
                                                    "so there is no ground truth; consistency only")
    atomic_write_json(out.results_json, results)
    atomic_write_text(out.results_txt, results_txt(summary))
    if photo:
        from runners.photos import write_photo_grid

        write_photo_grid(out, records, GRID_ROWS)
    else:
        _write_grid(out, records)
    return results
