"""Verified advice: which recommended changes to re-simulate, and what their measurements say.

A recommendation predicted from statistics can be wrong about the model output: clipping an
exponential tail may cost more downstream than it gains at the layer, and a softmax shows
the error its logits carry. So the worker re-simulates the recommended changes (and the
likeliest upstream causes) with the change applied, and the findings then quote the
measured effect on the model output:

* a change that gains at least ``min_fix_gain_db`` is recommended with its measured gain;
* one that gains less is withdrawn (``evidence["withdrawn"]``): the finding says what was
  tried and drops to info;
* a change the config already holds is never recommended again;
* the best measured change is the top recommendation; when no finding recommended it (a
  cause upstream of every symptom), a ``best-fix`` finding names it at its own line.

Everything here is torch-free (the language server runs it): candidates come from a
diagnosis, the measurements from :func:`quantlens.core.torch_engine.pipeline.measure`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from quantlens.core.changes import Change, already_applied, apply_change, change_key, describe, override_name
from quantlens.core.diagnosis import NOT_A_CAUSE
from quantlens.core.diagnosis.rules_error import keep_wide
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.measurements import OutputMetrics, Verification
from quantlens.core.metrics import ErrorSums
from quantlens.core.quantizer import Grid
from quantlens.core.result import AnalysisResult, PointResult

UPSTREAM_CANDIDATES = 3
"""Points ranked by the cumulative-error jump they cause that are confirmed by re-simulation."""
JOINT_RULE = "setting-damage"
SYMPTOM_RULES = frozenset({"degraded-layer", "output-degraded", "global-degradation", "first-divergence",
                           "degraded-unexplained"})
"""Findings that say the output or a point is degraded: then upstream causes are searched."""


def candidates(result: AnalysisResult, findings: list[Finding], diagnosis: DiagnosisSettings) -> list[Change]:
    """The changes worth a re-simulation, most important first, at most
    ``max_verified_changes``: a setting's joint exemption, the fixes of error and warning
    findings that name a cause, the likeliest upstream causes when something is degraded,
    the fixes of findings that only say where (degraded-layer), then those of info findings,
    first those whose effect the statistics predict (shift-negative's gain in SQNR at its
    layers: evidence that the fix changes something), in the findings' order."""
    settings = result.settings
    infos = [p.info for p in result.points]
    chosen: dict[str, Change] = {}

    def add(changes: Iterable[Change]) -> None:
        for change in changes:
            if (len(chosen) < diagnosis.max_verified_changes and apply_change(settings, change) is not None
                    and not already_applied(settings, change, infos)):
                chosen.setdefault(change_key(change), change)

    fixes = [(f.rule, f.severity, f.recommendation.config) for f in findings
             if f.recommendation and f.recommendation.config]
    joint = joint_changes(findings)
    covered = [c for _, _, c in fixes if any(_contains(j, c) for j in joint)]
    loud = [(rule, c) for rule, s, c in fixes if s is not Severity.INFO and c not in covered]
    add(joint)
    add(c for rule, c in loud if rule not in NOT_A_CAUSE)  # the fixes of findings that name a cause
    if any(f.rule in SYMPTOM_RULES for f in findings) or _output_degraded(result, diagnosis):
        add(keep_wide([name]) for name, _ in upstream_ranking(result)[:UPSTREAM_CANDIDATES])
    add(c for rule, c in loud if rule in NOT_A_CAUSE)  # "keep it wide to test it", where it shows
    add(covered)
    quiet = [(f.predicted is None, c) for f in findings if f.severity is Severity.INFO and f.recommendation
             and (c := f.recommendation.config)]
    add(c for _, c in sorted(quiet, key=lambda q: q[0]))
    return list(chosen.values())


def joint_changes(findings: list[Finding]) -> list[Change]:
    """The exemptions from a setting that damages several points, all at once.

    Points that each carry part of a setting's damage (two heads a z_threshold cuts, and the
    concat that joins them) are each no help alone, since the others' error still dominates
    the output; exempted together they are. Only ``setting-damage`` is joined: the union of
    other rules' overrides ("keep all these at 16 bits") would be a wider model, not a fix."""
    joint: Change = {}
    count = 0
    for f in findings:
        config = f.recommendation.config if f.recommendation else {}
        if f.rule == JOINT_RULE and config and all(override_name(k) is not None for k in config):
            joint.update(config)
            count += 1
    return [joint] if count > 1 and len(joint) > 1 else []


