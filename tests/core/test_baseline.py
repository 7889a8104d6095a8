"""Baselines: written from a hand-built result payload (tests/daemon/payloads.py), read back, compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantlens.core.baseline import (
    FORMAT,
    Regression,
    compare_to_baseline,
    regressions_to_findings,
    write_baseline,
)
from quantlens.core.diagnosis.catalog import RULES
from quantlens.core.errors import Location, QuantlensError
from quantlens.core.findings import Severity
from tests.daemon import payloads

ROOT = Path("/srv/project")
FC2 = "blocks.1.mlp.fc2"


def run(fc2_cumulative: payloads.Db = 31.2, fc2_isolated: payloads.Db = 40.0, output_db: payloads.Db = 30.0,
        **settings: object) -> dict:
    points = [
        payloads.point(ROOT, "blocks.0.mlp.fc1", line=10, isolated_db=42.0, cumulative_db=41.5, order=0),
        payloads.point(ROOT, FC2, line=12, call_line=30, isolated_db=fc2_isolated, cumulative_db=fc2_cumulative,
                       order=1),
        payloads.point(ROOT, "head", line=14, isolated_db=35.0, cumulative_db=29.0, order=2),
    ]
    return payloads.payload(ROOT, points, output_sqnr_db=output_db, settings={**payloads.SETTINGS, **settings})


def saved(payload: dict) -> dict:
    """Through JSON text, as the CLI writes and reads the file."""
    return json.loads(json.dumps(write_baseline(payload), allow_nan=False))


def test_baseline_document_holds_the_runs_metrics() -> None:
    doc = saved(run())
    assert doc["format"] == FORMAT == "quantlens.baseline/1"
    assert doc["model"] == "models/factory.py:build"
    assert doc["settings"] == payloads.SETTINGS
    assert doc["output"] == {"sqnr_db": 30.0, "cosine": pytest.approx(1 / (1 + 1e-3) ** 0.5), "top1_agreement": 0.97}
    assert list(doc["points"]) == ["blocks.0.mlp.fc1", FC2, "head"]
    assert doc["points"][FC2] == {"isolated_sqnr_db": 40.0, "cumulative_sqnr_db": 31.2, "threshold": 4.0, "n_bits": 8}


def test_round_trip_is_clean() -> None:
    payload = run()
    report = compare_to_baseline(payload, saved(payload))
    assert report.ok
    assert (report.regressions, report.missing, report.new, report.settings_changed) == ([], [], [], [])
    assert regressions_to_findings(report, payload) == []


def test_drop_beyond_tolerance_fails_and_names_the_point() -> None:
    report = compare_to_baseline(run(fc2_cumulative=29.2), saved(run()), tolerance_db=1.0)
    assert not report.ok
    assert report.regressions == [Regression(FC2, "cumulative_sqnr_db", 31.2, 29.2)]
    assert report.regressions[0].drop_db == pytest.approx(2.0)

    [finding] = regressions_to_findings(report, run(fc2_cumulative=29.2))
    assert finding.rule == "baseline-regression" and finding.severity is Severity.ERROR
    assert finding.message == (f"{FC2}: cumulative SQNR fell 2.0 dB below the baseline "
                               "(31.2 -> 29.2 dB, tolerance 1.0 dB)")
    assert finding.points == (FC2,)
    assert finding.locations == (Location(str(ROOT / "models/net.py"), 12), Location(str(ROOT / "models/net.py"), 30))
    assert finding.evidence["regressions"] == [{"metric": "cumulative_sqnr_db", "baseline_db": 31.2,
                                                "current_db": 29.2, "drop_db": pytest.approx(2.0)}]
    assert finding.evidence["tolerance_db"] == 1.0
    assert "--write-baseline" in finding.recommendation.explanation
    assert RULES["baseline-regression"].default_severity is Severity.ERROR


def test_drop_within_tolerance_passes() -> None:
    assert compare_to_baseline(run(fc2_cumulative=30.5), saved(run()), tolerance_db=1.0).ok
    assert not compare_to_baseline(run(fc2_cumulative=30.5), saved(run()), tolerance_db=0.5).ok


def test_improvement_never_fails() -> None:
    report = compare_to_baseline(run(fc2_cumulative=45.0, fc2_isolated=60.0, output_db=40.0), saved(run()))
    assert report.ok and report.regressions == []


def test_both_metrics_of_a_point_make_one_finding_worst_first() -> None:
    payload = run(fc2_cumulative=24.0, fc2_isolated=37.5)
    [finding] = regressions_to_findings(compare_to_baseline(payload, saved(run())), payload)
    assert finding.message == (f"{FC2}: cumulative SQNR fell 7.2 dB below the baseline (31.2 -> 24.0 dB, "
                               "tolerance 1.0 dB); isolated SQNR fell 2.5 dB below the baseline "
                               "(40.0 -> 37.5 dB, tolerance 1.0 dB)")
    assert [r["metric"] for r in finding.evidence["regressions"]] == ["cumulative_sqnr_db", "isolated_sqnr_db"]


def test_output_regression_is_shown_on_the_last_point() -> None:
    payload = run(output_db=27.0)
    report = compare_to_baseline(payload, saved(run()))
    assert report.regressions == [Regression("<output>", "sqnr_db", 30.0, 27.0)]
    [finding] = regressions_to_findings(report, payload)
    assert finding.message == "model output: SQNR fell 3.0 dB below the baseline (30.0 -> 27.0 dB, tolerance 1.0 dB)"
    assert finding.points == ()
    assert finding.locations == (Location(str(ROOT / "models/net.py"), 14),)


def test_infinite_values() -> None:
    exact = run(fc2_cumulative="inf")
    assert compare_to_baseline(exact, saved(exact)).ok
    assert compare_to_baseline(exact, saved(run())).ok  # 31.2 dB -> exact: an improvement

    payload = run(fc2_cumulative=200.0)
    report = compare_to_baseline(payload, saved(exact))
    assert report.regressions == [Regression(FC2, "cumulative_sqnr_db", float("inf"), 200.0)]
    [finding] = regressions_to_findings(report, payload)
    assert "cumulative SQNR fell inf dB below the baseline (inf -> 200.0 dB" in finding.message
    json.dumps(finding.to_json(), allow_nan=False)  # evidence keeps the result's "inf" spelling
    assert finding.evidence["regressions"][0]["drop_db"] == "inf"


def test_null_values_are_not_compared() -> None:
    assert compare_to_baseline(run(fc2_cumulative=None), saved(run())).ok
    assert compare_to_baseline(run(), saved(run(fc2_cumulative=None))).ok


def test_missing_and_new_points_are_reported_but_pass() -> None:
    baseline = saved(run())
    baseline["points"] = {"stem": baseline["points"].pop("blocks.0.mlp.fc1"), **baseline["points"]}
    report = compare_to_baseline(run(), baseline)
    assert report.ok
    assert report.missing == ["stem"]
    assert report.new == ["blocks.0.mlp.fc1"]


def test_changed_settings_are_named_in_the_findings() -> None:
    payload = run(fc2_cumulative=20.0, activation_n_bits=4, z_threshold=9.0)
    report = compare_to_baseline(payload, saved(run()))
    assert report.settings_changed == ["activation_n_bits", "z_threshold"]
    [finding] = regressions_to_findings(report, payload)
    assert finding.evidence["settings_changed"] == ["activation_n_bits", "z_threshold"]


@pytest.mark.parametrize(("doc", "message"), [
    ({"format": "quantlens.result/1"},
     "not a quantlens baseline: \"format\" is 'quantlens.result/1', expected 'quantlens.baseline/1'"),
    ({"points": {}}, "not a quantlens baseline: \"format\" is None, expected 'quantlens.baseline/1'"),
    ([1, 2], "a baseline is a JSON object, got list"),
])
def test_not_a_baseline_raises_at_the_file(doc: object, message: str) -> None:
    with pytest.raises(QuantlensError) as caught:
        compare_to_baseline(run(), doc, origin="ci/baseline.json")
    [problem] = caught.value.problems
    assert problem.message == message
    assert problem.location == Location("ci/baseline.json")
    assert problem.code == "baseline" and "--write-baseline" in problem.hint


def test_every_bad_value_is_reported_at_once() -> None:
    doc = saved(run())
    doc["points"][FC2]["cumulative_sqnr_db"] = "31 dB"
    doc["points"]["head"] = 3
    doc["output"]["sqnr_db"] = True
    with pytest.raises(QuantlensError) as caught:
        compare_to_baseline(run(), doc)
    assert [p.message for p in caught.value.problems] == [
        f"bad baseline: points.{FC2}.cumulative_sqnr_db must be a number, \"inf\", \"-inf\" or null, got '31 dB'",
        "bad baseline: points.head must be an object, got 3",
        "bad baseline: output.sqnr_db must be a number, \"inf\", \"-inf\" or null, got True",
    ]
    assert {p.location for p in caught.value.problems} == {Location("<baseline>")}
