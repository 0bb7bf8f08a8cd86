"""UNetModel against guided-diffusion: fixture outputs (fp32 and fp16 body), real checkpoint layouts, options."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from guided_diffusion.openai_unet import (AttentionBlock, Downsample, ResBlock, Upsample, timestep_embedding,
                                          unet_from_config)
from tests.shared import fixture, shared_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
        "attention_resolutions": "16", "num_heads": 2, "num_head_channels": -1, "learn_sigma": True,
        "use_scale_shift_norm": True, "resblock_updown": True, "dropout": 0.0}


def _randomize(model, seed=0):
    """Give every parameter (including the zero-initialised ones) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p[0].numel(), 1)))
    return model.eval()


@pytest.fixture(scope="module")
def small():
    fx = fixture("model_openai_small.pt")
    model = unet_from_config(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval(), fx


def test_fixture_output_matches_reference(small):
    model, fx = small
    with torch.no_grad():
        out = model(fx["x"], fx["t"])
    assert out.shape == (2, 6, 64, 64)
    assert (out - fx["out"]).abs().max().item() <= 1e-4


def test_fp16_body_matches_reference(small):
    fp32_model, fx = small
    with torch.no_grad():
        out32 = fp32_model(fx["x"], fx["t"])
    model = unet_from_config(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval().convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    # Norms, time embedding and output head stay float32, as in guided-diffusion.
    assert model.middle_block[0].in_layers[0].weight.dtype == torch.float32
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    with torch.no_grad():
        out = model(fx["x"], fx["t"])
    assert out.dtype == torch.float32
    assert (out - fx["out"]).abs().max().item() <= 5e-3
    assert (out - fx["out_fp16"]).abs().max().item() <= 5e-3
    # and it really ran in half precision (a body silently left in float32 would give out32)
    assert (out - out32).abs().max().item() > 1e-5


@pytest.mark.parametrize("name,manifest,count", [
    ("imagenet_256.yml", "manifest_imagenet_256x256_diffusion_uncond.json", 552_814_086),
    ("imagenet_256_cond.yml", "manifest_imagenet_256x256_diffusion_cond.json", 553_838_086),
])
def test_imagenet_configs_match_real_checkpoint_manifests(name, manifest, count):
    expected = json.loads(shared_path("fixtures", manifest).read_text())
    config = yaml.safe_load((CONFIGS / name).read_text())
    with torch.device("meta"):
        model = unet_from_config(config["model"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected["tensors"]) - set(shapes))
    extra = sorted(set(shapes) - set(expected["tensors"]))
    assert not missing and not extra, (missing[:5], extra[:5])
    assert shapes == expected["tensors"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters"] == count


def test_new_attention_order_is_a_permutation_of_legacy():
    # Legacy splits qkv channels as (head, {q,k,v}, c); the new order as ({q,k,v}, head, c).
    heads, ch = 4, 8
    legacy = AttentionBlock(heads * ch, num_heads=heads)
    new = AttentionBlock(heads * ch, num_heads=heads, use_new_attention_order=True)
    _randomize(legacy)
    new.load_state_dict(legacy.state_dict())
    perm = torch.arange(3 * heads * ch).reshape(heads, 3, ch).permute(1, 0, 2).reshape(-1)
    with torch.no_grad():
        new.qkv.weight.copy_(legacy.qkv.weight[perm])
        new.qkv.bias.copy_(legacy.qkv.bias[perm])
    x = torch.randn(2, heads * ch, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = legacy(x), new(x)
        c = AttentionBlock(heads * ch, num_heads=heads, use_new_attention_order=True).eval()
        c.load_state_dict(legacy.state_dict())
        assert (c(x) - a).abs().max() > 1e-3  # without the permutation the orders differ
    assert (a - b).abs().max().item() <= 1e-5


def test_head_count_from_num_head_channels():
    assert AttentionBlock(256, num_heads=4, num_head_channels=64).num_heads == 4
    assert AttentionBlock(512, num_heads=4, num_head_channels=64).num_heads == 8
    assert AttentionBlock(512, num_heads=4).num_heads == 4
    with pytest.raises(ValueError, match="num_head_channels"):
        AttentionBlock(96, num_head_channels=64)
    model = unet_from_config({**TINY, "num_heads": 2, "num_heads_upsample": 4})
    assert model.input_blocks[3][1].attention.n_heads == 2
    assert model.output_blocks[0][1].attention.n_heads == 4


def test_resblock_updown_switch_picks_resampler():
    a = unet_from_config(TINY)
    b = unet_from_config({**TINY, "resblock_updown": False})
    assert isinstance(a.input_blocks[2][0], ResBlock) and a.input_blocks[2][0].updown
    assert isinstance(b.input_blocks[2][0], Downsample) and "input_blocks.2.0.op.weight" in b.state_dict()
    assert isinstance(b.output_blocks[1][-1], Upsample) and "output_blocks.1.2.conv.weight" in b.state_dict()


def test_scale_shift_norm_doubles_embedding_projection():
    a = unet_from_config(TINY)
    b = unet_from_config({**TINY, "use_scale_shift_norm": False})
    assert a.input_blocks[1][0].emb_layers[1].out_features == 2 * b.input_blocks[1][0].emb_layers[1].out_features


def test_class_conditional_reduces_to_unconditional_for_zero_label_row():
    uncond = _randomize(unet_from_config(TINY))
    cond = unet_from_config({**TINY, "class_cond": True}).eval()
    missing, unexpected = cond.load_state_dict(uncond.state_dict(), strict=False)
    assert missing == ["label_emb.weight"] and not unexpected
    with torch.no_grad():
        cond.label_emb.weight.normal_(generator=torch.Generator().manual_seed(3))
        cond.label_emb.weight[7].zero_()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10, 600])
    with torch.no_grad():
        ref = uncond(x, t)
        same = cond(x, t, y=torch.tensor([7, 7]))
        other = cond(x, t, y=torch.tensor([7, 8]))
    assert (ref - same).abs().max().item() <= 1e-5
    assert (ref[1] - other[1]).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        cond(x, t)
    with pytest.raises(ValueError, match="class-conditional"):
        uncond(x, t, y=torch.tensor([1, 2]))


def test_dropout_only_in_training():
    model = _randomize(unet_from_config({**TINY, "dropout": 0.5}))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([100])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))
        model.train()
        torch.manual_seed(0)
        a = model(x, t)
        torch.manual_seed(1)
        b = model(x, t)
    assert (a - b).abs().max() > 1e-4


