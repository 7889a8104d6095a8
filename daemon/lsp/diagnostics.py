"""Findings and problems as LSP diagnostics, without flooding the editor.

An editor full of warnings is ignored, so the conversion keeps the warnings for the lines where
something must change: information with nothing to do on its own line (a degraded layer that
only inherits its error, which names the point where it starts; a fix re-simulated that did
not help, or not re-simulated) becomes a hint (on its line for who reads it there, out of the
problems list), findings that share a line become one diagnostic, and ``min_severity`` drops
what the user does not want to see. Every finding
diagnostic links to its rule's section of docs/rules.md and carries the findings as ``data`` for
the code actions. Never imports torch: the language server runs this on every re-diagnosis.
"""

from __future__ import annotations

import dataclasses
import linecache
from collections.abc import Iterable, Sequence
from pathlib import Path

from lsprotocol import types
from pygls.uris import from_fs_path

from quantlens.core.errors import Location, Problem
from quantlens.core.findings import Finding, Severity
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.verification import unadvised

SOURCE = "quantlens"
SEVERITIES = {
    Severity.INFO: types.DiagnosticSeverity.Information,
    Severity.WARNING: types.DiagnosticSeverity.Warning,
    Severity.ERROR: types.DiagnosticSeverity.Error,
}
_RANKS = {lsp: sev.rank for sev, lsp in SEVERITIES.items()} | {types.DiagnosticSeverity.Hint: Severity.INFO.rank}

Related = tuple[tuple[Location, str], ...]
"""Other places a diagnostic points to, each with the line of text the editor shows for it."""


@dataclasses.dataclass(frozen=True)
class _Shown:
    """A finding and where it points to, each place with the line of text the editor shows for it."""

    finding: Finding
    related: Related


def to_diagnostics(result: AnalysisResult | None, problems: Sequence[Problem], *, rules_doc: str,
                   min_severity: Severity = Severity.INFO) -> dict[str, list[types.Diagnostic]]:
    """The diagnostics to publish, keyed by the absolute path of every file that gets one.

    ``result`` is None when the analysis failed (only ``problems`` then); otherwise its own
    ``problems`` are published too (once, even if also passed in ``problems``). ``rules_doc`` is
    the URI of docs/rules.md; each finding's ``code_description`` links to ``#<rule id>`` there.
    ``min_severity`` applies after findings on one line are merged.
    """
    published: dict[str, list[types.Diagnostic]] = {}
    for file, diagnostic in [*_finding_diagnostics(result, rules_doc), *_problem_diagnostics(result, problems)]:
        if _RANKS.get(diagnostic.severity, Severity.ERROR.rank) >= min_severity.rank:  # type: ignore[arg-type]
            published.setdefault(file, []).append(diagnostic)
    for diagnostics in published.values():
        diagnostics.sort(key=lambda d: (d.range.start.line, d.range.start.character))
    return published


# ----------------------------------------------------------------------------- findings


def _finding_diagnostics(result: AnalysisResult | None, rules_doc: str) -> list[tuple[str, types.Diagnostic]]:
    """One diagnostic per line that carries findings, in the core's order of first appearance."""
    if result is None:
        return []
    points = _Points(result)
    fallback = Location(result.config_file) if result.config_file else None
    lines: dict[tuple[str, int], tuple[Location, list[_Shown]]] = {}
    for finding in result.findings:
        anchor = _anchor(finding, fallback)
        if anchor is not None:
            lines.setdefault((anchor.file, anchor.line), (anchor, []))[1].append(_shown(finding, points))
    return [(anchor.file, _merged(shown, anchor, rules_doc)) for anchor, shown in lines.values()]


def _anchor(finding: Finding, fallback: Location | None) -> Location | None:
    """Where a finding is shown: its first location, or the config file when it has no real one."""
    first = finding.location
    return first if first is not None and _is_file(first) else fallback


def _shown(finding: Finding, points: _Points) -> _Shown:
    calls = tuple((loc, f"{finding.rule}: applied here in forward") for loc in finding.locations[1:])
    library = points.library_lines(finding.points)
    cause = finding.evidence.get("inherited_from")
    at_cause = points.points[cause].info.line if cause in points.points else None

    def label(loc: Location) -> str:
        if loc == at_cause:
            return f"{cause}: where the error starts"
        if loc in library:
            return f"{finding.rule}: library code of {', '.join(library[loc])}"
        return f"{finding.rule}: see also"

    return _Shown(finding, (*calls, *((loc, label(loc)) for loc in finding.related)))


