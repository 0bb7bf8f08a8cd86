"""main.py on photographs at their own size (--native_size, --resize_y), composites, --simplified, guidance.

A tiny random-weight model with a 16 x 16 window restores small non-square images
written here: what is checked is the plumbing (sizes, data consistency, records
without ground truth, tiling modes, refusals that write nothing), not image quality.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from runners import cli

MODEL = {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
         "attn_resolutions": [], "dropout": 0.0, "resamp_with_conv": True, "var_type": "fixedsmall",
         "checkpoint": "logs/tiny.ckpt"}
DIFFUSION = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_diffusion_timesteps": 1000}
CLASSIFIER = {"image_size": 16, "classifier_width": 32, "classifier_depth": 1, "classifier_attention_resolutions": "8",
              "classifier_channel_mult": "1,2", "classifier_num_head_channels": 16,
              "classifier_use_scale_shift_norm": True, "classifier_resblock_updown": True,
              "classifier_pool": "attention", "classifier_use_fp16": False, "classifier_scale": 1.0,
              "checkpoint": "logs/classifier.pt"}
FAST = ["--lpips_net", "none", "--no_fid", "--steps", "3"]


def _photo(path: Path, hw, seed):
    rng = np.random.default_rng(seed)
    # smooth content (a sum of ramps) plus a little texture, so that pooling and greys are non-trivial
    h, w = hw
    base = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0.3, 1, 3) + np.linspace(0, 1, h)[:, None, None] * 0.3
    arr = np.clip(base * 200 + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from guided_diffusion.classifier import build_classifier
    from guided_diffusion.models import build_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("photos")
    exp = root / "exp"
    config = {"data": {"dataset": "CelebA_HQ", "image_size": 16, "channels": 3, "rescaled": True},
              "model": MODEL, "diffusion": DIFFUSION, "sampling": {"batch_size": 4},
              "time_travel": {"T_sampling": 3, "travel_length": 1, "travel_repeat": 1}}
    (root / "tiny.yml").write_text(yaml.safe_dump(config))
    guided = json.loads(json.dumps(config))
    guided["data"].update(dataset="ImageNet", subset_1k=True)
    (root / "unguided.yml").write_text(yaml.safe_dump(guided))
    guided["classifier"] = CLASSIFIER
    (root / "guided.yml").write_text(yaml.safe_dump(guided))
    (exp / "logs").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), exp / "logs" / "tiny.ckpt")
    torch.manual_seed(1)
    classifier = build_classifier(CLASSIFIER)
    with torch.no_grad():
        for p in classifier.parameters():
            p.normal_(0, 0.3)      # far from uniform logits, so that the gradient is not ~0
    torch.save(classifier.state_dict(), exp / "logs" / "classifier.pt")
    _photo(exp / "datasets" / "photos" / "wide.png", (21, 35), 0)     # crops to 20 x 34 at 2x
    _photo(exp / "datasets" / "photos" / "tall.png", (32, 18), 1)
    _photo(root / "lowres.png", (10, 14), 2)                          # a measurement: restores to 20 x 28 at 2x
    _photo(root / "small.png", (12, 30), 3)                           # smaller than the 16 x 16 window
    for i in range(2):
        _photo(exp / "datasets" / "inet" / "imagenet" / f"ILSVRC2012_val_{i:08d}.JPEG", (16, 16), 20 + i)
    (exp / "imagenet_val_1k.txt").write_text("ILSVRC2012_val_00000000.JPEG 3\nILSVRC2012_val_00000001.JPEG 7\n")
    return SimpleNamespace(root=root, exp=exp, config=str(root / "tiny.yml"), guided=str(root / "guided.yml"),
                           unguided=str(root / "unguided.yml"))


@pytest.fixture
def gaussian_network(monkeypatch):
    """The exact denoiser of a Gaussian prior N(0, 0.1) in place of the tiny network (patched where
    execute() calls it): its x0 stays in the image range, so data consistency is measurable."""
    from runners import execute
    from tests.gaussian_prior import GaussianEps

    original = execute.load_eps_model

    def load(plan):
        _, path = original(plan)       # the real checkpoint file (its id is recorded)
        return GaussianEps(torch.zeros(1, 3, 1, 1), 0.1), path

    monkeypatch.setattr(execute, "load_eps_model", load)


def run(env, capsys, *args, config=None):
    argv = ["--ni", "--config", config or env.config, "--exp", str(env.exp), *FAST, *map(str, args)]
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def results(env, name):
    return json.loads((env.exp / "image_samples" / name / "results.json").read_text())


def size_of(path):
    with Image.open(path) as img:
        return img.size[::-1]


def test_native_size_sr_keeps_each_image_size_and_agrees_with_y(env, capsys, gaussian_network):
    rc, out, err = run(env, capsys, "--path_y", "photos", "--deg", "sr_averagepooling", "--deg_scale", 2,
                       "--native_size", "-i", "native_sr2")
    assert rc == 0, err
    assert "wide.png: 35x21 cropped to 34x20 (a multiple of the SR factor 2)" in out
    res = results(env, "native_sr2")
    folder = env.exp / "image_samples" / "native_sr2"
    sizes = {r["name"]: tuple(r["size"]) for r in res["images"]}
    assert sizes == {"wide": (20, 34), "tall": (32, 18)}
    for name, hw in sizes.items():
        for sub in ("", "Apy/", "orig/"):
            assert size_of(folder / f"{sub}{name}.png") == hw
        assert size_of(folder / "y" / f"{name}.png") == (hw[0] // 2, hw[1] // 2)   # y as a picture
    # DDNM's projection on the whole image: A x = y to within half an 8-bit level (the score clamps x to
    # the image range first); a tiled eps without the global projection would miss it by levels
    assert all(r["consistency"] < 0.5 and r["ground_truth"] for r in res["images"])
    assert res["ground_truth"] is True and res["settings"]["native_size"] is True
    assert res["settings"]["tile_stride"] == 8
    grid = Image.open(folder / "grid.png")
    assert grid.size[1] == 2 * 256 + 4          # two rows shown 256 px high


def test_resize_y_reads_the_measurement_and_scores_consistency_only(env, capsys, gaussian_network):
    rc, out, err = run(env, capsys, "--path_y", env.root / "lowres.png", "--deg", "sr_averagepooling",
                       "--deg_scale", 2, "--resize_y", "-i", "upscale")
    assert rc == 0, err
    res = results(env, "upscale")
    folder = env.exp / "image_samples" / "upscale"
    assert size_of(folder / "lowres.png") == (20, 28)            # 2x the 10 x 14 file
    assert not (folder / "orig" / "lowres.png").exists()
    rec = res["images"][0]
    assert res["ground_truth"] is False and rec["psnr"] is None and rec["ground_truth"] is False
    assert rec["consistency"] < 0.5
    assert "no ground truth" in res["metric_notes"]["psnr_ssim"]
    # the restored image pooled back is the file itself (to 8-bit rounding, where nothing was clipped)
    lr = torch.tensor(np.array(Image.open(env.root / "lowres.png")), dtype=torch.float64)
    up = torch.tensor(np.array(Image.open(folder / "lowres.png")), dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool2d(up.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    inside = (lr > 16) & (lr < 239)        # away from 0 and 255, where the saved image is clipped
    assert inside.float().mean() > 0.7 and (pooled - lr)[inside].abs().max() <= 1.0
    # resumed: nothing left to do, the record (which lists no ground truth) counts as finished
    rc, out, _ = run(env, capsys, "--path_y", env.root / "lowres.png", "--deg", "sr_averagepooling",
                     "--deg_scale", 2, "--resize_y", "-i", "upscale")
    assert rc == 0 and "1 already done" in out


def test_mask_shift_and_average_tiling_both_run_and_differ(env, capsys):
    common = ["--path_y", env.exp / "datasets" / "photos" / "tall.png", "--deg", "colorization", "--native_size"]
    assert run(env, capsys, *common, "-i", "col_avg")[0] == 0
    assert run(env, capsys, *common, "--tiling", "mask_shift", "-i", "col_ms")[0] == 0
    a = np.array(Image.open(env.exp / "image_samples" / "col_avg" / "tall.png"))
    b = np.array(Image.open(env.exp / "image_samples" / "col_ms" / "tall.png"))
    assert a.shape == b.shape == (32, 18, 3) and np.abs(a.astype(int) - b).max() > 0
    ms = results(env, "col_ms")["images"][0]
    assert ms["nfe"] == 3 * 2 * 3   # windows at rows 0, 8, 16 and columns 0, 2 of the 32 x 18 photo, 3 steps each
    assert results(env, "col_avg")["images"][0]["nfe"] == 3
    assert results(env, "col_ms")["settings"]["tiling"] == "mask_shift"


def test_old_photo_composite_runs_with_the_simplified_rule_and_says_so(env, capsys):
    rc, out, err = run(env, capsys, "--path_y", "photos", "--deg", "mask_color_sr", "--deg_scale", 2,
                       "--mask", "box:0.2", "--native_size", "-i", "oldphoto", "--sigma_y", 0.02)
    assert rc == 0, err
    assert "composite degradation: it runs with the simplified (SVD-free) rule" in out
    res = results(env, "oldphoto")
    assert res["sampler"]["sampler"] == "simplified" and res["settings"]["simplified_noise"] == "reference"
    folder = env.exp / "image_samples" / "oldphoto"
    assert size_of(folder / "y" / "wide.png") == (10, 17)     # the pooled grey measurement
    rc, out, err = run(env, capsys, "--path_y", "photos", "--deg", "inpainting+colorization", "--simplified",
                       "--simplified_noise", "ddim", "--native_size", "-i", "chain")
    assert rc == 0, err
    assert "composite degradation" not in out
    assert results(env, "chain")["settings"]["simplified_noise"] == "ddim"


def test_a_composite_masks_y_where_sr_comes_before_the_inpainting(env, capsys, gaussian_network):
    """sr_averagepooling+inpainting at a photo's own size: the mask file has y's size (the pooled
    photo's), and the measurement keeps exactly the pixels the file keeps."""
    tall = env.exp / "datasets" / "photos" / "tall.png"          # 32 x 18: y is 16 x 9
    keep = np.ones((16, 9), dtype=np.uint8)
    keep[5:9, 2:6] = 0
    mask = env.root / "mask16x9.png"
    Image.fromarray(keep * 255).save(mask)
    rc, _, err = run(env, capsys, "--path_y", tall, "--deg", "sr_averagepooling+inpainting", "--deg_scale", 2,
                     "--native_size", "--mask", mask, "-i", "sr_then_mask")
    assert rc == 0, err
    folder = env.exp / "image_samples" / "sr_then_mask"
    y = np.array(Image.open(folder / "y" / "tall.png")).astype(int)
    assert y.shape == (16, 9, 3) and (y[keep == 0] == 128).all()       # model-space 0 shown as mid-grey
    assert (np.abs(y[keep == 1] - 128).max(axis=-1) > 2).mean() > 0.8
    assert results(env, "sr_then_mask")["images"][0]["consistency"] < 0.5
    rc, _, err = run(env, capsys, "--path_y", tall, "--deg", "sr_averagepooling+inpainting", "--deg_scale", 2,
                     "--native_size", "--mask", mask, "--tiling", "mask_shift", "-i", "sr_then_mask_ms")
    assert rc == 0, err
    assert results(env, "sr_then_mask_ms")["images"][0]["consistency"] < 0.5


def test_simplified_square_run_and_settings_only_where_they_apply(env, capsys):
    rc, _, err = run(env, capsys, "--path_y", "photos", "--deg", "sr_averagepooling", "--deg_scale", 2,
                     "--simplified", "-i", "square_simplified")
    assert rc == 0, err
    res = results(env, "square_simplified")
    assert res["sampler"]["sampler"] == "simplified"
    assert {r["name"]: r.get("size") for r in res["images"]} == {"wide": None, "tall": None}   # the square path
    rc, _, err = run(env, capsys, "--path_y", "photos", "--deg", "sr_averagepooling", "--deg_scale", 2, "-i", "plain")
    assert rc == 0, err
    settings = results(env, "plain")["settings"]
    for key in ("simplified_noise", "native_size", "tiling", "guidance", "class_label"):
        assert key not in settings       # runs made before these flags keep their fingerprints


@pytest.mark.parametrize("args, message", [
    (["--path_y", "SMALL", "--deg", "denoising", "--native_size"], "smaller than the model's 16x16 window"),
    (["--path_y", "photos", "--deg", "cs_walshhadamard", "--native_size"], "compressed sensing works only"),
    (["--path_y", "photos", "--deg", "inpainting+foo", "--native_size"], "unknown composite part 'foo'"),
    (["--path_y", "photos", "--deg", "inpainting", "--native_size", "--mask", "MASK"], "give a mask of the photo's size"),
    (["--path_y", "photos", "--deg", "colorization", "--tiling", "mask_shift"], "add --native_size"),
    (["--path_y", "photos", "--deg", "mask_color_sr", "--sampler", "ddrm"], "drop --sampler ddrm"),
    (["--path_y", "photos", "--deg", "colorization", "--native_size", "--tile_stride", "0"], "--tile_stride must be"),
    (["--path_y", "photos", "--deg", "colorization", "--native_size", "--tile_stride", "17"],
     "--tile_stride 17 is larger than the model's 16-pixel window"),
    (["--path_y", "photos", "--deg", "sr_averagepooling", "--deg_scale", "2", "--native_size", "--tiling", "mask_shift",
      "--tile_stride", "7"], "multiples of the SR factor 2; give e.g. --tile_stride 6"),
    (["--path_y", "photos", "--deg", "cs_blockbased+inpainting"], "composite part 'cs_blockbased' has no image-domain"),
    (["--path_y", "photos", "--deg", "cs_blockbased+inpainting", "--native_size"], "'cs_blockbased' has no image-domain"),
    (["--path_y", "photos", "--deg", "sr_averagepooling", "--simplified_noise", "ddim"],
     "--simplified_noise applies to the simplified rule only"),
    (["--path_y", "TALL", "--deg", "sr_averagepooling+inpainting", "--deg_scale", "2", "--native_size", "--mask",
      "MASK32x18"], "sees tall at 9x16 (after the parts before it); give a mask of 9x16"),
])
def test_bad_photo_inputs_are_one_line_and_write_nothing(env, capsys, args, message):
    mask, photo_mask = env.root / "mask.npy", env.root / "mask32x18.npy"
    np.save(mask, np.ones((5, 5), dtype=np.uint8))
    np.save(photo_mask, np.ones((32, 18), dtype=np.uint8))
    named = {"SMALL": env.root / "small.png", "MASK": mask, "MASK32x18": photo_mask,
             "TALL": env.exp / "datasets" / "photos" / "tall.png"}
    args = [str(named.get(a, a)) for a in args]
    before = sorted((env.exp / "image_samples").rglob("*")) if (env.exp / "image_samples").exists() else []
    rc, out, err = run(env, capsys, *args, "-i", "refused")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (env.exp / "image_samples" / "refused").exists()
    assert (sorted((env.exp / "image_samples").rglob("*")) if before else []) == before


def test_classifier_guidance_is_wired_per_image_label(env, capsys):
    base = ["--path_y", "inet", "--deg", "sr_averagepooling", "--deg_scale", 2]
    assert run(env, capsys, *base, "-i", "guided0", "--classifier_scale", 0, config=env.guided)[0] == 0
    assert run(env, capsys, *base, "-i", "unguided", config=env.unguided)[0] == 0
    rc, out, err = run(env, capsys, *base, "-i", "guided5", "--classifier_scale", 5, config=env.guided)
    assert rc == 0, err
    assert "classifier guidance: correct, scale 5" in out
    assert run(env, capsys, *base, "-i", "guided5_class", "--classifier_scale", 5, "--class", 3,
               config=env.guided)[0] == 0

    def pixels(name):
        folder = env.exp / "image_samples" / name
        return {p.name: np.array(Image.open(p)).astype(int) for p in sorted(folder.glob("*.JPEG.png"))
                or sorted(folder.glob("ILSVRC*.png"))}

    zero, plain, five, five3 = (pixels(n) for n in ("guided0", "unguided", "guided5", "guided5_class"))
    assert zero.keys() == plain.keys() and len(zero) == 2
    assert all((zero[k] == plain[k]).all() for k in zero)                 # s = 0 is the unguided run
    assert any(np.abs(five[k] - plain[k]).max() > 0 for k in five)        # s = 5 steers it
    first = sorted(five)[0]                                              # image 0 is class 3 in the list file
    assert (five[first] == five3[first]).all() and not (five[sorted(five)[1]] == five3[sorted(five)[1]]).all()
    assert results(env, "guided5")["settings"]["guidance"] == {"mode": "correct", "scale": 5.0}
    rc, _, err = run(env, capsys, "--path_y", env.root / "lowres.png", "--deg", "denoising", "-i", "nolabel",
                     config=env.guided)
    assert rc == 2 and "no class label" in err


@pytest.mark.parametrize("flags", [["--EquSplus"], ["--sampler", "ddrm"], ["--travel_length", 1, "--travel_repeat", 2],
                                   ["--equs_mode", "average", "--transform", "flips"]])
def test_tiling_composes_with_equs_ddrm_and_time_travel(env, capsys, gaussian_network, flags):
    name = "compose_" + "_".join(str(f).strip("-") for f in flags)
    rc, _, err = run(env, capsys, "--path_y", "photos", "--deg", "sr_averagepooling", "--deg_scale", 2,
                     "--native_size", "-i", name, *flags)
    assert rc == 0, err
    res = results(env, name)
    assert {tuple(r["size"]) for r in res["images"]} == {(20, 34), (32, 18)}
    if "ddrm" not in flags:     # DDRM's last step keeps the model's own x0 in the measured coordinates
        assert all(r["consistency"] < 0.5 for r in res["images"])


def test_reference_guidance_runs_through_the_runner_and_differs_from_correct(env, capsys):
    base = ["--path_y", "inet", "--deg", "sr_averagepooling", "--deg_scale", 2, "--classifier_scale", 5]
    assert run(env, capsys, *base, "--guidance", "reference", "-i", "g_ref", config=env.guided)[0] == 0
    assert run(env, capsys, *base, "--class", 951, "-i", "g_951", config=env.guided)[0] == 0
    assert results(env, "g_ref")["settings"]["guidance"] == {"mode": "reference", "scale": 5.0}
    a = np.array(Image.open(env.exp / "image_samples" / "g_ref" / "ILSVRC2012_val_00000001.png"))
    b = np.array(Image.open(env.exp / "image_samples" / "g_951" / "ILSVRC2012_val_00000001.png"))
    assert np.abs(a.astype(int) - b).max() > 0     # the gradient at x_T, not at x_t
    rc, _, err = run(env, capsys, "--path_y", "photos", "--deg", "denoising", "--native_size", "--guidance",
                     "reference", "-i", "g_photo", config=env.guided)
    assert rc == 2 and "--guidance reference" in err
