"""torchrun sharding on CPU (gloo): the same images, records and summary as one process.

A tiny random-weight model restores four 32x32 images in this process; a second folder
gets its first image from a plain single process and the other three from `python -m
torch.distributed.run` on two ranks (a resume with a changed number of processes). Every
output file of the sharded folder must equal the single-process one byte for byte, and
each image must have been restored exactly once, by the rank the sharding rule names.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from runners import cli, distributed
from runners.results import OutputFolder
from tests.test_cli import DIFFUSION, FAST, TINY_MODEL, TRAVEL, _image

REPO = Path(__file__).resolve().parents[1]
NAMES = ["a0", "a1", "a2", "a3"]
# what legitimately differs between two runs of the same images
RUN_KEYS = ("seconds", "device", "rank", "world_size", "batch_size")


def make_tiny(root: Path, n_images: int = 4, batch_size: int = 1) -> SimpleNamespace:
    """A tiny model config + checkpoint and n_images small images under root/exp."""
    from guided_diffusion.models import build_model

    exp = root / "exp"
    config = {"data": {"dataset": "CelebA_HQ", "image_size": 32, "channels": 3, "rescaled": True},
              "model": TINY_MODEL, "diffusion": DIFFUSION, "sampling": {"batch_size": batch_size},
              "time_travel": TRAVEL}
    (root / "tiny.yml").write_text(yaml.safe_dump(config))
    (exp / "logs").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), exp / "logs" / "tiny.ckpt")
    for i in range(n_images):
        _image(exp / "datasets" / "set" / f"{NAMES[i]}.png", (40 + 4 * i, 36), 100 + i)
    return SimpleNamespace(root=root, exp=exp, config=str(root / "tiny.yml"))


def common_args(tiny, image_folder: str, *extra) -> list:
    return ["--ni", "--config", tiny.config, "--exp", str(tiny.exp), "--path_y", "set", "--deg", "sr_averagepooling",
            "--deg_scale", "2", "--sigma_y", "0.05", "--add_noise", "--eta", "0.85", "--steps", "3",
            "--batch_size", "1", "-i", image_folder, *FAST, *extra]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "main.py", "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def folder(tiny, name) -> OutputFolder:
    return OutputFolder(tiny.exp / "image_samples" / name)


def image_bytes(out: OutputFolder):
    return {str(p.relative_to(out.root)): p.read_bytes() for p in sorted(out.root.rglob("*.png"))
            if p.name != "grid.png"}


def records(out: OutputFolder):
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.records_dir.glob("*.json"))}


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in RUN_KEYS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tiny = make_tiny(tmp_path_factory.mktemp("dist"))
    assert cli.main(common_args(tiny, "single", "--device", "cpu")) == 0
    # the sharded folder starts with the first image done by a plain single process ...
    assert cli.main(common_args(tiny, "sharded", "--device", "cpu", "--subset_end", "1")) == 0
    out = folder(tiny, "sharded")
    before = {"records": records(out), "images": image_bytes(out)}
    # ... and two gloo ranks resume it (a changed number of processes)
    proc = torchrun(2, common_args(tiny, "sharded"))
    return SimpleNamespace(tiny=tiny, proc=proc, before=before)


def test_two_gloo_ranks_resume_and_share_the_rest(runs):
    assert runs.proc.returncode == 0, runs.proc.stderr[-3000:]
    assert "2 processes (gloo)" in runs.proc.stdout
    assert "4 images, 1 already done" in runs.proc.stdout
    out = folder(runs.tiny, "sharded")
    recs = records(out)
    assert sorted(recs) == NAMES
    (first,) = runs.before["records"]
    assert recs[first] == runs.before["records"][first]  # not redone
    for path, data in runs.before["images"].items():
        assert (out.root / path).read_bytes() == data
    # the k-th pending image (dataset order) went to rank k % 2: each restored exactly once
    pending = sorted((r["index"], n) for n, r in recs.items() if n != first)
    assert [(recs[n]["rank"], recs[n]["world_size"]) for _, n in pending] == [(0, 2), (1, 2), (0, 2)]
    res = json.loads(out.results_json.read_text())
    assert res["summary"]["num_images"] == len(NAMES) and res["world_size"] == 2


def test_sharded_outputs_equal_single_process(runs):
    assert runs.proc.returncode == 0, runs.proc.stderr[-3000:]
    single, sharded = folder(runs.tiny, "single"), folder(runs.tiny, "sharded")
    a, b = image_bytes(single), image_bytes(sharded)
    assert len(a) == 3 * len(NAMES) and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    ra, rb = records(single), records(sharded)
    assert {n: strip(r) for n, r in ra.items()} == {n: strip(r) for n, r in rb.items()}
    sa = json.loads(single.results_json.read_text())
    sb = json.loads(sharded.results_json.read_text())
    sa["summary"].pop("seconds_per_image"), sb["summary"].pop("seconds_per_image")
    assert sa["summary"] == sb["summary"] and sa["summary"]["num_images"] == len(NAMES)
    assert np.isfinite(sa["summary"]["psnr"]) and sa["fingerprint"] == sb["fingerprint"]
    assert single.results_txt.read_text() == sharded.results_txt.read_text()


# ---------------------------------------------------------------- the helpers, in-process

def test_env_context_and_sharding_rule():
    assert distributed.env_context({}) == distributed.Context()  # plain python: no process group
    ctx = distributed.env_context({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled) == (2, 3, 0, False)
    items = list(range(10))
    shares = [distributed.Context(rank=r, world_size=3).shard(items) for r in range(3)]
    assert shares[2] == [2, 5, 8]
    assert sorted(i for s in shares for i in s) == items  # every item exactly once
    with pytest.raises(ValueError, match="RANK=3, WORLD_SIZE=2"):
        distributed.env_context({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_rank_device(monkeypatch):
    ctx = distributed.Context(rank=3, world_size=4, local_rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device(None, ctx) == "cuda:1"
    assert distributed.rank_device("cuda", ctx) == "cuda:1"
    with pytest.raises(ValueError, match="every rank on one GPU"):   # an explicit index would be shared
        distributed.rank_device("cuda:0", ctx)
    assert distributed.rank_device("cuda:0", distributed.Context()) == "cuda:0"   # one process: kept
    assert distributed.rank_device("cpu", ctx) == "cpu"
    assert distributed.rank_device(None, distributed.Context()) is None  # single process: runner default
    with pytest.raises(ValueError, match="LOCAL_RANK 2 has no GPU of its own"):
        distributed.rank_device(None, distributed.Context(rank=2, world_size=4, local_rank=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device(None, ctx) is None


def test_an_error_on_one_rank_is_raised_on_every_rank(runs):
    """A checkpoint that cannot be loaded fails where rank 0 loads it; the other rank gets the same
    one-line error instead of waiting in a collective for a rank that has exited (NCCL would wait
    hours). (A missing --ckpt file is refused by every rank while planning, before any collective.)"""
    cut = runs.tiny.root / "nowhere.ckpt"      # a zip header, then nothing: passes the plan's sniff
    cut.write_bytes((runs.tiny.exp / "logs" / "tiny.ckpt").read_bytes()[:200])
    proc = torchrun(2, common_args(runs.tiny, "no_ckpt", "--ckpt", str(cut)))
    assert proc.returncode != 0
    # one error per rank, counted in the text: both ranks write to one pipe, and rank 0's traceback
    # of the failed load can land in the middle of the other rank's line
    assert proc.stderr.count("error: rank 0: CheckpointError") == 2, proc.stderr[-2000:]
    assert "nowhere.ckpt" in proc.stderr
    assert not folder(runs.tiny, "no_ckpt").root.exists()  # nothing written


def test_photo_runs_shard_by_image_with_the_same_bytes(runs):
    """--native_size under torchrun: each rank restores whole photos at their own size (tiled), and
    the outputs equal one process's byte for byte."""
    args = ("--native_size", "--tile_stride", "8")
    assert cli.main(common_args(runs.tiny, "photo_single", "--device", "cpu", *args)) == 0
    proc = torchrun(2, common_args(runs.tiny, "photo_sharded", *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, sharded = folder(runs.tiny, "photo_single"), folder(runs.tiny, "photo_sharded")
    a, b = image_bytes(single), image_bytes(sharded)
    assert len(a) == 4 * len(NAMES) and a.keys() == b.keys()      # restored, A^+y, ground truth, y
    assert [k for k in a if a[k] != b[k]] == []
    rb = records(sharded)
    assert sorted(r["rank"] for r in rb.values()) == [0, 0, 1, 1]
    assert {n: tuple(r["size"]) for n, r in rb.items()} == {"a0": (36, 40), "a1": (36, 44), "a2": (36, 48),
                                                            "a3": (36, 52)}
