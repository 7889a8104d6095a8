"""Distribution statistics against numpy on the raw values."""

from __future__ import annotations

import numpy as np
import pytest

from quantlens.core.distribution import Distribution
from quantlens.core.histogram import bin_bounds, bin_indices
from tests.core.values import hist_dist, synthetic

QS = np.array([0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0])


KINDS = ["gauss_1", "gauss_1e-3", "offset", "relu", "laplace_outliers", "uniform", "bimodal", "discrete"]


def _data(kind: str, seed: int) -> np.ndarray:
    return synthetic(kind, seed, n=5000)


def _bin_width_at(values: np.ndarray) -> np.ndarray:
    lo, hi = bin_bounds(bin_indices(np.asarray(values, dtype=np.float32)))
    return hi - lo


# ---------------------------------------------------------------- moments, min and max


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_from_values_moments_exact(kind, seed):
    x = _data(kind, seed)
    v = x.astype(np.float64)
    d = Distribution.from_values(x)
    assert d.count == x.size
    np.testing.assert_allclose(d.mean, np.mean(v), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.std, np.std(v), rtol=1e-9)
    assert d.min == v.min()
    assert d.max == v.max()
    assert d.within_var == 0.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_from_histogram_moments(kind, seed):
    x = _data(kind, seed)
    v = x.astype(np.float64)
    d = hist_dist(x)
    assert d.count == x.size
    np.testing.assert_allclose(d.mean, np.mean(v), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(d.std, np.std(v), rtol=1e-6)
    np.testing.assert_allclose(d.sumsq, np.sum(v * v), rtol=1e-12)
    # min/max are the outer edges of the outermost bins: within one bin of the true values.
    assert d.min <= v.min() and v.min() - d.min <= _bin_width_at([v.min()])[0]
    assert d.max >= v.max() and d.max - v.max() <= _bin_width_at([v.max()])[0]


@pytest.mark.parametrize("kind", ["gauss_1", "relu", "uniform", "bimodal"])
def test_from_histogram_without_sumsq_estimates_std(kind):
    x = _data(kind, 0)
    d = hist_dist(x, with_sumsq=False)
    np.testing.assert_allclose(d.mean, np.mean(x.astype(np.float64)), rtol=1e-9)
    # Uniform-in-bin spread: bins are at most 2^-8 of the value wide.
    np.testing.assert_allclose(d.std, np.std(x.astype(np.float64)), rtol=1e-2)


def test_nonfinite_values_are_dropped():
    rng = np.random.default_rng(3)
    finite = rng.normal(size=1000).astype(np.float32)
    x = np.concatenate((finite, np.array([np.inf, -np.inf, np.nan, np.nan], dtype=np.float32)))
    v = finite.astype(np.float64)
    for d in (Distribution.from_values(x), hist_dist(x)):
        assert d.count == finite.size
        np.testing.assert_allclose(d.mean, v.mean(), rtol=1e-9)
        np.testing.assert_allclose(d.std, v.std(), rtol=1e-6)
        assert np.all(np.isfinite(d.lo)) and np.all(np.isfinite(d.hi))


def test_empty_distribution():
    for d in (Distribution.from_values(np.array([], dtype=np.float32)),
              Distribution.from_histogram(np.array([], dtype=np.int32), np.array([]), np.array([]))):
        assert d.count == 0.0
        assert d.mean == 0.0 and d.std == 0.0 and d.min == 0.0 and d.max == 0.0
        assert d.mass_outside(-1.0, 1.0) == 0.0
        np.testing.assert_array_equal(d.quantile(np.array([0.0, 0.5, 1.0])), 0.0)


def test_bins_sorted_and_disjoint():
    x = _data("laplace_outliers", 4)
    d = hist_dist(x)
    assert np.all(np.diff(d.lo) > 0)
    assert np.all(d.hi[:-1] <= d.lo[1:])
    assert np.all((d.lo <= d.s1 / d.n) & (d.s1 / d.n <= d.hi))


# ---------------------------------------------------------------- quantiles


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_from_values_quantiles_are_exact_order_statistics(kind, seed):
    x = _data(kind, seed)
    v = np.sort(x.astype(np.float64))
    d = Distribution.from_values(x)
    got = d.quantile(QS)
    # The right-continuous quantile: the value of rank floor(q * N) (0-based), an exact sample.
    expected = v[np.minimum(np.floor(QS * v.size).astype(int), v.size - 1)]
    np.testing.assert_array_equal(got, expected)
    # It is bracketed by numpy's 'lower' and 'higher' quantiles (around the default 'linear').
    assert np.all(np.quantile(v, QS, method="lower") <= got)
    assert np.all(got <= np.quantile(v, QS, method="higher"))
    # Where q * N is not an integer it is numpy's inverted-CDF quantile exactly.
    frac = QS * v.size != np.round(QS * v.size)
    np.testing.assert_array_equal(got[frac], np.quantile(v, QS[frac], method="inverted_cdf"))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_from_histogram_quantiles_within_one_bin(kind, seed):
    x = _data(kind, seed)
    v = np.sort(x.astype(np.float64))
    d = hist_dist(x)
    got = d.quantile(QS)
    # The sample of rank floor(q * N) lies in the same bin as the histogram's answer.
    ref = v[np.minimum(np.floor(QS * v.size).astype(int), v.size - 1)]
    width = _bin_width_at(ref)
    assert np.all(np.abs(got - ref) <= width), (QS, got, ref)
    # Against numpy's default (linear) quantile: within the bins of the two bracketing samples.
    lower = np.quantile(v, QS, method="lower")
    higher = np.quantile(v, QS, method="higher")
    assert np.all(got >= lower - _bin_width_at(lower))
    assert np.all(got <= higher + _bin_width_at(higher))
    lin = np.quantile(v, QS)
    tol = _bin_width_at(lower) + _bin_width_at(higher) + (higher - lower)
    assert np.all(np.abs(got - lin) <= tol)
    assert np.all(np.diff(got) >= 0)


# ---------------------------------------------------------------- restrict and mass_outside

WINDOWS = [(-1.0, 1.0), (-0.5, 2.0), (0.0, 0.3), (-3.0, 3.0), (1.0, 1.0), (-1e9, 1e9),
           (5.0, 6.0), (-100.0, -2.0)]


def _scaled_windows(v: np.ndarray):
    s = float(np.std(v)) or 1.0
    m = float(np.mean(v))
    return [(m + a * s, m + b * s) for a, b in WINDOWS]


@pytest.mark.parametrize("kind", KINDS)
def test_from_values_restrict_and_mass_outside_exact(kind):
    x = _data(kind, 0)
    v = x.astype(np.float64)
    d = Distribution.from_values(x)
    # Windows relative to the data, plus windows with edges exactly on sample values.
    windows = _scaled_windows(v) + [(float(np.quantile(v, 0.1, method="lower")),
                                     float(np.quantile(v, 0.8, method="lower")))]
    for low, high in windows:
        inside = (v >= low) & (v <= high)
        r = d.restrict(low, high)
        assert r.count == inside.sum()
        if inside.any():
            np.testing.assert_allclose(r.mean, v[inside].mean(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(r.std, v[inside].std(), rtol=1e-8, atol=1e-12)
            assert r.min == v[inside].min() and r.max == v[inside].max()
        np.testing.assert_allclose(d.mass_outside(low, high), 1.0 - inside.mean(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_from_histogram_restrict_and_mass_outside_within_cut_bins(kind):
    """Only the (at most two) bins that a window edge cuts are uncertain."""
    x = _data(kind, 1)
    v = x.astype(np.float64)
    d = hist_dist(x)
    idx = bin_indices(x)
    lo, hi = bin_bounds(idx)
    for low, high in _scaled_windows(v):
        inside = (v >= low) & (v <= high)
        fully = (lo >= low) & (hi <= high)
        touching = (hi >= low) & (lo <= high)
        assert fully.sum() <= inside.sum() <= touching.sum()
        r = d.restrict(low, high)
        assert fully.sum() - 1e-9 <= r.count <= touching.sum() + 1e-9
        if r.count:
            assert low <= r.min and r.max <= high
        out = d.mass_outside(low, high)
        assert 1.0 - touching.mean() - 1e-12 <= out <= 1.0 - fully.mean() + 1e-12
        np.testing.assert_allclose(out + r.count / d.count, 1.0, atol=1e-9)


def test_from_histogram_restrict_on_bin_edges_is_exact():
    """Windows whose edges are bin edges cut no bin: counts and means are exact."""
    x = _data("gauss_1", 2)
    v = x.astype(np.float64)
    d = hist_dist(x)
    for low, high in [(-1.0, 1.0), (-0.5, 0.25), (0.0, 2.0), (-2.0, 0.0)]:
        assert not np.any((v == low) | (v == high))  # no sample sits exactly on an edge
        inside = (v > low) & (v < high)
        r = d.restrict(low, high)
        assert r.count == pytest.approx(inside.sum(), abs=1e-9)
        np.testing.assert_allclose(r.mean, v[inside].mean(), rtol=1e-9)
        np.testing.assert_allclose(d.mass_outside(low, high), 1.0 - inside.mean(), atol=1e-12)
