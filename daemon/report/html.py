"""The HTML report: summary, findings, per-point table and pictures on one page.

The PNGs are written next to ``index.html`` and also embedded as data URIs, with inline CSS
and no scripts, so the page alone can be attached to a CI run or mailed and still opens
offline. Every piece of text from the model or the user is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.findings import Finding
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.daemon.report import plots
from quantlens.daemon.text_report import HEADER, RIGHT, point_row, toml_value, relative

MAX_POINT_PICTURES = 12
"""Per-point pictures are drawn for this many points at most, to keep the page small."""
SQNR_DEFINITION = "SQNR in dB: 20*log10(||x||/||x-q||)"


@dataclass(frozen=True)
class Picture:
    """A written PNG and the sentence that tells the reader what to look for in it."""

    path: Path
    caption: str


def write_report(result: AnalysisResult, out: Path, root: Path,
                 diagnosis: DiagnosisSettings | None = None) -> Path:
    """Write ``out/index.html`` and its PNGs; ``diagnosis`` should be the one that made the findings."""
    diagnosis = diagnosis or DiagnosisSettings()
    out.mkdir(parents=True, exist_ok=True)
    overview = draw_overview(result, diagnosis, out)
    points = [(p, draw_point(result, p, diagnosis, out)) for p in pictured_points(result)]
    page = "\n".join([
        _HEAD,
        "<h1>quantlens report</h1>",
        _summary(result),
        _findings(result.findings, root, {p.name: i for i, p in enumerate(result.points)}),
        "<h2>Overview</h2>",
        *(_figure(pic) for pic in overview),
        _table(result, root, _degraded(result.findings)),
        _point_sections(points, root),
        "</body></html>",
    ])
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def pictured_points(result: AnalysisResult, limit: int = MAX_POINT_PICTURES) -> list[PointResult]:
    """The points worth a picture, most telling first.

    The main point of each finding (worst finding first), then the worst by isolated SQNR, then
    the other points findings name: a finding that names every degraded layer must not crowd
    out the layer that causes the damage.
    """
    by_name = {p.name: p for p in result.points}
    primary = [f.points[0] for f in result.findings if f.points]
    worst = sorted((p for p in result.points if p.isolated is not None), key=lambda p: p.isolated.sqnr_db)
    others = [name for f in result.findings for name in f.points[1:]]
    ranked = dict.fromkeys(n for n in [*primary, *(p.name for p in worst), *others] if n in by_name)
    return [by_name[name] for name in list(ranked)[:limit]]


def draw_overview(result: AnalysisResult, diagnosis: DiagnosisSettings, out: Path) -> list[Picture]:
    """The whole-model pictures: the per-point error graph and the per-point boxplots."""
    names = [p.name for p in result.points]
    threshold_db = diagnosis.threshold_quantize_error["sqnr"] * 100.0
    graph = plots.error_graph(
        names,
        [_sqnr(p.isolated) for p in result.points],
        [_sqnr(p.cumulative) for p in result.points],
        threshold_db, _degraded(result.findings), out / "error-graph.png",
    )
    stats = result.calibration.stats
    boxes = plots.iqr_boxplots(
        names, [plots.box_stats(stats[name].distribution()) for name in names],
        {p.name for p in result.points if p.activation.iqr_outlier_fraction > diagnosis.iqr_outlier_share},
        diagnosis.iqr_outlier_share, out / "iqr-boxplots.png",
    )
    return [
        Picture(graph, f"Per-point error (as XQuant draws it). Red circles: degraded layers (cumulative score under "
                       f"the detection threshold, {threshold_db:g} dB for SQNR). {SQNR_DEFINITION}."),
        Picture(boxes, "Range of each point's non-zero values (IQR view of the DeiT outlier study); orange boxes have "
                       f"more than {100 * diagnosis.iqr_outlier_share:g}% of values beyond 1.5·IQR."),
    ]


def draw_point(result: AnalysisResult, p: PointResult, diagnosis: DiagnosisSettings, out: Path) -> list[Picture]:
    """One point's histogram with thresholds, its outlier view when it has outliers, its error curves."""
    a = p.activation
    index = result.points.index(p)
    dist = result.calibration.stats[p.name].distribution()
    pictures = [Picture(
        plots.activation_histogram(dist, a.method_thresholds, a.error_method, a.signed, a.shift,
                                   diagnosis.candidate_z_thresholds, f"{p.name}: values and thresholds",
                                   out / f"p{index:03d}-histogram.png"),
        "Histogram of the calibration values with the threshold each error method chooses and the z-score "
        "cuts t(Z) = μ ± Z·σ for the candidate Z that fall inside the data.",
    )]
    configured = math.isfinite(a.z_threshold)
    if configured or Context(result, diagnosis).z_max(p) > diagnosis.threshold_zscore_outlier_removal:
        z = a.z_threshold if configured else diagnosis.threshold_zscore_outlier_removal
        label = "z_threshold" if configured else "outlier cut of the diagnosis"
        pictures.append(Picture(
            plots.outlier_histogram(dist, z, label, f"{p.name}: outliers in standard deviations",
                                    out / f"p{index:03d}-outliers.png"),
            "The same values with a z-score axis on top: how many standard deviations the outliers lie out, "
            f"and the share beyond |z| = {z:g}.",
        ))
    if a.curves:
        pictures.append(Picture(
            plots.threshold_curves(a.curves, a.threshold, a.error_method, f"{p.name}: error vs threshold",
                                   out / f"p{index:03d}-curves.png"),
            "Each error method's error over the candidate thresholds, divided by its own minimum: a flat "
            "valley is a robust choice, a sharp one is sensitive to the calibration data.",
        ))
    return pictures


