"""A checkpoint whose publisher gives an MD5 (the LSUN models) is checked whenever a run loads it:
a resumed run refuses a file that changed since, in one line, and keeps the finished results."""
import dataclasses

import numpy as np
import torch
import yaml
from PIL import Image

from guided_diffusion import checkpoint_sources
from runners import cli

LSUN_FILE = "ema_diffusion_lsun_church_model/model-4432000.ckpt"
MODEL = {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
         "attn_resolutions": [], "dropout": 0.0, "resamp_with_conv": True, "var_type": "fixedsmall",
         "checkpoint": f"logs/diffusion_models_converted/{LSUN_FILE}"}


def test_a_resumed_run_refuses_a_checkpoint_that_no_longer_has_its_published_md5(tmp_path, monkeypatch, capsys):
    from guided_diffusion.models import build_model

    torch.set_num_threads(1)
    config = {"data": {"dataset": "LSUN", "category": "church_outdoor", "image_size": 16, "channels": 3},
              "model": MODEL, "diffusion": {"num_diffusion_timesteps": 1000}, "sampling": {"batch_size": 1}}
    (tmp_path / "church.yml").write_text(yaml.safe_dump(config))
    exp = tmp_path / "exp"
    ckpt = exp / MODEL["checkpoint"]
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), ckpt)
    # the tiny file plays the published one: its sum is the "published" MD5 of this path
    source = checkpoint_sources.source_for(ckpt)
    assert source is not None and source.md5 == checkpoint_sources.DDPM_EMA["ema_lsun_church"][2]
    monkeypatch.setitem(checkpoint_sources.SOURCES, LSUN_FILE,
                        dataclasses.replace(source, md5=checkpoint_sources.file_md5(ckpt)))
    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        (exp / "datasets" / "church").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(exp / "datasets" / "church" / f"{i}.png")
    argv = ["--ni", "--config", str(tmp_path / "church.yml"), "--exp", str(exp), "--path_y", "church",
            "--deg", "denoising", "--steps", "2", "--lpips_net", "none", "--no_fid", "-i", "church"]
    assert cli.main(argv + ["--subset_end", "1"]) == 0
    out = exp / "image_samples" / "church"
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    capsys.readouterr()

    torch.manual_seed(1)                        # the file is replaced by other (valid) weights
    torch.save(build_model(config).state_dict(), ckpt)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MD5" in err and "model-4432000.ckpt" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
