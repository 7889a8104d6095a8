"""Streaming statistics against numpy on the full raw tensors (sample_net, 4 batches)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantlens.core import histogram
from quantlens.core.stats import CalibrationResult
from quantlens.core.torch_engine.calibrate import calibrate_batches
from tests.core.values import mixed_values

MODELS = Path(__file__).resolve().parent / "models"


def _raw_outputs(model, module_name: str, batches, pre: bool = False) -> list[np.ndarray]:
    """Every batch's output (or input with ``pre``) of one module, by a plain hook."""
    module = dict(model.named_modules())[module_name]
    seen: list[np.ndarray] = []
    if pre:
        handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().numpy().copy()))
    else:
        handle = module.register_forward_hook(lambda m, a, o: seen.append(o.detach().numpy().copy()))
    with torch.no_grad():
        for b in batches:
            model(b)
    handle.remove()
    return seen


@pytest.mark.parametrize("point,module,pre", [
    ("stem.0", "stem.2", False),  # fused conv+BN+ReLU6: the ReLU6 output
    ("cat_0", "lonely_bn", True),  # the concatenation: what lonely_bn receives
    ("gelu", "gelu", False),
])
def test_statistics_match_numpy(built, sample, calibration, point, module, pre):
    model, _ = built
    raw = _raw_outputs(model, module, sample.batches(), pre)
    allx = np.concatenate([r.ravel() for r in raw]).astype(np.float64)
    s = calibration.stats[point]
    assert s.count == allx.size
    assert s.min == allx.min() and s.max == allx.max()
    dist = s.distribution()
    assert dist.mean == pytest.approx(allx.mean(), rel=1e-7, abs=1e-9)
    assert dist.std == pytest.approx(allx.std(), rel=1e-6)
    assert s.sumsq == pytest.approx(np.sum(allx**2), rel=1e-7)
    assert s.negative_fraction() == pytest.approx(np.mean(allx < 0))
    idx, counts, sums = histogram.histogram_from_values(allx.astype(np.float32))
    assert np.array_equal(s.bins, idx)
    assert np.array_equal(s.counts.sum(0), counts)
    np.testing.assert_allclose(s.sums.sum(0), sums, rtol=1e-12)  # exact bin sums vs float64 summation
    # halves: even batches in 0, odd in 1
    even = np.concatenate([raw[i].ravel() for i in range(0, len(raw), 2)]).astype(np.float32)
    idx0, counts0, _ = histogram.histogram_from_values(even)
    got0 = dict(zip(s.bins.tolist(), s.counts[0].tolist()))
    assert {k: v for k, v in got0.items() if v} == dict(zip(idx0.tolist(), counts0.tolist()))
    # per-channel extremes over the channel axis
    stacked = np.concatenate(raw, axis=0)
    axis = calibration.point(point).channel_axis
    other = tuple(d for d in range(stacked.ndim) if d != axis)
    np.testing.assert_array_equal(s.channel_max, stacked.max(axis=other))
    np.testing.assert_array_equal(s.channel_min, stacked.min(axis=other))
    # quartiles within one histogram bin of numpy's
    q1, q3 = dist.quantile(np.array([0.25, 0.75]))
    for got, want in ((q1, np.quantile(allx, 0.25)), (q3, np.quantile(allx, 0.75))):
        assert abs(got - want) <= max(abs(want) * 2.0**-7, 1e-6)


def test_library_attention_matches_within_float_rounding(built, sample, calibration):
    """Under the function mode torch's attention takes its composite path instead of the fused
    kernel: the same values up to float rounding, not bit for bit."""
    model, _ = built
    allx = np.concatenate([r.ravel() for r in _raw_outputs(model, "encoder.norm2", sample.batches())])
    s = calibration.stats["encoder.norm2"]
    assert s.count == allx.size
    assert s.min == pytest.approx(allx.min(), rel=1e-5) and s.max == pytest.approx(allx.max(), rel=1e-5)
    assert s.distribution().std == pytest.approx(allx.std(), rel=1e-5)


def test_concat_input_ranges(built, sample, calibration):
    model, _ = built
    raw = np.concatenate(_raw_outputs(model, "lonely_bn", sample.batches(), pre=True))
    s = calibration.stats["cat_0"]
    np.testing.assert_allclose(s.input_min, [raw[:, :8].min(), raw[:, 8:].min()])
    np.testing.assert_allclose(s.input_max, [raw[:, :8].max(), raw[:, 8:].max()])


