"""The whole analysis: config -> load -> calibrate -> thresholds -> simulate -> result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantlens.core.activations import quantize_activations
from quantlens.core.config import FuncRef, ProjectConfig
from quantlens.core.diagnosis import diagnose
from quantlens.core.errors import Problem
from quantlens.core.result import AnalysisResult, OutputMetrics, PointResult
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.stats import CalibrationResult
from quantlens.core.torch_engine.calibrate import Progress, calibrate_batches
from quantlens.core.torch_engine.folding import quantize_model_weights
from quantlens.core.torch_engine.loading import Batch, build_model, iterate_batches, load_function
from quantlens.core.torch_engine.simulate import Metric, simulate
from quantlens.core.torch_engine.sources import ConstructionSites

BatchSource = Callable[[], Iterable[Any]]
"""Something that gives a fresh pass over the data each time it is called."""

StageProgress = Callable[[str, int, int | None], None]
"""(stage, batches done, total or None)."""


def analyze_calibrated(
    model: nn.Module,
    calibration: CalibrationResult,
    batches: BatchSource,
    settings: QuantSettings,
    roots: list[Path],
    *,
    metrics: dict[str, Metric] | None = None,
    validation: BatchSource | None = None,
    evaluate: Callable | None = None,
    progress: StageProgress | None = None,
    timings: dict[str, float] | None = None,
    sensitive_k: tuple[int, ...] = (1, 3),
) -> AnalysisResult:
    """Everything after calibration; reusable when only the settings changed."""
    timings = timings if timings is not None else {}
    start = time.perf_counter()
    acts = quantize_activations(calibration, settings)
    weights, reports = quantize_model_weights(model, calibration.points, settings, calibration.stats)
    timings["thresholds"] = time.perf_counter() - start
    start = time.perf_counter()
    sim = simulate(
        model, calibration.points, acts, weights, batches(), roots,
        metrics=metrics, validation=validation() if validation else None, evaluate=evaluate,
        progress=(lambda i, n: progress("simulate", i, n)) if progress else None,
        total=calibration.num_batches,
    )
    timings["simulate"] = time.perf_counter() - start
    points = [
        PointResult(
            info=p, activation=acts[p.name], weights=reports.get(p.name),
            isolated=sim.isolated.get(p.name), cumulative=sim.cumulative.get(p.name),
            custom=sim.custom.get(p.name, {}),
        )
        for p in calibration.points
    ]
    problems = [
        Problem(f"{s.nonfinite} NaN/Inf value(s) at the output of {name}; they are left out of the statistics",
                calibration.point(name).source, code="nonfinite",
                hint="check for overflow or division by zero upstream of this layer")
        for name, s in calibration.stats.items() if s.nonfinite
    ]
    output = OutputMetrics(sim.output, sim.top1_agreement, sim.float_eval, sim.quant_eval, sim.custom.get("__output__", {}))
    start = time.perf_counter()
    sensitivity = measure_sensitivity(model, calibration, points, batches, settings, roots, sensitive_k)
    validation_stats = None
    if validation is not None:
        validation_stats = calibrate_batches(model, validation(), roots, points=calibration.points)
    timings["diagnosis_passes"] = time.perf_counter() - start
    return AnalysisResult(settings, calibration, points, output, problems, sensitivity=sensitivity,
                          validation=validation_stats, timings=timings)


def measure_sensitivity(model: nn.Module, calibration: CalibrationResult, points: list[PointResult],
                        batches: BatchSource, settings: QuantSettings, roots: list[Path],
                        ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Output SQNR with the k points of worst isolated SQNR kept at 16 bits (re-simulated)."""
    ranked = sorted((p for p in points if p.isolated is not None and p.activation.quantize),
                    key=lambda p: p.isolated.sqnr_db)  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for k in ks:
        if 2 * k > len(ranked):
            break  # keeping half the model wide says nothing about which layers matter
        chosen = [p.name for p in ranked[:k]]
        overrides = {**settings.overrides, **{n: PointOverride(activation_n_bits=16, weights_n_bits=16) for n in chosen}}
        trial = settings.with_changes(overrides=overrides)
        acts = quantize_activations(calibration, trial, compare_methods=False)
        weights, _ = quantize_model_weights(model, calibration.points, trial, calibration.stats)
        sim = simulate(model, calibration.points, acts, weights, batches(), roots)
        out.append({"k": k, "points": chosen, "output_sqnr_db": sim.output.sqnr_db,
                    "top1_agreement": sim.top1_agreement})
    return out