def _sqnr(sums: ErrorSums | None) -> float:
    """A missing metric is NaN: the graph's line has a gap there instead of a made-up point."""
    return math.nan if sums is None else sums.sqnr_db


def _degraded(findings: list[Finding]) -> set[str]:
    """The degraded layers as the diagnosis judged them, so the report never disagrees with it."""
    return {name for f in findings if f.rule == "degraded-layer" for name in f.points}


def _summary(result: AnalysisResult) -> str:
    out = result.output
    cal = result.calibration
    rows = [
        ("model", result.model or "-"),
        ("data", result.data or "-"),
        ("config", result.config_file or "-"),
        ("calibration", f"{cal.num_samples} samples in {cal.num_batches} batches ({cal.input_signature})"),
        ("points", str(len(result.points))),
        ("output SQNR", f"{out.error.sqnr_db:.1f} dB"),
        ("output cosine", f"{out.error.cosine:.5f}"),
        ("output MSE", f"{out.error.mse:.4g}"),
        ("top-1 agreement", "-" if out.top1_agreement is None else f"{100 * out.top1_agreement:.1f}%"),
        *((f"validation {key}", f"float {_text(out.float_eval.get(key))} → quantized {_text(out.quant_eval.get(key))}")
          for key in sorted(set(out.float_eval) | set(out.quant_eval))),
        *((f"output metric {key}", _text(value)) for key, value in out.custom.items()),
        *((f"{s['k']} worst point(s) at 16 bits",
           f"output SQNR {s['output_sqnr_db']:.1f} dB ({', '.join(s['points'])})") for s in result.sensitivity),
    ]
    settings = ", ".join(f"{key} = {_text(value)}" for key, value in result.settings.to_json().items())
    problems = "".join(f"<li>{_e(str(problem))}</li>" for problem in result.problems)
    return (
        "<h2>Summary</h2><table class='kv'>"
        + "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in rows)
        + f"<tr><th>settings</th><td><code>{_e(settings)}</code></td></tr></table>"
        + f"<p class='note'>{_e(SQNR_DEFINITION)}. Isolated: this point's own quantization applied to float inputs; "
          "cumulative: the fully quantized model against the float model at this point. 200 dB means exact.</p>"
        + (f"<h3>Problems</h3><ul>{problems}</ul>" if problems else "")
    )


def _findings(findings: list[Finding], root: Path, rows: dict[str, int]) -> str:
    if not findings:
        return "<h2>Findings</h2><p>No findings.</p>"
    return f"<h2>Findings ({len(findings)})</h2>" + "".join(_finding(f, root, rows) for f in findings)


