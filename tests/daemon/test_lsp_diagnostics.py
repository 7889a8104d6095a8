"""Findings and problems as LSP diagnostics, on real analyses of the fixtures.

Expected lines, severities and counts are derived here from the findings and the fixtures'
files themselves (and the inherited/own split from the isolated error sums with the default
thresholds), not from the converter's own helpers.
"""

from __future__ import annotations

from tests.analyses import fixture_analysis

import dataclasses
import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path

from quantlens.core.diagnosis.catalog import RULES
from quantlens.core.errors import Location, Problem
from quantlens.core.findings import Finding, Severity
from quantlens.core.rediagnose import ESTIMATE_NOTE
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.daemon.lsp.diagnostics import to_diagnostics

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
RULES_MD = ROOT / "docs" / "rules.md"
RULES_DOC = from_fs_path(str(RULES_MD)) or ""
MODELS = ("mobilenet_like", "deit_tiny", "two_branch_concat", "activations_zoo", "clean_mlp")
LSP = {Severity.INFO: types.DiagnosticSeverity.Information, Severity.WARNING: types.DiagnosticSeverity.Warning,
       Severity.ERROR: types.DiagnosticSeverity.Error}


@pytest.fixture(scope="module")
def results() -> dict[str, AnalysisResult]:
    """The five model fixtures plus per_tensor_weights (aggregated inherited degraded layers)."""
    return {name: fixture_analysis(name) for name in (*MODELS, "per_tensor_weights")}


def _convert(result: AnalysisResult | None, problems: list[Problem] | None = None,
             min_severity: Severity = Severity.INFO) -> dict[str, list[types.Diagnostic]]:
    return to_diagnostics(result, problems or [], rules_doc=RULES_DOC, min_severity=min_severity)


def _fails_alone(p: PointResult) -> bool:
    """The default thresholds (10 dB on SQNR and cosine-SNR, 0.1 normalised MSE) on the isolated sums."""
    iso = p.isolated
    assert iso is not None
    c = min(max(iso.cosine, 0.0), 1.0 - 1e-15)
    cos_snr_db = 10 * math.log10(c * c / (1 - c * c)) if c > 0 else -math.inf
    return iso.sum_ee / iso.sum_xx > 0.1 or iso.sqnr_db < 10.0 or cos_snr_db < 10.0


def _inherited(result: AnalysisResult, finding: Finding) -> bool:
    return finding.rule == "degraded-layer" and not any(_fails_alone(result.point(n)) for n in finding.points)


def _by_line(result: AnalysisResult) -> dict[tuple[str, int], list[Finding]]:
    lines: dict[tuple[str, int], list[Finding]] = defaultdict(list)
    for f in result.findings:
        lines[(f.locations[0].file, f.locations[0].line)].append(f)
    return lines


def _at(diagnostics: dict[str, list[types.Diagnostic]], file: str, line: int) -> types.Diagnostic:
    found = [d for d in diagnostics.get(file, []) if d.range.start.line == line - 1]
    assert len(found) == 1, (file, line, found)
    return found[0]


def _headings() -> list[str]:
    return re.findall(r"^## (.+?)\s*$", RULES_MD.read_text(encoding="utf-8"), flags=re.MULTILINE)


# ----------------------------------------------------------------------------- findings


def _unadvised(f: Finding) -> bool:
    """Information whose fix was re-simulated and did not help, or was not re-simulated."""
    return bool(f.evidence.get("withdrawn") or f.evidence.get("unmeasured"))


@pytest.mark.parametrize("name", (*MODELS, "per_tensor_weights"))
def test_one_diagnostic_per_line_at_the_findings_own_location(results: dict[str, AnalysisResult], name: str) -> None:
    result = results[name]
    diagnostics = _convert(result)
    lines = _by_line(result)
    assert sum(len(v) for v in diagnostics.values()) == len(lines)
    for (file, line), group in lines.items():
        d = _at(diagnostics, file, line)
        shown = [(f.rule, Severity.INFO if _inherited(result, f) else f.severity) for f in group]
        top = max(s.rank for _, s in shown)
        lead = next(rule for rule, s in shown if s.rank == top)
        # information with nothing to do on its line (inherited damage; a fix that did not help,
        # or was not re-simulated) is a hint
        quiet = all(s is Severity.INFO and (_unadvised(f) or _inherited(result, f)) for (_, s), f in zip(shown, group))
        expected = types.DiagnosticSeverity.Hint if quiet else LSP[next(s for _, s in shown if s.rank == top)]
        assert d.code == lead and d.severity == expected
        assert d.source == "quantlens"
        assert d.code_description is not None and d.code_description.href == f"{RULES_DOC}#{lead}"
        assert len(d.message.splitlines()) == len(group)
        assert sorted((f["rule"], tuple(f["points"])) for f in d.data["findings"]) == \
            sorted((f.rule, f.points) for f in group)
        assert d.data["points"] == list(dict.fromkeys(n for f in d.data["findings"] for n in f["points"]))
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1]
        assert (d.range.start.line, d.range.start.character) == (line - 1, 0)
        assert (d.range.end.line, d.range.end.character) == (line - 1, len(text))


