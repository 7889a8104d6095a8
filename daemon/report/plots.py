"""The report's pictures: each function draws one PNG from the numbers it is given.

Figures are plain ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot,
no global state and nothing left open, so drawing is safe inside a long-running daemon.
Every input is a plain number or array, as the report's JSON section holds it
(daemon/report/payload.py bins the calibration histograms), so a saved result draws the
same pictures as a live run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quantlens.core.activations import IQR_FENCE

DPI = 100
MAX_NAMED = 40
"""With more points than this, x labels are indices into the report's point table."""
LABEL_CHARS = 32
DEGRADED = "#d62728"
HIGHLIGHT = "#ff7f0e"
NORMAL = "#1f77b4"


def point_labels(names: Sequence[str]) -> list[str]:
    """Readable x labels: names (long ones keep their specific tail), or indices when crowded."""
    if len(names) > MAX_NAMED:
        return [str(i) for i in range(len(names))]
    return [n if len(n) <= LABEL_CHARS else "…" + n[-(LABEL_CHARS - 1):] for n in names]


def error_graph(names: Sequence[str], isolated_db: Sequence[float], cumulative_db: Sequence[float],
                threshold_db: float, degraded: set[str], path: Path) -> Path:
    """XQuant's per-layer error graph: where the quantization error appears and where it builds up.

    Isolated SQNR says which point is hard to quantize by itself, cumulative SQNR what the whole
    quantized model has lost by that point; the gap between them is damage carried from upstream.
    """
    x = np.arange(len(names))
    fig = _figure(min(max(8.0, 0.2 * len(names) + 3.0), 26.0), 5.0)
    ax = fig.add_subplot()
    ax.plot(x, isolated_db, marker="o", ms=3.5, lw=1.2, label="isolated (this point alone)")
    ax.plot(x, cumulative_db, marker="s", ms=3.5, lw=1.2, label="cumulative (whole model so far)")
    ax.axhline(threshold_db, ls="--", color="0.35", lw=1.2, label=f"detection threshold {threshold_db:g} dB")
    bad = [i for i, n in enumerate(names) if n in degraded]
    if bad:
        ax.scatter(x[bad], np.asarray(cumulative_db, dtype=np.float64)[bad], s=160, facecolors="none",
                   edgecolors=DEGRADED, linewidths=1.8, label="degraded layer", zorder=3)
    _point_axis(ax, names)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Quantization error per point, in execution order (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    return _save(fig, path)


def activation_histogram(edges: np.ndarray, counts: np.ndarray, method_thresholds: dict[str, float],
                         chosen_method: str, signed: bool, shift: float, mean: float, std: float,
                         z_cuts: Sequence[tuple[float, Sequence[float]]], title: str, path: Path) -> Path:
    """The values with every error method's threshold and every candidate z-score cut on them.

    Seeing where each calibrator would clip, against where the mass is, is how one judges
    whether a threshold sacrifices the bulk for outliers or the other way round. ``z_cuts``
    holds each candidate Z with its cuts μ ± Z·σ that fall inside the data.
    """
    groups = _group_by_value(method_thresholds)
    fig = _figure(10.0, 4.6)
    ax = fig.add_subplot()
    _bars(ax, edges, counts)
    for i, (threshold, methods) in enumerate(groups.items()):
        chosen = chosen_method in methods
        label = f"{', '.join(methods)}: T = {threshold:g}" + (" (used)" if chosen else "")
        style = {"color": f"C{i % 10}", "lw": 2.2 if chosen else 1.4, "ls": "-" if chosen else "--"}
        ax.axvline(threshold - shift, label=label, **style)
        if signed:
            ax.axvline(-threshold - shift, **style)
    shades = colormaps["Purples"](np.linspace(0.45, 0.95, len(z_cuts)))
    for (z, cuts), shade in zip(z_cuts, shades, strict=True):
        for i, cut in enumerate(cuts):
            label = f"z = {z:g}: μ ± {z:g}σ = {mean:.3g} ± {z * std:.3g}" if i == 0 else None
            ax.axvline(cut, color=shade, lw=1.2, ls=":", label=label)
    if shift:
        ax.set_xlabel(f"value (thresholds drawn at T − {shift:.4g}: shift-negative correction)")
    else:
        ax.set_xlabel("value")
    ax.set_ylabel("count (log)")
    ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize=8, title="thresholds", title_fontsize=8)
    return _save(fig, path)


