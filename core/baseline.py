"""Baselines: a run's per-point SQNR kept in a file, so CI fails when a change makes it worse.

A baseline is written from the result JSON (not from live objects), so one can be made from
any saved ``--json`` file; its format is described in docs/result-format.md. Only SQNR can
regress: it is in dB, so one tolerance means the same thing at every point, and a drop is
the same change whatever the layer's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantlens.core.errors import Location, Problem, QuantlensError, fail
from quantlens.core.findings import Finding, Recommendation, Severity

FORMAT = "quantlens.baseline/1"
RULE = "baseline-regression"
OUTPUT = "<output>"
"""The name a regression of the model output carries in place of a point name."""
OUTPUT_KEYS = ("sqnr_db", "cosine", "top1_agreement")
POINT_METRICS = ("isolated_sqnr_db", "cumulative_sqnr_db")
"""The point values that can regress; ``threshold`` and ``n_bits`` are kept to explain one."""
LABELS = {"isolated_sqnr_db": "isolated SQNR", "cumulative_sqnr_db": "cumulative SQNR", "sqnr_db": "SQNR"}
REWRITE_HINT = "write a baseline with `quantlens check --write-baseline FILE`"


@dataclass(frozen=True)
class Regression:
    point: str
    """A point name, or ``<output>`` for the model output."""
    metric: str
    """``isolated_sqnr_db`` or ``cumulative_sqnr_db`` for a point, ``sqnr_db`` for the output."""
    baseline_db: float
    current_db: float

    @property
    def drop_db(self) -> float:
        return self.baseline_db - self.current_db


@dataclass(frozen=True)
class BaselineReport:
    regressions: list[Regression]
    """Output first, then points in execution order."""
    missing: list[str]
    """Points in the baseline that this run no longer has (renamed or removed layers)."""
    new: list[str]
    """Points of this run that the baseline does not know."""
    settings_changed: list[str]
    """Setting names whose value differs: the likely explanation of a regression."""
    tolerance_db: float

    @property
    def ok(self) -> bool:
        """Missing points and changed settings are reported but never fail a run on their own."""
        return not self.regressions


@dataclass(frozen=True)
class _Snapshot:
    """The comparable part of a baseline document, with "inf"/null turned into floats/None."""

    output_db: float | None
    points: dict[str, dict[str, float | None]]
    settings: dict[str, Any]


def write_baseline(payload: dict) -> dict:
    """The baseline document of a result payload; values stay in the result's JSON spelling."""
    output = payload.get("output") or {}
    return {
        "format": FORMAT,
        "model": payload.get("model"),
        "settings": payload.get("settings") or {},
        "output": {key: output.get(key) for key in OUTPUT_KEYS},
        "points": {p["name"]: _point_values(p) for p in payload.get("points", [])},
    }


def _point_values(point: dict) -> dict[str, Any]:
    metrics = point.get("metrics") or {}
    activation = point.get("activation") or {}
    return {
        "isolated_sqnr_db": (metrics.get("isolated") or {}).get("sqnr_db"),
        "cumulative_sqnr_db": (metrics.get("cumulative") or {}).get("sqnr_db"),
        "threshold": activation.get("threshold"),
        "n_bits": activation.get("n_bits"),
    }


def compare_to_baseline(payload: dict, baseline: Any, tolerance_db: float = 1.0, *,
                        origin: str = "<baseline>") -> BaselineReport:
    """Compare a result payload with a baseline document read from ``origin``.

    A value that is null on either side (NaN, or a point that was not simulated) cannot be
    compared and is skipped: the ``nonfinite`` rule reports NaN on its own.
    """
    before = _snapshot(baseline, Location(origin))
    after = _snapshot(write_baseline(payload), Location("<result>"))
    pairs = [(OUTPUT, "sqnr_db", before.output_db, after.output_db)] + [
        (name, metric, before.points.get(name, {}).get(metric), values[metric])
        for name, values in after.points.items() for metric in POINT_METRICS
    ]
    regressions = [r for r in (_regression(*pair, tolerance_db) for pair in pairs) if r]
    keys = dict.fromkeys([*before.settings, *after.settings])
    return BaselineReport(
        regressions=regressions,
        missing=[n for n in before.points if n not in after.points],
        new=[n for n in after.points if n not in before.points],
        settings_changed=[k for k in keys if before.settings.get(k) != after.settings.get(k)],
        tolerance_db=tolerance_db,
    )


