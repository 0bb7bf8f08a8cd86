"""main.py end to end on CPU: a tiny random-weight model, a few small images written here.

Covers every --deg (noise-free and noisy), plain / EquS / EquS+, DDRM, resume after
a kill, --overwrite, the command lines of evaluation.sh, and the bad inputs (one
line on stderr, exit status 2, nothing already written touched).
"""
import hashlib
import os
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from functions import metrics
from runners import cli, restoration
from runners.results import OutputFolder, atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
from functions import operators, samplers  # noqa: E402

TINY_MODEL = {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
              "attn_resolutions": [], "dropout": 0.0, "resamp_with_conv": True, "var_type": "fixedsmall",
              "checkpoint": "logs/tiny.ckpt"}
DIFFUSION = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_diffusion_timesteps": 1000}
TRAVEL = {"T_sampling": 3, "travel_length": 1, "travel_repeat": 1}
FAST = ["--lpips_net", "none", "--no_fid"]


def _image(path, size, seed, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert(mode) if mode != "RGB" else img).save(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from guided_diffusion.models import build_model

    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    root = tmp_path_factory.mktemp("cli")
    exp = root / "exp"
    celeba = {"data": {"dataset": "CelebA_HQ", "image_size": 32, "channels": 3, "rescaled": True},
              "model": TINY_MODEL, "diffusion": DIFFUSION, "sampling": {"batch_size": 1}, "time_travel": TRAVEL}
    imagenet = json.loads(json.dumps(celeba))
    imagenet["data"].update(dataset="ImageNet", subset_1k=True)
    (root / "tiny.yml").write_text(yaml.safe_dump(celeba))
    (root / "tiny_imagenet.yml").write_text(yaml.safe_dump(imagenet))
    (exp / "logs").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(celeba).state_dict(), exp / "logs" / "tiny.ckpt")
    # three faces of different sizes, one grey
    _image(exp / "datasets" / "faces" / "face" / "00010.png", (40, 48), 0)
    _image(exp / "datasets" / "faces" / "face" / "00011.png", (64, 64), 1, mode="L")
    _image(exp / "datasets" / "faces" / "face" / "00012.png", (50, 36), 2)
    for i in range(2):
        _image(exp / "datasets" / "celeba_hq" / "face" / f"{i:05d}.png", (48, 48), 10 + i)
        _image(exp / "datasets" / "imagenet" / "imagenet" / f"ILSVRC2012_val_{i:08d}.JPEG", (60, 40), 20 + i)
    (exp / "imagenet_val_1k.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000000.JPEG 0\n")
    mask = np.ones((32, 32), dtype=np.uint8)
    mask[8:20, 10:26] = 0
    (exp / "inp_masks").mkdir()
    np.save(exp / "inp_masks" / "mask.npy", mask)
    return SimpleNamespace(root=root, exp=exp, config=str(root / "tiny.yml"),
                           config_imagenet=str(root / "tiny_imagenet.yml"))


def run_cli(tiny, capsys, *args, fast=True):
    argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--steps", "3", *(FAST if fast else []), *args]
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def folder(tiny, name) -> OutputFolder:
    return OutputFolder(tiny.exp / "image_samples" / name)


def results(tiny, name):
    return json.loads(folder(tiny, name).results_json.read_text())


def snapshot(path: Path):
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


OFFICIAL_TXT = re.compile(r"Total Average PSNR: \d+\.\d{2}\nTotal Average SSIM: -?\d\.\d{4}\n"
                          r"Total Average LPIPS: (\d\.\d{5}|nan)\nNumber of samples: (\d+)\n")


# ------------------------------------------------------------------ every degradation

def _restored_in_process(tiny, *args):
    """The images main.py should have restored: the same plan, sampled here by the library
    (one batch, the per-image seeds), as PSNR against the ground truth per image name."""
    from functions.diffusion import make_betas
    from functions.noise import seed_for

    argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--steps", "3", *FAST, *map(str, args)]
    parsed = cli.build_parser().parse_args(argv)
    plan = restoration.make_plan(parsed, argv, device_name="cpu")
    eps_model, _ = restoration.load_eps_model(plan)
    from runners import data as data_mod
    x01 = data_mod.load_batch(plan.items, plan.image_size, plan.preprocess)
    y = plan.op.A(x01 * 2 - 1)
    with torch.no_grad():
        x0 = samplers.restore(eps_model, plan.op, y, make_betas(plan.config["diffusion"]), plan.sampler_cfg,
                              seeds=[seed_for(parsed.seed, it.index) for it in plan.items]).x0
    psnr = metrics.psnr(((x0.reshape(x01.shape).clamp(-1, 1) + 1) / 2), x01)
    return {it.name: float(p) for it, p in zip(plan.items, psnr)}


@pytest.mark.parametrize("deg", operators.DEGRADATIONS)
def test_every_degradation_noise_free_and_noisy(tiny, capsys, deg):
    common = ["--path_y", "faces", "--deg", deg, "--subset_end", "2"]
    rc, out, err = run_cli(tiny, capsys, *common, "-i", f"deg_{deg}")
    assert rc == 0, err
    # what was saved is the sampler's restoration of these images, not A^+ y or a copy of y
    expected = _restored_in_process(tiny, *common, "-i", f"deg_{deg}_check")
    for rec in results(tiny, f"deg_{deg}")["images"]:
        if deg == "denoising":   # noise-free y = x is kept (to rounding): over 100 dB, or null (infinite) in JSON
            assert expected[rec["name"]] > 100 and (rec["psnr"] is None or rec["psnr"] > 100)
            continue
        assert rec["psnr"] == pytest.approx(expected[rec["name"]], abs=1e-3)
        assert rec["psnr"] != pytest.approx(rec["baseline"]["psnr"], abs=1e-3)
    rc, _, err = run_cli(tiny, capsys, *common, "--sigma_y", "0.1", "--add_noise", "-i", f"deg_{deg}_noisy")
    assert rc == 0, err

    clean, noisy = results(tiny, f"deg_{deg}"), results(tiny, f"deg_{deg}_noisy")
    # the image the reference saves as Apy, where it is not A^+ y, is scored too (Table 1's A^+ y row)
    if deg.startswith("deblur") or deg == "inpainting":
        assert all("baseline_reference" in r for r in clean["images"])
        assert clean["summary"]["baseline_reference"]["psnr"] != pytest.approx(clean["summary"]["baseline"]["psnr"])
    else:
        assert "baseline_reference" not in clean["summary"]
    for res, name in ((clean, f"deg_{deg}"), (noisy, f"deg_{deg}_noisy")):
        s = res["summary"]
        assert s["num_images"] == 2 and s["nfe"] == 3
        assert np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 and s["consistency"] >= 0
        assert s["lpips"] is None and s["fid"] is None  # switched off for speed
        out_dir = folder(tiny, name)
        for n in [r["name"] for r in res["images"]]:
            for p in (out_dir.restored(n), out_dir.apy(n), out_dir.orig(n), out_dir.record_path(n)):
                assert p.is_file(), p
            assert Image.open(out_dir.restored(n)).size == (32, 32)
        m = OFFICIAL_TXT.fullmatch(out_dir.results_txt.read_text())
        assert m and m.group(2) == "2"
        assert out_dir.grid.is_file()
    # --sigma_y keeps the reference's units: doubled for the [-1, 1] model space
    assert noisy["settings"]["sigma_y"] == 0.1 and noisy["sampler"]["sigma_y"] == pytest.approx(0.2)
    assert clean["sampler"]["sigma_y"] == 0.0
    # the noise really is on y: A^+ y of the noisy measurement is further from the truth
    assert noisy["summary"]["baseline"]["psnr"] < clean["summary"]["baseline"]["psnr"]
    assert "PSNR:" in err  # the progress bar shows the running mean PSNR


