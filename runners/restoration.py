"""One restoration run: flags -> plan -> images -> y -> sampler -> saved images + metrics -> results.

The runner does no mathematics: operators, samplers and metrics come from
`functions/`, networks from `guided_diffusion/`, data and bookkeeping from the
sibling modules. Two phases:

1. `make_plan` checks every input and builds the operator, without writing
   anything or loading the network; a bad flag, dataset, mask or output path
   fails here with one line, before any earlier result could be touched.
2. `execute` loads the network only if images remain, then works through them
   in batches. Each finished image leaves its images and a small record;
   results.json / results.txt / grid.png are rebuilt from all records at the end.

Randomness is per image and independent of batching: image i (its index in the
dataset's full order) samples with seed `seed*100003 + i` (x_T and every
sampler draw) and draws its measurement noise from a CPU generator seeded with
`functions.noise.measurement_seed(seed, i)` (a stream apart from x_T's), so a
subset, a resumed run, a different batch size
or a different number of processes gives the same result for that image (on
the same device type; batched convolution kernels may differ from batch-1 ones
in the last float bits).

Under torchrun (runners/distributed.py) every rank plans the same run, rank 0
decides which images are still pending, each rank restores its share, and rank
0 merges all records into results.json after the others are done. Nothing is
read back from the device inside the sampling loop; the runner syncs once per
batch (timing, metrics, saving).
"""
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import torch

from functions import metrics
from runners import data, distributed
from runners.errors import InputError
from functions.noise import measurement_seed, seed_for
from functions.transforms import get_transforms
from runners.results import (OutputFolder, non_finite, atomic_write_json, comparison_table, atomic_write_text, read_json, results_txt, save_image,
                             settings_diff, summarize)

LOG = logging.getLogger("equs")
GRID_ROWS = 8
MAX_SEED = (2 ** 63 - 2 ** 32) // 100003   # seed * 100003 + index stays a valid 64-bit generator seed
DTYPES = ("auto", "fp32", "fp16", "bf16")
SAMPLE_FOLDER = "image_samples"


@dataclass
class Plan:
    args: object
    argv: List[str]
    config: dict
    device: torch.device
    items: List[data.ImageItem]
    image_size: int
    channels: int
    preprocess: str
    op: object
    sampler_cfg: object
    out: OutputFolder
    settings: Dict
    fingerprint: str
    batch_size: int
    notes: List[str] = field(default_factory=list)
    dist: distributed.Context = field(default_factory=distributed.Context)


# ---------------------------------------------------------------- phase 1: plan

def resolve_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {name} is not supported here; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {name} requested but MPS is not available here")
    return device


