"""Config -> network, and the eps(x_t, t) view of a network that samplers use.

`build_model` picks the architecture from `model.type` ("simple": SimpleUNet, the
CelebA-HQ family; "openai": guided-diffusion's UNetModel, the ImageNet family).
`EpsModel` hides what differs between them: the learned-variance channels, class
labels, and the precision the network runs in. It always returns float32 eps.
"""
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from torch import nn

from guided_diffusion._config import cfg_get, cfg_section
from guided_diffusion.openai_unet import UNetModel, unet_from_config
from guided_diffusion.simple_unet import SimpleUNet

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODEL_TYPES = ("simple", "bayesian", "openai")

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def load_config(name_or_path: Union[str, Path]) -> dict:
    """Read a YAML config given as a path or as a file name in configs/ (".yml" optional)."""
    path = Path(name_or_path)
    candidates = [path] if path.exists() else [CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yml"]
    for candidate in candidates:
        if candidate.is_file():
            with open(candidate, "r", encoding="utf-8") as f:
                try:
                    config = yaml.safe_load(f)
                except UnicodeDecodeError:
                    raise ValueError(f"config {candidate} is not a text file; give a YAML config (.yml)") from None
                except yaml.YAMLError as e:
                    where = getattr(e, "problem_mark", None)
                    at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
                    problem = getattr(e, "problem", None) or type(e).__name__
                    raise ValueError(f"config {candidate} is not valid YAML{at}: {problem}; fix the file") from None
            if not isinstance(config, dict):
                raise ValueError(f"config {candidate} must be a YAML mapping, got {type(config).__name__}")
            if not isinstance(config.get("model"), dict):
                raise ValueError(f"config {candidate} has no 'model' section; add one (see configs/demo.yml)")
            return config
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yml")))
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found as a path or in {CONFIG_DIR} "
                            f"(available: {available})")


