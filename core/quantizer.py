"""The uniform symmetric quantizer that every part of quantlens simulates.

It is MCT's power-of-two/symmetric quantizer: for a threshold t and n bits,

* signed:   step = t / 2^(n-1), integer levels j in [-2^(n-1), 2^(n-1) - 1], range [-t, t - step];
* unsigned: step = t / 2^n,     integer levels j in [0, 2^n - 1],              range [0, t - step];

and Q(x) = clip(round(x / step), j_min, j_max) * step, rounding half to even (as torch does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The integer levels and step of one quantizer."""

    step: float
    j_min: int
    j_max: int

    @staticmethod
    def of(threshold: float, n_bits: int, signed: bool) -> Grid:
        if signed:
            return Grid(threshold / 2 ** (n_bits - 1), -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1)
        return Grid(threshold / 2**n_bits, 0, 2**n_bits - 1)


def fake_quantize(x: np.ndarray, threshold: np.ndarray | float, n_bits: int, signed: bool) -> np.ndarray:
    """Quantize and dequantize ``x``; ``threshold`` broadcasts against ``x`` (per channel)."""
    t = np.asarray(threshold, dtype=np.float64)
    levels = 2.0 ** (n_bits - 1) if signed else 2.0**n_bits
    step = t / levels
    j_min = -levels if signed else 0.0
    j_max = levels - 1
    safe = np.where(step > 0, step, 1.0)
    q = np.clip(np.round(np.asarray(x, dtype=np.float64) / safe), j_min, j_max) * safe
    return np.where(step > 0, q, 0.0)
