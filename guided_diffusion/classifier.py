"""guided-diffusion's noisy-image classifier (EncoderUNetModel), for classifier guidance.

The encoder half of the ImageNet UNet (same blocks, imported from openai_unet) followed
by a pooling head: "attention" (CLIP-style attention pooling: the mean token attends to
all positions; the head of the public `256x256_classifier.pt`) or "adaptive" (global
average pooling and a 1x1 conv). Parameter names follow guided-diffusion, so the
public checkpoint loads with strict=True.

`build_classifier(section)` reads a config's `classifier` section with the reference's
`imagenet_256_cc.yml` keys (guided-diffusion's create_classifier arguments);
`load_classifier` builds, loads the weights and, like the reference, converts the body
to float16 after loading when `classifier_use_fp16` is true and the device is CUDA.
"""
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from guided_diffusion._config import cfg_get
from guided_diffusion.fp16 import ConvertibleBody
from guided_diffusion.openai_unet import (DEFAULT_CHANNEL_MULT, NUM_CLASSES, AttentionBlock, Downsample,
                                          QKVAttention, ResBlock, TimestepEmbedSequential, normalization,
                                          timestep_embedding, zero_module)

POOLS = ("attention", "adaptive")
# create_classifier fixes the head width of every attention block (and of the pool) at 64 channels
CLASSIFIER_HEAD_CHANNELS = 64


class AttentionPool2d(nn.Module):
    """Attention pooling: a (mean) token is prepended, positional embeddings added, and the
    output is that token after one multi-head attention layer (q/k/v split first, then heads)."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_channels: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"channels {channels} are not divisible by num_head_channels {head_channels}")
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.attention = QKVAttention(channels // head_channels)
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h * w != self.spatial ** 2:
            raise ValueError(f"the attention pool was built for {self.spatial}x{self.spatial} features, got {h}x{w}; "
                             f"give the classifier images of its image_size")
        tokens = x.reshape(b, c, h * w)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = tokens + self.positional_embedding[None].to(tokens.dtype)
        return self.c_proj(self.attention(self.qkv_proj(tokens)))[:, :, 0]


class EncoderUNetModel(ConvertibleBody, nn.Module):
    """Timestep-conditioned encoder + pool -> (B, out_channels) logits.

    `attention_resolutions` are downsampling factors (as in UNetModel); the keyword names
    are guided-diffusion's EncoderUNetModel constructor arguments."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive",
                 dims: int = 2):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"classifier pool {pool!r} is not supported; choose one of: {', '.join(POOLS)}")
        if dims != 2:
            raise ValueError(f"only 2-D images are supported (dims=2), got dims={dims}")
        del num_heads_upsample  # an encoder has no upsampling path
        attention_resolutions = set(int(a) for a in attention_resolutions)
        self.image_size = int(image_size)
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.channel_mult = tuple(channel_mult)
        self.pool = pool
        self.use_fp16 = use_fp16     # recorded, as in UNetModel: conversion happens after loading
        self.body_dtype = torch.float32

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out, use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch):
            return AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                                  use_checkpoint=use_checkpoint, use_new_attention_order=use_new_attention_order)

        ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
            if level != len(self.channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                ds *= 2
        self.downsample_factor = ds
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        if pool == "attention":
            if num_head_channels == -1:
                raise ValueError("the attention pool needs num_head_channels (create_classifier uses 64)")
            if self.image_size % ds:
                raise ValueError(f"image_size {image_size} must be divisible by the downsampling factor {ds}")
            head = AttentionPool2d(self.image_size // ds, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), head)
        else:
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())

    def _body_parts(self):
        """What convert_body casts: the torso's convolutions (input and middle blocks); time embedding,
        norms and the pooling head stay float32, as guided-diffusion's convert_to_fp16 does."""
        return (self.input_blocks, self.middle_block)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.pool == "attention" and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this classifier takes {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x.shape[2:])}; resize or crop x to the classifier's image_size")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        h = x.to(self.body_dtype)
        for module in self.input_blocks:
            h = module(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.to(x.dtype))