@pytest.mark.parametrize("name", MODELS)
def test_warnings_are_left_only_where_a_point_fails_by_itself(results: dict[str, AnalysisResult], name: str) -> None:
    result = results[name]
    warned = {(file, line - 1) for (file, line), group in _by_line(result).items()
              if any(f.severity.rank >= 1 and not _inherited(result, f) for f in group)}
    diagnostics = _convert(result)
    assert {(file, d.range.start.line) for file, ds in diagnostics.items() for d in ds
            if d.severity in (types.DiagnosticSeverity.Warning, types.DiagnosticSeverity.Error)} == warned


def test_deit_inherited_layers_are_information_naming_the_cause(results: dict[str, AnalysisResult]) -> None:
    result = results["deit_tiny"]
    degraded = [f for f in result.findings if f.rule == "degraded-layer"]
    assert len(degraded) >= 10 and all(_inherited(result, f) for f in degraded)
    assert all(f.evidence["isolated_failed"] == {} and f.evidence["inherited"] for f in degraded)
    assert all(f.severity is Severity.INFO for f in degraded)  # in the core too: CLI, SARIF and editor agree
    diagnostics = _convert(result)
    fc1 = result.point("blocks.2.mlp.fc1")
    # the cause is where first-divergence says the damage starts (it runs before fc1)
    cause = result.point(next(f.points[0] for f in result.findings if f.rule == "first-divergence"))
    assert cause.info.order < fc1.info.order
    assert fc1.info.source is not None and cause.info.source is not None
    d = _at(diagnostics, fc1.info.source.file, fc1.info.source.line)
    # every finding on the line is information with nothing to do there (the inherited damage,
    # and shift-negative, not re-simulated: max_verified_changes went to likelier fixes): a hint
    assert d.severity == types.DiagnosticSeverity.Hint
    inherits = (f"blocks.2.mlp.fc1 inherits its error from {cause.name} (cumulative SQNR {fc1.cumulative.sqnr_db:.1f} "
                f"dB; its own quantization alone keeps {fc1.isolated.sqnr_db:.1f} dB)")
    lines = d.message.splitlines()
    assert lines[0] == inherits if d.code == "degraded-layer" else f"also degraded-layer: {inherits}" in lines
    core = next(f for f in result.findings if f.rule == "degraded-layer" and f.points == ("blocks.2.mlp.fc1",))
    assert core.message == inherits  # the CLI, SARIF and the HTML report say it in the same words
    assert {d.code, *(line.split(":")[0].removeprefix("also ") for line in lines[1:])} >= {"degraded-layer",
                                                                                          "shift-negative"}
    at_cause = [r for r in d.related_information or [] if r.location.range.start.line == cause.info.source.line - 1]
    if cause.info.source == fc1.info.source:  # both made by the same line (a loop): no pointer to itself
        assert not at_cause
    else:
        assert len(at_cause) == 1 and at_cause[0].location.uri == from_fs_path(cause.info.source.file)
    lead = next(f for f in d.data["findings"] if f["rule"] == "degraded-layer")
    assert lead["severity"] == "info" and lead["evidence"]["inherited_from"] == cause.name
    # no fix of its own (keeping it wide removes at most a quarter of its noise): never a
    # re-simulation candidate, so not "unmeasured" either
    assert lead["recommendation"]["config"] == {} and "unmeasured" not in lead["evidence"]
    assert lead["recommendation"]["explanation"].startswith(f"Fix {cause.name} first: blocks.2.mlp.fc1's own")


