"""Float32 values that reach every corner of the float-bits histogram (shared by tests)."""

from __future__ import annotations

import numpy as np

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
