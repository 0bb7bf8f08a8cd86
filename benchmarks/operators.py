"""Operator speed: construction time and one A^+(A x) per degradation.

Compares against the reference implementation's figures quoted in issue 2
(2-core CPU): its inpainting operator takes 5.8 s to construct at 256 x 256 (a
Python loop) and its block-CS A^+(A x) takes 64 ms per call. Targets: every
construction under 0.1 s, block CS A^+(A x) at least 5x faster than 64 ms.

    python benchmarks/operators.py [--size 256] [--batch 1] [--device cpu] [--repeat 5]

Prints a Markdown table; times are medians over --repeat runs (after one warm-up).
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

REFERENCE_MS = {"inpainting": ("construction", 5800.0), "cs_blockbased": ("A^+(A x)", 64.0)}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat):
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    where = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else platform.processor() or "cpu"
    print(f"# operators at {args.size}x{args.size}, batch {args.batch}, {args.device} ({where}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| degradation | m | construction (ms) | A^+(A x) (ms) | reference |")
    print("|---|---:|---:|---:|---|")
    for deg in DEGRADATIONS:
        build = lambda: build_operator(deg, args.size, 3, device=args.device)  # noqa: E731
        t_build, op = timed(build, args.device, args.repeat)
        t_apply, _ = timed(lambda: op.A_pinv(op.A(x)), args.device, args.repeat)
        ref = ""
        if deg in REFERENCE_MS:
            what, ms = REFERENCE_MS[deg]
            mine = t_build if what == "construction" else t_apply
            ref = f"{what}: {ms:.0f} ms ({ms / (1000 * mine):.0f}x faster)"
        print(f"| {deg} | {op.num_measurements} | {1000 * t_build:.1f} | {1000 * t_apply:.2f} | {ref} |")


if __name__ == "__main__":
    main()
