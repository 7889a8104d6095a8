"""The HTML report: summary, findings, per-point table and pictures on one page.

The PNGs are written next to ``index.html`` and also embedded as data URIs, with inline CSS
and no scripts, so the page alone can be attached to a CI run or mailed and still opens
offline. Every piece of text from the model or the user is escaped.

The page reads the result payload alone (``result.to_json()`` plus the ``report`` section of
daemon/report/payload.py), as the CI formats do: ``quantlens report --from-json FILE`` renders
a saved ``--json`` through the same code as a live run.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.errors import Location, Problem
from quantlens.core.findings import Finding
from quantlens.core.result import AnalysisResult
from quantlens.daemon.report import plots
from quantlens.daemon.report.payload import edges_and_counts, number, with_pictures
from quantlens.daemon.text_report import HEADER, RIGHT, relative, sampled, toml_value

SQNR_DEFINITION = "SQNR in dB: 20*log10(||x||/||x-q||)"


@dataclass(frozen=True)
class Picture:
    """A written PNG and the sentence that tells the reader what to look for in it."""

    path: Path
    caption: str


def write_report(result: AnalysisResult, out: Path, root: Path,
                 diagnosis: DiagnosisSettings | None = None) -> Path:
    """The live run's report, rendered from the payload a saved ``--json`` holds, so the two
    are the same page; ``diagnosis`` should be the one that made the findings."""
    payload = with_pictures(result.to_json(), result, diagnosis or DiagnosisSettings(), root)
    return render_report(payload, out)


def render_report(payload: dict[str, Any], out: Path) -> Path:
    """Write ``out/index.html`` and its PNGs from a result payload with its ``report`` section."""
    section = payload["report"]
    root = Path(section["root"])
    out.mkdir(parents=True, exist_ok=True)
    overview = draw_overview(payload, out)
    index_of = {p["name"]: i for i, p in enumerate(payload["points"])}
    points = [(index_of[entry["point"]], entry) for entry in section["pictures"]]
    findings = [Finding.from_json(f) for f in payload["findings"]]
    page = "\n".join([
        _HEAD,
        "<h1>quantlens report</h1>",
        _summary(payload),
        _findings(findings, root, index_of),
        "<h2>Overview</h2>",
        *(_figure(pic) for pic in overview),
        _table(payload["points"], root, _degraded(findings)),
        _point_sections([(payload["points"][i], draw_point(payload["points"][i], entry, i, out))
                         for i, entry in points], root),
        "</body></html>",
    ])
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def draw_overview(payload: dict[str, Any], out: Path) -> list[Picture]:
    """The whole-model pictures: the per-point error graph and the per-point boxplots."""
    section = payload["report"]
    points = payload["points"]
    names = [p["name"] for p in points]
    threshold_db = section["detection_threshold_db"]
    share = section["iqr_outlier_share"]
    graph = plots.error_graph(
        names, [_sqnr(p, "isolated") for p in points], [_sqnr(p, "cumulative") for p in points],
        threshold_db, _degraded([Finding.from_json(f) for f in payload["findings"]]), out / "error-graph.png",
    )
    boxes = plots.iqr_boxplots(
        names, section["boxes"], {p["name"] for p in points if p["activation"]["iqr_outlier_fraction"] > share},
        share, out / "iqr-boxplots.png",
    )
    return [
        Picture(graph, f"Per-point error (as XQuant draws it). Red circles: degraded layers (cumulative score under "
                       f"the detection threshold, {threshold_db:g} dB for SQNR). {SQNR_DEFINITION}."),
        Picture(boxes, "Range of each point's non-zero values (IQR view of the DeiT outlier study); orange boxes have "
                       f"more than {100 * share:g}% of values beyond 1.5·IQR. Top: the values (a point with a "
                       "small range next to large ones is a flat box here); bottom: each point's values minus its "
                       "median, divided by its IQR, so every box shows and the extremes read in IQRs."),
    ]


def draw_point(point: dict[str, Any], entry: dict[str, Any], index: int, out: Path) -> list[Picture]:
    """One point's histogram with thresholds, its outlier view when it has outliers, its error curves.

    ``point`` is the point's JSON, ``entry`` its picture numbers (daemon/report/payload.py
    ``point_pictures``), ``index`` its place in execution order (the PNG names use it).
    """
    a = point["activation"]
    name = point["name"]
    edges, counts = edges_and_counts(entry["values"])
    z_cuts = [(cut["z"], cut["values"]) for cut in entry["z_cuts"]]
    pictures = [Picture(
        plots.activation_histogram(edges, counts, a["method_thresholds"], a["error_method"], a["signed"], a["shift"],
                                   a["mean"], a["std"], z_cuts, f"{name}: values and thresholds",
                                   out / f"p{index:03d}-histogram.png"),
        "Histogram of the calibration values with the threshold each error method chooses and the z-score "
        "cuts t(Z) = μ ± Z·σ for the candidate Z that fall inside the data.",
    )]
    outliers = entry["outliers"]
    if outliers is not None:
        z = outliers["z"]
        label = "z_threshold" if outliers["configured"] else "outlier cut of the diagnosis"
        edges, counts = edges_and_counts(outliers)
        pictures.append(Picture(
            plots.outlier_histogram(edges, counts, a["mean"], a["std"], outliers["cuts"], outliers["share"], z, label,
                                    f"{name}: outliers in standard deviations", out / f"p{index:03d}-outliers.png"),
            "The same values with a z-score axis on top: how many standard deviations the outliers lie out, "
            f"and the share beyond |z| = {z:g}.",
        ))
    curves = {method: ([number(t) for t in c["thresholds"]], [number(e) for e in c["errors"]])
              for method, c in a.get("curves", {}).items()}
    if curves:
        pictures.append(Picture(
            plots.threshold_curves(curves, a["threshold"], a["error_method"], f"{name}: error vs threshold",
                                   out / f"p{index:03d}-curves.png"),
            "Each error method's error over the candidate thresholds, divided by its own minimum: a flat "
            "valley is a robust choice, a sharp one is sensitive to the calibration data.",
        ))
    return pictures


def _sqnr(point: dict[str, Any], kind: str) -> float:
    """A missing metric is NaN: the graph's line has a gap there instead of a made-up point."""
    sums = point["metrics"][kind]
    return math.nan if sums is None else number(sums["sqnr_db"])


