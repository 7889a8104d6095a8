"""SARIF 2.1.0, the log format GitHub code scanning (and most CI dashboards) import.

Paths are written relative to ``%SRCROOT%`` so the same log is valid on any checkout; the
fingerprint leaves out lines and numbers so that code scanning keeps one alert open across
runs instead of closing and reopening it whenever a line moves or an SQNR shifts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote

from quantlens.core.diagnosis.catalog import RULES, RuleInfo
from quantlens.core.errors import Location
from quantlens.daemon.formats import file_locations, relative_path, shown_at

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
FINGERPRINT = "quantlensFinding/v1"
"""Versioned: changing what the hash covers must not silently merge or split alerts."""


def to_sarif(payload: dict, root: Path, version: str) -> dict:
    """The whole SARIF log of one run; ``root`` is the folder that relative URIs start from."""
    rules = list(RULES.values())
    index = {rule.id: i for i, rule in enumerate(rules)}
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "quantlens", "version": version, "rules": [_rule(r) for r in rules]}},
            "originalUriBaseIds": {SRCROOT: {"uri": _folder_uri(root)}},
            "invocations": [{
                "executionSuccessful": True,
                "toolExecutionNotifications": [_notification(p, root) for p in payload.get("problems", [])],
            }],
            "columnKind": "unicodeCodePoints",
            "results": [_result(f, payload, root, index) for f in payload.get("findings", [])],
        }],
    }


def _folder_uri(root: Path) -> str:
    """SARIF resolves a relative URI against its base by URI rules, so the folder needs its '/'."""
    uri = root.resolve().as_uri()
    return uri if uri.endswith("/") else f"{uri}/"


def _rule(rule: RuleInfo) -> dict:
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.description},
        "defaultConfiguration": {"level": LEVELS[rule.default_severity.value]},
        "help": {"text": f"{rule.description} To silence it, add `# quantlens: ignore[{rule.id}]` to the "
                         f'reported line, or `ignore = ["{rule.id}"]` to [tool.quantlens]; '
                         f"`{rule.id}:point-name` in either silences the finding about one point."},
    }


def _result(finding: dict, payload: dict, root: Path, index: dict[str, int]) -> dict:
    shown = shown_at(finding, payload, root)
    primary, others = shown[:1], shown[1:]
    related = [loc for loc in dict.fromkeys([*others, *file_locations(finding.get("related", []))])
               if loc not in primary]
    places = [_location(loc, root) for loc in primary]
    result = {
        "ruleId": finding["rule"],
        "level": LEVELS[finding["severity"]],
        "message": {"text": finding["message"]},
        "locations": places,
        "partialFingerprints": {FINGERPRINT: _fingerprint(finding, places)},
        "properties": {key: finding.get(key) for key in ("points", "evidence", "recommendation", "predicted")},
    }
    if finding["rule"] in index:
        result["ruleIndex"] = index[finding["rule"]]
    if related:
        result["relatedLocations"] = [{"id": i, **_location(loc, root)} for i, loc in enumerate(related, 1)]
    return result


def _fingerprint(finding: dict, places: list[dict]) -> str:
    """What the finding is about (rule, points, file), never where in the file or how bad."""
    file = places[0]["physicalLocation"]["artifactLocation"]["uri"] if places else ""
    key = json.dumps([finding["rule"], finding.get("points", []), file])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _location(location: Location, root: Path) -> dict:
    relative = relative_path(location.file, root)
    artifact = ({"uri": quote(relative), "uriBaseId": SRCROOT} if relative is not None
                else {"uri": Path(location.file).as_uri()})
    physical: dict[str, object] = {"artifactLocation": artifact}
    if location.line > 0:
        column = {"startColumn": location.column} if location.column > 0 else {}
        physical["region"] = {"startLine": location.line, **column}
    return {"physicalLocation": physical}


def _notification(problem: dict, root: Path) -> dict:
    """A non-fatal problem of the run (a config key ignored, NaN met): the run itself succeeded."""
    hint = f" ({problem['hint']})" if problem.get("hint") else ""
    out = {"level": "warning", "message": {"text": f"{problem['message']}{hint}"},
           "descriptor": {"id": problem["code"]}}
    places = file_locations([problem.get("location")])
    if places:
        out["locations"] = [_location(places[0], root)]
    return out
