"""The whole analysis: config -> load -> calibrate -> thresholds -> simulate -> result."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from quantlens.core.activations import ActivationQuant, SearchMemo, quantize_activations
from quantlens.core.changes import Change, apply_change
from quantlens.core.config import SIMULATION_BATCHES, ProjectConfig
from quantlens.core.diagnosis.rules_error import keep_wide
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.errors import Location
from quantlens.core.measurements import (
    WEIGHT_SETTINGS,
    Measurements,
    OutputMetrics,
    PointMeasurement,
    Verification,
    choice_key,
    weight_key,
)
from quantlens.core.rediagnose import assemble, judge, rediagnose
from quantlens.core.result import AnalysisResult
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import CalibrationResult, PointInfo
from quantlens.core.torch_engine.calibrate import KEEP_BATCHES_BYTES, Forwards, as_batches, calibrate_batches, model_device
from quantlens.core.torch_engine.folding import quantize_model_weights
from quantlens.core.torch_engine.kept import Kept, Versions, unchanged
from quantlens.core.torch_engine.loading import Batch, build_model, iterate_batches, load_function
from quantlens.core.torch_engine.simulate import (
    Metric,
    QuantizedWeights,
    SimulationResult,
    Variant,
    VariantOutput,
    resimulate,
    simulate,
)
from quantlens.core.torch_engine.sources import ConstructionSites
from quantlens.core.verification import candidates, to_settle
from torch import nn

BatchSource = Callable[[], Iterable[Any]]
"""Something that gives a fresh pass over the data each time it is called."""

StageProgress = Callable[[str, int, int | None], None]
"""(stage, batches done, total or None)."""


Choose = Callable[[Measurements], list[Change]]
"""The changes to verify, chosen from the diagnosis of the base measurements (torch-free)."""


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
    choose: Choose | None = None,
    sensitivity: bool = False,
    simulation_batches: int | None = SIMULATION_BATCHES,
    memo: SearchMemo | None = None,
    forwards: Forwards | None = None,
    settle_gain_db: float | None = None,
) -> Measurements:
    """Everything after calibration that needs the model: the simulation (on the first
    ``simulation_batches`` batches; None: all), the weights, the verification of the changes
    ``choose`` picks from its diagnosis (with ``settle_gain_db``, the gain a fix must make,
    those the simulated batches cannot settle measured again on every batch), and with
    ``sensitivity`` the sensitivity search.
    ``forwards``: the simulated batches and their float forwards, kept by the calibration that
    just ran (None: the batches are read again and their float passes run)."""
    timings = timings if timings is not None else {}
    memo = memo if memo is not None else SearchMemo()
    start = time.perf_counter()
    if progress:
        progress("thresholds", 0, None)
    acts = quantize_activations(calibration, settings, memo=memo)
    weights, reports = quantize_model_weights(model, calibration.points, settings, calibration.stats)
    timings["thresholds"] = time.perf_counter() - start
    count = calibration.num_batches if simulation_batches is None else min(simulation_batches, calibration.num_batches)

    device = model_device(model)
    seed = forwards if forwards is not None and forwards.complete and len(forwards.batches) == count else None
    simulated = _KeptBatches(lambda: as_batches(_limited(batches(), count), device), seed.batches if seed else None)

    start = time.perf_counter()
    sim = simulate(
        model, calibration.points, acts, weights, simulated(), roots,
        metrics=metrics, validation=validation() if validation else None, evaluate=evaluate,
        progress=_stage(progress, "simulate"), total=count, keep_outputs=True,
        recordings=seed.recordings if seed else None,
    )
    if forwards is not None:
        forwards.release()
    timings["simulate"] = time.perf_counter() - start
    points = {p.name: PointMeasurement(sim.isolated.get(p.name), sim.cumulative.get(p.name), sim.custom.get(p.name, {}))
              for p in calibration.points}
    output = _metrics(sim.output, sim.float_eval, sim.quant_eval)
    validation_stats = None
    if validation is not None:
        validation_stats = calibrate_batches(model, validation(), roots, points=calibration.points)
    measurements = Measurements(settings, points, output, reports, validation=validation_stats,
                                simulation_batches=count)
    variant = _Variants(model, calibration, settings, weights, memo)
    if choose is not None:
        start = time.perf_counter()
        if progress:
            progress("diagnose", 0, None)
        changes = choose(measurements)
        timings["choose"] = time.perf_counter() - start
        start = time.perf_counter()
        base = Variant(acts, weights)
        runs = [variant.of(c) for c in changes]
        outs = resimulate(model, calibration.points, runs, simulated(), roots, reference=sim.outputs,
                          base=(base, sim.tapes), metrics=metrics, progress=_stage(progress, "verify"),
                          total=count * len(changes)) if changes else []
        measurements.verified = [_verification(c, o) for c, o in zip(changes, outs)]
        if settle_gain_db is not None and count < calibration.num_batches:
            _Settling(model, calibration, base, runs, _batches_after(batches, count, seed), roots, metrics,
                      _stage(progress, "confirm"), count, sim.output, outs).run(measurements, settle_gain_db)
        timings["verify"] = time.perf_counter() - start
    if sensitivity:
        start = time.perf_counter()
        measurements.sensitivity = measure_sensitivity(model, calibration, measurements, acts, variant, simulated,
                                                       roots, sim, progress)
        timings["sensitivity"] = time.perf_counter() - start
    return measurements


class _KeptBatches:
    """The simulated batches, kept by the calibration or read from the data function once and
    kept (up to KEEP_BATCHES_BYTES), so the verification and the sensitivity search run on the very batches
    the simulation did: their float outputs are the simulation's, and a data function that
    draws at random would give other batches on a second read. Read again when too large,
    or when a forward changed a kept tensor in place."""

    def __init__(self, read: Callable[[], Iterable[Batch]], kept: list[tuple[Batch, Versions]] | None = None):
        self.read = read
        self.kept = kept
        """The batches with their tensors' versions: calibration's, or those of the first read."""

    def __call__(self) -> Iterable[Batch]:
        if self.kept is not None and all(unchanged(versions) for _, versions in self.kept):
            return [batch for batch, _ in self.kept]
        return self._keep()

    def _keep(self) -> Iterator[Batch]:
        kept = Kept(KEEP_BATCHES_BYTES)
        batches: list[tuple[Batch, Versions]] = []
        for batch in self.read():
            versions = kept.versions((*batch.args, *batch.kwargs.values()))
            if versions is not None:
                batches.append((batch, versions))
            yield batch
        self.kept = batches if kept.complete else None  # only a read to the end is kept


def _batches_after(batches: BatchSource, count: int, kept: Forwards | None) -> BatchSource:
    """The batches after the first ``count``: those calibration kept (the very batches it
    measured, no second read) while they are unchanged, else read again."""
    def rest() -> Iterable[Any]:
        if kept is not None and kept.rest is not None and all(unchanged(v) for _, v in kept.rest):
            return [batch for batch, _ in kept.rest]
        return itertools.islice(batches(), count, None)
    return rest


class _Variants:
    """The thresholds and weights of the base settings with one change applied: weights are
    re-quantized only for the points whose weight settings the change touches."""

    def __init__(self, model: nn.Module, calibration: CalibrationResult, settings: QuantSettings,
                 weights: dict[str, QuantizedWeights], memo: SearchMemo):
        self.model = model
        self.calibration = calibration
        self.settings = settings
        self.weights = weights
        self.memo = memo

    def of(self, change: Change) -> Variant:
        changed = apply_change(self.settings, change)
        assert changed is not None, change  # choose() returns only changes that apply
        return self.under(changed)

    def under(self, settings: QuantSettings) -> Variant:
        acts = quantize_activations(self.calibration, settings, compare_methods=False, memo=self.memo)
        if weight_key(settings) == weight_key(self.settings):
            return Variant(acts, self.weights)
        same_globals = all(getattr(settings, n) == getattr(self.settings, n) for n in WEIGHT_SETTINGS)
        points = [p for p in self.calibration.points if p.weight_module and
                  (not same_globals or _weight_bits(settings, p) != _weight_bits(self.settings, p))]
        fresh, _ = quantize_model_weights(self.model, points, settings, self.calibration.stats)
        names = {p.name for p in points}
        return Variant(acts, {**{k: v for k, v in self.weights.items() if k not in names}, **fresh})


class _Settling:
    """Measuring again, on every calibration batch, the verified changes the simulated batches
    cannot settle (:func:`quantlens.core.verification.to_settle`): those they disagree on
    (one batch gains +4 dB, the other loses 1), and the top recommendation when its batches
    lie far apart. Only the batches after the simulated ones run (the unchanged model beside
    the changes, for the reference); their outputs join the simulated batches' outputs. On most
    models the batches agree, and this costs nothing."""

    def __init__(self, model: nn.Module, calibration: CalibrationResult, base: Variant, variants: list[Variant],
                 rest: BatchSource, roots: list[Path], metrics: dict[str, Metric] | None,
                 progress: Callable[[int, int | None], None] | None, simulated: int, base_output: VariantOutput,
                 outputs: list[VariantOutput]):
        self.model, self.calibration, self.base = model, calibration, base
        self.variants = variants
        """Each verified change's variant, as its verification ran it (thresholds and weights
        are not quantized again)."""
        self.rest, self.roots, self.metrics, self.progress = rest, roots, metrics, progress
        self.simulated = simulated
        self.first = outputs
        """Each verified change's output on the simulated batches."""
        self.reference = base_output
        """The unchanged model's output: on the simulated batches until the rest have run."""
        self.rest_run = False

    def run(self, measurements: Measurements, min_gain_db: float) -> None:
        """Settle until the best change is settled or its batches agree: once the top is
        measured on every batch, a runner-up that looked better on the simulated ones is
        settled too (bounded: each round settles at least one change, once)."""
        while at := to_settle(measurements.verified, measurements.output, min_gain_db):
            outs = self._rest([self.variants[i] for i in at])
            reference = _metrics(self.reference)
            for i, out in zip(at, outs):
                joined = _verification(measurements.verified[i].change, self.first[i] + out)
                measurements.verified[i] = dataclasses.replace(joined, reference=reference)

    def _rest(self, variants: list[Variant]) -> list[VariantOutput]:
        """The variants' outputs on the batches after the simulated ones (the first round runs
        the unchanged model beside them, recording its module calls for them to reuse, and the
        reference then covers every batch)."""
        runs = variants if self.rest_run else [self.base, *variants]
        outs = resimulate(self.model, self.calibration.points, runs, self.rest(), self.roots, base=(self.base, []),
                          metrics=self.metrics, progress=self.progress,
                          total=(self.calibration.num_batches - self.simulated) * len(runs))
        if not self.rest_run:
            self.reference, outs = self.reference + outs[0], outs[1:]
            self.rest_run = True
        return outs


