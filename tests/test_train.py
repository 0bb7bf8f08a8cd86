"""The training command: train a few steps, save, resume, load through a config, restore;
and the committed demo weights load strictly through configs/demo.yml."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from guided_diffusion.checkpoints import load_weights, resolve_checkpoint
from guided_diffusion.models import build_model, load_config
from runners.train import learning_rate, main as train_main

ROOT = Path(__file__).resolve().parents[1]


def _tiny_config(tmp_path: Path, checkpoint: Path) -> Path:
    config = load_config("demo.yml")
    config["data"]["image_size"] = 16
    config["model"].update(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8])
    config["model"].pop("bundled_checkpoint", None)
    config["model"]["checkpoint"] = str(checkpoint)
    config["time_travel"]["T_sampling"] = 3
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _images(folder: Path):
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(3):
        img = np.stack([(np.sin(xx / (3 + i)) + 1) * 120, (np.cos(yy / (4 + i)) + 1) * 120, (xx + yy) * 2 % 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")


def test_train_resume_load_and_restore(tmp_path):
    _images(tmp_path / "data")
    out = tmp_path / "run"
    export = tmp_path / "exported" / "ema.pt"
    config = _tiny_config(tmp_path, export)
    common = ["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out), "--batch_size", "4",
              "--lr", "2e-3", "--ema", "0.5", "--seed", "3", "--save_every", "5", "--export", str(export)]
    assert train_main(common + ["--steps", "10"]) == 0
    first = torch.load(out / "train_state.pt", weights_only=True)
    assert first["step"] == 10 and len(first["losses"]) == 10
    assert not list(out.glob("*.tmp")) and not list(export.parent.glob("*.tmp"))

    assert train_main(common + ["--steps", "20"]) == 0          # resumes at step 10
    state = torch.load(out / "train_state.pt", weights_only=True)
    losses = state["losses"]
    assert state["step"] == 20 and len(losses) == 20 and losses[:10] == first["losses"]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])   # the eps loss went down

    # the exported EMA weights load strictly through the config and restore an image
    cfg = load_config(config)
    model = build_model(cfg)
    load_weights(model, resolve_checkpoint(cfg, exp=tmp_path, download=False))
    exp = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "main.py", "--config", str(config), "--path_y", str(tmp_path / "data"),
                           "--deg", "sr_averagepooling", "--deg_scale", "2", "-i", "tiny", "--exp", str(exp),
                           "--lpips_net", "none", "--no_fid", "--EquS"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"PSNR \(dB\)\s+\d+\.\d\d\s+\d+\.\d\d", proc.stdout)    # result beside the A^+y baseline
    summary = json.loads((exp / "image_samples" / "tiny" / "results.json").read_text())["summary"]
    assert summary["num_images"] == 3 and summary["nfe"] == 3 and summary["psnr"] > 0


def test_training_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config = _tiny_config(tmp_path, tmp_path / "x.pt")
    code = train_main(["--config", str(config), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert code == 2 and "no images found" in capsys.readouterr().err


def test_the_demo_training_set_is_written_on_first_use(tmp_path):
    """README's training command names exp/datasets/demo_train, which a fresh clone does not have."""
    from runners.train_data import load_folder

    paths, images = load_folder(str(tmp_path / "exp" / "datasets" / "demo_train"))
    assert sorted(p.stem for p in paths) == sorted(
        ["astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina"])
    assert all(im.shape[0] == 3 and 0 <= im.min() and im.max() <= 1 for im in images)
    from runners.results import UMASK      # a folder others can read, as mkdir would make it
    assert (tmp_path / "exp" / "datasets" / "demo_train").stat().st_mode & 0o777 == 0o777 & ~UMASK
    with pytest.raises(ValueError, match="no images found"):   # any other missing folder is still an error
        load_folder(str(tmp_path / "elsewhere"))