def _regression(point: str, metric: str, before: float | None, after: float | None,
                tolerance_db: float) -> Regression | None:
    if before is None or after is None or before == after:  # equal also covers inf == inf
        return None
    return Regression(point, metric, before, after) if before - after > tolerance_db else None


def _snapshot(doc: Any, where: Location) -> _Snapshot:
    """Check a baseline document, reporting every bad value at once rather than the first."""
    if not isinstance(doc, dict):
        raise fail(f"a baseline is a JSON object, got {type(doc).__name__}", where, "baseline", REWRITE_HINT)
    if doc.get("format") != FORMAT:
        raise fail(f'not a quantlens baseline: "format" is {doc.get("format")!r}, expected {FORMAT!r}',
                   where, "baseline", REWRITE_HINT)
    problems: list[str] = []
    settings, output, points = (_table(doc, key, problems) for key in ("settings", "output", "points"))
    values = {
        name: {m: _db(entry.get(m), f"points.{name}.{m}", problems) for m in POINT_METRICS}
        for name, entry in points.items() if _is_table(entry, f"points.{name}", problems)
    }
    output_db = _db(output.get("sqnr_db"), "output.sqnr_db", problems)
    if problems:
        raise QuantlensError([Problem(f"bad baseline: {p}", where, code="baseline", hint=REWRITE_HINT)
                              for p in problems])
    return _Snapshot(output_db, values, settings)


def _table(doc: dict, key: str, problems: list[str]) -> dict:
    value = doc.get(key)
    return value if _is_table(value, key, problems) else {}


def _is_table(value: Any, path: str, problems: list[str]) -> bool:
    if isinstance(value, dict):
        return True
    problems.append(f"{path} must be an object, got {value!r}")
    return False


def _db(value: Any, path: str, problems: list[str]) -> float | None:
    """A value in the result's JSON spelling: a number, "inf"/"-inf", or null (NaN)."""
    if value is None:
        return None
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isnan(value) else float(value)
    problems.append(f'{path} must be a number, "inf", "-inf" or null, got {value!r}')
    return None


def regressions_to_findings(report: BaselineReport, payload: dict) -> list[Finding]:
    """One error per regressed point (output first), shown where the point's layer is made."""
    grouped: dict[str, list[Regression]] = {}
    for r in report.regressions:
        grouped.setdefault(r.point, []).append(r)
    points = payload.get("points", [])
    by_name = {p["name"]: p for p in points}
    return [_finding(name, found, _anchor(name, points, by_name), report) for name, found in grouped.items()]


def _anchor(name: str, points: list[dict], by_name: dict[str, dict]) -> dict | None:
    """The output has no line of its own; it is shown on the last point, the layer that produces it."""
    if name == OUTPUT:
        return points[-1] if points else None
    return by_name.get(name)


def _finding(name: str, regressions: list[Regression], anchor: dict | None, report: BaselineReport) -> Finding:
    worst_first = sorted(regressions, key=lambda r: r.drop_db, reverse=True)
    parts = [f"{LABELS[r.metric]} fell {_text_db(r.drop_db)} dB below the baseline ({_text_db(r.baseline_db)} -> "
             f"{_text_db(r.current_db)} dB, tolerance {report.tolerance_db:.1f} dB)" for r in worst_first]
    sites = (anchor.get("source"), anchor.get("call_site")) if anchor else ()
    return Finding(
        rule=RULE,
        severity=Severity.ERROR,
        message=f"{'model output' if name == OUTPUT else name}: {'; '.join(parts)}",
        points=() if name == OUTPUT else (name,),
        locations=tuple(dict.fromkeys(loc for loc in map(Location.from_json, sites) if loc)),
        evidence={
            "regressions": [{"metric": r.metric, "baseline_db": _json_db(r.baseline_db),
                             "current_db": _json_db(r.current_db), "drop_db": _json_db(r.drop_db)}
                            for r in worst_first],
            "tolerance_db": report.tolerance_db,
            "settings_changed": report.settings_changed,
        },
        recommendation=Recommendation(
            "If the drop is intended (new settings, a retrained model), accept it by recording this run as "
            "the new baseline with `quantlens check --write-baseline FILE`; otherwise the other findings on "
            "this point name the cause."
        ),
    )


def _text_db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else str(value)


def _json_db(value: float) -> float | str:
    """Findings are written as they are, so infinities need the result's string spelling here."""
    return value if math.isfinite(value) else str(value)