def _degraded(findings: list[Finding]) -> set[str]:
    """The degraded layers as the diagnosis judged them, so the report never disagrees with it."""
    return {name for f in findings if f.rule == "degraded-layer" for name in f.points}


def _summary(payload: dict[str, Any]) -> str:
    out = payload["output"]
    cal = payload["calibration"]
    float_eval, quant_eval = out["float_evaluation"], out["quantized_evaluation"]
    top1 = out["top1_agreement"]
    rows = [
        ("model", payload["model"] or "-"),
        ("data", payload["data"] or "-"),
        ("config", payload["config_file"] or "-"),
        ("calibration", f"{cal['num_samples']} samples in {cal['num_batches']} batches ({cal['input_signature']})"
                        + sampled(cal.get("simulation_batches", 0), cal["num_batches"])),
        ("points", str(len(payload["points"]))),
        ("output SQNR", f"{number(out['sqnr_db']):.1f} dB"),
        ("output cosine", f"{number(out['cosine']):.5f}"),
        ("output MSE", f"{number(out['mse']):.4g}"),
        ("top-1 agreement", "-" if top1 is None else f"{100 * top1:.1f}%"),
        *((f"validation {key}", f"float {_text(float_eval.get(key))} → quantized {_text(quant_eval.get(key))}")
          for key in sorted(set(float_eval) | set(quant_eval))),
        *((f"output metric {key}", _text(value)) for key, value in out["custom"].items()),
        *((f"{s['k']} worst point(s) at 16 bits",
           f"output SQNR {number(s['output_sqnr_db']):.1f} dB ({', '.join(s['points'])})")
          for s in payload["sensitivity"]),
    ]
    settings = ", ".join(f"{key} = {_text(value)}" for key, value in payload["settings"].items())
    problems = "".join(f"<li>{_e(str(Problem.from_json(problem)))}</li>" for problem in payload["problems"])
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
        table = "".join(f"<tr><th>{_e(key)}</th><td>{_e(_text(value))}</td></tr>" for key, value in f.evidence.items())
        parts.append(f"<table class='kv evidence'>{table}</table>")
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


def _table(points: list[dict[str, Any]], root: Path, degraded: set[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", *HEADER])
    rows = []
    for i, p in enumerate(points):
        cells = "".join(f"<td class='num'>{_e(c)}</td>" if j in RIGHT else f"<td>{_e(c)}</td>"
                        for j, c in enumerate(_point_row(p, root)))
        marked = " class='degraded'" if p["name"] in degraded else ""
        rows.append(f"<tr id='point-{i}'{marked}><td class='num'>{i}</td>{cells}</tr>")
    return (f"<h2>Points ({len(points)}, execution order)</h2>"
            f"<p class='note'>{_e(SQNR_DEFINITION)}; red rows are degraded layers.</p>"
            f"<table class='points'><tr>{head}</tr>{''.join(rows)}</table>")


def _point_row(p: dict[str, Any], root: Path) -> list[str]:
    """The cells of ``HEADER`` for one point, as ``quantlens check`` prints them."""
    a = p["activation"]
    return [
        p["name"],
        p["op"],
        relative(Location.from_json(p["source"]), root),
        f"[{number(a['min']):.3g}, {number(a['max']):.3g}]",
        f"{number(a['threshold']):g}" if a["quantize"] else "float",
        a["error_method"],
        "s" if a["signed"] else "u",
        _db(_sqnr(p, "isolated")),
        _db(_sqnr(p, "cumulative")),
        f"{100 * a['iqr_outlier_fraction']:.1f}",
    ]


def _db(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _point_sections(points: list[tuple[dict[str, Any], list[Picture]]], root: Path) -> str:
    if not points:
        return ""
    sections = ["<h2>Points in detail</h2>"]
    for p, pictures in points:
        a = p["activation"]
        sections.append(
            f"<h3>{_e(p['name'])}</h3><p class='note'>{_e(p['op'])} at "
            f"{_e(relative(Location.from_json(p['source']), root))}; threshold {number(a['threshold']):g} "
            f"({_e(a['error_method'])}, {'signed' if a['signed'] else 'unsigned'}, {a['n_bits']} bits), "
            f"predicted activation SQNR {number(a['predicted_sqnr_db']):.1f} dB</p>"
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
