"""Tensors kept from one pass for a later one, within a byte budget.

torch bumps a tensor's version counter on every in-place change, so a version taken when a
tensor is kept tells later whether it still holds those values (a user's forward may change
a batch or an activation in place after quantlens saw it). The first calibration batch's
replay, the simulated batches' float forwards (recorded in calibration, replayed by the
simulation), the simulated batches of the re-simulations and the simulation's tapes
(:mod:`quantlens.core.torch_engine.tape`) keep their tensors this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from quantlens.core.torch_engine.instrument import first_tensor, tensor_inputs
from torch import nn

Versions = list[tuple[torch.Tensor, int]]
"""Kept tensors with the version counter each had when kept."""


class Kept:
    """The bytes kept so far against ``budget``; ``complete`` turns False for good once a
    tensor passes the budget or counts no versions (an inference tensor)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.bytes = 0
        self.complete = True
        self._counted: set[int] = set()

    def versions(self, tensors: Iterable[Any]) -> Versions | None:
        """The tensors among ``tensors`` with their versions, each counted once against the
        budget; None once the keeping is not complete."""
        found: Versions = []
        for t in tensors:
            if not self.complete:
                return None
            if not isinstance(t, torch.Tensor):
                continue
            if t.is_inference():  # counts no versions: nothing could prove it unchanged
                self.complete = False
                return None
            found.append((t, t._version))
            if id(t) not in self._counted:  # the kept tensor stays alive, so its id stays its own
                self._counted.add(id(t))
                self.bytes += t.numel() * t.element_size()
                self.complete = self.bytes <= self.budget
        return found if self.complete else None


def unchanged(versions: Versions) -> bool:
    """Whether no tensor changed in place since its version was taken."""
    return all(t._version == v for t, v in versions)


class Recording:
    """A hook handler that passes every call on to ``inner`` and keeps it, with the version of
    every tensor a later handler could read from it, so that a second handler can be fed the
    same forward without running it again (:meth:`replay`).

    Calibration records the discovery forward (replayed into the collectors) and the
    simulated batches' forwards (replayed into the simulation's float pass)."""

    def __init__(self, inner: Any, model_input: torch.Tensor | None, budget: int):
        self.inner = inner
        if hasattr(inner, "tensor_op"):  # only a handler that follows the data flow pays for it
            self.tensor_op = inner.tensor_op
        self.kept = Kept(budget)
        self.calls: list[tuple[str, tuple[Any, ...], Versions]] = []
        self.output: torch.Tensor | None = None
        """The forward's output (its first tensor), set by :meth:`finish`."""
        self._keep("model_input", (model_input,), [model_input])

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.inner.module_input(name, module, args)
        self._keep("module_input", (name, module, args), args[:1])

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.inner.module_output(name, module, args, output)
        self._keep("module_output", (name, module, args, output), [first_tensor(output)])

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> None:
        self.inner.function_output(key, op, func, args, kwargs, output)
        self._keep("function_output", (key, op, func, args, kwargs, output),
                   [first_tensor(output), *tensor_inputs(op, args, kwargs)])

    def _keep(self, kind: str, call: tuple[Any, ...], read: list[Any]) -> None:
        versions = self.kept.versions(read)
        if versions is None:
            self.calls.clear()
        else:
            self.calls.append((kind, call, versions))

    def finish(self, output: torch.Tensor | None) -> None:
        """End the forward: keep its ``output`` (checked like the rest: it may be a point's
        tensor) and let ``inner`` go (what it holds is not needed for a replay)."""
        self.inner = None
        self.__dict__.pop("tensor_op", None)
        self.output = output
        self._keep("output", (output,), [output])

    @property
    def bytes(self) -> int:
        return self.kept.bytes if self.kept.complete else 0

    def replay(self, handler: Any, reads: Callable[[str, str], bool]) -> bool:
        """Feed ``handler`` the recorded calls, as a forward under its instrumentation would
        (``reads(kind, name)``: whether the handler reads that call); False, and nothing fed,
        when a tensor it reads changed after its call or the recording is incomplete."""
        if not self.kept.complete:
            return False
        for kind, call, versions in self.calls:
            if kind in ("model_input", "output") or reads(kind, call[0]):
                if not unchanged(versions):
                    return False
        for kind, call, _ in self.calls:
            if kind != "output":
                getattr(handler, kind)(*call)
        return True
