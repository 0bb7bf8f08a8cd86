"""runners/summary.py: runs placed by their settings, the paper's numbers beside them."""
import json
import re


from runners import summary
from tests.shared import shared_path


def _parse_table1(text):
    """{dataset: {method: [(a, b, c) per task]}} from ../shared/paper/table1.md's two tables."""
    out, dataset = {}, None
    for line in text.splitlines():
        m = re.match(r"## (ImageNet|CelebA-HQ)", line)
        if m:
            dataset = m.group(1)
            out[dataset] = {}
            continue
        if dataset and line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 6:
                out[dataset][cells[0]] = [tuple(float(v) for v in c.split(" / ")) for c in cells[1:]]
        if line.startswith("## Which"):
            break
    return out


def test_published_numbers_match_the_paper_transcription():
    paper = _parse_table1(shared_path("paper", "table1.md").read_text())
    for dataset, rows in summary.PUBLISHED.items():
        for method, values in rows.items():
            assert [tuple(v) for v in values] == paper[dataset][method], (dataset, method)
    assert set(summary.PUBLISHED["ImageNet"]) == set(summary.METHODS)
    # and, for both datasets, every published row of a method this project runs is carried
    assert set(paper) == set(summary.PUBLISHED)
    for dataset, rows in paper.items():
        assert {m for m in rows if m in summary.METHODS} == set(summary.PUBLISHED[dataset]), dataset


def _settings(**kw):
    base = {"deg": "deblur_gauss", "deg_scale": None, "sigma_y": 0.0, "add_noise": False, "sampler": "ddnm",
            "equs": None, "schedule": "uniform", "transform": "hflip", "eps_mapping": "official", "steps": 100,
            "eta": 0.85, "lambda_mode": "reference", "blur_svd": "reference", "mask": None}
    base.update(kw)
    return base


def _write_run(root, name, dataset, settings, s, baseline=None, n=10, baseline_reference=None, category=None):
    folder = root / name
    folder.mkdir(parents=True)
    summ = {"num_images": n, "psnr": s[0], "ssim": s[1], "lpips_official": s[2], "lpips": 0.5,
            "consistency": s[0], "fid": s[1] * 100,
            "baseline": baseline or {"psnr": 1.0, "ssim": 0.1, "lpips_official": 0.9, "consistency": 7.0, "fid": 99.0}}
    if baseline_reference:
        summ["baseline_reference"] = baseline_reference
    (folder / "results.json").write_text(json.dumps({
        "settings": settings, "summary": summ, "config": {"data": {"dataset": dataset, **({"category": category} if category is not None else {})}},
        "device": "cpu", "updated": "2026-01-01T00:00:00+00:00"}))
    return folder


def test_methods_and_tasks_from_settings():
    assert summary.method_of(_settings()) == "DDNM"
    assert summary.method_of(_settings(sigma_y=0.1)) == "DDNM+"
    assert summary.method_of(_settings(equs="alternate", schedule="tas")) == "DDNM-EquS+"
    assert summary.method_of(_settings(equs="alternate")) == "DDNM-EquS"
    assert summary.method_of(_settings(sampler="ddrm", equs="alternate", schedule="tas")) == "DDRM-EquS+"
    assert summary.method_of(_settings(equs="average", transform="d4", steps=20)) == "DDNM-EquS(avg) [d4, 20 steps]"
    # settings that change the numbers keep a run out of the official cells
    assert summary.method_of(_settings(clip_x0=True)) == "DDNM [clip_x0]"
    assert summary.method_of(_settings(travel_length=10, travel_repeat=3, travel_from="x0")) == "DDNM [time travel 10x3]"
    assert (summary.method_of(_settings(travel_length=10, travel_repeat=3, travel_from="x0_hat"))
            == "DDNM [time travel 10x3 from x0_hat]")
    # folders from before travel_from was recorded re-noised x0_hat
    assert summary.method_of(_settings(travel_length=10, travel_repeat=3)) == "DDNM [time travel 10x3 from x0_hat]"
    assert summary.method_of(_settings(sampler="ddrm", etaB=0.5)) == "DDRM [etaB 0.5]"
    assert summary.method_of(_settings(equs="average", transform="flips", schedule="tas")) == "DDNM-EquS(avg) [tas, flips]"
    assert summary.method_of(_settings(config="imagenet_256_cond.yml")) == "DDNM [imagenet_256_cond.yml]"
    assert summary.method_of(_settings(config="imagenet_256.yml", travel_length=1, travel_repeat=1,
                                       clip_x0=False, etaB=1.0)) == "DDNM"
    assert summary.task_of(_settings(deg="cs_blockbased", deg_scale=0.25)) == "CS 25% (block)"
    assert summary.task_of(_settings(deg="cs_blockbased")) == "CS 25% (block)"   # the operator's default ratio
    assert summary.task_of(_settings(deg="cs_blockbased", deg_scale=0.5)) == "cs_blockbased 0.5"
    assert summary.task_of(_settings(deg="sr_bicubic", deg_scale=4.0)) == "SR 4x bicubic"
    assert summary.task_of(_settings(deg="inpainting", mask="exp/inp_masks/mask.npy")) == "inpainting"
    # only the reference's mask.npy fills Table 1's inpainting cells: DDNM and EquS+ never mix masks
    assert summary.method_of(_settings(deg="inpainting", mask="exp/inp_masks/mask.npy")) == "DDNM"
    assert summary.method_of(_settings(deg="inpainting")) == "DDNM [built-in mask]"
    assert summary.method_of(_settings(deg="inpainting", mask="masks/box.png")) == "DDNM [mask box.png]"
    assert summary.method_of(_settings(deg="inpainting", mask="random:0.5")) == "DDNM [mask random:0.5]"
    # the operator's and EquS's non-reference variants change the numbers too
    assert summary.method_of(_settings(deg="deblur_gauss", lambda_mode="svd")) == "DDNM [lambda_mode svd]"
    assert summary.method_of(_settings(deg="deblur_gauss", blur_svd="matched")) == "DDNM [blur_svd matched]"
    assert (summary.method_of(_settings(equs="alternate", eps_mapping="consistent"))
            == "DDNM-EquS [consistent eps]")
    assert summary.method_of(_settings(equs="alternate", eps_mapping="official", lambda_mode="reference",
                                       blur_svd="reference")) == "DDNM-EquS"