def sync_device(device) -> None:
    """Wait for the kernels queued on `device`, so that a clock read after it is honest
    (GPU calls return before their work is done); nothing to wait for on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_flags(args) -> None:
    if not (args.sigma_y >= 0 and math.isfinite(args.sigma_y)):
        raise InputError(f"--sigma_y must be a number >= 0 (got {args.sigma_y}); it is the noise std in [0, 1] "
                         f"image units")
    if args.sigma_y > 1:
        raise InputError(f"--sigma_y must be at most 1 (got {args.sigma_y:g}): it is the noise std in [0, 1] image "
                         f"units, so 8-bit noise of std {args.sigma_y:g} is --sigma_y {args.sigma_y / 255:.4g}")
    if not 0.0 <= args.eta <= 1.0:
        raise InputError(f"--eta must be in [0, 1] (got {args.eta})")
    if not 0.0 <= args.etaB <= 1.0:
        raise InputError(f"--etaB must be in [0, 1] (got {args.etaB})")
    if args.noise_type != "gaussian":
        raise InputError(f"--noise_type {args.noise_type} is not supported; only gaussian is")
    if args.EquS and args.EquSplus:
        raise InputError("--EquS and --EquSplus are exclusive; choose one")
    if args.simplified:
        raise InputError("--simplified (the reference's SVD-free DDNM) is not supported; drop the flag")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0 (got {args.seed})")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1 (got {args.batch_size})")
    if args.timesteps is not None and args.steps is not None and args.timesteps != args.steps:
        raise InputError(f"--timesteps {args.timesteps} and --steps {args.steps} disagree; give one")
    if args.deg_scale is not None and not math.isfinite(args.deg_scale):
        raise InputError(f"--deg_scale must be a finite number (got {args.deg_scale})")
    if args.seed > MAX_SEED:   # image i's seed, seed * 100003 + i, must fit a 64-bit generator seed
        raise InputError(f"--seed must be at most {MAX_SEED} (got {args.seed})")


def _draws_transforms(equs: Optional[str], transform: str) -> bool:
    """Alternate EquS over a set of transforms: one is drawn per transformed step."""
    return equs == "alternate" and len(get_transforms(transform)) > 1


def _check_speed_flags(args, device: torch.device) -> None:
    dtype = getattr(args, "dtype", "auto")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    # bf16 tensor cores from compute capability 8.0 (Ampere); is_bf16_supported() would also accept emulation
    if dtype == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise InputError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         f"use fp16 or fp32")


MASK_SPECS = ("random:", "box:")


def _mask_side(path: Path):
    """(H, W) of a mask file without resizing it."""
    if path.suffix.lower() == ".npy":
        import numpy as np

        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:   # truncated, empty or not an .npy at all
            raise InputError(f"cannot read mask {path}: {str(exc).splitlines()[0] or type(exc).__name__}") from None
        if array.size == 0:
            raise InputError(f"mask {path} is empty; give a square 0/1 array")
        if array.dtype.kind not in "biuf":
            raise InputError(f"mask {path} holds {array.dtype} values; give 0/1 (or boolean) values")
        return tuple(array.shape[-2:]) if array.ndim >= 2 else None
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except OSError as exc:
        raise InputError(f"cannot read mask {path}: {str(exc).splitlines()[0]}") from None


def _mask_source(args, image_size: int):
    """The inpainting mask the operator gets: a checked file path, a 'random:R'/'box:R' spec, or None.

    A mask file must be square with a side equal to the image size or an integer
    multiple of it (it is then subsampled, as the reference's 256x256 mask.npy
    taken every 4th pixel gives the 64x64 fixture mask); anything else is refused.
    """
    if args.mask is not None and args.mask.startswith(MASK_SPECS):
        return args.mask
    if args.mask is not None:
        path = Path(args.mask)
        if not path.is_file():
            raise InputError(f"--mask file not found: {args.mask}")
    elif args.deg == "inpainting" and (Path(args.exp) / "inp_masks" / "mask.npy").is_file():
        path = Path(args.exp) / "inp_masks" / "mask.npy"  # where the reference reads it
    else:
        return None
    side = _mask_side(path)
    if side is None or side[0] != side[1] or side[0] % image_size:
        shown = "x".join(map(str, side)) if side else "not 2-D"
        raise InputError(f"mask {path} is {shown} but the model works at {image_size}x{image_size}; "
                         f"give a square mask of side {image_size} (or a multiple of it)")
    return str(path)


def _file_digest(path) -> Optional[str]:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _check_output_path(root: Path) -> None:
    """The output folder, or its first existing ancestor, must be a folder."""
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            return
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output path {probe} is a file, not a folder; choose another --exp or -i")


def _check_apart(out_root: Path, data_root: Path) -> None:
    """The output folder may not be the dataset folder, inside it or around it: restored images
    would overwrite the inputs, or be read back as inputs by the next run."""
    out_real, data_real = Path(os.path.realpath(out_root)), Path(os.path.realpath(data_root))
    if out_real == data_real or data_real in out_real.parents or out_real in data_real.parents:
        raise InputError(f"output folder {out_root} and dataset folder {data_root} overlap (outputs would overwrite "
                         f"or join the inputs); choose an -i (or --exp) outside the dataset")


def _flag_or_config(args, name: str, travel: dict) -> int:
    """--travel_length / --travel_repeat when given, else the config's time_travel value (1: no travel)."""
    value = getattr(args, name, None)
    value = int(travel.get(name, 1)) if value is None else int(value)
    if value < 1:
        raise InputError(f"--{name} must be >= 1 (got {value}; 1 means no time travel)")
    return value


