"""The HTML report, written from a real analysis of the sample model, and its pictures' numbers."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from quantlens.core.config import FuncRef
from quantlens.core.diagnosis import diagnose
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.distribution import Distribution
from quantlens.core.findings import Finding, Severity
from quantlens.core.histogram import histogram_from_values
from quantlens.core.result import AnalysisResult
from quantlens.core.settings import QuantSettings
from quantlens.daemon.cli import EXIT_OK, main
from quantlens.daemon.report import plots
from quantlens.daemon.report.html import write_report
from quantlens.daemon.report.payload import (MAX_POINT_PICTURES, box_stats, linear_histogram, pictured_points,
                                             with_pictures)

from tests.core.conftest import MODELS, load_sample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ESCAPE_PROBE = "<b>probe</b> & 'quoted' \"text\""
"""A finding message that is only safe in HTML when escaped."""


@pytest.fixture(scope="session")
def analysis() -> AnalysisResult:
    from quantlens.core.torch_engine.loading import build_model
    from quantlens.core.torch_engine.pipeline import analyze_model

    sample = load_sample()
    model, sites = build_model(FuncRef(MODELS / "sample_net.py", "build"), [MODELS])
    result = analyze_model(model, lambda: sample.batches(2), QuantSettings(), [MODELS], sites=sites,
                           sensitivity=True)
    probe = Finding("probe", Severity.INFO, ESCAPE_PROBE, points=(result.points[0].name,))
    result.findings = [*diagnose(result), probe]
    return result


@pytest.fixture(scope="session")
def report(analysis: AnalysisResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(analysis, tmp_path_factory.mktemp("report"), MODELS)


def _distribution(x: np.ndarray) -> Distribution:
    x = x.astype(np.float32)
    indices, counts, sums = histogram_from_values(x)
    wide = x.astype(np.float64)
    return Distribution.from_histogram(indices, counts, sums, float(np.sum(wide * wide)), float(wide.min()),
                                       float(wide.max()))


def _heavy_tailed(seed: int = 0) -> np.ndarray:
    """A ReLU-like bulk with exact zeros, a small negative part and a few far outliers."""
    rng = np.random.default_rng(seed)
    bulk = np.maximum(rng.normal(0.2, 1.0, 20000), 0.0)
    return np.concatenate([bulk, rng.normal(-0.05, 0.02, 2000), rng.uniform(30.0, 60.0, 40)])


def test_report_is_one_offline_file(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert report.name == "index.html"
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text)
    assert "<script" not in text and "<link" not in text
    sources = re.findall(r"<img\b[^>]*\bsrc='([^']*)'", text)
    assert len(sources) == len(list(report.parent.glob("*.png")))
    embedded = {base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources
                if s.startswith("data:image/png;base64,")}
    assert embedded == {png.read_bytes() for png in report.parent.glob("*.png")}


def test_report_names_every_finding_and_point(report: Path, analysis: AnalysisResult) -> None:
    text = report.read_text(encoding="utf-8")
    assert len(analysis.findings) > 1
    for finding in analysis.findings:
        assert html.escape(finding.message) in text
        assert html.escape(finding.rule) in text
    for point in analysis.points:
        assert f"<td>{html.escape(point.name)}</td>" in text
    assert ESCAPE_PROBE not in text
    assert "20*log10(||x||/||x-q||)" in text
    assert f"{analysis.output.error.sqnr_db:.1f} dB" in text


def test_report_pictures_are_real_pngs(report: Path, analysis: AnalysisResult) -> None:
    pictured = pictured_points(analysis.to_json())
    names = {png.name for png in report.parent.glob("*.png")}
    assert {"error-graph.png", "iqr-boxplots.png"} <= names
    order = [p.name for p in analysis.points]
    for name in pictured:
        index = order.index(name)
        assert {f"p{index:03d}-histogram.png", f"p{index:03d}-curves.png"} <= names
    assert len(names) <= 2 + 3 * len(pictured)
    for png in report.parent.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert 5_000 < len(data) < 400_000
        height, width = imread(png).shape[:2]
        assert 300 <= height <= 1000 and 600 <= width <= 2700


def test_pictured_points_start_with_the_findings(analysis: AnalysisResult) -> None:
    payload = analysis.to_json()
    chosen = pictured_points(payload)
    assert len(chosen) == min(MAX_POINT_PICTURES, len(analysis.points))
    primary = list(dict.fromkeys(f.points[0] for f in analysis.findings if f.points))
    assert chosen[:len(primary)] == primary[:len(chosen)]
    by_sqnr = sorted(analysis.points, key=lambda p: p.isolated.sqnr_db)
    rest = [p.name for p in by_sqnr if p.name not in primary]
    assert chosen[len(primary):] == rest[:len(chosen) - len(primary)]
    assert len(pictured_points(payload, limit=2)) == 2


def test_overview_tolerates_points_without_metrics(analysis: AnalysisResult, tmp_path: Path) -> None:
    bare = dataclasses.replace(analysis, points=[dataclasses.replace(p, isolated=None, cumulative=None)
                                                 for p in analysis.points], findings=[])
    index = write_report(bare, tmp_path, MODELS)
    assert "No findings" in index.read_text(encoding="utf-8")
    assert pictured_points(bare.to_json()) == []


def test_report_from_a_saved_json_is_the_live_report(analysis: AnalysisResult, report: Path, tmp_path: Path) -> None:
    """The JSON alone (no statistics, no run) renders the same page, byte for byte, and the same PNGs."""
    saved = tmp_path / "result.json"
    payload = with_pictures(analysis.to_json(), analysis, DiagnosisSettings(), MODELS)
    saved.write_text(json.dumps(payload, allow_nan=False), encoding="utf-8")  # strict JSON: no NaN/Infinity
    out = tmp_path / "from-json"
    assert main(["report", "--from-json", str(saved), "--out", str(out)]) == EXIT_OK
    live = {png.name: png.read_bytes() for png in report.parent.glob("*.png")}
    rendered = {png.name: png.read_bytes() for png in out.glob("*.png")}
    assert len(live) > 2 + len(payload["report"]["pictures"])  # the overview, and 2-3 pictures a point
    assert rendered == live
    assert (out / "index.html").read_bytes() == report.read_bytes()


def test_box_stats_match_numpy_percentiles() -> None:
    x = _heavy_tailed()
    stats = box_stats(_distribution(x))
    nonzero = x[x != 0.0].astype(np.float32).astype(np.float64)
    q1, med, q3 = np.percentile(nonzero, [25, 50, 75])
    resolution = 2.0**-7  # float-bits bins are 2^-8 of their value wide
    for got, want in ((stats["q1"], q1), (stats["med"], med), (stats["q3"], q3)):
        assert got == pytest.approx(want, rel=resolution, abs=1e-6)
    iqr = q3 - q1
    assert q1 - 1.5 * iqr < nonzero.min() and q3 + 1.5 * iqr < nonzero.max()  # outliers above only
    assert stats["whislo"] == pytest.approx(nonzero.min(), rel=resolution)
    assert stats["whishi"] == pytest.approx(q3 + 1.5 * iqr, rel=resolution)
    assert list(stats["fliers"]) == pytest.approx([nonzero.max()], rel=resolution)


def test_box_stats_without_outliers_have_no_fliers() -> None:
    x = np.linspace(1.0, 2.0, 4001)
    stats = box_stats(_distribution(x))
    assert stats["whislo"] == pytest.approx(1.0) and stats["whishi"] == pytest.approx(2.0)
    assert len(stats["fliers"]) == 0


def test_z_transforms_are_inverse() -> None:
    to_z, from_z = plots.z_transforms(mean=1.5, std=0.25)
    z = np.array([-40.0, -3.0, 0.0, 1.0, 9.0])
    np.testing.assert_allclose(to_z(from_z(z)), z, atol=1e-12)
    np.testing.assert_allclose(from_z(to_z(z)), z, atol=1e-12)
    assert float(to_z(1.5)) == 0.0 and float(to_z(1.75)) == 1.0
    flat_to_z, _ = plots.z_transforms(mean=2.0, std=0.0)
    assert float(flat_to_z(3.0)) == 1.0


def test_linear_histogram_is_exact_on_power_of_two_edges() -> None:
    x = _heavy_tailed(seed=1)
    edges, counts = linear_histogram(_distribution(x), -64.0, 64.0, bins=32)
    want, _ = np.histogram(x.astype(np.float32), bins=edges)
    np.testing.assert_allclose(counts, want, atol=1e-6)
    assert counts.sum() == pytest.approx(len(x))


def _red_pixels(path: Path) -> int:
    rgb = imread(path)[..., :3]
    red = np.array([0xD6, 0x27, 0x28]) / 255.0
    return int(np.sum(np.all(np.abs(rgb - red) < 0.08, axis=-1)))


def test_error_graph_circles_only_degraded_points(tmp_path: Path) -> None:
    names = [f"blocks.{i}.mlp.fc{i % 2 + 1}" for i in range(12)]
    isolated = [40.0 - i for i in range(12)]
    cumulative = [38.0 - 3.0 * i for i in range(12)]
    plain = plots.error_graph(names, isolated, cumulative, 10.0, set(), tmp_path / "plain.png")
    marked = plots.error_graph(names, isolated, cumulative, 10.0, set(names[-2:]), tmp_path / "marked.png")
    assert _red_pixels(plain) == 0
    assert _red_pixels(marked) > 100


def test_crowded_axes_use_table_indices() -> None:
    names = [f"layer.{i}" for i in range(plots.MAX_NAMED + 1)]
    assert plots.point_labels(names) == [str(i) for i in range(len(names))]
    long = "encoder.layers.11.self_attention.out_proj"
    (label,) = plots.point_labels([long])
    assert len(label) == plots.LABEL_CHARS and long.endswith(label[1:])


def test_iqr_boxplot_keeps_a_small_range_point_visible() -> None:
    """Attention probabilities (about 0.05 wide) beside a residual stream reaching 80: on the value
    axis the small box is a line; in the IQR panel every box is one IQR high, the same height, and
    each number sits where (value - median) / IQR puts it."""
    rng = np.random.default_rng(4)
    softmax = rng.gamma(9.0, 0.006, 20000)
    residual = np.concatenate([rng.normal(0.0, 0.8, 20000), [80.0, 79.0]])
    relu = np.maximum(rng.normal(0.3, 1.0, 20000), 0.0)
    stats = [box_stats(_distribution(x)) for x in (residual, softmax, relu)]
    fig = plots.iqr_figure(["residual", "softmax", "relu"], stats, set(), 0.05)
    fig.canvas.draw()
    values, scaled = fig.axes
    value_heights = [patch.get_window_extent().height for patch in values.patches]
    assert value_heights[1] < 0.2 * value_heights[0]  # the problem: the softmax box is flat on the value axis
    heights = [patch.get_window_extent().height for patch in scaled.patches]
    assert len(heights) == 3 and min(heights) > 40.0
    assert heights == pytest.approx([heights[0]] * 3, rel=1e-6)
    for patch, s in zip(scaled.patches, stats, strict=True):
        iqr = s["q3"] - s["q1"]
        ys = patch.get_path().vertices[:, 1]
        assert ys.min() == pytest.approx((s["q1"] - s["med"]) / iqr)
        assert ys.max() == pytest.approx((s["q3"] - s["med"]) / iqr)
    far = max(y for line in scaled.lines if line.get_marker() == "x" for y in line.get_ydata())
    assert far == pytest.approx((80.0 - stats[0]["med"]) / (stats[0]["q3"] - stats[0]["q1"]), rel=1e-6)
    assert far > 50.0  # the residual's extreme lies ~75 IQRs out
