"""The diagnosis: turn an analysis result into findings (numpy only, no forward pass).

``diagnose`` runs every rule, explains degraded layers that no rule explains, adds the
library's own line of a point made inside library code to its findings' related lines,
drops suppressed findings (``ignore = [...]`` in the config, ``# quantlens:
ignore[rule-id]`` on a reported line; ``rule-id:point-name`` names one point), and then
merges findings that land on one line (layers made in a loop, by a helper or by a library)
into one that names every point it covers. Suppression comes before merging, so naming one
point on a shared line keeps the others. Last, a degraded layer that only inherits its error
names the point where that starts, instead of a fix of its own.
"""

from __future__ import annotations

import dataclasses
import linecache
import re
from collections import defaultdict
from collections.abc import Callable, Iterable

from quantlens.core.activations import SearchMemo
from quantlens.core.diagnosis import rules_data, rules_error, rules_range, rules_settings, rules_weights
from quantlens.core.diagnosis.catalog import RULES
from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.result import AnalysisResult

__all__ = ["NOT_A_CAUSE", "RULES", "DiagnosisSettings", "diagnose"]

Rule = Callable[[Context], list[Finding]]

RULE_ORDER: tuple[Rule, ...] = (
    rules_data.nonfinite,
    rules_error.degraded_layers,
    rules_error.output_and_global,
    rules_error.first_divergence,
    rules_error.sensitive_layers,
    rules_error.mixed_precision_last_layer,
    rules_range.outliers_zscore,
    rules_range.outliers_iqr,
    rules_range.shift_negative,
    rules_range.unbalanced_concat,
    rules_range.activation_products,
    rules_range.normalization_inputs,
    rules_data.dataset_size,
    rules_data.batch_shape,
    rules_data.dataset_mismatch,
    rules_weights.weight_precision,
    rules_weights.bias_correction,
    rules_data.calibrator_comparison,
    rules_settings.setting_damage,
)

NOT_A_CAUSE = frozenset({"degraded-layer", "global-degradation", "sensitive-layers", "first-divergence",
                         "output-degraded"})
"""Rules that say where or how much, not why: they do not explain a degraded layer."""

_IGNORE = re.compile(r"#\s*quantlens:\s*ignore(?:\[([^\]]*)\])?")

NAMED_POINTS = 5
"""Points a merged finding's message names before "and N more" (its ``points`` has them all)."""


def diagnose(result: AnalysisResult, settings: DiagnosisSettings | None = None,
             ignore: Iterable[str] = (), memo: SearchMemo | None = None) -> list[Finding]:
    """Every rule's findings, suppressions applied, merged per line. ``memo`` keeps the rules'
    threshold re-searches of this calibration for the next call (a config edit)."""
    ctx = Context(result, settings or DiagnosisSettings(), memo)
    findings: list[Finding] = []
    for rule in RULE_ORDER:
        findings.extend(rule(ctx))
    findings.extend(_unexplained(ctx, findings))
    findings = _symptoms_as_information(findings)
    findings = [_with_library_lines(f, ctx) for f in findings]
    ignored = frozenset(ignore)
    findings = [f for f in findings if not matches(f, ignored) and not suppressed(f)]
    findings = aggregate(findings, result)
    findings = _name_causes(findings, result)
    findings.sort(key=lambda f: (-f.severity.rank, _order(result, f), f.rule))
    return findings


def matches(finding: Finding, entries: Iterable[str]) -> bool:
    """Whether a suppression entry names the finding: ``rule-id`` every finding of the rule,
    ``rule-id:point-name`` the rule's finding about that point (its first point, the one it
    reports), so on a line shared by several points the others stay."""
    for entry in entries:
        rule, _, point = (part.strip() for part in entry.partition(":"))
        if rule == finding.rule and (not point or point == (finding.points[0] if finding.points else None)):
            return True
    return False


def suppressed(finding: Finding) -> bool:
    """True when a line the finding is shown on says ``# quantlens: ignore[...]`` for it."""
    for loc in (*finding.locations, *finding.related):
        if not loc.line:
            continue
        linecache.checkcache(loc.file)  # a long-running server must read the file as saved now
        match = _IGNORE.search(linecache.getline(loc.file, loc.line))
        if match is None:
            continue
        names = match.group(1)
        if names is None or matches(finding, names.split(",")):
            return True
    return False


