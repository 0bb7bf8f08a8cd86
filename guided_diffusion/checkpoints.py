"""Where the pretrained checkpoints live, how they are fetched, and how they are checked and loaded.

The reference saved whatever the server sent (a 255-byte access-denied page) as
`celeba_hq.ckpt` and then crashed inside torch.load. Here a download goes to a
temporary file beside the target, is checked (HTTP status, length, loads with
weights_only=True, tensor names and shapes of the config's model) and only then
renamed into place. Every failure is a one-line CheckpointError that says where to
get the file and where to put it.
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from guided_diffusion._config import cfg_get, cfg_section


class CheckpointError(RuntimeError):
    """A checkpoint is missing, cannot be downloaded, or does not fit the model (message is one line)."""


@dataclass(frozen=True)
class CheckpointSource:
    urls: Tuple[str, ...]  # tried in order
    manual: str  # where a person can get the file when no URL works


GUIDED_DIFFUSION = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
CELEBA_DRIVE_ID = "1wSoA5fm_d6JBZk4RZ1SzWLMgev4WqH21"

# Known public checkpoints, by file name. SDEdit's S3 URL used by the reference
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
}

_CHUNK = 1 << 20


REPO_ROOT = Path(__file__).resolve().parents[1]


def default_checkpoint_path(config: Any, exp: Union[str, Path] = "exp") -> Path:
    """<exp>/<model.checkpoint>, e.g. exp/logs/celeba/celeba_hq.ckpt.

    A config whose weights ship inside the repository (the demo prior) names them
    with `model.bundled_checkpoint`, a path relative to the repository root.
    """
    bundled = cfg_get(cfg_section(config, "model"), "bundled_checkpoint", None)
    if bundled:
        return REPO_ROOT / bundled
    rel = cfg_get(cfg_section(config, "model"), "checkpoint", None)
    if not rel:
        raise CheckpointError("config has no model.checkpoint; pass the checkpoint file with --ckpt")
    return Path(exp) / rel


def expected_tensors(config: Any) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of the state dict of the config's model (built on the meta device: no memory)."""
    from guided_diffusion.models import build_model  # local: models imports the networks, not checkpoints

    return {k: tuple(v.shape) for k, v in build_model(config, device="meta").state_dict().items()}


def _where_to_get(path: Path, source: Optional[CheckpointSource]) -> str:
    origin = source.manual if source is not None else "the model's authors"
    return f"download it from {origin} and put it at {path}"


def download_advice(path: Union[str, Path]) -> Optional[str]:
    """'download it from ... and put it at PATH' for a file that one of the known sources provides,
    else None (a bundled or user-trained checkpoint has no download to repeat)."""
    path = Path(path)
    source = SOURCES.get(path.name)
    return None if source is None else _where_to_get(path, source)


