"""GitHub Actions workflow commands: one annotation per finding, at its first location.

GitHub reads ``::error file=F,line=N,title=T::message`` lines from a step's output and shows
them on the pull request's diff, without any upload or permission. It caps the annotations
shown per step, so a finding is annotated once (where the layer is created), not at every
line it relates to.
"""

from __future__ import annotations

from pathlib import Path

from quantlens.core.errors import Location
from quantlens.daemon.formats import relative_path, shown_at

COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def to_github_annotations(payload: dict, root: Path) -> str:
    """Every finding as a workflow command line, each ending in a newline."""
    lines = [_command(finding, next(iter(shown_at(finding, payload, root)), None), root)
             for finding in payload.get("findings", [])]
    return "".join(f"{line}\n" for line in lines)


def _command(finding: dict, location: Location | None, root: Path) -> str:
    properties: dict[str, str] = {}
    if location is not None:
        properties["file"] = relative_path(location.file, root) or location.file
        if location.line > 0:
            properties["line"] = str(location.line)
        if location.column > 0:
            properties["col"] = str(location.column)
    properties["title"] = f"quantlens {finding['rule']}"
    text = ",".join(f"{key}={_escape_property(value)}" for key, value in properties.items())
    return f"::{COMMANDS[finding['severity']]} {text}::{_escape_data(finding['message'])}"


def _escape_data(text: str) -> str:
    """The message may hold anything but a raw newline or a ``%`` that reads as an escape."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """Property values also end at ``,`` (next property) and ``:`` (start of ``::message``)."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
