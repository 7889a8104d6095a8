"""Which files are the user's: the one answer every locating step uses.

A problem or a finding belongs on the user's line, never on a line of torch, of the
standard library or of quantlens. Both the error path (the innermost user frame of an
exception) and the source recorder (the line that created a module) ask this class, so
they cannot disagree. Torch-free: the language server may use it too.
"""

from __future__ import annotations

import functools
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


def _dirs(keys: tuple[str, ...]) -> set[Path]:
    paths = sysconfig.get_paths()
    return {Path(paths[key]).resolve() for key in keys if paths.get(key)}


def _own_dirs() -> set[Path]:
    """quantlens itself (core and daemon)."""
    dirs = {Path(__file__).parent.resolve()}  # quantlens.core
    spec = importlib.util.find_spec("quantlens.daemon")
    if spec is not None and spec.submodule_search_locations:
        dirs.update(Path(p).resolve() for p in spec.submodule_search_locations)
    return dirs


_STDLIB = tuple(sorted(_dirs(("stdlib", "platstdlib"))))
_OWN = tuple(sorted(_own_dirs()))
_FOREIGN = tuple(sorted({*_STDLIB, *_OWN, *_dirs(("purelib", "platlib"))}))
"""The standard library (with the environment's own lib folder), installed packages and
quantlens itself: code under them is never the user's, even when a root contains them."""


@functools.lru_cache(maxsize=4096)
def is_tooling(filename: str) -> bool:
    """Code that is neither the user's nor a library's own: no real file (``<frozen os>``),
    the standard library (``copy.deepcopy``, ``contextlib``) or quantlens. A frame there is how
    a module or an op is reached, never the line of a model that asked for it."""
    if not filename or filename.startswith("<"):
        return True
    path = Path(filename).resolve()
    if any(path.is_relative_to(d) for d in _OWN):
        return True
    return not _INSTALLED.intersection(path.parts) and any(path.is_relative_to(d) for d in _STDLIB)


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
                found = Location(_resolved(frame.f_code.co_filename), line or 0)
        return found

    def frames(self, frame: FrameType | None, skip_self: object | None = None) -> list[Location]:
        """Workspace frames from ``frame`` outwards, skipping ``skip_self``'s own methods."""
        out: list[Location] = []
        while frame is not None and len(out) < MAX_STACK:
            code = frame.f_code
            if self.contains(code.co_filename) and not (
                skip_self is not None and frame.f_locals.get("self") is skip_self
            ):
                loc = Location(_resolved(code.co_filename), frame.f_lineno)
                if not out or out[-1] != loc:  # a comprehension repeats its caller's line
                    out.append(loc)
            frame = frame.f_back
        return out

    def library_frame(self, frame: FrameType | None, skip_self: object | None = None,
                      plumbing: frozenset[str] = frozenset()) -> Location | None:
        """The library's own line that asked for what runs at ``frame`` (a module being built,
        an op being applied): the innermost frame outside the workspace that is not tooling
        (:func:`is_tooling`), not a file in ``plumbing`` (resolved paths of the framework's
        dispatch, e.g. ``nn.Module.__call__``) and not one of ``skip_self``'s own methods.
        None when the workspace asked directly: the user's line is then the whole answer."""
        while frame is not None:
            code = frame.f_code
            if self.contains(code.co_filename):
                return None
            if not (is_tooling(code.co_filename) or _resolved(code.co_filename) in plumbing
                    or (skip_self is not None and frame.f_locals.get("self") is skip_self)):
                return Location(_resolved(code.co_filename), frame.f_lineno)
            frame = frame.f_back
        return None


@functools.lru_cache(maxsize=4096)
def _resolved(filename: str) -> str:
    """A frame's file as an absolute, resolved path: asked for every module built and every op
    discovered (a resolve is a few system calls), always of the same few files."""
    return str(Path(filename).resolve())
