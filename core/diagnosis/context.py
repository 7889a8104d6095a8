"""What every rule reads: the result, the settings and cached per-point helpers."""

from __future__ import annotations

import math
from functools import cached_property

from quantlens.core.activations import predicted_sqnr
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.distribution import Distribution
from quantlens.core.errors import Location
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.stats import PointStats


class Context:
    def __init__(self, result: AnalysisResult, settings: DiagnosisSettings):
        self.result = result
        self.settings = settings
        self.points = result.points
        self._dist: dict[str, Distribution] = {}
        self.degraded: set[str] = set()

    def stats(self, p: PointResult) -> PointStats:
        return self.result.calibration.stats[p.name]

    def dist(self, p: PointResult) -> Distribution:
        if p.name not in self._dist:
            self._dist[p.name] = self.stats(p).distribution()
        return self._dist[p.name]

    def locations(self, p: PointResult) -> tuple[Location, ...]:
        found = [loc for loc in (p.info.source, p.info.call_site) if loc is not None]
        return tuple(dict.fromkeys(found))

    def z_max(self, p: PointResult) -> float:
        a = p.activation
        if a.std <= 0:
            return 0.0
        return max((a.max - a.mean) / a.std, (a.mean - a.min) / a.std)

    def sqnr_at(self, p: PointResult, threshold: float, dist: Distribution | None = None) -> float:
        a = p.activation
        return predicted_sqnr(dist or self.dist(p), threshold, a.n_bits, a.signed, a.shift)

    @cached_property
    def quantized(self) -> list[PointResult]:
        return [p for p in self.points if p.activation.quantize]

    @cached_property
    def by_name(self) -> dict[str, PointResult]:
        return {p.name: p for p in self.points}

    def fmt_db(self, value: float) -> str:
        return "inf" if math.isinf(value) else f"{value:.1f} dB"
