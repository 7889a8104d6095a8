"""What every rule reads: the result, the settings and cached per-point helpers."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from quantlens.core.activations import SearchMemo, predicted_sqnr
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.distribution import Distribution
from quantlens.core.errors import Location
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.stats import PointStats
from quantlens.core.thresholds import effective_z, search_threshold

FAR_OUT_IQR = 3.0
"""Tukey's far-out fences: the bulk is [q1 - 3 IQR, q3 + 3 IQR]."""
NATURAL_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "tanh": (-1.0, 1.0),
}
"""Outputs bounded by construction, by activation function or op (``Softmax`` is nn.Softmax)."""


UNION_OPS = frozenset({"cat", "stack"})
"""Ops whose output holds their inputs' values and no others."""


def _constructed_range(p: PointResult) -> tuple[float, float] | None:
    """The range of a point's own activation function or op (a sigmoid's [0, 1]), or None."""
    for name in (p.info.activation, p.info.op):
        if name is not None and name.lower() in NATURAL_RANGES:
            return NATURAL_RANGES[name.lower()]
    return None


class Context:
    def __init__(self, result: AnalysisResult, settings: DiagnosisSettings, memo: SearchMemo | None = None):
        self.result = result
        self.settings = settings
        self.points = result.points
        self.memo = memo if memo is not None else SearchMemo()

    def stats(self, p: PointResult) -> PointStats:
        return self.result.calibration.stats[p.name]

    def dist(self, p: PointResult) -> Distribution:
        return self.part(p, "all")

    def part(self, p: PointResult, part: str) -> Distribution:
        """A point's values: "all", one calibration half ("half0", "half1"), or the "bulk"
        inside Tukey's far-out fences [q1 - 3 IQR, q3 + 3 IQR] (not mean +- Z sigma: a few
        massive channels inflate sigma so much that the "bulk" would be the outliers
        themselves). Settings-independent, so memoised across edits."""
        stats = self.stats(p)
        if part == "all":
            return self.memo.summary(p.name, stats).dist
        if part in ("half0", "half1"):
            return self.memo.cached(stats, (p.name, "part", part), lambda: stats.distribution(int(part[-1])))
        if part == "bulk":
            def bulk() -> Distribution:
                dist = self.dist(p)
                q1, q3 = dist.quantile(np.array([0.25, 0.75]))
                iqr = float(q3 - q1)
                return dist.restrict(float(q1) - FAR_OUT_IQR * iqr, float(q3) + FAR_OUT_IQR * iqr)

            return self.memo.cached(stats, (p.name, "part", part), bulk)
        raise KeyError(part)

    def search(self, p: PointResult, part: str, *, z_threshold: float, signed: bool | None, shift: float) -> float:
        """The configured method's threshold over one part of a point's values, with the given
        z_threshold and shift: the one re-search every rule uses, memoised across edits."""
        s = self.result.settings
        if math.isfinite(z_threshold):  # (an infinite z removes nothing: the part is not needed for the key)
            z_threshold = effective_z(self.part(p, part), z_threshold)
        key = (p.name, "search", part, s.activation_error_method, p.activation.n_bits, s.l_p_value, z_threshold,
               s.power_of_two_thresholds, signed, shift)

        def compute() -> float:
            dist = self.part(p, part)
            return search_threshold(dist.shifted(shift), s.activation_error_method,
                                    p.activation.n_bits, l_p_value=s.l_p_value, z_threshold=z_threshold,
                                    power_of_two=s.power_of_two_thresholds, signed=signed).threshold

        return self.memo.cached(self.stats(p), key, compute)

    def locations(self, p: PointResult) -> tuple[Location, ...]:
        found = [loc for loc in (p.info.source, p.info.call_site) if loc is not None]
        return tuple(dict.fromkeys(found))

    def z_max(self, p: PointResult) -> float:
        a = p.activation
        if a.std <= 0:
            return 0.0
        return max((a.max - a.mean) / a.std, (a.mean - a.min) / a.std)

    def sqnr_at(self, p: PointResult, threshold: float, part: str = "all", *, signed: bool | None = None,
                shift: float | None = None) -> float:
        """Predicted SQNR of one part of a point's values at ``threshold`` (memoised)."""
        a = p.activation
        signed = a.signed if signed is None else signed
        shift = a.shift if shift is None else shift
        key = (p.name, "sqnr", part, threshold, a.n_bits, signed, shift)
        return self.memo.cached(self.stats(p), key,
                                lambda: predicted_sqnr(self.part(p, part), threshold, a.n_bits, signed, shift))

    def scores(self, sums: ErrorSums, custom: dict[str, float]) -> dict[str, float]:
        """XQuant's normalised scores of ``sums`` (and the user's metrics) that have limits."""
        limits = self.settings.threshold_quantize_error
        scores = {m: self.settings.normalised(m, sums) for m in ("mse", "cs", "sqnr") if m in limits}
        scores.update({k: v for k, v in custom.items() if k in limits})
        return scores

    def failed(self, sums: ErrorSums, custom: dict[str, float]) -> dict[str, float]:
        """The metrics on which ``sums`` passes its degradation limit, with their scores."""
        return {m: s for m, s in self.scores(sums, custom).items() if self.settings.is_degraded(m, s)}

    @cached_property
    def degraded(self) -> frozenset[str]:
        """The quantized points whose cumulative error fails a limit (what degraded-layer
        reports; every rule that asks "is this point degraded" reads this one answer)."""
        return frozenset(p.name for p in self.quantized if p.cumulative is not None and self.failed(p.cumulative, p.custom))

    @cached_property
    def quantized(self) -> list[PointResult]:
        return [p for p in self.points if p.activation.quantize]

    @cached_property
    def by_name(self) -> dict[str, PointResult]:
        return {p.name: p for p in self.points}

    def natural_range(self, p: PointResult) -> tuple[float, float] | None:
        """The range a point's output lies in by construction, or None: a sigmoid's [0, 1], or
        for a concatenation of bounded outputs (two heads' probabilities) the union of theirs,
        while its values lie inside that union (an op between them that is no point, such as
        a scale, could move it)."""
        own = _constructed_range(p)
        if own is not None or p.info.op not in UNION_OPS or not p.info.inputs:
            return own
        ranges = [self.natural_range(self.by_name[n]) if n in self.by_name else None for n in p.info.inputs]
        if any(r is None for r in ranges):
            return None
        low, high = min(r[0] for r in ranges if r), max(r[1] for r in ranges if r)
        return (low, high) if low <= p.activation.min and p.activation.max <= high else None

    def is_probability(self, p: PointResult) -> bool:
        """A sigmoid or softmax output, or a concatenation of them: bounded to [0, 1], its
        confident values few and at the top."""
        return self.natural_range(p) == (0.0, 1.0)

