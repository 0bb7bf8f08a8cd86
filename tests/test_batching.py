"""--batch_size: B images per forward pass, the same per-image outputs as batch 1.

The runner and the sampler make everything that depends on the image (seeds, x_T,
every noise draw, the measurement noise, the order of the records) a function of the
image alone, so batch 3 must give batch 1's PNGs and records bit for bit when the
network itself is batch-invariant. A real batched network is not, in the last float
bits (oneDNN / cuDNN choose other kernels for other batch sizes), so with the real
tiny UNet the outputs agree to float rounding: at most one 8-bit level on a few pixels.
Also here: the sampling loop never reads a tensor back to the host, and the speed
options of EpsModel (channels_last, bf16, torch.compile) keep its results.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from functions.diffusion import make_betas
from functions.operators import build_operator
from functions.samplers import SamplerConfig, restore
from guided_diffusion.models import EpsModel, build_model
from runners import cli, execute
from tests.test_cli import TINY_MODEL
from tests.test_distributed import NAMES, common_args, folder, image_bytes, make_tiny, records, strip

EQUS_NOISY = ["--equs_mode", "average", "--sigma_y", "0.05", "--add_noise"]
TINY_OPENAI = {"type": "openai", "image_size": 32, "in_channels": 3, "out_channels": 3, "num_channels": 32,
               "num_res_blocks": 1, "attention_resolutions": "16", "channel_mult": "1,2", "num_heads": 2,
               "num_head_channels": -1, "learn_sigma": True, "use_scale_shift_norm": True, "resblock_updown": True,
               "use_fp16": True, "class_cond": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny(tmp_path_factory.mktemp("batch"))


class PerImageNetwork:
    """The loaded network evaluated one image at a time (batch-invariant); records the batch sizes it gets."""

    def __init__(self, load, sizes):
        self.load, self.sizes = load, sizes

    def __call__(self, plan):
        eps_model, path = self.load(plan)

        def eps(x, t, y=None):
            self.sizes.append(x.shape[0])
            return torch.cat([eps_model(x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])

        return eps, path


def run(tiny, name, batch, *extra):
    args = [a for a in common_args(tiny, name, "--device", "cpu", *extra)]
    args[args.index("--batch_size") + 1] = str(batch)
    assert cli.main(args) == 0


def test_batch_3_gives_batch_1_outputs_bit_for_bit(tiny, monkeypatch):
    sizes = {1: [], 3: []}
    for batch in (1, 3):
        # patched where execute() calls it
        monkeypatch.setattr(execute, "load_eps_model", PerImageNetwork(execute.load_eps_model, sizes[batch]))
        run(tiny, f"exact_b{batch}", batch, *EQUS_NOISY)
        monkeypatch.undo()
    # batch 3 really went through the sampler as batches: 3 images (x2 copies for the EquS
    # average), then the last image; 3 steps each
    assert sizes[1] == [2] * 3 * len(NAMES)
    assert sizes[3] == [6] * 3 + [2] * 3
    a, b = folder(tiny, "exact_b1"), folder(tiny, "exact_b3")
    ia, ib = image_bytes(a), image_bytes(b)
    assert len(ia) == 3 * len(NAMES) and ia.keys() == ib.keys()
    assert [k for k in ia if ia[k] != ib[k]] == []
    ra, rb = records(a), records(b)
    assert {r["batch_size"] for r in rb.values()} == {3, 1}
    assert {n: strip(r) for n, r in ra.items()} == {n: strip(r) for n, r in rb.items()}
    sa, sb = (json.loads(f.results_json.read_text())["summary"] for f in (a, b))
    sa.pop("seconds_per_image"), sb.pop("seconds_per_image")
    assert sa == sb and sa["num_images"] == len(NAMES)


def test_batched_network_agrees_to_float_rounding(tiny):
    for batch in (1, 3):
        run(tiny, f"real_b{batch}", batch)
    a, b = folder(tiny, "real_b1"), folder(tiny, "real_b3")
    for name in NAMES:
        pa, pb = (np.asarray(Image.open(f.restored(name)), dtype=np.int16) for f in (a, b))
        diff = np.abs(pa - pb)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())
        # the measurement side involves no network: identical
        assert a.apy(name).read_bytes() == b.apy(name).read_bytes()
    ra, rb = records(a), records(b)
    for name in NAMES:
        assert ra[name]["seed"] == rb[name]["seed"]
        assert ra[name]["psnr"] == pytest.approx(rb[name]["psnr"], abs=1e-3)


# ---------------------------------------------------------------- no host reads in the loop

def _op():
    return build_operator("sr_bicubic", image_size=32, channels=3, deg_scale=2, device=torch.device("cpu"),
                          dtype=torch.float32)


@pytest.mark.parametrize("model_cfg", [TINY_MODEL, TINY_OPENAI], ids=["simple", "openai"])
@pytest.mark.parametrize("sampler,sigma_y,equs", [("ddnm", 0.0, None), ("ddnm", 0.1, "alternate"),
                                                  ("ddrm", 0.1, "average")])
def test_sampling_loop_never_reads_back(model_cfg, sampler, sigma_y, equs):
    """Under FakeTensorMode a tensor has no data: any .item(), bool(), .tolist() or host copy of a
    value computed in the loop raises, as it would stall a GPU. The whole batched restore must run."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    op, cfg = _op(), {"data": {"image_size": 32, "channels": 3}, "model": model_cfg}
    sc = SamplerConfig(sampler=sampler, sigma_y=sigma_y, steps=3, equs=equs)
    betas = make_betas({})  # the config's constants, made on the host before sampling (as a run does)
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        eps = EpsModel(build_model(cfg).eval(), cfg)
        y = op.A(torch.rand(3, 3, 32, 32))
        out = restore(eps, op, y, betas, sc, seeds=[1, 2, 3]).x0
        assert out.shape == (3, 3, 32, 32)
        with pytest.raises(DataDependentOutputException):  # the guard works: one read in the loop fails
            restore(eps, op, y, betas, sc, seeds=[1, 2, 3],
                    callback=lambda i, step, x, x0: float(x.mean()))