def test_render_places_runs_and_paper_numbers(tmp_path):
    root = tmp_path / "exp" / "image_samples"
    _write_run(root, "a", "ImageNet", _settings(), (44.123, 0.9871, 0.0123))
    _write_run(root, "b", "ImageNet", _settings(equs="alternate", schedule="tas"), (46.5, 0.99, 0.007))
    _write_run(root, "c", "CelebA_HQ", _settings(deg="colorization", sampler="ddrm"), (150.0, 0.31, 0.104))
    _write_run(root, "d", "CelebA_HQ", _settings(deg="sr_averagepooling", deg_scale=4.0, sigma_y=0.2,
                                                   add_noise=True), (25.0, 0.7, 0.3))
    (root / "e").mkdir()  # no results.json: ignored
    runs = summary.load_runs(sorted(root.iterdir()))
    assert len(runs) == 4
    text = summary.render(runs)
    inet = text.split("## ImageNet")[1].split("## CelebA-HQ")[0]
    ddnm = next(l for l in inet.splitlines() if l.startswith("| DDNM |"))
    assert "44.12 / 0.987 / 0.012 (paper 44.94 / 0.990 / 0.011)" in ddnm
    plus = next(l for l in inet.splitlines() if l.startswith("| DDNM-EquS+ |"))
    assert "46.50 / 0.990 / 0.007 (paper 46.99 / 0.993 / 0.006)" in plus
    apy = next(l for l in inet.splitlines() if l.startswith("| A^+ y |"))
    # a deblurring run without the reference's Apy baseline (made before it was recorded) says so
    assert "1.00 / 0.100 / 0.900 [A^+ y: a run from before the reference's Apy was recorded] (paper 18.57" in apy
    assert "– (paper 28.59 / 0.795 / 0.225)" in ddnm  # CS not measured
    celeba = text.split("## CelebA-HQ")[1].split("## Noisy")[0]
    ddrm = next(l for l in celeba.splitlines() if l.startswith("| DDRM |"))
    # colorization: Cons / FID / LPIPS
    assert ddrm.rstrip(" |").endswith("150.00 / 31.00 / 0.104 (paper 170.6 / 31.20 / 0.105)")
    noisy = text.split("## Noisy tasks")[1].split("## Runs")[0]
    assert "sr_averagepooling 4, sigma_y 0.2" in noisy and "DDNM+" in noisy
    assert "| a | ImageNet | deblur (gauss) | DDNM | 10 |" in text
    assert "## Other tasks" not in text


def test_the_a_pinv_y_row_scores_the_reference_apy_image_where_recorded(tmp_path):
    """The paper's A^+ y row for deblurring scores the blurred y (what the reference saves as Apy)."""
    root = tmp_path / "exp" / "image_samples"
    _write_run(root, "a", "CelebA_HQ", _settings(), (46.0, 0.99, 0.01),
               baseline={"psnr": 42.5, "ssim": 0.979, "lpips_official": 0.02},
               baseline_reference={"psnr": 19.15, "ssim": 0.699, "lpips_official": 0.3})
    # an inpainting run with the built-in mask is outside Table 1: it fills neither DDNM nor A^+ y
    _write_run(root, "m", "CelebA_HQ", _settings(deg="inpainting"), (9.99, 0.4, 0.6), n=100)
    text = summary.render(summary.load_runs(sorted(root.iterdir())))
    apy = next(l for l in text.split("## CelebA-HQ")[1].splitlines() if l.startswith("| A^+ y |"))
    assert "19.15 / 0.699 / 0.300 (paper 18.85 / 0.686 / 0.305)" in apy and "42.50" not in apy
    assert "9.99" not in text.split("## CelebA-HQ")[1].split("## Other")[0] and "– (paper 14.65" in apy


