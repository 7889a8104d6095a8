"""Float-vs-quantized error measures, from raw arrays or from streamed sums.

SQNR is in dB: 20*log10(||x|| / ||x - q||), as torch.ao's numeric suite and ONNX Runtime
report it. Streaming sums (sum of squares of x, of the error, of q and of x*q) let the
simulation accumulate over a dataset without keeping tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SQNR_CAP_DB = 200.0
"""Reported when the error is exactly zero, so JSON never carries inf."""


def sqnr_db(x: np.ndarray, q: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    noise = float(np.sum((x - np.asarray(q, dtype=np.float64)) ** 2))
    return sqnr_from_sums(float(np.sum(x * x)), noise)


def sqnr_from_sums(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return SQNR_CAP_DB
    if signal <= 0.0:
        return -SQNR_CAP_DB
    return min(10.0 * math.log10(signal / noise), SQNR_CAP_DB)


@dataclass(frozen=True)
class ErrorSums:
    """Sufficient statistics of x (float) against q (quantized) over any number of batches."""

    count: float = 0.0
    sum_xx: float = 0.0
    sum_qq: float = 0.0
    sum_xq: float = 0.0
    sum_ee: float = 0.0

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            self.count + other.count,
            self.sum_xx + other.sum_xx,
            self.sum_qq + other.sum_qq,
            self.sum_xq + other.sum_xq,
            self.sum_ee + other.sum_ee,
        )

    @property
    def mse(self) -> float:
        return self.sum_ee / self.count if self.count else 0.0

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.sum_xx * self.sum_qq)
        if denom == 0.0:
            return 1.0 if self.sum_ee == 0.0 else 0.0
        return max(-1.0, min(1.0, self.sum_xq / denom))

    @property
    def sqnr_db(self) -> float:
        return sqnr_from_sums(self.sum_xx, self.sum_ee)

    def to_json(self) -> dict:
        return {"mse": self.mse, "cosine": self.cosine, "sqnr_db": self.sqnr_db}