def _finding(f: Finding, root: Path, rows: dict[str, int]) -> str:
    """One finding; its points link to their rows in the point table."""
    parts = [
        f"<div class='finding {f.severity.value}'>",
        f"<p><span class='sev'>{_e(f.severity.value)}</span> <code>{_e(f.rule)}</code> {_e(f.message)}</p>",
        _field("at", ", ".join(relative(loc, root) for loc in f.locations) or "-"),
    ]
    if f.related:
        parts.append(_field("related", ", ".join(relative(loc, root) for loc in f.related)))
    if f.points:
        links = (f"<a href='#point-{rows[name]}'>{_e(name)}</a>" if name in rows else _e(name) for name in f.points)
        parts.append(f"<p><b>points</b> {', '.join(links)}</p>")
    if f.evidence:
        rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(_text(value))}</td></tr>" for key, value in f.evidence.items())
        parts.append(f"<table class='kv evidence'>{rows}</table>")
    rec = f.recommendation
    if rec is not None:
        parts.append(_field("fix", rec.explanation))
        if rec.config:
            config = "\n".join(f"{key} = {toml_value(value)}" for key, value in rec.config.items())
            parts.append(f"<p><b>config</b> <code>[tool.quantlens]</code></p><pre>{_e(config)}</pre>")
        if rec.mct:
            parts.append(f"<p><b>MCT</b></p><pre>{_e(rec.mct)}</pre>")
    if f.predicted:
        parts.append(_field("predicted", f.predicted))
    return "".join(parts) + "</div>"


def _table(result: AnalysisResult, root: Path, degraded: set[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", *HEADER])
    rows = []
    for i, p in enumerate(result.points):
        cells = "".join(f"<td class='num'>{_e(c)}</td>" if j in RIGHT else f"<td>{_e(c)}</td>"
                        for j, c in enumerate(point_row(p, root)))
        marked = " class='degraded'" if p.name in degraded else ""
        rows.append(f"<tr id='point-{i}'{marked}><td class='num'>{i}</td>{cells}</tr>")
    return (f"<h2>Points ({len(result.points)}, execution order)</h2>"
            f"<p class='note'>{_e(SQNR_DEFINITION)}; red rows are degraded layers.</p>"
            f"<table class='points'><tr>{head}</tr>{''.join(rows)}</table>")


def _point_sections(points: list[tuple[PointResult, list[Picture]]], root: Path) -> str:
    if not points:
        return ""
    sections = ["<h2>Points in detail</h2>"]
    for p, pictures in points:
        a = p.activation
        sections.append(
            f"<h3>{_e(p.name)}</h3><p class='note'>{_e(p.info.op)} at {_e(relative(p.info.source, root))}; "
            f"threshold {a.threshold:g} ({_e(a.error_method)}, {'signed' if a.signed else 'unsigned'}, "
            f"{a.n_bits} bits), predicted activation SQNR {a.predicted_sqnr_db:.1f} dB</p>"
        )
        sections.extend(_figure(pic) for pic in pictures)
    return "\n".join(sections)


def _figure(picture: Picture) -> str:
    data = base64.b64encode(picture.path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(picture.path.name)}'>"
            f"<figcaption>{_e(picture.caption)}</figcaption></figure>")


def _field(name: str, value: str) -> str:
    return f"<p><b>{_e(name)}</b> {_e(value)}</p>"


def _text(value: Any) -> str:
    """Evidence and settings as short text: floats to 4 significant digits, containers inline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    return str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>quantlens report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
code, pre { font: 12.5px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { background: #f6f8fa; padding: .6em .8em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: left; vertical-align: top; }
table.kv th { background: #f6f8fa; white-space: nowrap; }
table.evidence { font-size: 12.5px; } table.evidence td { word-break: break-word; }
table.points { font-size: 12.5px; } table.points th { background: #f6f8fa; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.degraded td { background: #fdecea; }
.note { color: #555; }
.finding { border-left: 5px solid #999; background: #fafafa; margin: 1em 0; padding: .3em 1em; }
.finding.error { border-color: #d62728; } .finding.warning { border-color: #ff9800; }
.finding.info { border-color: #1f77b4; }
.sev { font-weight: 700; text-transform: uppercase; font-size: 12px; }
.error .sev { color: #d62728; } .warning .sev { color: #c77700; } .info .sev { color: #1f77b4; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
</style></head><body>"""