def test_input_channel_means_for_bias_correction(built, sample, calibration):
    model, _ = built
    raw = np.concatenate(_raw_outputs(model, "fc", sample.batches(), pre=True))
    np.testing.assert_allclose(calibration.stats["fc"].input_channel_mean, raw.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_memory_does_not_grow_with_the_data(built, sample):
    """Statistics of 2 and of 12 batches have the same size: nothing per sample is kept."""
    model, sites = built
    small = calibrate_batches(model, sample.batches(2), [MODELS], sites)
    large = calibrate_batches(model, sample.batches(12, seed=5), [MODELS], sites)
    for name in small.stats:
        a, b = small.stats[name], large.stats[name]
        assert a.channel_min.shape == b.channel_min.shape
        assert len(b.bins) <= histogram.NUM_BINS and b.counts.shape == (2, len(b.bins))
    assert large.stats["fc"].count == 6 * small.stats["fc"].count


def test_unpacking_and_chunking_leave_the_statistics_unchanged(built, sample, calibration, monkeypatch):
    """Packed cells are unpacked every MAX_PACKED_VALUES values and large tensors go in chunks;
    forcing both to happen on every call must not change a single count or sum."""
    from quantlens.core.torch_engine import collector

    monkeypatch.setattr(histogram, "MAX_PACKED_VALUES", 1000)
    monkeypatch.setattr(collector, "CHUNK", 300)
    model, sites = built
    forced = calibrate_batches(model, sample.batches(), [MODELS], sites)
    for name, s in calibration.stats.items():
        t = forced.stats[name]
        assert np.array_equal(s.bins, t.bins) and np.array_equal(s.counts, t.counts)
        assert np.array_equal(s.sums, t.sums)
        assert t.sumsq == pytest.approx(s.sumsq, rel=1e-6)


def test_msgpack_round_trip(calibration):
    data = calibration.to_msgpack()
    back = CalibrationResult.from_msgpack(data)
    assert [p.name for p in back.points] == [p.name for p in calibration.points]
    assert back.points[0] == calibration.points[0]
    for name, s in calibration.stats.items():
        t = back.stats[name]
        assert np.array_equal(s.counts, t.counts) and np.array_equal(s.sums, t.sums)
        assert s.sumsq == t.sumsq and s.min == t.min
    assert b"pickle" not in data


def test_nonfinite_values_are_counted_and_left_out(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([1.0, 1e38, 1.0])))  # overflows to inf
        model[0].bias.zero_()
    batch = torch.tensor([[1.0, 10.0, 2.0], [3.0, -1e-38, 0.5]])
    stats = calibrate_batches(model, [batch], [tmp_path]).stats["0"]
    assert stats.nonfinite == 1
    assert stats.count == 5 and stats.max == 3.0 and stats.min == pytest.approx(-1.0)


def test_extreme_values_through_the_torch_path_match_numpy():
    """Signed zeros, subnormals, powers of two and values near float32's limits: the packed
    scatter's bins, counts and exact sums equal the numpy reference, and a sum of squares
    beyond float32's range (values above 2^64) does not overflow into the statistics."""
    from quantlens.core.stats import PointInfo
    from quantlens.core.torch_engine.collector import Collector

    x = mixed_values(3)
    x = x[np.isfinite(x)]
    point = PointInfo(name="p", kind="module", op="Identity", modules=["p"], module_types=["Identity"],
                      activation=None, source=None)
    collector = Collector([point], torch.nn.Identity(), torch.device("cpu"))
    acc = collector.acc["p"]
    half = len(x) // 2
    acc.observe(torch.from_numpy(x[:half].copy()), 0)
    acc.observe(torch.from_numpy(x[half:].copy()), 1)
    s = acc.finish()
    idx, counts, _ = histogram.histogram_from_values(x)
    assert np.array_equal(s.bins, idx) and np.array_equal(s.counts.sum(0), counts)
    order = np.argsort(histogram.bin_indices(x), kind="stable")
    groups = np.split(x[order].astype(np.float64), np.cumsum(counts.astype(np.int64))[:-1])
    np.testing.assert_array_equal(s.sums.sum(0), [math.fsum(g) for g in groups])
    assert s.count == len(x) and s.min == x.min() and s.max == x.max()
    want = math.fsum(v * v for v in x.astype(np.float64))
    assert np.isfinite(s.sumsq) and s.sumsq == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("budget", [256 << 20, 3 << 20])
def test_two_row_scatter_leaves_the_statistics_unchanged(built, sample, calibration, monkeypatch, budget):
    """Every point scattering into two rows (and with a small budget, only the first one), odd
    sizes falling back to one row, must give the very counts and sums of one row."""
    from quantlens.core.torch_engine import collector

    monkeypatch.setattr(collector, "PARALLEL_MIN", 1)
    monkeypatch.setattr(collector, "PARALLEL_BYTES", budget)
    monkeypatch.setattr(collector, "CHUNK", 301)  # odd chunks too
    model, sites = built
    forced = calibrate_batches(model, sample.batches(), [MODELS], sites)
    for name, s in calibration.stats.items():
        t = forced.stats[name]
        assert np.array_equal(s.bins, t.bins) and np.array_equal(s.counts, t.counts), name
        assert np.array_equal(s.sums, t.sums), name
