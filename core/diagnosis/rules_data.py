"""Rules about the data and the calibrator: dataset size, shapes and match, methods, NaN."""

from __future__ import annotations

from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.rules_error import mct
from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.result import PointResult
from quantlens.core.stats import BatchShapes, CalibrationResult, ShapeMismatch
from quantlens.core.thresholds import ErrorMethod

DEGENERATE_RATIO = 2.0**-8
"""A threshold 256x below the data's range is the signature of MCT 2.6.1's degenerate KL."""
UNSTABLE_COST_DB = 1.0


def nonfinite(ctx: Context) -> list[Finding]:
    findings = []
    for p in ctx.points:
        bad = ctx.stats(p).nonfinite
        if bad:
            findings.append(Finding(
                rule="nonfinite",
                severity=Severity.ERROR,
                message=f"{p.name} produced {bad} NaN/Inf value(s) during calibration; they are left out of its statistics",
                points=(p.name,),
                locations=ctx.locations(p),
                evidence={"nonfinite": bad, "count": ctx.stats(p).count},
                recommendation=Recommendation("Look for overflow, log/sqrt of non-positive values or division by zero "
                                              "upstream of this layer; quantized hardware cannot represent NaN/Inf."),
            ))
    return findings


def dataset_size(ctx: Context) -> list[Finding]:
    cal = ctx.result.calibration
    settings = ctx.result.settings
    findings = []
    where = tuple(loc for loc in (ctx.result.data_source, ctx.result.data_config) if loc is not None)
    thinnest = _fewest_values_per_channel(ctx)
    if thinnest is not None and thinnest[1] < ctx.settings.min_samples:
        p, values = thinnest
        findings.append(Finding(
            rule="dataset-size",
            severity=Severity.WARNING,
            message=(f"the representative dataset has {cal.num_samples} samples: {p.name}'s threshold rests on "
                     f"{values} values per channel ({cal.num_samples} samples x {values / max(cal.num_samples, 1):g} "
                     f"positions); thresholds from fewer than {ctx.settings.min_samples} are unreliable"),
            locations=where[:1],
            related=where[1:],
            evidence={"num_samples": cal.num_samples, "values_per_channel": values, "point": p.name,
                      "min_samples": ctx.settings.min_samples},
            recommendation=_more_data(cal),
        ))
    if cal.num_batches < 2:
        return findings
    unstable = []
    for p in ctx.quantized:
        s = ctx.stats(p)
        if s.counts[0].sum() == 0 or s.counts[1].sum() == 0:
            continue
        a = p.activation
        t = [ctx.search(p, f"half{h}", z_threshold=settings.z_threshold, signed=a.signed, shift=a.shift) for h in (0, 1)]
        if t[0] == t[1]:
            continue
        cost = max(ctx.sqnr_at(p, t[h], f"half{h}") - ctx.sqnr_at(p, t[1 - h], f"half{h}") for h in (0, 1))
        if cost > UNSTABLE_COST_DB:
            unstable.append((p, t, cost))
    share = len(unstable) / max(len(ctx.quantized), 1)
    if len(unstable) >= 2 and share > ctx.settings.unstable_share:  # one flip across a power of two is chance
        unstable.sort(key=lambda u: -u[2])
        worst = unstable[0][0]
        findings.append(Finding(
            rule="dataset-size",
            severity=Severity.WARNING,
            message=(f"thresholds of {len(unstable)} of {len(ctx.quantized)} points change between two halves of the "
                     f"calibration data (worst: {worst.name}, {unstable[0][1][0]:g} vs {unstable[0][1][1]:g}, "
                     f"{unstable[0][2]:.1f} dB apart): the representative dataset is too small or not diverse"),
            points=tuple(u[0].name for u in unstable),
            locations=where[:1] or ctx.locations(worst),
            related=(*where[1:], *ctx.locations(worst)),
            evidence={"unstable": [{"point": u[0].name, "thresholds": u[1], "cost_db": u[2]} for u in unstable[: ctx.settings.top_n]],
                      "share": share},
            recommendation=_more_data(cal),
        ))
    return findings


