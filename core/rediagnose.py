"""The torch-free entry point: cached statistics + config + last measurements -> findings.

The language server calls :func:`rediagnose` on every config save; the worker's full run
ends with the same call, so a server that re-diagnoses the worker's measurements settles on
exactly the findings a fresh run gives (the invariant of an incremental system).

Measurements taken under other settings are stale. They are never used as if current:
each point's error is re-estimated from the statistics (the predicted change of its own
quantization noise, added to what was measured), and every finding that reads those
numbers says it is an estimate, until the worker's simulation replaces it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quantlens.core.activations import ActivationQuant, SearchMemo, quantize_activations
from quantlens.core.config import FuncRef, ProjectConfig
from quantlens.core.diagnosis import DiagnosisSettings, diagnose, matches, suppressed
from quantlens.core.errors import Location, Problem
from quantlens.core.findings import Finding
from quantlens.core.measurements import Measurements, OutputMetrics, PointMeasurement
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import CalibrationResult
from quantlens.core.verification import apply_verified

MEASURED_RULES = frozenset({"degraded-layer", "output-degraded", "global-degradation", "first-divergence",
                            "sensitive-layers", "degraded-unexplained", "activation-product", "best-fix"})
"""Rules whose findings quote simulated errors."""
WEIGHT_RULES = frozenset({"weight-precision", "bias-correction"})
"""Rules whose findings read the weight reports."""
ESTIMATE_NOTE = " (estimated from statistics until the worker measures the new settings)"


def assemble(calibration: CalibrationResult, settings: QuantSettings, measurements: Measurements,
             memo: SearchMemo | None = None) -> AnalysisResult:
    """The analysis result under ``settings``: thresholds from the statistics, errors from the
    measurements when they were taken under ``settings``, estimated otherwise."""
    memo = memo if memo is not None else SearchMemo()
    acts = quantize_activations(calibration, settings, memo=memo)
    current = measurements.current_for(settings)
    if current:
        measured, output, sensitivity = measurements.points, measurements.output, measurements.sensitivity
    else:
        before = quantize_activations(calibration, measurements.settings, memo=memo)
        measured, output = estimate(calibration, measurements, before, acts)
        sensitivity = []  # which points matter most must be measured again
    points = [
        PointResult(info=p, activation=acts[p.name], weights=measurements.weights.get(p.name),
                    isolated=measured.get(p.name, PointMeasurement()).isolated,
                    cumulative=measured.get(p.name, PointMeasurement()).cumulative,
                    custom=measured.get(p.name, PointMeasurement()).custom)
        for p in calibration.points
    ]
    return AnalysisResult(settings, calibration, points, output, [], sensitivity=sensitivity,
                          validation=measurements.validation, estimated=not current,
                          simulation_batches=measurements.simulation_batches,
                          verified=measurements.verified if current else None)


def rediagnose(calibration: CalibrationResult, config: ProjectConfig, measurements: Measurements, *,
               memo: SearchMemo | None = None, timings: dict[str, float] | None = None) -> AnalysisResult:
    """The findings ``quantlens check`` gives for ``config``, from cached statistics and the
    last measurements (numpy only)."""
    memo = memo if memo is not None else SearchMemo()
    result = assemble(calibration, config.settings, measurements, memo)
    result.timings = dict(timings or {})
    result.problems.extend(unmatched_overrides(config, result))
    result.data_source = config.data.definition()
    if config.data.location is not None and Path(config.data.location.file).is_file():  # not "<command line>"
        result.data_config = config.data.location
    result.model = _ref_text(config.model, config.root)
    result.data = _ref_text(config.data, config.root)
    result.config_file = str(config.config_file) if config.config_file else None
    return judge(result, measurements, config.diagnosis, config.ignore, memo, config.location_of("model"))


def judge(result: AnalysisResult, measurements: Measurements, diagnosis: DiagnosisSettings,
          ignore: tuple[str, ...] = (), memo: SearchMemo | None = None,
          config_location: Location | None = None) -> AnalysisResult:
    """``result`` with its findings: the diagnosis, the recommendations judged by the verified
    changes (when measured under these settings), estimates marked as such."""
    findings = diagnose(result, diagnosis, ignore, memo)
    findings, result.top_recommendation = apply_verified(findings, result, result.verified, diagnosis, config_location)
    findings = [f for f in findings  # diagnose() applied the suppressions; best-fix is the one finding new here
                if f.rule != "best-fix" or not (matches(f, ignore) or suppressed(f))]
    stale = set(MEASURED_RULES) if result.estimated else set()
    if not measurements.weights_current_for(result.settings):
        stale |= WEIGHT_RULES
    result.findings = sorted((_as_estimate(f) if f.rule in stale else f for f in findings),
                             key=lambda f: -f.severity.rank)
    return result


def estimate(calibration: CalibrationResult, measurements: Measurements, before: dict[str, ActivationQuant],
             after: dict[str, ActivationQuant]) -> tuple[dict[str, PointMeasurement], OutputMetrics]:
    """Errors under new settings from errors measured under old ones.

    Quantization noise adds: a point's noise-to-signal ratio changes by the change of its own
    predicted activation noise (exact from the histogram), and the cumulative ratio at a point
    by the changes of every point that runs before it (a first-order estimate that ignores
    how noise is amplified or damped on the way, and counts side branches as upstream).
    """
    delta = {name: _act_nsr(after[name]) - _act_nsr(before[name]) for name in after}
    points: dict[str, PointMeasurement] = {}
    upstream = 0.0
    for p in sorted(calibration.points, key=lambda p: p.order):
        upstream += delta[p.name]
        old = measurements.points.get(p.name, PointMeasurement())
        floor = _act_nsr(after[p.name])
        points[p.name] = PointMeasurement(
            isolated=_with_nsr(old.isolated, _nsr(old.isolated) + delta[p.name], floor),
            cumulative=_with_nsr(old.cumulative, _nsr(old.cumulative) + upstream, floor),
            custom={},  # user metrics cannot be predicted
        )
    error = _with_nsr(measurements.output.error, _nsr(measurements.output.error) + upstream, 0.0)
    output = OutputMetrics(error or ErrorSums())
    return points, output


def unmatched_overrides(config: ProjectConfig, result: AnalysisResult) -> list[Problem]:
    """An override that matches no point is a typo the user must hear about."""
    used = {config.settings.override_key([p.name, *p.info.modules], p.info.module_types) for p in result.points}
    names = [p.name for p in result.points]
    return [Problem(f"override {key!r} matches no quantization point, module or module type",
                    config.location_of(f"overrides.{key}") or config.location_of("overrides"), code="config",
                    hint=f"points: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
            for key in config.settings.overrides if key not in used]


def _act_nsr(act: ActivationQuant) -> float:
    return 10.0 ** (-act.predicted_sqnr_db / 10.0) if act.quantize else 0.0


def _nsr(sums: ErrorSums | None) -> float:
    return sums.sum_ee / sums.sum_xx if sums is not None and sums.sum_xx > 0 else 0.0


def _with_nsr(sums: ErrorSums | None, nsr: float, floor: float) -> ErrorSums | None:
    """``sums`` with the error energy that gives ``nsr`` (at least ``floor``), signal kept."""
    if sums is None or sums.sum_xx <= 0:
        return sums
    ee = max(nsr, floor, 0.0) * sums.sum_xx
    # q = x + e with e uncorrelated to x: |q|^2 = |x|^2 + |e|^2 and x.q = |x|^2.
    return ErrorSums(sums.count, sums.sum_xx, sums.sum_xx + ee, sums.sum_xx, ee)


def _as_estimate(finding: Finding) -> Finding:
    return dataclasses.replace(finding, message=finding.message + ESTIMATE_NOTE,
                               evidence={**finding.evidence, "estimate": True})


def _ref_text(ref: FuncRef, root: Path) -> str:
    try:
        return f"{ref.path.relative_to(root)}:{ref.function}"
    except ValueError:
        return str(ref)