def test_committed_demo_weights_load_strictly():
    config = load_config("demo.yml")
    path = resolve_checkpoint(config, download=False)
    assert path == ROOT / "weights" / "demo_ema.pt" and path.stat().st_size < 20_000_000
    model = load_weights(build_model(config), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_gpu_recipe_flags_train_and_resume_on_cpu(tmp_path):
    """The GPU recipe (crop bank, warmup, channels_last, bf16 autocast) is device-agnostic:
    it trains on CPU, lowers the loss, and a resumed run continues the same sequence."""
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "ema.pt")

    def run(out, steps):
        return train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out),
                           "--batch_size", "8", "--lr", "2e-3", "--ema", "0.5", "--seed", "1", "--steps", str(steps),
                           "--crop_bank", "64", "--warmup", "3", "--channels_last", "--amp", "bf16",
                           "--log_every", "4", "--save_every", "6"])

    assert run(tmp_path / "a", 12) == 0
    straight = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    assert straight["step"] == 12 and len(straight["losses"]) == 12
    assert np.mean(straight["losses"][-3:]) < np.mean(straight["losses"][:3])
    assert run(tmp_path / "b", 6) == 0 and run(tmp_path / "b", 12) == 0   # stop at 6, resume to 12
    resumed = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert resumed["losses"][:6] == straight["losses"][:6]
    assert np.allclose(resumed["losses"], straight["losses"], rtol=1e-4, atol=1e-6)


def test_learning_rate_warms_up_then_anneals_to_its_final_share():
    lrs = [learning_rate(s, 1e-3, 10, "cosine", 100, 0.05) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)                                  # a tenth of the warmup, cosine at 1
    assert lrs[-1] == pytest.approx(0.05e-3)
    assert all(b <= a for a, b in zip(lrs[9:], lrs[10:]))                 # decreasing after the warmup
    assert lrs[50] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 50 / 99))))
    assert [learning_rate(s, 1e-3, 4, "none", 100, 0.05) for s in (0, 3, 99)] == [2.5e-4, 1e-3, 1e-3]


@pytest.mark.parametrize("flag,value", [("--save_every", "0"), ("--batch_size", "0"), ("--steps", "0"),
                                        ("--lr", "-0.0001"), ("--ema", "1.5"), ("--crop_bank", "-1"),
                                        ("--threads", "-1"), ("--export", "FILE/ema.pt")])
def test_bad_training_flags_are_one_line_before_anything_is_written(tmp_path, capsys, flag, value):
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "x.pt")
    (tmp_path / "FILE").write_text("a file where a folder should be")
    value = value.replace("FILE", str(tmp_path / "FILE"))
    code = train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                       flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: " + flag)
    assert not (tmp_path / "o").exists()


def test_a_usage_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runners.train", "--config", "demo.yml", "--data", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--steps", "many"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "--steps" in err[0] and "many" in err[0]


def test_a_state_of_another_model_is_refused_in_one_line(tmp_path, capsys):
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "x.pt")
    (tmp_path / "o").mkdir()
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "o" / "train_state.pt")
    before = (tmp_path / "o" / "train_state.pt").read_bytes()
    code = train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                       "--steps", "2", "--batch_size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot be resumed" in err[-1] and "train_state.pt" in err[-1]
    assert (tmp_path / "o" / "train_state.pt").read_bytes() == before   # nothing overwritten


def test_cosine_schedule_resumes_exactly_and_refuses_other_lengths(tmp_path, capsys):
    """A run cut short (--minutes 0 stops after one step) and resumed gives the straight
    run's losses; resuming with another --steps would change the schedule, so it is refused."""
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "ema.pt")

    def run(out, steps, *extra):
        return train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out),
                           "--batch_size", "4", "--lr", "2e-3", "--ema", "0.5", "--seed", "3", "--steps", str(steps),
                           "--lr_decay", "cosine", "--warmup", "2", "--log_every", "1", *extra])

    assert run(tmp_path / "a", 8) == 0
    straight = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)
    assert straight["lr_schedule"] == "cosine over 8"
    assert run(tmp_path / "b", 8, "--minutes", "0") == 0
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)["step"] == 1
    assert run(tmp_path / "b", 8) == 0
    resumed = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert resumed["step"] == 8
    assert np.allclose(resumed["losses"], straight["losses"], rtol=1e-4, atol=1e-6)
    capsys.readouterr()
    assert run(tmp_path / "b", 16) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cosine over 8" in err and "--steps" in err