def _with_library_lines(finding: Finding, ctx: Context) -> Finding:
    """The finding with the library lines of the points it is shown at as related lines (where
    torch or a model zoo made the module or applied the op), so an editor can open them."""
    shown = set(finding.locations)
    lines = [p.info.library_source for name in finding.points if (p := ctx.by_name.get(name)) is not None
             and p.info.library_source is not None and (p.info.source in shown or p.info.call_site in shown)]
    extra = tuple(loc for loc in dict.fromkeys(lines) if loc not in finding.related and loc not in shown)
    return dataclasses.replace(finding, related=(*finding.related, *extra)) if extra else finding


def aggregate(findings: list[Finding], result: AnalysisResult) -> list[Finding]:
    """One finding per rule and creating line: "(3 of 12 points created here)"."""
    per_line: dict[Location, int] = defaultdict(int)
    for p in result.points:
        if p.info.source is not None:
            per_line[p.info.source] += 1
    groups: dict[tuple[str, Location | None], list[Finding]] = defaultdict(list)
    order: list[tuple[str, Location | None]] = []
    for f in findings:
        key = (f.rule, f.location if len(f.points) == 1 else None)
        if key[1] is None:
            key = (f.rule, Location(f"__single__{id(f)}"))
        if key not in groups:
            order.append(key)
        groups[key].append(f)
    merged: list[Finding] = []
    for key in order:
        group = groups[key]
        if len(group) == 1:
            merged.append(group[0])
            continue
        worst = max(group, key=lambda f: f.severity.rank)
        total = per_line.get(key[1], len(group)) if key[1] is not None else len(group)
        names = tuple(dict.fromkeys(n for f in group for n in f.points))
        related = tuple(dict.fromkeys(loc for f in group for loc in (*f.locations[1:], *f.related)))
        covered = [f.points[0] for f in group]
        merged.append(Finding(
            rule=worst.rule,
            severity=worst.severity,
            message=f"{worst.message}; points: {_named(covered)} ({len(group)} of {total} points created at this line)",
            points=names,
            locations=worst.locations[:1],
            evidence={**worst.evidence, "aggregated": [{**f.evidence, "point": f.points[0], "message": f.message}
                                                       for f in group]},
            recommendation=worst.recommendation,
            predicted=worst.predicted,
            related=related,
        ))
    return merged


