"""SARIF and GitHub annotations of hand-built result payloads (tests/daemon/payloads.py).

The SARIF log is checked against the official 2.1.0 schema kept in ``shared/schemas`` beside
the checkout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantlens.core.diagnosis.catalog import RULES
from quantlens.daemon.formats.github import to_github_annotations
from quantlens.daemon.formats.sarif import to_sarif
from tests.daemon import payloads
from tests.daemon.payloads import location

SCHEMA = Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "sarif-schema-2.1.0.json"
ROOT = Path("/srv/project")
OUTSIDE = Path("/opt/lib/site.py")


def findings(fc2_line: int = 12, sqnr: float = 23.9) -> list[dict]:
    return [
        payloads.finding("degraded-layer", "error", f"blocks.1.mlp.fc2 is degraded: cumulative SQNR {sqnr} dB",
                         points=("blocks.1.mlp.fc2",),
                         locations=(location(ROOT, "models/net.py", fc2_line, 9), location(ROOT, "models/net.py", 30)),
                         related=(location(ROOT, "models/blocks.py", 4), location(ROOT, "models/net.py", 30)),
                         evidence={"cumulative_sqnr_db": sqnr}),
        payloads.finding("outliers-zscore", "warning", "blocks.0.mlp.fc1 has outliers at z = 14",
                         points=("blocks.0.mlp.fc1",), locations=(location(ROOT, "my models/net, v2.py", 0),)),
        payloads.finding("shift-negative", "info", "head has a small negative part",
                         points=("head",), locations=({"file": str(OUTSIDE), "line": 3, "column": 0},)),
        payloads.finding("output-degraded", "warning", "the output degrades though no layer stands out"),
    ]


def result(found: list[dict], problems: list[dict] | None = None) -> dict:
    points = [payloads.point(ROOT, "blocks.1.mlp.fc2", line=12, isolated_db=40.0, cumulative_db=23.9)]
    return payloads.payload(ROOT, points, found, problems=problems)


def sarif_results(found: list[dict]) -> list[dict]:
    return to_sarif(result(found), ROOT, "0.1.0")["runs"][0]["results"]


def test_sarif_is_valid_against_the_official_schema() -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"the SARIF schema is not at {SCHEMA} (shared/ beside the checkout)")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    problems = [{"message": "z_threshold is ignored", "code": "config", "hint": "remove it",
                 "location": location(ROOT, "quantlens.toml", 3, 1)},
                {"message": "bad --set", "code": "usage", "hint": "", "location": {"file": "<command line>"}}]
    log = json.loads(json.dumps(to_sarif(result(findings(), problems), ROOT, "0.1.0"), allow_nan=False))
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(log)]
    assert errors == []
    notes = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [n["message"]["text"] for n in notes] == ["z_threshold is ignored (remove it)", "bad --set"]
    assert notes[0]["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "quantlens.toml", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 3, "startColumn": 1}}
    assert "locations" not in notes[1]


def test_sarif_run_describes_the_tool_and_its_root() -> None:
    run = to_sarif(result([]), ROOT, "0.1.0")["runs"][0]
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("quantlens", "0.1.0")
    assert [r["id"] for r in driver["rules"]] == list(RULES)
    regression = driver["rules"][list(RULES).index("baseline-regression")]
    assert regression["name"] == "BaselineRegression"
    assert regression["defaultConfiguration"] == {"level": "error"}
    assert regression["shortDescription"] == {"text": RULES["baseline-regression"].title}
    assert "# quantlens: ignore[baseline-regression]" in regression["help"]["text"]
    assert run["originalUriBaseIds"] == {"%SRCROOT%": {"uri": "file:///srv/project/"}}
    assert run["invocations"] == [{"executionSuccessful": True, "toolExecutionNotifications": []}]
    assert run["results"] == []


def test_sarif_results_levels_locations_and_related() -> None:
    rules = list(RULES)
    degraded, outliers, shift, output = sarif_results(findings())
    assert [r["level"] for r in (degraded, outliers, shift, output)] == ["error", "warning", "note", "warning"]
    assert [rules[r["ruleIndex"]] for r in (degraded, outliers, shift, output)] == [
        "degraded-layer", "outliers-zscore", "shift-negative", "output-degraded"]
    assert degraded["message"] == {"text": "blocks.1.mlp.fc2 is degraded: cumulative SQNR 23.9 dB"}
    assert degraded["locations"] == [{"physicalLocation": {
        "artifactLocation": {"uri": "models/net.py", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 12, "startColumn": 9}}}]
    # the second location and the related lines, each once
    assert [(r["id"], r["physicalLocation"]["artifactLocation"]["uri"], r["physicalLocation"]["region"]["startLine"])
            for r in degraded["relatedLocations"]] == [(1, "models/net.py", 30), (2, "models/blocks.py", 4)]
    assert degraded["properties"]["points"] == ["blocks.1.mlp.fc2"]
    assert degraded["properties"]["evidence"] == {"cumulative_sqnr_db": 23.9}
    # line 0: no region; the path is percent-encoded
    assert outliers["locations"] == [{"physicalLocation": {
        "artifactLocation": {"uri": "my%20models/net%2C%20v2.py", "uriBaseId": "%SRCROOT%"}}}]
    # outside the root: an absolute file URI with no base
    assert shift["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "file:///opt/lib/site.py"}
    # no location of its own: GitHub would reject the whole log, so it is anchored at the model's file
    assert output["locations"] == [{"physicalLocation": {
        "artifactLocation": {"uri": "models/factory.py", "uriBaseId": "%SRCROOT%"}}}]


def test_sarif_fingerprints_ignore_lines_and_numbers() -> None:
    def prints(found: list[dict]) -> list[str]:
        return [r["partialFingerprints"]["quantlensFinding/v1"] for r in sarif_results(found)]

    before = prints(findings())
    assert prints(findings(fc2_line=57, sqnr=19.5)) == before
    assert len(set(before)) == len(before)
    moved = findings()
    moved[0]["locations"][0] = location(ROOT, "models/other.py", 12, 9)
    renamed = findings()
    renamed[0]["points"] = ["blocks.2.mlp.fc2"]
    assert prints(moved)[0] != before[0]
    assert prints(renamed)[0] != before[0]


def test_github_annotations_exact() -> None:
    text = to_github_annotations(result(findings()), ROOT)
    assert text == (
        "::error file=models/net.py,line=12,col=9,title=quantlens degraded-layer::"
        "blocks.1.mlp.fc2 is degraded: cumulative SQNR 23.9 dB\n"
        "::warning file=my models/net%2C v2.py,title=quantlens outliers-zscore::"
        "blocks.0.mlp.fc1 has outliers at z = 14\n"
        "::notice file=/opt/lib/site.py,line=3,title=quantlens shift-negative::head has a small negative part\n"
        "::warning file=models/factory.py,title=quantlens output-degraded::"
        "the output degrades though no layer stands out\n"
    )


def test_github_annotations_escape_properties_and_message() -> None:
    odd = payloads.finding("dataset-size", "warning", "100% of batches:\r\nthresholds, differ",
                           locations=(location(ROOT, "data/a:b,c%d.py", 5),))
    assert to_github_annotations(result([odd]), ROOT) == (
        "::warning file=data/a%3Ab%2Cc%25d.py,line=5,title=quantlens dataset-size::"
        "100%25 of batches:%0D%0Athresholds, differ\n"
    )


def test_github_annotations_of_no_findings_is_empty() -> None:
    assert to_github_annotations(result([]), ROOT) == ""
