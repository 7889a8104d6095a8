"""Activation quantization of every point, from calibration statistics and settings alone.

This is the numpy step between calibration and simulation, and what the language server
reruns on a config edit: thresholds for the configured method and for every other method
(to compare calibrators), the predicted quantization error of each, and the summary
statistics that the diagnosis rules read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from quantlens.core.distribution import Distribution
from quantlens.core.metrics import sqnr_from_sums
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import CalibrationResult, PointInfo, PointStats, decode, encode
from quantlens.core.thresholds import ErrorMethod, SearchResult, effective_z, search_all

T = TypeVar("T")

IQR_FENCE = 1.5
"""Tukey's fence: values beyond 1.5 * IQR outside the quartiles are outliers."""
SHIFT_NEGATIVE_ACTIVATIONS = frozenset({
    "gelu", "silu", "hardswish", "leaky_relu", "elu", "selu", "celu", "mish", "prelu",
})
"""Activations whose output has a small negative part (MCT's shift-negative correction targets)."""


@dataclass(frozen=True)
class ActivationQuant:
    """How one point's output is quantized and what that costs, predicted from statistics."""

    point: str
    quantize: bool
    threshold: float
    signed: bool
    n_bits: int
    error_method: str
    z_threshold: float
    min: float
    max: float
    mean: float
    std: float
    count: int
    negative_fraction: float
    q1: float
    q3: float
    """Quartiles of the non-zero values (exact zeros from ReLU-like clipping are left out)."""
    iqr_outlier_fraction: float
    """Share of non-zero values beyond 1.5*IQR outside [q1, q3]."""
    kept_fraction: float
    shift: float
    """Offset added before quantizing (shift-negative correction), subtracted after."""
    predicted_sqnr_db: float
    """Activation-only SQNR at the chosen threshold, exact from the histogram (no forward)."""
    method_thresholds: dict[str, float] = field(default_factory=dict)
    method_sqnr_db: dict[str, float] = field(default_factory=dict)
    """Activation-only SQNR each method's threshold would give, measured on all values."""
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Error-vs-threshold curve per method: (candidates, mean errors)."""

    def to_json(self, with_curves: bool = True) -> dict:
        out = {
            "threshold": self.threshold,
            "signed": self.signed,
            "n_bits": self.n_bits,
            "error_method": self.error_method,
            "z_threshold": "inf" if math.isinf(self.z_threshold) else self.z_threshold,
            "quantize": self.quantize,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "count": self.count,
            "negative_fraction": self.negative_fraction,
            "q1": self.q1,
            "q3": self.q3,
            "iqr_outlier_fraction": self.iqr_outlier_fraction,
            "kept_fraction": self.kept_fraction,
            "shift": self.shift,
            "predicted_sqnr_db": self.predicted_sqnr_db,
            "method_thresholds": self.method_thresholds,
            "method_sqnr_db": self.method_sqnr_db,
        }
        if with_curves:
            out["curves"] = {m: {"thresholds": c[0], "errors": c[1]} for m, c in self.curves.items()}
        return out


@dataclass(frozen=True)
class _Summary:
    """What a point's statistics say whatever the settings (computed once per calibration)."""

    dist: Distribution
    negative_fraction: float
    q1: float
    q3: float
    iqr_outlier_fraction: float


