"""The report's pictures: each function draws one PNG from the numbers it is given.

Figures are plain ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot,
no global state and nothing left open, so drawing is safe inside a long-running daemon.
Histograms are redrawn from the calibration :class:`Distribution` (its float-bits bins
regrouped into equal-width bins on a linear axis), never from kept raw values.
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
from quantlens.core.distribution import Distribution

DPI = 100
MAX_NAMED = 40
"""With more points than this, x labels are indices into the report's point table."""
LABEL_CHARS = 32
HIST_BINS = 160
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


def linear_histogram(dist: Distribution, low: float, high: float,
                     bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts in equal-width bins over [low, high]: the calibration histogram on a linear axis."""
    edges = np.linspace(low, high, bins + 1)
    below = dist.cumulative(edges)[0]
    return edges, np.diff(below)


def activation_histogram(dist: Distribution, method_thresholds: dict[str, float], chosen_method: str,
                         signed: bool, shift: float, z_values: Sequence[float], title: str, path: Path) -> Path:
    """The values with every error method's threshold and every candidate z-score cut on them.

    Seeing where each calibrator would clip, against where the mass is, is how one judges
    whether a threshold sacrifices the bulk for outliers or the other way round.
    """
    groups = _group_by_value(method_thresholds)
    uppers = [t - shift for t in groups]
    lowers = [-t - shift for t in groups] if signed else []
    low = min(dist.min, *lowers) if lowers else dist.min
    high = max(dist.max, *uppers)
    pad = 0.03 * (high - low or 1.0)
    edges, counts = linear_histogram(dist, low - pad, high + pad)
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
    mu, sigma = dist.mean, dist.std
    shades = colormaps["Purples"](np.linspace(0.45, 0.95, len(z_values)))
    for z, shade in zip(z_values, shades, strict=True):
        cuts = [c for c in (mu - z * sigma, mu + z * sigma) if dist.min <= c <= dist.max]
        for i, cut in enumerate(cuts):
            label = f"z = {z:g}: μ ± {z:g}σ = {mu:.3g} ± {z * sigma:.3g}" if i == 0 else None
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


def outlier_histogram(dist: Distribution, z_threshold: float, z_label: str, title: str, path: Path) -> Path:
    """The tails in standard deviations: how far the outliers lie and what a z-score cut removes."""
    mu, sigma = dist.mean, dist.std
    to_z, from_z = z_transforms(mu, sigma)
    pad = 0.03 * (dist.max - dist.min or 1.0)
    edges, counts = linear_histogram(dist, dist.min - pad, dist.max + pad)
    fig = _figure(10.0, 4.6)
    ax = fig.add_subplot()
    _bars(ax, edges, counts)
    lo_cut, hi_cut = float(from_z(-z_threshold)), float(from_z(z_threshold))
    share = dist.mass_outside(lo_cut, hi_cut)
    for i, cut in enumerate(c for c in (lo_cut, hi_cut) if edges[0] <= c <= edges[-1]):
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


def box_stats(dist: Distribution) -> dict[str, Any]:
    """``Axes.bxp`` statistics of the non-zero values, from the histogram alone.

    Exact zeros (ReLU clipping) are left out as in the IQR outlier share; whiskers sit at
    1.5 * IQR, clipped to the data, and the extremes beyond them are drawn as the fliers.
    """
    nonzero = dist.without_zeros()
    q1, med, q3 = (float(v) for v in nonzero.quantile(np.array([0.25, 0.5, 0.75])))
    lowest, highest = max(nonzero.min, dist.min), min(nonzero.max, dist.max)
    iqr = q3 - q1
    whislo, whishi = max(q1 - IQR_FENCE * iqr, lowest), min(q3 + IQR_FENCE * iqr, highest)
    fliers = [v for v in (lowest, highest) if v < whislo or v > whishi]
    return {"q1": q1, "med": med, "q3": q3, "whislo": whislo, "whishi": whishi,
            "fliers": np.array(fliers)}


def iqr_boxplots(names: Sequence[str], stats: Sequence[dict[str, Any]], highlighted: set[str],
                 share: float, path: Path) -> Path:
    """One box per point, as in the DeiT outlier study: which layers carry far-out values."""
    fig = _figure(min(max(8.0, 0.2 * len(names) + 3.0), 26.0), 5.0)
    ax = fig.add_subplot()
    drawn = ax.bxp(stats, positions=range(len(names)), patch_artist=True, showfliers=True,
                   flierprops={"marker": "x", "markersize": 4, "markeredgecolor": "0.3"},
                   medianprops={"color": "black"})
    for box, name in zip(drawn["boxes"], names, strict=True):
        box.set_facecolor(HIGHLIGHT if name in highlighted else NORMAL)
        box.set_alpha(0.75)
    _point_axis(ax, names)
    spread = [s["q3"] - s["q1"] for s in stats if s["q3"] > s["q1"]]
    ax.set_yscale("symlog", linthresh=float(np.median(spread)) if spread else 1.0, linscale=2.0)
    ax.margins(y=0.06)  # room for the fliers at the extremes
    ax.set_ylabel("value (symlog)")
    ax.set_title(f"Non-zero values per point (orange: more than {100 * share:g}% beyond {IQR_FENCE:g}·IQR)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


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
