"""Where a run's results live, and how they survive a kill and a rerun.

Layout of an output folder (`<exp>/image_samples/<image_folder>/`):

    <name>.png            restored image, named after its input
    Apy/<name>.png        the measurement shown as an image (A^+ y)
    orig/<name>.png       the prepared ground truth
    records/<name>.json   one small record per finished image (metrics, seed, time)
    run.json              the settings that produced the records
    results.json          rebuilt from records/ at the end of every run
    results.txt           the official runner's four lines
    grid.png              A^+ y | result | ground truth, a few rows

Every file is written to a temporary name in the same folder and moved into
place with os.replace, so a kill leaves either the old file or the new one.
An image's record is written last, after its images: a record means the image
is finished. Rerunning the same command skips recorded images; results.json is
always rebuilt from the records, so records from several processes (a torchrun
run, see runners/distributed.py) merge by simply sharing the folder.

One run writes to a folder at a time: rank 0 holds an advisory lock on the folder
(flock on the directory itself, no lock file; the system drops it when the process
dies), and a second run pointed at a busy folder is refused before it writes.
"""
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from functions.metrics import mean_of

METRIC_KEYS = ("psnr", "ssim", "lpips", "lpips_official", "consistency")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
# mkstemp creates its file 0600 whatever the umask; outputs get what open() would have given them
FILE_MODE = 0o666 & ~UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as exc:
        # one line naming the folder (not the temporary file's random name) and the way out
        raise PermissionError(exc.errno, f"cannot write into {path.parent} ({exc.strerror}); fix its permissions "
                                         f"or choose another output folder (-i / --exp)") from None
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean(value):
    """JSON-safe: non-finite floats become null, tensors become numbers."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n").encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_image(path: Path, image01: torch.Tensor) -> None:
    """Save a (3, H, W) [0, 1] tensor as an 8-bit PNG (rounded as torchvision does)."""
    from PIL import Image

    arr = image01.detach().float().clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    arr = arr.permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Optional[dict]:
    """The parsed file, or None when it is absent or unreadable (e.g. a foreign partial file)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _whole_png(path: Path) -> bool:
    """The file exists and is a complete image (PIL's verify reads every chunk and its checksum)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:      # missing, truncated, empty, not an image: PIL raises several kinds
        return False


class OutputFolder:
    """Paths of one run's outputs and its per-image record store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.apy_dir = self.root / "Apy"
        self.orig_dir = self.root / "orig"
        self.y_dir = self.root / "y"      # the measurement as a picture (photo runs)
        self.run_json = self.root / "run.json"
        self.results_json = self.root / "results.json"
        self.results_txt = self.root / "results.txt"
        self.grid = self.root / "grid.png"

    def restored(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def apy(self, name: str) -> Path:
        return self.apy_dir / f"{name}.png"

    def orig(self, name: str) -> Path:
        return self.orig_dir / f"{name}.png"

    def y(self, name: str) -> Path:
        return self.y_dir / f"{name}.png"

    def _images_of(self, name: str, rec: Optional[dict]) -> List[Path]:
        """The PNGs an image's record stands for: those it lists (photo runs, where there may be no
        ground truth), else the restored image, A^+ y and the ground truth."""
        if isinstance(rec, dict) and isinstance(rec.get("files"), list):
            return [self.root / f for f in rec["files"]]
        return [self.restored(name), self.apy(name), self.orig(name)]

    def record_path(self, name: str) -> Path:
        return self.records_dir / f"{name}.json"

    def read_record(self, name: str, fingerprint: str) -> Optional[dict]:
        """The image's record if it is complete and made with these settings: its three PNGs
        are whole (a damaged one makes the image unfinished, so the run restores it again)."""
        rec = read_json(self.record_path(name))
        if not rec or rec.get("fingerprint") != fingerprint:
            return None
        if not all(_whole_png(p) for p in self._images_of(name, rec)):
            return None
        return rec

    def record_fingerprints(self) -> Dict[str, str]:
        """name -> fingerprint of every readable record, whatever its settings."""
        out = {}
        if self.records_dir.is_dir():
            for p in self.records_dir.glob("*.json"):
                rec = read_json(p)
                if isinstance(rec, dict) and rec.get("fingerprint"):
                    out[p.stem] = rec["fingerprint"]
        return out

    def lock(self) -> Optional["FolderLock"]:
        """Take the folder (it must exist) for this run, or None when another live run holds it."""
        return FolderLock.take(self.root)

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_path(record["name"]), record)

    def remove_stale_temporaries(self, older_than: float = 60.0) -> None:
        """Delete the temporary files of writes that a kill cut short (`.<name>.XXXX.tmp`); a write
        holds its temporary for milliseconds, so one older than a minute belongs to no live run."""
        import time

        for folder in (self.root, self.records_dir, self.apy_dir, self.orig_dir, self.y_dir):
            for p in folder.glob(".*.tmp"):     # (a missing folder globs to nothing)
                try:
                    if time.time() - p.stat().st_mtime > older_than:
                        p.unlink()
                except OSError:
                    pass

    def clear(self) -> None:
        """Forget earlier results (--overwrite): records, summaries, and the images of every
        recorded name (so that a new run over another subset leaves no stray earlier images);
        files no record names are not touched."""
        if self.records_dir.is_dir():
            for p in self.records_dir.glob("*.json"):
                for image in {*self._images_of(p.stem, read_json(p)), self.restored(p.stem), self.apy(p.stem),
                              self.orig(p.stem), self.y(p.stem)}:
                    if image.exists():
                        image.unlink()
                p.unlink()
        for p in (self.run_json, self.results_json, self.results_txt, self.grid):
            if p.exists():
                p.unlink()


