"""Half-precision conversion of a UNet body, as guided-diffusion's `use_fp16` does it.

Only convolution weights are cast: norms, linear (time-embedding) layers and the
output head stay in float32, and GroupNorm runs in float32 whatever its input.
This is what the public ImageNet checkpoint was trained and evaluated with.
"""
import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters of a single convolution layer to `dtype` (other layers untouched)."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)


def convert_module_to_f16(module: nn.Module) -> None:
    convert_module_to(module, torch.float16)


def convert_module_to_f32(module: nn.Module) -> None:
    convert_module_to(module, torch.float32)
