"""The whole result of an analysis, and its JSON form (documented in docs/result-format.md).

The JSON is the contract between the engine, the CLI's ``--json``, the language server and
CI; ``FORMAT`` names its version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quantlens.core.activations import ActivationQuant
from quantlens.core.errors import Location, Problem
from quantlens.core.findings import Finding
from quantlens.core.measurements import OutputMetrics, Verification
from quantlens.core.metrics import ErrorSums
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import CalibrationResult, PointInfo
from quantlens.core.weights import WeightReport

FORMAT = "quantlens.result/1"


@dataclass
class PointResult:
    """Everything known about one quantization point."""

    info: PointInfo
    activation: ActivationQuant
    weights: WeightReport | None = None
    isolated: ErrorSums | None = None
    cumulative: ErrorSums | None = None
    custom: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    def to_json(self, with_curves: bool = True) -> dict:
        info = self.info
        return {
            "name": info.name,
            "kind": info.kind,
            "op": info.op,
            "modules": info.modules,
            "module_types": info.module_types,
            "activation_function": info.activation,
            "source": info.source.to_json() if info.source else None,
            "source_stack": [loc.to_json() for loc in info.source_stack],
            "call_site": info.call_site.to_json() if info.call_site else None,
            "library_source": info.library_source.to_json() if info.library_source else None,
            "order": info.order,
            "activation": self.activation.to_json(with_curves),
            "weights": self.weights.to_json() if self.weights else None,
            "metrics": {
                "isolated": self.isolated.to_json() if self.isolated else None,
                "cumulative": self.cumulative.to_json() if self.cumulative else None,
                "custom": self.custom,
            },
        }


@dataclass
class AnalysisResult:
    settings: QuantSettings
    calibration: CalibrationResult
    points: list[PointResult]
    output: OutputMetrics
    problems: list[Problem] = field(default_factory=list)
    """Non-fatal problems met on the way (e.g. NaN/Inf at a point)."""
    findings: list[Finding] = field(default_factory=list)
    """The diagnosis (filled by :func:`quantlens.core.diagnosis.diagnose`)."""
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    """Re-simulations with the k most sensitive points at 16 bits: k, points, output SQNR."""
    validation: CalibrationResult | None = None
    """Statistics of the validation inputs at the same points (when validation is configured)."""
    model: str = ""
    data: str = ""
    data_source: Location | None = None
    """Where the representative dataset is defined (the data function's ``def`` line): the
    dataset rules report there, not at a layer."""
    data_config: Location | None = None
    """The config entry that names the data function."""
    config_file: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    simulation_batches: int = 0
    """How many of the calibration batches the errors and the verification were measured on
    (the first ``num_simulation_batches``; 0: not measured)."""
    verified: list[Verification] | None = None
    """The re-simulated changes, when measured under ``settings`` (rules may read them: one
    point kept wide that recovers the output means the problem is not global); None when the
    verification has not run under them (estimated, or the diagnosis that chooses them)."""
    top_recommendation: dict[str, Any] | None = None
    """The verified change that gains most at the output: change, description, rule, the
    output SQNR before and after (see :mod:`quantlens.core.verification`)."""
    estimated: bool = False
    """True when the errors were estimated from statistics, not measured under these settings
    (the language server's fast path after a config edit, until the worker re-measures)."""

    def point(self, name: str) -> PointResult:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self, with_curves: bool = True) -> dict[str, Any]:
        return _clean({
            "format": FORMAT,
            "model": self.model,
            "data": self.data,
            "data_source": self.data_source.to_json() if self.data_source else None,
            "config_file": self.config_file,
            "settings": self.settings.to_json(),
            "calibration": {
                "num_batches": self.calibration.num_batches,
                "num_samples": self.calibration.num_samples,
                "input_signature": self.calibration.input_signature,
                "simulation_batches": self.simulation_batches,
            },
            "output": self.output.to_json(),
            "sensitivity": self.sensitivity,
            "top_recommendation": self.top_recommendation,
            "points": [p.to_json(with_curves) for p in self.points],
            "findings": [f.to_json() for f in self.findings],
            "problems": [p.to_json() for p in self.problems],
            "timings_s": self.timings,
            "estimated": self.estimated,
        })


def _clean(value: Any) -> Any:
    """JSON has no inf/NaN: infinities become strings, NaN becomes null."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
