"""Quick fixes for quantlens diagnostics: apply a finding's config change, or ignore its rule.

Each diagnostic carries the findings it shows (``data["findings"]``, ``Finding.to_json``), so
the fixes are built from what the editor sends back, without the analysis result. Config
edits are computed on the config text the editor has now (an unsaved buffer included) by
:mod:`quantlens.daemon.edits`, which keeps the rest of the file byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.uris import from_fs_path

from quantlens.core.errors import Location
from quantlens.core.findings import Finding
from quantlens.daemon import edits
from quantlens.daemon.lsp.lines import resolved

ReadSource = Callable[[str], list[str] | None]
"""A file's current lines (the editor's buffer when open), None when it cannot be read."""


def code_actions(
    diagnostics: Sequence[types.Diagnostic],
    *,
    config_path: Path | None,
    config_text: str | None,
    config_table: str | None,
    read_source: ReadSource,
) -> list[types.CodeAction]:
    """The quick fixes for the diagnostics of one code-action request: the config changes the
    findings recommend (the first one preferred), then one "ignore on this line" per rule.

    Config fixes need the config file (``config_path``, its current text and the table the
    settings live in, from ``find_config``); without one only the ignore actions are offered.
    An action that two diagnostics would both get is offered once, listing both.
    """
    config: tuple[Path, str, str] | None = None
    if config_path is not None and config_text is not None and config_table is not None:
        config = (config_path, config_text, config_table)
    fixes: dict[tuple, types.CodeAction] = {}
    ignores: dict[tuple, types.CodeAction] = {}
    for diagnostic in diagnostics:
        findings = _findings(diagnostic)
        if config is not None:
            for finding in findings:
                _add(fixes, _config_fix(diagnostic, finding, *config))
        for finding in findings:
            _add(ignores, _ignore(diagnostic, finding, read_source))
    actions = [*fixes.values(), *ignores.values()]
    if fixes:
        actions[0].is_preferred = True
    return actions


def _findings(diagnostic: types.Diagnostic) -> list[Finding]:
    """The findings a quantlens diagnostic carries; none for another server's diagnostic."""
    data = diagnostic.data
    if not isinstance(data, Mapping) or not isinstance(data.get("findings"), list):
        return []
    out = []
    for obj in data["findings"]:
        try:
            out.append(Finding.from_json(obj))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _add(actions: dict[tuple, types.CodeAction], found: tuple[tuple, types.CodeAction] | None) -> None:
    """Keep one action per identity; a repeat adds its diagnostic to the one already kept."""
    if found is None:
        return
    key, action = found
    kept = actions.setdefault(key, action)
    if kept is not action and kept.diagnostics is not None and action.diagnostics:
        kept.diagnostics.extend(d for d in action.diagnostics if d not in kept.diagnostics)


def _config_fix(diagnostic: types.Diagnostic, finding: Finding, path: Path, text: str,
                table: str) -> tuple[tuple, types.CodeAction] | None:
    """The recommendation's config change as an edit of the config file; None when there is
    nothing to change (no recommendation, or the file already says it) or it cannot be written."""
    config = finding.recommendation.config if finding.recommendation else {}
    try:
        needed = {key: value for key, value in config.items() if not edits.config_has(text, table, key, value)}
        changes = edits.set_config_values(text, table, needed) if needed else []
    except (ValueError, TypeError):
        return None
    if not changes:
        return None
    lines = text.split("\n")
    uri = from_fs_path(str(path))
    action = types.CodeAction(
        title=_title(needed),
        kind=types.CodeActionKind.QuickFix,
        diagnostics=[diagnostic],
        edit=types.WorkspaceEdit(changes={uri: [_lsp_edit(edit, lines) for edit in changes]}),
    )
    return ("config", uri, tuple(changes)), action


def _ignore(diagnostic: types.Diagnostic, finding: Finding,
            read_source: ReadSource) -> tuple[tuple, types.CodeAction] | None:
    """``# quantlens: ignore[rule]`` on the diagnostic's line, in the file of the finding's
    location on that line (the suppression reader looks only at the finding's lines), else of
    its first location: a diagnostic that follows unsaved edits has moved off the line the
    analysis recorded, and the next analysis records the line it moved to."""
    line = diagnostic.range.start.line
    location = _location_on_line(finding, line + 1) or finding.location
    if location is None or location.line <= 0:
        return None
    lines = read_source(location.file)
    if lines is None or line >= len(lines):
        return None
    edit = edits.add_ignore_comment(lines[line], line, finding.rule)
    if edit is None:
        return None
    uri = from_fs_path(location.file)
    action = types.CodeAction(
        title=f"quantlens: ignore {finding.rule} on this line",
        kind=types.CodeActionKind.QuickFix,
        diagnostics=[diagnostic],
        edit=types.WorkspaceEdit(changes={uri: [_lsp_edit(edit, lines)]}),
    )
    return ("ignore", resolved(location.file), line, finding.rule), action


def _location_on_line(finding: Finding, line: int) -> Location | None:
    """The finding's first location (then related line) on a 1-based line."""
    return next((loc for loc in (*finding.locations, *finding.related) if loc.line == line), None)


def _lsp_edit(edit: edits.TextEdit, lines: Sequence[str]) -> types.TextEdit:
    return types.TextEdit(
        range=types.Range(start=_lsp_position(lines, edit.start_line, edit.start_char),
                          end=_lsp_position(lines, edit.end_line, edit.end_char)),
        new_text=edit.new_text,
    )


def _lsp_position(lines: Sequence[str], line: int, char: int) -> types.Position:
    """LSP counts characters in UTF-16 code units: a character outside the BMP is two."""
    text = lines[line] if line < len(lines) else ""
    return types.Position(line=line, character=len(text[:char].encode("utf-16-le")) // 2)


def _title(config: Mapping[str, Any]) -> str:
    """``quantlens: set z_threshold = 9`` / ``keep blocks.1.mlp.fc2 at 16 bits`` /
    ``turn on shift_negative_activation_correction``."""
    kept: dict[int, list[str]] = {}
    parts = []
    for key, value in config.items():
        path = edits.parse_key(key)
        bits = _kept_bits(path, value)
        if bits is not None:
            kept.setdefault(bits, []).append(path[1])
        elif isinstance(value, bool):
            parts.append(f"turn {'on' if value else 'off'} {key}")
        else:
            parts.append(f"set {key} = {_show(value)}")
    for bits, names in kept.items():
        who = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        parts.append(f"keep {who} at {bits} bits")
    return "quantlens: " + ", ".join(parts)


def _kept_bits(path: tuple[str, ...], value: Any) -> int | None:
    """The bit width of an override that sets activations and weights alike, else None."""
    if len(path) != 2 or path[0] != "overrides" or not isinstance(value, Mapping):
        return None
    if set(value) != {"activation_n_bits", "weights_n_bits"} or value["activation_n_bits"] != value["weights_n_bits"]:
        return None
    bits = value["activation_n_bits"]
    return bits if isinstance(bits, int) and not isinstance(bits, bool) else None


def _show(value: Any) -> str:
    """A value for a title: ``9`` rather than ``9.0``."""
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return edits.render_value(value)