def test_crop_bank_draws_flipped_crops_from_its_pool():
    from runners.train_data import CropBank, CropSampler

    img = torch.arange(3 * 20 * 24, dtype=torch.float32).reshape(3, 20, 24) / (3 * 20 * 24)
    bank = CropBank(CropSampler([img], 8, generator=torch.Generator().manual_seed(0)), 10, "cpu", dtype=torch.float32)
    assert bank.bank.shape == (10, 3, 8, 8) and bank.bank.min() >= -1 and bank.bank.max() <= 1
    g = torch.Generator().manual_seed(5)
    batch = bank.sample(64, g)
    pool = torch.cat([bank.bank, bank.bank.flip(-1)])
    # every drawn crop is a pool crop or its mirror image, and both orientations occur
    match = (batch[:, None] - pool[None]).abs().flatten(2).amax(-1) < 1e-6
    assert match.any(1).all()
    assert match[:, :10].any(1).any() and match[:, 10:].any(1).any()
    again = bank.sample(64, torch.Generator().manual_seed(5))
    assert torch.equal(batch, again)


def test_exported_ema_is_the_normalised_average_of_the_trained_weights(tmp_path):
    """The EMA starts from zero and is divided by 1 - decay^n on export, so it holds no share of
    the random init (an EMA from the init keeps decay^n of it: 19% of the demo prior's first
    weights). Checked against the weights after each step, one resumed run per step."""
    _images(tmp_path / "data")
    out, config = tmp_path / "run", _tiny_config(tmp_path, tmp_path / "unused.pt")
    common = ["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out), "--batch_size", "2",
              "--lr", "1e-2", "--ema", "0.9", "--seed", "1"]
    weights = []
    for n in (1, 2, 3):
        assert train_main(common + ["--steps", str(n)]) == 0
        weights.append(torch.load(out / "train_state.pt", weights_only=True)["model"])
    ema = torch.load(out / "ema.pt", weights_only=True)
    names = [n for n in weights[0] if n.endswith(("weight", "bias"))]
    factors = [0.1 * 0.9 ** 2, 0.1 * 0.9, 0.1]       # (1 - d) d^(n - k) for steps k = 1, 2, 3
    for name in names:
        expected = sum(f * w[name].double() for f, w in zip(factors, weights)) / (1 - 0.9 ** 3)
        assert torch.allclose(ema[name].double(), expected, rtol=2e-3, atol=2e-4), name   # fp16 export
    one = tmp_path / "one"
    assert train_main(common[:4] + ["--out", str(one)] + common[6:] + ["--steps", "1", "--ema", "0.999"]) == 0
    after_one = torch.load(one / "train_state.pt", weights_only=True)["model"]
    exported = torch.load(one / "ema.pt", weights_only=True)
    assert all(torch.allclose(exported[n].float(), after_one[n].float(), rtol=2e-3, atol=2e-4) for n in names)


def test_resume_applies_new_optimiser_flags_and_keeps_the_global_generator(tmp_path):
    """A resumed run uses this run's --lr / --weight_decay, and dropout (the global generator)
    continues where it stopped, so 2 + 2 steps equal 4 steps."""
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "unused.pt")
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["dropout"] = 0.2
    config.write_text(yaml.safe_dump(cfg))

    def run(out, steps, *extra):
        assert train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(out),
                           "--batch_size", "2", "--seed", "2", "--steps", str(steps), *extra]) == 0
        return torch.load(out / "train_state.pt", weights_only=True)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    assert resumed["losses"] == straight["losses"]
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    changed = run(tmp_path / "b", 5, "--lr", "3e-3", "--weight_decay", "0.25")
    assert [(g["lr"], g["weight_decay"]) for g in changed["opt"]["param_groups"]] == [(3e-3, 0.25)]


def test_sixteen_bit_training_images_keep_their_range(tmp_path):
    from runners.train_data import load_folder

    folder = tmp_path / "grey16"
    folder.mkdir()
    Image.fromarray(np.linspace(0, 30000, 1024).reshape(32, 32).astype(np.uint16)).save(folder / "g.png")
    _, images = load_folder(folder)
    assert abs(float(images[0].max()) - 30000 / 65535) < 0.01 and float(images[0].mean()) < 0.3


