"""Calibration: one pass of the representative data through the float model.

The first batch runs twice: once to discover the points (fusion follows tensor identity,
so it needs a whole forward before the points are known), then with the collectors like
every other batch. The model input is a point too (its first tensor, observed before each
forward), and every batch's input and output shapes are checked against the first batch's:
a model may accept inputs of another length and silently fold samples into rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.stats import BatchShapes, CalibrationResult, PointInfo
from quantlens.core.torch_engine.collector import Collector
from quantlens.core.torch_engine.discovery import Discovery
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor
from quantlens.core.torch_engine.loading import Batch, to_batch, user_failure
from quantlens.core.torch_engine.sources import ConstructionSites, Workspace

Progress = Callable[[int, int | None], None]
"""Called with (batches done, total or None) after every batch."""


def model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def as_batches(items: Iterable[Any], device: torch.device) -> Iterable[Batch]:
    for i, item in enumerate(items):
        yield item if isinstance(item, Batch) else to_batch(item, device, False, None, i)


def run_forward(model: nn.Module, batch: Batch, roots: list[Path], index: int | None = None) -> Any:
    """Forward one batch (number ``index`` when known); an exception or ``sys.exit`` in the
    user's code becomes a located problem that names the batch and its shapes, with the data
    function's line related (every forward of calibration and simulation comes through here)."""
    try:
        return model(*batch.args, **batch.kwargs)
    except QuantlensError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
        on = f" on batch {index}" if index is not None else " on a batch"
        subject = f"{type(model).__name__}.forward(){on} of shape {batch.shapes()}"
        raise user_failure(subject, exc, roots, batch.source, batch.source) from exc


def calibrate_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    roots: list[Path],
    sites: ConstructionSites | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    points: list[PointInfo] | None = None,
    limit: int | None = None,
) -> CalibrationResult:
    """Statistics of every point over ``batches``; ``points`` skips discovery (e.g. to
    measure validation data at the calibration's points). ``limit`` is the
    ``num_calibration_batches`` cap ``batches`` were read under, recorded for the dataset rule."""
    model.eval()
    device = model_device(model)
    workspace = Workspace(roots)
    collector: Collector | None = None
    count = samples = 0
    signature = ""
    shapes = BatchShapes()
    if progress:
        progress(0, total)  # the stage has begun: a hang in its first batch is reported as that batch
    with torch.no_grad():
        for batch in as_batches(batches, device):
            if collector is None:
                if points is None:
                    discovery = Discovery(model, workspace, sites)
                    discovery.model_inputs([*batch.args, *batch.kwargs.values()], _input_source(batch, model, sites))
                    with Instrumentation(model, discovery):
                        run_forward(model, batch, roots, count)
                    points = discovery.points()
                if not any(p.kind != "input" for p in points):  # the input alone: nothing is computed
                    raise QuantlensError([Problem(
                        "no quantization points found: the model has no conv, linear, activation or "
                        "functional op that deployment would quantize", None, code="model")])
                collector = Collector(points, model, device)
                instrumentation = Instrumentation(model, collector, watched=collector.watched)
                signature = _signature(batch)
            collector.half = count % 2
            collector.model_input(batch.input)
            with instrumentation:
                output = run_forward(model, batch, roots, count)
            shapes.observe(count, _shape(batch.input) or [], _shape(first_tensor(output)))
            count += 1
            samples += batch.size
            if progress:
                progress(count, total)
    if collector is None or points is None:
        raise QuantlensError([Problem("the representative dataset is empty", None, code="data")])
    return CalibrationResult(
        points=points, stats=collector.finish(), num_batches=count, num_samples=samples, input_signature=signature,
        batch_limit=limit, batch_shapes=shapes,
    )


def _input_source(batch: Batch, model: nn.Module, sites: ConstructionSites | None) -> Location | None:
    """Where the model input's point is shown: the data function's line, else the line of the
    model factory that built the model."""
    if batch.source is not None:
        return batch.source
    frames = sites.get(model) if sites is not None else []
    return frames[0] if frames else None


def _shape(tensor: torch.Tensor | None) -> list[int] | None:
    return None if tensor is None else [int(d) for d in tensor.shape]


def _signature(batch: Batch) -> str:
    parts = [f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in batch.args if isinstance(t, torch.Tensor)]
    parts += [f"{k}={tuple(v.shape)}" for k, v in batch.kwargs.items() if isinstance(v, torch.Tensor)]
    return ", ".join(parts)
