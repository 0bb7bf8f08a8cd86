"""load_config / build_model / EpsModel: dispatch, learned-sigma slicing, labels and precision."""
from pathlib import Path

import pytest
import torch

from guided_diffusion.models import EpsModel, build_model, load_config
from guided_diffusion.openai_unet import UNetModel
from guided_diffusion.simple_unet import SimpleUNet
from tests.shared import fixture

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _openai_small(**overrides):
    fx = fixture("model_openai_small.pt")
    config = {"model": {**fx["config"], "type": "openai", **overrides}}
    model = build_model(config)
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval(), config, fx


def test_load_config_by_name_path_and_stem():
    a = load_config("celeba_hq.yml")
    assert a == load_config("celeba_hq") == load_config(CONFIGS / "celeba_hq.yml")
    assert a["model"]["type"] == "simple" and a["data"]["image_size"] == 256
    assert load_config("imagenet_256")["model"]["checkpoint"] == "logs/imagenet/256x256_diffusion_uncond.pt"
    with pytest.raises(FileNotFoundError, match="celeba_hq.yml"):
        load_config("no_such_config.yml")


def test_build_model_dispatches_on_type():
    assert isinstance(build_model(load_config("celeba_hq"), device="meta"), SimpleUNet)
    model = build_model(load_config("imagenet_256_cond"), device="meta")
    assert isinstance(model, UNetModel) and model.num_classes == 1000 and model.out_channels == 6
    with pytest.raises(ValueError, match="model.type must be one of"):
        build_model({"model": {"type": "vit"}})


def test_eps_model_openai_takes_first_three_channels():
    model, config, fx = _openai_small()
    eps = EpsModel(model, config)
    with torch.no_grad():
        out = eps(fx["x"], fx["t"].long())
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert (out - fx["out"][:, :3]).abs().max().item() <= 1e-4


def test_eps_model_fp16_body_on_request():
    model, config, fx = _openai_small(use_fp16=True)
    eps = EpsModel(model, config)
    # The config asks for fp16: that means a float16 body on CUDA, float32 on CPU.
    assert eps.compute_dtype(torch.device("cuda")) == torch.float16
    assert eps.compute_dtype(torch.device("cpu")) == torch.float32
    eps16 = EpsModel(model, config, dtype="fp16")
    assert model.body_dtype == torch.float16
    with torch.no_grad():
        out = eps16(fx["x"], fx["t"])
    assert out.dtype == torch.float32
    assert (out - fx["out_fp16"][:, :3]).abs().max().item() <= 5e-3
    # computed in half precision: not the float32 result (which matches fx["out"] to 1e-4)
    assert (out - fx["out"][:, :3]).abs().max().item() > 1e-5


def test_eps_model_simple_and_bf16_autocast():
    fx = fixture("model_simple_small.pt")
    config = fx["config"]
    model = build_model(config)
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = EpsModel(model, config)(fx["x"], fx["t"])
        out_bf16 = EpsModel(model, config, dtype=torch.bfloat16)(fx["x"], fx["t"])
    assert (out - fx["out"]).abs().max().item() <= 1e-4
    assert out_bf16.dtype == torch.float32
    assert (out_bf16 - fx["out"]).abs().max().item() <= 0.03 * fx["out"].abs().max().item()
    assert (out_bf16 - out).abs().max().item() > 1e-4   # really computed in bf16
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights alone


def test_eps_model_labels_contract():
    config = {"model": {"type": "openai", "image_size": 32, "num_channels": 32, "num_res_blocks": 1,
                        "channel_mult": "1,2", "attention_resolutions": "16", "learn_sigma": True,
                        "class_cond": True}}
    eps = EpsModel(build_model(config).eval(), config)
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert eps(x, 10, y=torch.tensor([1, 2])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="class-conditional"):
        eps(x, 10)
    uncond = {"model": {**config["model"], "class_cond": False}}
    with pytest.raises(ValueError, match="unconditional"):
        EpsModel(build_model(uncond), uncond)(x, 10, y=torch.tensor([1, 2]))


def test_eps_model_refuses_malformed_t_y_and_mismatched_heads():
    config = {"model": {"type": "openai", "image_size": 32, "num_channels": 32, "num_res_blocks": 1,
                        "channel_mult": "1,2", "attention_resolutions": "16", "learn_sigma": True,
                        "class_cond": True}}
    net = build_model(config).eval()
    eps = EpsModel(net, config)
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"t must be a number or have shape \(2,\)"):
            eps(x, torch.zeros(2, 1), y=torch.tensor([1, 2]))
        with pytest.raises(ValueError, match="integer tensor of shape"):
            eps(x, 10, y=torch.tensor([1.0, 2.0]))
        with pytest.raises(ValueError, match="integer tensor of shape"):
            eps(x, 10, y=torch.tensor([1, 2, 3]))
    # learn_sigma: false would hand back all 6 channels (eps and variance) as if they were eps
    wrong = {"model": {**config["model"], "learn_sigma": False}}
    with pytest.raises(ValueError, match="6"):
        EpsModel(net, wrong)


def test_a_body_converted_to_fp16_is_not_run_as_fp32_or_bf16():
    model, config, fx = _openai_small(use_fp16=True)
    with torch.no_grad():
        EpsModel(model, config, dtype="fp16")(fx["x"], fx["t"])
        for other in ("fp32", "bf16"):
            with pytest.raises(ValueError, match="already torch.float16"):
                EpsModel(model, config, dtype=other)(fx["x"], fx["t"])


def test_bad_dtype_rejected():
    config = load_config("celeba_hq")
    with pytest.raises(ValueError, match="dtype must be"):
        EpsModel(torch.nn.Identity(), config, dtype="int8")


def test_upsample_nearest2x_is_interpolate_bit_for_bit_in_both_layouts():
    import torch.nn.functional as F
    from guided_diffusion.layers import upsample_nearest2x

    x = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(upsample_nearest2x(x), ref)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = upsample_nearest2x(x_cl)
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