def _verification(change: Change, out: VariantOutput) -> Verification:
    return Verification(change, out.error, out.top1_agreement, out.custom, out.batches)


def _metrics(out: VariantOutput, float_eval: dict[str, float] | None = None,
             quant_eval: dict[str, float] | None = None) -> OutputMetrics:
    return OutputMetrics(out.error, out.top1_agreement, float_eval or {}, quant_eval or {}, out.custom, out.batches)


def _weight_bits(settings: QuantSettings, point: PointInfo) -> tuple[int, bool]:
    override = settings.for_point([point.name, *point.modules], point.module_types)
    return override.weights_n_bits or settings.weights_n_bits, override.quantize


def measure_sensitivity(model: nn.Module, calibration: CalibrationResult, measurements: Measurements,
                        acts: dict[str, ActivationQuant], variants: _Variants, batches: BatchSource, roots: list[Path],
                        simulation: SimulationResult, progress: StageProgress | None,
                        ks: tuple[int, ...] = (1, 3)) -> list[dict[str, Any]]:
    """Output SQNR with the k points of worst isolated SQNR kept at 16 bits, re-simulated
    together (only on request: ``--sensitivity``, the editor's quantize-now command)."""
    points = measurements.points
    ranked = sorted((name for name, m in points.items() if m.isolated is not None and acts[name].quantize),
                    key=lambda name: points[name].isolated.sqnr_db)  # type: ignore[union-attr]
    chosen = [ranked[:k] for k in ks if 2 * k <= len(ranked)]  # half the model wide says nothing
    changes: list[Change] = [keep_wide(names) for names in chosen]
    variants_list = [variants.of(c) for c in changes]
    outs = resimulate(model, calibration.points, variants_list, batches(), roots, reference=simulation.outputs,
                      base=(Variant(acts, variants.weights), simulation.tapes),
                      progress=_stage(progress, "sensitivity"), total=measurements.simulation_batches * len(changes))
    return [{"k": len(names), "points": names, "output_sqnr_db": o.error.sqnr_db, "top1_agreement": o.top1_agreement}
            for names, o in zip(chosen, outs)]


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int | None], None] | None:
    return (lambda i, n: progress(stage, i, n)) if progress else None


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
    diagnosis: DiagnosisSettings | None = None,
    ignore: tuple[str, ...] = (),
    sensitivity: bool = False,
    simulation_batches: int | None = SIMULATION_BATCHES,
    data_source: Location | None = None,
) -> AnalysisResult:
    """The whole analysis of a model object, findings judged by verification (the Python
    API; the CLI runs :func:`measure_project`)."""
    timings: dict[str, float] = {}
    diagnosis = diagnosis or DiagnosisSettings()
    memo = SearchMemo()
    start = time.perf_counter()
    forwards = Forwards(simulation_batches)
    calibration = calibrate_batches(
        model, _limited(batches(), limit), roots, sites, progress=_stage(progress, "calibrate"), limit=limit,
        forwards=forwards,
    )
    timings["calibrate"] = time.perf_counter() - start

    def judged(measurements: Measurements) -> AnalysisResult:
        result = assemble(calibration, settings, measurements, memo)
        result.data_source = data_source
        return judge(result, measurements, diagnosis, ignore, memo)

    def choose(measurements: Measurements) -> list[Change]:
        result = judged(measurements)
        return candidates(result, result.findings, diagnosis)

    measurements = measure(model, calibration, lambda: _limited(batches(), limit), settings, roots, metrics=metrics,
                           validation=validation, evaluate=evaluate, progress=progress, timings=timings,
                           choose=choose, sensitivity=sensitivity, simulation_batches=simulation_batches, memo=memo,
                           forwards=forwards, settle_gain_db=diagnosis.min_fix_gain_db)
    measurements.chosen_under = choice_key(diagnosis, ignore)
    start = time.perf_counter()
    result = judged(measurements)
    timings["diagnose"] = time.perf_counter() - start
    result.timings = timings
    return result


