"""Test data shared by the core tests: synthetic activations and extreme float32 values."""

from __future__ import annotations

import numpy as np

from quantlens.core.distribution import Distribution
from quantlens.core.histogram import histogram_from_values

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal, 2^-126
F32_DENORM = float(np.finfo(np.float32).smallest_subnormal)  # 2^-149


def mixed_values(seed: int) -> np.ndarray:
    """Finite float32 values over the whole range: every sign, scale and special case."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(0.0, 1.0, 2000),
        rng.normal(0.0, 1e-3, 500),
        rng.laplace(0.0, 50.0, 500),
        np.exp(rng.uniform(-80, 80, 1000)) * rng.choice([-1.0, 1.0], 1000),  # e^-80 .. e^80
        rng.uniform(-4.0, 4.0, 500).round(2),  # many repeated values
        2.0 ** rng.integers(-126, 127, 200) * rng.choice([-1.0, 1.0], 200),  # exact powers of two
        [0.0, -0.0, 1.0, -1.0, F32_MAX, -F32_MAX, F32_TINY, -F32_TINY],
        [F32_DENORM, -F32_DENORM, 3 * F32_DENORM, 1e-40, -1e-40, 1e-39, -2e-39],
    ]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).astype(np.float32)


SYNTHETIC_KINDS = ["gauss_1e-3", "gauss_1", "gauss_37", "offset", "relu", "laplace_outliers", "uniform",
                   "uniform_pos", "bimodal", "discrete"]


def synthetic(kind: str, seed: int, n: int = 4000) -> np.ndarray:
    """Activation-like float32 samples of a named shape (seeded)."""
    rng = np.random.default_rng(seed)
    if kind == "gauss_1e-3":
        x = rng.normal(0.0, 1e-3, n)
    elif kind == "gauss_1":
        x = rng.normal(0.0, 1.0, n)
    elif kind == "gauss_37":
        x = rng.normal(0.5, 37.0, n)
    elif kind == "offset":
        x = rng.normal(10.0, 1.0, n)
    elif kind == "relu":  # unsigned, with many exact zeros
        x = np.maximum(rng.normal(0.2, 1.0, n), 0.0)
    elif kind == "laplace_outliers":
        x = rng.laplace(0.0, 1.0, n)
        x[rng.choice(n, 4, replace=False)] *= 1000.0
    elif kind == "uniform":
        x = rng.uniform(-3.0, 5.0, n)
    elif kind == "uniform_pos":
        x = rng.uniform(0.5, 6.0, n)
    elif kind == "bimodal":
        x = np.concatenate((rng.normal(-2.0, 0.3, n // 2), rng.normal(3.0, 0.5, n - n // 2)))
    elif kind == "discrete":
        x = rng.integers(-8, 9, n) / 4.0
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def hist_dist(x: np.ndarray, with_sumsq: bool = True) -> Distribution:
    """What the core sees after calibration: the histogram plus the exact sum of squares."""
    x32 = np.asarray(x, dtype=np.float32)
    v = x32.astype(np.float64)
    v = v[np.isfinite(v)]
    return Distribution.from_histogram(*histogram_from_values(x32), float(np.sum(v * v)) if with_sumsq else None)