def test_noise_free_sigma_without_add_noise_keeps_y_clean(tiny, capsys):
    base = ["--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "4", "--subset_end", "1"]
    assert run_cli(tiny, capsys, *base, "-i", "sig_clean")[0] == 0
    rc, out, _ = run_cli(tiny, capsys, *base, "--sigma_y", "0.2", "-i", "sig_noadd")
    assert rc == 0 and "without --add_noise" in out
    a, b = results(tiny, "sig_clean")["summary"], results(tiny, "sig_noadd")["summary"]
    assert a["baseline"]["psnr"] == pytest.approx(b["baseline"]["psnr"], abs=1e-9)  # same clean y
    assert a["psnr"] != b["psnr"]  # but DDNM+ with sigma_y 0.4 in model space


# ------------------------------------------------------------------ methods

def test_plain_equs_equsplus_and_ddrm(tiny, capsys):
    base = ["--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "4", "--subset_end", "2"]
    variants = {"m_plain": [], "m_equs": ["--EquS"], "m_equsplus": ["--EquSplus"],
                "m_avg": ["--equs_mode", "average"], "m_ddrm": ["--sampler", "ddrm"],
                "m_ddrm_equsplus": ["--sampler", "ddrm", "--EquSplus"]}
    for name, extra in variants.items():
        rc, _, err = run_cli(tiny, capsys, *base, *extra, "-i", name)
        assert rc == 0, (name, err)
    s = {name: results(tiny, name)["sampler"] for name in variants}
    assert (s["m_plain"]["equs"], s["m_plain"]["schedule"]) == (None, "uniform")
    assert (s["m_equs"]["equs"], s["m_equs"]["schedule"]) == ("alternate", "uniform")
    assert (s["m_equsplus"]["equs"], s["m_equsplus"]["schedule"]) == ("alternate", "tas")
    assert s["m_avg"]["equs"] == "average"
    assert s["m_ddrm"]["sampler"] == "ddrm" and s["m_ddrm_equsplus"]["equs"] == "alternate"
    first = results(tiny, "m_plain")["images"][0]["name"]
    pixels = {name: np.asarray(Image.open(folder(tiny, name).restored(first))) for name in variants}
    names = list(variants)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not np.array_equal(pixels[names[i]], pixels[names[j]]), (names[i], names[j])
    assert results(tiny, "m_avg")["summary"]["nfe"] == 6  # {id, hflip}: two evaluations per step
    assert results(tiny, "m_plain")["summary"]["nfe"] == 3


# ------------------------------------------------------------------ resume, determinism, overwrite

class _Counting:
    """Wraps samplers.restore: counts images, optionally 'kills' the run at a given call."""

    def __init__(self, real, kill_at=None):
        self.real, self.kill_at, self.calls, self.images = real, kill_at, 0, 0

    def __call__(self, eps_model, op, y, *args, **kw):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            raise KeyboardInterrupt
        self.images += y.shape[0]
        return self.real(eps_model, op, y, *args, **kw)


def test_resume_after_kill(tiny, capsys, monkeypatch):
    base = ["--path_y", "faces", "--deg", "inpainting", "--sigma_y", "0.05", "--add_noise"]
    real = samplers.restore
    killer = _Counting(real, kill_at=2)
    monkeypatch.setattr(samplers, "restore", killer)
    rc, _, err = run_cli(tiny, capsys, *base, "-i", "resume")
    assert rc == 130 and "resume" in err
    out = folder(tiny, "resume")
    done = sorted(p.stem for p in out.records_dir.glob("*.json"))
    assert len(done) == 1
    first = out.record_path(done[0]).read_bytes()
    # a kill during a later write leaves a temp file behind, never a half-written target
    (out.records_dir / ".00011.json.x1y2.tmp").write_text("{\"name\": \"00011\", ")

    counter = _Counting(real)
    monkeypatch.setattr(samplers, "restore", counter)
    rc, _, err = run_cli(tiny, capsys, *base, "-i", "resume")
    assert rc == 0, err
    assert counter.images == 2  # the finished image is not redone
    assert out.record_path(done[0]).read_bytes() == first
    res = results(tiny, "resume")
    assert res["summary"]["num_images"] == 3
    assert sorted(r["name"] for r in res["images"]) == ["00010", "00011", "00012"]
    assert OFFICIAL_TXT.fullmatch(out.results_txt.read_text()).group(2) == "3"

    # the same command once more: nothing to do, summary rebuilt identically
    counter2 = _Counting(real)
    monkeypatch.setattr(samplers, "restore", counter2)
    assert run_cli(tiny, capsys, *base, "-i", "resume")[0] == 0
    assert counter2.images == 0
    assert results(tiny, "resume")["summary"] == res["summary"]

    # an uninterrupted run with another batch size gives the same images (per-image seeds)
    assert run_cli(tiny, capsys, *base, "--batch_size", "2", "-i", "resume_b2")[0] == 0
    a = {r["name"]: r for r in res["images"]}
    b = {r["name"]: r for r in results(tiny, "resume_b2")["images"]}
    for name in a:
        assert a[name]["seed"] == b[name]["seed"]
        assert a[name]["psnr"] == pytest.approx(b[name]["psnr"], abs=1e-3)
        assert a[name]["baseline"]["psnr"] == pytest.approx(b[name]["baseline"]["psnr"], abs=1e-4)

    # only --overwrite starts afresh
    counter3 = _Counting(real)
    monkeypatch.setattr(samplers, "restore", counter3)
    assert run_cli(tiny, capsys, *base, "--overwrite", "-i", "resume")[0] == 0
    assert counter3.images == 3
    assert results(tiny, "resume")["summary"]["num_images"] == 3


def test_subset_runs_merge_into_one_summary(tiny, capsys):
    base = ["--path_y", "faces", "--deg", "colorization", "-i", "merge"]
    assert run_cli(tiny, capsys, *base, "--subset_start", "0", "--subset_end", "1")[0] == 0
    assert results(tiny, "merge")["summary"]["num_images"] == 1
    assert run_cli(tiny, capsys, *base, "--subset_start", "1", "--subset_end", "3")[0] == 0
    res = results(tiny, "merge")
    assert res["summary"]["num_images"] == 3
    assert res["summary"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in res["images"]]))


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ------------------------------------------------------------------ bad input

