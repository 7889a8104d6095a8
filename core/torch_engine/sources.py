"""Which line of the user's code created a module, and where it is applied in forward.

Diagnostics belong on the user's lines, not on torch's. While the model factory runs,
``record_construction`` wraps ``nn.Module.__init__`` and walks the stack out of the
module's own constructors to the first frame inside the workspace: for
``self.fc2 = nn.Linear(...)`` that is the line of the assignment, for a module built by a
helper or in a loop it is the helper's line (the frames further out are kept as the
``stack``), and for modules built inside library code it is the workspace line that called
into the library.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from torch import nn

from quantlens.core.errors import Location

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
MAX_STACK = 8
"""Outer workspace frames kept per module (helpers and loops rarely nest deeper)."""


class Workspace:
    """Decides whether a file is the user's: under a root and not an installed package."""

    def __init__(self, roots: list[Path]):
        self.roots = [r.resolve() for r in roots]
        self._cache: dict[str, bool] = {}

    def contains(self, filename: str) -> bool:
        hit = self._cache.get(filename)
        if hit is None:
            hit = self._check(filename)
            self._cache[filename] = hit
        return hit

    def _check(self, filename: str) -> bool:
        if filename.startswith("<"):
            return False
        path = Path(filename).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            return False
        if _is_relative_to(path, _PACKAGE_DIR):
            return False
        return any(_is_relative_to(path, root) for root in self.roots)

    def frames(self, frame: FrameType | None, skip_self: object | None = None) -> list[Location]:
        """Workspace frames from ``frame`` outwards, skipping ``skip_self``'s own methods."""
        out: list[Location] = []
        while frame is not None and len(out) < MAX_STACK:
            code = frame.f_code
            if self.contains(code.co_filename) and not (
                skip_self is not None and frame.f_locals.get("self") is skip_self
            ):
                loc = Location(str(Path(code.co_filename).resolve()), frame.f_lineno)
                if not out or out[-1] != loc:  # a comprehension repeats its caller's line
                    out.append(loc)
            frame = frame.f_back
        return out


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


def _is_relative_to(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