class SearchMemo:
    """Threshold searches of one calibration, keyed by what each search reads.

    A config edit changes few of the search's inputs: switching the error method re-reads
    results already found, and an override re-searches only the points it covers. The
    language server keeps one memo per calibration; bounded by points x settings tried.
    The worker's run makes every search the diagnosis of its result makes (it diagnoses to
    choose what to verify), so it sends its searches along (:meth:`to_msgpack`) and the
    process that diagnoses starts from them (:meth:`load`).
    """

    MAX_ENTRIES = 4096
    """Past this many searches the memo starts over (a long session of edits stays bounded)."""

    def __init__(self) -> None:
        self._summaries: dict[str, _Summary] = {}
        self._searches: dict[tuple, Any] = {}
        self._stats: dict[str, PointStats] = {}

    def summary(self, name: str, stats: PointStats) -> _Summary:
        self._bind(name, stats)
        found = self._summaries.get(name)
        if found is None:
            dist = stats.distribution()
            nonzero = dist.without_zeros()
            q1, q3 = (float(v) for v in nonzero.quantile(np.array([0.25, 0.75])))
            iqr = q3 - q1
            found = _Summary(dist, stats.negative_fraction(), q1, q3,
                             nonzero.mass_outside(q1 - IQR_FENCE * iqr, q3 + IQR_FENCE * iqr))
            self._summaries[name] = found
        return found

    def _bind(self, name: str, stats: PointStats) -> None:
        if self._stats.get(name) is not stats:  # another calibration: nothing carries over
            self._stats[name] = stats
            self._summaries.pop(name, None)
            self._searches = {k: v for k, v in self._searches.items() if k[0] != name}

    def __len__(self) -> int:
        """How many searches are kept (tests check that an edit searched only what changed)."""
        return len(self._searches)

    def to_msgpack(self) -> bytes:
        """The searches whose results are numbers (the thresholds and error curves; not the
        parts of distributions, which the statistics give again)."""
        entries = []
        for key, value in self._searches.items():
            if isinstance(value, float):
                entries.append((key, value))
            elif isinstance(value, tuple) and isinstance(value[0], dict):
                results, sqnr = value
                entries.append((key, ([encode(r) for r in results.values()], sqnr)))
        return msgpack.packb(entries, default=_pack_item, strict_types=True, use_bin_type=True)

    def load(self, data: bytes | None, calibration: CalibrationResult) -> bool:
        """Take in :meth:`to_msgpack`'s searches, made on ``calibration``'s statistics.

        Like any cache, what cannot be read is left out (and searched again when asked):
        then False, and nothing is taken in."""
        if not data:
            return False
        try:
            entries = msgpack.unpackb(data, raw=False, use_list=False, ext_hook=_unpack_method)
            loaded = [(key, _unpack_value(value)) for key, value in entries
                      if _key_of(key) in calibration.stats]
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
            return False
        for key, value in loaded[: max(self.MAX_ENTRIES - len(self._searches), 0)]:
            self._bind(key[0], calibration.stats[key[0]])
            self._searches.setdefault(key, value)
        return True

    def cached(self, stats: PointStats, key: tuple, compute: Callable[[], T]) -> T:
        """Any other search of one point's statistics (the rules' re-searches), under ``key``
        (whose first item is the point's name)."""
        self.summary(key[0], stats)  # drops entries of another calibration
        if key not in self._searches:
            if len(self._searches) >= self.MAX_ENTRIES:
                self._searches.clear()
            self._searches[key] = compute()
        return self._searches[key]

    def search(self, name: str, dist: Distribution, n_bits: int, settings: QuantSettings, shift: float,
               methods: tuple[ErrorMethod, ...], *, z_threshold: float | None = None,
               ) -> tuple[dict[ErrorMethod, SearchResult], dict[str, float]]:
        """Every method's result and the SQNR its threshold gives over all values.

        ``z_threshold`` None means the settings' (a point's override may set its own)."""
        z_threshold = effective_z(dist, settings.z_threshold if z_threshold is None else z_threshold)
        key = (name, n_bits, settings.l_p_value, z_threshold, settings.power_of_two_thresholds, shift, methods)
        found = self._searches.get(key)
        every = self._searches.get((*key[:-1], tuple(ErrorMethod)))
        if found is None and every is not None:  # a search of fewer methods reads the full one
            found = ({m: every[0][m] for m in methods}, {m.value: every[1][m.value] for m in methods})
        if found is None:
            searched = dist.shifted(shift)
            results = search_all(searched, n_bits, l_p_value=settings.l_p_value, z_threshold=z_threshold,
                                 power_of_two=settings.power_of_two_thresholds, signed=False if shift else None,
                                 methods=methods)
            sqnr = _predicted_sqnrs(dist, results, n_bits, shift, z_threshold)
            if len(self._searches) >= self.MAX_ENTRIES:
                self._searches.clear()
            found = self._searches[key] = (results, sqnr)
        return found


_METHOD_CODE = 1
"""msgpack extension code of an ErrorMethod (keys hold them, and a str would equal one)."""


def _pack_item(value: Any) -> Any:
    """What msgpack's strict types leave: methods, tuples (keys; they come back as tuples) and
    numpy scalars (the results are :func:`quantlens.core.stats.encode`'s maps)."""
    if isinstance(value, ErrorMethod):
        return msgpack.ExtType(_METHOD_CODE, value.value.encode())
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot pack {type(value).__name__}")


def _unpack_method(code: int, data: bytes) -> ErrorMethod:
    if code != _METHOD_CODE:
        raise ValueError(f"unknown extension {code}")
    return ErrorMethod(data.decode())


def _key_of(key: Any) -> str:
    """The point a search's key names (its first item)."""
    if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
        raise TypeError("a search's key is a tuple that starts with its point's name")
    return key[0]


def _unpack_value(value: Any) -> Any:
    if isinstance(value, float):
        return value
    packed, sqnr = value
    results = [SearchResult(**decode(r)) for r in packed]
    return {ErrorMethod(r.method): r for r in results}, {str(k): float(v) for k, v in sqnr.items()}


