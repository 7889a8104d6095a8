"""Rules about the error itself: degraded layers, where damage starts, what to keep wide.

These follow XQuant's troubleshooting: find the degraded layers first, then say whether
the problem is local, starts somewhere upstream, or is global.
"""

from __future__ import annotations

import math

from quantlens.core.changes import override_name
from quantlens.core.diagnosis.context import Context
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.result import PointResult

WIDE_BITS = 16
INHERITED_MARGIN_DB = 6.0
"""A degraded point inherits its error when its own quantization passes the limits and its
isolated SQNR is this much above its cumulative one (three quarters of the noise came from upstream)."""
FEW_POINTS = 3
""""One or a few" upstream points: when more fail on their own quantization, the problem is global."""


def mct(**quantization_config: object) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in quantization_config.items())
    return f"mct.core.CoreConfig(quantization_config=mct.core.QuantizationConfig({args}))"


def keep_wide(names: list[str]) -> dict:
    return {f'overrides."{n}"': {"activation_n_bits": WIDE_BITS, "weights_n_bits": WIDE_BITS} for n in names}


def degraded_layers(ctx: Context) -> list[Finding]:
    findings = []
    for p in ctx.quantized:
        if p.cumulative is None or p.name not in ctx.degraded:
            continue
        scores = ctx.scores(p.cumulative, p.custom)
        failed = ctx.failed(p.cumulative, p.custom)
        iso = p.isolated.sqnr_db if p.isolated else float("nan")
        evidence = {"scores": scores, "failed": failed, "limits": ctx.settings.threshold_quantize_error,
                    "cumulative_sqnr_db": p.cumulative.sqnr_db, "isolated_sqnr_db": iso,
                    "cumulative_cosine": p.cumulative.cosine, "cumulative_mse": p.cumulative.mse}
        if p.isolated is not None:
            # empty: the point fails only cumulatively
            evidence["isolated_failed"] = ctx.failed(p.isolated, p.custom)
            evidence["inherited"] = (not evidence["isolated_failed"]
                                     and p.isolated.sqnr_db - p.cumulative.sqnr_db >= INHERITED_MARGIN_DB)
        inherited = bool(evidence.get("inherited"))
        findings.append(Finding(
            rule="degraded-layer",
            # the warning belongs on the cause: a point whose own quantization passes only
            # shows what it received, and names where that starts (diagnose's _name_causes)
            severity=Severity.INFO if inherited else Severity.WARNING,
            message=(f"{p.name} is degraded by quantization: cumulative SQNR {p.cumulative.sqnr_db:.1f} dB, "
                     f"cosine {p.cumulative.cosine:.4f} (isolated SQNR {iso:.1f} dB"
                     + ("; the error comes from upstream)" if inherited else ")")),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence=evidence,
            recommendation=Recommendation(
                "Look at the other findings on this layer for the cause; keeping it at 16 bits tests "
                "whether it is the culprit (as MCT's network editor is used).",
                config=keep_wide([p.name]),
            ),
        ))
    return findings


def output_and_global(ctx: Context) -> list[Finding]:
    """XQuant's general advice: output degraded with no layer to blame, or most layers degraded."""
    findings = []
    out = ctx.result.output.error
    anchor = ctx.points[-1] if ctx.points else None
    locations = ctx.locations(anchor) if anchor else ()
    if out.count:
        scores = ctx.scores(out, ctx.result.output.custom)
        failed = {m: s for m, s in scores.items() if ctx.settings.is_degraded(m, s)}
        if failed and not ctx.degraded:
            findings.append(Finding(
                rule="output-degraded",
                severity=Severity.WARNING,
                message=(f"the model output is degraded (SQNR {out.sqnr_db:.1f} dB, cosine {out.cosine:.4f}) "
                         "but no single layer passes the thresholds: small errors add up"),
                points=(anchor.name,) if anchor else (),
                locations=locations,
                evidence={"scores": scores, "failed": failed},
                recommendation=Recommendation(
                    "Either errors accumulate across many layers (raise the bit width of the most sensitive layers, "
                    "see sensitive-layers, or use GPTQ / QAT to let the weights absorb the error), or the output is "
                    "computed after the last quantization point by an operation that cancels most of the signal "
                    "(a subtraction of a large common offset, a normalisation): quantize before it loses the "
                    "offset, or remove the offset from the layer (e.g. from its bias).",
                    mct="mct.gptq.pytorch_gradient_post_training_quantization(model, representative_data_gen, "
                        "gptq_config=mct.gptq.get_pytorch_gptq_config(n_epochs=5))",
                ),
            ))
    if ctx.quantized:
        ratio = len(ctx.degraded) / len(ctx.quantized)
        own = _failing_alone(ctx)
        if (ctx.degraded and ratio > ctx.settings.threshold_degrade_layer_ratio and not _one_point_recovers(ctx)
                and not _few_points_explain(ctx, own)):
            findings.append(Finding(
                rule="global-degradation",
                severity=Severity.ERROR,
                message=(f"{len(ctx.degraded)} of {len(ctx.quantized)} layers ({100 * ratio:.0f}%) are degraded: "
                         "a global problem, not one layer"),
                points=tuple(sorted(ctx.degraded)),
                locations=ctx.locations(next(p for p in ctx.quantized if p.name in ctx.degraded)),
                evidence={"degraded": len(ctx.degraded), "layers": len(ctx.quantized), "ratio": ratio,
                          "threshold_degrade_layer_ratio": ctx.settings.threshold_degrade_layer_ratio,
                          "isolated_failed_points": own},
                recommendation=Recommendation(
                    "The bit width is too low for this model as a whole: raise activation_n_bits / weights_n_bits, "
                    "use mixed precision, GPTQ or quantization-aware training.",
                    config={"activation_n_bits": 8, "weights_n_bits": 8} if ctx.result.settings.activation_n_bits < 8 else {},
                    mct="mct.core.CoreConfig(mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig())",
                ),
            ))
    return findings


