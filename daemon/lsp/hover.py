"""Hover on a layer's line: what quantization does to that layer, in markdown.

Diagnostics already say what is wrong; the hover answers the follow-up questions on the
spot: what the values look like (statistics and a text histogram with the threshold on it),
what each error method would choose, and how much signal survives (predicted, isolated and
cumulative SQNR). A line that covers several points (a loop, a Sequential, a helper) gets a
compact table instead, so the hover stays readable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from lsprotocol import types

from quantlens.core import histogram
from quantlens.core.activations import ActivationQuant
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.stats import PointStats
from quantlens.core.weights import WeightReport
from quantlens.daemon.lsp.lines import LineIndex

SPARK_COLUMNS = 40
SPARK_GLYPHS = "▁▂▃▄▅▆▇█"
CHOSEN_MARK = "┃"
OTHER_MARK = "╎"
MAX_TABLE_ROWS = 24
POINT_PICTURES = (("histogram", "histogram"), ("outliers", "outliers"), ("curves", "error curves"))
"""Per-point PNGs of the HTML report (``p{index:03d}-{kind}.png``, as daemon/report/html.py
``draw_point`` names them) and the words the hover links them with."""
MISSING = "–"


def hover(index: LineIndex, result: AnalysisResult, path: str, line: int, *,
          plots_dir: Path | None = None) -> types.Hover | None:
    """The hover for a 0-based LSP ``line`` of ``path``; None where no point is shown."""
    points = index.points_at(path, line + 1)
    if not points:
        return None
    findings = len(index.findings_at(path, line + 1))
    if len(points) == 1:
        text = point_markdown(result, points[0], findings, plots_dir)
    else:
        text = table_markdown(points, findings)
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))


def point_markdown(result: AnalysisResult, point: PointResult, findings: int, plots_dir: Path | None) -> str:
    """Everything about one point: quantizer, errors, statistics, methods, histogram, links."""
    a = point.activation
    info = point.info
    title = f"**`{_cell(point.name)}`** · {_cell(info.op)} · {info.kind}"
    if info.activation:
        title += f" · activation {info.activation}"
    bullets = [_quantizer_line(a), _error_line(point), _stats_line(a), _outlier_line(a)]
    if a.shift:
        bullets.append(f"shift-negative correction: values shifted by {fmt(a.shift)} before quantizing")
    if point.weights is not None:
        bullets.append(_weights_line(point.weights))
    parts = [title, "\n".join(f"- {b}" for b in bullets)]
    if a.method_thresholds:
        parts.append(_methods_table(a))
    stats = result.calibration.stats.get(point.name)
    if stats is not None and stats.finite_count:
        parts.append(histogram_block(stats, a))
    parts.extend(_footer(findings, _picture_links(result, point, plots_dir)))
    return "\n\n".join(parts)


def table_markdown(points: list[PointResult], findings: int) -> str:
    """One row per point for a line that creates or applies several points."""
    rows = [
        f"| `{_cell(p.name)}` | {_cell(p.info.op)} | [{fmt(p.activation.min)}, {fmt(p.activation.max)}] | "
        f"{fmt(p.activation.threshold) if p.activation.quantize else MISSING} | {bits_label(p.activation)} | "
        f"{db(_sqnr(p.isolated))} | {db(_sqnr(p.cumulative))} |"
        for p in points[:MAX_TABLE_ROWS]
    ]
    parts = [
        f"**{len(points)} quantization points on this line**",
        "\n".join(["| point | op | range | threshold | bits | isolated SQNR | cumulative SQNR |",
                   "|---|---|---:|---:|---|---:|---:|", *rows]),
    ]
    if len(points) > MAX_TABLE_ROWS:
        parts.append(f"... and {len(points) - MAX_TABLE_ROWS} more")
    parts.extend(_footer(findings, []))
    return "\n\n".join(parts)


def fmt(value: float | None) -> str:
    """Three significant digits; a missing or NaN number is a dash."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:.3g}"


