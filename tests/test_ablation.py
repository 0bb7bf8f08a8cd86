"""The ablation script end to end on the committed demo prior (2 steps, 2 tasks, 2 rows)."""
import json
from pathlib import Path

import pytest
import torch

from runners import ablation


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_ablation_writes_tables_with_classical_and_mean_rows(tmp_path, two_threads):
    out = tmp_path / "abl"
    assert ablation.main(["--device", "cpu", "--steps", "2", "--seeds", "0", "1", "--tasks", "inpainting",
                          "sr_bicubic", "--rows", "DDNM", "DDNM-EquS", "--exp", str(tmp_path / "exp"),
                          "--out", str(out)]) == 0
    res = json.loads((out / "ablation.json").read_text())["results"]
    inp, sr = res["inpainting"], res["sr_bicubic"]
    assert "biharmonic (scikit-image)" in inp and "bicubic, made consistent with y" in sr
    # DDNM is in MEAN_ROWS, DDNM-EquS is not
    assert "DDNM, mean of 2 samples" in inp and not any(k.startswith("DDNM-EquS, mean") for k in inp)
    mean = inp["DDNM, mean of 2 samples"]
    assert mean["nfe"] == 2 * inp["DDNM"]["nfe"] and mean["seeds"] == 2
    # inpainting keeps the known pixels exactly, for the samples and for their mean
    assert inp["DDNM"]["consistency"][0] < 1e-3 and mean["consistency"][0] < 1e-3
    # the classical baselines are real restorations: better than A^+y on their task
    assert inp["biharmonic (scikit-image)"]["psnr"][0] > inp["A^+ y"]["psnr"][0] + 3
    assert sr["bicubic, made consistent with y"]["psnr"][0] >= sr["A^+ y"]["psnr"][0]
    # the spread is the sample std (ddof 1) of the per-seed means, which are kept
    per_seed = inp["DDNM"]["per_seed"]["psnr"]
    assert len(per_seed) == 2 and abs(inp["DDNM"]["psnr"][1] - abs(per_seed[0] - per_seed[1]) / 2 ** 0.5) < 1e-9
    assert (out / "ablation_grid.png").stat().st_size > 1000
    assert "| DDNM, mean of 2 samples |" in (out / "ablation.md").read_text()


def test_consistent_bicubic_upsamples_y_and_matches_it():
    """The SR baseline is bicubic upsampling of the low-resolution y, then A^+ of the residual:
    exactly consistent (before any clipping), and closer to the truth than the plain upsampling."""
    from functions.operators import build_operator

    size = 32
    op = build_operator("sr_bicubic", image_size=size, deg_scale=4)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    x = torch.stack([0.6 * torch.sin(2 * xx + yy), 0.5 * torch.cos(3 * yy), 0.4 * xx * yy])[None]
    y = op.A(x)
    base, label = ablation.classical("sr_bicubic", op, y, size)
    assert label == "bicubic, made consistent with y"
    assert (op.A(base) - y).abs().max() < 1e-4
    up = torch.nn.functional.interpolate(op._small_image(y), size=(size, size), mode="bicubic", align_corners=False)
    assert (op.A(up) - y).abs().max() > 1e-3                 # plain bicubic is not consistent ...
    assert (base - x).pow(2).mean() < (up - x).pow(2).mean()  # ... and the correction brings it closer


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps 0"),
    (["--eta", "-1"], "--eta -1"),
    (["--travel_length", "0"], "--travel_length 0"),
    (["--ckpt", "no/such.pt"], "--ckpt no/such.pt"),
    (["--path_y", "no_such_set"], "no_such_set"),
])
def test_bad_ablation_flags_are_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    from runners.ablation import main

    rc = main(["--out", str(tmp_path / "out"), "--exp", str(tmp_path / "exp"), "--tasks", "sr_bicubic",
               "--rows", "DDNM", "--seeds", "0", *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_ctrl_c_in_the_ablation_is_one_line(tmp_path, capsys, monkeypatch):
    import runners.ablation as ablation

    def interrupted(args, write):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run", interrupted)
    assert ablation.main(["--out", str(tmp_path / "ab"), "--steps", "2", "--seeds", "0"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: the rows finished so far are in {tmp_path / 'ab' / 'ablation.md'}"]


def test_a_rerun_keeps_the_earlier_tables_beside_the_new_ones(tmp_path, capsys, monkeypatch):
    import runners.ablation as ablation

    out = tmp_path / "ab"
    out.mkdir()
    for name, text in (("ablation.md", "old table"), ("ablation.json", "{}"), ("ablation_grid.png", "png")):
        (out / name).write_text(text)

    def fake_run(args, write):
        (Path(args.out) / "ablation.md").write_text("new table")
        (Path(args.out) / "ablation.json").write_text("{}")

    monkeypatch.setattr(ablation, "run", fake_run)
    for _ in range(2):
        assert ablation.main(["--out", str(out), "--steps", "2", "--seeds", "0"]) == 0
    err = capsys.readouterr().err
    kept = sorted(p.name for p in out.glob("ablation_*.md"))
    assert len(kept) == 2 and err.count("was kept as") == 2
    assert sorted((out / k).read_text() for k in kept) == ["new table", "old table"]
    assert (out / "ablation.md").read_text() == "new table"


def test_one_seed_has_no_sample_std_and_prints_the_mean_alone():
    from runners.ablation import _pm, summarise
    one = summarise([{"psnr": [20.0, 22.0], "ssim": [0.5, 0.7], "consistency": [0.1], "seconds": [1.0]}])
    assert one["psnr"] == (21.0, None) and _pm(one["psnr"], 2) == "21.00"
    two = summarise([{"psnr": [20.0], "ssim": [0.5], "consistency": [0.1], "seconds": [1.0]},
                     {"psnr": [22.0], "ssim": [0.7], "consistency": [0.1], "seconds": [1.0]}])
    assert _pm(two["psnr"], 2) == f"21.00 ± {2 ** 0.5:.2f}"
