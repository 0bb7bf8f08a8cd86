"""The ablation script end to end on the committed demo prior (2 steps, 2 tasks, 2 rows)."""
import json

import torch

from runners import ablation


def test_ablation_writes_tables_with_classical_and_mean_rows(tmp_path):
    torch.set_num_threads(2)
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
    assert (out / "ablation_grid.png").stat().st_size > 1000
    assert "| DDNM, mean of 2 samples |" in (out / "ablation.md").read_text()
