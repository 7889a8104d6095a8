"""The per-point table and summary that ``quantlens check`` prints."""

from __future__ import annotations

from pathlib import Path

from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Severity
from quantlens.core.result import AnalysisResult, PointResult


def relative(location: Location | None, root: Path | None) -> str:
    if location is None:
        return "-"
    path = Path(location.file)
    if root is not None:
        try:
            path = path.relative_to(root)
        except ValueError:
            pass
    return f"{path}:{location.line}" if location.line else str(path)


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def point_row(p: PointResult, root: Path | None) -> list[str]:
    a = p.activation
    return [
        p.name,
        p.info.op,
        relative(p.info.source, root),
        f"[{a.min:.3g}, {a.max:.3g}]",
        f"{a.threshold:g}" if a.quantize else "float",
        a.error_method,
        "s" if a.signed else "u",
        _db(p.isolated.sqnr_db if p.isolated else None),
        _db(p.cumulative.sqnr_db if p.cumulative else None),
        f"{100 * a.iqr_outlier_fraction:.1f}",
    ]


HEADER = ["point", "type", "source", "range", "threshold", "method", "sign", "iso dB", "cum dB", "IQR out %"]
RIGHT = {3, 4, 7, 8, 9}


def format_table(result: AnalysisResult, root: Path | None) -> str:
    rows = [HEADER] + [point_row(p, root) for p in result.points]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(result: AnalysisResult) -> str:
    s = result.settings
    out = result.output
    parts = [
        f"{len(result.points)} quantization points, {result.calibration.num_samples} samples in "
        f"{result.calibration.num_batches} batches ({result.calibration.input_signature})",
        f"settings: activations {s.activation_n_bits}-bit {s.activation_error_method.value}, weights "
        f"{s.weights_n_bits}-bit {s.weights_error_method.value}"
        f"{' per-channel' if s.weights_per_channel_threshold else ' per-tensor'}, "
        f"{'power-of-two' if s.power_of_two_thresholds else 'free'} thresholds, z_threshold={s.z_threshold:g}",
        f"model output{sampled(result.simulation_batches, result.calibration.num_batches)}: "
        f"SQNR {out.error.sqnr_db:.1f} dB, cosine {out.error.cosine:.5f}"
        + (f", top-1 agreement {100 * out.top1_agreement:.1f}%" if out.top1_agreement is not None else ""),
    ]
    for key in sorted(set(out.float_eval) | set(out.quant_eval)):
        f, q = out.float_eval.get(key), out.quant_eval.get(key)
        parts.append(f"validation {key}: float {f:.4g} -> quantized {q:.4g}" if f is not None and q is not None else "")
    for name, value in out.custom.items():
        parts.append(f"output metric {name}: {value:.4g}")
    parts.append("SQNR is 20*log10(||x|| / ||x - q||) in dB: isolated = this point's own quantization on float "
                 "inputs, cumulative = the fully quantized model at this point.")
    return "\n".join(p for p in parts if p)


def sampled(simulation_batches: int, num_batches: int) -> str:
    """Where the errors come from, when not from every calibration batch: the numbers of a
    sample move by a dB or two against every batch's (``num_simulation_batches = "all"``)."""
    if not 0 < simulation_batches < num_batches:
        return ""
    return f" (errors measured on the first {simulation_batches} of {num_batches} batches)"



def format_findings(result: AnalysisResult, root: Path | None) -> str:
    """Findings, worst first: ``file:line: severity[rule] message`` plus the fix."""
    if not result.findings:
        return "no findings"
    lines = []
    for f in result.findings:
        lines.append(f"{relative(f.location, root)}: {f.severity.value}[{f.rule}] {f.message}")
        for loc, names in library_lines(result, f).items():
            lines.append(f"    library code: {relative(loc, root)} ({', '.join(names)})")
        if f.predicted:
            lines.append(f"    predicted: {f.predicted}")
        if f.recommendation is not None:
            lines.append(f"    fix: {f.recommendation.explanation}")
            if f.recommendation.config:
                settings = ", ".join(f"{k} = {toml_value(v)}" for k, v in f.recommendation.config.items())
                lines.append(f"    config: {settings}")
            if f.recommendation.mct:
                lines.append(f"    MCT: {f.recommendation.mct}")
    return "\n".join(lines)


def format_verdict(result: AnalysisResult, root: Path | None) -> str:
    """The closing line: what to do first, measured, and how many findings of each severity
    (after a long list of findings, the one change worth making must not be lost in it)."""
    counts = [(sev, sum(f.severity is sev for f in result.findings)) for sev in (Severity.ERROR, Severity.WARNING,
                                                                                 Severity.INFO)]
    tally = ", ".join(f"{n} {sev.value}{'s' if n != 1 and sev is not Severity.INFO else ''}" for sev, n in counts if n)
    top = result.top_recommendation
    if top is not None:
        carrier = next((f for f in result.findings if f.rule == top.get("rule") and f.recommendation
                        and f.recommendation.config == top["change"]), None)
        where = f" at {relative(carrier.location, root)}" if carrier is not None and carrier.location else ""
        # measured again on every batch when the simulated ones disagreed: its before is then
        # not the header's (which is the simulated batches')
        on = f" on all {top['batches']} batches" if top.get("batches", 0) > result.simulation_batches else ""
        first = (f"top recommendation ({top.get('rule')}{where}): {top['description']}, output SQNR "
                 f"{top['output_sqnr_db']:.1f} -> {top['verified_sqnr_db']:.1f} dB{on}, measured")
    elif result.verified:
        first = f"no change helps: none of the {len(result.verified)} re-simulated gains enough at the output"
    else:
        first = "nothing to change"
    return f"{first}; {tally or 'no findings'}"


def library_lines(result: AnalysisResult, finding: Finding) -> dict[Location, list[str]]:
    """The library lines among the finding's related lines, each with the points of the finding
    made or applied there (a point built inside torch or a model zoo: where to read its code)."""
    related = set(finding.related)
    lines: dict[Location, list[str]] = {}
    for name in finding.points:
        try:
            where = result.point(name).info.library_source
        except KeyError:
            continue
        if where is not None and where in related:
            lines.setdefault(where, []).append(name)
    return lines


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)
