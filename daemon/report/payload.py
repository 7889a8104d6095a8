"""The report's part of the result JSON: the numbers its pictures are drawn from.

The pictures read the calibration histograms (up to 2^17 float-bits bins a point), which the
result JSON leaves out. The ``report`` section holds what is drawn instead: every point's box
statistics, each pictured point's histograms already binned on the picture's axis, and the
diagnosis settings the captions quote. A saved ``--json`` therefore renders the same report as
the live run, and the live run renders through this same payload (daemon/report/html.py reads
nothing else), so the two cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from quantlens.core.activations import IQR_FENCE
from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.distribution import Distribution
from quantlens.core.result import AnalysisResult, PointResult

MAX_POINT_PICTURES = 12
"""Per-point pictures are drawn for this many points at most, to keep the page small."""
HIST_BINS = 160
PAD = 0.03
"""Share of a histogram's range left empty on each side, so the extremes are not on the frame."""


def with_pictures(payload: dict[str, Any], result: AnalysisResult, diagnosis: DiagnosisSettings,
                  root: Path) -> dict[str, Any]:
    """``payload`` (``result.to_json()``) with the ``report`` section added.

    ``diagnosis`` must be the settings that made the findings (its thresholds are drawn), and
    ``root`` the folder the page shows paths relative to.
    """
    return {**payload, "report": report_section(payload, result, diagnosis, root)}


def report_section(payload: dict[str, Any], result: AnalysisResult, diagnosis: DiagnosisSettings,
                   root: Path) -> dict[str, Any]:
    stats = result.calibration.stats
    return {
        "root": str(root.resolve()),
        "detection_threshold_db": diagnosis.threshold_quantize_error["sqnr"] * 100.0,
        "iqr_outlier_share": diagnosis.iqr_outlier_share,
        "boxes": [box_stats(stats[p.name].distribution()) for p in result.points],
        "pictures": [point_pictures(result, result.point(name), diagnosis) for name in pictured_points(payload)],
    }


def pictured_points(payload: dict[str, Any], limit: int = MAX_POINT_PICTURES) -> list[str]:
    """The names of the points worth a picture, most telling first.

    The main point of each finding (worst finding first), then the worst by isolated SQNR, then
    the other points findings name: a finding that names every degraded layer must not crowd
    out the layer that causes the damage.
    """
    names = {p["name"] for p in payload["points"]}
    findings = payload["findings"]
    primary = [f["points"][0] for f in findings if f["points"]]
    measured = [p for p in payload["points"] if (p["metrics"]["isolated"] or {}).get("sqnr_db") is not None]
    worst = sorted(measured, key=lambda p: number(p["metrics"]["isolated"]["sqnr_db"]))
    others = [name for f in findings for name in f["points"][1:]]
    ranked = dict.fromkeys(n for n in [*primary, *(p["name"] for p in worst), *others] if n in names)
    return list(ranked)[:limit]


def point_pictures(result: AnalysisResult, p: PointResult, diagnosis: DiagnosisSettings) -> dict[str, Any]:
    """One point's pictures as numbers: its value histogram over the data and every method's
    threshold, the candidate z-score cuts inside the data, and its outlier view when it has
    outliers (a configured z_threshold, or values beyond the diagnosis's cut)."""
    a = p.activation
    dist = result.calibration.stats[p.name].distribution()
    uppers = [t - a.shift for t in a.method_thresholds.values()]
    lowers = [-t - a.shift for t in a.method_thresholds.values()] if a.signed else []
    mu, std = dist.mean, dist.std
    z_cuts = [{"z": z, "values": [c for c in (mu - z * std, mu + z * std) if dist.min <= c <= dist.max]}
              for z in diagnosis.candidate_z_thresholds]
    entry: dict[str, Any] = {"point": p.name,
                             "values": histogram(dist, min([dist.min, *lowers]), max([dist.max, *uppers])),
                             "z_cuts": z_cuts, "outliers": None}
    configured = math.isfinite(a.z_threshold)
    if configured or Context(result, diagnosis).z_max(p) > diagnosis.threshold_zscore_outlier_removal:
        z = a.z_threshold if configured else diagnosis.threshold_zscore_outlier_removal
        scale = std if std > 0 else 1.0  # as the picture's z-score axis counts it
        low, high = mu - z * scale, mu + z * scale
        entry["outliers"] = {"z": z, "configured": configured, "cuts": [low, high],
                             "share": dist.mass_outside(low, high), **histogram(dist, dist.min, dist.max)}
    return entry


def histogram(dist: Distribution, low: float, high: float, bins: int = HIST_BINS) -> dict[str, Any]:
    """Counts in equal-width bins over [low, high], padded: the JSON form :func:`edges_and_counts` reads."""
    pad = PAD * (high - low or 1.0)
    edges, counts = linear_histogram(dist, low - pad, high + pad, bins)
    return {"low": float(edges[0]), "high": float(edges[-1]), "counts": [float(c) for c in counts]}


def edges_and_counts(hist: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`histogram` back as bin edges and counts (``np.linspace`` rebuilds the same edges)."""
    counts = np.asarray(hist["counts"], dtype=np.float64)
    return np.linspace(hist["low"], hist["high"], len(counts) + 1), counts


def linear_histogram(dist: Distribution, low: float, high: float,
                     bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts in equal-width bins over [low, high]: the calibration histogram on a linear axis."""
    edges = np.linspace(low, high, bins + 1)
    below = dist.cumulative(edges)[0]
    return edges, np.diff(below)


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
    return {"q1": q1, "med": med, "q3": q3, "whislo": whislo, "whishi": whishi, "fliers": fliers}


def number(value: Any) -> float:
    """A number in the result's JSON spelling ("inf"/"-inf" strings, null for NaN) as a float."""
    return math.nan if value is None else float(value)