def quantize_activations(calibration: CalibrationResult, settings: QuantSettings,
                         compare_methods: bool = True, memo: SearchMemo | None = None) -> dict[str, ActivationQuant]:
    """Thresholds and predictions for every point (numpy only).

    ``compare_methods`` False searches the configured method only (no per-method thresholds
    or curves), for re-simulations that need nothing else. ``memo`` reuses earlier searches
    of the same calibration.
    """
    memo = memo if memo is not None else SearchMemo()
    return {p.name: quantize_point(p, calibration.stats[p.name], settings, compare_methods, memo)
            for p in calibration.points}


def quantize_point(point: PointInfo, stats: PointStats, settings: QuantSettings,
                   compare_methods: bool = True, memo: SearchMemo | None = None) -> ActivationQuant:
    memo = memo if memo is not None else SearchMemo()
    override = settings.for_point([point.name, *point.modules], point.module_types)
    n_bits = override.activation_n_bits or settings.activation_n_bits
    method = override.activation_error_method or settings.activation_error_method
    z_threshold = settings.z_threshold if override.z_threshold is None else override.z_threshold
    summary = memo.summary(point.name, stats)
    shift = shift_for(point, stats.min) if settings.shift_negative_activation_correction else 0.0
    methods = tuple(ErrorMethod) if compare_methods else (method,)
    results, method_sqnr = memo.search(point.name, summary.dist, n_bits, settings, shift, methods,
                                       z_threshold=z_threshold)
    chosen = results[method]
    return ActivationQuant(
        point=point.name,
        quantize=override.quantize,
        threshold=chosen.threshold,
        signed=chosen.signed,
        n_bits=n_bits,
        error_method=method.value,
        z_threshold=z_threshold,
        min=stats.min,
        max=stats.max,
        mean=summary.dist.mean,
        std=summary.dist.std,
        count=stats.count,
        negative_fraction=summary.negative_fraction,
        q1=summary.q1,
        q3=summary.q3,
        iqr_outlier_fraction=summary.iqr_outlier_fraction,
        kept_fraction=chosen.kept_fraction,
        shift=shift,
        predicted_sqnr_db=method_sqnr[chosen.method.value],
        method_thresholds={m.value: r.threshold for m, r in results.items()},
        method_sqnr_db=method_sqnr,
        curves={m.value: _curve(r) for m, r in results.items()},
    )


def shift_for(point: PointInfo, minimum: float) -> float:
    """Shift-negative correction offset: -min for a negative-tailed activation, else 0."""
    return -minimum if point.activation in SHIFT_NEGATIVE_ACTIVATIONS and minimum < 0 else 0.0


def predicted_sqnr(dist: Distribution, threshold: float, n_bits: int, signed: bool, shift: float = 0.0) -> float:
    """Activation-only SQNR (dB) of one threshold over *all* values (outliers included).

    With a shift, x + shift is quantized and the shift subtracted again: the error is that
    of the shifted values, the signal that of the original ones.
    """
    quantized = dist.shifted(shift)
    result = search_all(quantized, n_bits, methods=(ErrorMethod.MSE,), signed=signed,
                        candidates=np.array([threshold]))[ErrorMethod.MSE]
    return sqnr_from_sums(dist.sumsq, float(result.errors[0]) * dist.count)


def _predicted_sqnrs(dist: Distribution, results: dict[ErrorMethod, SearchResult], n_bits: int, shift: float,
                     z_threshold: float) -> dict[str, float]:
    """:func:`predicted_sqnr` of every method's threshold, from one error curve over all values.

    Without outlier removal the searched distribution is all values, so an L2 curve of the
    search (MSE, NOCLIPPING, LP at p=2 score the same) already holds every candidate's
    error; otherwise the distinct chosen thresholds are scored together.
    """
    first = next(iter(results.values()))
    l2 = (ErrorMethod.MSE, ErrorMethod.NOCLIPPING)
    curve = next((results[m].errors for m in l2 if m in results), None) if not math.isfinite(z_threshold) else None
    candidates = first.candidates
    if curve is None:
        candidates = np.unique([r.threshold for r in results.values()])[::-1]
        quantized = dist.shifted(shift)
        curve = search_all(quantized, n_bits, methods=(ErrorMethod.MSE,), signed=first.signed,
                           candidates=candidates)[ErrorMethod.MSE].errors
    at = {float(t): float(e) for t, e in zip(candidates, curve)}
    return {m.value: sqnr_from_sums(dist.sumsq, at[r.threshold] * dist.count) for m, r in results.items()}


def _curve(result: SearchResult) -> tuple[list[float], list[float]]:
    return [float(c) for c in result.candidates], [float(e) for e in result.errors]
