"""Hover and inlay-hint content of the language server, on real analyses of the fixtures."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from lsprotocol import types

from quantlens.core.histogram import bin_bounds, bin_indices, histogram_from_values
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.daemon.lsp.hover import (
    CHOSEN_MARK,
    MAX_TABLE_ROWS,
    column_counts,
    histogram_block,
    hover,
    marker_columns,
    sparkline,
)
from quantlens.daemon.lsp.inlay_hints import inlay_hints
from quantlens.daemon.lsp.lines import LineIndex

from tests.analyses import fixture_analysis
from tests.core.values import synthetic

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _analyze(cache: dict[str, AnalysisResult], name: str) -> AnalysisResult:
    if name not in cache:
        cache[name] = fixture_analysis(name)
    return cache[name]


@pytest.fixture(scope="module")
def analyses() -> dict[str, AnalysisResult]:
    """Each fixture analysed once for the whole module, whichever fixture asks first."""
    return {}


@pytest.fixture(scope="module", params=["deit_tiny", "mobilenet_like"])
def analysis(request, analyses) -> AnalysisResult:
    return _analyze(analyses, request.param)


@pytest.fixture(scope="module")
def deit(analyses) -> AnalysisResult:
    return _analyze(analyses, "deit_tiny")


@pytest.fixture(scope="module")
def mobilenet(analyses) -> AnalysisResult:
    return _analyze(analyses, "mobilenet_like")


def model_file(result: AnalysisResult) -> str:
    """The model's file: the first layer's (the model input's point sits at the data function)."""
    return next(p for p in result.points if p.info.kind != "input").info.source.file


def shown_lines(result: AnalysisResult, path: str) -> dict[int, list[str]]:
    """Independent answer for the index: every point on its source and call-site line."""
    lines: dict[int, list[str]] = defaultdict(list)
    for p in sorted(result.points, key=lambda p: p.info.order):
        for line in sorted({loc.line for loc in (p.info.source, p.info.call_site) if loc and loc.file == path}):
            lines[line].append(p.name)
    return lines


def findings_on(result: AnalysisResult, path: str, line: int) -> int:
    return sum(any(loc.file == path and loc.line == line for loc in f.locations) for f in result.findings)


def single_point(result: AnalysisResult) -> PointResult:
    """The first point whose creating line shows it alone."""
    lines = shown_lines(result, model_file(result))
    return next(p for p in result.points if lines[p.info.source.line] == [p.name])


def hover_text(result: AnalysisResult, line: int, **kwargs) -> str:
    found = hover(LineIndex(result), result, model_file(result), line - 1, **kwargs)
    assert found is not None
    assert isinstance(found.contents, types.MarkupContent)
    assert found.contents.kind == types.MarkupKind.Markdown
    return found.contents.value


def g3(x: float) -> str:
    return f"{x:.3g}"


def test_index_lists_points_on_their_source_and_call_site_lines(analysis):
    path = model_file(analysis)
    index = LineIndex(analysis)
    expected = shown_lines(analysis, path)
    got = index.lines_in(path)
    assert {line: [p.name for p in pts] for line, pts in got.items()} == dict(expected)
    for line, names in expected.items():
        assert [p.name for p in index.points_at(path, line)] == names
    sources = {p.info.source.line for p in analysis.points if p.info.source.file == path}
    assert set(index.sources_in(path)) == sources
    assert index.points_at(path, 1) == []


def test_index_compares_resolved_paths(deit, tmp_path):
    link = tmp_path / "linked"
    link.symlink_to(FIXTURES / "deit_tiny")
    index = LineIndex(deit)
    p = single_point(deit)
    via_link = str(link / "model.py")
    assert [q.name for q in index.points_at(via_link, p.info.source.line)] == [p.name]
    relative = os.path.relpath(p.info.source.file)
    assert [q.name for q in index.points_at(relative, p.info.source.line)] == [p.name]


def test_single_point_hover_shows_its_numbers(analysis):
    p = single_point(analysis)
    a = p.activation
    text = hover_text(analysis, p.info.source.line)
    assert f"**`{p.name}`** · {p.info.op} · {p.info.kind}" in text
    sign = "signed" if a.signed else "unsigned"
    bits = f"{'' if a.signed else 'u'}int{a.n_bits}"
    assert f"**{bits}** {sign} · threshold **{g3(a.threshold)}** ({a.error_method})" in text
    assert f"predicted SQNR **{a.predicted_sqnr_db:.1f} dB**" in text
    assert f"isolated SQNR **{p.isolated.sqnr_db:.1f} dB**" in text
    assert f"cumulative SQNR **{p.cumulative.sqnr_db:.1f} dB**" in text
    assert f"range [{g3(a.min)}, {g3(a.max)}] · mean {g3(a.mean)} · std {g3(a.std)}" in text
    assert f"{g3(100 * a.negative_fraction)}% negative" in text
    z = max(a.max - a.mean, a.mean - a.min) / a.std
    assert f"farthest value {g3(z)}σ from the mean · {g3(100 * a.iqr_outlier_fraction)}% IQR outliers" in text
    for method, threshold in a.method_thresholds.items():
        name = f"**{method}** (used)" if method == a.error_method else method
        assert f"| {name} | {g3(threshold)} | {a.method_sqnr_db[method]:.1f} dB |" in text
    w = p.weights
    assert w is not None
    assert (f"weights: int{w.n_bits} {'per channel' if w.per_channel else 'per tensor'} · SQNR {w.sqnr_db:.1f} dB"
            f" · worst channel {w.worst_channel_sqnr_db:.1f} dB") in text
    assert "```text" in text
    count = findings_on(analysis, p.info.source.file, p.info.source.line)
    assert (f"{count} finding" in text) == (count > 0)


def test_call_site_line_shows_the_same_point(deit):
    p = single_point(deit)
    assert p.info.call_site.line != p.info.source.line
    assert hover_text(deit, p.info.call_site.line) == hover_text(deit, p.info.source.line)


def test_histogram_marks_the_threshold_where_it_falls(deit):
    p = next(q for q in deit.points if q.activation.signed and -q.activation.threshold > q.activation.min)
    a = p.activation
    stats = deit.calibration.stats[p.name]
    block = histogram_block(stats, a).split("\n")
    spark, marks, axis = block[1], block[2], block[3]
    assert len(spark) == 42
    lo, hi = stats.min, stats.max
    expected = {1 + min(39, math.floor((t - lo) / (hi - lo) * 40)) for t in (-a.threshold, a.threshold)
                if lo <= t <= hi}
    expected |= {41 for t in (a.threshold,) if t > hi}
    assert {i for i, c in enumerate(marks) if c == CHOSEN_MARK} == expected
    assert axis.split() == [g3(lo), g3(hi)]


def test_line_of_a_loop_gets_a_table(deit):
    path = model_file(deit)
    line = deit.point("blocks.0.norm1").info.source.line
    names = shown_lines(deit, path)[line]
    assert names == ["blocks.0.norm1", "blocks.1.norm1", "blocks.2.norm1"]
    text = hover_text(deit, line)
    assert text.startswith("**3 quantization points on this line**")
    rows = [r for r in text.split("\n") if r.startswith("| `")]
    assert len(rows) == 3
    for row, name in zip(rows, names, strict=True):
        p = deit.point(name)
        a = p.activation
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells == [f"`{name}`", p.info.op, f"[{g3(a.min)}, {g3(a.max)}]", g3(a.threshold),
                         f"int{a.n_bits}", f"{p.isolated.sqnr_db:.1f} dB", f"{p.cumulative.sqnr_db:.1f} dB"]
    count = findings_on(deit, path, line)
    assert count >= 1  # blocks.2.norm1 is degraded
    assert f"{count} finding{'s' if count > 1 else ''} on this line" in text


def test_call_site_line_mixes_the_points_applied_there(deit):
    path = model_file(deit)
    line = deit.point("blocks.0.add_0").info.source.line
    text = hover_text(deit, line)
    names = shown_lines(deit, path)[line]
    assert "blocks.0.norm1" in names and len(names) == 6
    rows = [r for r in text.split("\n") if r.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == names


def test_long_table_is_cut(deit):
    line = deit.points[0].info.source
    squeezed = dataclasses.replace(deit, points=[
        dataclasses.replace(p, info=dataclasses.replace(p.info, source=line, call_site=None)) for p in deit.points
    ])
    text = hover_text(squeezed, line.line)
    assert len([r for r in text.split("\n") if r.startswith("| `")]) == MAX_TABLE_ROWS
    assert f"... and {len(deit.points) - MAX_TABLE_ROWS} more" in text
    assert "–" not in text  # every point has both SQNRs here


def test_missing_metrics_show_a_dash(deit):
    p = single_point(deit)
    bare = dataclasses.replace(deit, points=[dataclasses.replace(p, isolated=None, cumulative=None)], findings=[])
    text = hover_text(bare, p.info.source.line)
    assert "isolated SQNR **–** · cumulative SQNR **–**" in text
    assert "finding" not in text


def test_no_hover_without_a_point(deit):
    index = LineIndex(deit)
    path = model_file(deit)
    occupied = set(shown_lines(deit, path))
    empty = next(line for line in range(1, 200) if line not in occupied)
    assert hover(index, deit, path, empty - 1) is None
    assert hover(index, deit, str(FIXTURES / "deit_tiny" / "data.py"), single_point(deit).info.source.line - 1) is None


def test_plot_links_only_to_written_files(deit, tmp_path):
    from quantlens.core.diagnosis.settings import DiagnosisSettings
    from quantlens.daemon.report.html import draw_point
    from quantlens.daemon.report.payload import point_pictures

    p = single_point(deit)
    pictures = [pic.path for pic in draw_point(p.to_json(), point_pictures(deit, p, DiagnosisSettings()),
                                               deit.points.index(p), tmp_path)]
    assert len(pictures) >= 2, "the report draws the histogram and the error curves"
    missing = pictures.pop()
    missing.unlink()
    text = hover_text(deit, p.info.source.line, plots_dir=tmp_path)
    links = re.findall(r"\]\((file://[^)]+)\)", text)
    assert links == [path.resolve().as_uri() for path in pictures]
    assert missing.resolve().as_uri() not in text
    assert "plots:" not in hover_text(deit, p.info.source.line)


@pytest.mark.parametrize("kind", ["laplace_outliers", "relu", "bimodal", "gauss_37"])
def test_column_counts_match_numpy_histogram(kind):
    x = synthetic(kind, seed=3, n=20000)
    codes, counts, _ = histogram_from_values(x)
    low, high = float(x.min()), float(x.max())
    got = column_counts(codes, counts, low, high, 40)
    raw, edges = np.histogram(x.astype(np.float64), bins=40, range=(low, high))
    assert got.sum() == x.size
    # Exactly numpy's answer for the values moved to their bin's centre (what the binning claims) ...
    lo, hi = bin_bounds(bin_indices(x))
    centred, _ = np.histogram(np.clip(0.5 * (lo + hi), low, high), bins=40, range=(low, high))
    np.testing.assert_array_equal(got, centred)
    # ... and within the values whose bin straddles a column edge of the raw-value answer.
    inner = edges[1:-1]
    straddling = np.sum([np.any((a < inner) & (inner < b)) for a, b in zip(lo, hi, strict=True)])
    assert straddling < 0.05 * x.size  # 40 columns against 2^-8 relative bins: few values straddle
    assert np.abs(got - raw).sum() <= 2 * straddling


def test_sparkline_heights_are_logarithmic():
    assert sparkline(np.array([0, 1, 10, 100, 1000])) == " ▁▃▆█"
    assert sparkline(np.array([0, 0])) == "  "
    assert sparkline(np.array([5, 5])) == "██"


def test_marker_columns():
    assert marker_columns([-2.0, -1.0, 0.0, 2.95, 3.0, 4.0], -1.0, 3.0, 40) == [-1, 0, 10, 39, 39, 40]


def test_inlay_hints_sit_at_line_ends_with_the_numbers(analysis):
    path = model_file(analysis)
    text = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    hints = inlay_hints(LineIndex(analysis), path, text, 0, len(text) - 1)
    sources: dict[int, list[PointResult]] = defaultdict(list)
    for p in sorted(analysis.points, key=lambda p: p.info.order):
        if p.info.source.file == path:
            sources[p.info.source.line].append(p)
    assert [h.position.line + 1 for h in hints] == sorted(sources)
    for hint in hints:
        points = sources[hint.position.line + 1]
        assert hint.position.character == len(text[hint.position.line].rstrip("\n"))
        assert hint.kind == types.InlayHintKind.Type and hint.padding_left
        assert all(p.name in hint.tooltip for p in points)
        cumulative = [p.cumulative.sqnr_db for p in points]
        if len(points) == 1:
            a = points[0].activation
            bits = f"{'' if a.signed else 'u'}int{a.n_bits}"
            assert hint.label == f"{bits} t={g3(a.threshold)} {cumulative[0]:.1f}dB"
        else:
            assert hint.label == f"{len(points)} pts worst {min(cumulative):.1f}dB"


def test_unsigned_points_get_the_u_prefix(mobilenet):
    path = model_file(mobilenet)
    text = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    hints = {h.position.line + 1: h.label for h in inlay_hints(LineIndex(mobilenet), path, text, 0, len(text))}
    lines = [p.info.source.line for p in mobilenet.points]
    lone = [p for p in mobilenet.points if not p.activation.signed and lines.count(p.info.source.line) == 1]
    assert [p.name for p in lone] == ["stem"]  # conv-BN-ReLU6: unsigned
    assert hints[lone[0].info.source.line] == f"uint8 t={g3(lone[0].activation.threshold)} " \
                                               f"{lone[0].cumulative.sqnr_db:.1f}dB"


def test_inlay_hints_follow_the_current_text_and_range(deit):
    index = LineIndex(deit)
    path = model_file(deit)
    text = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    p = single_point(deit)
    row = p.info.source.line - 1
    edited = list(text)
    edited[row] = edited[row].rstrip("\r\n") + "  # é🙂\r\n"  # 🙂 is two UTF-16 code units
    hints = inlay_hints(index, path, edited, row, row)
    assert len(hints) == 1
    assert hints[0].position == types.Position(line=row, character=len(text[row].rstrip("\n")) + 7)
    assert inlay_hints(index, path, text[:row], 0, len(text)) == [
        h for h in inlay_hints(index, path, text, 0, row - 1)
    ]
    assert inlay_hints(index, path, text, 0, 0) == []


def test_unquantized_points_say_float(deit):
    p = single_point(deit)
    kept = dataclasses.replace(p, activation=dataclasses.replace(p.activation, quantize=False))
    loop = [q for q in deit.points if q.info.source.line == deit.point("blocks.0.norm1").info.source.line]
    floats = [dataclasses.replace(q, activation=dataclasses.replace(q.activation, quantize=False)) for q in loop]
    result = dataclasses.replace(deit, points=[kept, *floats])
    index = LineIndex(result)
    path = model_file(deit)
    text = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    labels = {h.position.line + 1: h.label for h in inlay_hints(index, path, text, 0, len(text))}
    assert labels == {p.info.source.line: "float", loop[0].info.source.line: "3 pts float"}
    assert "**float** (not quantized;" in hover_text(result, p.info.source.line)


def test_lsp_modules_do_not_import_torch():
    code = ("import quantlens.daemon.lsp.hover, quantlens.daemon.lsp.inlay_hints, quantlens.daemon.lsp.lines, sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