class FolderLock:
    """An exclusive flock on a directory; without fcntl (Windows) every take succeeds."""

    def __init__(self, fd: Optional[int]):
        self.fd = fd

    @classmethod
    def take(cls, folder: Path) -> Optional["FolderLock"]:
        try:
            import fcntl
        except ImportError:
            return cls(None)
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:       # a folder this user may write but not read: run unguarded, as before
            return cls(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:       # a file system without flock: run unguarded, as before
            return cls(fd)
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)          # closing the descriptor drops the lock
            self.fd = None


def non_finite(metrics: Dict) -> Dict[str, str]:
    """{metric: 'nan' | 'inf' | '-inf'} for the values JSON cannot hold (they are stored as null):
    a NaN is a diverged restoration, an infinite PSNR an exact one."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return out


def summarize(records: List[dict]) -> Dict:
    """The results.json summary: means over images, and the same for the A^+ y baseline.

    The means are over finite values; images whose metric was NaN (diverged) or infinite
    (an exact restoration's PSNR) are counted in `non_finite_counts`, not silently dropped."""
    summary = {"num_images": len(records)}
    for key in METRIC_KEYS:
        summary[key] = mean_of(r.get(key) for r in records)
    # images that have each metric (LPIPS/FID may be missing on some, e.g. computed offline and then online)
    summary["metric_counts"] = {key: sum(r.get(key) is not None for r in records) for key in METRIC_KEYS}
    counts: Dict[str, Dict[str, int]] = {}
    for r in records:
        for key, kind in (r.get("non_finite") or {}).items():
            counts.setdefault(key, {}).setdefault(kind, 0)
            counts[key][kind] += 1
    summary["non_finite_counts"] = counts
    summary["nfe"] = records[0].get("nfe") if records else None
    summary["seconds_per_image"] = mean_of(r.get("seconds") for r in records)
    summary["baseline"] = {key: mean_of((r.get("baseline") or {}).get(key) for r in records) for key in METRIC_KEYS}
    if records and all("baseline_reference" in r for r in records):
        summary["baseline_reference"] = {key: mean_of(r["baseline_reference"].get(key) for r in records)
                                         for key in METRIC_KEYS}
    return summary


def _fmt(value: Optional[float], spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def results_txt(summary: Dict) -> str:
    """The official EquS runner's results.txt (its LPIPS is the official variant)."""
    return (
        f"Total Average PSNR: {_fmt(summary.get('psnr'), '.2f')}\n"
        f"Total Average SSIM: {_fmt(summary.get('ssim'), '.4f')}\n"
        f"Total Average LPIPS: {_fmt(summary.get('lpips_official'), '.5f')}\n"
        f"Number of samples: {summary.get('num_images', 0)}\n"
    )


def comparison_table(summary: Dict) -> str:
    """The run's result beside the A^+y baseline, as printed at the end of a run."""
    base = summary.get("baseline") or {}
    rows = [("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("LPIPS", "lpips", ".4f"),
            ("Cons", "consistency", ".3f")]
    lines = [f"{'':12s} {'restored':>10s} {'A^+y':>10s}"]
    for label, key, spec in rows:
        lines.append(f"{label:12s} {_fmt(summary.get(key), spec):>10s} {_fmt(base.get(key), spec):>10s}")
    lines.append(f"{summary.get('num_images', 0)} images, NFE {summary.get('nfe')}, "
                 f"{_fmt(summary.get('seconds_per_image'), '.2f')} s per image")
    return "\n".join(lines)


def settings_diff(old: Dict, new: Dict) -> List[str]:
    """Human-readable differences between two settings dicts."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def collect(folder: OutputFolder, names: Iterable[str], fingerprint: str) -> List[dict]:
    """Finished records for these names, in this order."""
    out = []
    for name in names:
        rec = folder.read_record(name, fingerprint)
        if rec is not None:
            out.append(rec)
    return out
