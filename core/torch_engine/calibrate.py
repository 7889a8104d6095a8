"""Calibration: one pass of the representative data through the float model.

The first batch runs once, to discover the points (fusion follows tensor identity, so it
needs a whole forward before the points are known); what that forward's hooks saw is kept
and replayed into the collectors afterwards (:class:`_Recording`). Where the forward changed
a tensor the collectors read after they would have read it (an in-place ``out += identity``
on a point's output), or kept more than ``RECORD_BYTES``, the batch runs again with the
collectors, as every other batch does. The model input is a point too (its first tensor, observed before each
forward), and every batch's input and output shapes are checked against the first batch's:
a model may accept inputs of another length and silently fold samples into rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.stats import BatchShapes, CalibrationResult, PointInfo
from quantlens.core.torch_engine.collector import Collector
from quantlens.core.torch_engine.discovery import Discovery
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor, tensor_inputs
from quantlens.core.torch_engine.kept import Kept, Versions, unchanged
from quantlens.core.torch_engine.loading import Batch, to_batch, user_failure
from quantlens.core.torch_engine.sources import ConstructionSites, Workspace
from torch import nn

Progress = Callable[[int, int | None], None]
"""Called with (batches done, total or None) after every batch."""
RECORD_BYTES = 256 << 20
"""Most tensor bytes the discovery forward keeps for replay; beyond, the first batch reruns."""


class _Recording:
    """Discovery's handler that also keeps each hook call of the forward, with the version
    counter of every tensor a collector would read from it, so the collectors can be fed
    the first batch without a second forward."""

    def __init__(self, discovery: Discovery, model_input: torch.Tensor | None):
        self.discovery = discovery
        self.tensor_op = discovery.tensor_op
        self.kept = Kept(RECORD_BYTES)
        self.calls: list[tuple[str, tuple[Any, ...], Versions]] = []
        self._keep("model_input", (model_input,), [model_input])

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.discovery.module_input(name, module, args)
        self._keep("module_input", (name, module, args), args[:1])

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.discovery.module_output(name, module, args, output)
        self._keep("module_output", (name, module, args, output), [first_tensor(output)])

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> None:
        self.discovery.function_output(key, op, func, args, kwargs, output)
        self._keep("function_output", (key, op, func, args, kwargs, output),
                   [first_tensor(output), *tensor_inputs(op, args, kwargs)])

    def _keep(self, kind: str, call: tuple[Any, ...], read: list[Any]) -> None:
        versions = self.kept.versions(read)
        if versions is None:
            self.calls.clear()
        else:
            self.calls.append((kind, call, versions))

    def replay(self, collector: Collector) -> bool:
        """Feed ``collector`` the recorded calls, as a forward under its instrumentation
        would; False (and nothing fed) when a tensor it reads changed after its call."""
        if not self.kept.complete:
            return False
        for kind, call, versions in self.calls:
            if (kind == "model_input" or collector.reads(kind, call[0])) and not unchanged(versions):
                return False
        for kind, call, _ in self.calls:
            getattr(collector, kind)(*call)
        return True


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
            recording: _Recording | None = None
            if collector is None:
                if points is None:
                    discovery = Discovery(model, workspace, sites)
                    discovery.model_inputs([*batch.args, *batch.kwargs.values()], _input_source(batch, model, sites))
                    recording = _Recording(discovery, batch.input)
                    with Instrumentation(model, recording):
                        output = run_forward(model, batch, roots, count)
                    points = discovery.points()
                    del discovery  # what it kept alive goes with the recording, after the replay
                if not any(p.kind != "input" for p in points):  # the input alone: nothing is computed
                    raise QuantlensError([Problem(
                        "no quantization points found: the model has no conv, linear, activation or "
                        "functional op that deployment would quantize", None, code="model")])
                collector = Collector(points, model, device)
                instrumentation = Instrumentation(model, collector, watched=collector.watched)
                signature = _signature(batch)
            collector.half = count % 2
            if recording is None or not recording.replay(collector):
                collector.model_input(batch.input)
                with instrumentation:
                    output = run_forward(model, batch, roots, count)
            recording = None  # the first batch's tensors go
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
