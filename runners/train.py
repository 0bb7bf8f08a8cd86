"""Train a DDPM "simple" UNet prior on a folder of images (the demo prior's recipe).

    python -m runners.train --config demo.yml --data exp/datasets/demo_train \
        --out exp/logs/demo --steps 20000 --batch_size 16 --seed 0

Objective: DDPM eps prediction, ||eps - model(sqrt(abar) x0 + sqrt(1-abar) eps, t)||^2
with t uniform, AdamW and an EMA of the weights. The EMA starts from zero and is
divided by its accumulated weight 1 - decay^n when exported (Adam's bias
correction): an EMA started from the initial weights keeps decay^n of the random
init (19% after 1,674 steps at 0.999), which a short run's prior never sheds.
Augmentation: random crops at
random scales (rescaled to the config's image size), horizontal flips and
optionally 90-degree rotations, so the prior is invariant to the transforms that
EquS applies. The training state (`train_state.pt`) is written atomically every
--save_every steps and a run resumes from it; `--export` writes the EMA weights
alone (fp16 by default) as a checkpoint that `main.py` loads through the config.
"""
import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from functions.diffusion import diffuse, make_betas
from runners.cli import OneLineParser
from runners.train_data import CropBank, CropSampler, load_folder
from runners.restoration import resolve_device
from guided_diffusion.models import build_model, load_config