def test_rectangular_input_and_bad_sizes():
    model = _randomize(unet_from_config(TINY))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 48), torch.tensor([3]))
    assert out.shape == (1, 6, 16, 48)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.zeros(1, 3, 15, 16), torch.tensor([3]))


def test_timestep_embedding_formula():
    emb = timestep_embedding(torch.tensor([0.0, 5.0]), 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    assert torch.allclose(emb[1], torch.cat([torch.cos(5 * freqs), torch.sin(5 * freqs)]), atol=1e-6)


def test_bad_attention_resolution_is_rejected():
    with pytest.raises(ValueError, match="attention_resolutions"):
        unet_from_config({**TINY, "attention_resolutions": "12"})


def test_sdpa_attention_reproduces_the_fixture(small):
    from guided_diffusion.models import set_attention
    from guided_diffusion.openai_unet import _attend

    model, fx = small
    blocks = [m for m in model.modules() if hasattr(m, "use_sdpa")]
    assert blocks and not any(m.use_sdpa for m in blocks)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 16, 50, generator=g) for _ in range(3))
    assert (_attend(q, k, v, sdpa=True) - _attend(q, k, v)).abs().max() <= 1e-5
    set_attention(model, "sdpa")
    try:
        assert all(m.use_sdpa for m in blocks)
        with torch.no_grad():
            out = model(fx["x"], fx["t"])
    finally:
        set_attention(model, "reference")
    assert (out - fx["out"]).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="attention 'flash' is unknown"):
        set_attention(model, "flash")


def test_sdpa_gets_the_inputs_its_fused_gpu_kernels_take(monkeypatch):
    """Flash / memory-efficient attention accept only 4-D (batch, heads, T, C) inputs with unit
    stride along C; anything else silently runs the math kernel (the whole T x T matrix)."""
    from guided_diffusion import layers

    seen = []
    real = layers.F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append([(u.dim(), u.stride(-1)) for u in (q, k, v)])
        return real(q, k, v, *a, **kw)
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 16, 50, generator=g) for _ in range(3))
    out = layers.fused_attention(q, k, v)
    assert seen == [[(4, 1)] * 3] and out.shape == (6, 16, 50)
    ref = torch.einsum("bts,bcs->bct", torch.softmax(torch.einsum("bct,bcs->bts", q, k) / 4, dim=-1), v)
    assert (out - ref).abs().max() <= 1e-5


def test_both_networks_run_on_the_meta_device():
    """Shape checks on 'meta' (no data) go through GroupNorm32, whose float32 context must not
    need autocast there."""
    from guided_diffusion.models import build_model

    cfg = fixture("model_simple_small.pt")["config"]
    for model in (unet_from_config(TINY).to("meta"), build_model(cfg, device="meta")):
        x = torch.empty(2, 3, 64, 64, device="meta")
        out = model(x, torch.zeros(2, device="meta"))
        assert out.device.type == "meta" and out.shape[0] == 2