def resolve_checkpoint(config: Any, exp: Union[str, Path] = "exp", override: Union[None, str, Path] = None,
                       download: bool = True, urls: Optional[Sequence[str]] = None,
                       progress: bool = True, timeout: float = 30.0) -> Path:
    """Path of the config's checkpoint, downloading it when missing.

    override: a user-given file (must exist; never downloaded). urls: replaces the known
    public URLs (tests serve files from 127.0.0.1). Raises CheckpointError with one line.
    """
    if override is not None:
        if not str(override).strip():
            raise CheckpointError("--ckpt is empty; give the checkpoint file")
        path = Path(override).expanduser()
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file inside it with --ckpt")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        _sniff(path)
        return path

    path = default_checkpoint_path(config, exp)
    source = SOURCES.get(path.name)
    if path.is_file():
        try:
            _sniff(path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; delete it and {_where_to_get(path, source)}") from None
        return path

    candidates = list(urls) if urls is not None else list(source.urls if source else ())
    if not download or not candidates:
        why = "downloading is disabled" if not download else "no download URL is known"
        raise CheckpointError(f"checkpoint {path} is missing ({why}); {_where_to_get(path, source)}")

    expected = expected_tensors(config)
    failures = []
    for url in candidates:
        try:
            fetch(url, path, expected=expected, progress=progress, timeout=timeout)
            return path
        except CheckpointError as err:
            failures.append(f"{url}: {err}")
    raise CheckpointError(f"could not download {path.name} ({'; '.join(failures)}); {_where_to_get(path, source)}")


def fetch(url: str, dest: Union[str, Path], expected: Optional[Mapping[str, Sequence[int]]] = None,
          progress: bool = True, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` via a temporary file in the same folder, validate it, then rename.

    Nothing is left at `dest` or beside it unless the file is complete and valid.
    """
    dest = Path(dest)
    tmp = None
    made = []          # folders this call creates: removed again if the download fails
    probe = dest.parent
    while not probe.exists() and probe.parent != probe:
        made.append(probe)
        probe = probe.parent
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out:
            _download_into(url, out, dest.name, progress, timeout)
        try:
            validate_checkpoint(tmp, expected)
        except CheckpointError as err:   # name the download, not the temporary file about to go
            raise CheckpointError(str(err).replace(str(tmp), f"the downloaded {dest.name}")) from None
        # mkstemp makes the file private (0600); a checkpoint in a shared exp/ gets the usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except OSError as err:   # a full disk, a folder that is a file, no permission: one line, not a traceback
        raise CheckpointError(f"cannot write {dest} ({err.strerror or err})") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        if not dest.exists():
            for folder in made:        # deepest first; a folder something else wrote into stays
                try:
                    folder.rmdir()
                except OSError:
                    break
    return dest


def _download_into(url: str, out, name: str, progress: bool, timeout: float) -> None:
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "equs-checkpoints"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise CheckpointError(f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CheckpointError(f"cannot connect ({reason}); are you offline?") from None
    with response:
        status = getattr(response, "status", 200)
        if status != 200:
            raise CheckpointError(f"HTTP {status}")
        if response.headers.get_content_type() in ("text/html", "application/xml", "text/xml"):
            raise CheckpointError(f"the server sent a web page ({response.headers.get_content_type()}), "
                                  "not a checkpoint")
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, ValueError) as err:  # IncompleteRead, reset connection, timeout
                    raise CheckpointError(f"download interrupted after {received} bytes ({type(err).__name__})") from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise CheckpointError(f"download incomplete: {received} of {total} bytes")


def _sniff(path: Path) -> None:
    """Cheap check before torch.load: not empty, not an HTML/XML error page."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"<"):
        raise CheckpointError(f"{path} is a {size}-byte HTML/XML page (an error page), not a checkpoint")
    if size == 0:
        raise CheckpointError(f"{path} is empty")


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """torch.load(weights_only=True) to CPU, memory-mapped when possible; unwraps DataParallel prefixes."""
    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing failure
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if first.startswith("Weights only load failed"):   # torch then suggests weights_only=False: not for junk
            first = "it holds more than tensors, or its pickle is damaged"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint, truncated or corrupt ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def describe_differences(found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]],
                         limit: int = 5) -> str:
    """'' when names and shapes agree; else a one-line summary naming the first differences."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in expected
                  if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", mismatched)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def validate_checkpoint(path: Union[str, Path], expected: Optional[Mapping[str, Sequence[int]]] = None
                        ) -> Dict[str, torch.Tensor]:
    """Check that `path` is a readable checkpoint whose tensors have exactly the expected names/shapes."""
    path = Path(path)
    _sniff(path)  # a truncated file fails in torch.load (the zip directory is at its end)
    state = read_state_dict(path)
    if expected is not None:
        diff = describe_differences({k: tuple(v.shape) for k, v in state.items()}, expected)
        if diff:
            raise CheckpointError(f"{path} does not match the model: {diff}")
    return state


def checkpoint_id(path: Union[str, Path], whole_below: int = 256 << 20, part: int = 16 << 20) -> str:
    """A short content digest of a checkpoint file: sha256 of the whole file, or for files
    over `whole_below` bytes of their size and first and last `part` bytes (retrained or
    fine-tuned weights differ everywhere, and a 2 GB file is not read again on every resume)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= whole_below:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(part))
            f.seek(size - part)
            h.update(f.read(part))
    return h.hexdigest()[:16]


def load_weights(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load `path` into `model` strictly, refusing (with the first differences) any name/shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = validate_checkpoint(path, expected)
    model.load_state_dict(state, strict=True)
    return model