def z_transforms(mean: float, std: float) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Value -> z-score and back, for an axis in both units (std 0 counts as 1)."""
    scale = std if std > 0 else 1.0

    def to_z(x: Any) -> Any:
        return (np.asarray(x, dtype=np.float64) - mean) / scale

    def from_z(z: Any) -> Any:
        return mean + np.asarray(z, dtype=np.float64) * scale

    return to_z, from_z


def outlier_histogram(edges: np.ndarray, counts: np.ndarray, mu: float, sigma: float, cuts: Sequence[float],
                      share: float, z_threshold: float, z_label: str, title: str, path: Path) -> Path:
    """The tails in standard deviations: how far the outliers lie and what a z-score cut removes.

    ``cuts`` are μ ∓ Z·σ and ``share`` the fraction of values outside them.
    """
    to_z, from_z = z_transforms(mu, sigma)
    fig = _figure(10.0, 4.6)
    ax = fig.add_subplot()
    _bars(ax, edges, counts)
    for i, cut in enumerate(c for c in cuts if edges[0] <= c <= edges[-1]):
        ax.axvline(cut, color=DEGRADED, lw=1.6, ls="--",
                   label=f"{z_label}: |z| > {z_threshold:g} ({100 * share:.3g}% of values)" if i == 0 else None)
        ax.axvspan(*((edges[0], cut) if cut < mu else (cut, edges[-1])), color=DEGRADED, alpha=0.08)
    ax.axvline(mu, color="0.3", lw=1.0, label=f"mean μ = {mu:.3g}, σ = {sigma:.3g}")
    top = ax.secondary_xaxis("top", functions=(to_z, from_z))
    top.set_xlabel("z-score: (x − μ) / σ")
    ax.set_xlabel("value")
    ax.set_ylabel("count (log)")
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, path)


def iqr_boxplots(names: Sequence[str], stats: Sequence[dict[str, Any]], highlighted: set[str],
                 share: float, path: Path) -> Path:
    """One box per point, as in the DeiT outlier study: which layers carry far-out values."""
    return _save(iqr_figure(names, stats, highlighted, share), path)


def iqr_figure(names: Sequence[str], stats: Sequence[dict[str, Any]], highlighted: set[str], share: float) -> Figure:
    """Two panels: the values themselves, then each point's values in units of its own IQR.

    On one value axis a point whose values span 0.05 next to one reaching 80 collapses to a
    line (attention probabilities beside a residual stream); centred on its median and divided
    by its IQR, every box has height 1, and what is left to read is how many IQRs out each
    point's extremes lie, which is what the IQR outlier share counts.
    """
    fig = _figure(min(max(8.0, 0.2 * len(names) + 3.0), 26.0), 8.0)
    values, scaled = fig.subplots(2, 1, sharex=True, height_ratios=(1.0, 1.0))
    _boxes(values, stats, names, highlighted)
    spread = [s["q3"] - s["q1"] for s in stats if s["q3"] > s["q1"]]
    values.set_yscale("symlog", linthresh=float(np.median(spread)) if spread else 1.0, linscale=2.0)
    values.set_ylabel("value (symlog)")
    values.set_title(f"Non-zero values per point (orange: more than {100 * share:g}% beyond {IQR_FENCE:g}·IQR)")
    _boxes(scaled, [in_iqr_units(s) for s in stats], names, highlighted)
    scaled.set_yscale("symlog", linthresh=1.0 + IQR_FENCE, linscale=1.5)
    scaled.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    scaled.set_ylabel(f"(value − median) / IQR\n(linear within ±{1.0 + IQR_FENCE:g}, log beyond)")
    scaled.set_title("The same values in units of each point's own IQR: every box is 1 high, "
                     "× = how many IQRs out the extremes lie")
    _point_axis(scaled, names)
    return fig


def in_iqr_units(stats: dict[str, Any]) -> dict[str, Any]:
    """Box statistics centred on the median and divided by the IQR (by the widest reach when
    the IQR is 0, so a constant point stays a line instead of dividing by zero)."""
    med = stats["med"]
    reach = [abs(v - med) for v in (stats["whislo"], stats["whishi"], *stats["fliers"])]
    scale = stats["q3"] - stats["q1"] or max(reach, default=0.0) or 1.0
    return {"q1": (stats["q1"] - med) / scale, "med": 0.0, "q3": (stats["q3"] - med) / scale,
            "whislo": (stats["whislo"] - med) / scale, "whishi": (stats["whishi"] - med) / scale,
            "fliers": [(v - med) / scale for v in stats["fliers"]]}


def _boxes(ax: Axes, stats: Sequence[dict[str, Any]], names: Sequence[str], highlighted: set[str]) -> None:
    drawn = ax.bxp(stats, positions=range(len(names)), patch_artist=True, showfliers=True,
                   flierprops={"marker": "x", "markersize": 4, "markeredgecolor": "0.3"},
                   medianprops={"color": "black"})
    for box, name in zip(drawn["boxes"], names, strict=True):
        box.set_facecolor(HIGHLIGHT if name in highlighted else NORMAL)
        box.set_alpha(0.75)
    ax.margins(y=0.06)  # room for the fliers at the extremes
    ax.grid(axis="y", alpha=0.3)


def threshold_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], chosen_threshold: float,
                     chosen_method: str, title: str, path: Path) -> Path:
    """Each method's error against the candidate threshold, scaled to its own minimum.

    Methods measure error in different units; dividing by the minimum puts them on one axis
    and shows how flat each curve is around its choice (a flat curve means a robust choice).
    """
    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    for methods, (t, e) in _same_curves(curves):
        positive = e[e > 0]
        if not len(positive):
            continue
        scaled = e / positive.min()
        (line,) = ax.plot(t, scaled, marker=".", lw=1.3, label=", ".join(methods))
        best = int(np.argmin(np.where(e > 0, e, np.inf)))
        ax.plot(t[best], scaled[best], marker="o", ms=9, mfc="none", mec=line.get_color(), mew=1.5)
    ax.axvline(chosen_threshold, color="black", ls="--", lw=1.2,
               label=f"used: {chosen_method}, T = {chosen_threshold:g}")
    ax.set_xscale("log", base=2)
    _log_y(ax)
    ax.set_xlabel("candidate threshold T")
    ax.set_ylabel("error / its minimum (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside right upper", fontsize=8, title="method (○ = its minimum)", title_fontsize=8)
    return _save(fig, path)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _bars(ax: Axes, edges: np.ndarray, counts: np.ndarray) -> None:
    """Filled bars on a log axis; empty bins sit on the floor instead of breaking the outline."""
    positive = counts[counts > 0]
    floor = min(0.5, float(positive.min())) if len(positive) else 0.5
    ax.stairs(np.maximum(counts, floor), edges, baseline=floor, fill=True, color="0.72")
    ax.stairs(np.maximum(counts, floor), edges, baseline=floor, color="0.4", lw=0.6)
    _log_y(ax)
    ax.set_ylim(floor, max(float(counts.max()), 1.0) * 2.0)
    ax.set_xlim(edges[0], edges[-1])


def _log_y(ax: Axes) -> None:
    """Log y with plain labels (1, 10, 1000): mathtext labels cost most of a figure's drawing time."""
    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _point_axis(ax: Axes, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)), point_labels(names), rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)
    if len(names) > MAX_NAMED:
        ax.set_xlabel("point (# in the point table)")


def _group_by_value(method_thresholds: dict[str, float]) -> dict[float, list[str]]:
    """Methods that agree share one line (power-of-two thresholds often coincide)."""
    groups: dict[float, list[str]] = {}
    for method, threshold in sorted(method_thresholds.items(), key=lambda item: item[1]):
        groups.setdefault(threshold, []).append(method)
    return groups


def _same_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]]
                 ) -> list[tuple[list[str], tuple[np.ndarray, np.ndarray]]]:
    """Methods with identical curves share one line, so no line hides another.

    LP with p = 2 is MSE, and NOCLIPPING reports the MSE curve (it only chooses differently).
    """
    merged: list[tuple[list[str], tuple[np.ndarray, np.ndarray]]] = []
    for method, (thresholds, errors) in curves.items():
        t, e = np.asarray(thresholds, dtype=np.float64), np.asarray(errors, dtype=np.float64)
        same = next((m for m, (t2, e2) in merged if np.array_equal(t, t2) and np.allclose(e, e2, rtol=1e-9)), None)
        if same is None:
            merged.append(([method], (t, e)))
        else:
            same.append(method)
    return merged