def _one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def kept(tiny):
    """A finished run that every bad command below points at (-i kept): it must survive untouched."""
    rc = cli.main(["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--steps", "3", *FAST,
                   "--path_y", "faces", "--deg", "sr_averagepooling", "--subset_end", "1", "-i", "kept"])
    assert rc == 0
    (tiny.exp / "datasets" / "empty").mkdir()
    _image(tiny.exp / "datasets" / "corrupt" / "good.png", (32, 32), 5)
    (tiny.exp / "datasets" / "corrupt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    np.save(tiny.root / "mask20.npy", np.ones((20, 20), dtype=np.uint8))
    np.save(tiny.root / "mask_rect.npy", np.ones((32, 64), dtype=np.uint8))
    (tiny.exp / "image_samples" / "a_file").write_text("not a folder")
    cfg = yaml.safe_load(Path(tiny.config).read_text())
    cfg["model"]["checkpoint"] = "logs/missing.ckpt"
    (tiny.root / "nockpt.yml").write_text(yaml.safe_dump(cfg))
    _image(tiny.exp / "datasets" / "gridded" / "grid.png", (32, 32), 6)
    (tiny.root / "broken.yml").write_text("data:\n  image_size: 32\n model: [unclosed\n")
    np.save(tiny.root / "mask_str.npy", np.array([["a"] * 32] * 32))
    np.save(tiny.root / "mask_empty.npy", np.ones((0, 0), dtype=np.uint8))
    (tiny.root / "mask_zero.npy").write_bytes(b"")
    for name, change in (("nomodel", lambda c: c.pop("model")), ("batch0", lambda c: c["sampling"].update(batch_size=0)),
                         ("bigsize", lambda c: c["data"].update(image_size="big"))):
        c = yaml.safe_load(Path(tiny.config).read_text())
        change(c)
        (tiny.root / f"{name}.yml").write_text(yaml.safe_dump(c))
    _image(tiny.root / "picture.png", (8, 8), 7)       # a PNG under a config's name
    (tiny.root / "picture.png").rename(tiny.root / "picture.yml")
    return folder(tiny, "kept").root


BAD = {
    "missing dataset": (["--path_y", "nowhere", "--deg", "sr_averagepooling"], "dataset folder not found"),
    "empty dataset": (["--path_y", "empty", "--deg", "sr_averagepooling"], "no images"),
    "corrupt image": (["--path_y", "corrupt", "--deg", "sr_averagepooling"], "broken.png"),
    "unknown deg": (["--path_y", "faces", "--deg", "sr_magic"], "sr_magic"),
    "bad SR factor": (["--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "3"], "deg_scale"),
    "bad CS ratio": (["--path_y", "faces", "--deg", "cs_blockbased", "--deg_scale", "1.5"], "deg_scale"),
    "negative sigma_y": (["--path_y", "faces", "--deg", "sr_averagepooling", "--sigma_y", "-0.1"], "--sigma_y"),
    "bad eta": (["--path_y", "faces", "--deg", "sr_averagepooling", "--eta", "1.5"], "--eta"),
    "noise type": (["--path_y", "faces", "--deg", "denoising", "-n", "poisson"], "poisson"),
    "both EquS": (["--path_y", "faces", "--deg", "denoising", "--EquS", "--EquSplus"], "exclusive"),
    "bad transform": (["--path_y", "faces", "--deg", "denoising", "--EquS", "--transform", "twirl"], "twirl"),
    "bad subset": (["--path_y", "faces", "--deg", "denoising", "--subset_start", "5", "--subset_end", "9"], "subset"),
    "mask size": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/mask20.npy"], "20x20"),
    "mask shape": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/mask_rect.npy"], "32x64"),
    "mask missing": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/none.npy"], "none.npy"),
    "bad device": (["--path_y", "faces", "--deg", "denoising", "--device", "tpu9"], "tpu9"),
    "nan sigma_y": (["--path_y", "faces", "--deg", "sr_averagepooling", "--sigma_y", "nan"], "--sigma_y"),
    # 8-bit units by mistake: the error gives the value in [0, 1] units
    "sigma_y above 1": (["--path_y", "faces", "--deg", "sr_averagepooling", "--sigma_y", "25"], "--sigma_y 0.09804"),
    "ckpt a folder": (["--path_y", "faces", "--deg", "denoising", "--ckpt", "{root}"], "is a folder"),
    "infinite deg_scale": (["--path_y", "faces", "--deg", "sr_bicubic", "--deg_scale", "inf"], "--deg_scale"),
    "seed too large": (["--path_y", "faces", "--deg", "denoising", "--seed", "99999999999999999"], "--seed"),
    "image named grid": (["--path_y", "gridded", "--deg", "denoising"], "comparison grid"),
    "broken YAML": (["--config", "{root}/broken.yml", "--path_y", "faces", "--deg", "denoising"], "not valid YAML"),
    # found by fuzzing main.py: each used to end in a traceback (exit 1) or an error naming nothing
    "name too long": (["--path_y", "x" * 300, "--deg", "denoising"], "File name too long"),
    "device meta": (["--path_y", "faces", "--deg", "denoising", "--device", "meta"], "use cpu, cuda"),
    "mask of strings": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/mask_str.npy"], "0/1"),
    "empty mask": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/mask_empty.npy"], "is empty"),
    "zero-byte mask": (["--path_y", "faces", "--deg", "inpainting", "--mask", "{root}/mask_zero.npy"], "cannot read mask"),
    "config without model": (["--config", "{root}/nomodel.yml", "--path_y", "faces", "--deg", "denoising"], "'model'"),
    "config batch size 0": (["--config", "{root}/batch0.yml", "--path_y", "faces", "--deg", "denoising"],
                            "sampling.batch_size"),
    "config image size": (["--config", "{root}/bigsize.yml", "--path_y", "faces", "--deg", "denoising"], "data.image_size"),
    "config not text": (["--config", "{root}/picture.yml", "--path_y", "faces", "--deg", "denoising"], "not a text file"),
    "empty ckpt": (["--path_y", "faces", "--deg", "denoising", "--ckpt", ""], "--ckpt is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_and_nothing_lost(tiny, kept, capsys, case):
    args, needle = BAD[case]
    args = [a.replace("{root}", str(tiny.root)) for a in args]
    before = snapshot(kept)
    rc, out, err = run_cli(tiny, capsys, *args, "-i", "kept")
    assert rc == 2
    line = _one_line(err)
    assert line.startswith("error:") and needle in line, line
    assert snapshot(kept) == before


def test_missing_checkpoint(tiny, kept, capsys):
    target = tiny.exp / "image_samples" / "ckpt_missing"
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "--ckpt",
                         tiny.exp / "logs" / "nope.ckpt", "-i", "ckpt_missing")
    assert rc == 2 and "nope.ckpt" in _one_line(err)
    rc = cli.main(["--ni", "--config", str(tiny.root / "nockpt.yml"), "--exp", str(tiny.exp), *FAST,
                   "--path_y", "faces", "--deg", "denoising", "-i", "ckpt_missing"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.ckpt" in _one_line(err)
    assert not target.exists()  # nothing written


def test_output_path_is_a_file(tiny, kept, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "a_file")
    assert rc == 2 and "is a file" in _one_line(err)
    assert (tiny.exp / "image_samples" / "a_file").read_text() == "not a folder"


def test_overwrite_discards_the_earlier_images_and_nothing_else(tiny, capsys):
    """--overwrite over another subset: the earlier run's images go with its records (no stray
    earlier PNGs beside the new results), a file the user put in the folder stays."""
    common = ["--path_y", "faces", "--deg", "denoising", "-i", "redo"]
    assert run_cli(tiny, capsys, *common, "--subset_end", "2")[0] == 0
    out = folder(tiny, "redo")
    first = sorted(p.stem for p in out.records_dir.glob("*.json"))
    assert len(first) == 2 and all(out.restored(n).exists() and out.apy(n).exists() for n in first)
    (out.root / "notes.txt").write_text("mine")
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_start", "2", "--subset_end", "3", "--overwrite")
    assert rc == 0, err
    second = sorted(p.stem for p in out.records_dir.glob("*.json"))
    assert len(second) == 1 and second[0] not in first
    assert not any(p.exists() for n in first for p in (out.restored(n), out.apy(n), out.orig(n)))
    assert all(p.exists() for p in (out.restored(second[0]), out.apy(second[0]), out.orig(second[0])))
    assert (out.root / "notes.txt").read_text() == "mine"
    assert results(tiny, "redo")["summary"]["num_images"] == 1


def test_a_busy_folder_is_refused_before_anything_is_written(tiny, capsys):
    """A second run pointed at a folder that a live run holds: one line, exit 2, nothing changed;
    once the first run is gone the same command resumes."""
    fcntl = pytest.importorskip("fcntl")
    common = ["--path_y", "faces", "--deg", "sr_averagepooling", "-i", "busy"]
    assert run_cli(tiny, capsys, *common, "--subset_end", "1")[0] == 0
    root = folder(tiny, "busy").root
    before = snapshot(root)
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # what a running main.py holds
        rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2")
        line = _one_line(err)
        assert rc == 2 and "another run is writing to" in line and "choose another -i" in line
        rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2", "--overwrite")
        assert rc == 2 and "another run is writing to" in _one_line(err)
        assert snapshot(root) == before
    finally:
        os.close(fd)
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2")
    assert rc == 0, err
    assert results(tiny, "busy")["summary"]["num_images"] == 2


def test_changed_settings_need_overwrite(tiny, kept, capsys):
    before = snapshot(kept)
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "sr_averagepooling", "--subset_end", "1",
                         "--eta", "0.5", "-i", "kept")
    line = _one_line(err)
    assert rc == 2 and "eta: 0.85 -> 0.5" in line and "--overwrite" in line
    assert snapshot(kept) == before


def test_a_changed_checkpoint_does_not_resume_into_finished_results(tiny, capsys):
    """Same command, same --ckpt path, but the file now holds other weights (retrained, re-exported):
    the new images would not be comparable with the finished ones, so the run is refused."""
    from guided_diffusion.models import build_model

    ckpt = tiny.root / "swapped.ckpt"
    ckpt.write_bytes((tiny.exp / "logs" / "tiny.ckpt").read_bytes())
    common = ["--path_y", "faces", "--deg", "denoising", "--ckpt", ckpt, "-i", "swapped"]
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "1")
    assert rc == 0, err
    before = snapshot(folder(tiny, "swapped").root)
    torch.manual_seed(1)
    torch.save(build_model(yaml.safe_load(Path(tiny.config).read_text())).state_dict(), ckpt)
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2")
    line = _one_line(err)
    assert rc == 2 and "swapped.ckpt" in line and "--overwrite" in line
    assert snapshot(folder(tiny, "swapped").root) == before
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2", "--overwrite")
    assert rc == 0, err
    assert results(tiny, "swapped")["summary"]["num_images"] == 2


def test_random_mask_runs_from_its_own_stream(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "inpainting", "--mask", "random:0.3",
                         "--subset_end", "1", "-i", "random_mask")
    assert rc == 0, err
    res = results(tiny, "random_mask")
    assert res["settings"]["operator_stream"] == "pcg64" and res["summary"]["consistency"] < 1e-3


def test_transform_seed_enters_the_settings_only_where_it_draws(tiny):
    """--seed seeds the per-step choice among several transforms; elsewhere it must not change the
    fingerprint (folders made with other seeds would be refused for nothing)."""
    def settings(*extra):
        argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--path_y", "faces", "--deg", "denoising",
                "--seed", "3", "-i", "ts", *FAST, *extra]
        return restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu").settings

    assert settings()["transform_seed"] == 0
    assert settings("--EquS")["transform_seed"] == 0
    assert settings("--EquS", "--transform", "random")["transform_seed"] == 3


def test_usage_error_is_one_line(tiny, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", tiny.config, "--deg", "denoising"])
    assert exc.value.code == 2
    assert "--path_y" in _one_line(capsys.readouterr().err)


def test_entry_point_exit_status(tiny):
    proc = subprocess.run([sys.executable, "main.py", "--config", tiny.config, "--path_y", "faces", "--exp",
                           str(tiny.exp), "--deg", "denoising", "--sigma_y", "-1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert _one_line(proc.stderr).startswith("error: --sigma_y must be a number >= 0")


# ------------------------------------------------------------------ metrics offline, device

def test_offline_metrics_are_null_with_one_warning_each(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "--sigma_y", "0.1",
                         "--add_noise", "--subset_end", "2", "-i", "offline", fast=False)
    assert rc == 0, err
    s = results(tiny, "offline")["summary"]
    warnings = [l for l in err.splitlines() if l.startswith("warning:")]
    if not metrics.backbone_cached("vgg"):
        assert s["lpips"] is None and s["lpips_official"] is None
        assert sum("LPIPS" in w for w in warnings) == 1
    else:
        assert s["lpips"] is not None and s["lpips_official"] is not None
    if not metrics.backbone_cached("fid"):
        assert s["fid"] is None and sum("FID" in w for w in warnings) == 1 and s["fid_num_images"] == 0
    assert s["num_images"] == 2 and np.isfinite(s["psnr"])


def test_device_default_is_decided_at_run_time(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert restoration.resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert restoration.resolve_device(None) == torch.device("cuda")
    assert restoration.resolve_device("cpu") == torch.device("cpu")


def test_class_labels_come_from_the_list_file(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--config", tiny.config_imagenet, "--path_y", "imagenet", "--deg",
                         "sr_bicubic", "-i", "inet_list")
    assert rc == 0, err
    imgs = results(tiny, "inet_list")["images"]
    assert [(r["name"], r["label"], r["index"]) for r in imgs] == [
        ("ILSVRC2012_val_00000001", 1, 0), ("ILSVRC2012_val_00000000", 0, 1)]


def test_unlabelled_images_for_a_class_conditional_model_are_refused_before_anything(tiny, capsys):
    def refused(base_config, name, path_y, **model):
        cfg = yaml.safe_load(Path(base_config).read_text())
        # the refusal comes before any load or download
        cfg["model"].update(class_cond=True, checkpoint="logs/never_loaded.ckpt", **model)
        (tiny.root / f"{name}.yml").write_text(yaml.safe_dump(cfg))
        rc, _, err = run_cli(tiny, capsys, "--config", tiny.root / f"{name}.yml", "--path_y", path_y, "--deg",
                             "denoising", "-i", name)
        assert rc == 2 and not (tiny.exp / "image_samples" / name).exists()
        return _one_line(err)

    line = refused(tiny.config, "cond_unlabelled", "faces")
    assert "class-conditional" in line and "3 image(s)" in line
    line = refused(tiny.config_imagenet, "cond_range", "imagenet", num_classes=1)  # a class the model lacks
    assert "class label 1" in line and "1 classes" in line


# ------------------------------------------------------------------ evaluation.sh and docs

def _evaluation_lines():
    lines = []
    for raw in (REPO / "evaluation.sh").read_text().splitlines():
        if raw.startswith("python main.py"):
            lines.append(shlex.split(raw)[2:])
    return lines


def _swap(args, tiny):
    """The line with the model swapped for the tiny one (and made fast)."""
    out = list(args)
    i = out.index("--config")
    out[i + 1] = tiny.config_imagenet if out[i + 1].startswith("imagenet") else tiny.config
    return out + ["--exp", str(tiny.exp), "--steps", "2", "--subset_end", "1", *FAST]


def test_evaluation_sh_holds_the_official_lines_and_the_paper_grid():
    lines = [" ".join(l) for l in _evaluation_lines()]
    official = [l for l in lines if "--sampler" not in l and "Equ" not in l]
    assert len(official) >= 18
    for deg in ("deblur_gauss", "cs_blockbased", "inpainting", "sr_bicubic", "colorization"):
        for ds in ("celeba_hq.yml", "imagenet_256.yml"):
            here = [l for l in lines if f"--deg {deg}" in l and ds in l and "--sigma_y 0." in l]
            kinds = {("ddrm" if "--sampler ddrm" in l else "ddnm", "--EquSplus" in l) for l in here}
            assert kinds == {("ddnm", False), ("ddnm", True), ("ddrm", False), ("ddrm", True)}, (deg, ds)
    assert any("--add_noise" in l and "--sigma_y 0.2" in l for l in lines)
    outputs = [l[l.index("-i") + 1] for l in _evaluation_lines()]
    assert len(outputs) == len(set(outputs))  # no two experiments share a folder


def test_evaluation_sh_lines_run(tiny, capsys):
    """Every line as written (plain, and the official ones with --EquS / --EquSplus added)."""
    lines = _evaluation_lines()
    official = [l for l in lines if "--sampler" not in l and not any("EquS" in a for a in l)]
    jobs = [(_swap(l, tiny), "") for l in lines]
    jobs += [(_swap(l, tiny) + [flag], flag[2:]) for l in official for flag in ("--EquS", "--EquSplus")]
    assert len(jobs) == len(lines) + 2 * len(official)
    for args, suffix in jobs:
        i = args.index("-i") + 1
        args[i] = f"eval_{args[i]}_{suffix}"
        rc = cli.main(args)
        err = capsys.readouterr().err
        assert rc == 0, (args, err)


def test_docs_cover_every_flag():
    docs = (REPO / "docs" / "cli.md").read_text()
    for action in cli.build_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in docs, opt


def test_builtin_mask_is_announced_and_travel_from_enters_settings_only_with_travel(tiny, tmp_path):
    """Inpainting without --mask and without <exp>/inp_masks/mask.npy says it uses the built-in
    mask; the time-travel source enters the settings only where a step travels."""
    def plan(exp, *extra):
        argv = ["--ni", "--config", tiny.config, "--exp", str(exp), "--path_y", "faces", "--deg", "inpainting",
                "-i", "mk", *FAST, *extra]
        return restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu")

    assert not any("built-in default mask" in n for n in plan(tiny.exp).notes)      # exp/inp_masks/mask.npy
    bare = tmp_path / "exp"
    (bare / "datasets").mkdir(parents=True)
    (bare / "datasets" / "faces").symlink_to(tiny.exp / "datasets" / "faces", target_is_directory=True)
    assert any("built-in default mask" in n for n in plan(bare).notes)
    assert plan(bare, "--mask", "box:0.25").settings["mask"] == "box:0.25"
    assert not any("built-in default mask" in n for n in plan(bare, "--mask", "box:0.25").notes)
    assert "travel_from" not in plan(tiny.exp).settings
    assert plan(tiny.exp, "--travel_length", "1", "--travel_repeat", "2", "--steps", "3").settings["travel_from"] == "x0"


@pytest.mark.parametrize("where", ["same", "inside", "around", "a results folder"])
def test_an_output_folder_overlapping_the_dataset_is_refused_and_nothing_is_touched(tiny, capsys, tmp_path, where):
    ds = tmp_path / "ds"
    _image(ds / "a.png", (32, 32), 3)
    if where == "a results folder":     # an earlier run's folder given as input and output: its grid.png
        _image(ds / "grid.png", (32, 32), 4)
    files = sorted(p.name for p in ds.rglob("*"))
    before = (ds / "a.png").read_bytes()
    out = {"same": ds, "inside": ds / "out", "around": tmp_path, "a results folder": ds}[where]
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", str(out))
    assert rc == 2 and "overlap" in _one_line(err)
    assert sorted(p.name for p in ds.rglob("*")) == files and (ds / "a.png").read_bytes() == before


def test_a_dataset_that_changed_between_run_and_resume_is_refused(tiny, capsys, tmp_path):
    """Image i's seed is its index: a file added in front of a finished one moves it, and resuming
    would mix records made at the old indices with new ones."""
    ds = tmp_path / "grow"
    _image(ds / "b.png", (32, 32), 4)
    _image(ds / "c.png", (32, 32), 5)
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "grow", "--subset_end", "1")
    assert rc == 0, err
    first = [r["name"] for r in results(tiny, "grow")["images"]]
    _image(ds / "a.png", (32, 32), 6)          # a third file: the (CelebA, shuffled) order moves the first one
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "grow")
    assert rc == 2 and "dataset changed" in _one_line(err) and f"{first[0]} was image 0 and is now image" in err
    assert [r["name"] for r in results(tiny, "grow")["images"]] == first       # nothing new was written
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "grow", "--overwrite")
    assert rc == 0, err
    assert sorted(r["index"] for r in results(tiny, "grow")["images"]) == [0, 1, 2]


def test_an_average_over_a_set_that_is_not_a_group_is_announced(tiny):
    def notes(*extra):
        argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--path_y", "faces", "--deg", "denoising",
                "-i", "avg", *FAST, "--equs_mode", "average", *extra]
        return restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu").notes

    assert any("not over a group" in n and "rot90 after rot90" in n for n in notes("--transform", "rot90"))
    assert not any("not over a group" in n for n in notes("--transform", "d4"))


def test_ddrm_schedule_enters_the_settings_only_where_it_changed(tiny):
    """DDRM's own step list differs from the old (DDNM's) one only when steps does not divide T:
    only those folders must be refused on resume."""
    def settings(steps):
        argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--path_y", "faces", "--deg", "denoising",
                "-i", "ddrm", *FAST, "--sampler", "ddrm", "--steps", str(steps)]
        return restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu").settings

    assert settings(30)["ddrm_schedule"] == "range" and "ddrm_schedule" not in settings(20)


def test_the_same_run_spelled_another_way_resumes(tiny, capsys):
    """A spelled-out default --deg_scale, or an EquS transform without EquS, cannot change the run:
    the folder resumes instead of being refused (whose message suggested discarding it)."""
    base = ["--path_y", "faces", "--deg", "sr_averagepooling", "-i", "spelled"]
    rc, _, err = run_cli(tiny, capsys, *base, "--subset_end", "1")
    assert rc == 0, err
    fingerprint = json.loads((folder(tiny, "spelled").root / "run.json").read_text())["fingerprint"]
    rc, _, err = run_cli(tiny, capsys, *base, "--subset_end", "2", "--deg_scale", "4", "--transform", "vflip")
    assert rc == 0, err
    res = results(tiny, "spelled")
    assert res["fingerprint"] == fingerprint and len(res["images"]) == 2
    rc, _, err = run_cli(tiny, capsys, *base, "--deg_scale", "2")          # a real change is still refused
    assert rc == 2 and "deg_scale" in _one_line(err)
    # the dataset by its path instead of its name under exp/datasets, and --ckpt naming the config's own
    # checkpoint file: the same run
    rc, _, err = run_cli(tiny, capsys, "--path_y", tiny.exp / "datasets" / "faces", "--deg", "sr_averagepooling",
                         "-i", "spelled", "--subset_end", "3", "--ckpt", tiny.exp / "logs" / "tiny.ckpt")
    assert rc == 0, err
    res = results(tiny, "spelled")
    assert res["fingerprint"] == fingerprint and len(res["images"]) == 3


def test_a_first_step_that_amplifies_the_eps_error_is_announced(tiny):
    """EquS+'s schedule with few steps jumps from t = 998 to far lower noise; unclipped, the demo prior
    then gives 6 dB on 4x SR (7 steps). The plan says so, and stays quiet with --clip_x0 or enough steps."""
    def notes(*extra):
        argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--path_y", "faces", "--deg", "denoising",
                "-i", "few", *FAST, *extra]
        return [n for n in restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu").notes
                if "first step" in n]

    five = notes("--EquSplus", "--steps", "5")
    assert len(five) == 1 and "t = 998 to t = 561" in five[0] and "by 31 " in five[0] and "--clip_x0" in five[0]
    assert notes("--EquSplus", "--steps", "5", "--clip_x0") == []
    assert notes("--EquSplus", "--steps", "10") == []
    assert notes("--steps", "5") == []          # the uniform schedule starts at t = 800: gain 4


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_folder_whose_run_json_is_lost_still_refuses_other_settings(tiny, capsys, damage):
    name = f"lost_{damage}"
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", name)
    assert rc == 0, err
    out = folder(tiny, name)
    if damage == "truncate":
        out.run_json.write_text(out.run_json.read_text()[:40])
    else:
        out.run_json.unlink()
    before = {k: v for k, v in snapshot(out.root).items() if k != "run.json"}
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", name, "--eta", "0.5")
    line = _one_line(err)
    assert rc == 2 and "3 result(s) made with other settings" in line
    assert ("damaged" if damage == "truncate" else "missing") in line and "--overwrite" in line
    assert {k: v for k, v in snapshot(out.root).items() if k != "run.json"} == before      # nothing touched
    rc, log, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", name)   # the same command
    assert rc == 0, err
    assert "3 already done" in log + err and json.loads(out.run_json.read_text())["fingerprint"]


def test_a_damaged_output_image_is_restored_again(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "torn")
    assert rc == 0, err
    out = folder(tiny, "torn")
    name = results(tiny, "torn")["images"][0]["name"]
    whole = out.restored(name).read_bytes()
    out.restored(name).write_bytes(whole[: len(whole) // 2])        # a half-written file left by hand or a full disk
    out.orig(sorted(results(tiny, "torn")["images"], key=lambda r: r["name"])[-1]["name"]).write_bytes(b"")
    rc, log, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "torn")
    assert rc == 0, err
    assert "3 images, 1 already done" in log + err
    assert out.restored(name).read_bytes() == whole                # restored again, the same per-image seed


def test_output_files_follow_the_umask(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "modes")
    assert rc == 0, err
    from runners.results import FILE_MODE
    out = folder(tiny, "modes")
    for p in [out.run_json, out.results_json, *out.root.glob("*.png"), *out.records_dir.glob("*.json")]:
        assert p.stat().st_mode & 0o777 == FILE_MODE, p


def test_an_unwritable_output_folder_is_one_line_naming_it(tiny, capsys, monkeypatch):
    import runners.results

    def refuse(dir=None, **kw):     # what mkstemp raises in a read-only folder (root would not get it)
        raise PermissionError(13, "Permission denied", os.path.join(dir, ".x.abc123.tmp"))

    monkeypatch.setattr(runners.results.tempfile, "mkstemp", refuse)
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "ro")
    line = _one_line(err)
    assert rc == 2 and line.startswith("error: cannot write into ") and "image_samples" in line
    assert ".tmp" not in err and "-i" in line


def test_an_input_replaced_under_the_same_name_is_refused_on_resume(tiny, capsys, tmp_path):
    ds = tmp_path / "edited"
    for i in range(2):
        _image(ds / f"e{i}.png", (32, 32), 30 + i)
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "edited")
    assert rc == 0, err
    before = snapshot(folder(tiny, "edited").root)
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "edited")   # unchanged: resumes
    assert rc == 0, err
    _image(ds / "e1.png", (32, 32), 99)                        # other content, same name
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "edited")
    line = _one_line(err)
    assert rc == 2 and "dataset changed" in line and "e1.png has new content" in line and "--overwrite" in line
    after = snapshot(folder(tiny, "edited").root)
    assert {k: v for k, v in after.items() if k.endswith(".png")} == {k: v for k, v in before.items() if k.endswith(".png")}
    rc, _, err = run_cli(tiny, capsys, "--path_y", str(ds), "--deg", "denoising", "-i", "edited", "--overwrite")
    assert rc == 0, err


