"""Images per second of whole restorations with the full-size UNets at 256x256 (random weights).

For the CelebA-HQ "simple" UNet (configs/celeba_hq.yml) and guided-diffusion's ImageNet
UNet (configs/imagenet_256.yml), for DDNM, EquS alternate and EquS average ({id, hflip},
two NFE per step) at each batch size, it times a full `functions.samplers.restore` run
(sr_averagepooling x4 by default) two ways, on the same weights and in the same process:

- this project: the network in --dtype (fp16 on CUDA: guided-diffusion's converted fp16
  body for the ImageNet UNet, autocast for the simple one), cudnn.benchmark, NCHW (--channels_last opt-in),
  optionally torch.compile; the loop keeps x_t on the device and the one sync is at the end;
- a loop written the reference's way: fp32 network, x_t copied to the host and back every
  step and every x_t and x0 prediction kept on the host, abar recomputed from the betas
  each step, EquS average copies evaluated one after the other.

It reports images/s, seconds per image, peak memory (torch.cuda.max_memory_allocated on
CUDA, peak resident memory on CPU), the speed-up over the reference-style loop, the
achieved TFLOP/s and, given the accelerator's peak (--peak_tflops; 990 for an H100's fp16
dense peak is assumed when the device name says H100), how far the time per image is from
the floor FLOPs / peak. On CUDA it also counts host syncs per sampling step (sync debug mode).

    python benchmarks/throughput.py                      # CPU: 2 steps, batch 1 (minutes)
    python benchmarks/throughput.py --device cuda        # 100 steps, batch 1 and 8
    python benchmarks/throughput.py --device cuda --compile --archs imagenet --batches 8
"""
import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.diffusion import make_betas  # noqa: E402
from functions.operators import build_operator  # noqa: E402
from functions.samplers import SamplerConfig, restore  # noqa: E402
from functions.transforms import get_transform  # noqa: E402
from guided_diffusion.models import ATTENTION_KINDS, EpsModel, build_model, load_config  # noqa: E402
from runners.restoration import sync_device  # noqa: E402

ARCHS = {"celeba": ("simple (CelebA-HQ)", "celeba_hq.yml"), "imagenet": ("openai (ImageNet 256)", "imagenet_256.yml")}
METHODS = {"ddnm": ("DDNM", None), "equs_alt": ("EquS alternate", "alternate"), "equs_avg": ("EquS average", "average")}
# GFLOP per forward at 256x256, batch 1 (the figures); used when counting fails
KNOWN_GFLOP = {"celeba_hq.yml": 497.0, "imagenet_256.yml": 2240.0}
H100_FP16_DENSE_TFLOPS = 990.0


# ---------------------------------------------------------------- measuring

def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far (Linux: KiB)


class PeakMemory:
    """Peak memory during the block: CUDA allocator peak, or resident memory polled on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def forward_gflop(config: dict, size: int) -> float:
    """FLOPs of one batch-1 forward, counted on fake tensors (no memory, no compute)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.utils.flop_counter import FlopCounterMode

        with FakeTensorMode(), torch.no_grad():
            model = build_model(config)
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, size, size), torch.zeros(1))
        return counter.get_total_flops() / 1e9
    except Exception:  # counting is a nicety: fall back to the known figure
        return KNOWN_GFLOP.get(config.get("_name"), float("nan"))


# ---------------------------------------------------------------- the two loops

def reference_style_restore(eps_model, op, y, x_T, betas, steps, eta, equs, device):
    """The official loop's habits (fp32 network expected), for comparison only.

    x_t goes to the host after every step and comes back for the next; every x_t and x0
    prediction is kept on the host; abar is recomputed from the betas every step; EquS
    average evaluates its copies one after the other. Same maths as DDNM / EquS.
    """
    flip = get_transform("hflip")
    b = betas.to(device)
    n, T = x_T.shape[0], betas.numel()
    skip = T // steps
    seq = list(range(0, T, skip))[:steps]
    seq_next = [-1] + seq[:-1]

    def abar(t):
        padded = torch.cat([torch.zeros(1, device=device), b])
        return (1 - padded).cumprod(0).index_select(0, t.long() + 1).view(-1, 1, 1, 1)

    def predict_x0(x, e, a):  # the reference's expression, three passes
        return (x - e * (1 - a).sqrt()) / a.sqrt()

    xs, x0_preds = [x_T.to("cpu", copy=True)], []
    for u, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        t = torch.full((n,), float(i), device=device)
        at, at_next = abar(t), abar(torch.full((n,), float(j), device=device))
        xt = xs[-1].to(device)
        if equs == "alternate" and u % 2 == 0:
            et = eps_model(flip(xt), t)
            x0_t = flip(predict_x0(flip(xt), et, at))
        elif equs == "average":
            et = (eps_model(xt, t) + flip(eps_model(flip(xt), t))) / 2
            x0_t = predict_x0(xt, et, at)
        else:
            et = eps_model(xt, t)
            x0_t = predict_x0(xt, et, at)
        x0_hat = x0_t - op.A_pinv(op.A(x0_t) - y).reshape(x0_t.shape)
        c1 = (1 - at_next).sqrt() * eta
        c2 = (1 - at_next).sqrt() * (1 - eta ** 2) ** 0.5
        xt_next = at_next.sqrt() * x0_hat + c1 * torch.randn_like(x0_t) + c2 * et
        x0_preds.append(x0_t.to("cpu", copy=True))
        xs.append(xt_next.to("cpu", copy=True))
    return xs[-1]


