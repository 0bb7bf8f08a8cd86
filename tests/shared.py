"""One place that knows where ../shared is and how to skip when it is absent.

Tests that read reference fixtures call `fixture(name)` or `shared_path(...)`.
On a user's machine ../shared does not exist and those tests skip; under
EQUS_REQUIRE_SHARED=1 (set by .ci/run) its absence is a failure instead.
"""
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("EQUS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("EQUS_REQUIRE_SHARED") == "1":
            pytest.fail(f"{path} is missing but EQUS_REQUIRE_SHARED=1 requires ../shared")
        pytest.skip(f"{path} not present (reference fixtures live in ../shared)")
    return path


_CACHE = {}


def fixture(name: str):
    """Load ../shared/fixtures/<name> once per session (the files hold plain tensors and dicts)."""
    if name not in _CACHE:
        _CACHE[name] = torch.load(shared_path("fixtures", name), weights_only=False, map_location="cpu")
    return _CACHE[name]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: on a shared 2-core machine a second thread only adds waiting (10x under load).
    A test module opts in by importing it (`from tests.shared import one_thread`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