def upstream_ranking(result: AnalysisResult) -> list[tuple[str, float]]:
    """Points on the path to the output, ranked by how much of the measured error they cause.

    Each point's jump in cumulative noise-to-signal ratio over the point it reads is split
    (:func:`_jump`): what its own quantization explains (its isolated ratio) is its own, the
    rest is error it received and amplified (a softmax or a normalisation of noisy logits),
    credited to the points it reads. Side branches that do not feed the output are never
    candidates. A cheap ranking from one simulation; re-simulation decides.
    """
    by_name = {p.name: p for p in result.points}
    eligible = {p.name for p in result.points if p.activation.quantize and p.info.feeds_output}
    score: dict[str, float] = defaultdict(float)
    for p in result.points:
        if p.name not in eligible or p.cumulative is None:
            continue
        producers, jump, own = _jump(p, by_name)
        score[p.name] += own
        for q in producers:
            if q.name in eligible:
                score[q.name] += jump - own
    return sorted(((n, s) for n, s in score.items() if s > 0), key=lambda item: -item[1])


def _jump(p: PointResult, by_name: dict[str, PointResult]) -> tuple[list[PointResult], float, float]:
    """The points ``p`` reads, its jump in cumulative noise-to-signal ratio over the worst of
    them, and the part of the jump its own quantization explains (the rest it received)."""
    producers = [by_name[n] for n in p.info.inputs if n in by_name and by_name[n].cumulative is not None]
    before = max((_nsr(q.cumulative) for q in producers), default=0.0)
    jump = max(_nsr(p.cumulative) - before, 0.0)
    own = min(_nsr(p.isolated), jump) if p.isolated is not None else jump
    return producers, jump, own


def _amplifier(result: AnalysisResult, point: PointResult) -> PointResult | None:
    """The point that reads ``point`` and amplifies the error it receives the most (a softmax
    of noisy logits), or None when no reader adds more than its own quantization explains."""
    by_name = {p.name: p for p in result.points}
    received = []
    for q in result.points:
        if point.name in q.info.inputs and q.cumulative is not None:
            _, jump, own = _jump(q, by_name)
            if jump - own > 0:
                received.append((jump - own, q))
    return max(received, key=lambda r: r[0])[1] if received else None


def apply_verified(findings: list[Finding], result: AnalysisResult, verified: list[Verification] | None,
                   diagnosis: DiagnosisSettings, config_location: Any = None) -> tuple[list[Finding], dict | None]:
    """The findings with their recommendations judged by measurement, and the top
    recommendation (None when no measured change helps). ``verified`` must have been
    measured under ``result.settings``; None when the verification has not run under them
    (only the already-applied filter then runs). When it has, a fix it did not re-simulate is
    not recommended (:func:`_unmeasured`)."""
    settings = result.settings
    infos = [p.info for p in result.points]
    base = result.output.error
    degraded = _output_degraded(result, diagnosis)
    measured = {change_key(v.change): v for v in verified or []}
    out = []
    for f in findings:
        rec = f.recommendation
        if rec is None or not rec.config:
            out.append(f)
        elif already_applied(settings, rec.config, infos):
            out.append(_applied(f))
        elif verified is not None and apply_change(settings, rec.config) is not None:  # a change it can test
            joint = [v for v in verified if len(v.change) > len(rec.config) and _contains(v.change, rec.config)]
            out.append(_judged(f, measured.get(change_key(rec.config)), joint, len(verified), result.output,
                               diagnosis, degraded))
        else:
            out.append(f)
    if base.count and not degraded and not result.estimated:
        out = [_unfelt(f, base) for f in out]
    if verified is None:
        return out, None
    best = max((v for v in verified if v.gain_db(result.output) >= diagnosis.min_fix_gain_db),
               key=lambda v: v.gain_db(result.output), default=None)
    if best is None:
        return out, None
    key = change_key(best.change)
    top = {"change": best.change, "description": describe(best.change),
           "output_sqnr_db": best.against(result.output).error.sqnr_db,
           "verified_sqnr_db": best.error.sqnr_db, "gain_db": best.gain_db(result.output),
           "top1_agreement": best.top1_agreement, "batches": len(best.batches), "tried": len(verified)}
    for i, f in enumerate(out):
        if f.recommendation and change_key(f.recommendation.config) == key:
            severity = Severity.WARNING if degraded and f.severity is Severity.INFO else f.severity
            out[i] = dataclasses.replace(f, severity=severity, evidence={**f.evidence, "best_fix": True})
            top["rule"] = f.rule
            return out, top
    finding = _best_fix(result, best, degraded, len(verified), config_location)
    top["rule"] = finding.rule
    return [*out, finding], top