def _one_point_recovers(ctx: Context) -> bool:
    """True when keeping a single point at 16 bits recovers the output (a gain of
    divergence_jump_db, measured by re-simulation: a verified change or the sensitivity
    search, to a non-degraded SQNR): then the degraded layers inherit one layer's error and
    the problem is not global."""
    if not ctx.result.output.error.count:
        return False
    output = ctx.result.output
    single = [(s["output_sqnr_db"] - output.error.sqnr_db, s["output_sqnr_db"])
              for s in ctx.result.sensitivity if s["k"] == 1]
    single += [(v.gain_db(output), v.error.sqnr_db) for v in ctx.result.verified or []
               if len(v.change) == 1 and all(override_name(k) is not None for k in v.change)]
    return any(gain >= ctx.settings.divergence_jump_db and not ctx.settings.is_degraded("sqnr", after / 100.0)
               for gain, after in single)


def _failing_alone(ctx: Context) -> list[str]:
    """The points degraded by their own quantization: their isolated error fails the limits
    (the user's metrics are measured cumulatively, so they do not count here)."""
    return [p.name for p in ctx.quantized if p.isolated is not None and ctx.failed(p.isolated, {})]


def _few_points_explain(ctx: Context, own: list[str]) -> bool:
    """True when the degraded layers inherit the error of a few points that fail on their own.

    That needs between one and FEW_POINTS points failing in isolation, and every other
    degraded point must be fine without them: the isolated noise of the rest of its
    upstream points (itself included), added up to first order as quantization noise adds
    (the estimate of :mod:`quantlens.core.rediagnose`), stays within the limits. Many points
    each adding a little is accumulation, a global problem, even when none fails alone.
    """
    if not own or len(own) > FEW_POINTS:
        return False
    culprits = set(own)
    for name in ctx.degraded - culprits:
        rest = [q.isolated for q in _upstream(ctx, ctx.by_name[name])
                if q.name not in culprits and q.isolated is not None]
        nsr = sum(sums.sum_ee / sums.sum_xx for sums in rest if sums.sum_xx > 0)
        if _noise_degrades(ctx, nsr):
            return False
    return True


def _upstream(ctx: Context, p: PointResult) -> list[PointResult]:
    """``p`` and the quantized points its value is computed from: its ancestors in the data
    flow discovery recorded, or every point before it when no flow was recorded."""
    if not any(q.info.inputs for q in ctx.points):
        return [q for q in ctx.quantized if q.info.order <= p.info.order]
    seen = {p.name}
    todo = [p.name]
    while todo:
        for name in ctx.by_name[todo.pop()].info.inputs:
            if name not in seen and name in ctx.by_name:
                seen.add(name)
                todo.append(name)
    return [q for q in ctx.quantized if q.name in seen]


def _noise_degrades(ctx: Context, nsr: float) -> bool:
    """Whether noise of ``nsr`` (error energy over signal energy), uncorrelated with the
    signal, fails the configured limits: its normalised MSE is ``nsr``, and its SQNR and the
    SNR its cosine implies are both -10 log10(nsr) dB (see DiagnosisSettings)."""
    if nsr <= 0:
        return False
    db = -10.0 * math.log10(nsr) / 100.0
    return any(ctx.settings.is_degraded(m, score) for m, score in (("mse", nsr), ("sqnr", db), ("cs", db)))


def _point_before(ctx: Context, p: PointResult) -> PointResult | None:
    """The point whose error ``p`` receives: of the points it consumes (the data flow), the
    one with the worst cumulative SQNR; None when it reads only the model input."""
    producers = [ctx.by_name[n] for n in p.info.inputs if n in ctx.by_name and ctx.by_name[n].cumulative is not None]
    return min(producers, key=lambda q: q.cumulative.sqnr_db) if producers else None  # type: ignore[union-attr]