def analyze_model(
    model: nn.Module,
    batches: BatchSource,
    settings: QuantSettings,
    roots: list[Path],
    *,
    sites: ConstructionSites | None = None,
    metrics: dict[str, Metric] | None = None,
    validation: BatchSource | None = None,
    evaluate: Callable | None = None,
    progress: StageProgress | None = None,
    limit: int | None = None,
    sensitive_k: tuple[int, ...] = (1, 3),
) -> AnalysisResult:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    calibration = calibrate_batches(
        model, _limited(batches(), limit), roots, sites,
        progress=(lambda i, n: progress("calibrate", i, n)) if progress else None,
    )
    timings["calibrate"] = time.perf_counter() - start
    return analyze_calibrated(
        model, calibration, lambda: _limited(batches(), limit), settings, roots, metrics=metrics,
        validation=validation, evaluate=evaluate, progress=progress, timings=timings, sensitive_k=sensitive_k,
    )


def analyze_project(config: ProjectConfig, progress: StageProgress | None = None) -> AnalysisResult:
    """Run the configured project end to end."""
    roots = _roots(config)
    device = torch.device(config.device)
    start = time.perf_counter()
    model, sites = build_model(config.model, roots, config.weights, config.location_of("weights"))
    model.to(device)
    load_time = time.perf_counter() - start
    metrics = {ref.function: load_function(ref, roots) for ref in config.metrics}
    evaluate = load_function(config.evaluate, roots) if config.evaluate else None
    validation_ref = config.validation

    def batches() -> Iterable[Batch]:
        return iterate_batches(config.data, roots, device, config.num_calibration_batches)

    def validation() -> Iterable[Batch]:
        assert validation_ref is not None
        return iterate_batches(validation_ref, roots, device, with_labels=True)

    result = analyze_model(
        model, batches, config.settings, roots, sites=sites, metrics=metrics,
        validation=validation if validation_ref else None, evaluate=evaluate, progress=progress,
    )
    result.timings["load"] = load_time
    result.problems.extend(_unmatched_overrides(config, result))
    result.data_source = config.data.definition()
    if config.data.location is not None and Path(config.data.location.file).is_file():  # not "<command line>"
        result.data_config = config.data.location
    start = time.perf_counter()
    result.findings = diagnose(result, config.diagnosis, config.ignore)
    result.timings["diagnose"] = time.perf_counter() - start
    result.model = _ref_text(config.model, config.root)
    result.data = _ref_text(config.data, config.root)
    result.config_file = str(config.config_file) if config.config_file else None
    return result


def _unmatched_overrides(config: ProjectConfig, result: AnalysisResult) -> list[Problem]:
    """An override that matches no point is a typo the user must hear about."""
    used = {config.settings.override_key([p.name, *p.info.modules], p.info.module_types) for p in result.points}
    names = [p.name for p in result.points]
    return [Problem(f"override {key!r} matches no quantization point, module or module type",
                    config.location_of(f"overrides.{key}") or config.location_of("overrides"), code="config",
                    hint=f"points: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
            for key in config.settings.overrides if key not in used]


def _roots(config: ProjectConfig) -> list[Path]:
    roots = [config.root, config.model.path.parent, config.data.path.parent]
    return list(dict.fromkeys(r.resolve() for r in roots))


def _ref_text(ref: FuncRef, root: Path) -> str:
    try:
        return f"{ref.path.relative_to(root)}:{ref.function}"
    except ValueError:
        return str(ref)


def _limited(items: Iterable[Any], limit: int | None) -> Iterable[Any]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
