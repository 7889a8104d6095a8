"""Verified advice end to end on fixtures: what the re-simulation of a recommended change
measured is what applying it gives, and applying it never brings it back.

The independent answer for a verification is a fresh run with the change written into the
config: the same batches, new thresholds and weights, a full simulation of its own. The two
paths share no state (the verification reuses the first run's float outputs and weights for
the points the change leaves alone), so they agree only if both are right.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from quantlens.core.changes import apply_change, change_key
from quantlens.core.findings import Severity
from quantlens.core.metrics import ErrorSums
from quantlens.core.rediagnose import rediagnose
from quantlens.core.result import AnalysisResult
from tests.analyses import fixture_analysis, measured

LOOPS = ("probability_heads", "relu_tail", "mobilenet_like")
"""Fixtures whose top recommendation is applied and rerun (a run each)."""


def _applied(name: str, change: dict) -> AnalysisResult:
    from quantlens.core.torch_engine.pipeline import measure_project

    config, calibration, _ = measured(name)
    settings = apply_change(config.settings, change)
    assert settings is not None
    changed = dataclasses.replace(config, settings=settings)
    calibration, measurements, _ = measure_project(changed, calibration=calibration)
    return rediagnose(calibration, changed, measurements)


@pytest.mark.parametrize("name", LOOPS)
def test_applying_the_top_recommendation_gives_what_was_measured_and_never_brings_it_back(name: str) -> None:
    before = fixture_analysis(name)
    top = before.top_recommendation
    assert top is not None and top["gain_db"] >= 1.0
    after = _applied(name, top["change"])
    key = change_key(top["change"])
    # the rerun simulates the first batches; a change measured again on every batch (its
    # simulated batches disagreed) gave those batches the same errors
    (verified,) = [v for v in before.verified if change_key(v.change) == key]
    first = sum(verified.batches[: before.simulation_batches], ErrorSums())
    assert after.output.error.sqnr_db == pytest.approx(first.sqnr_db, abs=1e-6)
    assert (verified.reference is not None) or first.sqnr_db == pytest.approx(top["verified_sqnr_db"], abs=1e-9)
    assert not [f.rule for f in after.findings if f.recommendation and change_key(f.recommendation.config) == key]
    assert after.top_recommendation is None or change_key(after.top_recommendation["change"]) != key


def test_the_logits_a_softmax_amplifies_are_the_top_recommendation() -> None:
    """probability_heads: a confident 527-class softmax over logits (``tagger``, isolated SQNR
    36 dB). The error shows at the softmax, where first-divergence points; keeping the softmax
    wide does not help (measured), keeping its logits wide does, and best-fix says so."""
    result = fixture_analysis("probability_heads")
    top = result.top_recommendation
    assert top is not None and top["change"] == {'overrides."tagger"': {"activation_n_bits": 16, "weights_n_bits": 16}}
    # its two simulated batches gain +17.6 and +8.0 dB: too far apart to quote, so it is
    # measured again on all 8 (+4.5 dB there)
    (verified,) = [v for v in result.verified if v.change == top["change"]]
    assert verified.reference is not None and len(verified.batches) == 8
    assert top["rule"] == "best-fix" and top["gain_db"] >= 3.0
    assert result.point("tagger").isolated.sqnr_db > 30  # the logits' own error is fine: ranking by it misses them
    (best,) = [f for f in result.findings if f.rule == "best-fix"]
    assert best.severity is Severity.WARNING and best.points == ("tagger",)
    assert best.message.startswith(f"tagger at 16 bits raises the output SQNR from {top['output_sqnr_db']:.1f} to "
                                   f"{top['verified_sqnr_db']:.1f} dB")
    # the fix says why: the softmax reading the logits receives more error than its own
    # quantization makes (isolated 48 dB, cumulative 15 dB), and the logits' 8-bit step is
    # their threshold / 128
    tagger, softmax = result.point("tagger"), result.point("softmax_0")
    assert best.evidence["amplified_by"] == "softmax_0"
    assert softmax.isolated.sqnr_db - softmax.cumulative.sqnr_db > 20
    assert (f"softmax_0 (softmax) reads tagger and amplifies its error: the cumulative SQNR falls from "
            f"{tagger.cumulative.sqnr_db:.1f} dB at tagger to {softmax.cumulative.sqnr_db:.1f} dB at softmax_0, "
            f"whose own quantization alone keeps {softmax.isolated.sqnr_db:.1f} dB") in best.recommendation.explanation
    assert f"the step of tagger is {tagger.activation.threshold / 128:.3g} (threshold 1024 " in best.recommendation.explanation
    (divergence,) = [f for f in result.findings if f.rule == "first-divergence"]
    assert divergence.points == ("softmax_0",) and divergence.severity is Severity.INFO
    assert divergence.evidence["verified"]["gain_db"] < 1.0 and not divergence.recommendation.config


def test_a_best_fix_that_no_reader_amplifies_names_its_own_quantization() -> None:
    """frame_tagger: the input itself is the best fix (no point that reads it receives more
    error than it makes); the fix quotes the input's own isolated SQNR and its grid, which
    clips (MSE's threshold 4 against a maximum of 5.4)."""
    result = fixture_analysis("frame_tagger")
    (best,) = [f for f in result.findings if f.rule == "best-fix"]
    point = result.point("input")
    a = point.activation
    assert best.points == ("input",) and best.evidence["amplified_by"] is None
    assert a.threshold == 4.0 and a.max > a.threshold
    assert (f"Its own quantization costs the most: its isolated SQNR is {point.isolated.sqnr_db:.1f} dB. At 8 bits "
            f"the step of input is 0.0312 (threshold 4 over [{a.min:.3g}, {a.max:.3g}], clipping what lies beyond).") \
        in best.recommendation.explanation


def test_a_change_the_simulated_batches_disagree_on_is_measured_on_every_batch() -> None:
    """mobilenet_like: z_threshold = 12 gains +4.2 dB on the first simulated batch and loses
    1.0 on the second, so two batches cannot decide it; it is measured again on all 8 beside
    the unchanged model, and its gain then is what a run that simulates all 8 batches
    measures. Every batch's error sums add up to the totals they are quoted with."""
    from quantlens.core.torch_engine.pipeline import measure_project

    result = fixture_analysis("mobilenet_like")
    batches = result.output.batches
    assert len(batches) == result.simulation_batches == 2
    total = sum(batches, ErrorSums())
    assert total.sum_ee == pytest.approx(result.output.error.sum_ee, rel=1e-12)
    (settled,) = [v for v in result.verified if v.reference is not None]
    assert settled.change == {"z_threshold": 12.0} and len(settled.batches) == len(settled.reference.batches) == 8
    for v in result.verified:
        assert sum(v.batches, ErrorSums()).sum_ee == pytest.approx(v.error.sum_ee, rel=1e-12)
    assert settled.reference.batches[:2] == batches  # the simulated batches are not run again
    first_two = [10 * math.log10(b.sum_ee / v.sum_ee) for b, v in zip(batches, settled.batches)]
    assert min(first_two) < 1.0 <= max(first_two)  # the simulated batches disagree

    config, calibration, _ = measured("mobilenet_like")
    everything = dataclasses.replace(config, num_simulation_batches=None)
    _, full, _ = measure_project(everything, calibration=calibration)
    (same,) = [v for v in full.verified if v.change == settled.change]
    gain = settled.error.sqnr_db - settled.reference.error.sqnr_db
    assert gain == pytest.approx(same.error.sqnr_db - full.output.error.sqnr_db, abs=1e-6) and gain >= 1.0
    (z,) = [f for f in result.findings if f.evidence.get("verified", {}).get("change") == settled.change]
    assert z.evidence["verified"]["batches"] == 8 and "withdrawn" not in z.evidence
    assert z.predicted.startswith(f"measured by re-simulation: output SQNR {settled.reference.error.sqnr_db:.1f} -> "
                                  f"{settled.error.sqnr_db:.1f} dB on all 8 batches (by batch ")
    assert "disagree" not in z.predicted


def test_a_runner_up_that_looks_best_once_the_top_is_settled_is_settled_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """probability_heads with three changes verified: activation_n_bits = 12 leads on the two
    simulated batches, far apart, so it is measured on all 8 (+10 dB). The tagger at 16 bits
    then looks better on its two batches (+12.8 dB) than that, with its batches apart too, so
    it is settled in a second round (+4.5 dB on all 8); activation_n_bits = 10 (+9.7 on two)
    is below the settled best and stays as measured. The settled gains are those of a run
    that simulates all 8 batches, and only the batches after the simulated ones ran again."""
    from quantlens.core.diagnosis.rules_error import keep_wide
    from quantlens.core.torch_engine import pipeline

    changes = [{"activation_n_bits": 12}, keep_wide(["tagger"]), {"activation_n_bits": 10}]
    monkeypatch.setattr(pipeline, "candidates", lambda result, findings, diagnosis: changes)
    config, calibration, _ = measured("probability_heads")
    steps: list[tuple[str, int, int | None]] = []
    _, settled, _ = pipeline.measure_project(config, calibration=calibration, progress=lambda *step: steps.append(step))
    _, full, _ = pipeline.measure_project(dataclasses.replace(config, num_simulation_batches=None),
                                          calibration=calibration)
    assert [v.change for v in settled.verified] == changes
    assert [v.reference is not None for v in settled.verified] == [True, True, False]
    first_two = [sum(v.batches[:2], ErrorSums()).sqnr_db - settled.output.error.sqnr_db for v in settled.verified]
    assert first_two[1] > settled.verified[0].error.sqnr_db - settled.verified[0].reference.error.sqnr_db > first_two[2]
    for v, whole in zip(settled.verified[:2], full.verified):
        assert v.reference.error.sqnr_db == pytest.approx(full.output.error.sqnr_db, abs=1e-9)
        assert v.error.sqnr_db == pytest.approx(whole.error.sqnr_db, abs=1e-6)
        assert len(v.batches) == 8 and v.batches[:2] == full.verified[changes.index(v.change)].batches[:2]
    assert settled.verified[0].reference.batches[:2] == settled.output.batches
    # progress: each round of the confirmation on the 6 batches after the simulated ones, to its end
    # (the unchanged model and activation_n_bits = 12, then the tagger alone)
    confirm = [step for step in steps if step[0] == "confirm"]
    assert [(done, total) for _, done, total in confirm if done == total] == [(12, 12), (6, 6)]
    assert steps.index(confirm[0]) > max(i for i, step in enumerate(steps) if step[0] == "verify")


@pytest.mark.parametrize(("name", "capped"), [("deit_tiny", True), ("low_bit", True), ("per_tensor_weights", False),
                                            ("frontend_damage", False)])
def test_every_fix_offered_states_its_measured_effect(name: str, capped: bool) -> None:
    """Every finding that still carries a config change a re-simulation can test quotes that
    change's (or a joint change's) measured effect on the model output. Where the fixes
    outnumber max_verified_changes (``capped``) the others say they were not re-simulated and
    offer no fix; inherited damage (per_tensor_weights, frontend_damage) offers none of its own,
    so there every fix fits."""
    result = fixture_analysis(name)
    offered = [f for f in result.findings if f.recommendation and f.recommendation.config
               and apply_change(result.settings, f.recommendation.config) is not None]
    unmeasured = [f for f in result.findings if f.evidence.get("unmeasured")]
    assert offered and bool(unmeasured) == capped
    for f in offered:
        measured = f.evidence.get("verified_joint") or f.evidence.get("verified") or {}
        assert measured.get("change") == f.recommendation.config, (f.rule, f.points)
        assert f.predicted.startswith("measured by re-simulation")
    for f in unmeasured:
        assert not f.recommendation.config and "Not re-simulated" in f.recommendation.explanation


def test_information_with_a_predicted_effect_is_measured_before_information_without() -> None:
    """deit_tiny has more info fixes than max_verified_changes leaves room for after its
    warnings: shift-negative, whose statistics predict +4 dB at its layers, is re-simulated
    before the attention products (no prediction), which findings' order put first."""
    result = fixture_analysis("deit_tiny")
    shift = next(f for f in result.findings if f.rule == "shift-negative")
    assert shift.evidence["verified"]["change"] == {"shift_negative_activation_correction": True}
    products = [f for f in result.findings if f.rule == "activation-product"]
    assert products and any(f.evidence.get("unmeasured") for f in products)
    assert all(f.predicted is None or f.predicted.startswith("measured") for f in products)


def test_a_smooth_relu_tail_gets_no_warning_recommending_16_bits() -> None:
    result = fixture_analysis("relu_tail")
    for f in result.findings:
        if f.rule in ("outliers-zscore", "outliers-iqr") and f.severity is not Severity.INFO:
            assert f.evidence["verified"]["gain_db"] >= 1.0, f.message
    tried = [f for f in result.findings if f.rule == "outliers-zscore" and "verified" in f.evidence]
    assert any(f.evidence["verified"]["gain_db"] < 1.0 and f.severity is Severity.INFO for f in tried)