def save_atomic(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
    except RuntimeError as e:   # torch's writer reports a refused or full disk as a RuntimeError
        reason = (str(e).strip().splitlines() or ["write failed"])[0]
        raise OSError(f"cannot write {path}: {reason[-200:]}") from None
    os.replace(tmp, path)


def check_writable(flag: str, folder: Path) -> None:
    """Create the folder and write a file into it now, not after the first --save_every steps."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"{flag} {folder}: cannot write there ({e.strerror or e}); fix its permissions or choose "
                      f"another path") from None


# The flags that decide what a run trains on and how (its samples, their augmentation, the EMA): a
# resumed run must be given the same ones. --lr and --weight_decay may change on resume (they apply
# from there on); --steps may grow (a schedule's --steps is checked on its own).
RUN_FLAGS = ("data", "batch_size", "ema", "min_scale", "rot90", "seed", "crop_bank", "amp", "warmup")


def export_ema(ema_state: dict, path: Path, dtype=torch.float16, norm: float = 1.0, params=()):
    """The EMA weights alone, cast (fp16 halves the file), as a plain state_dict.

    norm: the EMA's accumulated weight (1 - decay^n for an EMA started from zero); the
    entries named in `params` are divided by it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = set(params)
    out = {}
    for k, v in ema_state.items():
        if k in scale:
            v = v.float() / norm
        out[k] = (v.to(dtype) if v.is_floating_point() else v).cpu()
    save_atomic(out, path)


LR_DECAYS = ("none", "cosine")


def learning_rate(step: int, base: float, warmup: int, decay: str, total: int, final: float) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warmup over `warmup`
    steps, then constant or a cosine from `base` down to `final * base` at step total - 1."""
    lr = base * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
    if decay == "cosine":
        progress = min(1.0, step / max(1, total - 1))
        lr *= final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="model config (name in configs/ or a path)")
    p.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--out", required=True, help="folder for train_state.pt and ema.pt")
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=None, help="EMA decay (default: the config's model.ema_rate)")
    p.add_argument("--ema_from", choices=("zero", "init"), default=None,
                   help="zero (default for a new run): the EMA starts from zero and is divided by 1 - decay^n on "
                        "export (no share of the random init); init: it starts from the initial weights, undivided "
                        "(DDPM's and guided-diffusion's EMA, and this project's before 2026-11-27); a resumed run "
                        "keeps its state's kind")
    p.add_argument("--min_scale", type=float, default=0.2, help="smallest crop rescaling factor")
    p.add_argument("--rot90", action="store_true", help="also augment with 90-degree rotations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--save_every", type=int, default=250)
    p.add_argument("--export", default=None, help="also write the EMA weights (fp16) to this path at every save")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warmup over this many steps")
    p.add_argument("--lr_decay", choices=LR_DECAYS, default="none",
                   help="cosine: anneal the learning rate over --steps to --lr_final x --lr (a resumed run "
                        "must keep --steps); none: constant after the warmup")
    p.add_argument("--lr_final", type=float, default=0.05, help="the last step's share of --lr with --lr_decay cosine")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast for the forward pass (fast on GPUs and on CPUs with AMX)")
    p.add_argument("--channels_last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    p.add_argument("--crop_bank", type=int, default=0,
                   help="cut this many crops once, on the device, and draw batches from them "
                        "(0: cut fresh crops every step on the CPU; use ~1e5 on a GPU)")
    p.add_argument("--log_every", type=int, default=25, help="read the loss back to the host every this many steps")
    return p.parse_args(argv)


def check_flags(args) -> None:
    """Refuse impossible values in one line, before anything is loaded or written."""
    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be at least 1")
    for name in ("warmup", "crop_bank"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} {getattr(args, name)}: must be >= 0")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr {args.lr}: must be a positive number")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise ValueError(f"--ema {args.ema}: must be in [0, 1)")
    if not 0 < args.min_scale <= 1:
        raise ValueError(f"--min_scale {args.min_scale}: must be in (0, 1]")
    if args.minutes is not None and not args.minutes >= 0:
        raise ValueError(f"--minutes {args.minutes}: must be >= 0 (0 stops after one step)")
    if args.lr_decay != "none" and not 0 <= args.lr_final <= 1:
        raise ValueError(f"--lr_final {args.lr_final}: must be in [0, 1]")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be at least 1")
    for flag, folder in (("--out", Path(args.out)), ("--export", Path(args.export).parent if args.export else None)):
        if folder is None:
            continue
        probe = folder   # the folder, or its first existing ancestor, must be a folder (found now, not at the first save)
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"{flag} {folder}: {probe} is a file, not a folder; choose another path")


def train(args) -> dict:
    check_flags(args)
    device = resolve_device(args.device)  # the runner's choice and checks of --device
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    size = int(config["data"]["image_size"])
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    if args.channels_last:  # before the EMA copy and the optimiser, so all three share the layout
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_names = [name for name, _ in ema.named_parameters()]
    out = Path(args.out)
    state_path = out / "train_state.pt"

    def cannot_resume(e: Exception) -> ValueError:   # a truncated file, another model's state, a file of another kind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return ValueError(f"{state_path} cannot be resumed with --config {args.config} ({type(e).__name__}: "
                          f"{first[:200]}); use another --out or remove that file")

    state = None
    if state_path.exists():
        # on the CPU: the generators' states must stay CPU byte tensors (a CUDA generator's state
        # is one too); load_state_dict moves the weights and the optimiser's moments to the device
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise cannot_resume(e) from None
    # a resumed run keeps the kind of EMA its state holds (states from before --ema_from: init)
    saved_from = None if state is None else state.get("ema_from", "init")
    if args.ema_from is not None and saved_from is not None and saved_from != args.ema_from:
        raise ValueError(f"--ema_from {args.ema_from}: {state_path} keeps an EMA started from {saved_from}; resume "
                         f"with --ema_from {saved_from} (or without the flag), or start a new --out")
    ema_from = args.ema_from or saved_from or "zero"
    ema_norm = 1.0   # the EMA's accumulated weight: 1 for an EMA that starts from the initial weights
    if ema_from == "zero":
        with torch.no_grad():
            for p in ema.parameters():   # an EMA from zero, divided by its weight on export (see the docstring)
                p.zero_()
        ema_norm = 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    decay = args.ema if args.ema is not None else float(config["model"].get("ema_rate", 0.999))
    abar = (1 - make_betas(config["diffusion"])).cumprod(0).to(device)
    _, images = load_folder(args.data)
    crops = CropSampler(images, size, args.min_scale, args.rot90, torch.Generator().manual_seed(args.seed))
    g_noise = torch.Generator(device=device).manual_seed(args.seed + 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    check_writable("--out", out)
    if args.export:
        check_writable("--export", Path(args.export).parent)
    run_flags = {k: getattr(args, k) for k in RUN_FLAGS}
    run_flags.update(data=str(Path(args.data).resolve()), ema=decay)
    step, losses = 0, []
    if state is not None and state.get("run_flags"):
        changed = [f"--{k} {state['run_flags'][k]} (now {run_flags[k]})" for k in RUN_FLAGS
                   if k in state["run_flags"] and state["run_flags"][k] != run_flags[k]]
        if changed:
            raise ValueError(f"{state_path} was trained with {', '.join(changed)}; resume with the same flags, "
                             f"or start a new --out")
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            step, losses = int(state["step"]), list(state["losses"])
            # states written before the EMA could start from zero hold an EMA of weight 1 (init included)
            ema_norm = float(state.get("ema_norm", 1.0))
        except Exception as e:  # noqa: BLE001
            raise cannot_resume(e) from None
        schedule = state.get("lr_schedule", "none")
        if args.lr_decay != "none" or schedule != "none":
            if schedule != f"{args.lr_decay} over {args.steps}":
                raise ValueError(f"--lr_decay {args.lr_decay} --steps {args.steps}: {state_path} was trained with "
                                 f"the learning-rate schedule '{schedule}'; resume with the same --lr_decay and "
                                 f"--steps, or start a new --out")
        crops.g.set_state(state["crop_rng"])
        g_noise.set_state(state["noise_rng"])
        if "torch_rng" in state:   # the global generators, which dropout draws from
            torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        for group in opt.param_groups:   # the flags of this run, not the saved ones (a schedule resets lr)
            group["lr"], group["weight_decay"] = args.lr, args.weight_decay
        print(f"resumed from {state_path} at step {step}", file=sys.stderr)
    bank = None
    if args.crop_bank:
        # its own generator, so that a resumed run rebuilds the same bank
        bank_sampler = CropSampler([im.to(device) for im in images], size, args.min_scale, False,
                                   torch.Generator().manual_seed(args.seed + 2))
        bank = CropBank(bank_sampler, args.crop_bank, device, rot90=args.rot90)
    lr_schedule = "none" if args.lr_decay == "none" else f"{args.lr_decay} over {args.steps}"
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    pending = []  # per-step losses still on the device

    def save():
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "ema_norm": ema_norm,
                     "ema_from": ema_from,
                     "opt": opt.state_dict(), "step": step, "losses": losses, "crop_rng": crops.g.get_state(),
                     "noise_rng": g_noise.get_state().cpu(), "torch_rng": torch.get_rng_state(),
                     **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                     "lr_schedule": lr_schedule, "run_flags": run_flags}, state_path)
        export_ema(ema.state_dict(), out / "ema.pt", norm=ema_norm, params=ema_names)
        if args.export:
            export_ema(ema.state_dict(), Path(args.export), norm=ema_norm, params=ema_names)

    start = time.monotonic()
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    running = None
    model.train()
    def flush():
        nonlocal running
        if pending:
            for value in torch.stack(pending).tolist():
                losses.append(value)
                running = value if running is None else 0.98 * running + 0.02 * value
            pending.clear()
            bar.set_postfix(loss=f"{running:.4f}")

    try:
        while step < args.steps:
            x0 = bank.sample(args.batch_size, g_noise) if bank is not None else crops.sample(args.batch_size).to(device)
            t = torch.randint(0, abar.numel(), (x0.shape[0],), generator=g_noise, device=device)
            eps = torch.randn(x0.shape, generator=g_noise, device=device)
            x_t = diffuse(x0, abar[t].view(-1, 1, 1, 1), eps)
            if args.channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with autocast:
                pred = model(x_t, t.float())
            loss = (pred.float() - eps).square().mean()
            if args.warmup or args.lr_decay != "none":
                lr = learning_rate(step, args.lr, args.warmup, args.lr_decay, args.steps, args.lr_final)
                for group in opt.param_groups:
                    group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, model_params, 1 - decay)
            ema_norm = decay * ema_norm + (1 - decay)
            step += 1
            pending.append(loss.detach())
            bar.update(1)
            if len(pending) >= args.log_every:
                flush()
            if step % args.save_every == 0 and step < args.steps:
                flush()
                save()
            if args.minutes is not None and (time.monotonic() - start) >= 60 * args.minutes:
                break
    except KeyboardInterrupt:
        flush()
        bar.close()
        save()          # atomic: a second Ctrl-C here leaves the previous state whole
        raise Interrupted(step, state_path) from None
    flush()
    bar.close()
    save()
    return {"step": step, "losses": losses, "state": str(state_path), "ema": str(out / "ema.pt")}


class Interrupted(Exception):
    """Ctrl-C during training, after the state was saved."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted at step {step}: saved {path}; rerun the same command to resume")


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:   # OSError: a full disk, no permission (FileNotFoundError is one)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
