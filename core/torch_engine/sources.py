"""Which line of the user's code created a module, and where it is applied in forward.

Diagnostics belong on the user's lines, not on torch's. While the model factory runs,
``record_construction`` wraps ``nn.Module.__init__`` and walks the stack out of the
module's own constructors to the first frame inside the workspace: for
``self.fc2 = nn.Linear(...)`` that is the line of the assignment, for a module built by a
helper or in a loop it is the helper's line (the frames further out are kept as the
``stack``), and for modules built inside library code it is the workspace line that called
into the library. Which frames are "the workspace" is decided by
:class:`quantlens.core.workspace.Workspace`, the same answer the error path uses.

A module built by library code also keeps the library's own line (``self.linear1 =
Linear(...)`` inside ``TransformerEncoderLayer.__init__``), so an editor can open it beside
the workspace line. Library code often builds copies (``copy.deepcopy`` of a layer, as
``nn.TransformerEncoder`` does): a copy is never initialised, so ``copy.deepcopy`` and
``copy.copy`` are wrapped too and every module of a copy takes the lines of the module it
copies; a module restored by ``__setstate__`` some other way gets the line that restored it.
"""

from __future__ import annotations

import copy
import importlib
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from torch import nn

from quantlens.core.errors import Location
from quantlens.core.workspace import Workspace

__all__ = ["PLUMBING", "ConstructionSites", "Workspace", "library_frame", "record_construction"]


def _files(*names: str) -> frozenset[str]:
    """The files of the named modules (one missing from this torch version is left out)."""
    found = set()
    for name in names:
        try:
            file = importlib.import_module(name).__file__
        except ImportError:
            continue
        if file:
            found.add(str(Path(file).resolve()))
    return frozenset(found)


PLUMBING = _files("torch.nn.modules.module", "torch.nn.functional", "torch.functional", "torch.overrides",
                  "torch._tensor", "torch._jit_internal", "torch.utils._contextlib")
"""torch's own dispatch: ``nn.Module``'s call and init, the functional wrappers that hand an
op to ``__torch_function__``, Tensor's Python methods, the decorators around them. A frame
there is how a module or an op is reached, never the library line that asked for it."""


def library_frame(workspace: Workspace, frame: FrameType | None, skip_self: object | None = None) -> Location | None:
    """The library's own line at ``frame`` (None when the workspace asked directly)."""
    return workspace.library_frame(frame, skip_self=skip_self, plumbing=PLUMBING)


class ConstructionSites:
    """Module -> workspace frames at its construction, and the library line that built it
    (weak: modules may be dropped)."""

    def __init__(self) -> None:
        self._sites: weakref.WeakKeyDictionary[nn.Module, list[Location]] = weakref.WeakKeyDictionary()
        self._library: weakref.WeakKeyDictionary[nn.Module, Location] = weakref.WeakKeyDictionary()

    def record(self, module: nn.Module, frames: list[Location], library: Location | None = None) -> None:
        if module not in self._sites and frames:
            self._sites[module] = frames
            if library is not None:
                self._library[module] = library

    def copied(self, copy_: nn.Module, original: nn.Module) -> bool:
        """Give a copy its original's lines; False when the original was not recorded."""
        if original not in self._sites:
            return False
        self._sites[copy_] = self._sites[original]
        if original in self._library:
            self._library[copy_] = self._library[original]
        return True

    def get(self, module: nn.Module) -> list[Location]:
        return self._sites.get(module, [])

    def library(self, module: nn.Module) -> Location | None:
        """The library line that created ``module`` (None: created by the workspace itself)."""
        return self._library.get(module)


_LOCK = threading.Lock()


@contextmanager
def record_construction(workspace: Workspace) -> Iterator[ConstructionSites]:
    """Record the creating line of every module built inside the ``with`` block."""
    sites = ConstructionSites()
    original = nn.Module.__init__
    original_setstate = nn.Module.__setstate__

    def record(module: nn.Module, frame: FrameType | None) -> None:
        sites.record(module, workspace.frames(frame, skip_self=module), library_frame(workspace, frame, module))

    def init(self: nn.Module, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        try:
            record(self, sys._getframe(1))
        except Exception:  # noqa: BLE001 - locating is best effort, never break construction
            pass

    def setstate(self: nn.Module, state: dict) -> None:
        original_setstate(self, state)
        try:
            record(self, sys._getframe(1))  # a copy's lines follow from copied() below
        except Exception:  # noqa: BLE001 - as above
            pass

    def copied(original: object, duplicate: object) -> None:
        if not (isinstance(original, nn.Module) and isinstance(duplicate, nn.Module)):
            return
        try:  # a copy has its original's structure, module by module in the same order
            for a, b in zip(original.modules(), duplicate.modules(), strict=False):
                sites.copied(b, a)
        except Exception:  # noqa: BLE001 - as above
            pass

    def deepcopy(x: object, memo: dict | None = None, _nil: list = []) -> object:  # noqa: B006 - copy's own signature
        y = original_deepcopy(x, memo, _nil)
        copied(x, y)
        return y

    def shallow(x: object) -> object:
        y = original_copy(x)
        copied(x, y)
        return y

    original_deepcopy, original_copy = copy.deepcopy, copy.copy
    with _LOCK:
        nn.Module.__init__ = init  # type: ignore[method-assign]
        nn.Module.__setstate__ = setstate  # type: ignore[method-assign]
        copy.deepcopy, copy.copy = deepcopy, shallow
        try:
            yield sites
        finally:
            nn.Module.__init__ = original  # type: ignore[method-assign]
            nn.Module.__setstate__ = original_setstate  # type: ignore[method-assign]
            copy.deepcopy, copy.copy = original_deepcopy, original_copy