def _judged(f: Finding, own: Verification | None, joint: list[Verification], tried: int, output: OutputMetrics,
            diagnosis: DiagnosisSettings, degraded: bool) -> Finding:
    """``f`` with its fix judged by its own verification, or when that alone does not help
    (or was not re-simulated), by the best ``joint`` change that includes it; unmeasured when
    neither was re-simulated (``tried`` changes were)."""
    base = output.error  # the simulation's: what the finding's own words rest on
    rec = f.recommendation
    assert rec is not None
    evidence = dict(f.evidence)
    alone = ""
    if own is not None:
        gain = own.gain_db(output)
        evidence["verified"] = _evidence(own, output)
        effect = _effect(own, output)
        if gain >= diagnosis.min_fix_gain_db:
            return dataclasses.replace(f, evidence=evidence, predicted=f"measured by re-simulation: {effect}")
        alone = f" Alone this gains {gain:+.1f} dB at the output;"
    helpful = [j for j in joint if j.gain_db(output) >= diagnosis.min_fix_gain_db]
    if helpful:
        best = max(helpful, key=lambda j: j.gain_db(output))
        together = Recommendation(
            f"{rec.explanation}{alone} applied together with the same fix at the other points "
            f"({describe(best.change)}) it gains {best.gain_db(output):+.1f} dB.",
            config=best.change, mct=rec.mct)
        return dataclasses.replace(
            f, evidence={**evidence, "verified_joint": _evidence(best, output)}, recommendation=together,
            predicted=f"measured by re-simulation, together: {_effect(best, output)}")
    if own is None:
        return _unmeasured(f, tried, output, diagnosis, degraded)
    where = ("the output's error comes from elsewhere (see the top recommendation)" if degraded else
             f"the model output keeps {base.sqnr_db:.1f} dB without it")
    tried = Recommendation(
        f"Tried {describe(rec.config)}: {effect} ({gain:+.1f} dB), under the {diagnosis.min_fix_gain_db:g} dB a fix "
        f"must gain, so it is not recommended; {where}.",
    )
    severity = Severity.INFO if f.severity is Severity.WARNING else f.severity
    evidence["withdrawn"] = True
    return dataclasses.replace(f, severity=severity, evidence=evidence, recommendation=tried,
                               predicted=f"measured by re-simulation: {effect}: does not help")


def _unmeasured(f: Finding, tried: int, output: OutputMetrics, diagnosis: DiagnosisSettings,
                degraded: bool) -> Finding:
    """``f`` when the verification did not re-simulate its fix (``max_verified_changes`` went to
    the fixes of louder findings and the likeliest causes): its effect on the model output is
    unknown, so it is not recommended (no config, no quick fix); the finding says so and how
    to measure it (``evidence["unmeasured"]``)."""
    rec = f.recommendation
    assert rec is not None and rec.config
    where = "" if degraded else f"; the model output keeps {output.error.sqnr_db:.1f} dB without it"
    text = (f"{rec.explanation} Not re-simulated ({tried} other changes were measured first; max_verified_changes = "
            f"{diagnosis.max_verified_changes}): its effect on the model output is unknown, so {describe(rec.config)} "
            f"is not offered as a fix{where}.")
    return dataclasses.replace(f, recommendation=Recommendation(text), evidence={**f.evidence, "unmeasured": True})