def _sampler_config(args, config):
    from functions.samplers import SamplerConfig

    travel = config.get("time_travel", {}) or {}
    steps = args.steps if args.steps is not None else args.timesteps
    if steps is None:
        steps = int(travel.get("T_sampling", 100))
    if steps < 1:
        raise InputError(f"--steps must be >= 1 (got {steps})")
    equs = args.equs_mode or ("alternate" if (args.EquS or args.EquSplus) else None)
    schedule = args.schedule or ("tas" if args.EquSplus else "uniform")
    cfg = SamplerConfig(
        sampler=args.sampler, eta=args.eta, etaB=args.etaB, sigma_y=2.0 * args.sigma_y, steps=int(steps),
        schedule=schedule, travel_length=_flag_or_config(args, "travel_length", travel),
        travel_repeat=_flag_or_config(args, "travel_repeat", travel), equs=equs, transform=args.transform,
        eps_mapping=args.eps_mapping, travel_from=getattr(args, "travel_from", "x0"),
        # seeds the per-step choice among several transforms; 0 otherwise, so that it stays out of
        # the fingerprint of runs it cannot affect
        transform_seed=int(args.seed) if _draws_transforms(equs, args.transform) else 0,
        clip_x0=bool(args.clip_x0 if getattr(args, "clip_x0", None) is not None
                     else (config.get("sampling") or {}).get("clip_x0", False)),
    )
    # build the schedule and the denoiser wrapper once now, so a bad value fails before anything is written
    from functions.equivariance import make_denoiser
    from functions.samplers import schedule_for

    num_timesteps = _num_timesteps(config)
    if cfg.steps > num_timesteps:
        raise InputError(f"--steps {cfg.steps} exceeds the {num_timesteps} diffusion timesteps of the config")
    schedule_for(cfg, num_timesteps)
    make_denoiser(lambda x, t: x, cfg.equs, cfg.transform, cfg.eps_mapping)
    return cfg


# Above this first-step error gain (functions.samplers.first_step_error_gain) a plan gets a note. The demo
# prior, 4x SR with EquS+: 8 steps (gain 10) 23.9 dB, 7 steps (14) 6.1 dB, 10 steps (7) 25.4 dB.
FIRST_STEP_GAIN_NOTE = 8.0


def _first_step_gain(sampler_cfg, config):
    """(first_step_error_gain, the first reverse step) of this run's schedule."""
    from functions.diffusion import NoiseLevels, make_betas
    from functions.samplers import first_step_error_gain, schedule_for

    levels = NoiseLevels(make_betas(config.get("diffusion", {})))
    schedule = schedule_for(sampler_cfg, levels.num_timesteps)
    first = next(s for s in schedule if s.is_reverse)
    return first_step_error_gain(schedule, levels), first


def _num_timesteps(config) -> int:
    """The config's number of diffusion timesteps T."""
    from functions.diffusion import make_betas

    return make_betas(config.get("diffusion", {})).numel()


def _travels(cfg, config) -> bool:
    """Whether the run's schedule has time-travel steps (jumps back up)."""
    from functions.samplers import schedule_for

    return any(not step.is_reverse for step in schedule_for(cfg, _num_timesteps(config)))


def _config_int(args, section: dict, section_name: str, key: str, default: int) -> int:
    """A positive whole number from the config, or one line naming the key and the file."""
    value = section.get(key, default) if isinstance(section, dict) else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise InputError(f"{section_name}.{key} in {args.config} must be a whole number >= 1 (got {value!r}); "
                         f"fix the config" + (" or pass --batch_size" if key == "batch_size" else ""))
    return int(value)


