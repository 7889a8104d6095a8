"""Tensors kept from one pass for a later one, within a byte budget.

torch bumps a tensor's version counter on every in-place change, so a version taken when a
tensor is kept tells later whether it still holds those values (a user's forward may change
a batch or an activation in place after quantlens saw it). The first calibration batch's
replay and the simulated batches of the re-simulations keep their tensors this way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

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