def first_divergence(ctx: Context) -> list[Finding]:
    """The first point on the path to the output whose cumulative SQNR falls more than
    divergence_jump_db below the point it reads from: where the damage starts."""
    s = ctx.settings
    for p in ctx.quantized:
        before = _point_before(ctx, p)
        if p.cumulative is None or before is None or not p.info.feeds_output:
            continue
        c = p.cumulative.sqnr_db
        b = before.cumulative.sqnr_db  # type: ignore[union-attr]
        if b - c > s.divergence_jump_db and (p.name in ctx.degraded or c < 30.0):
            iso = p.isolated.sqnr_db if p.isolated else c
            own = iso - c < s.divergence_jump_db
            cause = (f"its own quantization costs it (isolated SQNR {iso:.1f} dB)" if own else
                     f"its isolated SQNR is {iso:.1f} dB, so the error comes from how upstream errors combine here")
            return [Finding(
                rule="first-divergence",
                severity=Severity.INFO,
                message=(f"the damage starts at {p.name}: cumulative SQNR falls from {b:.1f} dB at {before.name} "
                         f"to {c:.1f} dB; " + cause),
                points=(p.name,),
                locations=ctx.locations(p),
                evidence={"cumulative_sqnr_db": c, "before_point": before.name, "before_db": b,
                          "isolated_sqnr_db": iso},
                recommendation=Recommendation(
                    f"Fix {p.name} first: everything after it inherits its error.", config=keep_wide([p.name])),
            )]
    return []


def sensitive_layers(ctx: Context) -> list[Finding]:
    sens = ctx.result.sensitivity
    base = ctx.result.output.error.sqnr_db
    if not sens or not ctx.result.output.error.count:
        return []
    if base >= ctx.settings.sensitivity_output_sqnr_db and not ctx.degraded:
        return []
    best = max(sens, key=lambda e: e["output_sqnr_db"] - base)
    gain = best["output_sqnr_db"] - base
    if gain < 3.0:
        return []
    ranked = sorted((p for p in ctx.quantized if p.isolated is not None), key=lambda p: p.isolated.sqnr_db)  # type: ignore[union-attr]
    top = ranked[: ctx.settings.top_n]
    worst = ctx.by_name[best["points"][0]]
    names = ", ".join(best["points"])
    return [Finding(
        rule="sensitive-layers",
        severity=Severity.INFO,
        message=(f"keeping the {best['k']} most sensitive point(s) ({names}) at 16 bits raises the output SQNR "
                 f"from {base:.1f} to {best['output_sqnr_db']:.1f} dB"),
        points=tuple(best["points"]),
        locations=ctx.locations(worst),
        evidence={"ranking": [{"point": p.name, "isolated_sqnr_db": p.isolated.sqnr_db} for p in top],  # type: ignore[union-attr]
                  "resimulations": sens, "output_sqnr_db": base},
        recommendation=Recommendation(
            "These layers dominate the output error; mixed precision that gives them more bits pays most.",
            config=keep_wide(list(best["points"])),
            mct="mct.core.CoreConfig(mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig())",
        ),
        predicted=f"output SQNR {base:.1f} -> {best['output_sqnr_db']:.1f} dB (measured by re-simulation)",
    )]


def mixed_precision_last_layer(ctx: Context) -> list[Finding]:
    settings = ctx.result.settings
    if not settings.overrides:
        return []
    weighted = [p for p in ctx.points if p.info.weight_module]
    last = weighted[-1] if weighted else (ctx.points[-1] if ctx.points else None)
    if last is None:
        return []
    override = settings.for_point([last.name, *last.info.modules], last.info.module_types)
    bits = min(override.weights_n_bits or settings.weights_n_bits, override.activation_n_bits or settings.activation_n_bits)
    limit = ctx.settings.threshold_bitwidth_mixed_precision_with_model_output_loss_objective
    if bits > limit:
        return []
    return [Finding(
        rule="mixed-precision-last-layer",
        severity=Severity.WARNING,
        message=f"the last layer {last.name} is quantized to {bits} bits: the output loses most at this layer",
        points=(last.name,),
        locations=ctx.locations(last),
        evidence={"bits": bits, "threshold": limit},
        recommendation=Recommendation(
            "Give the last layer at least 8 bits; with a mixed-precision search, use an objective on the model "
            "output so the last layer's bit width is judged by its effect.",
            config={f'overrides."{last.name}"': {"activation_n_bits": 8, "weights_n_bits": 8}},
            mct="mct.core.MixedPrecisionQuantizationConfig(use_hessian_based_scores=True)",
        ),
    )]