def make_plan(args, argv: List[str], device_name: Optional[str] = None) -> Plan:
    """Check every input and build the operator; writes nothing, loads no network.

    device_name: the device to use instead of --device (a torchrun rank's cuda:LOCAL_RANK).
    """
    from guided_diffusion.models import load_config

    _check_flags(args)
    config = load_config(args.config)
    if args.ckpt is not None:   # a file the user names: checked now, before any folder is compared or written
        from guided_diffusion.checkpoints import resolve_checkpoint
        resolve_checkpoint(config, args.exp, override=args.ckpt)
    data_cfg = config.get("data", {}) or {}
    image_size = _config_int(args, data_cfg, "data", "image_size", 256)
    channels = _config_int(args, data_cfg, "data", "channels", 3)
    device = resolve_device(args.device if device_name is None else device_name)
    _check_speed_flags(args, device)
    sampler_cfg = _sampler_config(args, config)

    items = data.build_dataset(args.path_y, args.exp, config, args.subset_start, args.subset_end)
    # where the output goes, checked before anything about the images' names: an output folder
    # inside the dataset would read its own results back as inputs
    out = OutputFolder(Path(args.exp) / SAMPLE_FOLDER / args.image_folder)
    _check_output_path(out.root)
    data_root = data.resolve_root(args.path_y, args.exp)
    _check_apart(out.root, data_root)
    sizes = data.verify_images(items)
    reserved = OutputFolder(Path("."))
    clash = [it for it in items if Path(f"{it.name}.png") == reserved.grid]
    if clash:
        raise InputError(f"input image {clash[0].path} would be written as {reserved.grid.name}, the name of the "
                         f"comparison grid in the output folder; rename that file")
    if bool((config.get("model", {}) or {}).get("class_cond", False)):
        unlabelled = [it.name for it in items if it.label < 0]
        if unlabelled:
            raise InputError(f"this model is class-conditional but {len(unlabelled)} image(s) have no class label "
                             f"(e.g. {unlabelled[0]}); give a list file with 'name label' lines")
        num_classes = int((config.get("model", {}) or {}).get("num_classes", 1000))
        out_of_range = [it for it in items if it.label >= num_classes]
        if out_of_range:
            raise InputError(f"class label {out_of_range[0].label} of {out_of_range[0].name} is not below the "
                             f"model's {num_classes} classes; fix the list file")

    from functions.operators import build_operator

    mask = _mask_source(args, image_size)
    op = build_operator(args.deg, image_size=image_size, channels=channels, deg_scale=args.deg_scale,
                        device=device, dtype=torch.float32, mask=mask, seed=args.seed,
                        lambda_mode=args.lambda_mode, blur_svd=args.blur_svd)

    model_cfg = {k: config.get(k) for k in ("data", "model", "diffusion")}
    settings = {
        "config": Path(args.config).name,
        "config_sha": hashlib.sha256(json.dumps(model_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "path_y": _path_y_setting(args, data_root), "deg": args.deg, "deg_scale": args.deg_scale, "sigma_y": args.sigma_y,
        "add_noise": bool(args.add_noise), "noise_type": args.noise_type, "seed": args.seed,
        "mask": mask, "mask_sha": _file_digest(mask) if mask and Path(mask).is_file() else None,
        "lambda_mode": args.lambda_mode, "blur_svd": args.blur_svd, "ckpt": _ckpt_setting(args, config),
        "lpips_net": args.lpips_net,
        # sigma_y stays in CLI units; travel_from only where a step travels (below)
        **{k: v for k, v in sampler_cfg.to_dict().items() if k not in ("sigma_y", "travel_from")},
    }
    if sampler_cfg.sampler == "ddrm" and sampler_cfg.schedule == "uniform" \
            and _num_timesteps(config) % sampler_cfg.steps:
        # DDRM's own range(0, T, T // steps) since 2026-11-27 (before: DDNM's list, another schedule
        # for these step counts); folders made before have no such entry, so they are not resumed into
        settings["ddrm_schedule"] = "range"
    if _travels(sampler_cfg, config):
        # time travel re-noises the raw x0 (the official DDNM's) since 2026-11-27, x0_hat before; folders
        # made before have no such entry, so they are not resumed into
        settings["travel_from"] = sampler_cfg.travel_from
    if args.deg == "cs_walshhadamard" or (mask or "").startswith("random:"):
        # drawn from numpy streams of their own since 2026-11-26 (before: torch's, shared with x_T)
        settings["operator_stream"] = "pcg64"
    if _draws_transforms(sampler_cfg.equs, sampler_cfg.transform):
        settings["transform_stream"] = "seedsequence"   # the per-step choices' own stream, since 2026-11-26
    if args.add_noise and args.sigma_y > 0:
        # y's noise has its own stream (functions.noise.measurement_seed); folders made when it
        # repeated x_T's draws have no such entry, so they are not resumed into
        settings["y_noise_stream"] = "measurement_seed"
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    batch_size = args.batch_size or _config_int(args, config.get("sampling", {}) or {}, "sampling", "batch_size", 1)
    notes = []
    if sampler_cfg.equs == "average":
        from functions.equivariance import make_denoiser
        from functions.transforms import first_missing_composition

        group = make_denoiser(lambda x, t: x, "average", sampler_cfg.transform).transforms
        missing = first_missing_composition(group, image_size)
        if missing:
            notes.append(f"note: the average over {{{', '.join(T.name for T in group)}}} is not over a group "
                         f"({missing[0]} after {missing[1]} is not in it), so the averaged denoiser is not "
                         f"equivariant; a closed set such as --transform flips, rotations or d4 is")
    if args.deg == "inpainting" and mask is None:
        notes.append(f"note: no --mask and no {Path(args.exp) / 'inp_masks' / 'mask.npy'} (where the reference reads "
                     f"its mask): inpainting uses the built-in default mask (functions/masks.py)")
    if not sampler_cfg.clip_x0:
        gain, first = _first_step_gain(sampler_cfg, config)
        if gain > FIRST_STEP_GAIN_NOTE:
            notes.append(f"note: the first step goes from t = {first.t} to t = {first.t_next}, which multiplies the "
                         f"error of the model's first noise prediction by {gain:.0f} on its way into x_{first.t_next} "
                         f"(the reference's schedule does the same); with a prior as weak as the demo's the result is "
                         f"unusable (4x SR, 7 EquS+ steps: 6 dB): add --clip_x0 or use more steps")
    reshaped = data.reshaped_note(items, sizes, image_size, data.preprocess_mode(config))
    if reshaped:
        notes.append(reshaped)
    if args.sigma_y > 0 and not args.add_noise:
        notes.append(f"note: --sigma_y {args.sigma_y} without --add_noise: y stays noise-free while the sampler "
                     f"assumes noise of that level (the reference's behaviour)")
    return Plan(args, argv, config, device, items, image_size, channels, data.preprocess_mode(config), op,
                sampler_cfg, out, settings, fingerprint, batch_size, notes)


# ---------------------------------------------------------------- phase 2: execute

def load_eps_model(plan: Plan):
    """The network as eps(x, t) in the precision and layout the flags ask for."""
    from guided_diffusion.checkpoints import CheckpointError, download_advice, load_weights, resolve_checkpoint
    from guided_diffusion.models import EpsModel, build_model

    args = plan.args
    path = resolve_checkpoint(plan.config, exp=args.exp, override=args.ckpt)
    model = build_model(plan.config)
    try:
        load_weights(model, path)
    except CheckpointError as err:
        advice = None if args.ckpt is not None else download_advice(path)
        if advice is None:
            raise
        raise CheckpointError(f"{err}; delete it and {advice}") from None
    model = model.to(plan.device).eval().requires_grad_(False)
    dtype = getattr(args, "dtype", "auto")
    eps_model = EpsModel(model, plan.config, dtype=None if dtype == "auto" else dtype,
                         channels_last=getattr(args, "channels_last", False), compile=getattr(args, "compile", False),
                         compile_mode=getattr(args, "compile_mode", None),
                         attention=getattr(args, "attention", "reference"))
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    LOG.info(f"model: {path} ({_precision(eps_model, plan.device)})")
    return eps_model, str(path)


def _precision(eps_model, device: torch.device) -> Optional[str]:
    """What the network computes in, e.g. 'float16' or 'float32, channels_last, compiled'."""
    if not hasattr(eps_model, "compute_dtype"):
        return None
    parts = [str(eps_model.compute_dtype(device)).replace("torch.", "")]
    if getattr(eps_model, "channels_last", False):
        parts.append("channels_last")
    if getattr(eps_model, "attention", "reference") != "reference":
        parts.append(f"attention {eps_model.attention}")
    if getattr(eps_model, "compile", False):
        mode = getattr(eps_model, "compile_mode", None)
        parts.append(f"compiled ({mode})" if mode else "compiled")
    return ", ".join(parts)


def _bind_labels(eps_model, labels: Optional[torch.Tensor]):
    if labels is None:
        return eps_model

    def eps(x, t):
        k = x.shape[0] // labels.shape[0]  # group-averaged EquS stacks k transformed copies of the batch
        return eps_model(x, t, labels.repeat(k))

    return eps


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


def _warn(message: str) -> None:
    LOG.warning(message)


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
    value = metrics.fid_from_files([str(out.restored(n)) for n in names], orig, device, warn=_warn)
    baseline = None
    if value is not None:
        baseline = metrics.fid_from_files([str(out.apy(n)) for n in names], orig, device, warn=_warn)
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
    if fid and records:
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
    atomic_write_json(out.results_json, results)
    atomic_write_text(out.results_txt, results_txt(summary))
    _write_grid(out, records)
    return results


def _path_y_setting(args, data_root: Path) -> str:
    """--path_y as the run records it: the dataset's name where the folder sits in <exp>/datasets
    (`--path_y exp/datasets/demo` is `demo`, as Table 1's labels expect), else as given."""
    datasets = (Path(args.exp) / "datasets").resolve()
    return data_root.name if data_root.parent.resolve() == datasets else args.path_y


def _is_default_checkpoint(path, config, exp) -> bool:
    from guided_diffusion.checkpoints import CheckpointError, default_checkpoint_path

    try:
        return Path(path).expanduser().resolve() == default_checkpoint_path(config, exp).resolve()
    except (CheckpointError, OSError):
        return False


def _ckpt_setting(args, config) -> Optional[str]:
    """--ckpt as the run records it: None where it names the config's own checkpoint file, which
    is the same run as without the flag (a file's content is compared on resume besides)."""
    if args.ckpt is None or _is_default_checkpoint(args.ckpt, config, args.exp):
        return None
    return args.ckpt


def _spelled_once(settings: Dict, exp: str, config) -> Dict:
    """settings with the dataset and the checkpoint as the files they name, for comparing two runs'
    settings (also those of folders made before either was recorded in one spelling): `demo` and
    `exp/datasets/demo` are one dataset; a --ckpt naming the config's own file is no --ckpt, and
    `ft.ckpt` and `./ft.ckpt` are one file (where the files exist)."""
    out = dict(settings)
    root = data.existing_root(settings["path_y"], exp) if settings.get("path_y") else None
    if root is not None:
        out["path_y"] = str(root.resolve())
    ckpt = settings.get("ckpt")
    if ckpt:
        if _is_default_checkpoint(ckpt, config, exp):
            out["ckpt"] = None
        elif Path(str(ckpt)).expanduser().is_file():
            out["ckpt"] = str(Path(str(ckpt)).expanduser().resolve())
    return out


def _same_run(old: Dict, new: Dict) -> bool:
    """Whether two settings differ only in values that cannot change the run: a spelled-out default
    --deg_scale, a deg_scale the degradation ignores, EquS's transform choice without EquS, a mask
    without inpainting."""
    return _normalised(old) == _normalised(new)


def _normalised(settings: Dict) -> Dict:
    """Settings with the values that cannot change the run brought to one spelling (see _same_run)."""
    from functions.operators import DEFAULT_CS_RATIO, DEFAULT_SR_FACTOR

    s = dict(settings)
    deg = s.get("deg")
    default = DEFAULT_SR_FACTOR if str(deg).startswith("sr_") else DEFAULT_CS_RATIO if str(deg).startswith("cs_") else None
    if default is None:
        s.pop("deg_scale", None)
    else:
        s["deg_scale"] = float(default if s.get("deg_scale") is None else s["deg_scale"])
    if not s.get("equs"):
        for key in ("transform", "eps_mapping", "transform_seed"):
            s.pop(key, None)
    if deg != "inpainting":
        s.pop("mask", None)
        s.pop("mask_sha", None)
    return json.loads(json.dumps(s, sort_keys=True, default=str))


def execute(plan: Plan) -> Optional[Dict]:
    """Restore the pending images (this rank's share) and, on rank 0, rebuild the results.

    Returns results.json's content on rank 0, None on the other ranks.
    """
    args, out, ctx = plan.args, plan.out, plan.dist
    previous = read_json(out.run_json)
    changed = previous and not args.overwrite and previous.get("fingerprint") != plan.fingerprint
    if changed:   # both runs' settings with the dataset and checkpoint as the files they name
        old_settings = _spelled_once(previous.get("settings") or {}, args.exp, plan.config)
        new_settings = _spelled_once(plan.settings, args.exp, plan.config)
    if changed and previous.get("fingerprint") and _same_run(old_settings, new_settings):
        # the same run spelled another way (--deg_scale 4 for the default 4, --transform without EquS):
        # continue under the folder's own settings, so that its records count
        plan.settings, plan.fingerprint = previous["settings"], previous["fingerprint"]
    if not (previous and previous.get("fingerprint")) and not args.overwrite:
        # run.json names the settings; without it (deleted, or damaged by hand) the records still
        # carry their fingerprints, and results made with other settings must not be mixed in
        others = sum(f != plan.fingerprint for f in out.record_fingerprints().values())
        if others:
            state = "damaged" if out.run_json.exists() else "missing"
            raise InputError(f"{out.root} holds {others} result(s) made with other settings, and its run.json, "
                             f"which names them, is {state}; rerun the command that made them to resume, "
                             f"choose another -i, or add --overwrite to discard those results")
    if previous and not args.overwrite and previous.get("fingerprint") != plan.fingerprint:
        # only the differences that block resuming (not a spelled-out default --deg_scale, ...)
        changes = settings_diff(_normalised(old_settings), _normalised(new_settings))
        raise InputError(f"{out.root} holds results made with other settings ({'; '.join(changes) or 'unknown'}); "
                         f"rerun with those settings to resume, choose another -i, or add --overwrite to discard "
                         f"those results")
    # Rank 0 alone reads the records and tells the others what is left, so that every rank
    # shards the very same list (a rank starting late must not see another's fresh records).
    state, done = None, {}
    if ctx.is_main:
        done = {} if args.overwrite else {r["name"]: r for r in _finished_records(out, plan.fingerprint)}
        moved = [(it, done[it.name]) for it in plan.items if it.name in done and done[it.name].get("index") != it.index]
        error = None
        if moved:   # an image's seed is its index: a record made at another index is not this run's image
            it, rec = moved[0]
            error = (f"the dataset changed since {out.root} was made: {it.name} was image {rec.get('index')} and is "
                     f"now image {it.index} ({len(moved)} image(s) moved); restore it into another -i, or add "
                     f"--overwrite to start this folder afresh")
        else:       # a file replaced under the same name: its record scores another image (records from
            # before 2026-11-27 have no source_sha and are not checked)
            edited = [it for it in plan.items if it.name in done and done[it.name].get("source_sha")
                      and done[it.name]["source_sha"] != _file_digest(it.path)]
            if edited:
                error = (f"the dataset changed since {out.root} was made: {edited[0].path} has new content "
                         f"({len(edited)} image(s) changed); restore it into another -i, or add --overwrite to "
                         f"start this folder afresh")
        state = ([it.name for it in plan.items if it.name not in done], [r.get("psnr") for r in done.values()], error)
    pending_names, earlier_psnr, error = ctx.broadcast(state)
    if error:   # on every rank, so that none waits for the others
        raise InputError(error)
    by_name = {it.name: it for it in plan.items}
    pending = [by_name[name] for name in pending_names]
    mine = ctx.shard(pending)
    # The first process on each node resolves (and if need be downloads) the checkpoint before
    # the others look for it; a missing checkpoint fails here, before any write.
    # A user error on one rank is raised on every rank (all_gather is also the barrier), so
    # that no rank is left waiting in a collective for one that has exited.
    eps_model, model_path = None, (previous or {}).get("checkpoint")
    model_id = (previous or {}).get("checkpoint_id")
    first_on_node = ctx.local_rank == 0

    def load(check: bool) -> Optional[str]:
        nonlocal eps_model, model_path, model_id
        try:
            eps_model, model_path = load_eps_model(plan)
            if check:
                model_id = _check_same_checkpoint(previous, done, model_path)
        except Exception as exc:
            if ctx.world_size == 1:
                raise
            if isinstance(exc, InputError):
                return str(exc)
            LOG.exception(f"rank {ctx.rank}: loading the model failed")   # the traceback, on this rank
            return f"rank {ctx.rank}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return None

    for phase_loads in (pending and first_on_node and (mine or ctx.is_main),
                        pending and not first_on_node and mine):
        error = load(ctx.is_main) if phase_loads else None
        errors = [e for e in ctx.all_gather(error) if e]
        if errors:
            raise InputError(errors[0])
    # (the second all_gather above: every rank has read the folder's state before rank 0 changes it)
    # (after the model: a run that cannot get its checkpoint reports only that)
    for note in plan.notes:
        LOG.info(note)
    LOG.info(f"{len(plan.items)} images, {len(plan.items) - len(pending)} already done; output: {out.root}")
    if ctx.world_size > 1:
        LOG.info(f"{ctx.world_size} processes ({ctx.backend}); {len(mine)} image(s) on rank {ctx.rank} ({plan.device})")

    lock, busy = None, None
    if ctx.is_main:
        out.root.mkdir(parents=True, exist_ok=True)
        lock = out.lock()
        if lock is None:
            busy = (f"another run is writing to {out.root} now; wait for it to finish (then this command "
                    f"resumes what is left), or choose another -i")
    if any(ctx.all_gather(busy)):     # on every rank (also the barrier before anyone writes)
        raise InputError(busy or f"another run is writing to {out.root} now")
    try:
        if ctx.is_main:
            if args.overwrite:
                out.clear()
            out.remove_stale_temporaries()
            atomic_write_json(out.run_json, {"fingerprint": plan.fingerprint, "settings": plan.settings,
                                             "checkpoint": model_path, "checkpoint_id": model_id,
                                             "command": "python main.py " + shlex.join(plan.argv)})
        ctx.barrier()
        if mine:
            _restore_all(plan, eps_model, mine, earlier_psnr if ctx.is_main else [], len(pending))
        written = [name for names in ctx.all_gather([it.name for it in mine]) for name in names]
        if not ctx.is_main:
            return None
        results = finalize(plan, model_path, fid=not args.no_fid)
        missing = sorted(set(written) - {r["name"] for r in results["images"]})
        if missing:
            LOG.warning(f"warning: {len(missing)} image(s) restored by other ranks are not visible here "
                        f"(e.g. {missing[0]}); the output folder must be shared by all nodes")
        LOG.info(comparison_table(results["summary"]))
        return results
    finally:
        if lock is not None:
            lock.release()


def _check_same_checkpoint(previous: Optional[dict], done: dict, model_path: str) -> str:
    """The loaded checkpoint's content id; refuses to add images restored by other weights
    (a retrained or replaced file at the same path) to finished ones."""
    from guided_diffusion.checkpoints import checkpoint_id

    model_id = checkpoint_id(model_path)
    before = (previous or {}).get("checkpoint_id")
    if done and before and before != model_id:
        raise InputError(f"the checkpoint {model_path} is not the one that restored the {len(done)} finished "
                         f"image(s) in this folder (its content changed since); add --overwrite to restore them "
                         f"all with it, or choose another -i")
    return model_id


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
    lp = metrics.LPIPSMetric(None if args.lpips_net == "none" else args.lpips_net, device, warn=_warn)
    class_cond = bool((plan.config.get("model", {}) or {}).get("class_cond", False))
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
            labels = None
            if class_cond:  # every image has a label (checked while planning)
                labels = torch.tensor([it.label for it in batch], device=device)

            sync_device(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                result = restore(_bind_labels(eps_model, labels), op, y, betas, plan.sampler_cfg,
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
                out.write_record({
                    "name": it.name, "index": it.index, "source": str(it.path), "source_sha": _file_digest(it.path),
                    "label": it.label,
                    "seed": seed_for(args.seed, it.index), **scores[i], "non_finite": non_finite(scores[i]),
                    "nfe": int(result.nfe),
                    "seconds": seconds, "baseline": base[i],
                    **({} if base_ref is None else {"baseline_reference": base_ref[i]}),
                    "device": str(device), "precision": precision,
                    "batch_size": len(batch), "rank": ctx.rank, "world_size": ctx.world_size,
                    "fingerprint": plan.fingerprint,
                })
                if scores[i]["psnr"] is not None:
                    psnrs.append(scores[i]["psnr"])
            bar.update(len(batch))
            mean = metrics.mean_of(psnrs)
            if mean is not None:
                bar.set_description(f"PSNR: {mean:.2f}")
    finally:
        bar.close()


def run(args, argv: List[str]) -> Optional[Dict]:
    """Plan and execute; under torchrun, as one rank of the process group."""
    ctx = distributed.env_context()
    plan = make_plan(args, argv, device_name=distributed.rank_device(args.device, ctx))
    if not ctx.is_main:
        LOG.setLevel(max(LOG.level, logging.WARNING))  # one voice: rank 0 reports, others only warn
    plan.dist = distributed.setup(ctx, plan.device)
    try:
        return execute(plan)
    finally:
        distributed.teardown(plan.dist)