def test_ema_from_init_keeps_the_reference_ema_and_is_not_resumed_as_the_other(tmp_path, capsys):
    """--ema_from init is DDPM's EMA (from the initial weights, undivided): after one step at 0.999
    it is still 99.9% the init. A state made one way is not resumed the other way."""
    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "unused.pt")
    common = ["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
              "--batch_size", "2", "--lr", "1e-2", "--seed", "4", "--ema", "0.999", "--ema_from", "init"]
    assert train_main(common + ["--steps", "1"]) == 0
    torch.manual_seed(4)
    init = build_model(load_config(config)).state_dict()
    trained = torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)["model"]
    exported = torch.load(tmp_path / "o" / "ema.pt", weights_only=True)
    for name in (n for n in init if n.endswith("weight")):
        expected = 0.999 * init[name] + 0.001 * trained[name]
        assert torch.allclose(exported[name].float(), expected, rtol=2e-3, atol=2e-4), name
    capsys.readouterr()
    assert train_main(common[:-2] + ["--steps", "2", "--ema_from", "zero"]) == 2     # the other kind: refused
    assert "--ema_from init" in capsys.readouterr().err
    assert train_main(common[:-2] + ["--steps", "2"]) == 0          # no flag: the state's kind (a state from
    state = torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)  # before the flag: init)
    assert state["step"] == 2 and state["ema_from"] == "init" and state["ema_norm"] == 1.0


def test_resuming_with_flags_that_change_the_run_is_refused_in_one_line(tmp_path, capsys):
    """--seed, --batch_size, --data, --ema, --rot90, ... decide what is trained: a resume with other
    values would mix two runs in one state (--lr and --weight_decay may change; see above)."""
    _images(tmp_path / "data")
    _images(tmp_path / "other")
    config = _tiny_config(tmp_path, tmp_path / "ema.pt")
    base = ["--config", str(config), "--out", str(tmp_path / "o"), "--lr", "2e-3", "--steps", "2"]
    same = ["--data", str(tmp_path / "data"), "--batch_size", "2", "--seed", "3", "--ema", "0.5"]
    assert train_main(base + same) == 0
    before = (tmp_path / "o" / "train_state.pt").read_bytes()
    for flag, value in [("--seed", "4"), ("--batch_size", "3"), ("--data", str(tmp_path / "other")),
                        ("--ema", "0.9"), ("--min_scale", "0.5")]:
        argv = base + same + [flag, value]
        argv[argv.index("--steps") + 1] = "4"
        capsys.readouterr()
        assert train_main(argv) == 2, flag
        err = capsys.readouterr().err.strip().splitlines()
        assert flag in err[-1] and "start a new --out" in err[-1] and len(err) == 1, (flag, err)
        assert (tmp_path / "o" / "train_state.pt").read_bytes() == before       # nothing trained or written
    argv = base + same + ["--lr", "1e-3"]
    argv[argv.index("--steps") + 1] = "3"
    assert train_main(argv) == 0                                                  # --lr may change
    assert torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)["step"] == 3


def test_an_unwritable_out_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import runners.train

    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "ema.pt")

    def refuse(dir=None, **kw):         # what a read-only folder gives (root would be let through)
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(runners.train.tempfile, "mkstemp", refuse)
    steps = []
    monkeypatch.setattr(runners.train, "learning_rate", lambda *a: steps.append(1) or 1e-3)
    code = train_main(["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "ro"),
                       "--steps", "3", "--batch_size", "2", "--warmup", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "cannot write there" in err[0]
    assert steps == []                                                           # not one step was taken


def test_a_refused_save_is_one_line(tmp_path, monkeypatch):
    import runners.train

    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(runners.train.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*ema\.pt: \[enforce fail"):
        runners.train.save_atomic({}, tmp_path / "ema.pt")
    assert not (tmp_path / "ema.pt").exists()


def test_ctrl_c_saves_the_state_and_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    import runners.train

    _images(tmp_path / "data")
    config = _tiny_config(tmp_path, tmp_path / "ema.pt")
    calls = []
    real = runners.train.learning_rate

    def interrupt_third_step(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(runners.train, "learning_rate", interrupt_third_step)
    argv = ["--config", str(config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
            "--steps", "50", "--batch_size", "2", "--warmup", "1", "--save_every", "1000"]
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted at step 2: saved {tmp_path / 'o' / 'train_state.pt'}; rerun the same command to resume"
    assert torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(runners.train, "learning_rate", real)
    argv[argv.index("--steps") + 1] = "4"
    assert train_main(argv) == 0
    assert torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)["step"] == 4
