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


class ConvertibleBody:
    """convert_body / convert_to_fp16 / convert_to_fp32 and `dtype` for a network whose body
    (`_body_parts()`: the blocks whose convolutions are cast) can run in half precision while its
    time embedding, norms and head stay float32. The network sets `self.body_dtype` at init."""

    def _body_parts(self):
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the body computes in (float16 after convert_to_fp16)."""
        return self.body_dtype

    def convert_body(self, dtype: torch.dtype):
        """Cast the body's convolutions to `dtype`."""
        for part in self._body_parts():
            part.apply(lambda m: convert_module_to(m, dtype))
        self.body_dtype = dtype
        return self

    def convert_to_fp16(self):
        return self.convert_body(torch.float16)

    def convert_to_fp32(self):
        return self.convert_body(torch.float32)