def _named(points: list[str]) -> str:
    """The first :data:`NAMED_POINTS` names, then how many more."""
    shown = ", ".join(points[:NAMED_POINTS])
    rest = len(points) - NAMED_POINTS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _unexplained(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """Degraded points that no rule explains and whose own quantization is to blame.

    A point that is fine in isolation but degraded cumulatively inherits upstream error:
    first-divergence names where that starts, so it is not "unexplained".
    """
    explained = _causes(findings, Severity.INFO)
    out = []
    for name in sorted(ctx.degraded - set(explained)):
        p = ctx.by_name[name]
        if p.isolated is not None and not ctx.failed(p.isolated, p.custom):
            continue
        bits = f"{p.activation.n_bits}-bit activations" + (f", {p.weights.n_bits}-bit weights" if p.weights else "")
        out.append(Finding(
            rule="degraded-unexplained",
            severity=Severity.WARNING,
            message=(f"{name} is degraded by its own quantization (isolated SQNR {p.isolated.sqnr_db:.1f} dB with "
                     f"{bits}) and no rule finds a cause in its ranges, weights or data"),
            points=(name,),
            locations=ctx.locations(p),
            evidence={"cumulative_sqnr_db": p.cumulative.sqnr_db if p.cumulative else None,
                      "isolated_sqnr_db": p.isolated.sqnr_db if p.isolated else None,
                      "activation_n_bits": p.activation.n_bits,
                      "weights_n_bits": p.weights.n_bits if p.weights else None},
            recommendation=Recommendation(
                "Test it directly: keep this point at 16 bits (or unquantized) and compare; consider GPTQ or QAT.",
                config=rules_error.keep_wide([name]),
            ),
        ))
    return out


def _causes(findings: list[Finding], at_least: Severity) -> dict[str, str]:
    """Point -> the rule of the first finding of at least ``at_least`` that names its cause."""
    named: dict[str, str] = {}
    for f in findings:
        if f.rule not in NOT_A_CAUSE and f.severity.rank >= at_least.rank:
            for n in f.points:
                named.setdefault(n, f.rule)
    return named


def _symptoms_as_information(findings: list[Finding]) -> list[Finding]:
    """A degraded-layer finding says where the error shows; when a warning names the cause at
    that point (its weights, outliers, a setting), that one carries it and the symptom is
    information, so the line warns once."""
    explained = _causes(findings, Severity.WARNING)
    return [dataclasses.replace(f, severity=Severity.INFO, evidence={**f.evidence, "explained_by": explained[f.points[0]]})
            if f.rule == "degraded-layer" and f.severity is Severity.WARNING and f.points and f.points[0] in explained
            else f for f in findings]


def _inherited_points(finding: Finding) -> list[str]:
    """The points of a degraded-layer finding when every one inherits its error from upstream
    (an aggregated entry without its own ``inherited`` is judged by the finding's); else []."""
    if finding.rule != "degraded-layer" or "inherited" not in finding.evidence:
        return []
    own = finding.evidence["inherited"]
    entries = finding.evidence.get("aggregated") or [{"point": name} for name in finding.points]
    if not all(entry.get("inherited", own) for entry in entries):
        return []
    return [entry["point"] for entry in entries]


def _name_causes(findings: list[Finding], result: AnalysisResult) -> list[Finding]:
    """Inherited degraded-layer findings name where their error starts, and point to its line.

    Such a point passes on its own quantization (rules_error.degraded_layers): keeping it wide
    removes at most a quarter of its noise, the rest it received. So it has no fix of its own
    and offers no config change (it is never re-simulated for itself, nor reported as an
    untested fix; the verification's upstream search still tries the points that amplify
    what they receive), and it says so in the same words in the CLI, SARIF, the HTML report
    and the editor."""
    causes = _Causes(result, findings)
    out = []
    for f in findings:
        points = _inherited_points(f)
        if not points:
            out.append(f)
            continue
        cause = causes.of(points)
        ev = f.evidence
        source = f"from {cause}" if cause is not None else "from upstream"
        numbers = (f"cumulative SQNR {ev['cumulative_sqnr_db']:.1f} dB; its own quantization alone keeps "
                   f"{ev['isolated_sqnr_db']:.1f} dB")
        if len(points) == 1:
            message = f"{points[0]} inherits its error {source} ({numbers})"
        else:
            others = len(points) - 1
            message = (f"{points[0]} and {others} other point{'s' if others > 1 else ''} created at this line "
                       f"inherit their error {source} ({points[0]}: {numbers}); points: {_named(points)}")
        explanation = (f"Fix {cause or 'the point where the error starts'} first: {points[0]}'s own quantization "
                       "passes, so keeping it wide would not remove the error it receives.")
        at_cause = causes.points[cause].info.line if cause is not None else None
        pointer = (at_cause,) if at_cause is not None and at_cause not in f.locations else ()
        out.append(dataclasses.replace(
            f, severity=Severity.INFO, message=message, evidence={**ev, "inherited_from": cause},
            recommendation=Recommendation(explanation),
            related=(*pointer, *(loc for loc in f.related if loc not in pointer))))
    return out


class _Causes:
    """The cause of an inherited error: the point first-divergence names when it comes earlier
    in execution order, else the nearest earlier point that a rule naming a cause reports,
    else the earliest degraded point before it."""

    def __init__(self, result: AnalysisResult, findings: list[Finding]):
        self.points = {p.name: p for p in result.points}
        self.divergence = next((f.points[0] for f in findings if f.rule == "first-divergence" and f.points), None)
        self.explained = self._by_order(n for f in findings if f.rule not in NOT_A_CAUSE for n in f.points)
        self.degraded = self._by_order(n for f in findings if f.rule == "degraded-layer" for n in f.points)

    def _by_order(self, names: Iterable[str]) -> list[str]:
        return sorted({n for n in names if n in self.points}, key=self._order)

    def _order(self, name: str) -> int:
        return self.points[name].info.order

    def of(self, group: list[str]) -> str | None:
        """The cause of the points in ``group`` (strictly before the earliest of them)."""
        known = [n for n in group if n in self.points]
        if not known:
            return None
        start = min(self._order(n) for n in known)
        if self.divergence in self.points and self._order(self.divergence) < start:
            return self.divergence
        earlier = [n for n in self.explained if self._order(n) < start]
        if earlier:
            return earlier[-1]
        return next((n for n in self.degraded if self._order(n) < start), None)


def _order(result: AnalysisResult, finding: Finding) -> int:
    for p in result.points:
        if finding.points and p.name == finding.points[0]:
            return p.info.order
    return 1 << 30