def test_temporaries_left_by_a_kill_are_removed_by_the_next_run(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "tmps")
    assert rc == 0, err
    out = folder(tiny, "tmps")
    stale, fresh = out.root / ".results.json.ab12cd.tmp", out.records_dir / ".x.json.ef34gh.tmp"
    for p in (stale, fresh):
        p.write_text("{")
    os.utime(stale, (0, 0))                                   # cut short long ago
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "-i", "tmps")
    assert rc == 0, err
    assert not stale.exists() and fresh.exists()              # a fresh one may belong to a live write


def test_the_other_settings_error_lists_only_what_blocks_resuming(tiny, capsys):
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "4",
                         "-i", "diffs")
    assert rc == 0, err
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "sr_averagepooling", "-i", "diffs",
                         "--eta", "0.5")
    line = _one_line(err)
    assert rc == 2 and "eta: 0.85 -> 0.5" in line and "deg_scale" not in line


@pytest.mark.parametrize("failing", [0, 2])
def test_evaluation_sh_runs_every_line_and_exits_1_when_one_failed(tmp_path, failing):
    """A fake `python` on PATH records each call; the first `failing` main.py calls fail."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    log = tmp_path / "calls"
    fake.write_text(f'#!/usr/bin/env bash\necho "$1" >> {log}\n'
                    f'if [ "$1" = main.py ] && [ "$(grep -c main.py {log})" -le {failing} ]; then exit 2; fi\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "evaluation.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    calls = log.read_text().split()
    assert calls.count("main.py") == 62 and calls[-1] == "-m"          # every run, then the summary
    assert proc.returncode == (1 if failing else 0), proc.stderr
    assert (f"{failing} command(s) failed" in proc.stderr) == bool(failing)


# ------------------------------------------------------------------ flags that change the numbers

def _plan(tiny, *args):
    argv = ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), *FAST, *map(str, args)]
    parsed = cli.build_parser().parse_args(argv)
    return restoration.make_plan(parsed, argv, device_name="cpu")


@pytest.mark.parametrize("flags, field, value", [
    (["--steps", "7"], "steps", 7),
    (["--timesteps", "7"], "steps", 7),                       # the reference's name for it
    (["--sampler", "ddrm", "--etaB", "0.4"], "etaB", 0.4),
    (["--eta", "0.3"], "eta", 0.3),
    (["--EquS", "--schedule", "tas_dedup"], "schedule", "tas_dedup"),
    (["--EquSplus"], "schedule", "tas"),
    (["--EquS", "--eps_mapping", "consistent"], "eps_mapping", "consistent"),
    (["--EquS", "--transform", "rot90"], "transform", "rot90"),
    (["--equs_mode", "average", "--transform", "d4"], "equs", "average"),
    (["--sigma_y", "0.05"], "sigma_y", 0.1),                  # doubled into the model's [-1, 1] space
])
def test_sampling_flags_reach_the_sampler(tiny, flags, field, value):
    cfg = _plan(tiny, "--path_y", "faces", "--deg", "deblur_gauss", *flags, "-i", "flags").sampler_cfg
    assert getattr(cfg, field) == pytest.approx(value) if isinstance(value, float) else getattr(cfg, field) == value
    default = _plan(tiny, "--path_y", "faces", "--deg", "deblur_gauss", "-i", "flags").sampler_cfg
    assert getattr(default, field) != getattr(cfg, field)


def test_operator_flags_reach_the_operator(tiny):
    base = ["--path_y", "faces", "--deg", "deblur_gauss", "-i", "opflags"]
    default = _plan(tiny, *base).op
    changed = _plan(tiny, *base, "--lambda_mode", "svd", "--blur_svd", "matched").op
    assert (default.lambda_mode, default.blur_svd) == ("reference", "reference")
    assert (changed.lambda_mode, changed.blur_svd) == ("svd", "matched")
    # and the matched mode pairs the spectral coordinates with other singular values
    assert not torch.equal(default.singulars(), changed.singulars())


def _png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_the_seed_changes_the_samples_and_a_changed_seed_or_operator_is_not_resumed(tiny, capsys):
    common = ["--path_y", "faces", "--deg", "deblur_gauss", "--subset_end", "1"]
    for seed in (1, 2):
        rc, _, err = run_cli(tiny, capsys, *common, "--seed", seed, "-i", f"seed{seed}")
        assert rc == 0, err
    name = results(tiny, "seed1")["images"][0]["name"]
    a, b = (_png(folder(tiny, f"seed{s}").restored(name)) for s in (1, 2))
    assert np.abs(a - b).max() > 10                       # another x_T, another null-space content
    before = snapshot(folder(tiny, "seed1").root)
    for flags, change in ((["--seed", "2"], "seed: 1 -> 2"),
                          (["--seed", "1", "--lambda_mode", "svd"], "lambda_mode: 'reference' -> 'svd'"),
                          (["--seed", "1", "--blur_svd", "matched"], "blur_svd: 'reference' -> 'matched'")):
        rc, _, err = run_cli(tiny, capsys, *common, *flags, "-i", "seed1")
        line = _one_line(err)
        assert rc == 2 and change in line and "--overwrite" in line, line
    assert snapshot(folder(tiny, "seed1").root) == before


def test_saved_pngs_are_the_rounded_restorations(tiny, capsys):
    """restored.png is round(255 x) of the sampler's output in [0, 1], pixel for pixel (not
    mirrored, not truncated): against the library's restoration of the same images."""
    from functions.diffusion import make_betas
    from functions.noise import seed_for
    from runners import data as data_mod

    common = ["--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "2", "--subset_end", "2"]
    rc, _, err = run_cli(tiny, capsys, *common, "-i", "pngs")
    assert rc == 0, err
    plan = _plan(tiny, "--steps", "3", *common, "-i", "pngs_check")
    eps_model, _ = restoration.load_eps_model(plan)
    x01 = data_mod.load_batch(plan.items, plan.image_size, plan.preprocess)
    with torch.no_grad():
        x0 = samplers.restore(eps_model, plan.op, plan.op.A(x01 * 2 - 1), make_betas(plan.config["diffusion"]),
                              plan.sampler_cfg, seeds=[seed_for(1234, it.index) for it in plan.items]).x0
    expected = ((x0.reshape(x01.shape).clamp(-1, 1) + 1) / 2 * 255).permute(0, 2, 3, 1).numpy()
    for it, want in zip(plan.items, expected):
        got = _png(folder(tiny, "pngs").restored(it.name))
        assert np.abs(got - want).max() <= 0.5 + 1e-3     # rounded, not truncated nor mirrored


def test_add_noise_puts_noise_of_std_sigma_y_on_y(tiny, capsys):
    """--sigma_y is in [0, 1] image units: with --add_noise, y - A x has that std (the model sees twice it)."""
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "denoising", "--sigma_y", "0.1", "--add_noise",
                         "-i", "noise_std")
    assert rc == 0, err
    out = folder(tiny, "noise_std")
    diffs = []
    for rec in results(tiny, "noise_std")["images"]:
        clean, noisy = _png(out.orig(rec["name"])) / 255, _png(out.apy(rec["name"])) / 255   # A^+ y = y here
        mid = (clean > 0.35) & (clean < 0.65)             # away from the [0, 1] clipping
        diffs.append((noisy - clean)[mid])
    d = np.concatenate(diffs)
    assert d.size > 1000
    assert abs(d.mean()) < 0.01 and 0.09 < d.std() < 0.11


