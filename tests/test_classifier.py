"""guided-diffusion's noisy-image classifier: the real checkpoint's layout, the small fixture's
logits (float32 and fp16 body) and guidance gradient, loading and bad input."""
import json

import pytest
import torch

from guided_diffusion.checkpoints import CheckpointError
from guided_diffusion.classifier import (EncoderUNetModel, build_classifier, classifier_checkpoint_path,
                                         load_classifier)
from guided_diffusion.models import load_config
from tests.shared import one_thread  # noqa: F401  (autouse: one torch thread here)
from tests.shared import fixture, shared_path



# the fixture's EncoderUNetModel arguments, written as a config's classifier section
SMALL_SECTION = {"image_size": 64, "classifier_width": 32, "classifier_depth": 1,
                 "classifier_attention_resolutions": "16,8", "classifier_channel_mult": "1,2,2,2",
                 "classifier_num_head_channels": 16, "classifier_use_scale_shift_norm": True,
                 "classifier_resblock_updown": True, "classifier_pool": "attention", "classifier_use_fp16": False}


@pytest.fixture(scope="module")
def small():
    fx = fixture("classifier_small.pt")
    model = EncoderUNetModel(**fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval(), fx


def test_config_classifier_has_the_public_checkpoints_names_and_shapes():
    manifest = json.loads(shared_path("fixtures", "manifest_imagenet_256x256_classifier.json").read_text())
    section = load_config("imagenet_256_cc")["classifier"]
    for key, value in manifest["create_classifier"].items():
        assert section[key] == value, key
    model = build_classifier(section, device="meta")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["tensors"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 54_096_360


def test_cc_config_keeps_the_conditional_model_and_names_the_classifier_checkpoint(tmp_path):
    cc, cond = load_config("imagenet_256_cc"), load_config("imagenet_256_cond")
    assert cc["model"] == cond["model"] and cc["diffusion"] == cond["diffusion"]
    assert cc["classifier"]["classifier_scale"] == 1.0
    assert classifier_checkpoint_path(cc, tmp_path) == tmp_path / "logs/imagenet/256x256_classifier.pt"
    with pytest.raises(ValueError, match="classifier.checkpoint"):
        classifier_checkpoint_path(cond, tmp_path)


def test_small_classifier_logits_match_reference(small):
    model, fx = small
    with torch.no_grad():
        logits = model(fx["x"], fx["t"])
    assert logits.shape == (2, 1000)
    assert (logits - fx["logits"]).abs().max().item() <= 1e-4


def test_fp16_body_matches_reference():
    fx = fixture("classifier_small.pt")
    model = EncoderUNetModel(**fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval().convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    # time embedding, norms and the attention-pool head stay float32, as in guided-diffusion
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.middle_block[0].in_layers[0].weight.dtype == torch.float32
    assert model.out[2].qkv_proj.weight.dtype == torch.float32
    with torch.no_grad():
        logits = model(fx["x"], fx["t"])
    assert logits.dtype == torch.float32
    assert (logits - fx["logits_fp16"]).abs().max().item() <= 2e-2
    assert (logits - fx["logits"]).abs().max().item() > 0  # the half body really ran


def test_guidance_gradient_matches_cond_fn(small):
    model, fx = small
    x = fx["x"].clone().requires_grad_(True)
    log_probs = torch.log_softmax(model(x, fx["t"]), dim=-1)
    (grad,) = torch.autograd.grad(log_probs[torch.arange(2), fx["classes"]].sum(), x)
    grad = grad * fx["guidance_scale"]
    assert (grad - fx["guidance_grad"]).abs().max().item() <= 1e-4
    assert fx["guidance_grad"].abs().max().item() > 1e-2


def test_load_classifier_strict_and_frozen(small, tmp_path):
    _, fx = small
    path = tmp_path / "small_classifier.pt"
    torch.save(fx["state_dict"], path)
    model = load_classifier(SMALL_SECTION, path)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.dtype == torch.float32   # classifier_use_fp16 false, and float32 on CPU anyway
    with torch.no_grad():
        assert (model(fx["x"], fx["t"]) - fx["logits"]).abs().max().item() <= 1e-4
    half = load_classifier(dict(SMALL_SECTION, classifier_use_fp16=True), path)
    assert half.dtype == torch.float32    # fp16 only on CUDA, as the UNet's EpsModel
    forced = load_classifier(SMALL_SECTION, path, dtype=torch.float16)
    assert forced.input_blocks[0][0].weight.dtype == torch.float16
    with pytest.raises(CheckpointError, match="does not match"):
        load_classifier(dict(SMALL_SECTION, classifier_width=64), path)


@pytest.mark.parametrize("change, message", [
    ({"classifier_pool": "spatial"}, "pool"),
    ({"classifier_attention_resolutions": "48"}, "must divide"),
    ({"classifier_attention_resolutions": "a,b"}, "comma-separated"),
    ({"image_size": 96}, "default channel_mult"),
])
def test_bad_classifier_sections_are_refused(change, message):
    section = dict(SMALL_SECTION, **change)
    if "image_size" in change:
        section.pop("classifier_channel_mult")
    with pytest.raises(ValueError, match=message):
        build_classifier(section, device="meta")
    with pytest.raises(ValueError, match="no 'classifier' section"):
        build_classifier(None)


def test_images_of_another_size_are_refused(small):
    model, fx = small
    with pytest.raises(ValueError, match="64x64"):
        model(fx["x"][:, :, :32, :32], fx["t"])
