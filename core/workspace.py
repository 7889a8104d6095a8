"""Which files are the user's: the one answer every locating step uses.

A problem or a finding belongs on the user's line, never on a line of torch, of the
standard library or of quantlens. Both the error path (the innermost user frame of an
exception) and the source recorder (the line that created a module) ask this class, so
they cannot disagree. Torch-free: the language server may use it too.
"""

from __future__ import annotations

import importlib.util
import sysconfig
import traceback
from pathlib import Path
from types import FrameType

from quantlens.core.errors import Location

MAX_STACK = 8
"""Outer workspace frames kept per module (helpers and loops rarely nest deeper)."""

_INSTALLED = frozenset({"site-packages", "dist-packages"})
"""Folder names of installed packages (pip's and Debian's), wherever the environment lives
(a virtual environment inside the project is still not the user's code)."""


def _foreign_dirs() -> tuple[Path, ...]:
    """The standard library (with the environment's own lib folder) and quantlens itself:
    code under them is never the user's, even when a root contains them."""
    paths = sysconfig.get_paths()
    dirs = {Path(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(key)}
    dirs.add(Path(__file__).parent)  # quantlens.core
    spec = importlib.util.find_spec("quantlens.daemon")
    if spec is not None and spec.submodule_search_locations:
        dirs.update(Path(p) for p in spec.submodule_search_locations)
    return tuple(sorted({d.resolve() for d in dirs}))


_FOREIGN = _foreign_dirs()


class Workspace:
    """Decides whether a file is the user's: under a root, a real file (not ``<frozen os>`` or
    ``<string>``), and not the standard library, an installed package or quantlens."""

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
        if not filename or filename.startswith("<"):  # <frozen os>, <string>, <stdin>: no file to show
            return False
        path = Path(filename).resolve()
        if _INSTALLED.intersection(path.parts) or any(path.is_relative_to(d) for d in _FOREIGN):
            return False
        return any(path.is_relative_to(root) for root in self.roots)

    def innermost(self, exc: BaseException) -> Location | None:
        """The innermost frame of ``exc``'s traceback in the workspace: the user's line that
        raised, or that called into the library that raised (a ``KeyError`` from
        ``os.environ[...]`` lands on the user's subscript, not in ``os``)."""
        found: Location | None = None
        for frame, line in traceback.walk_tb(exc.__traceback__):
            if self.contains(frame.f_code.co_filename):
                found = Location(str(Path(frame.f_code.co_filename).resolve()), line or 0)
        return found

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