def measure_project(config: ProjectConfig, progress: StageProgress | None = None,
                    calibration: CalibrationResult | None = None, sensitivity: bool = False,
                    memo: SearchMemo | None = None) -> tuple[CalibrationResult, Measurements, dict[str, float]]:
    """Run the configured project: calibration (unless ``calibration`` is given, from a cache
    whose key covers the model, weights and data) and measurements; the findings come from
    :func:`quantlens.core.rediagnose.rediagnose` on what this returns. ``memo`` receives the
    threshold searches the run made (the findings' diagnosis repeats them all)."""
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

    forwards: Forwards | None = None
    if calibration is None:
        start = time.perf_counter()
        forwards = Forwards(config.num_simulation_batches)
        calibration = calibrate_batches(model, batches(), roots, sites,
                                        progress=(lambda i, n: progress("calibrate", i, n)) if progress else None,
                                        limit=config.num_calibration_batches, forwards=forwards)
        timings["calibrate"] = time.perf_counter() - start
    memo = memo if memo is not None else SearchMemo()

    def choose(measurements: Measurements) -> list[Change]:
        result = rediagnose(calibration, config, measurements, memo=memo)
        return candidates(result, result.findings, config.diagnosis)

    measurements = measure(model, calibration, batches, config.settings, roots, metrics=metrics,
                           validation=validation if validation_ref else None, evaluate=evaluate,
                           progress=progress, timings=timings, choose=choose, sensitivity=sensitivity,
                           simulation_batches=config.num_simulation_batches, memo=memo, forwards=forwards,
                           settle_gain_db=config.diagnosis.min_fix_gain_db)
    measurements.chosen_under = choice_key(config.diagnosis, config.ignore)
    return calibration, measurements, timings


def analyze_project(config: ProjectConfig, progress: StageProgress | None = None,
                    sensitivity: bool = False) -> AnalysisResult:
    """The whole configured analysis in this process, with its findings (tests, benchmarks;
    the CLI and the language server run :func:`measure_project` in a worker process)."""
    memo = SearchMemo()
    calibration, measurements, timings = measure_project(config, progress, sensitivity=sensitivity, memo=memo)
    start = time.perf_counter()
    result = rediagnose(calibration, config, measurements, timings=timings, memo=memo)
    result.timings["diagnose"] = time.perf_counter() - start
    return result


def _limited(items: Iterable[Any], limit: int | None) -> Iterable[Any]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
