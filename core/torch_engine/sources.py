"""Which line of the user's code created a module, and where it is applied in forward.

Diagnostics belong on the user's lines, not on torch's. While the model factory runs,
``record_construction`` wraps ``nn.Module.__init__`` and walks the stack out of the
module's own constructors to the first frame inside the workspace: for
``self.fc2 = nn.Linear(...)`` that is the line of the assignment, for a module built by a
helper or in a loop it is the helper's line (the frames further out are kept as the
``stack``), and for modules built inside library code it is the workspace line that called
into the library. Which frames are "the workspace" is decided by
:class:`quantlens.core.workspace.Workspace`, the same answer the error path uses.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from quantlens.core.errors import Location
from quantlens.core.workspace import Workspace

__all__ = ["ConstructionSites", "Workspace", "record_construction"]


class ConstructionSites:
    """Module -> workspace frames at its construction (weak: modules may be dropped)."""

    def __init__(self) -> None:
        self._sites: weakref.WeakKeyDictionary[nn.Module, list[Location]] = weakref.WeakKeyDictionary()

    def record(self, module: nn.Module, frames: list[Location]) -> None:
        if module not in self._sites and frames:
            self._sites[module] = frames

    def get(self, module: nn.Module) -> list[Location]:
        return self._sites.get(module, [])


_LOCK = threading.Lock()


@contextmanager
def record_construction(workspace: Workspace) -> Iterator[ConstructionSites]:
    """Record the creating line of every module built inside the ``with`` block."""
    sites = ConstructionSites()
    original = nn.Module.__init__

    def init(self: nn.Module, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        try:
            sites.record(self, workspace.frames(sys._getframe(1), skip_self=self))
        except Exception:  # noqa: BLE001 - locating is best effort, never break construction
            pass

    with _LOCK:
        nn.Module.__init__ = init  # type: ignore[method-assign]
        try:
            yield sites
        finally:
            nn.Module.__init__ = original  # type: ignore[method-assign]

