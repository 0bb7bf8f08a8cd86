"""SimpleUNet against the reference: fixture outputs, the real checkpoint's layout, and its input contract."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from guided_diffusion.simple_unet import SimpleUNet, timestep_embedding
from tests.shared import fixture, shared_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _namespace(node):
    if isinstance(node, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in node.items()})
    return node


@pytest.fixture(scope="module")
def small():
    fx = fixture("model_simple_small.pt")
    model = SimpleUNet(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval(), fx


def test_fixture_output_matches_reference(small):
    model, fx = small
    with torch.no_grad():
        out = model(fx["x"], fx["t"])
    assert out.shape == fx["out"].shape
    assert (out - fx["out"]).abs().max().item() <= 1e-4


def test_long_and_float_timesteps_agree(small):
    model, fx = small
    with torch.no_grad():
        a = model(fx["x"], fx["t"].long())
        b = model(fx["x"], fx["t"].float())
    assert torch.equal(a, b)


def test_channels_last_matches_fp32(small):
    model, fx = small
    cl = SimpleUNet(fx["config"]).eval()
    cl.load_state_dict(fx["state_dict"])
    cl = cl.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = cl(fx["x"].contiguous(memory_format=torch.channels_last), fx["t"])
    assert (out - fx["out"]).abs().max().item() <= 1e-4


def test_bf16_autocast_cpu_close_to_fp32(small):
    model, fx = small
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fx["x"], fx["t"])
    assert torch.isfinite(out).all()
    err = (out.float() - fx["out"]).abs().max().item()
    # bf16 has an 8-bit mantissa: expect ~1% of the output range, not 1e-4.
    assert err <= 0.03 * fx["out"].abs().max().item(), err
    assert err > 1e-4   # really computed in bf16 (the float32 forward matches to 1e-4)


def test_fully_convolutional_rectangular_input(small):
    model, fx = small
    x = torch.cat([fx["x"], fx["x"].flip(-1)], dim=-1)[:, :, :32, :]  # (2, 3, 32, 128)
    with torch.no_grad():
        out = model(x, fx["t"])
        one = model(x[1:], fx["t"][1:])
    assert out.shape == (2, 3, 32, 128)
    assert torch.isfinite(out).all()
    # Batch elements are independent (GroupNorm is per sample).
    assert (out[1:] - one).abs().max().item() <= 1e-4


def test_input_not_divisible_is_rejected(small):
    model, fx = small
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 48, 64), torch.zeros(1))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 4, 64, 64), torch.zeros(1))


def test_timestep_embedding_formula():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    half = 4
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / (half - 1))
    assert torch.allclose(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    assert torch.allclose(emb[1], torch.cat([torch.sin(3 * freqs), torch.cos(3 * freqs)]), atol=1e-6)


def test_celeba_config_matches_real_checkpoint_manifest():
    manifest = json.loads(shared_path("fixtures", "manifest_celeba_hq_ckpt.json").read_text())
    config = yaml.safe_load((CONFIGS / "celeba_hq.yml").read_text())
    with torch.device("meta"):
        model = SimpleUNet(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(manifest["tensors"]) - set(shapes))
    extra = sorted(set(shapes) - set(manifest["tensors"]))
    assert not missing and not extra, (missing[:5], extra[:5])
    assert shapes == manifest["tensors"]
    n = sum(p.numel() for p in model.parameters())
    assert n == manifest["num_parameters"] == 113_673_219


def test_namespace_config_builds_the_same_model():
    config = yaml.safe_load((CONFIGS / "celeba_hq.yml").read_text())
    with torch.device("meta"):
        a = SimpleUNet(config)
        b = SimpleUNet(_namespace(config))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_attention_placement_follows_image_size():
    config = {"model": {"ch": 32, "out_ch": 3, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16],
                        "dropout": 0.0, "in_channels": 3, "resamp_with_conv": True},
              "data": {"image_size": 32}}
    model = SimpleUNet(config)
    assert len(model.down[0].attn) == 0 and len(model.down[1].attn) == 1
    assert len(model.up[1].attn) == 2 and len(model.up[0].attn) == 0


def test_sdpa_attention_reproduces_the_fixture(small):
    from guided_diffusion.models import EpsModel

    model, fx = small
    with torch.no_grad():
        ref = model(fx["x"], fx["t"])
        eps = EpsModel(model, {"model": {"type": "simple"}}, attention="sdpa")
        try:
            assert any(getattr(m, "use_sdpa", False) for m in model.modules())
            out = eps(fx["x"], fx["t"])
        finally:
            eps.model.apply(lambda m: setattr(m, "use_sdpa", False) if hasattr(m, "use_sdpa") else None)
    assert (out - fx["out"]).abs().max().item() <= 1e-4
    assert (out - ref).abs().max().item() <= 1e-5


def test_fp16_attention_keeps_large_logits_in_range():
    """q^T k over 512 channels can pass fp16's 65504 (then softmax gives NaN): in half precision
    the 1/sqrt(C) scale is applied to q and k before the product, as guided-diffusion does."""
    from guided_diffusion.simple_unet import AttnBlock

    torch.manual_seed(0)
    blk = AttnBlock(512).eval()
    with torch.no_grad():
        blk.q.weight.mul_(80)
        blk.k.weight.mul_(80)
        x = torch.randn(1, 512, 8, 8)
        h = blk.norm(x)
        logits = torch.bmm(blk.q(h).flatten(2).transpose(1, 2), blk.k(h).flatten(2))
        assert logits.abs().max() > 2 * 65504          # the unscaled product leaves fp16's range
        ref = blk(x)
        out = blk.half()(x.half()).float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 5e-2 * ref.abs().max()   # logits in the thousands: fp16 steps of 4
