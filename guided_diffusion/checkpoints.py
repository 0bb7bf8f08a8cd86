"""Where the pretrained checkpoints live, how they are fetched, and how they are checked and loaded.

The reference saved whatever the server sent (a 255-byte access-denied page) as
`celeba_hq.ckpt` and then crashed inside torch.load. Here a download goes to a
temporary file beside the target, is checked (HTTP status, length, loads with
weights_only=True, tensor names and shapes of the config's model) and only then
renamed into place. Every failure is a one-line CheckpointError that says where to
get the file and where to put it.

Where the publisher gives an MD5 sum (DDPM's LSUN models, in DDIM's ckpt_util.py) the
download is also checked against it before the rename, and `verify_known_checksum`
refuses a file at that place that no longer matches (its sum is cached in a hidden
`.<name>.md5` file beside it, keyed by size and mtime, so a resume does not re-read it).
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from guided_diffusion._config import cfg_get, cfg_section
from guided_diffusion.checkpoint_sources import (DDPM_CACHE, DDPM_EMA, SOURCES, CheckpointSource,  # noqa: F401
                                                 file_md5, lsun_checkpoint, remember_md5, source_for)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, cannot be downloaded, or does not fit the model (message is one line)."""


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
    source = source_for(path)
    return None if source is None else _where_to_get(path, source)


def resolve_checkpoint(config: Any, exp: Union[str, Path] = "exp", override: Union[None, str, Path] = None,
                       download: bool = True, urls: Optional[Sequence[str]] = None,
                       progress: bool = True, timeout: float = 30.0) -> Path:
    """Path of the config's checkpoint, downloading it when missing.

    override: a user-given file (must exist; never downloaded). urls: replaces the known
    public URLs (tests serve files from 127.0.0.1). A file with a published MD5 is checked
    against it. Raises CheckpointError with one line.
    """
    if override is not None:
        return _user_file(override, "--ckpt")
    return _resolve(default_checkpoint_path(config, exp), lambda: expected_tensors(config),
                    download, urls, progress, timeout)


CLASSIFIER_CHECKPOINT = "logs/imagenet/256x256_classifier.pt"


def resolve_classifier_checkpoint(config: Any, exp: Union[str, Path] = "exp",
                                  override: Union[None, str, Path] = None, download: bool = True,
                                  urls: Optional[Sequence[str]] = None, progress: bool = True,
                                  timeout: float = 30.0, flag: str = "--classifier_ckpt") -> Path:
    """resolve_checkpoint for the config's `classifier` section: <exp>/<classifier.checkpoint>
    (default logs/imagenet/256x256_classifier.pt), downloaded from guided-diffusion when missing
    and checked against the classifier's tensor names and shapes. `flag` names the override in errors."""
    section = cfg_get(config, "classifier", None)
    if section is None:
        raise CheckpointError("config has no classifier section; use a config with one (configs/imagenet_256_cc.yml)")
    if override is not None:
        return _user_file(override, flag)
    rel = cfg_get(section, "checkpoint", None) or CLASSIFIER_CHECKPOINT
    return _resolve(Path(exp) / rel, lambda: expected_classifier_tensors(config), download, urls, progress, timeout)


def expected_classifier_tensors(config: Any) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Names and shapes of the config's classifier (meta device), or None without guided_diffusion.classifier."""
    try:
        from guided_diffusion.classifier import build_classifier
    except ImportError:   # optional here: the load that follows checks the shapes then
        return None
    section = cfg_get(config, "classifier")
    return {k: tuple(v.shape) for k, v in build_classifier(section, device="meta").state_dict().items()}


def _user_file(override: Union[str, Path], flag: str) -> Path:
    """A checkpoint the user names: it must exist and not be an error page (never downloaded)."""
    if not str(override).strip():
        raise CheckpointError(f"{flag} is empty; give the checkpoint file")
    path = Path(override).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file inside it with {flag}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _sniff(path)
    return path


def _resolve(path: Path, expected: Callable[[], Optional[Mapping[str, Sequence[int]]]], download: bool,
             urls: Optional[Sequence[str]], progress: bool, timeout: float) -> Path:
    """The file at `path` if present and sound, else downloaded from `urls` or its known source."""
    source = source_for(path)
    if path.is_file():
        try:
            _sniff(path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; delete it and {_where_to_get(path, source)}") from None
        verify_known_checksum(path)   # e.g. a partial file the reference's non-atomic download left
        return path

    candidates = list(urls) if urls is not None else list(source.urls if source else ())
    if not download or not candidates:
        why = "downloading is disabled" if not download else "no download URL is known"
        raise CheckpointError(f"checkpoint {path} is missing ({why}); {_where_to_get(path, source)}")

    shapes = expected()
    failures = []
    for url in candidates:
        try:
            fetch(url, path, expected=shapes, progress=progress, timeout=timeout,
                  md5=source.md5 if source else None)
            return path
        except CheckpointError as err:
            failures.append(f"{url}: {err}")
    raise CheckpointError(f"could not download {path.name} ({'; '.join(failures)}); {_where_to_get(path, source)}")


def fetch(url: str, dest: Union[str, Path], expected: Optional[Mapping[str, Sequence[int]]] = None,
          progress: bool = True, timeout: float = 30.0, md5: Optional[str] = None) -> Path:
    """Download `url` to `dest` via a temporary file in the same folder, validate it, then rename.

    md5: the published sum, compared while the bytes arrive. Nothing is left at `dest` or
    beside it unless the file is complete and valid.
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
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            _download_into(url, out, dest.name, progress, timeout, digest)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise CheckpointError(f"the downloaded {dest.name} has MD5 {digest.hexdigest()}, not the published "
                                  f"{md5.lower()} (damaged or changed on the server; removed)")
        try:
            validate_checkpoint(tmp, expected)
        except CheckpointError as err:   # name the download, not the temporary file about to go
            raise CheckpointError(str(err).replace(str(tmp), f"the downloaded {dest.name}")) from None
        # mkstemp makes the file private (0600); a checkpoint in a shared exp/ gets the usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
        if md5 is not None:
            remember_md5(dest, digest.hexdigest())
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


def _download_into(url: str, out, name: str, progress: bool, timeout: float, digest=None) -> None:
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
                if digest is not None:
                    digest.update(chunk)
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


def verify_known_checksum(path: Union[str, Path]) -> None:
    """Refuse (CheckpointError, one line) a file whose publisher gives an MD5 that it no longer has;
    files without a published sum pass unchecked."""
    path = Path(path)
    source = source_for(path)
    if source is None or source.md5 is None:
        return
    found = file_md5(path)
    if found != source.md5.lower():
        raise CheckpointError(f"{path} has MD5 {found}, not the published {source.md5.lower()} (incomplete or "
                              f"changed); delete it and {_where_to_get(path, source)}")
