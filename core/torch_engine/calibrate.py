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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.stats import BatchShapes, CalibrationResult, PointInfo
from quantlens.core.torch_engine.collector import Collector
from quantlens.core.torch_engine.discovery import Discovery
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor
from quantlens.core.torch_engine.kept import Kept, Recording, Versions
from quantlens.core.torch_engine.loading import Batch, to_batch, user_failure
from quantlens.core.torch_engine.sources import ConstructionSites, Workspace
from torch import nn

Progress = Callable[[int, int | None], None]
"""Called with (batches done, total or None) after every batch."""
RECORD_BYTES = 256 << 20
"""Most tensor bytes the discovery forward keeps for replay; beyond, the first batch reruns.
The recordings kept for the simulation share a budget of the same size."""
KEEP_BATCHES_BYTES = 256 << 20
"""The simulated batches are kept for the simulation and its re-simulations while their
tensors take at most this much; beyond, the simulation reads the data function again."""


@dataclass
class Forwards:
    """The first ``count`` calibration batches (None: all) and what their float forwards'
    hooks saw, kept for the simulation within ``budget`` bytes of activations: its float pass
    replays them instead of running each batch again (the simulated batches are the first
    ones). A batch whose recording passed the budget keeps None and is run again. The other
    batches are kept too while their tensors fit (:attr:`rest`), without recordings."""

    count: int | None
    budget: int = RECORD_BYTES
    batches: list[tuple[Batch, Versions]] = field(default_factory=list)
    recordings: list[Recording | None] = field(default_factory=list)
    complete: bool = True
    """Whether every wanted batch was kept (batch tensors within KEEP_BATCHES_BYTES)."""
    rest: list[tuple[Batch, Versions]] | None = field(default_factory=list)
    """The batches after the wanted ones, kept within what KEEP_BATCHES_BYTES leaves (None
    past it): a change the simulated batches cannot settle is measured on them too, and a
    data function that draws at random would give other batches on a second read."""

    def wants(self, index: int) -> bool:
        return self.count is None or index < self.count

    @property
    def left(self) -> int:
        """The budget left for the next batch's recording."""
        return self.budget - sum(r.bytes for r in self.recordings if r is not None)

    def add(self, batch: Batch, versions: Versions | None, recording: Recording | None) -> None:
        if versions is None:
            self.complete = False
            self.batches, self.recordings = [], []
        if self.complete:
            self.batches.append((batch, versions or []))
            self.recordings.append(recording if recording is not None and recording.kept.complete else None)

    def add_rest(self, batch: Batch, versions: Versions | None) -> None:
        """Keep a batch after the wanted ones (``versions`` None: past the budget, and the
        rest is read again when needed)."""
        if versions is None:
            self.rest = None
        elif self.rest is not None:
            self.rest.append((batch, versions))

    def release(self) -> None:
        """Let the recorded activations go (the batches stay, for the re-simulations)."""
        self.recordings = []


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
    forwards: Forwards | None = None,
) -> CalibrationResult:
    """Statistics of every point over ``batches``; ``points`` skips discovery (e.g. to
    measure validation data at the calibration's points). ``limit`` is the
    ``num_calibration_batches`` cap ``batches`` were read under, recorded for the dataset rule.
    ``forwards`` is filled with the leading batches and their recorded forwards, for the simulation."""
    model.eval()
    device = model_device(model)
    workspace = Workspace(roots)
    collector: Collector | None = None
    count = samples = 0
    signature = ""
    shapes = BatchShapes()
    kept_batches = Kept(KEEP_BATCHES_BYTES)
    if progress:
        progress(0, total)  # the stage has begun: a hang in its first batch is reported as that batch
    with torch.no_grad():
        for batch in as_batches(batches, device):
            keep = forwards is not None and forwards.wants(count)
            recording: Recording | None = None
            if collector is None:
                if points is None:
                    discovery = Discovery(model, workspace, sites)
                    discovery.model_inputs([*batch.args, *batch.kwargs.values()], _input_source(batch, model, sites))
                    recording = Recording(discovery, batch.input, RECORD_BYTES)
                    with Instrumentation(model, recording):
                        output = run_forward(model, batch, roots, count)
                    recording.finish(first_tensor(output))
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
            if recording is None or not recording.replay(collector, collector.reads):
                collector.model_input(batch.input)
                if keep and forwards.left > 0:  # type: ignore[union-attr]  # recorded for the simulation's float pass
                    recording = Recording(collector, batch.input, forwards.left)  # type: ignore[union-attr]
                    with Instrumentation(model, recording, watched=collector.watched):
                        output = run_forward(model, batch, roots, count)
                    recording.finish(first_tensor(output))
                else:
                    recording = None
                    with instrumentation:
                        output = run_forward(model, batch, roots, count)
            if keep:
                forwards.add(batch, kept_batches.versions((*batch.args, *batch.kwargs.values())), recording)  # type: ignore[union-attr]
            elif forwards is not None and forwards.rest is not None:
                forwards.add_rest(batch, kept_batches.versions((*batch.args, *batch.kwargs.values())))
            recording = None  # this batch's tensors go, unless kept for the simulation
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