def unadvised(f: Finding) -> bool:
    """Whether ``f`` offers nothing to do where it is shown: its fix was re-simulated and did
    not help (``withdrawn``), was not re-simulated (``unmeasured``), or it is damage inherited
    from a cause elsewhere (``inherited_from``, which names it). Information of this kind is a
    hint in the editor."""
    ev = f.evidence
    return bool(ev.get("withdrawn") or ev.get("unmeasured") or "inherited_from" in ev)


def _unfelt(f: Finding, base: ErrorSums) -> Finding:
    """A degraded layer whose damage the model output does not feel (the output keeps at least
    ``sensitivity_output_sqnr_db``) is information, not a warning: nothing downstream needs it fixed."""
    if f.rule != "degraded-layer" or f.severity is not Severity.WARNING:
        return f
    return dataclasses.replace(f, severity=Severity.INFO,
                               evidence={**f.evidence, "output_sqnr_db": base.sqnr_db, "output_unaffected": True})


def _contains(change: Change, part: Change) -> bool:
    return all(key in change and change[key] == value for key, value in part.items())


def _applied(f: Finding) -> Finding:
    """The config already holds the fix: recommending it again would send the user in a loop."""
    return dataclasses.replace(f, recommendation=None, evidence={**f.evidence, "fix_applied": True},
                               severity=Severity.INFO if f.severity is Severity.WARNING else f.severity)


def _best_fix(result: AnalysisResult, best: Verification, degraded: bool, tried: int,
              config_location: Any) -> Finding:
    base = best.against(result.output).error
    names = [n for n in (override_name(k) for k in best.change) if n is not None]
    points = [p for p in result.points if p.name in names]
    locations = tuple(loc for p in points for loc in (p.info.source, p.info.call_site) if loc is not None)
    if not locations and config_location is not None:
        locations = (config_location,)
    why, reader = _why(result, points)
    return Finding(
        rule="best-fix",
        severity=Severity.WARNING if degraded else Severity.INFO,
        message=(f"{describe(best.change)} raises the output SQNR from {base.sqnr_db:.1f} to "
                 f"{best.error.sqnr_db:.1f} dB, the most of {tried} changes re-simulated"),
        points=tuple(p.name for p in points),
        locations=tuple(dict.fromkeys(locations)),
        evidence={"verified": _evidence(best, result.output), "tried": tried, "amplified_by": reader},
        recommendation=Recommendation(
            f"Of the changes re-simulated, this one gains most at the model output. {why}",
            config=best.change,
        ),
        predicted=f"measured by re-simulation: {_effect(best, result.output)}",
    )


def _why(result: AnalysisResult, points: list[PointResult]) -> tuple[str, str | None]:
    """Why one point's change helps most, from the simulation, and the reader that amplifies
    its error (where the error shows, though it starts here; None when its own quantization
    is the cause, or the change covers several points)."""
    if len(points) != 1 or points[0].cumulative is None or points[0].isolated is None:
        return ("Where other findings point further downstream, the error shows there but starts here (a softmax, "
                "sigmoid, normalisation or product amplifies the error of what it reads).", None)
    p = points[0]
    a = p.activation
    clips = max(a.max, -a.min if a.signed else 0.0) > a.threshold
    step = Grid.of(a.threshold, a.n_bits, a.signed).step
    grid = (f"At {a.n_bits} bits the step of {p.name} is {step:.3g} "
            f"(threshold {a.threshold:g} over [{a.min:.3g}, {a.max:.3g}]{', clipping what lies beyond' if clips else ''})")
    reader = _amplifier(result, p)
    if reader is not None and reader.cumulative is not None and reader.isolated is not None:
        kind = reader.info.activation or reader.info.op
        return (f"{reader.name} ({kind}) reads {p.name} and amplifies its error: the cumulative SQNR falls from "
                f"{p.cumulative.sqnr_db:.1f} dB at {p.name} to {reader.cumulative.sqnr_db:.1f} dB at {reader.name}, "
                f"whose own quantization alone keeps {reader.isolated.sqnr_db:.1f} dB. {grid}; the error shows "
                f"downstream but starts here.", reader.name)
    return f"Its own quantization costs the most: its isolated SQNR is {p.isolated.sqnr_db:.1f} dB. {grid}.", None