def time_run(fn, device: torch.device):
    """(seconds, peak bytes) of one call, synced before and after."""
    sync_device(device)
    with PeakMemory(device) as mem, torch.inference_mode():
        start = time.perf_counter()
        fn()
        sync_device(device)
        seconds = time.perf_counter() - start
    return seconds, mem.peak


def count_syncs(fn, device: torch.device) -> int:
    """Host syncs that CUDA's sync debug mode reports during `fn`."""
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            sync_device(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def syncs_per_step(run, device: torch.device):
    """Syncs per sampling step: the difference between a 3-step and a 1-step run, halved, so
    that one-off set-up copies (the betas table, the generators) do not count (None off CUDA)."""
    if device.type != "cuda":
        return None
    return (count_syncs(lambda: run(3), device) - count_syncs(lambda: run(1), device)) / 2


# ---------------------------------------------------------------- the table

def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:,.0f} MiB"


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 100 on CUDA, 2 on CPU)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8 on CUDA, 1 on CPU)")
    p.add_argument("--archs", default="celeba,imagenet", help="comma-separated: " + ", ".join(ARCHS))
    p.add_argument("--methods", default="ddnm,equs_alt,equs_avg", help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="this project's network precision (default fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--channels_last", action="store_true",
                   help="NHWC layout for this project's network (off by default: on an H100 it was slower for "
                        "both UNets, whose GroupNorms convert it back to NCHW)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (this project's loop only)")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--attention", choices=ATTENTION_KINDS, default="reference",
                   help="this project's attention blocks (sdpa: PyTorch's fused kernel)")
    p.add_argument("--reference", choices=("all", "ddnm", "none"), default="all",
                   help="which methods also run the reference-style loop")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help="untimed steps before each timed run (default 2 on CUDA, 0 elsewhere)")
    p.add_argument("--deg", default="sr_averagepooling")
    p.add_argument("--deg_scale", type=float, default=4)
    p.add_argument("--sigma_y", type=float, default=0.0,
                   help="noise std of y in [0, 1] units as on the command line (> 0: DDNM+ in this project's loop)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="accelerator peak for the floor column (default: 990 on an H100, else none)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    for name, allowed in (("archs", ARCHS), ("methods", METHODS)):
        values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{name} {getattr(args, name)!r}: choose from {', '.join(allowed)}")
        setattr(args, name, values)
    return args


def main(argv=None) -> list:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available here")
    on_cuda = device.type == "cuda"
    steps = args.steps or (100 if on_cuda else 2)
    batches = [int(b) for b in (args.batches or ("1,8" if on_cuda else "1")).split(",")]
    dtype = args.dtype or ("fp16" if on_cuda else "fp32")
    channels_last = args.channels_last
    warmup = args.warmup_steps if args.warmup_steps is not None else (2 if on_cuda else 0)
    peak = args.peak_tflops
    if peak is None and on_cuda and "H100" in torch.cuda.get_device_name(device):
        peak = H100_FP16_DENSE_TFLOPS
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # both loops: the official main.py sets it too

    ours_label = (dtype + (", channels_last" if channels_last else "")
                  + (f", attention {args.attention}" if args.attention != "reference" else "")
                  + (f", compiled ({args.compile_mode or 'default'})" if args.compile else ""))
    if args.sigma_y > 0 and args.reference != "none":
        print("note: the reference-style loop has no DDNM+ noise handling; its rows stay noise-free DDNM", flush=True)
    print(f"# Restoration throughput, {args.size}x{args.size}, {args.deg} x{args.deg_scale:g}"
          f"{f', sigma_y {args.sigma_y:g} (DDNM+)' if args.sigma_y > 0 else ''}, {steps} steps, "
          f"random weights\n\ndevice: {_where(device)}, torch {torch.__version__}; this project: {ours_label}; "
          f"reference-style loop: fp32, x_t to the host and back every step, all x_t and x0 kept"
          + (f"; floor = FLOPs / {peak:g} TFLOP/s" if peak else "") + "\n", flush=True)
    print("| model | method | batch | loop | precision | NFE / image | s / image | images / s | peak memory | "
          "speed-up vs reference | TFLOP/s | x floor |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)

    rows, betas = [], make_betas({})
    gen = torch.Generator().manual_seed(0)
    op = build_operator(args.deg, image_size=args.size, channels=3, deg_scale=args.deg_scale, device=device,
                        dtype=torch.float32)
    for arch in args.archs:
        label, config_name = ARCHS[arch]
        config = load_config(config_name)
        gflop = forward_gflop({**config, "_name": config_name}, args.size)
        torch.manual_seed(0)
        model = build_model(config).to(device).eval().requires_grad_(False)
        data = {b: (torch.rand(b, 3, args.size, args.size, generator=gen) * 2 - 1).to(device) for b in batches}
        ys = {b: op.A(x) for b, x in data.items()}
        if not warmup:  # one untimed fp32 forward per batch size, so that neither loop pays the first-call costs
            with torch.no_grad():
                for b, x in data.items():
                    model(x, torch.full((b,), 500.0, device=device))
            sync_device(device)

        def emit(method, batch, loop, precision, nfe, seconds, mem, ref_seconds=None, syncs=None):
            per_image = seconds / batch
            tflops = gflop * nfe * batch / seconds / 1e3
            floor = gflop * nfe / (peak * 1e3) if peak else None
            speedup = f"{ref_seconds / seconds:.2f}x" if ref_seconds else ("1.00x" if loop == "reference" else "-")
            name = METHODS[method][0] + (" (DDNM+)" if args.sigma_y > 0 and loop != "reference" else "")
            row = {"model": label, "method": name, "batch": batch, "loop": loop, "precision": precision,
                   "nfe_per_image": nfe, "seconds_per_image": per_image, "images_per_s": batch / seconds,
                   "peak_memory_bytes": mem, "speedup_vs_reference": (ref_seconds / seconds) if ref_seconds else None,
                   "tflops": tflops, "x_floor": per_image / floor if floor else None, "host_syncs_per_step": syncs,
                   "steps": steps, "device": _where(device), "gflop_per_forward": gflop}
            rows.append(row)
            if args.json:  # after every row, so that a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
            print(f"| {label} | {row['method']} | {batch} | {loop} | {precision} | {nfe} | {per_image:.3f} | "
                  f"{batch / seconds:.3f} | {_mib(mem)} | {speedup} | {tflops:.2f} | "
                  f"{'-' if floor is None else f'{per_image / floor:.2f}'} |", flush=True)

        # reference-style first: this project's fp16 body conversion is one-way
        ref_times = {}
        ref_eps = EpsModel(model, config, dtype="fp32")
        for method in args.methods:
            if args.reference == "none" or (args.reference == "ddnm" and method != "ddnm"):
                continue
            equs = METHODS[method][1]
            for b in batches:
                x_T = torch.randn(b, 3, args.size, args.size, generator=gen).to(device)
                if warmup:
                    time_run(lambda: reference_style_restore(ref_eps, op, ys[b], x_T, betas, warmup, 0.85, equs,
                                                             device), device)
                sec, mem = time_run(lambda: reference_style_restore(ref_eps, op, ys[b], x_T, betas, steps, 0.85,
                                                                    equs, device), device)
                ref_times[method, b] = sec
                emit(method, b, "reference", "fp32", steps * (2 if equs == "average" else 1), sec, mem)
        del ref_eps

        eps = EpsModel(model, config, dtype=dtype, channels_last=channels_last, compile=args.compile,
                       compile_mode=args.compile_mode, attention=args.attention)
        for method in args.methods:
            equs = METHODS[method][1]
            for b in batches:
                seeds = list(range(b))

                def ours(n_steps):
                    cfg = SamplerConfig(steps=n_steps, equs=equs, transform="hflip", eta=0.85,
                                        sigma_y=2.0 * args.sigma_y)
                    return restore(eps, op, ys[b], betas, cfg, seeds=seeds)

                if warmup:
                    time_run(lambda: ours(warmup), device)
                syncs = syncs_per_step(ours, device)
                nfe = {}
                sec, mem = time_run(lambda: nfe.setdefault("n", ours(steps).nfe), device)
                emit(method, b, "this project", ours_label, nfe["n"], sec, mem, ref_times.get((method, b)), syncs)
                if syncs:
                    print(f"warning: {syncs:g} host sync(s) per sampling step ({method}, batch {b})", file=sys.stderr)
        del eps, model, data, ys
        if on_cuda:
            torch.cuda.empty_cache()
    if on_cuda:
        counted = [r["host_syncs_per_step"] for r in rows if r["host_syncs_per_step"] is not None]
        print(f"\nhost syncs per sampling step in this project's loop (CUDA sync debug mode): "
              f"{max(counted, default=0):g}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
