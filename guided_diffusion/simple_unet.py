"""The DDPM "simple" UNet (Ho et al.; as used by SDEdit / DDIM / DDNM for CelebA-HQ).

Module and parameter names follow the reference exactly (temb.dense, down.i.block.j,
mid.block_1, up.i.attn.j, ...) so that SDEdit's `celeba_hq.ckpt` loads with strict=True.
The network is fully convolutional: attention placement is fixed at construction from
`data.image_size`, but any input whose sides are divisible by 2**(len(ch_mult)-1) runs.
"""
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from guided_diffusion._config import cfg_get, cfg_section
from guided_diffusion.layers import autocast_off, fused_attention, upsample_nearest2x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of DDPM: [sin | cos] with frequencies 10000**(-i/(half-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), the reference's nonlinearity, as PyTorch's single fused SiLU kernel."""
    return F.silu(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input dtype (stable under bf16/fp16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_off(x.device.type):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def normalize(channels: int) -> nn.GroupNorm:
    # The reference uses 32 groups and eps=1e-6 (not PyTorch's default 1e-5).
    return GroupNorm32(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_nearest2x(x)
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            # Asymmetric zero padding (right and bottom only), as in the reference.
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float,
                 conv_shortcut: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q, k, v (softmax in float32)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.use_sdpa = False  # set by guided_diffusion.models.set_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        q = self.q(h).reshape(b, c, height * width)
        k = self.k(h).reshape(b, c, height * width)
        v = self.v(h).reshape(b, c, height * width)
        if self.use_sdpa:  # PyTorch's fused attention: the same function up to float rounding
            out = fused_attention(q, k, v).reshape(b, c, height, width)
        else:
            if q.dtype == torch.float16:  # split the scale over q and k: q^T k over 512 channels can pass 65504
                w = torch.bmm(q.transpose(1, 2) * c ** -0.25, k * c ** -0.25)
            else:                         # the reference's expression
                w = torch.bmm(q.transpose(1, 2), k) * (c ** -0.5)  # (b, query, key)
            w = torch.softmax(w.float(), dim=2).to(v.dtype)
            out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, height, width)
        return x + self.proj_out(out)


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,)
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, Sequence):
        return tuple(value)
    raise ValueError(f"model.{name} must be a list of integers, got {value!r}")


class SimpleUNet(nn.Module):
    """DDPM UNet built from a config (nested dict or namespace) with the reference's keys.

    model: ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, dropout, in_channels,
    resamp_with_conv (and type: 'bayesian' adds the reference's `logvar`); data: image_size.
    """

    def __init__(self, config: Any):
        super().__init__()
        m = cfg_section(config, "model")
        ch = int(cfg_get(m, "ch"))
        out_ch = int(cfg_get(m, "out_ch"))
        ch_mult = tuple(int(c) for c in _as_tuple(cfg_get(m, "ch_mult"), "ch_mult"))
        num_res_blocks = int(cfg_get(m, "num_res_blocks"))
        attn_resolutions = tuple(int(r) for r in _as_tuple(cfg_get(m, "attn_resolutions"), "attn_resolutions"))
        dropout = float(cfg_get(m, "dropout", 0.0))
        in_channels = int(cfg_get(m, "in_channels"))
        resamp_with_conv = bool(cfg_get(m, "resamp_with_conv", True))
        resolution = int(cfg_get(cfg_section(config, "data"), "image_size"))
        if ch % 32 != 0 or ch <= 0:
            raise ValueError(f"model.ch must be a positive multiple of 32 (GroupNorm groups), got {ch}")
        if not ch_mult:
            raise ValueError("model.ch_mult must list at least one multiplier")

        if cfg_get(m, "type", "simple") == "bayesian":
            num_timesteps = int(cfg_get(cfg_section(config, "diffusion"), "num_diffusion_timesteps"))
            self.logvar = nn.Parameter(torch.zeros(num_timesteps))

        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])

        self.conv_in = nn.Conv2d(in_channels, ch, 3, stride=1, padding=1)

        curr_res = resolution
        in_ch_mult = (1,) + ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, self.temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, self.temb_ch, dropout)

        ups = []
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(num_res_blocks + 1):
                if i_block == num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)

        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.num_resolutions - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x height and width must be divisible by {factor}, got {tuple(x.shape[2:])}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])

        temb = self.temb.dense[0](timestep_embedding(t, self.ch))
        temb = self.temb.dense[1](swish(temb))

        hs = [self.conv_in(x)]
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](hs[-1], temb)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(down.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)

        return self.conv_out(swish(self.norm_out(h)))
