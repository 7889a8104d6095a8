"""The findings in CI's formats (SARIF for code scanning, GitHub workflow commands).

Both read the result payload, so they render a saved ``--json`` file as well as a live run,
and both place a finding in the repository the same way.
"""

from __future__ import annotations

from pathlib import Path

from quantlens.core.errors import Location


def relative_path(file: str, root: Path) -> str | None:
    """``file`` relative to ``root`` in POSIX form, or None when it lies outside ``root``."""
    try:
        return Path(file).relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def file_locations(items: list[dict | None]) -> list[Location]:
    """The JSON locations that name a real file, without repeats.

    Pseudo-files such as ``<command line>`` are left out: CI would look for them in the
    repository and reject or misplace the entry.
    """
    found = [loc for loc in map(Location.from_json, items) if loc and Path(loc.file).is_absolute()]
    return list(dict.fromkeys(found))


def shown_at(finding: dict, payload: dict, root: Path) -> list[Location]:
    """Where CI shows a finding, most relevant first.

    GitHub code scanning rejects a whole upload when one result has no location, so a
    finding without a file of its own is anchored at the model factory's file.
    """
    model_file = str(payload.get("model") or "").rpartition(":")[0]
    fallback = [Location(str(root.resolve() / model_file))] if model_file else []
    return file_locations(finding.get("locations", [])) or fallback