def test_the_one_warning_is_the_verified_fix_and_unfelt_damage_is_information(
        results: dict[str, AnalysisResult]) -> None:
    """deit_tiny: block 2 crashes at blocks.2.norm1 (normalization of fc2's massive outliers),
    but the classification output keeps over 30 dB, and keeping norm1 (or any of block 2) wide
    changes it by under 1 dB (re-simulated). So norm1's line is information that says what was
    tried, and the one warning in the editor is on fc2, whose 16 bits gain most (measured)."""
    result = results["deit_tiny"]
    norm1 = result.point("blocks.2.norm1")
    diagnostics = _convert(result)
    d = _at(diagnostics, norm1.info.source.file, norm1.info.source.line)
    assert d.severity == types.DiagnosticSeverity.Hint  # information with no measured advice
    tried = [f for f in d.data["findings"] if "verified" in f["evidence"]]
    assert tried and all(f["evidence"]["verified"]["gain_db"] < 1.0 for f in tried)
    warnings = [x for ds in diagnostics.values() for x in ds if x.severity == types.DiagnosticSeverity.Warning]
    fc2 = result.point("blocks.1.mlp.fc2")
    assert [(x.code, x.range.start.line + 1) for x in warnings] == [("outliers-zscore", fc2.info.source.line)]
    lead = warnings[0].data["findings"][0]
    assert lead["evidence"]["verified"]["gain_db"] >= 1.0 and lead["evidence"]["best_fix"]
    assert result.top_recommendation["change"] == lead["recommendation"]["config"]


def test_aggregated_inherited_findings_name_their_cause(results: dict[str, AnalysisResult]) -> None:
    result = results["per_tensor_weights"]
    group = next(f for f in result.findings
                 if f.rule == "degraded-layer" and f.points == ("blocks.2.project", "blocks.3.project"))
    assert [e["point"] for e in group.evidence["aggregated"]] == ["blocks.2.project", "blocks.3.project"]
    assert not any(_fails_alone(result.point(n)) for n in group.points)
    d = _at(_convert(result), group.locations[0].file, group.locations[0].line)
    # the line also creates blocks.1.project, the cause: its warnings lead
    assert d.severity == types.DiagnosticSeverity.Warning and d.data["findings"][0]["points"][0] == "blocks.1.project"
    shown = next(f for f in d.data["findings"] if f["rule"] == "degraded-layer")
    assert shown["severity"] == "info"
    assert shown["message"].startswith("blocks.2.project and 1 other point created at this line inherit their error "
                                       "from blocks.1.project (blocks.2.project: cumulative SQNR ")
    assert f"also degraded-layer: {shown['message']}" in d.message.splitlines()


def test_a_degraded_point_whose_cause_a_warning_names_is_information(results: dict[str, AnalysisResult]) -> None:
    """blocks.2.dw fails on its own (isolated 10.4 dB): weight-precision names why, on the same
    line, so that warning is the line's and degraded-layer rides along as information."""
    result = results["per_tensor_weights"]
    dw = next(f for f in result.findings if f.rule == "degraded-layer" and f.points[0] == "blocks.2.dw")
    assert dw.severity is Severity.INFO and dw.evidence["explained_by"] == "weight-precision"
    assert not dw.evidence["inherited"]  # its own quantization is to blame, not upstream
    d = _at(_convert(result), dw.locations[0].file, dw.locations[0].line)
    assert d.severity == types.DiagnosticSeverity.Warning and d.code == "weight-precision"


def test_a_group_with_a_point_failing_alone_stays_a_warning(results: dict[str, AnalysisResult], tmp_path: Path) -> None:
    result = results["deit_tiny"]
    # a warning as it is when the output is degraded (deit's output is fine: there it is information)
    base = dataclasses.replace(next(f for f in result.findings if f.rule == "degraded-layer"), severity=Severity.WARNING)
    model = tmp_path / "m.py"
    model.write_text("a = 1\nb = 2\n", encoding="utf-8")
    entries = [{"point": base.points[0], "message": "m"}, {"point": "blocks.2.attn.k", "message": "m",
                                                          "isolated_failed": {"sqnr": 0.05}, "inherited": False}]
    mixed = dataclasses.replace(base, points=(base.points[0], "blocks.2.attn.k"), locations=(Location(str(model), 2),),
                                evidence={**base.evidence, "aggregated": entries})
    d = _at(_convert(dataclasses.replace(result, findings=[mixed])), str(model), 2)
    assert d.severity == types.DiagnosticSeverity.Warning and d.message == base.message


def test_an_estimated_inherited_layer_still_says_it_is_an_estimate(results: dict[str, AnalysisResult]) -> None:
    result = results["deit_tiny"]
    fc1 = next(f for f in result.findings if f.rule == "degraded-layer" and f.points == ("blocks.2.mlp.fc1",))
    estimated = dataclasses.replace(fc1, message=fc1.message + ESTIMATE_NOTE,
                                    evidence={**fc1.evidence, "estimate": True})
    findings = [estimated if f is fc1 else f for f in result.findings]
    d = _at(_convert(dataclasses.replace(result, findings=findings)), fc1.locations[0].file, fc1.locations[0].line)
    cause = next(f.points[0] for f in result.findings if f.rule == "first-divergence")
    mine = [line.removeprefix("also degraded-layer: ") for line in d.message.splitlines()
            if "blocks.2.mlp.fc1 inherits" in line]
    assert len(mine) == 1 and mine[0].startswith(f"blocks.2.mlp.fc1 inherits its error from {cause} (")
    assert mine[0].endswith(ESTIMATE_NOTE)
    assert next(f for f in d.data["findings"] if f["rule"] == "degraded-layer")["evidence"]["estimate"] is True