@pytest.mark.parametrize("deg", ["sr_averagepooling", "deblur_gauss", "colorization", "cs_walshhadamard",
                                 "cs_blockbased", "inpainting", "denoising"])
def test_ddnm_projection_never_reads_back_for_any_operator(deg):
    """The operators' null_space overrides (DDNM's projection) run without host reads too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    scale = {"sr_averagepooling": 2, "cs_walshhadamard": 0.25, "cs_blockbased": 0.25}.get(deg)
    op = build_operator(deg, image_size=32, channels=3, deg_scale=scale, device=torch.device("cpu"))
    cfg = {"data": {"image_size": 32, "channels": 3}, "model": TINY_MODEL}
    y, betas = op.A(torch.rand(2, 3, 32, 32)), make_betas({})
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        eps = EpsModel(build_model(cfg).eval(), cfg)
        out = restore(eps, op, y, betas, SamplerConfig(steps=3), seeds=[1, 2]).x0
        assert out.shape == (2, 3, 32, 32)


HOST_TENSOR_MAKERS = ("tensor", "as_tensor", "from_numpy")


@pytest.mark.parametrize("sampler,sigma_y,equs", [
    ("ddnm", 0.0, None), ("ddnm", 0.0, "alternate"), ("ddnm", 0.0, "average"), ("ddrm", 0.1, None),
    ("ddnm", 0.1, None), ("ddnm", 0.1, "alternate"),
])
def test_no_tensor_is_built_from_host_data_per_step(monkeypatch, sampler, sigma_y, equs):
    """A tensor made from host data (torch.tensor, as_tensor, from_numpy) on a CUDA device is a
    synchronous copy. Counted over a 1-step and a 3-step restore: the per-step count must be 0."""
    op = _op()
    y = op.A(torch.rand(2, 3, 32, 32))
    made = []

    def counting(real):
        def make(*args, **kwargs):
            made.append(1)
            return real(*args, **kwargs)
        return make

    counts = []
    for steps in (1, 3):
        made.clear()
        for name in HOST_TENSOR_MAKERS:
            monkeypatch.setattr(torch, name, counting(getattr(torch, name)))
        restore(lambda x, t: torch.zeros_like(x), op, y, make_betas({}),
                SamplerConfig(sampler=sampler, sigma_y=sigma_y, steps=steps, equs=equs), seeds=[1, 2])
        monkeypatch.undo()
        counts.append(len(made))
    assert counts[1] == counts[0], f"{(counts[1] - counts[0]) / 2:g} host-made tensors per step"


# ---------------------------------------------------------------- EpsModel speed options

def _simple(seed=0):
    cfg = {"data": {"image_size": 32, "channels": 3}, "model": TINY_MODEL}
    torch.manual_seed(seed)
    return build_model(cfg).eval(), cfg


def test_channels_last_and_bf16_keep_the_prediction():
    torch.set_num_threads(1)
    model, cfg = _simple()
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.full((2,), 400.0)
    with torch.no_grad():
        ref = EpsModel(model, cfg)(x, t)
        cl_model = EpsModel(build_model(cfg).eval(), cfg, channels_last=True)
        cl_model.model.load_state_dict(model.state_dict())
        cl = cl_model(x, t)
        bf = EpsModel(model, cfg, dtype="bf16")(x, t)
    assert cl_model.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert cl.is_contiguous() and cl.dtype == torch.float32
    assert torch.allclose(cl, ref, atol=1e-4)
    assert bf.dtype == torch.float32 and not torch.equal(bf, ref)  # really computed in bf16 ...
    assert (bf - ref).abs().max() < 0.05 * ref.abs().max()  # ... and close to fp32
    # channels_last leaves the parameter names alone (checkpoints still load)
    assert list(cl_model.state_dict()) == list(EpsModel(model, cfg).state_dict())


def test_compile_wraps_the_converted_network_once(monkeypatch):
    model_cfg = {**TINY_OPENAI}
    cfg = {"data": {"image_size": 32, "channels": 3}, "model": model_cfg}
    calls = []

    def fake_compile(module, **kw):
        calls.append((module, module.body_dtype))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    eps = EpsModel(build_model(cfg).eval(), cfg, dtype="bf16", compile=True)
    keys = list(eps.state_dict())
    with torch.no_grad():
        for _ in range(2):
            eps(torch.randn(1, 3, 32, 32), torch.full((1,), 10.0))
    assert len(calls) == 1 and calls[0][0] is eps.model and calls[0][1] == torch.bfloat16
    assert list(eps.state_dict()) == keys  # the compiled module is not registered twice


def test_speed_flags_reach_the_network_and_the_records(tiny):
    run(tiny, "flags", 2, "--dtype", "bf16", "--channels_last", "--subset_end", "2")
    res = json.loads(folder(tiny, "flags").results_json.read_text())
    assert res["precision"] == ["bfloat16, channels_last"]
    assert {r["precision"] for r in res["images"]} == {"bfloat16, channels_last"}
    assert res["summary"]["num_images"] == 2 and np.isfinite(res["summary"]["psnr"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--config", "x", "--deg", "x", "--path_y", "x", "--dtype", "fp8"])


def test_measurement_noise_is_not_the_initial_noise():
    """torch's CPU generator keeps only a seed's low 32 bits: y's noise must come from another
    32-bit seed than x_T's, or the sampler would start from the very noise it has to remove."""
    from functions.noise import PerImageNoise, measurement_seed, seed_for

    seeds = {seed_for(s, i) % 2 ** 32 for s in range(3) for i in range(200)}
    for s in range(3):
        for i in range(200):
            m = measurement_seed(s, i)
            assert 0 <= m < 2 ** 32 and m not in seeds
    for s, i in [(0, 0), (0, 5), (2, 17)]:
        x_T = PerImageNoise([seed_for(s, i)]).randn((3, 16, 16))
        y_noise = PerImageNoise([measurement_seed(s, i)]).randn((3, 16, 16))
        assert abs(float((x_T * y_noise).mean())) < 0.15          # independent draws, not the same one
    # the old offset really did repeat x_T's draws
    assert torch.equal(PerImageNoise([seed_for(0, 3) + 2 ** 32]).randn((3, 8, 8)), PerImageNoise([seed_for(0, 3)]).randn((3, 8, 8)))