def _evidence(v: Verification, output: OutputMetrics) -> dict[str, Any]:
    return {"change": v.change, "output_sqnr_db": v.against(output).error.sqnr_db, "verified_sqnr_db": v.error.sqnr_db,
            "gain_db": v.gain_db(output), "gain_db_by_batch": batch_gains(v, output), "batches": len(v.batches),
            "top1_agreement": v.top1_agreement, "custom": v.custom}


def batch_gains(v: Verification, output: OutputMetrics) -> list[float]:
    """The change's gain in output SQNR on each batch it was measured on ([] when the batches
    are not known): a few samples can carry most of a batch's error, so batches can disagree
    widely."""
    reference = v.against(output)
    if len(v.batches) != len(reference.batches):
        return []
    return [after.sqnr_db - before.sqnr_db for before, after in zip(reference.batches, v.batches)]


SETTLE_SPREAD_DB = 2.0
"""The top recommendation is measured again on every batch when its gain on the simulated
batches differs by more than this between them: it is the number a user acts on, and about
half the spread is how far off it may be (probability_heads: +17.6 and +8.0 dB on two batches,
+4.5 dB on all eight)."""


def to_settle(verified: list[Verification], output: OutputMetrics, min_gain_db: float) -> list[int]:
    """Which verified changes the simulated batches cannot settle, to be measured again on
    every batch: those the batches disagree on (:func:`undecided`), and the best of the others
    (the top recommendation) when its batches are more than :data:`SETTLE_SPREAD_DB` apart.
    Changes already measured on every batch are settled: after they are, this names only a
    runner-up that now looks best and whose batches lie apart (none, usually)."""
    at = [i for i, v in enumerate(verified) if v.reference is None and undecided(v, output, min_gain_db)]
    passing = [i for i, v in enumerate(verified) if i not in at and v.gain_db(output) >= min_gain_db]
    if passing:
        best = max(passing, key=lambda i: verified[i].gain_db(output))
        gains = batch_gains(verified[best], output)
        if verified[best].reference is None and gains and max(gains) - min(gains) > SETTLE_SPREAD_DB:
            at.append(best)
    return sorted(at)


def undecided(v: Verification, output: OutputMetrics, min_gain_db: float) -> bool:
    """Whether the batches ``v`` was measured on disagree about whether it gains ``min_gain_db``
    (some do, some do not): then its simulated batches cannot decide, and more batches must."""
    gains = batch_gains(v, output)
    return len(gains) > 1 and min(gains) < min_gain_db <= max(gains)


def _effect(v: Verification, output: OutputMetrics) -> str:
    """'output SQNR 16.9 -> 19.2 dB on all 8 batches (by batch ...), top-1 agreement ...'."""
    reference = v.against(output)
    where = f" on all {len(v.batches)} batches" if v.reference is not None else ""
    return f"output SQNR {reference.error.sqnr_db:.1f} -> {v.error.sqnr_db:.1f} dB{where}{_extras(v, output)}"


def _extras(v: Verification, output: OutputMetrics) -> str:
    """The rest of the measured effect: the spread of the gain over the batches, top-1
    agreement, and the user's metrics (before -> after)."""
    gains = batch_gains(v, output)
    low, high = (min(gains), max(gains)) if gains else (0.0, 0.0)
    text = f" (by batch {low:+.1f} to {high:+.1f} dB)" if len(gains) > 1 and f"{low:+.1f}" != f"{high:+.1f}" else ""
    text += f", top-1 agreement {100 * v.top1_agreement:.1f}%" if v.top1_agreement is not None else ""
    for name, value in v.custom.items():
        before = v.against(output).custom.get(name)
        text += f", {name} {before:.4g} -> {value:.4g}" if before is not None else f", {name} {value:.4g}"
    return text


def _output_degraded(result: AnalysisResult, diagnosis: DiagnosisSettings) -> bool:
    out = result.output.error
    return bool(out.count) and out.sqnr_db < diagnosis.sensitivity_output_sqnr_db


def _nsr(sums: ErrorSums | None) -> float:
    return sums.sum_ee / sums.sum_xx if sums is not None and sums.sum_xx > 0 else 0.0
