"""Rules that blame a configured setting: where the setting, not the layer, does the damage.

A model-wide ``z_threshold`` or ``activation_error_method`` is chosen for the model as a
whole; on some points it cuts the threshold far below what their values need (a sparse
sigmoid or softmax output, whose confident values are few and look like outliers). The
finding names the setting, says what it costs the point (predicted from the histogram: the
same search with the setting and without it) and recommends the override that exempts the
point, so the setting can stay where it helps.

Covered: ``z_threshold`` and ``activation_error_method``. Not covered: bit widths (the
degraded-layer, degraded-unexplained and mixed-precision-last-layer findings name them) and
``num_calibration_batches`` (dataset-size), whose damage no threshold re-search can predict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from quantlens.core.diagnosis.context import NATURAL_RANGES, Context
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.result import PointResult
from quantlens.core.settings import PointOverride
from quantlens.core.thresholds import ErrorMethod

SETTING_COST_DB = 6.0
"""A setting is blamed when it costs a point more than one bit (6 dB) of predicted SQNR: more
than the all-values loss outliers-zscore accepts when it recommends a z_threshold, so this
rule never blames the z_threshold that rule asked for on the point it asked for."""
BOUNDED_COST_DB = 3.0
"""Half a bit is enough when the cut lands inside a bounded output's natural range: there
the clipped values are the confident ones, not outliers."""
REVERT_METHOD = ErrorMethod.MSE
"""The default error method, and what an exempted point falls back to: it maximises the
predicted SQNR, so it is never itself blamed."""


@dataclass(frozen=True)
class _Search:
    """One threshold search of a point: its threshold and predicted SQNR over all values."""

    threshold: float
    sqnr_db: float


@dataclass(frozen=True)
class _Blame:
    """One setting that costs a point: the search without it and with it."""

    setting: str
    """How the config names it: ``z_threshold``, or ``overrides."fc".z_threshold`` when an
    override sets it for this point."""
    value: Any
    without: _Search
    with_setting: _Search
    exemption: dict[str, Any]
    """The override entries that undo it for this point."""


def setting_damage(ctx: Context) -> list[Finding]:
    """One finding per point that a setting damages, naming every setting that does."""
    findings = []
    for p in ctx.quantized:
        blames = _blames(ctx, p)
        if blames:
            findings.append(_finding(ctx, p, blames))
    return findings


def _blames(ctx: Context, p: PointResult) -> list[_Blame]:
    """z_threshold first (the same method without outlier removal), then the method (against
    NOCLIPPING, with outlier removal only where it was not blamed)."""
    a = p.activation
    method = ErrorMethod(a.error_method)
    override = _override(ctx, p)
    blames = []
    z = a.z_threshold
    if math.isfinite(z):
        without = _search(ctx, p, method, math.inf)
        configured = _Search(a.threshold, a.predicted_sqnr_db)
        if _damages(ctx.natural_range(p), without, configured):
            name = "z_threshold" if override.z_threshold is None else _override_key(ctx, p, "z_threshold")
            blames.append(_Blame(name, z, without, configured, {"z_threshold": math.inf}))
            z = math.inf
    if method not in (ErrorMethod.NOCLIPPING, REVERT_METHOD):
        without = _search(ctx, p, ErrorMethod.NOCLIPPING, z)
        configured = _search(ctx, p, method, z)
        if _damages(ctx.natural_range(p), without, configured):
            name = ("activation_error_method" if override.activation_error_method is None
                    else _override_key(ctx, p, "activation_error_method"))
            blames.append(_Blame(name, method.value, without, configured,
                                 {"activation_error_method": REVERT_METHOD.value}))
    return blames


def _damages(natural: tuple[float, float] | None, without: _Search, with_setting: _Search) -> bool:
    """The setting lowers the threshold and costs more than the point's margin (a smaller one
    where it cuts into the ``natural`` range of a bounded output)."""
    if with_setting.threshold >= without.threshold:
        return False
    inside = natural is not None and with_setting.threshold < max(abs(natural[0]), abs(natural[1]))
    return without.sqnr_db - with_setting.sqnr_db > (BOUNDED_COST_DB if inside else SETTING_COST_DB)


def _search(ctx: Context, p: PointResult, method: ErrorMethod, z_threshold: float) -> _Search:
    """What quantize_point would choose for ``p`` under ``method`` and ``z_threshold``: read
    from the point's own search where it holds that method, else the calibration's memo."""
    a = p.activation
    if z_threshold == a.z_threshold and method.value in a.method_thresholds:
        return _Search(a.method_thresholds[method.value], a.method_sqnr_db[method.value])
    results, sqnr = ctx.memo.search(p.name, ctx.dist(p), a.n_bits, ctx.result.settings, a.shift, (method,),
                                    z_threshold=z_threshold)
    return _Search(results[method].threshold, sqnr[method.value])


def _override(ctx: Context, p: PointResult) -> PointOverride:
    return ctx.result.settings.for_point([p.name, *p.info.modules], p.info.module_types)


def _override_key(ctx: Context, p: PointResult, field: str) -> str:
    key = ctx.result.settings.override_key([p.name, *p.info.modules], p.info.module_types)
    return f'overrides."{key}".{field}'


def _exempting_override(ctx: Context, p: PointResult, blames: list[_Blame]) -> dict[str, Any]:
    """The point's own overrides entry: what applies to it now (an entry for a type or a parent
    module would no longer apply once the point has its own) plus the exemptions."""
    current = _override(ctx, p)
    kept = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)
            if getattr(current, f.name) != f.default}
    kept = {k: v.value if isinstance(v, ErrorMethod) else v for k, v in kept.items()}
    for blame in blames:
        kept.update(blame.exemption)
    return kept


def _finding(ctx: Context, p: PointResult, blames: list[_Blame]) -> Finding:
    a = p.activation
    exempted = {key for b in blames for key in b.exemption}
    fixed_method = REVERT_METHOD if "activation_error_method" in exempted else ErrorMethod(a.error_method)
    fixed_z = math.inf if "z_threshold" in exempted else a.z_threshold
    fixed = _search(ctx, p, fixed_method, fixed_z)
    entry = _exempting_override(ctx, p, blames)
    natural = ctx.natural_range(p)
    message = "; ".join(_describe(p.name, b) for b in blames)
    if natural is not None and a.threshold < max(abs(natural[0]), abs(natural[1])):
        own = p.info.activation or p.info.op
        subject = (f"a {own} output" if own.lower() in NATURAL_RANGES
                   else f"the {p.info.op} of {' and '.join(p.info.inputs)}")
        message += (f"; {subject} lies in [{natural[0]:g}, {natural[1]:g}] by construction, so the values cut "
                    "are its confident ones, not outliers")
    reverts = " and ".join(_revert(b) for b in blames)
    return Finding(
        rule="setting-damage",
        severity=Severity.WARNING,
        message=message,
        points=(p.name,),
        locations=ctx.locations(p),
        evidence={
            "settings": {b.setting: b.value for b in blames},
            "threshold": a.threshold,
            "predicted_sqnr_db": a.predicted_sqnr_db,
            "exempted_threshold": fixed.threshold,
            "exempted_sqnr_db": fixed.sqnr_db,
            "cost_db": fixed.sqnr_db - a.predicted_sqnr_db,
            "natural_range": list(natural) if natural is not None else None,
            "blamed": [{"setting": b.setting, "value": b.value, "threshold_without": b.without.threshold,
                        "sqnr_db_without": b.without.sqnr_db, "threshold_with": b.with_setting.threshold,
                        "sqnr_db_with": b.with_setting.sqnr_db} for b in blames],
        },
        recommendation=Recommendation(
            f"The setting, not the layer, does the damage: exempt {p.name} with its own overrides entry (the "
            f"setting stays for the other points), or {reverts}.",
            config={f'overrides."{p.name}"': entry},
        ),
        predicted=(f"with the override, {p.name}'s threshold is {fixed.threshold:g} and its predicted SQNR "
                   f"{fixed.sqnr_db:.1f} dB instead of {a.predicted_sqnr_db:.1f} dB"),
    )


def _describe(name: str, blame: _Blame) -> str:
    change = f"predicted SQNR {blame.without.sqnr_db:.1f} -> {blame.with_setting.sqnr_db:.1f} dB"
    if "z_threshold" in blame.exemption:
        return (f"{blame.setting} = {blame.value:g} cuts {name}'s threshold from {blame.without.threshold:g} to "
                f"{blame.with_setting.threshold:g} ({change})")
    return (f"{blame.setting} = {blame.value} puts {name}'s threshold at {blame.with_setting.threshold:g} where "
            f"NOCLIPPING keeps {blame.without.threshold:g} ({change})")


def _revert(blame: _Blame) -> str:
    if "z_threshold" in blame.exemption:
        return f"revert {blame.setting} to inf (no outlier removal)"
    return f"set {blame.setting} back to {REVERT_METHOD.value} (the default)"
