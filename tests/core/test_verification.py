"""Verified advice on hand-built results: which changes are re-simulated, how a measurement
judges a recommendation, and the config-change values they rest on (core/changes.py)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest

from quantlens.core.changes import already_applied, apply_change, describe, override_name
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.measurements import OutputMetrics, Verification
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.stats import PointInfo
from quantlens.core.verification import (
    apply_verified,
    candidates,
    joint_changes,
    to_settle,
    undecided,
    upstream_ranking,
)

WIDE = {"activation_n_bits": 16, "weights_n_bits": 16}


def _sums(db: float) -> ErrorSums:
    """Error sums of a signal of energy 1000 at ``db`` SQNR (noise uncorrelated)."""
    ee = 1000.0 * 10 ** (-db / 10)
    return ErrorSums(100.0, 1000.0, 1000.0 + ee, 1000.0, ee)


def _point(name: str, inputs: list[str], cumulative_db: float, isolated_db: float, *, feeds_output: bool = True,
           module_types: list[str] | None = None) -> PointResult:
    info = PointInfo(name=name, kind="module", op="Linear", modules=[name], module_types=module_types or ["Linear"],
                     activation=None, source=Location("/ws/model.py", 10 + len(name)), inputs=inputs,
                     feeds_output=feeds_output)
    activation = SimpleNamespace(quantize=True, n_bits=8, signed=True, threshold=4.0, min=-3.0, max=3.5)
    return PointResult(info=info, activation=activation,  # type: ignore[arg-type]
                       isolated=_sums(isolated_db), cumulative=_sums(cumulative_db))


def _result(points: list[PointResult], output_db: float, settings: QuantSettings | None = None) -> AnalysisResult:
    return AnalysisResult(settings or QuantSettings(), calibration=None, points=points,  # type: ignore[arg-type]
                          output=OutputMetrics(_sums(output_db)))


def _softmax_chain() -> AnalysisResult:
    """body -> logits -> softmax (the output), and a side head ``aux`` off the body."""
    return _result([
        _point("body", [], 40.0, 40.0),
        _point("logits", ["body"], 36.0, 37.0),
        _point("softmax", ["logits"], 13.0, 45.0),
        _point("aux", ["body"], 5.0, 5.0, feeds_output=False),
    ], output_db=13.0)


def _finding(rule: str, point: str, config: dict[str, Any], severity: Severity = Severity.WARNING) -> Finding:
    return Finding(rule, severity, f"{point} looks bad", points=(point,), locations=(Location("/ws/model.py", 3),),
                   recommendation=Recommendation("fix it", config=config))


def _keep(name: str) -> dict[str, Any]:
    return {f'overrides."{name}"': dict(WIDE)}


# -- changes -----------------------------------------------------------------------------

def test_a_change_applies_settings_and_merges_overrides() -> None:
    settings = QuantSettings(overrides={"fc": PointOverride(quantize=True, z_threshold=9.0)})
    changed = apply_change(settings, {"z_threshold": 5, 'overrides."fc"': {"activation_n_bits": 16}})
    assert changed is not None and changed.z_threshold == 5.0
    assert changed.overrides["fc"] == PointOverride(activation_n_bits=16, z_threshold=9.0)
    assert settings.z_threshold == math.inf  # the original is untouched
    assert apply_change(settings, {"num_calibration_batches": 64}) is None  # data: no re-simulation tests it
    assert apply_change(settings, {"activation_n_bits": 99}) is None
    assert apply_change(settings, {}) is None


def test_already_applied_reads_the_effective_override_of_the_point() -> None:
    fc = _point("fc", [], 30, 30, module_types=["Linear"]).info
    by_type = QuantSettings(overrides={"Linear": PointOverride(activation_n_bits=16, weights_n_bits=16)})
    assert already_applied(by_type, _keep("fc"), [fc])
    assert not already_applied(QuantSettings(), _keep("fc"), [fc])
    assert already_applied(QuantSettings(z_threshold=9.0), {"z_threshold": 9}, [fc])
    assert not already_applied(QuantSettings(), {"num_calibration_batches": 8}, [fc])


def test_describe_groups_points_given_the_same_fields() -> None:
    inf = {"z_threshold": math.inf}
    assert describe({'overrides."a"': inf, 'overrides."b"': inf}) == "a, b with z_threshold = inf"
    assert describe(_keep("fc2")) == "fc2 at 16 bits"
    assert describe({"shift_negative_activation_correction": True}) == "shift_negative_activation_correction = true"
    assert override_name('overrides."blocks.1.fc"') == "blocks.1.fc" and override_name("z_threshold") is None


# -- which changes are re-simulated ---------------------------------------------------------

def test_the_logits_feeding_a_softmax_rank_first_and_side_heads_never() -> None:
    ranking = [name for name, _ in upstream_ranking(_softmax_chain())]
    assert ranking[0] == "logits"  # the softmax's jump is error it received, not its own
    assert "aux" not in ranking
    # the logits' own jump over the body, plus the softmax's jump minus the softmax's own noise
    nsr = {db: 10 ** (-db / 10) for db in (13.0, 36.0, 40.0, 45.0)}
    expected = (nsr[36.0] - nsr[40.0]) + (nsr[13.0] - nsr[36.0] - nsr[45.0])
    assert dict(upstream_ranking(_softmax_chain()))["logits"] == pytest.approx(expected, rel=1e-9)


def test_candidates_put_causes_first_then_upstream_points_then_symptoms() -> None:
    result = _softmax_chain()
    findings = [
        _finding("first-divergence", "softmax", _keep("softmax"), Severity.INFO),
        _finding("outliers-zscore", "body", {"z_threshold": 9}),
        _finding("dataset-size", "body", {"num_calibration_batches": 64}),  # not a quantization setting
        _finding("degraded-layer", "softmax", _keep("softmax")),
    ]
    changes = candidates(result, findings, DiagnosisSettings(max_verified_changes=4))
    # a cause's fix, the upstream ranking, then "keep it wide to test it" where the error shows
    assert changes == [{"z_threshold": 9}, _keep("logits"), _keep("body"), _keep("softmax")]
    applied = _result(result.points, 13.0, QuantSettings(z_threshold=9.0))
    assert {"z_threshold": 9} not in candidates(applied, findings, DiagnosisSettings())


def test_only_setting_damage_is_joined() -> None:
    inf = {"z_threshold": math.inf}
    findings = [_finding("setting-damage", "a", {'overrides."a"': inf}),
                _finding("setting-damage", "b", {'overrides."b"': inf}),
                _finding("outliers-iqr", "a", _keep("a")), _finding("outliers-iqr", "b", _keep("b"))]
    assert joint_changes(findings) == [{'overrides."a"': inf, 'overrides."b"': inf}]


# -- how a measurement judges a recommendation ---------------------------------------------

def _verified(change: dict[str, Any], db: float) -> Verification:
    return Verification(change, _sums(db), top1_agreement=0.99)


def test_a_fix_that_gains_is_quoted_and_one_that_does_not_is_withdrawn() -> None:
    result = _softmax_chain()
    helps = _finding("outliers-zscore", "body", {"z_threshold": 9})
    useless = _finding("degraded-layer", "softmax", _keep("softmax"))
    findings, top = apply_verified([helps, useless], result,
                                   [_verified({"z_threshold": 9}, 15.5), _verified(_keep("softmax"), 13.4)],
                                   DiagnosisSettings())
    judged = {f.rule: f for f in findings}
    assert judged["outliers-zscore"].predicted == (
        "measured by re-simulation: output SQNR 13.0 -> 15.5 dB, top-1 agreement 99.0%")
    assert judged["outliers-zscore"].evidence["verified"]["gain_db"] == pytest.approx(2.5)
    withdrawn = judged["degraded-layer"]
    assert withdrawn.severity is Severity.INFO and withdrawn.recommendation.config == {}
    assert withdrawn.evidence["withdrawn"] and "withdrawn" not in judged["outliers-zscore"].evidence
    assert withdrawn.recommendation.explanation.startswith("Tried softmax at 16 bits: output SQNR 13.0 -> 13.4 dB")
    assert withdrawn.recommendation.explanation.endswith("the output's error comes from elsewhere (see the top "
                                                         "recommendation).")
    assert top["change"] == {"z_threshold": 9} and top["rule"] == "outliers-zscore"


def test_the_measured_gain_shows_its_spread_over_the_batches() -> None:
    """Two simulated batches at 12 and 14 dB: a change that gains 7 and 8 dB on them is
    recommended with that spread; one that gains +2.5 on the first and -1.0 on the second
    (+0.5 overall) is withdrawn with its spread (the pipeline measures such a change again on
    every batch: test_verified_advice), and ``undecided`` says the batches disagree on it."""
    result = _softmax_chain()
    result.output.batches = [_sums(12.0), _sums(14.0)]
    steady = Verification(_keep("logits"), _sums(20.0), 0.99, {}, [_sums(19.0), _sums(22.0)])
    split = Verification({"z_threshold": 9}, _sums(13.5), 0.99, {}, [_sums(14.5), _sums(13.0)])
    findings, _ = apply_verified([_finding("outliers-zscore", "body", {"z_threshold": 9}),
                                  _finding("first-divergence", "logits", _keep("logits"))],
                                 result, [steady, split], DiagnosisSettings())
    judged = {f.rule: f for f in findings}
    kept, withdrawn = judged["first-divergence"], judged["outliers-zscore"]
    assert kept.evidence["verified"]["gain_db_by_batch"] == pytest.approx([7.0, 8.0])
    assert kept.predicted == ("measured by re-simulation: output SQNR 13.0 -> 20.0 dB (by batch +7.0 to +8.0 dB), "
                              "top-1 agreement 99.0%")
    assert withdrawn.evidence["withdrawn"]
    assert withdrawn.evidence["verified"]["gain_db_by_batch"] == pytest.approx([2.5, -1.0])
    assert withdrawn.predicted == ("measured by re-simulation: output SQNR 13.0 -> 13.5 dB (by batch -1.0 to +2.5 dB), "
                                   "top-1 agreement 99.0%: does not help")
    assert undecided(split, result.output, 1.0) and not undecided(steady, result.output, 1.0)
    assert not undecided(split, result.output, 3.0)  # no batch gains 3 dB: they agree it does not


def test_what_the_simulated_batches_cannot_settle_is_measured_again() -> None:
    """Batches at 12 and 14 dB. Measured again on every batch: a change they disagree on
    (+2.5 / -1.0 dB), and the top recommendation when its two gains lie more than
    SETTLE_SPREAD_DB apart (+12 / +7 dB); not a close runner-up (+7 / +8 dB), nor the top
    when its batches agree."""
    output = _softmax_chain().output
    output.batches = [_sums(12.0), _sums(14.0)]
    split = Verification({"z_threshold": 9}, _sums(13.5), 0.99, {}, [_sums(14.5), _sums(13.0)])
    steady = Verification(_keep("logits"), _sums(20.0), 0.99, {}, [_sums(19.0), _sums(22.0)])
    wide = Verification(_keep("body"), _sums(22.0), 0.99, {}, [_sums(24.0), _sums(21.0)])
    assert to_settle([split, steady, wide], output, 1.0) == [0, 2]
    assert to_settle([split, steady], output, 1.0) == [0]  # the top (steady) is +7 / +8: no need
    assert to_settle([steady], output, 1.0) == []
    assert to_settle([wide], output, 13.0) == []  # the best gains under 13 dB: no recommendation to quote
    # once measured on every batch, a change is settled: the best is not listed again, and a
    # runner-up is only when the settled best fell below it and its own batches lie apart
    assert to_settle([split, steady, dataclasses.replace(wide, reference=output)], output, 1.0) == [0]
    fell = Verification(_keep("body"), _sums(15.0), 0.99, {}, [_sums(14.0), _sums(16.0)], reference=output)
    assert to_settle([fell, wide], output, 1.0) == [1]
    assert to_settle([fell, steady], output, 1.0) == []


def test_an_upstream_cause_no_finding_named_becomes_the_best_fix() -> None:
    result = _softmax_chain()
    symptom = _finding("degraded-layer", "softmax", _keep("softmax"))
    findings, top = apply_verified([symptom], result,
                                   [_verified(_keep("softmax"), 13.0), _verified(_keep("logits"), 22.2)],
                                   DiagnosisSettings())
    (best,) = [f for f in findings if f.rule == "best-fix"]
    assert best.points == ("logits",) and best.severity is Severity.WARNING  # the output is degraded
    assert best.message == "logits at 16 bits raises the output SQNR from 13.0 to 22.2 dB, the most of 2 changes re-simulated"
    assert best.recommendation.config == _keep("logits") and best.locations == (result.points[1].info.source,)
    assert top["gain_db"] == pytest.approx(9.2) and top["rule"] == "best-fix"
    # the softmax reads the logits and receives their error: 36 dB at the logits, 13 dB after
    # it, though its own quantization keeps 45 dB
    assert best.evidence["amplified_by"] == "softmax"
    assert best.recommendation.explanation == (
        "Of the changes re-simulated, this one gains most at the model output. softmax (Linear) reads logits and "
        "amplifies its error: the cumulative SQNR falls from 36.0 dB at logits to 13.0 dB at softmax, whose own "
        "quantization alone keeps 45.0 dB. At 8 bits the step of logits is 0.0312 (threshold 4 over [-3, 3.5]); the "
        "error shows downstream but starts here.")


def test_a_fix_the_config_already_holds_is_not_recommended_again() -> None:
    result = _result(_softmax_chain().points, 13.0,
                     QuantSettings(overrides={"softmax": PointOverride(activation_n_bits=16, weights_n_bits=16)}))
    (f,), top = apply_verified([_finding("degraded-layer", "softmax", _keep("softmax"))], result, [],
                               DiagnosisSettings())
    assert f.recommendation is None and f.evidence["fix_applied"] and f.severity is Severity.INFO
    assert top is None


def test_a_fix_the_verification_did_not_re_simulate_is_not_offered() -> None:
    """Only measured advice is a fix: once the verification has run, a recommendation it did
    not re-simulate (max_verified_changes went to others) keeps its finding and its words, says
    it was not measured and how many were, and loses its config; before the verification has
    run (the diagnosis that chooses what to verify) it is left as it is."""
    result = _softmax_chain()
    finding = _finding("degraded-layer", "softmax", _keep("softmax"))
    (f, best), top = apply_verified([finding], result, [_verified(_keep("logits"), 22.2)], DiagnosisSettings())
    assert f.recommendation.config == {} and f.evidence["unmeasured"] and f.severity is finding.severity
    assert f.recommendation.explanation == (
        f"{finding.recommendation.explanation} Not re-simulated (1 other changes were measured first; "
        "max_verified_changes = 6): its effect on the model output is unknown, so softmax at 16 bits is not offered "
        "as a fix.")
    assert best.rule == "best-fix" and best.recommendation.config == top["change"] == _keep("logits")
    (same,), top = apply_verified([finding], result, None, DiagnosisSettings())
    assert same == finding and top is None


def test_the_measured_effect_quotes_the_users_metric_before_and_after() -> None:
    result = _softmax_chain()
    result.output.custom["my_mse"] = 0.25
    v = Verification({"z_threshold": 9}, _sums(20.0), top1_agreement=None, custom={"my_mse": 0.0625})
    (f,), _ = apply_verified([_finding("outliers-zscore", "body", {"z_threshold": 9})], result, [v],
                             DiagnosisSettings())
    assert f.predicted == "measured by re-simulation: output SQNR 13.0 -> 20.0 dB, my_mse 0.25 -> 0.0625"


def test_one_verified_point_that_recovers_the_output_means_the_problem_is_not_global() -> None:
    from quantlens.core.diagnosis.context import Context
    from quantlens.core.diagnosis.rules_error import _one_point_recovers

    result = _softmax_chain()
    assert not _one_point_recovers(Context(result, DiagnosisSettings()))
    result.verified = [_verified(_keep("logits"), 22.2)]  # +9.2 dB, to a non-degraded 22 dB
    assert _one_point_recovers(Context(result, DiagnosisSettings()))
    result.verified = [_verified({**_keep("logits"), **_keep("body")}, 40.0)]  # two points: says nothing
    assert not _one_point_recovers(Context(result, DiagnosisSettings()))