def test_lpips_and_fid_values_are_wired_to_the_right_images(tiny, capsys, monkeypatch):
    """Offline stand-ins for the two metrics: each record's lpips is the chosen net's value and
    lpips_official the official one, of its own restored image against its original; FID is of
    the restored folder against the originals, and the baseline FID of A^+ y against them."""
    class FakeLPIPS:
        def __init__(self, net, device, warn=print):
            self.net = net

        def correct(self, restored, original):          # stands for the chosen net
            return (restored - original).abs().flatten(1).mean(1).double()

        def official(self, restored, original):         # stands for VGG on [0, 1] inputs
            return (restored - original).square().flatten(1).mean(1).double()

    calls = []

    def fake_fid(files_a, files_b, device, warn=print):
        calls.append(([Path(f) for f in files_a], [Path(f) for f in files_b]))
        return 10.0 * len(calls)

    monkeypatch.setattr(metrics, "LPIPSMetric", FakeLPIPS)
    monkeypatch.setattr(metrics, "fid_from_files", fake_fid)
    rc, _, err = run_cli(tiny, capsys, "--path_y", "faces", "--deg", "sr_averagepooling", "--deg_scale", "2",
                         "--lpips_net", "alex", "-i", "wired", fast=False)
    assert rc == 0, err
    out, res = folder(tiny, "wired"), results(tiny, "wired")
    names = [r["name"] for r in res["images"]]
    for rec in res["images"]:
        restored, orig = _png(out.restored(rec["name"])) / 255, _png(out.orig(rec["name"])) / 255
        assert rec["lpips"] == pytest.approx(np.abs(restored - orig).mean(), abs=2e-3)
        assert rec["lpips_official"] == pytest.approx(np.square(restored - orig).mean(), abs=2e-3)
    assert res["summary"]["lpips"] == pytest.approx(np.mean([r["lpips"] for r in res["images"]]))
    assert [c[0] for c in calls] == [[out.restored(n) for n in names], [out.apy(n) for n in names]]
    assert all(c[1] == [out.orig(n) for n in names] for c in calls)
    assert (res["summary"]["fid"], res["summary"]["baseline"]["fid"]) == (10.0, 20.0)
    assert res["summary"]["fid_num_images"] == len(names)


