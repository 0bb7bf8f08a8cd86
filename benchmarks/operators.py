"""Operator speed: construction time, one A^+(A x) and one null_space(x) (what DDNM's step
runs: x - A^+ A x) per degradation.

Compares against the reference implementation's figures quoted in issue 2
(2-core CPU): its inpainting operator takes 5.8 s to construct at 256 x 256 (a
Python loop) and its block-CS A^+(A x) takes 64 ms per call. Targets: every
construction under 0.1 s, block CS A^+(A x) at least 5x faster than 64 ms.

    python benchmarks/operators.py [--size 256] [--batch 1] [--device cpu] [--repeat 5] [--threads N]

Prints a Markdown table. Construction: the first (cold) build in the process and
the median of --repeat further builds; A^+(A x): median over --repeat calls after
one warm-up. On a shared machine pass --threads 1 to avoid OpenMP contention.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from functions.operators import DEGRADATIONS, build_operator  # noqa: E402
from runners.restoration import sync_device  # noqa: E402

REFERENCE_MS = {"inpainting": ("construction", 5800.0), "cs_blockbased": ("A^+(A x)", 64.0)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def timed(fn, device, repeat):
    """Median time of `repeat` calls and the last result."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        sync_device(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    where = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else cpu_name()
    print(f"# operators at {args.size}x{args.size}, batch {args.batch}, {args.device} ({where}, "
          f"{os.cpu_count()} cores), {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| degradation | m | construction, cold (ms) | construction (ms) | A^+(A x) (ms) | null_space(x) (ms) "
          "| reference |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for deg in DEGRADATIONS:
        build = lambda: build_operator(deg, args.size, 3, device=args.device)  # noqa: E731
        t = time.perf_counter()
        build()
        sync_device(args.device)
        t_cold = time.perf_counter() - t
        t_build, op = timed(build, args.device, args.repeat)
        op.A_pinv(op.A(x))                                            # warm-up
        t_apply, _ = timed(lambda: op.A_pinv(op.A(x)), args.device, args.repeat)
        op.null_space(x)
        t_null, _ = timed(lambda: op.null_space(x), args.device, args.repeat)
        ref = ""
        # the reference's figures are for 256 x 256, batch 1, on a CPU: no ratio at other settings
        comparable = args.size == 256 and args.batch == 1 and torch.device(args.device).type == "cpu"
        if deg in REFERENCE_MS and comparable:
            what, ms = REFERENCE_MS[deg]
            mine = t_build if what == "construction" else t_apply
            ref = f"{what}: {ms:.0f} ms ({ms / (1000 * mine):.0f}x faster)"
        print(f"| {deg} | {op.num_measurements} | {1000 * t_cold:.1f} | {1000 * t_build:.1f} | "
              f"{1000 * t_apply:.2f} | {1000 * t_null:.2f} | {ref} |")


if __name__ == "__main__":
    main()
