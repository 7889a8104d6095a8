"""The whole analysis: config -> load -> calibrate -> thresholds -> simulate -> result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantlens.core.activations import ActivationQuant, SearchMemo, quantize_activations
from quantlens.core.config import ProjectConfig
from quantlens.core.measurements import Measurements, OutputMetrics, PointMeasurement
from quantlens.core.rediagnose import assemble, rediagnose
from quantlens.core.result import AnalysisResult
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.stats import CalibrationResult
from quantlens.core.torch_engine.calibrate import calibrate_batches
from quantlens.core.torch_engine.folding import quantize_model_weights
from quantlens.core.torch_engine.loading import Batch, build_model, iterate_batches, load_function
from quantlens.core.torch_engine.simulate import Metric, simulate
from quantlens.core.torch_engine.sources import ConstructionSites

BatchSource = Callable[[], Iterable[Any]]
"""Something that gives a fresh pass over the data each time it is called."""

StageProgress = Callable[[str, int, int | None], None]
"""(stage, batches done, total or None)."""


def measure(
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
    memo: SearchMemo | None = None,
) -> Measurements:
    """Everything after calibration that needs the model: simulation, weights, sensitivity."""
    timings = timings if timings is not None else {}
    start = time.perf_counter()
    acts = quantize_activations(calibration, settings, memo=memo)
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
    points = {p.name: PointMeasurement(sim.isolated.get(p.name), sim.cumulative.get(p.name), sim.custom.get(p.name, {}))
              for p in calibration.points}
    output = OutputMetrics(sim.output, sim.top1_agreement, sim.float_eval, sim.quant_eval, sim.custom.get("__output__", {}))
    start = time.perf_counter()
    sensitivity = measure_sensitivity(model, calibration, acts, points, batches, settings, roots, sensitive_k, memo)
    validation_stats = None
    if validation is not None:
        validation_stats = calibrate_batches(model, validation(), roots, points=calibration.points)
    timings["diagnosis_passes"] = time.perf_counter() - start
    return Measurements(settings, points, output, reports, sensitivity, validation_stats)


def analyze_calibrated(model: nn.Module, calibration: CalibrationResult, batches: BatchSource,
                       settings: QuantSettings, roots: list[Path], **options: Any) -> AnalysisResult:
    """Everything after calibration, as a result without findings (see :func:`measure`)."""
    timings: dict[str, float] = options.pop("timings", None) or {}
    measurements = measure(model, calibration, batches, settings, roots, timings=timings, **options)
    result = assemble(calibration, settings, measurements)
    result.timings = timings
    return result


def measure_sensitivity(model: nn.Module, calibration: CalibrationResult, acts: dict[str, ActivationQuant],
                        points: dict[str, PointMeasurement], batches: BatchSource, settings: QuantSettings,
                        roots: list[Path], ks: tuple[int, ...], memo: SearchMemo | None = None) -> list[dict[str, Any]]:
    """Output SQNR with the k points of worst isolated SQNR kept at 16 bits (re-simulated)."""
    ranked = sorted((name for name, m in points.items() if m.isolated is not None and acts[name].quantize),
                    key=lambda name: points[name].isolated.sqnr_db)  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for k in ks:
        if 2 * k > len(ranked):
            break  # keeping half the model wide says nothing about which layers matter
        chosen = ranked[:k]
        overrides = {**settings.overrides, **{n: PointOverride(activation_n_bits=16, weights_n_bits=16) for n in chosen}}
        trial = settings.with_changes(overrides=overrides)
        trial_acts = quantize_activations(calibration, trial, compare_methods=False, memo=memo)
        weights, _ = quantize_model_weights(model, calibration.points, trial, calibration.stats)
        sim = simulate(model, calibration.points, trial_acts, weights, batches(), roots)
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
        progress=(lambda i, n: progress("calibrate", i, n)) if progress else None, limit=limit,
    )
    timings["calibrate"] = time.perf_counter() - start
    return analyze_calibrated(
        model, calibration, lambda: _limited(batches(), limit), settings, roots, metrics=metrics,
        validation=validation, evaluate=evaluate, progress=progress, timings=timings, sensitive_k=sensitive_k,
    )


def measure_project(config: ProjectConfig, progress: StageProgress | None = None,
                    calibration: CalibrationResult | None = None,
                    ) -> tuple[CalibrationResult, Measurements, dict[str, float]]:
    """Run the configured project: calibration (unless ``calibration`` is given, from a cache
    whose key covers the model, weights and data) and measurements; the findings come from
    :func:`quantlens.core.rediagnose.rediagnose` on what this returns."""
    roots = config.roots
    device = torch.device(config.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, sites = build_model(config.model, roots, config.weights, config.location_of("weights"))
    model.to(device)
    timings["load"] = time.perf_counter() - start
    metrics = {ref.function: load_function(ref, roots) for ref in config.metrics}
    evaluate = load_function(config.evaluate, roots) if config.evaluate else None
    validation_ref = config.validation

    def batches() -> Iterable[Batch]:
        return iterate_batches(config.data, roots, device, config.num_calibration_batches)

    def validation() -> Iterable[Batch]:
        assert validation_ref is not None
        return iterate_batches(validation_ref, roots, device, with_labels=True)

    if calibration is None:
        start = time.perf_counter()
        calibration = calibrate_batches(model, batches(), roots, sites,
                                        progress=(lambda i, n: progress("calibrate", i, n)) if progress else None,
                                        limit=config.num_calibration_batches)
        timings["calibrate"] = time.perf_counter() - start
    measurements = measure(model, calibration, batches, config.settings, roots, metrics=metrics,
                           validation=validation if validation_ref else None, evaluate=evaluate,
                           progress=progress, timings=timings)
    return calibration, measurements, timings


def analyze_project(config: ProjectConfig, progress: StageProgress | None = None) -> AnalysisResult:
    """The whole configured analysis in this process, with its findings (tests, benchmarks;
    the CLI and the language server run :func:`measure_project` in a worker process)."""
    calibration, measurements, timings = measure_project(config, progress)
    start = time.perf_counter()
    result = rediagnose(calibration, config, measurements, timings=timings)
    result.timings["diagnose"] = time.perf_counter() - start
    return result


def _limited(items: Iterable[Any], limit: int | None) -> Iterable[Any]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
