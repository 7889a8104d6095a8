"""A one-dimensional distribution held as sorted bins with counts and sums.

Threshold search only ever asks "how much mass, sum and squared sum lies between a and b?"
for the cell boundaries of a candidate quantizer. This module answers that with prefix
sums and a binary search, so one candidate costs O(levels * log bins), independent of how
many values were seen. Inside a bin that a boundary cuts, mass is taken as uniform; with
the float-bits histogram and power-of-two candidates no boundary ever cuts a bin, so the
answers are exact there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantlens.core import histogram


ZERO_BIN = 1e-30
"""Bins entirely within +-1e-30 hold zeros (and denormals): exactly representable values."""


@dataclass(frozen=True)
class Distribution:
    """Sorted, non-overlapping bins [lo, hi) with their count ``n`` and sum ``s1``.

    ``within_var`` is the sum of squared deviations of values from their own bin mean
    (exact when built from raw values, estimated as uniform-in-bin otherwise). It is the
    same for every candidate threshold, so it never changes which one wins; it only makes
    reported errors absolute.
    """

    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    s1: np.ndarray
    within_var: float
    vmin: float | None = None
    vmax: float | None = None
    """Exact extremes when the producer tracked them (calibration does)."""

    @staticmethod
    def from_histogram(
        indices: np.ndarray, counts: np.ndarray, sums: np.ndarray, sumsq: float | None = None,
        vmin: float | None = None, vmax: float | None = None,
    ) -> Distribution:
        """Build from the sparse float-bits histogram (non-finite bins are dropped).

        With ``sumsq`` (the exact sum of squares of the finite values) the within-bin
        variance, and so every reported MSE, is exact; without it, bins count as uniform.
        """
        keep = (counts > 0) & ~histogram.is_nonfinite(indices)
        lo, hi = histogram.bin_bounds(np.asarray(indices)[keep])
        n = np.asarray(counts, dtype=np.float64)[keep]
        s1 = np.asarray(sums, dtype=np.float64)[keep]
        order = np.argsort(lo, kind="stable")
        lo, hi, n, s1 = lo[order], hi[order], n[order], s1[order]
        # A bin's mean must lie inside it; float32 per-batch sums can drift by an ulp.
        mean = np.clip(s1 / n, lo, hi)
        s1 = mean * n
        if sumsq is None:
            within = float(np.sum(n * (hi - lo) ** 2) / 12.0)
        else:
            within = max(float(sumsq) - float(np.sum(s1 * s1 / n)), 0.0)
        return Distribution(lo, hi, n, s1, within, vmin, vmax)

    @staticmethod
    def from_values(x: np.ndarray) -> Distribution:
        """Exact distribution of raw values: one zero-width bin per distinct value."""
        v = np.ravel(np.asarray(x, dtype=np.float64))
        v = v[np.isfinite(v)]
        values, counts = np.unique(v, return_counts=True)
        n = counts.astype(np.float64)
        return Distribution(values, values.copy(), n, values * n, 0.0,
                            float(values[0]) if len(values) else None, float(values[-1]) if len(values) else None)

    @property
    def count(self) -> float:
        return float(self.n.sum())

    @property
    def mean(self) -> float:
        c = self.count
        return float(self.s1.sum() / c) if c else 0.0

    @property
    def sumsq(self) -> float:
        """Sum of squared values (exact up to ``within_var``'s estimate)."""
        return float(np.sum(self.s1 * self.s1 / np.maximum(self.n, 1e-300)) + self.within_var)

    @property
    def std(self) -> float:
        c = self.count
        if not c:
            return 0.0
        return float(np.sqrt(max(self.sumsq / c - self.mean**2, 0.0)))

    @property
    def min(self) -> float:
        """Smallest value: exact when known, else the edge of the lowest bin that covers it."""
        if self.vmin is not None:
            return self.vmin
        if not len(self.lo):
            return 0.0
        # All values of the bin on its upper edge (e.g. exactly -2^k, or -0.0): that edge.
        return float(self.hi[0]) if self.s1[0] == self.hi[0] * self.n[0] else float(self.lo[0])

    @property
    def max(self) -> float:
        """Largest value: exact when known, else the edge of the highest bin that covers it."""
        if self.vmax is not None:
            return self.vmax
        if not len(self.hi):
            return 0.0
        return float(self.lo[-1]) if self.s1[-1] == self.lo[-1] * self.n[-1] else float(self.hi[-1])

    def cumulative(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Count, sum, squared-mean sum and occupied width of the values below each ``x``.

        Returns arrays shaped like ``x``: (n, s1, s1^2/n, width of non-empty bins). All four
        are linear in the covered fraction of a cut bin, which keeps cell sums consistent.
        """
        (n_c, s_c, q_c, w_c), (n_b, s_b, q_b, w_b) = self._prefix()
        x = np.asarray(x, dtype=np.float64)
        k = np.searchsorted(self.lo, x, side="left")  # bins with lo < x
        last = np.maximum(k - 1, 0)
        width = self.hi[last] - self.lo[last] if len(self.lo) else np.zeros_like(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(width > 0, (x - self.lo[last]) / width, 1.0) if len(self.lo) else x * 0
        frac = np.where(k > 0, np.clip(frac, 0.0, 1.0), 0.0)
        full = np.maximum(k - 1, 0)
        base = np.where(k > 0, full, 0)

        def at(prefix: np.ndarray, per_bin: np.ndarray) -> np.ndarray:
            if not len(per_bin):
                return np.zeros_like(x)
            return np.where(k > 0, prefix[base] + frac * per_bin[last], 0.0)

        return at(n_c, n_b), at(s_c, s_b), at(q_c, q_b), at(w_c, w_b)

    def _prefix(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Prefix sums and the per-bin values they sum (count, sum, squared-mean sum, width),
        computed once: every candidate of every method reads them."""
        cached = self.__dict__.get("_prefix_cache")
        if cached is None:
            per_bin = (self.n, self.s1, self.s1 * self.s1 / np.maximum(self.n, 1e-300), self.hi - self.lo)
            prefix = tuple(np.concatenate(([0.0], np.cumsum(a))) for a in per_bin)
            cached = (prefix, per_bin)
            object.__setattr__(self, "_prefix_cache", cached)
        return cached

    def shifted(self, offset: float) -> Distribution:
        """The distribution of x + offset (bins move; within-bin spread is unchanged); itself
        for no offset, which is most points' (only shift-negative correction shifts)."""
        if not offset:
            return self
        return Distribution(self.lo + offset, self.hi + offset, self.n, self.s1 + offset * self.n, self.within_var,
                            None if self.vmin is None else self.vmin + offset,
                            None if self.vmax is None else self.vmax + offset)

    def without_zeros(self) -> Distribution:
        """The values that are not exactly zero (ReLU-family outputs hold many exact zeros)."""
        keep = (self.hi > ZERO_BIN) | (self.lo < -ZERO_BIN)
        return Distribution(self.lo[keep], self.hi[keep], self.n[keep], self.s1[keep], self.within_var)

    def restrict(self, low: float, high: float) -> Distribution:
        """The part of the distribution inside [low, high] (cut bins taken as uniform)."""
        if not len(self.lo):
            return self
        keep = (self.hi >= low) & (self.lo <= high)
        lo, hi, n, s1 = self.lo[keep], self.hi[keep], self.n[keep], self.s1[keep]
        new_lo = np.maximum(lo, low)
        new_hi = np.minimum(hi, high)
        width = hi - lo
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(width > 0, (new_hi - new_lo) / width, 1.0)
        mean = s1 / np.maximum(n, 1e-300)
        # A bin whose mean sits on an edge holds one repeated value there: keep it or drop it
        # whole instead of cutting it as if it were spread out.
        at_edge = (width > 0) & (frac < 1.0) & ((mean == lo) | (mean == hi))
        frac = np.where(at_edge, ((mean >= low) & (mean <= high)).astype(np.float64), frac)
        new_lo = np.where(at_edge, mean, new_lo)
        new_hi = np.where(at_edge, np.nextafter(mean, np.inf), new_hi)
        cut = (frac < 1.0) & ~at_edge
        mean = np.where(cut, 0.5 * (new_lo + new_hi), mean)
        n2 = n * frac
        nz = n2 > 0
        new_lo, new_hi, n2, mean = new_lo[nz], new_hi[nz], n2[nz], mean[nz]
        within = float(np.sum(n2 * (new_hi - new_lo) ** 2) / 12.0)
        if self.within_var == 0.0:
            within = 0.0
        vmin = None if self.vmin is None or self.vmin < low else self.vmin
        vmax = None if self.vmax is None or self.vmax > high else self.vmax
        return Distribution(new_lo, new_hi, n2, mean * n2, within, vmin, vmax)

    def quantile(self, q: np.ndarray) -> np.ndarray:
        """Quantiles by linear interpolation inside bins (exact for raw-value bins)."""
        q = np.asarray(q, dtype=np.float64)
        if not len(self.n):
            return np.zeros_like(q)
        cum = np.concatenate(([0.0], np.cumsum(self.n)))
        target = q * cum[-1]
        k = np.clip(np.searchsorted(cum, target, side="right") - 1, 0, len(self.n) - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.clip((target - cum[k]) / self.n[k], 0.0, 1.0)
        return self.lo[k] + frac * (self.hi[k] - self.lo[k])

    def mass_outside(self, low: float, high: float) -> float:
        """Fraction of the mass strictly outside [low, high]."""
        total = self.count
        if not total:
            return 0.0
        below = float(self.cumulative(np.array([low]))[0][0])
        above = total - float(self.cumulative(np.array([np.nextafter(high, np.inf)]))[0][0])
        return (below + above) / total