def test_findings_sharing_a_line_merge_ties_keep_the_core_order(results: dict[str, AnalysisResult]) -> None:
    result = results["per_tensor_weights"]
    project = result.point("blocks.1.project").info.source
    assert project is not None
    on_line = [f for f in result.findings if f.locations[0] == project]
    assert [f.rule for f in on_line if f.severity is Severity.WARNING][:2] == ["outliers-zscore", "weight-precision"]
    d = _at(_convert(result), project.file, project.line)
    assert d.code == "outliers-zscore" and d.severity == types.DiagnosticSeverity.Warning
    lines = d.message.splitlines()
    assert lines[0] == on_line[0].message
    assert lines[1] == f"also weight-precision: {on_line[1].message}"
    assert {ln.split(":")[0] for ln in lines[1:]} == {f"also {f.rule}" for f in on_line[1:]}
    assert [f["rule"] for f in d.data["findings"]][:2] == ["outliers-zscore", "weight-precision"]


def test_min_severity_filters_after_merging(results: dict[str, AnalysisResult]) -> None:
    result = results["deit_tiny"]
    everything = [d for ds in _convert(result).values() for d in ds]
    warnings = [d for ds in _convert(result, min_severity=Severity.WARNING).values() for d in ds]
    warned_lines = [g for g in _by_line(result).values()
                    if any(f.rule != "degraded-layer" for f in g if f.severity.rank)]
    assert len(everything) == len(_by_line(result)) and len(warnings) == len(warned_lines) < len(everything)
    assert [d.message for d in warnings] == [d.message for d in everything
                                             if d.severity == types.DiagnosticSeverity.Warning]
    assert any("also degraded-layer" in d.message for d in warnings)  # info findings ride along on a warning line
    assert _convert(result, min_severity=Severity.ERROR) == {}


def test_information_with_no_measured_fix_is_a_hint(results: dict[str, AnalysisResult]) -> None:
    """deit_tiny: the fixes of several info findings (attention products, the residual adds
    normalised downstream) were re-simulated and gained under 1 dB, and block 2's inherited
    damage names its cause with no fix of its own. Their lines are hints, out of the problems
    list: the lines where something helps keep their severity."""
    result = results["deit_tiny"]
    withdrawn = [f for f in result.findings if f.evidence.get("withdrawn")]
    assert len(withdrawn) >= 3 and all(f.evidence["verified"]["gain_db"] < 1.0 for f in withdrawn)
    everything = [d for ds in _convert(result).values() for d in ds]
    hints = [d for d in everything if d.severity == types.DiagnosticSeverity.Hint]
    hinted = {(loc.file, loc.line) for f in withdrawn for loc in f.locations[:1]}
    lines = _by_line(result)
    quiet = {key for key, group in lines.items()
             if all(f.severity is Severity.INFO and (_unadvised(f) or _inherited(result, f)) for f in group)}
    only_withdrawn = {key for key, group in lines.items() if all(f.evidence.get("withdrawn") for f in group)}
    assert only_withdrawn and only_withdrawn <= hinted and only_withdrawn <= quiet
    assert any(all(_inherited(result, f) for f in lines[key]) for key in quiet)
    assert len(hints) == len(quiet)
    assert all(all(f["evidence"].get("withdrawn") or f["evidence"].get("unmeasured") or f["evidence"].get("inherited")
                   for f in d.data["findings"]) for d in hints)
    assert any(d.severity == types.DiagnosticSeverity.Warning for d in everything)
    warnings = [d for ds in _convert(result, min_severity=Severity.WARNING).values() for d in ds]
    assert not [d for d in warnings if d.severity == types.DiagnosticSeverity.Hint]