def db(value: float | None) -> str:
    """A level in dB with one decimal; a missing one (no simulation ran) is a dash."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:.1f} dB"


def percent(share: float) -> str:
    return f"{fmt(100.0 * share)}%"


def bits_label(a: ActivationQuant) -> str:
    """``int8`` / ``uint8`` for a quantized activation, ``float`` for one left unquantized."""
    if not a.quantize:
        return "float"
    return f"{'' if a.signed else 'u'}int{a.n_bits}"


def farthest_z(a: ActivationQuant) -> float | None:
    """How many standard deviations the value farthest from the mean lies out (None if std is 0)."""
    if not a.std > 0.0:
        return None
    return max((a.max - a.mean) / a.std, (a.mean - a.min) / a.std)


def column_counts(bins: np.ndarray, counts: np.ndarray, low: float, high: float,
                  columns: int = SPARK_COLUMNS) -> np.ndarray:
    """Float-bits histogram counts regrouped into ``columns`` equal columns over [low, high].

    A bin goes to the column of its centre, clamped into the axis: the bins that hold the
    extreme values can have their centre just beyond [min, max]. Inf/NaN bins are left out.
    """
    bins = np.asarray(bins)
    counts = np.asarray(counts, dtype=np.float64)
    finite = ~histogram.is_nonfinite(bins)
    lo, hi = histogram.bin_bounds(bins[finite])
    centre = np.clip(0.5 * (lo + hi), low, high)
    column = np.clip(np.floor(_position(centre, low, high, columns)), 0, columns - 1).astype(np.int64)
    return np.bincount(column, weights=counts[finite], minlength=columns)


def sparkline(counts: np.ndarray) -> str:
    """One glyph per column, height on a log scale so a tail of a few values stays visible."""
    counts = np.asarray(counts, dtype=np.float64)
    top = math.log1p(float(counts.max())) if counts.size and counts.max() > 0 else 1.0
    glyphs = []
    for c in counts:
        if c <= 0:
            glyphs.append(" ")
        else:
            level = math.ceil(len(SPARK_GLYPHS) * math.log1p(c) / top)
            glyphs.append(SPARK_GLYPHS[min(max(level, 1), len(SPARK_GLYPHS)) - 1])
    return "".join(glyphs)


def marker_columns(values: list[float], low: float, high: float, columns: int = SPARK_COLUMNS) -> list[int]:
    """Column of each value on the axis: -1 below it, ``columns`` above it."""
    out = []
    for v in values:
        if v < low:
            out.append(-1)
        elif v > high:
            out.append(columns)
        else:
            out.append(min(int(math.floor(_position(v, low, high, columns))), columns - 1))
    return out


def histogram_block(stats: PointStats, a: ActivationQuant, columns: int = SPARK_COLUMNS) -> str:
    """The sparkline, the thresholds under it and the axis ends, as a monospace block.

    One blank column on each side carries the markers of thresholds that lie beyond the data,
    which is common: a power-of-two threshold is rarely the maximum itself.
    """
    low, high = float(stats.min), float(stats.max)
    spark = " " + sparkline(column_counts(stats.bins, stats.counts.sum(0), low, high, columns)) + " "
    marks = [" "] * (columns + 2)
    chosen = _threshold_values(a.threshold, a)
    others = sorted({t for t in a.method_thresholds.values() if t != a.threshold})
    for t in others:
        for col in marker_columns(_threshold_values(t, a), low, high, columns):
            marks[col + 1] = OTHER_MARK
    for col in marker_columns(chosen, low, high, columns):
        marks[col + 1] = CHOSEN_MARK
    left, right = fmt(low), fmt(high)
    axis = " " + left + " " * max(1, columns - len(left) - len(right)) + right
    sign = "±" if a.signed else ""
    legend = [f"{CHOSEN_MARK} {sign}{fmt(a.threshold)} ({a.error_method}, used)"]
    legend += [f"{OTHER_MARK} {sign}{fmt(t)} ({', '.join(_methods_with(a, t))})" for t in others]
    return "\n".join([
        "```text", spark, "".join(marks).rstrip(), axis, "```",
        " · ".join(legend) + " · log-scale counts; a mark in an outer column lies beyond the data",
    ])


def _position(values: np.ndarray | float, low: float, high: float, columns: int) -> np.ndarray | float:
    span = high - low if high > low else 1.0
    return (values - low) / span * columns


def _threshold_values(threshold: float, a: ActivationQuant) -> list[float]:
    """Where a threshold cuts the value axis: ±t, or t alone unsigned, moved back by the shift."""
    upper = threshold - a.shift
    return [-threshold - a.shift, upper] if a.signed else [upper]


def _methods_with(a: ActivationQuant, threshold: float) -> list[str]:
    return [m for m, t in a.method_thresholds.items() if t == threshold]


def _quantizer_line(a: ActivationQuant) -> str:
    sign = "signed" if a.signed else "unsigned"
    z = f" · z_threshold {fmt(a.z_threshold)}" if math.isfinite(a.z_threshold) else ""
    numbers = f"threshold **{fmt(a.threshold)}** ({a.error_method}){z} · predicted SQNR **{db(a.predicted_sqnr_db)}**"
    if not a.quantize:
        return f"**float** (not quantized; as int{a.n_bits} {sign}: {numbers})"
    return f"**{bits_label(a)}** {sign} · {numbers}"


def _error_line(point: PointResult) -> str:
    return (f"isolated SQNR **{db(_sqnr(point.isolated))}** · "
            f"cumulative SQNR **{db(_sqnr(point.cumulative))}**")


def _stats_line(a: ActivationQuant) -> str:
    return (f"range [{fmt(a.min)}, {fmt(a.max)}] · mean {fmt(a.mean)} · std {fmt(a.std)} · "
            f"{percent(a.negative_fraction)} negative")


def _outlier_line(a: ActivationQuant) -> str:
    z = farthest_z(a)
    far = MISSING if z is None else f"{fmt(z)}σ"
    return f"farthest value {far} from the mean · {percent(a.iqr_outlier_fraction)} IQR outliers"


def _weights_line(w: WeightReport) -> str:
    worst = f" · worst channel {db(w.worst_channel_sqnr_db)}" if w.worst_channel_sqnr_db is not None else ""
    scope = "per channel" if w.per_channel else "per tensor"
    return f"weights: int{w.n_bits} {scope} · SQNR {db(w.sqnr_db)}{worst}"


def _methods_table(a: ActivationQuant) -> str:
    rows = []
    for method, threshold in a.method_thresholds.items():
        used = method == a.error_method
        name = f"**{method}** (used)" if used else method
        rows.append(f"| {name} | {fmt(threshold)} | {db(a.method_sqnr_db.get(method))} |")
    return "\n".join(["| error method | threshold | predicted SQNR |", "|---|---:|---:|", *rows])


def _footer(findings: int, links: list[str]) -> list[str]:
    parts = []
    if findings:
        parts.append(f"{findings} finding{'s' if findings > 1 else ''} on this line")
    if links:
        parts.append("plots: " + " · ".join(links))
    return parts


def _picture_links(result: AnalysisResult, point: PointResult, plots_dir: Path | None) -> list[str]:
    """Links to the report's PNGs of this point that exist (only some points get pictures)."""
    if plots_dir is None:
        return []
    number = result.points.index(point)
    files = [(plots_dir / f"p{number:03d}-{kind}.png", words) for kind, words in POINT_PICTURES]
    files.append((plots_dir / "index.html", "report"))
    return [f"[{words}]({file.resolve().as_uri()})" for file, words in files if file.is_file()]


def _sqnr(sums: ErrorSums | None) -> float | None:
    return None if sums is None else sums.sqnr_db


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell or a code span."""
    return text.replace("|", "\\|").replace("`", "'")
