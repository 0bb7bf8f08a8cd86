"""Cost of classifier guidance: seconds per sampling step and peak memory, with and without it.

Compares a DDNM run (4x average-pooling SR, eta 0.85) of a class-conditional guided-diffusion
UNet alone against the same run with GuidedEps (the noisy-image classifier's gradient, one
forward + backward per step), with random weights (no checkpoint needed):
- `--size 64`: the fixture-sized networks (UNet width 32, classifier width 32, 64x64);
- `--size 256`: the real architectures of configs/imagenet_256_cc.yml (554M + 54M parameters),
  with the fp16 bodies on CUDA as that config asks.
Peak memory is torch.cuda.max_memory_allocated on CUDA, and on Linux CPUs the process's peak
resident memory (VmHWM, reset before each run) above what it held before the run. Prints a
markdown table; not a test.

    python benchmarks/guidance.py                        # CPU, 64x64, batch 1
    python benchmarks/guidance.py --device cuda --size 256 --batch 8
"""
import argparse
import platform
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.diffusion import make_betas  # noqa: E402
from functions.guidance import GuidedEps  # noqa: E402
from functions.noise import PerImageNoise  # noqa: E402
from functions.operators import build_operator  # noqa: E402
from functions.samplers import SamplerConfig, restore  # noqa: E402
from guided_diffusion.classifier import build_classifier  # noqa: E402
from guided_diffusion.models import EpsModel, build_model, load_config  # noqa: E402

SMALL_MODEL = {"type": "openai", "image_size": 64, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2,2",
               "learn_sigma": True, "class_cond": True, "attention_resolutions": "8,4", "num_heads": 4,
               "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True, "use_fp16": False}
SMALL_CLASSIFIER = {"image_size": 64, "classifier_width": 32, "classifier_depth": 1,
                    "classifier_attention_resolutions": "16,8", "classifier_channel_mult": "1,2,2,2",
                    "classifier_num_head_channels": 16, "classifier_pool": "attention", "classifier_use_fp16": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak bytes above the starting point during a `with` block (CUDA allocator, or Linux VmHWM)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    @staticmethod
    def _status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")     # resets VmHWM to the current RSS
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        elif Path("/proc/self/clear_refs").exists():
            self.peak = self._status("VmHWM") - self.start


def networks(size: int, device: torch.device):
    if size == 64:
        config, section = {"model": SMALL_MODEL}, SMALL_CLASSIFIER
    elif size == 256:
        config = load_config("imagenet_256_cc")
        section = config["classifier"]
    else:
        raise ValueError(f"--size must be 64 (fixture-sized networks) or 256 (the real ones), got {size}")
    unet = build_model(config).to(device).eval().requires_grad_(False)
    eps_model = EpsModel(unet, config)            # fp16 body on CUDA when the config says use_fp16
    classifier = build_classifier(section).to(device).eval().requires_grad_(False)
    if classifier.use_fp16 and device.type == "cuda":
        classifier.convert_to_fp16()
    return eps_model, classifier


def run(eps_model, classifier, betas, size, batch, steps, device, guided: bool):
    labels = torch.arange(batch, device=device) * 7 % 1000
    bound = lambda x, t: eps_model(x, t, labels.repeat(x.shape[0] // batch))   # noqa: E731
    model = GuidedEps(bound, classifier, betas, 1.0, labels=labels) if guided else bound
    op = build_operator("sr_averagepooling", image_size=size, deg_scale=4, device=device)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    y = op.A(x)
    cfg = SamplerConfig(eta=0.85, steps=steps)
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        restore(model, op, y, betas, cfg, noise=PerImageNoise(range(batch), device=device))
        sync(device)
        seconds = time.perf_counter() - start
    return seconds / steps, mem.peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, default=64, help="64: fixture-sized networks; 256: the real ones")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (the median is shown)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    betas = make_betas({"beta_schedule": "linear"})
    eps_model, classifier = networks(args.size, device)
    run(eps_model, classifier, betas, args.size, args.batch, 2, device, True)     # warm-up (kernels, caches)
    rows = {}
    for _ in range(args.repeats):
        for guided in (False, True):   # interleaved, so that load changes hit both alike
            rows.setdefault(guided, []).append(
                run(eps_model, classifier, betas, args.size, args.batch, args.steps, device, guided))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"classifier guidance, DDNM SR x4, {args.size}x{args.size}, batch {args.batch}, {args.steps} steps, "
          f"{device.type} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| run | s / step (median) | peak memory (MiB, max) |")
    print("|---|---|---|")
    base = None
    for guided in (False, True):
        secs = sorted(s for s, _ in rows[guided])[len(rows[guided]) // 2]
        peaks = [m for _, m in rows[guided] if m is not None]
        peak = f"{max(peaks) / 2 ** 20:.1f}" if peaks else "n/a"
        ratio = "" if base is None else f" ({secs / base:.2f}x)"
        base = secs if base is None else base
        print(f"| {'guided (UNet + classifier grad)' if guided else 'unguided (UNet)'} | {secs:.4f}{ratio} | {peak} |")


if __name__ == "__main__":
    main()