def test_images_that_preprocessing_enlarges_or_stretches_are_announced(tiny, tmp_path):
    """CelebA-HQ configs resize to a square without cropping: non-square faces are stretched; an
    image smaller than the model's size is enlarged. The plan says so (the run goes on)."""
    def notes(config, path_y):
        argv = ["--ni", "--config", config, "--exp", str(tiny.exp), "--path_y", str(path_y), "--deg", "denoising",
                "-i", "shapes", *FAST]
        return [n for n in restoration.make_plan(cli.build_parser().parse_args(argv), argv, device_name="cpu").notes
                if "images are" in n]

    (faces,) = notes(tiny.config, "faces")            # 40x48, 64x64 and 50x36 faces at 32x32
    assert "2 of 3 images are not square, stretched to 32x32" in faces and "enlarged" not in faces
    assert notes(tiny.config_imagenet, "imagenet") == []     # cropped to a square first; none smaller
    _image(tmp_path / "small" / "s.png", (8, 8), 5)
    _image(tmp_path / "small" / "t.png", (40, 40), 6)
    (small,) = notes(tiny.config, tmp_path / "small")
    assert small == "note: 1 of 2 images are smaller than 32 on a side, enlarged (e.g. s, 8x8)"


def test_one_dataset_or_checkpoint_spelled_two_ways_is_one_run(tiny, capsys, monkeypatch):
    """The dataset is recorded by its name under exp/datasets however it was given; a --ckpt naming the
    config's own file resumes a folder made before that was recorded as no --ckpt; two spellings of
    one checkpoint file resume each other."""
    import runners.plan

    assert _plan(tiny, "--path_y", tiny.exp / "datasets" / "faces", "--deg", "denoising",
                 "-i", "by_path").settings["path_y"] == "faces"
    common = ["--path_y", "faces", "--deg", "denoising", "--ckpt", tiny.exp / "logs" / "tiny.ckpt", "-i", "old_ckpt"]
    with monkeypatch.context() as m:       # how the folder was recorded before: the raw --ckpt string
        m.setattr(runners.plan, "_ckpt_setting", lambda args, config: args.ckpt)   # where make_plan calls it
        assert run_cli(tiny, capsys, *common, "--subset_end", "1")[0] == 0
    made = json.loads(folder(tiny, "old_ckpt").run_json.read_text())
    assert made["settings"]["ckpt"] == str(tiny.exp / "logs" / "tiny.ckpt")
    rc, _, err = run_cli(tiny, capsys, *common, "--subset_end", "2")
    assert rc == 0, err
    res = results(tiny, "old_ckpt")
    assert res["fingerprint"] == made["fingerprint"] and len(res["images"]) == 2

    (tiny.root / "ft").mkdir(exist_ok=True)
    (tiny.root / "ft" / "ft.ckpt").write_bytes((tiny.exp / "logs" / "tiny.ckpt").read_bytes())
    other = ["--path_y", "faces", "--deg", "denoising", "-i", "ft_ckpt"]
    assert run_cli(tiny, capsys, *other, "--subset_end", "1", "--ckpt", tiny.root / "ft" / "ft.ckpt")[0] == 0
    rc, _, err = run_cli(tiny, capsys, *other, "--subset_end", "2", "--ckpt", f"{tiny.root}/ft/../ft/./ft.ckpt")
    assert rc == 0, err
    assert len(results(tiny, "ft_ckpt")["images"]) == 2
    rc, _, err = run_cli(tiny, capsys, *other, "--subset_end", "2")     # without it: another model
    assert rc == 2 and "ckpt" in _one_line(err)
