"""Which device a run uses, what the network computes in there, and honest clocks on it.

Shared by the restoration runner, the ablation, training and the benchmarks: `--device`
is checked here (one line naming a device that is absent), `--dtype` against the
card, and `sync_device` makes a clock read after GPU work mean something.
"""
from typing import Optional

import torch

from runners.errors import InputError

DTYPES = ("auto", "fp32", "fp16", "bf16")


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


def _check_speed_flags(args, device: torch.device) -> None:
    dtype = getattr(args, "dtype", "auto")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    # bf16 tensor cores from compute capability 8.0 (Ampere); is_bf16_supported() would also accept emulation
    if dtype == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise InputError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         f"use fp16 or fp32")


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