def test_runs_outside_table1_are_listed(tmp_path):
    root = tmp_path / "exp" / "image_samples"
    _write_run(root, "s", "ImageNet", _settings(steps=20), (40.0, 0.95, 0.02))
    _write_run(root, "t", "ImageNet", _settings(deg="deblur_aniso"), (41.0, 0.96, 0.02))
    text = summary.render(summary.load_runs(sorted(root.iterdir())))
    other = text.split("## Other tasks and settings")[1].split("## Runs")[0]
    assert "| ImageNet | deblur (gauss) | DDNM [20 steps] | 40.00 / 0.950 / 0.020 |" in other
    assert "| ImageNet | deblur_aniso | DDNM | 41.00 / 0.960 / 0.020 |" in other


def test_cli_writes_file_and_errors_without_results(tmp_path, capsys):
    root = tmp_path / "exp" / "image_samples"
    _write_run(root, "a", "ImageNet", _settings(), (44.0, 0.98, 0.01))
    out = tmp_path / "table.md"
    assert summary.main(["--exp", str(tmp_path / "exp"), "-o", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    # a folder by main.py's -i name, as well as by its path
    assert summary.main(["--exp", str(tmp_path / "exp"), "a"]) == 0
    assert capsys.readouterr().out == out.read_text()
    assert summary.main(["--exp", str(tmp_path / "exp"), str(root / "a")]) == 0
    assert capsys.readouterr().out == out.read_text()
    assert summary.main(["--exp", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")


def test_runs_with_another_checkpoint_or_other_images_are_labelled():
    from runners.summary import method_of

    plain = {"config": "celeba_hq.yml", "path_y": "celeba_hq", "sampler": "ddnm", "steps": 100, "eta": 0.85}
    assert method_of(plain) == "DDNM"
    assert method_of(dict(plain, ckpt="/tmp/random_weights.pt")) == "DDNM [ckpt random_weights.pt]"
    assert method_of(dict(plain, path_y="/data/my_faces")) == "DDNM [images my_faces]"


def test_an_unfinished_run_is_named_not_silently_left_out(tmp_path, capsys):
    (tmp_path / "intr").mkdir()
    (tmp_path / "intr" / "run.json").write_text(json.dumps({"command": "python main.py ..."}))
    assert summary.main([str(tmp_path / "intr")]) == 2
    err = capsys.readouterr().err
    assert "1 folder(s) hold an unfinished run" in err and "rerun the command in their run.json" in err
    assert "error: no results.json found" in err


def test_lsun_and_classifier_guided_runs_are_labelled_by_dataset(tmp_path):
    """The three LSUN configs share data.dataset LSUN: the category names the model. They, and the
    classifier-guided ImageNet config, have no published Table 1 cells: they go to the other table."""
    root = tmp_path / "exp" / "image_samples"
    for name, category in (("bed", "bedroom"), ("cat", "cat"), ("church", "church_outdoor")):
        _write_run(root, name, "LSUN", _settings(config=f"{name if name != 'bed' else 'bedroom'}.yml",
                                                 path_y=f"lsun_{name if name != 'bed' else 'bedroom'}"),
                   (30.0, 0.9, 0.1), category=category)
    _write_run(root, "cc", "ImageNet", _settings(config="imagenet_256_cc.yml", path_y="imagenet"), (45.5, 0.99, 0.01))
    runs = {r["folder"].name: r for r in summary.load_runs(sorted(root.iterdir()))}
    assert {k: r["dataset"] for k, r in runs.items()} == {"bed": "LSUN-Bedroom", "cat": "LSUN-Cat",
                                                          "church": "LSUN-Church", "cc": "ImageNet"}
    assert runs["bed"]["method"] == "DDNM" and runs["cc"]["method"] == "DDNM [imagenet_256_cc.yml]"
    text = summary.render(list(runs.values()))
    other = text.split("## Other tasks and settings")[1].split("## Runs")[0]
    assert "| LSUN-Church | deblur (gauss) | DDNM | 30.00 / 0.900 / 0.100 |" in other
    assert "| ImageNet | deblur (gauss) | DDNM [imagenet_256_cc.yml] | 45.50 / 0.990 / 0.010 |" in other
    # the guided run does not fill the unguided DDNM cell of Table 1
    inet = text.split("## ImageNet")[1].split("## Other")[0]
    assert "45.50" not in inet
    assert summary.dataset_of({"dataset": "LSUN", "category": "tower"}) == "LSUN-tower"
    assert summary.dataset_of({"dataset": "FFHQ"}) == "FFHQ" and summary.dataset_of({}) == "?"
