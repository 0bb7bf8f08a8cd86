"""LSUN configs and checkpoints: layout against the public manifest, DDIM's URL map and cache paths,
MD5-checked downloads (served from 127.0.0.1) and the published-sum check of a file already in place."""
import hashlib
import http.server
import io
import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from guided_diffusion import checkpoint_sources
from guided_diffusion.checkpoints import (SOURCES, CheckpointError, default_checkpoint_path, fetch, file_md5,
                                          lsun_checkpoint, resolve_checkpoint, source_for, verify_known_checksum)
from guided_diffusion.models import build_model, load_config
from tests.shared import shared_path

LSUN = {"bedroom": ("bedroom", 2388000, "1921fa46b66a3665e450e42f36c2720f", "b95206528f384185889b"),
        "cat": ("cat", 1761000, "646f23f4821f2459b8bafc57fd824558", "0701aac3aa69457bbe34"),
        "church": ("church_outdoor", 4432000, "fdc68a23938c2397caba4a260bc2445f", "44ccb50ef3c6436db52e")}
CHURCH = "logs/diffusion_models_converted/ema_diffusion_lsun_church_model/model-4432000.ckpt"
TINY = {"model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                  "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0, "resamp_with_conv": True,
                  "checkpoint": CHURCH},   # a small model at the church checkpoint's place
        "data": {"image_size": 16}}


@pytest.mark.parametrize("name", sorted(LSUN))
def test_config_builds_exactly_the_public_layout(name):
    config = load_config(name)
    category, step, _, _ = LSUN[name]
    assert config["data"]["dataset"] == "LSUN" and config["data"]["category"] == category
    manifest = json.loads(shared_path("fixtures", "manifest_celeba_hq_ckpt.json").read_text())
    state = build_model(config, device="meta").state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest["tensors"]
    assert sum(v.numel() for v in state.values()) == manifest["num_parameters"] == 113_673_219
    path = default_checkpoint_path(config, "exp")
    assert path.as_posix() == (f"exp/logs/diffusion_models_converted/ema_diffusion_lsun_{name}_model/"
                               f"model-{step}.ckpt")
    assert path.relative_to("exp").as_posix() == lsun_checkpoint(category)


@pytest.mark.parametrize("name", sorted(LSUN))
def test_url_map_and_md5_are_ddims(name):
    _, step, md5, heibox = LSUN[name]
    source = source_for(Path("anywhere/logs") / lsun_checkpoint(LSUN[name][0]))
    assert source.urls == (f"https://heibox.uni-heidelberg.de/f/{heibox}/?dl=1",) and source.md5 == md5
    # the name alone is not enough: a user's own model-N.ckpt elsewhere has no published sum
    assert source_for(Path("runs/mine") / f"model-{step}.ckpt") is None


def test_unknown_category_is_one_line():
    with pytest.raises(ValueError, match="'tower' has no public LSUN model; use one of: bedroom, cat, church"):
        lsun_checkpoint("tower")