def batch_shape(ctx: Context) -> list[Finding]:
    """Batches whose input shape differs from the first batch's, and outputs whose batch size
    differs from their input's: a model may accept both and fold samples into rows silently
    (a reshape to a fixed row width), so the report describes data the deployment never sees."""
    shapes = ctx.result.calibration.batch_shapes
    where = _data_locations(ctx)
    findings = []
    odd_inputs = [m for m in shapes.mismatches if shapes.input_differs(m.input)]
    if odd_inputs:
        m = odd_inputs[0]
        findings.append(_shape_finding(
            shapes, odd_inputs, shapes.input_mismatches, where,
            f"batch {m.batch} of the representative dataset has input shape {_shape(m.input)} where the first batch "
            f"has {_shape(shapes.input)}{_others(odd_inputs, shapes.input_mismatches)}: the statistics mix inputs "
            "the deployed model will not see alike",
            "Yield batches of the shape the deployed model takes (crop or pad to one length); a model that accepts "
            "another shape may still treat it differently (fold frames into rows, pool over another length)."))
    odd_outputs = [m for m in shapes.mismatches if shapes.output_differs(m.input, m.output)]
    if odd_outputs:
        m = odd_outputs[0]
        assert m.output is not None
        findings.append(_shape_finding(
            shapes, odd_outputs, shapes.output_mismatches, where,
            f"the model output of batch {m.batch} has {m.output[0]} rows (shape {_shape(m.output)}) for an input of "
            f"{m.input[0]} samples (shape {_shape(m.input)}){_others(odd_outputs, shapes.output_mismatches)}: the "
            "model folds or splits samples along the batch dimension",
            "Check the batch's shape against the one the model was built for: a reshape to a fixed row width "
            "(e.g. frames per row) turns inputs of another length into other rows without an error."))
    return findings


def _shape_finding(shapes: BatchShapes, odd: list[ShapeMismatch], total: int, where: tuple[Location, ...],
                   message: str, advice: str) -> Finding:
    """One batch-shape warning: the first odd batch's shapes, and every odd batch kept."""
    return Finding(
        rule="batch-shape",
        severity=Severity.WARNING,
        message=message,
        locations=where[:1],
        related=where[1:],
        evidence={"batch": odd[0].batch, "input_shape": odd[0].input, "output_shape": odd[0].output,
                  "first_input_shape": shapes.input, "first_output_shape": shapes.output, "batches": total,
                  "mismatches": [{"batch": m.batch, "input_shape": m.input, "output_shape": m.output} for m in odd]},
        recommendation=Recommendation(advice),
    )


def _data_locations(ctx: Context) -> tuple[Location, ...]:
    """The data function's ``def`` line and the config entry that names it; without either,
    where the model input's point is shown."""
    where = tuple(loc for loc in (ctx.result.data_source, ctx.result.data_config) if loc is not None)
    if where:
        return where
    return next((ctx.locations(p) for p in ctx.points if p.info.kind == "input"), ())


def _shape(shape: list[int]) -> str:
    return str(tuple(shape))


def _others(odd: list[ShapeMismatch], total: int) -> str:
    """The message's suffix ``(3 batches differ: 2, 5, 7)`` when more than one batch differs."""
    if total <= 1:
        return ""
    listed = ", ".join(str(m.batch) for m in odd) + (", ..." if total > len(odd) else "")
    return f" ({total} batches differ: {listed})"


