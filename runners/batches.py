"""The batch loop of a restoration run: images -> y -> sampler -> saved images and one record per image.

Randomness is per image (its dataset index), never per batch: x_T and the
sampler's draws from `seed_for(seed, index)`, y's noise from
`measurement_seed(seed, index)`. The loop reads nothing back from the device
while sampling; it syncs once per batch (timing, metrics, saving).
"""
import logging
import sys
import time
from typing import Dict, List, Optional

import torch

from functions import metrics
from functions.noise import measurement_seed, seed_for
from runners import conditioning, data, photos
from runners.devices import _precision, sync_device
from runners.plan import Plan
from runners.results import non_finite, save_image
from runners.settings import _file_digest

LOG = logging.getLogger("equs")


def _restore_all(plan: Plan, eps_model, pending: List[data.ImageItem], earlier_psnr: List[float],
                 total_pending: int) -> None:
    """Restore `pending` (this rank's share) batch by batch, saving each image and its record."""
    import tqdm

    from functions.diffusion import make_betas
    from functions.noise import PerImageNoise
    from functions.operators import reference_apy
    from functions.samplers import restore

    args, out, op, device, ctx = plan.args, plan.out, plan.op, plan.device, plan.dist
    betas = make_betas(plan.config.get("diffusion", {}))
    guide = conditioning.Conditioning(plan, eps_model, betas)
    lp = metrics.LPIPSMetric(None if args.lpips_net == "none" else args.lpips_net, device, warn=LOG.warning)
    sigma_model = 2.0 * args.sigma_y
    psnrs = [p for p in earlier_psnr if p is not None]
    precision = _precision(eps_model, device)

    if ctx.world_size == 1:
        bar = tqdm.tqdm(total=len(plan.items), initial=len(plan.items) - total_pending, unit="img",
                        dynamic_ncols=True, file=sys.stderr)
    else:  # one bar, rank 0's share; the other ranks stay quiet
        bar = tqdm.tqdm(total=len(pending), unit="img", dynamic_ncols=True, file=sys.stderr,
                        disable=not ctx.is_main)
    try:
        if plan.photo_sizes:   # images at their own size, one at a time (runners/photos.py)
            photos.restore_photos(plan, eps_model, pending, bar, psnrs, guide.for_batch)
            return
        for start in range(0, len(pending), plan.batch_size):
            batch = pending[start:start + plan.batch_size]
            x01 = data.load_batch(batch, plan.image_size, plan.preprocess).to(device)
            x = x01 * 2 - 1
            with torch.no_grad():
                y = op.A(x)
                if args.add_noise and sigma_model > 0:
                    gen = PerImageNoise([measurement_seed(args.seed, it.index) for it in batch])
                    y = y + sigma_model * gen.randn(y.shape[1:]).to(device=device, dtype=y.dtype)
                apy = op.A_pinv(y).reshape(x.shape)
                ref_apy = reference_apy(op, y)   # the reference's saved "Apy", where it is not A^+ y

            sync_device(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                result = restore(guide.for_batch(batch), op, y, betas, plan.sampler_cfg,
                                 seeds=[seed_for(args.seed, it.index) for it in batch])
            sync_device(device)  # the one wait per batch: the sampling loop itself never reads back
            seconds = (time.perf_counter() - t0) / len(batch)

            x0 = result.x0.reshape(x.shape)
            rest01, apy01 = _to01(x0), _to01(apy)
            with torch.no_grad():
                scores = _metric_block(rest01, x01, lp, metrics.consistency(op, x0, y))
                base = _metric_block(apy01, x01, lp, metrics.consistency(op, apy, y))
                base_ref = None if ref_apy is None else _metric_block(
                    _to01(ref_apy), x01, lp, metrics.consistency(op, ref_apy, y))
            apy_h, x01_h, rest_h = apy01.cpu(), x01.cpu(), rest01.cpu()  # one copy per batch
            for i, it in enumerate(batch):
                save_image(out.apy(it.name), apy_h[i])
                save_image(out.orig(it.name), x01_h[i])
                save_image(out.restored(it.name), rest_h[i])
                out.write_record(image_record(plan, it, scores[i], base[i], int(result.nfe), seconds, precision,
                                              len(batch),
                                              **({} if base_ref is None else {"baseline_reference": base_ref[i]})))
                if scores[i]["psnr"] is not None:
                    psnrs.append(scores[i]["psnr"])
            bar.update(len(batch))
            mean = metrics.mean_of(psnrs)
            if mean is not None:
                bar.set_description(f"PSNR: {mean:.2f}")
    finally:
        bar.close()


def image_record(plan: Plan, it: data.ImageItem, score: Dict, base: Dict, nfe: int, seconds: float,
                 precision: Optional[str], batch_size: int, **extra) -> Dict:
    """One image's record (records/<name>.json): its scores, the A^+ y baseline's, and how it was made."""
    ctx = plan.dist
    return {"name": it.name, "index": it.index, "source": str(it.path), "source_sha": _file_digest(it.path),
            "label": it.label, "seed": seed_for(plan.args.seed, it.index), **score,
            "non_finite": non_finite(score), "nfe": nfe, "seconds": seconds, "baseline": base, **extra,
            "device": str(plan.device), "precision": precision, "batch_size": batch_size, "rank": ctx.rank,
            "world_size": ctx.world_size, "fingerprint": plan.fingerprint}


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def _metric_block(restored01, original01, lp: metrics.LPIPSMetric, cons) -> List[Dict]:
    """Per-image metrics of a batch; each tensor is read back once (one sync per metric, per batch)."""
    p = metrics.psnr(restored01, original01).tolist()
    s = metrics.ssim(restored01, original01)
    lc, lo = lp.correct(restored01, original01), lp.official(restored01, original01)
    lc = None if lc is None else lc.reshape(-1).tolist()
    lo = None if lo is None else lo.reshape(-1).tolist()
    cons = cons.reshape(-1).tolist()
    return [{"psnr": p[i], "ssim": s[i], "lpips": None if lc is None else lc[i],
             "lpips_official": None if lo is None else lo[i], "consistency": cons[i]}
            for i in range(len(p))]
