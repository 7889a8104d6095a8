"""quantlens.core: the analysis engine.

Importing this package never imports torch: threshold search, predictions and diagnosis
run on cached statistics with numpy alone (the language server relies on that). The two
entry points below import the torch engine when called.

    from quantlens.core import analyze, calibrate
    stats = calibrate(build_model, batches)      # CalibrationResult: points and statistics
    result = analyze(build_model, batches)       # AnalysisResult with the findings `quantlens check` prints
    result.to_json()                             # the documented JSON (docs/result-format.md)

``model`` is a zero-argument factory (as in the config) or an ``nn.Module``. With a factory
the model is built while the line that creates each module is recorded, so points and
findings land on the constructor lines (``self.fc = nn.Linear(...)``), exactly as in the
CLI. An already built module has no such record: its points land on the forward lines
that call each layer. A problem in the user's code (the factory or the data function needs
arguments, raises, exits, yields no batch or a bad one; the forward raises) raises a
:class:`QuantlensError` whose problems name the file and line, as the CLI prints them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from quantlens.core.config import SIMULATION_BATCHES
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.thresholds import ErrorMethod

if TYPE_CHECKING:
    from torch import nn

    from quantlens.core.diagnosis.settings import DiagnosisSettings
    from quantlens.core.result import AnalysisResult
    from quantlens.core.stats import CalibrationResult
    from quantlens.core.torch_engine.loading import UserFunction
    from quantlens.core.torch_engine.sources import ConstructionSites

__all__ = [
    "ErrorMethod", "Location", "PointOverride", "Problem", "QuantSettings", "QuantlensError",
    "analyze", "calibrate",
]

Model = Union["nn.Module", Callable[[], "nn.Module"]]
"""A module, or a function without arguments that builds one."""
Batches = Union[Iterable[Any], Callable[[], Iterable[Any]]]
"""Batches (tensors, tuples or dicts of tensors), or a function without arguments returning them."""


def calibrate(model: Model, batches: Batches) -> CalibrationResult:
    """One pass of ``batches`` through the float model: the quantization points and their
    statistics.

    There are no quantization settings to give: the statistics (float-bits histograms,
    ranges, moments) describe the float model's values and depend on no setting. Every
    setting (bits, error method, z_threshold, overrides) is applied afterwards to these same
    statistics, so one calibration serves any settings.
    """
    from quantlens.core.torch_engine.calibrate import calibrate_batches, model_device
    from quantlens.core.torch_engine.loading import checked_batches

    roots = _roots(model, batches)
    built, sites = _build(model, roots)
    data = _source(batches, "data function", "calibration data", roots)
    return calibrate_batches(built, checked_batches(data, roots, model_device(built)), roots, sites)


def analyze(
    model: Model,
    batches: Batches,
    settings: QuantSettings | None = None,
    *,
    validation: Batches | None = None,
    evaluate: Callable[..., Any] | None = None,
    metrics: dict[str, Callable[..., float]] | None = None,
    diagnosis: DiagnosisSettings | None = None,
    ignore: Iterable[str] = (),
    sensitivity: bool = False,
    simulation_batches: int | None = SIMULATION_BATCHES,
) -> AnalysisResult:
    """Calibrate, search thresholds, simulate, verify and diagnose: the result ``quantlens check``
    prints, findings included (``diagnosis`` and ``ignore`` are the config's
    ``[quantlens.diagnosis]`` and ``ignore``).

    ``batches`` is passed over several times (calibration; simulation and verification on the first ``simulation_batches``, None: all): give a
    list, a re-iterable, or a function returning a fresh iterable; a one-shot iterator is
    read into a list first. ``validation`` yields (inputs, labels); ``evaluate(outputs,
    labels)`` returns a number or a dict of numbers (default: top-1 accuracy and
    cross-entropy); ``metrics`` are ``fn(float_tensor, quantized_tensor) -> float`` applied
    at every point and the output.
    """
    from quantlens.core.torch_engine.calibrate import model_device
    from quantlens.core.torch_engine.loading import checked_batches
    from quantlens.core.torch_engine.pipeline import analyze_model

    roots = _roots(model, batches, validation)
    built, sites = _build(model, roots)
    device = model_device(built)
    data = _source(batches, "data function", "calibration data", roots)
    labelled = _source(validation, "validation function", "validation data", roots) if validation is not None else None

    def validation_batches() -> Iterator[Any]:
        assert labelled is not None
        return checked_batches(labelled, roots, device, with_labels=True)

    return analyze_model(
        built, lambda: checked_batches(data, roots, device), settings or QuantSettings(), roots, sites=sites,
        metrics=metrics, validation=validation_batches if labelled is not None else None, evaluate=evaluate,
        diagnosis=diagnosis, ignore=tuple(ignore), sensitivity=sensitivity, simulation_batches=simulation_batches,
        data_source=data.definition,  # the dataset rules point at the data function, as in the CLI
    )


def _build(model: Model, roots: list[Path]) -> tuple[nn.Module, ConstructionSites | None]:
    """The module itself, or the factory's module built under the construction recorder."""
    from torch import nn

    from quantlens.core.torch_engine.loading import UserFunction, construct

    if isinstance(model, nn.Module):
        return model, None
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a function that builds one, not {type(model).__name__}")
    built, sites = construct(UserFunction.of(model, "model factory", roots), roots)
    built.eval()
    return built, sites


def _source(batches: Batches, role: str, label: str, roots: list[Path]) -> UserFunction:
    """The batches as a function giving a fresh pass each call, named for the messages."""
    from quantlens.core.torch_engine.loading import UserFunction

    if callable(batches):
        return UserFunction.of(batches, role, roots)
    items = list(batches) if isinstance(batches, Iterator) else batches  # a one-shot iterator is read once
    return UserFunction(lambda: items, label)


def _roots(*objects: Any) -> list[Path]:
    """The folders of the user's code: the current one and those of the given objects' files."""
    roots = [Path.cwd()]
    for obj in objects:
        target = obj if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) else type(obj)
        try:
            path = Path(inspect.getfile(target))
        except (TypeError, OSError):
            continue
        if path.is_file():
            roots.append(path.parent)
    return list(dict.fromkeys(r.resolve() for r in roots))
