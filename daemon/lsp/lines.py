"""Which quantization points and findings belong to which line of which file.

Hover, inlay hints and code actions all ask "what is on line N of this file?" for every
request, so the answer is indexed once per analysis result instead of scanning every point.
Paths are compared resolved (``os.path.realpath``): the editor may name a file through a
symlink or a relative workspace path while the engine recorded another spelling.
"""

from __future__ import annotations

import os
from collections import defaultdict
from functools import lru_cache
from typing import TypeVar

from quantlens.core.errors import Location
from quantlens.core.findings import Finding
from quantlens.core.result import AnalysisResult, PointResult

T = TypeVar("T")
ByLine = dict[str, dict[int, list[T]]]
"""resolved path -> 1-based line -> items, in insertion order."""


@lru_cache(maxsize=4096)
def resolved(path: str) -> str:
    """The canonical spelling of a path (cached: the same few files are asked about constantly)."""
    return os.path.realpath(path)


class LineIndex:
    """Points and findings of one :class:`AnalysisResult` by file and line.

    A point is shown on its ``source`` line (where the layer is created, or the op's call site)
    and on its ``call_site`` line (where forward applies it) when that is another line.
    """

    def __init__(self, result: AnalysisResult) -> None:
        self._points: ByLine[PointResult] = defaultdict(lambda: defaultdict(list))
        self._sources: ByLine[PointResult] = defaultdict(lambda: defaultdict(list))
        self._findings: ByLine[Finding] = defaultdict(lambda: defaultdict(list))
        for point in sorted(result.points, key=lambda p: p.info.order):
            self._add_point(point)
        for finding in result.findings:
            for file, line in dict.fromkeys(_key(loc) for loc in finding.locations if loc.line > 0):
                self._findings[file][line].append(finding)

    def _add_point(self, point: PointResult) -> None:
        source, call_site = point.info.source, point.info.call_site
        for file, line in dict.fromkeys(_key(loc) for loc in (source, call_site) if loc and loc.line > 0):
            self._points[file][line].append(point)
        if source is not None and source.line > 0:
            file, line = _key(source)
            self._sources[file][line].append(point)

    def points_at(self, path: str, line: int) -> list[PointResult]:
        """Points shown on a 1-based line, in execution order."""
        return _at(self._points, path, line)

    def lines_in(self, path: str) -> dict[int, list[PointResult]]:
        """Every line of a file that shows a point, with its points in execution order."""
        return _lines(self._points, path)

    def sources_in(self, path: str) -> dict[int, list[PointResult]]:
        """The lines of a file that create points (``source`` lines only, not call sites)."""
        return _lines(self._sources, path)

    def findings_at(self, path: str, line: int) -> list[Finding]:
        """Findings located on a 1-based line (``Finding.locations``, not ``related``)."""
        return _at(self._findings, path, line)


def _key(location: Location) -> tuple[str, int]:
    return resolved(location.file), location.line


def _at(table: ByLine[T], path: str, line: int) -> list[T]:
    lines = table.get(resolved(path))
    return list(lines.get(line, ())) if lines else []


def _lines(table: ByLine[T], path: str) -> dict[int, list[T]]:
    lines = table.get(resolved(path), {})
    return {line: list(items) for line, items in sorted(lines.items())}
