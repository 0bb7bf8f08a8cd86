"""Checkpoint paths, download (served from 127.0.0.1), validation and strict loading."""
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch

from guided_diffusion.checkpoints import (CheckpointError, default_checkpoint_path, load_weights,
                                          resolve_checkpoint, validate_checkpoint)
from guided_diffusion.models import build_model, load_config

TINY = {"model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                  "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0, "resamp_with_conv": True,
                  "checkpoint": "logs/tiny/tiny.ckpt"},
        "data": {"image_size": 16}}
OTHER = {"model": {**TINY["model"], "ch_mult": [1, 1]}, "data": {"image_size": 16}}


def _bytes_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tiny_state(seed=0):
    torch.manual_seed(seed)
    return build_model(TINY).state_dict()


def _small_classifier_bytes() -> bytes:
    from guided_diffusion.classifier import build_classifier

    torch.manual_seed(0)
    return _bytes_of(build_classifier(SMALL_CLASSIFIER["classifier"]).state_dict())


HTML = b"<!DOCTYPE html><html><body>Access denied</body></html>"
S3_DENIED = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>'


@pytest.fixture(scope="module")
def server():
    """A local HTTP server; ROUTES[path] = (status, content_type, body, declared_length or None)."""
    good = _bytes_of(_tiny_state())
    routes = {
        "/good.ckpt": (200, "application/octet-stream", good, None),
        "/page.html": (200, "text/html", HTML, None),
        "/disguised.ckpt": (200, "application/octet-stream", HTML, None),
        "/denied.ckpt": (403, "application/xml", S3_DENIED, None),
        "/truncated.ckpt": (200, "application/octet-stream", good[: len(good) // 2], None),
        "/dropped.ckpt": (200, "application/octet-stream", good[: len(good) // 2], len(good)),
        "/wrong.ckpt": (200, "application/octet-stream", _bytes_of(build_model(OTHER).state_dict()), None),
        "/classifier.pt": (200, "application/octet-stream", _small_classifier_bytes(), None),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            if self.path not in routes:
                self.send_error(404, "Not Found")
                return
            status, ctype, body, declared = routes[self.path]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(declared if declared is not None else len(body)))
            self.end_headers()
            self.wfile.write(body)
            if declared is not None:
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", good
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_default_path_follows_config(tmp_path):
    assert default_checkpoint_path(load_config("celeba_hq"), tmp_path) == tmp_path / "logs/celeba/celeba_hq.ckpt"
    assert (default_checkpoint_path(load_config("imagenet_256"), "exp")
            == Path("exp/logs/imagenet/256x256_diffusion_uncond.pt"))


def test_good_download_lands_and_loads(server, tmp_path):
    base, good = server
    path = resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/good.ckpt"], progress=False)
    assert path == tmp_path / "logs/tiny/tiny.ckpt"
    assert path.read_bytes() == good
    assert _files(tmp_path) == ["logs/tiny/tiny.ckpt"]
    model = load_weights(build_model(TINY), path)
    ref = _tiny_state()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    # A second call finds the file and does not download (the URL would fail now).
    assert resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/missing"], progress=False) == path


@pytest.mark.parametrize("route,message", [
    ("/page.html", "web page"),
    ("/disguised.ckpt", "HTML/XML page"),
    ("/denied.ckpt", "HTTP 403"),
    ("/truncated.ckpt", "not a readable PyTorch checkpoint, truncated"),
    ("/dropped.ckpt", "incomplete|interrupted"),
    ("/wrong.ckpt", "does not match the model"),
    ("/missing.ckpt", "HTTP 404"),
])
def test_bad_downloads_are_rejected_without_leftovers(server, tmp_path, route, message):
    base, _ = server
    with pytest.raises(CheckpointError, match=message) as info:
        resolve_checkpoint(TINY, exp=tmp_path, urls=[base + route], progress=False)
    text = str(info.value)
    assert "\n" not in text
    assert str(tmp_path / "logs/tiny/tiny.ckpt") in text  # where to put it
    assert _files(tmp_path) == []  # no partial or temporary file left behind
    assert list(tmp_path.iterdir()) == []  # nor the folders made for it


def test_download_gets_the_usual_file_mode_and_names_itself_in_errors(server, tmp_path):
    """mkstemp makes a private file; a checkpoint in a shared exp/ must be readable by the group
    as any other file. A rejected download is named as the download, not its temporary file."""
    import os

    base, _ = server
    old = os.umask(0o022)
    try:
        path = resolve_checkpoint(TINY, exp=tmp_path / "a", urls=[base + "/good.ckpt"], progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(TINY, exp=tmp_path / "b", urls=[base + "/truncated.ckpt"], progress=False)
    assert ".tmp" not in str(info.value) and "the downloaded tiny.ckpt" in str(info.value)


def test_an_unwritable_destination_is_one_line(server, tmp_path):
    base, _ = server
    blocker = tmp_path / "exp"
    blocker.write_text("a file where the exp folder should be")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(TINY, exp=blocker, urls=[base + "/good.ckpt"], progress=False)
    text = str(info.value)
    assert "\n" not in text and "cannot write" in text and str(blocker / "logs/tiny/tiny.ckpt") in text


def test_falls_back_to_next_url(server, tmp_path):
    base, good = server
    path = resolve_checkpoint(TINY, exp=tmp_path, urls=[base + "/missing", base + "/page.html", base + "/good.ckpt"],
                              progress=False)
    assert path.read_bytes() == good and _files(tmp_path) == ["logs/tiny/tiny.ckpt"]


def test_offline_gives_one_line_with_source_and_destination(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    config = load_config("celeba_hq")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(config, exp=tmp_path, urls=[f"http://127.0.0.1:{port}/celeba_hq.ckpt"],
                           progress=False, timeout=5)
    text = str(info.value)
    assert "\n" not in text and "cannot connect" in text
    assert "drive.google.com/file/d/1wSoA5fm_d6JBZk4RZ1SzWLMgev4WqH21" in text
    assert str(tmp_path / "logs/celeba/celeba_hq.ckpt") in text
    assert _files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []      # nor the logs/celeba/ folders made for the download


def test_missing_without_download_says_where_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match="downloading is disabled") as info:
        resolve_checkpoint(load_config("imagenet_256"), exp=tmp_path, download=False)
    assert "openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt" in str(info.value)


def test_existing_error_page_is_refused(tmp_path):
    # What the reference left behind: an access-denied page saved as the checkpoint.
    path = tmp_path / "logs/celeba/celeba_hq.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(S3_DENIED)
    with pytest.raises(CheckpointError, match="HTML/XML page.*delete it"):
        resolve_checkpoint(load_config("celeba_hq"), exp=tmp_path, download=True)


def test_override_must_exist(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(TINY, exp=tmp_path, override=tmp_path / "nope.ckpt")
    path = tmp_path / "mine.ckpt"
    torch.save(_tiny_state(), path)
    assert resolve_checkpoint(TINY, exp=tmp_path, override=path) == path


def test_load_weights_lists_first_differences(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save(build_model(OTHER).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(TINY), path)
    text = str(info.value)
    assert "\n" not in text and "does not match the model" in text
    assert "shape (file vs model)" in text and "(32, 32, 3, 3) vs (64, 32, 3, 3)" in text


def test_load_weights_accepts_dataparallel_prefix_and_rejects_pickles(tmp_path):
    state = _tiny_state(seed=1)
    path = tmp_path / "dp.ckpt"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    model = load_weights(build_model(TINY), path)
    assert torch.equal(model.conv_in.weight, state["conv_in.weight"])
    # weights_only=True refuses arbitrary pickled objects.
    bad = tmp_path / "pickle.ckpt"
    torch.save({"conv_in.weight": state["conv_in.weight"], "obj": Path("x")}, bad)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        validate_checkpoint(bad)


def test_a_damaged_known_checkpoint_says_where_to_get_it_again(tmp_path):
    """A truncated file at a known checkpoint's place is named with its download advice; junk bytes
    do not pass on torch's suggestion to load with weights_only=False."""
    from guided_diffusion.checkpoints import download_advice, read_state_dict

    advice = download_advice(tmp_path / "logs/celeba/celeba_hq.ckpt")
    assert "1wSoA5fm_d6JBZk4RZ1SzWLMgev4WqH21" in advice and str(tmp_path / "logs/celeba/celeba_hq.ckpt") in advice
    assert download_advice(tmp_path / "weights/my_prior.pt") is None      # nothing to download again
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cos\nsystem\nq\x02.")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(junk)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------- the classifier's checkpoint

SMALL_CLASSIFIER = {"classifier": {"image_size": 64, "classifier_width": 32, "classifier_depth": 1,
                                   "classifier_attention_resolutions": "16,8", "classifier_channel_mult": "1,2,2,2",
                                   "classifier_pool": "attention", "checkpoint": "logs/small/classifier.pt"},
                    "model": TINY["model"]}


def test_classifier_path_download_source_and_public_layout(tmp_path):
    import json

    from guided_diffusion.checkpoints import expected_classifier_tensors, resolve_classifier_checkpoint
    from tests.shared import shared_path

    config = load_config("imagenet_256_cc")
    with pytest.raises(CheckpointError, match="downloading is disabled") as info:
        resolve_classifier_checkpoint(config, exp=tmp_path, download=False)
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "logs/imagenet/256x256_classifier.pt") in text
    assert "openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_classifier.pt" in text
    # without classifier.checkpoint the file is the reference's place under exp
    no_key = {**config, "classifier": {k: v for k, v in config["classifier"].items() if k != "checkpoint"}}
    with pytest.raises(CheckpointError, match="logs/imagenet/256x256_classifier.pt is missing"):
        resolve_classifier_checkpoint(no_key, exp=tmp_path, download=False)
    manifest = json.loads(shared_path("fixtures", "manifest_imagenet_256x256_classifier.json").read_text())
    expected = expected_classifier_tensors(config)
    assert {k: list(v) for k, v in expected.items()} == manifest["tensors"]
    with pytest.raises(CheckpointError, match="no classifier section"):
        resolve_classifier_checkpoint(load_config("imagenet_256"), exp=tmp_path)


def test_classifier_download_is_checked_against_its_layout(server, tmp_path):
    from guided_diffusion.checkpoints import resolve_classifier_checkpoint
    from guided_diffusion.classifier import build_classifier

    base, _ = server
    path = resolve_classifier_checkpoint(SMALL_CLASSIFIER, exp=tmp_path / "ok", urls=[base + "/classifier.pt"],
                                         progress=False)
    assert path == tmp_path / "ok/logs/small/classifier.pt" and path.read_bytes() == _small_classifier_bytes()
    # the diffusion model's file served as the classifier: refused, nothing left
    with pytest.raises(CheckpointError, match="does not match the model") as info:
        resolve_classifier_checkpoint(SMALL_CLASSIFIER, exp=tmp_path, urls=[base + "/good.ckpt"], progress=False)
    assert "\n" not in str(info.value) and [p.name for p in tmp_path.iterdir()] == ["ok"]
    # a user's file: must exist, named with the flag the caller gives
    with pytest.raises(CheckpointError, match="--classifier_ckpt is empty"):
        resolve_classifier_checkpoint(SMALL_CLASSIFIER, exp=tmp_path, override=" ")
    own = tmp_path / "own.pt"
    torch.save(build_classifier(SMALL_CLASSIFIER["classifier"]).state_dict(), own)
    assert resolve_classifier_checkpoint(SMALL_CLASSIFIER, exp=tmp_path, override=own) == own
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope.pt does not exist"):
        resolve_classifier_checkpoint(SMALL_CLASSIFIER, exp=tmp_path, override=tmp_path / "nope.pt")
