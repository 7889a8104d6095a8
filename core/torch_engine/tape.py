"""The quantized pass's module calls, kept so that a re-simulation skips what its change
cannot reach.

A change to verify (a point at 16 bits, another threshold for a few points) alters nothing
a forward computes before the first of its points is reached: data flows forward in the
order a forward runs, so every module call that ended before then returns what it returned
in the simulation's quantized pass. The re-simulation of that change gives those calls
their kept output instead of running them (their hooks still run, so the points among them
are quantized as before). On audio_cnn, whose verified changes sit after its 2-D front
end, that front end is most of the forward.

A call is reused only when its module and every module called inside it ran once in the
forward (a functional op is named by its index among its module's calls, which a skipped
first call of a module called twice would shift), and only while no kept tensor changed in
place since (torch's version counters): a later in-place op on a kept output, in the pass
that read it, would hand the next re-simulation changed values.

What a skipped forward would have done besides returning (append its output to a list its
parent reads, count its calls) does not happen. Where that makes the pass fail, the pass
runs whole and the tapes are dropped (:func:`quantlens.core.torch_engine.simulate.resimulate`);
a forward that instead reads such state without failing would see the last pass's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine.kept import Kept, Versions, unchanged
from torch import nn

TAPE_BYTES = 256 << 20
"""Most bytes of module outputs the tapes of one simulation keep, all batches together;
beyond, a tape keeps what it has (the calls of a prefix of the forward, which is what a
re-simulation reuses)."""


@dataclass
class _Call:
    name: str
    start: int
    end: int
    output: Any
    versions: Versions


class Tape:
    """One batch's module calls in the quantized pass, in the order they ran (positions
    count every module entry and exit and every functional op), with their outputs."""

    def __init__(self, budget: int):
        self.kept = Kept(budget)
        self.position = 0
        self.open: list[tuple[str, int]] = []
        self.calls: list[_Call] = []
        self.starts: dict[str, int] = {}
        """First position of every module (its entry) and functional op key."""
        self.entries: list[tuple[str, int]] = []
        self.last: dict[str, int] = {}
        """Last entry of every module."""
        self.full_at: int | None = None
        """The position where the budget ran out: no call that ends later is kept."""
        self._reusable: list[_Call] | None = None

    def enter(self, name: str) -> None:
        self.open.append((name, self.position))
        self.starts.setdefault(name, self.position)
        self.last[name] = self.position
        self.entries.append((name, self.position))
        self.position += 1

    def exit(self, name: str, output: Any) -> None:
        _, start = self.open.pop() if self.open else (name, self.position)
        tensors = _tensors(output) if self.full_at is None else None
        if tensors is not None:  # None: past the budget, or another kind of output (not reused)
            versions = self.kept.versions(tensors)
            if versions is None:
                self.full_at = self.position
            else:
                self.calls.append(_Call(name, start, self.position, output, versions))
        self.position += 1

    def function(self, key: str) -> None:
        self.starts.setdefault(key, self.position)
        self.position += 1

    @property
    def bytes(self) -> int:
        return self.kept.bytes

    def cut(self, changed: list[PointInfo]) -> int:
        """The first position a change of the ``changed`` points reaches: the first entry
        of any of their modules or their functional op (0 for the model input, quantized
        before the forward). A point the forward never reached changes nothing."""
        cut = self.position if self.full_at is None else self.full_at
        for point in changed:
            if point.kind == "input":
                return 0
            names = [*point.modules, point.weight_module, point.folded_bn, point.output_function]
            cut = min([cut, *(self.starts[n] for n in names if n is not None and n in self.starts)])
        return cut

    def reusable(self, cut: int) -> list[_Call]:
        """The outermost calls that ended before ``cut``, may be reused (see the module's
        docstring) and whose kept outputs are unchanged. A call whose output changed in place
        runs again, and so repeats the change where the pass that kept it made it; the calls
        inside it may still be reused."""
        chosen: list[_Call] = []
        for call in self._once():
            if call.end >= cut or (chosen and call.start < chosen[-1].end) or not unchanged(call.versions):
                continue
            chosen.append(call)
        return chosen

    def _once(self) -> list[_Call]:
        """The calls, by start, that hold every call of each module called inside them: of
        their own module too, so a module called twice is reused only inside a call that
        holds both (computed once, a range minimum and maximum over the entries per call)."""
        if self._reusable is None:
            at = np.array([position for _, position in self.entries])
            first = np.array([self.starts[name] for name, _ in self.entries])
            last = np.array([self.last[name] for name, _ in self.entries])
            self._reusable = []
            for call in sorted(self.calls, key=lambda c: c.start):
                i, j = np.searchsorted(at, (call.start, call.end))  # the entries inside the call
                if i == j or (first[i:j].min() >= call.start and last[i:j].max() < call.end):
                    self._reusable.append(call)
        return self._reusable


@contextmanager
def reused(model: nn.Module, calls: list[_Call]) -> Iterator[None]:
    """``model`` with each of ``calls``'s modules returning its kept output, for one pass."""
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for call in calls:
            stack.enter_context(replaced_forward(modules[call.name], _returning(call.output)))
        yield


def _returning(output: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return output
    return forward


@contextmanager
def replaced_forward(module: nn.Module, forward: Any) -> Iterator[None]:
    """``module`` running ``forward`` instead of its own, for one pass (a ``forward`` set on
    the instance itself comes back after it)."""
    own = module.__dict__.get("forward")
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own  # type: ignore[method-assign]


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """The tensors of a module's output (a tensor, or tuples, lists and dicts of them and of
    None); None for anything else, which is not kept."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else None
    if items is None:
        return None
    found: list[torch.Tensor] = []
    for item in items:
        part = _tensors(item)
        if part is None:
            return None
        found.extend(part)
    return found
