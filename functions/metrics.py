"""Image-quality metrics for restoration runs, as the published tables compute them.

Conventions (they decide whether numbers are comparable with the papers):
- images are float tensors in [0, 1], shape (C, H, W) or (B, C, H, W), compared
  before any 8-bit rounding, as the official EquS runner does;
- PSNR = 10 log10(1 / mse) over all pixels and channels of one image;
- SSIM = scikit-image `structural_similarity(data_range=1.0, channel_axis=0)`
  with its default 7x7 uniform window (DDNM's paper used basicsr's SSIM instead,
  which gives different numbers);
- LPIPS (`lpips` package, v0.1 linear heads): `correct` feeds [-1, 1] inputs as
  the package expects; `official` feeds the [0, 1] images un-normalised to the
  VGG variant, which is what the official EquS code did (through torchmetrics)
  and therefore what its published LPIPS column measures;
- consistency (the papers' "Cons", never published in code, see DDNM issues
  #53 and #64): the root-mean-square of A(x_hat) - y over the m measurements,
  in 8-bit intensity units (model space [-1, 1] spans 255 levels, so the
  factor is 127.5). x_hat is the restored image clamped to [-1, 1] (what is
  saved); y is the measurement the sampler saw, noise included. Lower is better;
  0 means the result reproduces y exactly;
- FID: `pytorch-fid` (Inception pool3, 2048 features) between two lists of files.

LPIPS and FID need backbone weights that torchvision / pytorch-fid download on
first use. Where that fails (offline), the metric is None: the caller gets one
warning line through `warn`, and the run goes on.
"""
import contextlib
import io
import math
import os
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

LPIPS_NETS = ("vgg", "alex")

# file names torchvision / pytorch-fid store in torch.hub's checkpoint cache
_BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "fid": "pt_inception-2015-12-05-6726825d.pth",
}


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def psnr(restored: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images; (B,) float64 (inf where identical)."""
    a = _batched(restored).detach().to(torch.float64)
    b = _batched(original).detach().to(torch.float64).to(a.device)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(restored: torch.Tensor, original: torch.Tensor) -> List[float]:
    """Per-image SSIM of [0, 1] images with scikit-image's defaults (channel_axis=0)."""
    from skimage.metrics import structural_similarity

    a = _batched(restored).detach().float().cpu().numpy()
    b = _batched(original).detach().float().cpu().numpy()
    return [float(structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0)) for i in range(a.shape[0])]


def consistency(op, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """RMS of A(x_hat) - y in 8-bit units (see the module notes); x_hat in model space."""
    residual = op.A(x_hat.clamp(-1, 1)) - y
    residual = residual.reshape(residual.shape[0], -1).to(torch.float64)
    return 127.5 * residual.pow(2).mean(1).sqrt()


def backbone_cached(kind: str) -> bool:
    """Whether torch.hub's cache already holds the backbone weights for `kind`."""
    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", _BACKBONE_FILES[kind]))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


@contextlib.contextmanager
def _quiet():
    """Hide the download chatter (progress bars, deprecation warnings) of a weight fetch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield


# weights that could not be fetched in this process: not retried (a retry costs seconds offline)
_UNAVAILABLE: Dict[str, str] = {}


def build_lpips_net(net: str, device, random_backbone: bool = False):
    """An `lpips.LPIPS` module in eval mode (raises if its weights cannot be fetched).

    random_backbone=True skips the torchvision download (random backbone, real
    linear heads); only tests use it, to check the input conventions offline.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips net '{net}' is unknown; choose one of: {', '.join(LPIPS_NETS)}")
    import lpips

    if not random_backbone and net in _UNAVAILABLE:
        raise OSError(_UNAVAILABLE[net])
    try:
        with _quiet():
            module = lpips.LPIPS(net=net, version="0.1", pnet_rand=random_backbone, verbose=False)
    except Exception as exc:
        if not random_backbone:
            _UNAVAILABLE[net] = _short(exc)
        raise
    return module.to(device).eval().requires_grad_(False)


class LPIPSMetric:
    """LPIPS on [0, 1] images in two conventions: `correct` (the chosen net, inputs
    mapped to [-1, 1]) and `official` (VGG, inputs left in [0, 1], as the official
    EquS runner computed its published numbers). Either is None when unavailable."""

    def __init__(self, net: Optional[str], device, warn: Callable[[str], None] = print,
                 random_backbone: bool = False):
        self.net = net
        self._nets: Dict[str, object] = {}
        if net is None:
            return
        wanted = [net] if net == "vgg" else [net, "vgg"]
        failures = []
        for name in wanted:
            try:
                self._nets[name] = build_lpips_net(name, device, random_backbone)
            except Exception as exc:  # offline, or a corrupt cache: the run goes on without it
                failures.append(f"{name}: {_short(exc)}")
        if failures:
            warn(f"warning: LPIPS backbone weights unavailable ({'; '.join(failures)}); "
                 f"the affected LPIPS values are null")

    @torch.no_grad()
    def correct(self, restored: torch.Tensor, original: torch.Tensor) -> Optional[torch.Tensor]:
        module = self._nets.get(self.net) if self.net else None
        if module is None:
            return None
        a, b = _batched(restored).float(), _batched(original).float()
        return module(a * 2 - 1, b * 2 - 1).flatten().double()

    @torch.no_grad()
    def official(self, restored: torch.Tensor, original: torch.Tensor) -> Optional[torch.Tensor]:
        module = self._nets.get("vgg")
        if module is None:
            return None
        a, b = _batched(restored).float(), _batched(original).float()
        return module(a, b).flatten().double()


def fid_from_files(files_a: Sequence[str], files_b: Sequence[str], device,
                   warn: Callable[[str], None] = print, batch_size: int = 50) -> Optional[float]:
    """FID between two image lists with pytorch-fid; None (one warning) when it cannot run.

    With fewer images than the 2048 feature dimensions the covariances are
    singular and the value is only indicative; the runner records the count.
    """
    if len(files_a) < 2 or len(files_b) < 2:
        warn(f"warning: FID needs at least 2 images per side (got {len(files_a)} and {len(files_b)}); fid is null")
        return None
    try:
        from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance
        from pytorch_fid.inception import InceptionV3

        if "fid" in _UNAVAILABLE:
            raise OSError(_UNAVAILABLE["fid"])
        with _quiet():
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    except Exception as exc:
        _UNAVAILABLE["fid"] = _short(exc)
        warn(f"warning: FID Inception weights unavailable ({_short(exc)}); fid is null")
        return None
    with _quiet():
        bs = max(1, min(batch_size, len(files_a), len(files_b)))
        mu_a, sig_a = calculate_activation_statistics(list(files_a), model, bs, 2048, device, 0)
        mu_b, sig_b = calculate_activation_statistics(list(files_b), model, bs, 2048, device, 0)
        value = float(calculate_frechet_distance(mu_a, sig_a, mu_b, sig_b))
    return value if math.isfinite(value) else None


def mean_of(values: Iterable[Optional[float]]) -> Optional[float]:
    """Mean over the values that exist and are finite; None when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(kept)) if kept else None
