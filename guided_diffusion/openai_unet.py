"""guided-diffusion's UNetModel (Dhariwal & Nichol), the ImageNet checkpoint family.

Parameter names follow guided-diffusion exactly (time_embed.0, input_blocks.i.j.in_layers.2,
middle_block.1.qkv, out.2, label_emb, ...) so that `256x256_diffusion_uncond.pt` and
`256x256_diffusion.pt` load with strict=True. Options: learn_sigma, resblock_updown,
use_scale_shift_norm, num_heads / num_head_channels / num_heads_upsample, attention
resolutions, class conditioning, new/legacy attention order, dropout, fp16/bf16 body.
"""
import math
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from guided_diffusion._config import cfg_get
from guided_diffusion.fp16 import ConvertibleBody
from guided_diffusion.layers import autocast_off, fused_attention, upsample_nearest2x

NUM_CLASSES = 1000

# guided-diffusion's default channel multipliers per image size (used when channel_mult is "").
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """guided-diffusion's embedding: [cos | sin] with frequencies max_period**(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm in float32 (even inside an fp16 body or under autocast), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_off(x.device.type):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (guided-diffusion's choice for residual output convs)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that passes the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_nearest2x(x)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding, optionally resampling (resblock_updown)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, use_checkpoint: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Attention on a (B, 3*H*C, T) qkv tensor split into heads first, then q/k/v (checkpoint order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.use_sdpa = False  # set by guided_diffusion.models.set_attention

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        return _attend(q, k, v, self.use_sdpa).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """Attention on a (B, 3*H*C, T) qkv tensor split into q/k/v first, then heads (use_new_attention_order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.use_sdpa = False  # set by guided_diffusion.models.set_attention

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = (u.reshape(bs * self.n_heads, ch, length) for u in qkv.chunk(3, dim=1))
        return _attend(q, k, v, self.use_sdpa).reshape(bs, -1, length)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sdpa: bool = False) -> torch.Tensor:
    """softmax(q^T k / sqrt(C)) applied to v; the scale is split over q and k to keep fp16 in range.

    q, k, v: (B * heads, C, T). With `sdpa`, PyTorch's fused scaled_dot_product_attention
    (flash / memory-efficient kernels on GPUs; the same function up to float rounding)."""
    if sdpa:
        return fused_attention(q, k, v)
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(nn.Module):
    """Spatial self-attention over all positions (1-D convs for qkv and output projection)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels != 0:
                raise ValueError(f"channels {channels} is not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads != 0:
            raise ValueError(f"channels {channels} is not divisible by num_heads {self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class UNetModel(ConvertibleBody, nn.Module):
    """guided-diffusion's UNet. `attention_resolutions` are downsampling factors (image_size // res)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: Optional[int] = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = set(int(a) for a in attention_resolutions)
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.body_dtype = torch.float32

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_checkpoint=use_checkpoint, use_new_attention_order=use_new_attention_order)

        ch = input_ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
        self.downsample_factor = ds

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = input_block_chans.pop()
                layers = [res(ch + skip, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))
        # As in guided-diffusion, use_fp16 does not convert at construction (weights are loaded in
        # float32 first); it records the intended precision for convert_to_fp16 / EpsModel.
        self.use_fp16 = use_fp16

    def _body_parts(self):
        """What convert_body casts: the encoder, middle and decoder blocks (time embedding, norms and the
        output head stay float32)."""
        return (self.input_blocks, self.middle_block, self.output_blocks)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x height and width must be divisible by {f}, got {tuple(x.shape[2:])}")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("y (class labels) must be given if and only if the model is class-conditional")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)

        hs = []
        h = x.to(self.body_dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


def _parse_ints(value: Any, name: str) -> tuple:
    if isinstance(value, str):
        try:
            return tuple(float(v) if "." in v else int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"model.{name} must be comma-separated numbers, got {value!r}") from None
    if isinstance(value, (int, float)):
        return (value,)
    return tuple(value)


def unet_from_config(model_cfg: Any) -> UNetModel:
    """Build the UNet from a config's `model` section with guided-diffusion's create_model keys.

    Keys: image_size, num_channels, num_res_blocks, channel_mult ("" = default for the size),
    learn_sigma, class_cond, attention_resolutions ("32,16,8" in pixels), num_heads,
    num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown,
    use_fp16, use_new_attention_order, use_checkpoint, in_channels / out_channels (default 3).
    """
    image_size = int(cfg_get(model_cfg, "image_size"))
    channel_mult = cfg_get(model_cfg, "channel_mult", "")
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"model.image_size {image_size} has no default channel_mult; "
                             f"choose one of {sorted(DEFAULT_CHANNEL_MULT)} or set model.channel_mult")
        channel_mult = DEFAULT_CHANNEL_MULT[image_size]
    else:
        channel_mult = _parse_ints(channel_mult, "channel_mult")
    attention_ds = []
    for res in _parse_ints(cfg_get(model_cfg, "attention_resolutions", "16"), "attention_resolutions"):
        if int(res) <= 0 or image_size % int(res):
            raise ValueError(f"model.attention_resolutions entry {res} must divide image_size {image_size}")
        attention_ds.append(image_size // int(res))
    learn_sigma = bool(cfg_get(model_cfg, "learn_sigma", False))
    out_channels = int(cfg_get(model_cfg, "out_channels", 3))
    return UNetModel(
        image_size=image_size,
        in_channels=int(cfg_get(model_cfg, "in_channels", 3)),
        model_channels=int(cfg_get(model_cfg, "num_channels")),
        out_channels=out_channels * 2 if learn_sigma else out_channels,
        num_res_blocks=int(cfg_get(model_cfg, "num_res_blocks")),
        attention_resolutions=tuple(attention_ds),
        dropout=float(cfg_get(model_cfg, "dropout", 0.0)),
        channel_mult=channel_mult,
        # create_model ignores resamp_with_conv; only resblock_updown=False would use it.
        conv_resample=bool(cfg_get(model_cfg, "conv_resample", True)),
        num_classes=NUM_CLASSES if cfg_get(model_cfg, "class_cond", False) else None,
        use_checkpoint=bool(cfg_get(model_cfg, "use_checkpoint", False)),
        use_fp16=bool(cfg_get(model_cfg, "use_fp16", False)),
        num_heads=int(cfg_get(model_cfg, "num_heads", 1)),
        num_head_channels=int(cfg_get(model_cfg, "num_head_channels", -1)),
        num_heads_upsample=int(cfg_get(model_cfg, "num_heads_upsample", -1)),
        use_scale_shift_norm=bool(cfg_get(model_cfg, "use_scale_shift_norm", False)),
        resblock_updown=bool(cfg_get(model_cfg, "resblock_updown", False)),
        use_new_attention_order=bool(cfg_get(model_cfg, "use_new_attention_order", False)),
    )