class _Points:
    """The result's points by name, for the labels of a diagnostic's related lines."""

    def __init__(self, result: AnalysisResult):
        self.points: dict[str, PointResult] = {p.name: p for p in result.points}

    def library_lines(self, names: Iterable[str]) -> dict[Location, list[str]]:
        """The library lines (``PointInfo.library_source``) of the named points, each with the
        points made or applied there."""
        lines: dict[Location, list[str]] = {}
        for name in names:
            point = self.points.get(name)
            if point is not None and point.info.library_source is not None:
                lines.setdefault(point.info.library_source, []).append(name)
        return lines


def _merged(shown: list[_Shown], anchor: Location, rules_doc: str) -> types.Diagnostic:
    """One diagnostic for all findings on a line: the most severe leads, the others follow."""
    ranked = sorted(shown, key=lambda s: -s.finding.severity.rank)  # stable: ties keep the core's order
    lead = ranked[0].finding
    lines = [lead.message, *(f"also {s.finding.rule}: {s.finding.message}" for s in ranked[1:])]
    related = [pair for s in ranked for pair in s.related]
    # information with no measured advice (a fix tried that did not help, or one not
    # re-simulated) stays on its line as a hint and leaves the problems list
    quiet = all(s.finding.severity is Severity.INFO and unadvised(s.finding) for s in ranked)
    return types.Diagnostic(
        range=_range(anchor),
        message="\n".join(lines),
        severity=types.DiagnosticSeverity.Hint if quiet else SEVERITIES[lead.severity],
        code=lead.rule,
        code_description=types.CodeDescription(href=f"{rules_doc}#{lead.rule}"),
        source=SOURCE,
        related_information=_related_information(related, anchor) or None,
        data={"findings": [s.finding.to_json() for s in ranked],
              "points": list(dict.fromkeys(n for s in ranked for n in s.finding.points))},
    )


# ----------------------------------------------------------------------------- problems


def _problem_diagnostics(result: AnalysisResult | None,
                         problems: Sequence[Problem]) -> list[tuple[str, types.Diagnostic]]:
    """Every problem at its location and at each related one (where the fix usually goes)."""
    unique = dict.fromkeys([*(result.problems if result is not None else []), *problems])
    return [pair for problem in unique for pair in _problem_places(problem)]


def _problem_places(problem: Problem) -> list[tuple[str, types.Diagnostic]]:
    if problem.location is None or not _is_file(problem.location):
        return []  # the server shows it as a message: there is no line to put it on
    places = list(dict.fromkeys([problem.location, *(loc for loc in problem.related if _is_file(loc))]))
    message = problem.message + (f"\n(hint: {problem.hint})" if problem.hint else "")
    out = []
    for place in places:
        pointers = [(loc, "reported here" if loc == problem.location else "the fix may go here")
                    for loc in places if loc != place]
        out.append((place.file, types.Diagnostic(
            range=_range(place),
            message=message,
            severity=types.DiagnosticSeverity.Error,
            code=problem.code,
            source=SOURCE,
            related_information=_related_information(pointers, place) or None,
            data={"problem": problem.to_json()},
        )))
    return out


# ----------------------------------------------------------------------------- positions


def _is_file(loc: Location) -> bool:
    """A real file (not a pseudo-file such as ``<command line>``) that an editor can open."""
    return Path(loc.file).is_absolute()


def _related_information(pairs: Sequence[tuple[Location, str]],
                         anchor: Location) -> list[types.DiagnosticRelatedInformation]:
    """One entry per other line (first message wins); the diagnostic's own line is left out."""
    seen = {(anchor.file, anchor.line)}
    out = []
    for loc, message in pairs:
        key = (loc.file, loc.line)
        if key in seen or not _is_file(loc):
            continue
        seen.add(key)
        out.append(types.DiagnosticRelatedInformation(
            location=types.Location(uri=from_fs_path(loc.file) or loc.file, range=_range(loc)), message=message))
    return out


def _range(loc: Location) -> types.Range:
    """The line from the location's column to its end, in UTF-16 units (LSP's default encoding).

    Line 0 means only the file is known: an empty range at its start. A line that cannot be
    read gets an empty range at the column, so no client is handed an end past the text.
    """
    if loc.line <= 0:
        return types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0))
    linecache.checkcache(loc.file)  # the file may have been edited since it was last read
    text = linecache.getline(loc.file, loc.line).rstrip("\r\n")
    line = loc.line - 1
    if not text:
        at = types.Position(line=line, character=loc.column)
        return types.Range(start=at, end=at)
    end = _utf16(text)
    start = min(_utf16(text[: loc.column]), end)
    return types.Range(start=types.Position(line=line, character=start), end=types.Position(line=line, character=end))


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
