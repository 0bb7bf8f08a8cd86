"""The known public checkpoints: where each comes from, and the MD5 its publisher gives.

Kept apart from checkpoints.py (which fetches, validates and loads) so that the table of
sources reads as data. A file is matched to its source by its last two path parts (DDIM's
`ema_diffusion_lsun_church_model/model-4432000.ckpt`: "model-N.ckpt" alone is too generic),
then by its name. MD5 sums of large files are noted beside them in a hidden
`.<name>.md5` file with the size and mtime they were computed for, so that a resumed run
does not read 455 MB again to check a file that has not changed.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointSource:
    urls: Tuple[str, ...]  # tried in order
    manual: str  # where a person can get the file when no URL works
    md5: Optional[str] = None  # the sum its publisher gives, checked before a download is kept


GUIDED_DIFFUSION = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
CELEBA_DRIVE_ID = "1wSoA5fm_d6JBZk4RZ1SzWLMgev4WqH21"

# Known public checkpoints, by file name (see source_for). SDEdit's S3 URL used by the reference
# (image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/celeba_hq.ckpt) is dead
# (it answers 403 with an XML page); the EquS README points at a Google Drive copy instead.
# Drive may answer with an HTML confirmation page, which validation rejects.
SOURCES: Dict[str, CheckpointSource] = {
    "celeba_hq.ckpt": CheckpointSource(
        urls=(f"https://drive.usercontent.google.com/download?id={CELEBA_DRIVE_ID}&export=download&confirm=t",),
        manual=f"https://drive.google.com/file/d/{CELEBA_DRIVE_ID}/view (SDEdit's CelebA-HQ model, "
               "linked from the EquS README)",
    ),
    "256x256_diffusion_uncond.pt": CheckpointSource(
        urls=(GUIDED_DIFFUSION + "256x256_diffusion_uncond.pt",),
        manual=GUIDED_DIFFUSION + "256x256_diffusion_uncond.pt (guided-diffusion)",
    ),
    "256x256_diffusion.pt": CheckpointSource(
        urls=(GUIDED_DIFFUSION + "256x256_diffusion.pt",),
        manual=GUIDED_DIFFUSION + "256x256_diffusion.pt (guided-diffusion)",
    ),
    "256x256_classifier.pt": CheckpointSource(
        urls=(GUIDED_DIFFUSION + "256x256_classifier.pt",),
        manual=GUIDED_DIFFUSION + "256x256_classifier.pt (guided-diffusion's noisy ImageNet classifier)",
    ),
}

# DDPM's EMA LSUN 256 models as converted by pytorch_diffusion, with the URLs, file layout and MD5
# sums that DDIM's functions/ckpt_util.py publishes (ermongroup/ddim). DDNM's copy of that file
# caches them under <exp>/logs/diffusion_models_converted/, where the configs point.
HEIBOX = "https://heibox.uni-heidelberg.de/f/"
DDPM_CACHE = "logs/diffusion_models_converted"
DDPM_EMA: Dict[str, Tuple[str, str, str]] = {   # name: (file under DDPM_CACHE, URL, MD5)
    "ema_lsun_bedroom": ("ema_diffusion_lsun_bedroom_model/model-2388000.ckpt",
                         HEIBOX + "b95206528f384185889b/?dl=1", "1921fa46b66a3665e450e42f36c2720f"),
    "ema_lsun_cat": ("ema_diffusion_lsun_cat_model/model-1761000.ckpt",
                     HEIBOX + "0701aac3aa69457bbe34/?dl=1", "646f23f4821f2459b8bafc57fd824558"),
    "ema_lsun_church": ("ema_diffusion_lsun_church_model/model-4432000.ckpt",
                        HEIBOX + "44ccb50ef3c6436db52e/?dl=1", "fdc68a23938c2397caba4a260bc2445f"),
}
for _name, (_file, _url, _md5) in DDPM_EMA.items():   # keyed by folder/file: "model-N.ckpt" alone is too generic
    SOURCES[_file] = CheckpointSource(urls=(_url,), md5=_md5,
                                      manual=f"{_url} (DDPM's {_name}, via DDIM's functions/ckpt_util.py)")


def lsun_checkpoint(category: str) -> str:
    """The checkpoint of an LSUN category relative to exp, as DDIM names it ('church_outdoor' is 'church')."""
    name = "ema_lsun_" + ("church" if category == "church_outdoor" else category)
    if name not in DDPM_EMA:
        known = ", ".join(k[len("ema_lsun_"):] for k in DDPM_EMA)
        raise ValueError(f"data.category {category!r} has no public LSUN model; use one of: {known}, church_outdoor")
    return f"{DDPM_CACHE}/{DDPM_EMA[name][0]}"


def source_for(path: Union[str, Path]) -> Optional[CheckpointSource]:
    """The known source of the file at `path` (matched by folder/name, then by name), or None."""
    parts = Path(path).parts
    if not parts:
        return None
    return SOURCES.get("/".join(parts[-2:])) or SOURCES.get(parts[-1])


def _md5_note(path: Path) -> Path:
    return path.with_name(f".{path.name}.md5")


def _stamp(path: Path) -> Dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def remember_md5(path: Path, md5: str) -> None:
    """Note a file's MD5 beside it with its size and mtime; a read-only folder just goes without."""
    try:
        _md5_note(path).write_text(json.dumps({"md5": md5, **_stamp(path)}))
    except OSError:
        pass


def file_md5(path: Union[str, Path]) -> str:
    """MD5 of a file, read from its note when size and mtime are unchanged, else computed (and noted)."""
    path = Path(path)
    stamp = _stamp(path)
    try:
        note = json.loads(_md5_note(path).read_text())
        if {k: note.get(k) for k in stamp} == stamp and isinstance(note.get("md5"), str):
            return note["md5"]
    except (OSError, ValueError, AttributeError):
        pass
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    remember_md5(path, h.hexdigest())
    return h.hexdigest()
