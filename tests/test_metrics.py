"""functions/metrics.py: PSNR/SSIM against the reference's numbers, LPIPS conventions, Cons."""
import math

import pytest
import torch

from functions import metrics
from tests.shared import fixture


def test_psnr_ssim_match_reference_metric_pairs():
    pairs = fixture("preprocess_metrics.pt")["metric_pairs"]
    assert len(pairs) == 4
    for pair in pairs:
        p = metrics.psnr(pair["restored"], pair["original"]).item()
        s = metrics.ssim(pair["restored"], pair["original"])[0]
        assert abs(p - pair["psnr"]) < 1e-4, (p, pair["psnr"])
        assert abs(s - pair["ssim"]) < 1e-4, (s, pair["ssim"])


def test_psnr_is_per_image_and_known_value():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.zeros(2, 3, 8, 8)
    b[0] += 0.1  # mse 0.01 -> 20 dB
    b[1] += 0.01  # mse 1e-4 -> 40 dB
    p = metrics.psnr(a, b)
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(20.0, abs=1e-5)
    assert p[1].item() == pytest.approx(40.0, abs=1e-5)
    assert math.isinf(metrics.psnr(a[0], a[0]).item())


def test_ssim_batched_equals_single():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    batched = metrics.ssim(a, b)
    assert batched == [metrics.ssim(a[0], b[0])[0], metrics.ssim(a[1], b[1])[0]]
    assert metrics.ssim(a[0], a[0])[0] == pytest.approx(1.0)


class _Mask:
    """A tiny operator: keeps the first half of the pixels."""

    def A(self, x):
        return x.reshape(x.shape[0], -1)[:, : x[0].numel() // 2]


def test_consistency_is_rms_in_8bit_units():
    op = _Mask()
    x = torch.zeros(1, 3, 4, 4)
    y = op.A(x) + 2 / 255  # every measurement off by 2/255 in model space = 1 level of 255 on [0, 1]
    assert metrics.consistency(op, x, y).item() == pytest.approx(1.0, rel=1e-6)
    assert metrics.consistency(op, x, op.A(x)).item() == 0.0
    # x_hat is clamped to [-1, 1] as it is saved
    assert metrics.consistency(op, x + 5, op.A(x + 1)).item() == 0.0


def test_lpips_conventions_with_random_backbone():
    """official = VGG on raw [0, 1] inputs; correct = the chosen net on [-1, 1] inputs."""
    torch.manual_seed(0)
    m = metrics.LPIPSMetric("vgg", "cpu", random_backbone=True)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    raw = m._nets["vgg"]
    with torch.no_grad():
        assert torch.allclose(m.official(a, b), raw(a, b).flatten().double())
        assert torch.allclose(m.correct(a, b), raw(2 * a - 1, 2 * b - 1).flatten().double())
    assert m.correct(a, a).abs().max().item() < 1e-6
    assert not torch.allclose(m.official(a, b), m.correct(a, b))


def test_lpips_alex_also_builds_vgg_for_the_official_variant():
    m = metrics.LPIPSMetric("alex", "cpu", random_backbone=True)
    assert set(m._nets) == {"alex", "vgg"}


def test_lpips_unavailable_gives_none_and_one_warning(monkeypatch):
    def boom(*a, **k):
        raise OSError("Name or service not known\nsecond line")

    monkeypatch.setattr(metrics, "build_lpips_net", boom)
    lines = []
    m = metrics.LPIPSMetric("alex", "cpu", warn=lines.append)
    assert len(lines) == 1 and "\n" not in lines[0] and "LPIPS" in lines[0]
    x = torch.rand(1, 3, 8, 8)
    assert m.correct(x, x) is None and m.official(x, x) is None


def test_lpips_disabled():
    m = metrics.LPIPSMetric(None, "cpu")
    x = torch.rand(1, 3, 8, 8)
    assert m.correct(x, x) is None and m.official(x, x) is None


def test_fid_too_few_images_is_none_with_one_warning():
    lines = []
    assert metrics.fid_from_files(["a.png"], ["b.png", "c.png"], "cpu", warn=lines.append) is None
    assert len(lines) == 1


def test_mean_of_skips_missing_and_infinite():
    assert metrics.mean_of([1.0, None, 3.0, float("inf")]) == 2.0
    assert metrics.mean_of([None]) is None


def test_non_finite_metrics_are_counted_not_silently_dropped():
    """A diverged image (NaN) and an exact one (infinite PSNR) are stored as null in JSON; the
    summary's means are over the finite ones and says how many of each were left out."""
    from runners.results import non_finite, summarize

    scores = [{"psnr": float("inf"), "ssim": 1.0}, {"psnr": float("nan"), "ssim": float("nan")},
              {"psnr": 11.5, "ssim": 0.5}]
    records = [dict(s, non_finite=non_finite(s), nfe=3, seconds=1.0) for s in scores]
    assert records[0]["non_finite"] == {"psnr": "inf"} and records[2]["non_finite"] == {}
    summary = summarize(records)
    assert summary["psnr"] == 11.5 and summary["ssim"] == 0.75
    assert summary["non_finite_counts"] == {"psnr": {"inf": 1, "nan": 1}, "ssim": {"nan": 1}}
