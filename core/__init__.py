"""quantlens.core: the analysis engine.

Importing this package never imports torch: threshold search, predictions and diagnosis
run on cached statistics with numpy alone (the language server relies on that). The two
entry points below import the torch engine when called.

    from quantlens.core import analyze, calibrate
    stats = calibrate(model, batches)            # CalibrationResult: points and statistics
    result = analyze(model, batches)             # AnalysisResult: what `quantlens check` prints
    result.to_json()                             # the documented JSON (docs/result-format.md)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.thresholds import ErrorMethod

if TYPE_CHECKING:
    from torch import nn

    from quantlens.core.result import AnalysisResult
    from quantlens.core.stats import CalibrationResult

__all__ = [
    "ErrorMethod", "Location", "PointOverride", "Problem", "QuantSettings", "QuantlensError",
    "analyze", "calibrate",
]


def calibrate(model: nn.Module, batches: Iterable[Any], settings: QuantSettings | None = None) -> CalibrationResult:
    """One pass of ``batches`` (tensors, or tuples of tensors) through ``model``: statistics only.

    ``settings`` is accepted for symmetry with :func:`analyze`; statistics do not depend on it.
    """
    from quantlens.core.torch_engine.calibrate import calibrate_batches

    return calibrate_batches(model, batches, _roots(model))


def analyze(
    model: nn.Module,
    batches: Iterable[Any] | Callable[[], Iterable[Any]],
    settings: QuantSettings | None = None,
    *,
    validation: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    evaluate: Callable[..., Any] | None = None,
    metrics: dict[str, Callable[..., float]] | None = None,
) -> AnalysisResult:
    """Calibrate, search thresholds, simulate: the whole result ``quantlens check`` prints.

    ``batches`` is passed over twice (calibration, then simulation): give a list or a
    function returning a fresh iterable; a one-shot iterator is read into a list first.
    ``validation`` yields (inputs, labels); ``evaluate(outputs, labels)`` returns a number or
    a dict of numbers (default: top-1 accuracy and cross-entropy); ``metrics`` are
    ``fn(float_tensor, quantized_tensor) -> float`` applied at every point and the output.
    """
    from quantlens.core.torch_engine.calibrate import model_device
    from quantlens.core.torch_engine.loading import to_batch
    from quantlens.core.torch_engine.pipeline import analyze_model

    roots = _roots(model)
    source = _replayable(batches)
    val_source = _replayable(validation) if validation is not None else None
    labelled = None
    if val_source is not None:
        def labelled() -> Iterable[Any]:
            device = model_device(model)
            return (to_batch(item, device, True, None, i) for i, item in enumerate(val_source()))
    return analyze_model(
        model, source, settings or QuantSettings(), roots, metrics=metrics, validation=labelled, evaluate=evaluate,
    )


def _replayable(batches: Iterable[Any] | Callable[[], Iterable[Any]]) -> Callable[[], Iterable[Any]]:
    if callable(batches):
        return batches
    if isinstance(batches, (list, tuple)):
        return lambda: batches
    items = list(batches)
    return lambda: items


def _roots(model: Any) -> list[Path]:
    roots = [Path.cwd()]
    try:
        roots.append(Path(inspect.getfile(type(model))).parent)
    except (TypeError, OSError):
        pass
    return roots
