"""Locations for points made by library code (fixtures/library_model: torch's Transformer encoder
inside an ``nn.Sequential`` the factory builds).

Every point is shown at a workspace line; a point made or applied inside library code also
carries the library's own line (``PointInfo.library_source``), which the findings, SARIF, the
text report and the LSP diagnostics show as a related location. Merged findings name every
point they cover, and a suppression can name one point.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from quantlens.core.config import load_config
from quantlens.core.diagnosis import aggregate
from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Severity
from quantlens.core.result import AnalysisResult
from quantlens.core.stats import CalibrationResult, PointInfo
from quantlens.core.torch_engine.pipeline import analyze_project
from quantlens.daemon.cli import EXIT_OK, main
from quantlens.daemon.formats.sarif import to_sarif
from quantlens.daemon.lsp.diagnostics import to_diagnostics
from quantlens.daemon.text_report import format_findings, format_table

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "library_model"
TORCH = Path(torch.__file__).resolve().parent
TRANSFORMER = Path(inspect.getsourcefile(nn.TransformerEncoderLayer)).resolve()
ENCODER = "encoder.layers."
MERGED = ("encoder.layers.1.linear2", "encoder.layers.1.add_1")


def marker(name: str, path: Path = FIXTURE / "model.py") -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    hits = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# @{name}")]
    assert len(hits) == 1
    return hits[0]


def text_at(loc: Location) -> str:
    return Path(loc.file).read_text(encoding="utf-8").splitlines()[loc.line - 1]


@pytest.fixture(scope="module")
def result() -> AnalysisResult:
    return analyze_project(load_config(FIXTURE))


def _zscore(result: AnalysisResult) -> Finding:
    found = [f for f in result.findings if f.rule == "outliers-zscore"]
    assert len(found) == 1, [f.points for f in found]
    return found[0]


# ----------------------------------------------------------------------------- points


def test_every_point_is_shown_at_a_workspace_line(result: AnalysisResult) -> None:
    encoder = [p for p in result.points if p.name.startswith(ENCODER)]
    assert len(encoder) == 14  # 2 layers x (self_attn, add_0, norm1, linear1+relu, linear2, add_1, norm2)
    for p in result.points:
        source = p.info.source
        assert source is not None and Path(source.file).parent == FIXTURE and source.line > 0, p.name
        assert text_at(source).strip(), p.name
    # torch's constructors (and nn.TransformerEncoder's deep copies of the layer) made every module
    # of the encoder, and its adds ran from no workspace frame (nn.Sequential called the encoder):
    # all of them are shown where the factory built the layer
    assert {p.info.source.line for p in encoder} == {marker("layer")}
    assert all(p.info.call_site is None for p in encoder if p.info.kind == "function")
    assert result.point("front.conv").info.source.line == marker("conv")


def test_library_points_carry_torchs_own_lines(result: AnalysisResult) -> None:
    forward_lines, start = inspect.getsourcelines(nn.TransformerEncoderLayer.forward)
    for p in result.points:
        lib = p.info.library_source
        if not p.name.startswith(ENCODER):
            assert lib is None, p.name  # the workspace made and applied these itself
            continue
        assert lib is not None and Path(lib.file).is_relative_to(TORCH) and lib.line > 0, p.name
        assert Path(lib.file) == TRANSFORMER
        if p.info.kind == "module":  # the constructor's assignment: self.linear2 = Linear(...)
            attribute = p.info.modules[0].rsplit(".", 1)[1]
            assert re.match(rf"\s*self\.{attribute} = ", text_at(lib)), (p.name, text_at(lib))
        else:  # the residual add inside TransformerEncoderLayer.forward
            assert start <= lib.line < start + len(forward_lines), p.name
            statement = "".join(forward_lines[lib.line - start: lib.line - start + 3])
            called = "self._sa_block" if p.name.endswith("add_0") else "self._ff_block"
            assert re.search(rf"x\s*\+\s*{called}", statement), (p.name, statement)
    # the copies of the layer take the original's lines
    assert result.point("encoder.layers.0.linear2").info.library_source == \
        result.point("encoder.layers.1.linear2").info.library_source


def test_library_op_called_from_workspace_forward_gets_the_calling_line(calibration, sample) -> None:
    """tests/core/models/sample_net.py calls a TransformerEncoderLayer from its own forward."""
    add = calibration.point("encoder.add_0")
    assert add.source.line == sample.line_of("encoder-call")
    assert Path(add.library_source.file) == TRANSFORMER
    assert calibration.point("encoder.linear1").source.line == sample.line_of("library")
    assert "self.linear1 = " in text_at(calibration.point("encoder.linear1").library_source)
    assert calibration.point("fc").library_source is None


def test_point_info_round_trips_through_json_and_msgpack(result: AnalysisResult) -> None:
    for p in result.points:
        back = PointInfo.from_json(json.loads(json.dumps(p.info.to_json())))
        for key in ("name", "kind", "op", "modules", "activation", "source", "source_stack", "call_site",
                    "library_source", "order"):
            assert getattr(back, key) == getattr(p.info, key), (p.name, key)
    restored = CalibrationResult.from_msgpack(result.calibration.to_msgpack())
    assert [p.library_source for p in restored.points] == [p.info.library_source for p in result.points]
    assert restored.point("encoder.layers.1.add_1").library_source.line > 0


# ----------------------------------------------------------------------------- findings


def test_merged_finding_names_every_point_and_its_library_lines(result: AnalysisResult) -> None:
    finding = _zscore(result)
    assert finding.points == MERGED
    assert finding.location == Location(str(FIXTURE / "model.py"), marker("layer"))
    assert "points: encoder.layers.1.linear2, encoder.layers.1.add_1 (2 of 14 points created at this line)" \
        in finding.message
    entries = finding.evidence["aggregated"]
    assert [e["point"] for e in entries] == list(MERGED)
    assert all(e["z_max"] > 5 for e in entries)  # each keeps its own evidence
    for name in MERGED:
        assert result.point(name).info.library_source in finding.related


def test_aggregate_bounds_the_named_points(result: AnalysisResult) -> None:
    line = Location("/somewhere/net.py", 7)
    findings = [Finding("outliers-iqr", Severity.INFO, f"p{i} is odd", points=(f"p{i}",), locations=(line,),
                        evidence={"i": i}) for i in range(7)]
    [merged] = aggregate(findings, result)
    assert merged.points == tuple(f"p{i}" for i in range(7))
    assert merged.message == "p0 is odd; points: p0, p1, p2, p3, p4 and 2 more (7 of 7 points created at this line)"
    assert [e["i"] for e in merged.evidence["aggregated"]] == list(range(7))


def test_json_sarif_and_text_have_no_missing_locations(result: AnalysisResult) -> None:
    payload = json.loads(json.dumps(result.to_json(with_curves=False)))
    for p in payload["points"]:
        assert p["source"] is not None and p["source"]["line"] > 0, p["name"]
    for f in payload["findings"]:
        assert f["locations"] and all(loc["line"] > 0 for loc in f["locations"]), f["message"]

    sarif = to_sarif(payload, FIXTURE, "test")
    results = sarif["runs"][0]["results"]
    assert results
    places = [loc for r in results for loc in (*r["locations"], *r.get("relatedLocations", []))]
    assert all(loc["physicalLocation"]["region"]["startLine"] > 0 for loc in places)
    zscore = next(r for r in results if r["ruleId"] == "outliers-zscore")
    related = {(loc["physicalLocation"]["artifactLocation"]["uri"], loc["physicalLocation"]["region"]["startLine"])
               for loc in zscore["relatedLocations"]}
    for name in MERGED:
        lib = result.point(name).info.library_source
        assert (Path(lib.file).as_uri(), lib.line) in related

    table = format_table(result, FIXTURE).splitlines()[2:]
    assert len(table) == len(result.points)
    for row in table:
        assert re.search(r"\s(model|data)\.py:\d+\s", row), row
    text = format_findings(result, FIXTURE)
    lib = result.point("encoder.layers.1.add_1").info.library_source
    assert f"    library code: {lib.file}:{lib.line} (encoder.layers.1.add_1)" in text.splitlines()


def test_lsp_diagnostic_relates_the_library_lines(result: AnalysisResult) -> None:
    published = to_diagnostics(result, [], rules_doc="file:///rules.md")
    [diagnostic] = [d for d in published[str(FIXTURE / "model.py")] if d.code == "outliers-zscore"]
    related = {(info.location.uri, info.location.range.start.line): info.message
               for info in diagnostic.related_information or []}
    for name in MERGED:
        lib = result.point(name).info.library_source
        message = related[(Path(lib.file).as_uri(), lib.line - 1)]
        assert message == f"outliers-zscore: library code of {name}"


# ----------------------------------------------------------------------------- suppression


def _check(project: Path, tmp_path: Path) -> list[dict]:
    out = tmp_path / "result.json"
    assert main(["check", str(project), "--json", str(out), "--no-progress", "--fail-on", "never"]) == EXIT_OK
    return json.loads(out.read_text())["findings"]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    shutil.copytree(FIXTURE, folder)
    return folder


def _zscore_points(findings: list[dict]) -> list[str]:
    return [n for f in findings if f["rule"] == "outliers-zscore" for n in f["points"]]


def test_comment_naming_a_point_silences_only_that_point(project: Path, tmp_path: Path) -> None:
    model = project / "model.py"
    model.write_text(model.read_text().replace(
        "# @layer", "# @layer  # quantlens: ignore[outliers-zscore:encoder.layers.1.add_1]"))
    findings = _check(project, tmp_path)
    assert _zscore_points(findings) == ["encoder.layers.1.linear2"]  # the other point on the line stays
    iqr = [n for f in findings if f["rule"] == "outliers-iqr" for n in f["points"]]
    assert "encoder.layers.1.add_1" in iqr  # another rule about the same point is not named


def test_config_entry_naming_a_point_silences_only_that_point(project: Path, tmp_path: Path) -> None:
    config = project / "quantlens.toml"
    config.write_text(config.read_text() + 'ignore = ["outliers-zscore:encoder.layers.1.linear2"]\n')
    findings = _check(project, tmp_path)
    assert _zscore_points(findings) == ["encoder.layers.1.add_1"]
    assert any(f["rule"] == "outliers-iqr" for f in findings)