def test_classifier_and_guided_diffusion_files_have_no_published_sum():
    assert SOURCES["256x256_classifier.pt"].urls == (
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_classifier.pt",)
    assert all(SOURCES[k].md5 is None for k in ("256x256_classifier.pt", "celeba_hq.ckpt"))


def _state_bytes(seed):
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(build_model(TINY).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    """127.0.0.1 serving /good.ckpt and /corrupt.ckpt (same length, one byte flipped inside a tensor)."""
    good = _state_bytes(0)
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0xFF    # still a loadable zip of the right shapes: only the sum can tell
    routes = {"/good.ckpt": good, "/corrupt.ckpt": bytes(corrupt)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", good, bytes(corrupt)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def church_md5_of(monkeypatch):
    """Publish another MD5 for the church checkpoint (the real one belongs to a 455 MB file)."""
    key = CHURCH.split("/", 2)[2]

    def publish(data: bytes) -> str:
        md5 = hashlib.md5(data).hexdigest()
        monkeypatch.setitem(checkpoint_sources.SOURCES, key, replace(SOURCES[key], md5=md5))
        return md5
    return publish


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_download_with_the_published_md5_lands(server, tmp_path, church_md5_of):
    base, good, _ = server
    md5 = church_md5_of(good)
    path = resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/good.ckpt"], progress=False)
    assert path == tmp_path / CHURCH and path.read_bytes() == good
    note = path.with_name(".model-4432000.ckpt.md5")
    assert _files(tmp_path) == sorted([CHURCH, note.relative_to(tmp_path).as_posix()])
    assert json.loads(note.read_text()) == {"md5": md5, "size": len(good), "mtime_ns": path.stat().st_mtime_ns}
    verify_known_checksum(path)
    assert resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/missing"], progress=False) == path


def test_download_with_another_md5_is_refused_and_removed(server, tmp_path, church_md5_of):
    base, good, corrupt = server
    md5 = church_md5_of(good)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/corrupt.ckpt"], progress=False)
    text = str(info.value)
    assert "\n" not in text
    assert f"the downloaded model-4432000.ckpt has MD5 {hashlib.md5(corrupt).hexdigest()}, not the published {md5}" \
        in text
    assert str(tmp_path / CHURCH) in text
    assert list(tmp_path.iterdir()) == []       # no file, no temporary, no folders made for it


def test_the_real_published_sum_refuses_other_bytes(server, tmp_path):
    """The LSUN config with its real MD5: a file that is not DDPM's model is refused before any load."""
    base, good, _ = server
    with pytest.raises(CheckpointError, match="not the published fdc68a23938c2397caba4a260bc2445f"):
        resolve_checkpoint(load_config("church"), exp=tmp_path, urls=[base + "/good.ckpt"], progress=False)
    assert list(tmp_path.iterdir()) == []
    dest = tmp_path / "plain.ckpt"     # fetch without a sum keeps the same bytes
    fetch(base + "/good.ckpt", dest, progress=False)
    assert dest.read_bytes() == good and _files(tmp_path) == ["plain.ckpt"]


def test_verify_known_checksum_refuses_a_changed_file(tmp_path, church_md5_of):
    path = tmp_path / CHURCH
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 1000)
    md5 = church_md5_of(b"\x00" * 1000)
    verify_known_checksum(path)
    note = path.with_name(".model-4432000.ckpt.md5")
    assert json.loads(note.read_text())["md5"] == md5
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:     # one byte changed in place: same size, a later mtime
        f.seek(10)
        f.write(b"\x01")
    os.utime(path, ns=(before + 10**9, before + 10**9))   # the clock may not have ticked since
    with pytest.raises(CheckpointError) as info:
        verify_known_checksum(path)
    text = str(info.value)
    found = hashlib.md5(b"\x00" * 10 + b"\x01" + b"\x00" * 989).hexdigest()
    assert "\n" not in text and f"{path} has MD5 {found}, not the published {md5}" in text
    assert "heibox.uni-heidelberg.de/f/44ccb50ef3c6436db52e" in text    # where to get it again
    # resolve_checkpoint checks a file already in place too
    with pytest.raises(CheckpointError, match="not the published"):
        resolve_checkpoint(TINY, exp=tmp_path, download=False)
    # files without a published sum are not read at all
    verify_known_checksum(tmp_path / "anything.pt")


def test_md5_note_is_trusted_only_for_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_md5(path) == hashlib.md5(b"abc").hexdigest()
    note = tmp_path / ".f.bin.md5"
    stamp = json.loads(note.read_text())
    note.write_text(json.dumps({**stamp, "md5": "0" * 32}))     # a note for this very size and mtime is used
    assert file_md5(path) == "0" * 32
    note.write_text(json.dumps({**stamp, "mtime_ns": stamp["mtime_ns"] - 1, "md5": "0" * 32}))
    assert file_md5(path) == hashlib.md5(b"abc").hexdigest()
    note.write_text("[not a note")
    assert file_md5(path) == hashlib.md5(b"abc").hexdigest()


def test_evaluation_sh_runs_lsun_where_the_images_are(tmp_path):
    """evaluation.sh's LSUN block, run by bash with `python` recording its arguments: only the datasets
    present run, every line parses as main.py's CLI with an LSUN config, no output folder is reused."""
    import shlex
    import subprocess

    from runners import summary
    from runners.cli import build_parser

    repo = Path(__file__).resolve().parents[1]
    script = (repo / "evaluation.sh").read_text()
    block = script[script.index("## LSUN"):script.index("## The measured table")]
    for name in ("cat", "church"):
        (tmp_path / "exp" / "datasets" / f"lsun_{name}").mkdir(parents=True)
    fake = 'python() { printf "%q " "$@" >> calls.txt; echo >> calls.txt; }\n'
    done = subprocess.run(["bash", "-c", "set -u\n" + fake + block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "evaluation.sh: exp/datasets/lsun_bedroom not found; its LSUN runs are skipped"
    calls = [shlex.split(line) for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert len(calls) == 2 * 2 * 5 and all(c[0] == "main.py" for c in calls)
    parsed = [build_parser().parse_args(c[1:]) for c in calls]
    assert {(a.config, a.path_y) for a in parsed} == {("cat.yml", "lsun_cat"), ("church.yml", "lsun_church")}
    assert all(load_config(a.config)["data"]["dataset"] == "LSUN" and a.path_y in summary.BENCHMARK_IMAGES
               for a in parsed)
    assert sum("--EquSplus" in c for c in calls) == 10
    outputs = [a.image_folder for a in parsed]
    others = [shlex.split(line)[shlex.split(line).index("-i") + 1] for line in script.splitlines()
              if line.startswith("python main.py")]
    assert len(set(outputs)) == len(outputs) and not set(outputs) & set(others)
    assert "lsun_church_sr_bc_4_equsplus" in outputs


def test_a_legacy_format_state_dict_loads(tmp_path):
    """DDIM loads these files straight into its Model (no "module." prefix, no list wrapper); converted in
    2020, they may be in torch's pre-1.6 (non-zip) format, which cannot be memory-mapped: both load."""
    from guided_diffusion.checkpoints import load_weights

    torch.manual_seed(3)
    state = build_model(TINY).state_dict()
    path = tmp_path / "legacy.ckpt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    model = load_weights(build_model(TINY), path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