def _parse_resolutions(value: Any) -> tuple:
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    try:
        return tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"classifier.classifier_attention_resolutions must be comma-separated integers, "
                         f"got {value!r}") from None


def build_classifier(section: Any, device: Optional[Union[str, torch.device]] = None) -> EncoderUNetModel:
    """The float32 classifier of a config's `classifier` section (guided-diffusion's create_classifier).

    Keys: image_size, classifier_width, classifier_depth, classifier_attention_resolutions
    (pixels, "32,16,8"), classifier_use_scale_shift_norm, classifier_resblock_updown,
    classifier_pool, classifier_use_fp16; optional classifier_channel_mult ("" = the default
    for the size), classifier_num_head_channels (64) and num_classes (1000), for classifiers
    other than the public one. `device="meta"` builds shapes only.
    """
    if section is None:
        raise ValueError("the config has no 'classifier' section; use a config with one (configs/imagenet_256_cc.yml)")
    image_size = int(cfg_get(section, "image_size"))
    mult = cfg_get(section, "classifier_channel_mult", "")
    if mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"classifier.image_size {image_size} has no default channel_mult; choose one of "
                             f"{sorted(DEFAULT_CHANNEL_MULT)} or set classifier.classifier_channel_mult")
        mult = DEFAULT_CHANNEL_MULT[image_size]
    elif isinstance(mult, str):
        mult = tuple(float(v) if "." in v else int(v) for v in mult.split(",") if v.strip())
    attention_ds = []
    for res in _parse_resolutions(cfg_get(section, "classifier_attention_resolutions", "32,16,8")):
        if res <= 0 or image_size % res:
            raise ValueError(f"classifier.classifier_attention_resolutions entry {res} must divide image_size "
                             f"{image_size}")
        attention_ds.append(image_size // res)
    with torch.device(device if device is not None else "cpu"):
        return EncoderUNetModel(
            image_size=image_size, in_channels=3,
            model_channels=int(cfg_get(section, "classifier_width", 128)),
            out_channels=int(cfg_get(section, "num_classes", NUM_CLASSES)),
            num_res_blocks=int(cfg_get(section, "classifier_depth", 2)),
            attention_resolutions=tuple(attention_ds), channel_mult=tuple(mult),
            use_fp16=bool(cfg_get(section, "classifier_use_fp16", False)),
            num_head_channels=int(cfg_get(section, "classifier_num_head_channels", CLASSIFIER_HEAD_CHANNELS)),
            use_scale_shift_norm=bool(cfg_get(section, "classifier_use_scale_shift_norm", True)),
            resblock_updown=bool(cfg_get(section, "classifier_resblock_updown", True)),
            pool=str(cfg_get(section, "classifier_pool", "attention")),
        )


def classifier_checkpoint_path(config: Any, exp: Union[str, Path] = "exp") -> Path:
    """<exp>/<classifier.checkpoint>, e.g. exp/logs/imagenet/256x256_classifier.pt."""
    section = cfg_get(config, "classifier", None)
    rel = cfg_get(section, "checkpoint", None) if section is not None else None
    if not rel:
        raise ValueError("the config has no classifier.checkpoint; add one (see configs/imagenet_256_cc.yml)")
    return Path(exp) / rel


def load_classifier(section: Any, path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    dtype: Optional[torch.dtype] = None) -> EncoderUNetModel:
    """Build, load `path` strictly (torch.load weights_only=True), move to `device`, then convert the
    body: float16 on CUDA when classifier_use_fp16 is true (after loading, as the reference does),
    float32 elsewhere, or `dtype` if given. Returned in eval mode with frozen weights (guidance
    needs gradients with respect to the image only)."""
    from guided_diffusion.checkpoints import load_weights  # local: checkpoints imports models lazily too

    device = torch.device(device)
    model = load_weights(build_classifier(section), path).to(device)
    if dtype is None:
        dtype = torch.float16 if model.use_fp16 and device.type == "cuda" else torch.float32
    if dtype != torch.float32:
        model.convert_body(dtype)
    return model.eval().requires_grad_(False)
