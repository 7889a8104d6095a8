"""Weight thresholds against a brute-force search over each channel's raw values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from quantlens.core.settings import QuantSettings
from quantlens.core.thresholds import ErrorMethod
from quantlens.core.torch_engine.pipeline import analyze_model
from quantlens.core.weights import quantize_weights
from torch import nn


def _fq(x: np.ndarray, t, n_bits: int) -> np.ndarray:
    """MCT's signed quantizer written out again (independent of quantlens.core.quantizer)."""
    step = np.asarray(t, dtype=np.float64) / 2.0 ** (n_bits - 1)
    return np.clip(np.round(x / step), -(2.0 ** (n_bits - 1)), 2.0 ** (n_bits - 1) - 1) * step


def _brute_force(row: np.ndarray, n_bits: int, power: float, power_of_two: bool = True) -> float:
    """The candidate of least mean |error|^power; ties go to the larger. Power-of-two: 17
    octaves down from the covering one; free: 16 steps an octave down from the largest |w|."""
    top = np.abs(row).max()
    if power_of_two:
        k = math.ceil(math.log2(top))
        cands = 2.0 ** np.arange(k, k - 17, -1)
    else:
        cands = top * 2.0 ** (-np.arange(16 * 16 + 1) / 16)
    errs = np.array([np.mean(np.abs(_fq(row, c, n_bits) - row) ** power) for c in cands])
    return float(cands[np.flatnonzero(errs <= errs.min() * (1 + 1e-9))[0]])


@pytest.mark.parametrize(("method", "power"), [(ErrorMethod.MSE, 2.0), (ErrorMethod.MAE, 1.0), (ErrorMethod.LP, 3.0)])
@pytest.mark.parametrize("n_bits", [8, 4])
def test_channel_thresholds_match_brute_force(method, power, n_bits):
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(6, 3, 3, 3)) * 0.1
    _, report = quantize_weights("conv", w, 0, n_bits, method, l_p_value=power)
    for row, t in zip(w.reshape(6, -1), report.thresholds):
        assert t == _brute_force(row, n_bits, power)


@pytest.mark.parametrize(("method", "power"), [(ErrorMethod.MSE, 2.0), (ErrorMethod.MAE, 1.0), (ErrorMethod.LP, 3.0)])
@pytest.mark.parametrize("n_bits", [8, 5, 3])
def test_the_search_stops_early_only_where_no_later_candidate_wins(method, power, n_bits):
    """A block of channels stops at the first candidate that the largest weight's clipping
    alone makes lose. Rows whose best threshold lies deep (one weight 40x the others) or on
    the grid share blocks (14 rows of 4608) with plain ones: every row gets brute force's
    threshold over all 17 candidates, and the report's errors are numpy's on the result."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 512, 3, 3)) * 0.05
    w[::7, 0, 0, 0] = 2.0
    w[5] = np.round(w[5] * 64) / 64
    w[11] *= 1e-3
    wq, report = quantize_weights("conv", w, 0, n_bits, method, l_p_value=power)
    rows = w.reshape(40, -1)
    assert [float(t) for t in report.thresholds] == [_brute_force(r, n_bits, power) for r in rows]
    q_rows = _fq(rows, report.thresholds[:, None], n_bits)
    np.testing.assert_array_equal(wq.reshape(40, -1), q_rows)
    noise = np.sum((q_rows - rows) ** 2, axis=1)
    signal = np.sum(rows**2, axis=1)
    assert report.mse == pytest.approx(noise.sum() / rows.size, rel=1e-12)
    assert report.sqnr_db == pytest.approx(10 * math.log10(signal.sum() / noise.sum()), rel=1e-12)
    with np.errstate(divide="ignore"):  # row 5 lies on its grid: no noise
        worst = float(np.min(10 * np.log10(signal / noise)))
    assert report.worst_channel_sqnr_db == pytest.approx(worst, rel=1e-12)


@pytest.mark.parametrize(("shape", "n_bits"), [((128, 576), 8), ((64, 27), 4), ((300, 1), 2)])
@pytest.mark.parametrize(("method", "power"), [(ErrorMethod.MSE, 2.0), (ErrorMethod.MAE, 1.0)])
def test_free_thresholds_stop_early_only_where_no_later_candidate_wins(shape, n_bits, method, power):
    """Free thresholds lie 4.4% apart, so the candidates after the best one score only a
    little worse: where the floor is nearest the errors (MAE, outliers that the best
    threshold clips), a floor any higher than the clipping it bounds skips the winner."""
    rng = np.random.default_rng(4)
    w = rng.laplace(size=shape)
    w[rng.random(shape) < 0.01] *= 20  # outliers: the best threshold clips some of them
    _, report = quantize_weights("fc", w, 0, n_bits, method, power_of_two=False)
    assert [float(t) for t in report.thresholds] == [_brute_force(r, n_bits, power, False) for r in w]


def test_a_dead_output_channel_is_quantized_to_zeros_and_the_rest_searched():
    """A pruned (all-zero) output channel has no range to search: threshold 1.0, weights
    still zero; the live channels keep their own search (this used to raise in np.stack)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0.0
    g = torch.Generator().manual_seed(1)
    result = analyze_model(model, lambda: [torch.randn(16, 8, generator=g) for _ in range(3)], QuantSettings(), [])
    report = next(p for p in result.points if p.info.weight_module == "0").weights
    w = model[0].weight.detach().numpy().astype(np.float64)
    assert report.thresholds[1] == 1.0
    for i in (0, 2, 3):
        assert report.thresholds[i] == _brute_force(w[i], 8, 2.0)
    wq, _ = quantize_weights("0", w, 0, 8)
    assert not wq[1].any()


@pytest.mark.parametrize("per_channel", [True, False])
def test_the_report_statistics_are_those_of_the_raw_and_quantized_weights(per_channel):
    """mean, std, MSE, SQNR, the worst channel's SQNR and the DeiT change score, each
    recomputed with numpy from the weights and the quantizer written out again (:func:`_fq`)."""
    rng = np.random.default_rng(3)
    w = rng.standard_t(3, size=(5, 4, 3, 3)) * 0.05 + 0.01
    w[2] *= 20.0  # one wide channel, so a per-tensor grid flattens the others
    wq, report = quantize_weights("conv", w, 0, 8, per_channel=per_channel)
    t = report.thresholds.reshape(-1, 1, 1, 1) if per_channel else report.thresholds[0]
    expected = _fq(w, t, 8)
    np.testing.assert_array_equal(wq, expected)
    noise = (expected - w) ** 2
    assert report.mean == pytest.approx(w.mean(), rel=1e-12)
    assert report.std == pytest.approx(w.std(), rel=1e-12)
    assert report.mse == pytest.approx(noise.mean(), rel=1e-12)
    assert report.sqnr_db == pytest.approx(10 * np.log10(np.sum(w**2) / noise.sum()), rel=1e-9)
    per_channel_db = 10 * np.log10(np.sum(w**2, axis=(1, 2, 3)) / noise.sum(axis=(1, 2, 3)))
    assert report.worst_channel_sqnr_db == pytest.approx(per_channel_db.min(), rel=1e-9)
    change = abs(expected.mean() - w.mean()) / abs(w.mean()) + abs(expected.std() - w.std()) / w.std()
    assert report.change_score == pytest.approx(change, rel=1e-9)