def _fewest_values_per_channel(ctx: Context) -> tuple[PointResult, int] | None:
    """The quantized point whose threshold sees the fewest values per channel, and how many:
    samples times positions (frames, pixels, tokens), the count of observations of each
    channel's range. A clip of 101 frames gives a frame-wise layer 101 values per channel and
    a clip-level head one; channels do not multiply, being different features of one input."""
    counted = []
    for p in ctx.quantized:
        s = ctx.stats(p)
        observed = s.count + s.nonfinite  # NaN/Inf are the nonfinite rule's problem, not the dataset's
        if observed == 0:
            continue
        channels = len(s.channel_min) if p.info.channel_axis != 0 else 1  # axis 0: a 0-d or 1-d output
        counted.append((p, observed // max(channels, 1)))
    return min(counted, key=lambda c: c[1]) if counted else None


def _more_data(cal: CalibrationResult) -> Recommendation:
    """``num_calibration_batches`` is a cap on what the data function yields: raising it adds
    data only when the cap stopped the data function; otherwise the data function needs more."""
    advice = "Use more (and more diverse) calibration samples: hundreds of samples that cover the deployment conditions"
    if cal.batch_limit is not None and cal.num_batches >= cal.batch_limit:
        return Recommendation(f"{advice}. num_calibration_batches = {cal.batch_limit} stopped the data function after "
                              f"{cal.num_batches} batches: raise or remove it if the data function yields more, "
                              "otherwise add samples to the data function.")
    return Recommendation(f"{advice}. The data function yields {cal.num_batches} batches ({cal.num_samples} samples) "
                          "in all: add samples to it (num_calibration_batches only caps what it yields).")


def dataset_mismatch(ctx: Context) -> list[Finding]:
    val = ctx.result.validation
    if val is None:
        return []
    rows = []
    for p in ctx.quantized:
        vs = val.stats.get(p.name)
        if vs is None or vs.count == 0:
            continue
        a = p.activation
        vdist = vs.distribution()
        shift = abs(vdist.mean - a.mean) / a.std if a.std > 0 else 0.0
        low = -a.threshold if a.signed else 0.0
        clipped_val = vdist.shifted(a.shift).mass_outside(low, a.threshold)
        clipped_cal = ctx.dist(p).shifted(a.shift).mass_outside(low, a.threshold)
        extra = clipped_val - clipped_cal
        bound = ctx.natural_range(p)
        if bound is not None and a.threshold >= bound[1] and (a.signed or bound[0] >= 0):
            extra = 0.0  # nothing lies beyond a bound the output has by construction (a softmax's 1.0)
        if shift > ctx.settings.mismatch_mean_shift or extra > ctx.settings.mismatch_clipped_share:
            rows.append((p, shift, extra, vdist.min, vdist.max))
    rows.sort(key=lambda r: -(r[1] + 100 * r[2]))
    findings = []
    for p, shift, extra, vmin, vmax in rows[: ctx.settings.top_n]:
        a = p.activation
        findings.append(Finding(
            rule="dataset-mismatch",
            severity=Severity.WARNING,
            message=(f"{p.name} sees different data in validation: mean shifts by {shift:.2f} calibration std and "
                     f"{100 * max(extra, 0):.2f}% more values fall outside the threshold {a.threshold:g} "
                     f"(validation range [{vmin:.3g}, {vmax:.3g}] vs calibration [{a.min:.3g}, {a.max:.3g}])"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"mean_shift_std": shift, "extra_clipped_fraction": extra, "validation_min": vmin,
                      "validation_max": vmax, "calibration_min": a.min, "calibration_max": a.max},
            recommendation=Recommendation("Calibrate on data drawn like the deployment data (same preprocessing, "
                                          "same conditions); the representative dataset does not match validation."),
        ))
    return findings


def calibrator_comparison(ctx: Context) -> list[Finding]:
    settings = ctx.result.settings
    configured = settings.activation_error_method.value
    findings = []
    beaten = []
    for p in ctx.quantized:
        sq = p.activation.method_sqnr_db
        if configured not in sq:
            continue
        best_method = max(sq, key=lambda m: (sq[m], m == configured, m == "MSE"))  # ties keep the configured one
        gap = sq[best_method] - sq[configured]
        if gap > ctx.settings.calibrator_margin_db:
            beaten.append((p, best_method, gap))
    beaten.sort(key=lambda b: -b[2])
    for p, best_method, gap in beaten[: ctx.settings.top_n]:
        a = p.activation
        findings.append(Finding(
            rule="calibrator-comparison",
            severity=Severity.INFO,
            message=(f"for {p.name}, {best_method} (threshold {a.method_thresholds[best_method]:g}) beats the configured "
                     f"{configured} (threshold {a.threshold:g}) by {gap:.1f} dB"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"method_sqnr_db": a.method_sqnr_db, "method_thresholds": a.method_thresholds},
            recommendation=Recommendation(
                f"Use {best_method} for this layer's activations, or for the whole model if this repeats.",
                config={"activation_error_method": best_method},
                mct=mct(activation_error_method=f"mct.core.QuantizationErrorMethod.{best_method}"),
            ),
            predicted=f"{best_method} would give {a.method_sqnr_db[best_method]:.1f} dB instead of {a.method_sqnr_db[configured]:.1f} dB",
        ))
    points = ctx.quantized
    if len(points) >= 3:
        for method in ErrorMethod:
            if method in (ErrorMethod.NOCLIPPING,):
                continue
            tiny = [p for p in points if method.value in p.activation.method_thresholds
                    and max(abs(p.activation.min), abs(p.activation.max)) > 0
                    and p.activation.method_thresholds[method.value] < DEGENERATE_RATIO * max(abs(p.activation.min), abs(p.activation.max))]
            same = [p for p in points if p.activation.method_thresholds.get(method.value) == p.activation.method_thresholds.get("NOCLIPPING")]
            mse_clips = [p for p in points if p.activation.method_thresholds.get("MSE") != p.activation.method_thresholds.get("NOCLIPPING")]
            if len(tiny) >= max(1, len(points) // 2):
                findings.append(_degenerate(ctx, method.value, tiny, f"lands 256x or more below the data's range at {len(tiny)} of {len(points)} points"))
            elif (method is not ErrorMethod.MSE and method.value == configured and len(same) == len(points)
                  and len(mse_clips) >= max(1, len(points) // 2)):  # a method not in use is not advice
                findings.append(_degenerate(ctx, method.value, same, f"never clips (min/max threshold at all {len(points)} points) while MSE clips at {len(mse_clips)}"))
    return findings


def _degenerate(ctx: Context, method: str, points: list, what: str) -> Finding:
    configured = ctx.result.settings.activation_error_method.value
    return Finding(
        rule="calibrator-comparison",
        severity=Severity.WARNING if method == configured else Severity.INFO,
        message=f"the {method} threshold search degenerates on this model: it {what}",
        points=tuple(p.name for p in points),
        locations=ctx.locations(points[0]),
        evidence={"method": method, "points": [p.name for p in points]},
        recommendation=Recommendation(f"Do not use {method} here; MSE is the robust default.",
                                      config={"activation_error_method": "MSE"} if method == configured else {}),
    )