def build_model(config: Any, device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """The float32 network described by `config` (dict or namespace), with freshly initialised weights.

    `device="meta"` builds shapes only (fast; for checking layouts).
    """
    model_type = cfg_get(cfg_section(config, "model"), "type", "simple")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model.type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    with torch.device(device if device is not None else "cpu"):
        if model_type == "openai":
            return unet_from_config(cfg_section(config, "model"))
        return SimpleUNet(config)


def _as_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be None (from the config) or one of {', '.join(_DTYPES)}, got {dtype!r}")


ATTENTION_KINDS = ("reference", "sdpa")


def set_attention(model: nn.Module, kind: str) -> nn.Module:
    """Choose how the attention blocks compute softmax(q^T k / sqrt(C)) v: "reference" (explicit
    product and float32 softmax, as the original code) or "sdpa" (PyTorch's fused kernel)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention '{kind}' is unknown; choose one of: {', '.join(ATTENTION_KINDS)}")
    for module in model.modules():
        if hasattr(module, "use_sdpa"):
            module.use_sdpa = kind == "sdpa"
    return model


def _output_channels(model: nn.Module) -> Optional[int]:
    """Channels of the network's last convolution (eps, plus the variance ones with learn_sigma)."""
    if isinstance(getattr(model, "conv_out", None), nn.Conv2d):
        return model.conv_out.out_channels
    out = getattr(model, "out_channels", None)
    return int(out) if isinstance(out, int) else None


class EpsModel(nn.Module):
    """eps_model(x, t, y=None) -> (B, C, H, W) float32 noise prediction.

    - learn_sigma models: keeps the first `out_channels` (eps) channels, drops the variance ones;
    - class_cond models: `y` (B,) labels are required; unconditional models refuse them;
    - dtype: None follows the config (float16 body on CUDA when `use_fp16: true`, else float32);
      "fp16"/"bf16" force it. guided-diffusion's UNet gets its body convolutions converted
      (the reference's use_fp16); the simple UNet runs under torch.autocast.
    - speed only (results equal up to float rounding): `channels_last` stores the weights and
      feeds the input in NHWC, which tensor-core convolutions prefer; `compile` runs the
      network through torch.compile (built on the first call, after any precision change;
      `compile_mode` is torch.compile's mode, e.g. "reduce-overhead" for CUDA graphs);
      `attention="sdpa"` runs the attention blocks through F.scaled_dot_product_attention.
    """

    def __init__(self, model: nn.Module, config: Any, dtype: Union[None, str, torch.dtype] = None, *,
                 channels_last: bool = False, compile: bool = False, compile_mode: Optional[str] = None,
                 attention: str = "reference"):
        super().__init__()
        set_attention(model, attention)
        self.attention = attention
        self.compile_mode = compile_mode
        m = cfg_section(config, "model")
        self.model = model
        self.requested_dtype = _as_dtype(dtype)
        self.learn_sigma = bool(cfg_get(m, "learn_sigma", False))
        self.class_cond = bool(cfg_get(m, "class_cond", False))
        self.use_fp16 = bool(cfg_get(m, "use_fp16", False))
        self.eps_channels = int(cfg_get(m, "out_channels", cfg_get(m, "out_ch", 3)))
        expected, actual = self.eps_channels * (2 if self.learn_sigma else 1), _output_channels(model)
        if actual is not None and actual != expected:
            raise ValueError(f"the config says {self.eps_channels} eps channels with learn_sigma "
                             f"{self.learn_sigma}, i.e. {expected} network outputs, but this network has {actual}; "
                             f"fix model.learn_sigma / model.out_channels")
        if self.requested_dtype is not None:
            self._prepare_body(self.requested_dtype)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.compile = bool(compile)
        # kept out of nn.Module's registry so that state_dict() holds each weight once
        object.__setattr__(self, "_compiled", None)

    def _network(self) -> nn.Module:
        """The module to call: the network itself, or its torch.compile'd version."""
        if not self.compile:
            return self.model
        if self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.model, mode=self.compile_mode))
        return self._compiled

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The precision used on `device`."""
        if self.requested_dtype is not None:
            return self.requested_dtype
        return torch.float16 if self.use_fp16 and device.type == "cuda" else torch.float32

    def _prepare_body(self, dtype: torch.dtype) -> None:
        # Converting is one-way (float32 -> half loses bits), so only ever convert a float32 body,
        # and refuse to run a body that is already in another precision than the one asked for.
        if not isinstance(self.model, UNetModel) or self.model.body_dtype == dtype:
            return
        if self.model.body_dtype != torch.float32:
            raise ValueError(f"this network's body is already {self.model.body_dtype} (converted for another "
                             f"precision or device); build a fresh network to run it in {dtype}")
        self.model.convert_body(dtype)

    def forward(self, x: torch.Tensor, t: Union[int, float, torch.Tensor],
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.class_cond and y is None:
            raise ValueError("this model is class-conditional: pass labels y of shape (B,)")
        if not self.class_cond and y is not None:
            raise ValueError("this model is unconditional: y (class labels) must be None")
        x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        elif tuple(t.shape) != (x.shape[0],):
            raise ValueError(f"t must be a number or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if y is not None and (not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex()
                              or tuple(y.shape) != (x.shape[0],)):
            raise ValueError(f"y (class labels) must be an integer tensor of shape ({x.shape[0]},), got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
                             f"{' ' + str(y.dtype) if isinstance(y, torch.Tensor) else ''}")
        dtype = self.compute_dtype(x.device)
        if isinstance(self.model, UNetModel):
            self._prepare_body(dtype)
            out = self._network()(x, t, y.to(x.device) if y is not None else None)
        elif dtype == torch.float32:
            out = self._network()(x, t)
        else:
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                out = self._network()(x, t)
        out = out.float()
        if self.learn_sigma:
            out = out[:, : self.eps_channels]
        return out.contiguous() if self.channels_last else out