def test_ranges_use_the_column_utf16_and_empty_ranges_for_unreadable_lines(
        results: dict[str, AnalysisResult], tmp_path: Path) -> None:
    source = tmp_path / "wide.py"
    source.write_text("x = 1\n    y = 'é😀'\n", encoding="utf-8")
    missing = tmp_path / "gone.py"
    findings = [Finding("activation-product", Severity.INFO, "on a wide line", ("p",), (Location(str(source), 2, 4),)),
                Finding("activation-product", Severity.INFO, "on a missing file", ("p",),
                        (Location(str(missing), 5, 3),)),
                Finding("activation-product", Severity.INFO, "file only", ("p",), (Location(str(source)),))]
    diagnostics = _convert(dataclasses.replace(results["clean_mlp"], findings=findings))
    wide, file_only = sorted(diagnostics[str(source)], key=lambda d: d.range.start.line, reverse=True)
    assert (wide.range.start.line, wide.range.start.character, wide.range.end.character) == (1, 4, 4 + 9)
    assert (file_only.range.start, file_only.range.end) == (types.Position(0, 0), types.Position(0, 0))
    (gone,) = diagnostics[str(missing)]
    assert gone.range.start == gone.range.end == types.Position(4, 3)


def test_finding_without_a_location_goes_to_the_config_file(results: dict[str, AnalysisResult]) -> None:
    result = results["clean_mlp"]
    assert result.config_file is not None
    estimate = Finding("dataset-size", Severity.WARNING, "the dataset looks small (an estimate)",
                       evidence={"estimate": True})
    (d,) = _convert(dataclasses.replace(result, findings=[estimate]))[result.config_file]
    assert d.range.start == d.range.end == types.Position(0, 0)
    assert d.message == estimate.message and d.data["findings"] == [estimate.to_json()]


def test_clean_model_publishes_nothing(results: dict[str, AnalysisResult]) -> None:
    assert results["clean_mlp"].findings == [] and _convert(results["clean_mlp"]) == {}


# ----------------------------------------------------------------------------- problems


def test_problems_are_errors_also_published_where_the_fix_goes(results: dict[str, AnalysisResult]) -> None:
    config = FIXTURES / "deit_tiny" / "quantlens.toml"
    model = FIXTURES / "deit_tiny" / "model.py"
    factory_line = next(i for i, t in enumerate(model.read_text().splitlines(), 1) if t.startswith("def build_model"))
    problem = Problem("build_model raised ValueError: bad width", Location(str(config), 2), code="model",
                      hint="fix the factory", related=(Location(str(model), factory_line), Location("<command line>")))
    dropped = [Problem("no location"), Problem("bad flag", Location("<command line>"), code="usage")]
    diagnostics = _convert(None, [problem, *dropped])
    assert set(diagnostics) == {str(config), str(model)}
    (at_config,), (at_def,) = diagnostics[str(config)], diagnostics[str(model)]
    for d in (at_config, at_def):
        assert d.severity == types.DiagnosticSeverity.Error and d.code == "model" and d.source == "quantlens"
        assert d.message == "build_model raised ValueError: bad width\n(hint: fix the factory)"
        assert d.data == {"problem": problem.to_json()}
    assert at_config.range.start.line == 1 and at_def.range.start.line == factory_line - 1
    assert [(r.location.uri, r.location.range.start.line) for r in at_config.related_information or []] == \
        [(from_fs_path(str(model)), factory_line - 1)]
    assert [(r.location.uri, r.location.range.start.line) for r in at_def.related_information or []] == \
        [(from_fs_path(str(config)), 1)]


def test_result_problems_are_published_once_with_the_findings(results: dict[str, AnalysisResult]) -> None:
    result = results["two_branch_concat"]
    model = FIXTURES / "two_branch_concat" / "model.py"
    problem = Problem("cat_0 produced NaN", Location(str(model), 3), code="data")
    diagnostics = _convert(dataclasses.replace(result, problems=[problem]), [problem])
    errors = [d for d in diagnostics[str(model)] if d.code == "data"]
    assert len(errors) == 1 and errors[0].message == "cat_0 produced NaN"
    assert len(diagnostics[str(model)]) == 1 + len(_by_line(result))


# ----------------------------------------------------------------------------- docs and imports


def test_rules_doc_has_one_section_per_catalogued_rule() -> None:
    headings = _headings()
    assert len(headings) == len(set(headings))
    assert set(headings) == set(RULES)


def test_every_link_lands_on_a_section_of_the_rules_doc(results: dict[str, AnalysisResult]) -> None:
    headings = set(_headings())
    links = {d.code_description.href for r in results.values() for ds in _convert(r).values() for d in ds
             if d.code_description is not None}
    assert len(links) >= 8
    for href in links:
        base, _, anchor = href.partition("#")
        assert base == RULES_DOC and anchor in headings


def test_the_converter_never_imports_torch() -> None:
    code = "import sys, quantlens.daemon.lsp.diagnostics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
