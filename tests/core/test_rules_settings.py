"""setting-damage: the configured setting is named where it does the damage.

On fixtures/probability_heads_zscore (a confident 527-class softmax and a mostly-off sigmoid
detector, calibrated once): every other setting is re-diagnosed from the same statistics
and measurements, as the language server does on a config edit. The independent answers
are the brute-force searches of tests/reference.py over the heads' raw float outputs.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from quantlens.core import diagnosis
from quantlens.core.activations import SearchMemo, quantize_activations
from quantlens.core.config import load_config
from quantlens.core.diagnosis import rules_settings
from quantlens.core.errors import QuantlensError
from quantlens.core.findings import Finding
from quantlens.core.rediagnose import rediagnose
from quantlens.core.result import AnalysisResult
from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.thresholds import ErrorMethod
from tests import reference as ref
from tests.analyses import FIXTURES, measured

ZSCORE = FIXTURES / "probability_heads_zscore"
MODEL_DIR = FIXTURES / "probability_heads"
HEADS = ("softmax_0", "detector")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"probability_heads_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    """The float outputs of body, softmax and detector, batch by batch as calibration sees them."""
    import torch

    model, data = _load(MODEL_DIR / "model.py").build_model(), _load(MODEL_DIR / "data.py")
    parts: dict[str, list[np.ndarray]] = {"body": [], "softmax_0": [], "detector": []}
    with torch.no_grad():
        for x in data.calibration_batches():
            h = model.act(model.body(x))
            parts["body"].append(h.numpy().ravel())
            parts["softmax_0"].append(torch.softmax(model.tagger(h), dim=1).numpy().ravel())
            parts["detector"].append(model.events(model.detector(h)).numpy().ravel())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _diagnosed(**changes: Any) -> AnalysisResult:
    _, calibration, measurements = measured("probability_heads_zscore")
    return rediagnose(calibration, load_config(ZSCORE, overrides=changes), measurements)


def _damage(result: AnalysisResult) -> dict[str, Finding]:
    return {f.points[0]: f for f in result.findings if f.rule == "setting-damage"}


def _sqnr(x: np.ndarray, threshold: float) -> float:
    return ref.sqnr_db(x, ref.quantize(ref.as_values(x), threshold, 8, False))


@pytest.mark.parametrize(("point", "cut"), [("softmax_0", 0.25), ("detector", 0.5), ("body", 2.0)])
def test_z_threshold_is_named_with_what_it_costs(raw, point, cut):
    x = raw[point]
    full, _, _ = ref.brute_force_threshold(x, "MSE", 8)
    assert ref.brute_force_threshold(x, "MSE", 8, z=5.0)[0] == cut < full
    finding = _damage(_diagnosed())[point]
    ev = finding.evidence
    assert ev["settings"] == {"z_threshold": 5.0}
    assert (ev["threshold"], ev["exempted_threshold"]) == (cut, full)
    # the histogram's prediction is exact up to the float32 sum of squares (<= 0.01 dB at 50 dB)
    assert ev["predicted_sqnr_db"] == pytest.approx(_sqnr(x, cut), abs=0.02)
    assert ev["exempted_sqnr_db"] == pytest.approx(_sqnr(x, full), abs=0.02)
    assert ev["cost_db"] > rules_settings.SETTING_COST_DB if point == "body" else ev["cost_db"] > 30
    assert finding.message.startswith(
        f"z_threshold = 5 cuts {point}'s threshold from {full:g} to {cut:g} "
        f"(predicted SQNR {ev['exempted_sqnr_db']:.1f} -> {ev['predicted_sqnr_db']:.1f} dB)")
    assert finding.recommendation.config[f'overrides."{point}"'] == {"z_threshold": math.inf}
    assert ("[0, 1] by construction" in finding.message) == (point in HEADS)


def test_the_exemptions_are_verified_together():
    """Verified advice: the heads and the concat each carry part of the damage, so exempting
    one leaves the output as bad (where that single change was re-simulated too), and every
    finding recommends the joint exemption with its measured gain."""
    findings = _damage(_diagnosed())
    for point in ("body", *HEADS):
        ev = findings[point].evidence
        if "verified" in ev:
            assert ev["verified"]["change"] == {f'overrides."{point}"': {"z_threshold": math.inf}}
            assert ev["verified"]["gain_db"] < 1.0
        joint = ev["verified_joint"]
        assert joint["gain_db"] > 10.0 and set(joint["change"]) >= {f'overrides."{p}"' for p in HEADS}
        assert findings[point].recommendation.config == joint["change"]
        assert findings[point].severity.value == "warning"
        assert findings[point].predicted.startswith("measured by re-simulation, together: output SQNR 2.")


def _rules(result: AnalysisResult) -> set[tuple[str, str]]:
    return {(f.rule, p) for f in result.findings for p in f.points}


def test_degraded_heads_are_explained_by_the_setting():
    rules = _rules(_diagnosed())
    for point in HEADS:
        assert {("degraded-layer", point), ("setting-damage", point)} <= rules
        assert ("degraded-unexplained", point) not in rules


def test_degraded_unexplained_gives_way_to_the_named_setting(monkeypatch):
    """z_threshold on the softmax alone: without the rule it is 'degraded, cause unknown'
    (what quantlens said before), with it the setting is the cause."""
    result = _diagnosed(z_threshold=math.inf, overrides={"softmax_0": {"z_threshold": 5}})
    assert {("degraded-layer", "softmax_0"), ("setting-damage", "softmax_0")} <= _rules(result)
    assert "degraded-unexplained" not in {rule for rule, _ in _rules(result)}
    monkeypatch.setattr(diagnosis, "RULE_ORDER",
                        tuple(r for r in diagnosis.RULE_ORDER if r is not rules_settings.setting_damage))
    unexplained = {p for f in diagnosis.diagnose(result) if f.rule == "degraded-unexplained" for p in f.points}
    assert unexplained == {"softmax_0"}


def test_the_recommended_override_exempts_the_point_and_keeps_the_setting_elsewhere():
    before = _damage(_diagnosed())
    entries = {}
    for point in HEADS:
        entries[point] = before[point].recommendation.config[f'overrides."{point}"']
    after = _diagnosed(overrides=entries)
    acts = {p.name: p.activation for p in after.points}
    for point in HEADS:
        assert point not in _damage(after)
        assert acts[point].z_threshold == math.inf
        assert acts[point].threshold == before[point].evidence["exempted_threshold"]
        assert acts[point].predicted_sqnr_db == before[point].evidence["exempted_sqnr_db"]
    assert acts["body"].z_threshold == 5.0 and "body" in _damage(after)  # the setting stays elsewhere


def test_reverting_the_setting_leaves_nothing_to_blame():
    assert _damage(_diagnosed(z_threshold=math.inf)) == {}


def test_a_setting_from_a_points_own_override_is_named_as_such(raw):
    result = _diagnosed(z_threshold=math.inf, overrides={"detector": {"z_threshold": 5}})
    assert set(_damage(result)) == {"detector"}
    finding = _damage(result)["detector"]
    assert finding.message.startswith('overrides."detector".z_threshold = 5 cuts detector\'s threshold from 1 to 0.5')
    assert finding.evidence["settings"] == {'overrides."detector".z_threshold': 5.0}
    assert finding.evidence["predicted_sqnr_db"] == pytest.approx(_sqnr(raw["detector"], 0.5), abs=0.02)


def test_the_error_method_is_named_against_noclipping(raw):
    """MAE halves the ReLU body's threshold (brute force on its raw values: 2 vs 4)."""
    x = raw["body"]
    assert ref.brute_force_threshold(x, "MAE", 8)[0] == 2.0
    assert ref.brute_force_threshold(x, "NOCLIPPING", 8)[0] == 4.0
    result = _diagnosed(z_threshold=math.inf, activation_error_method="MAE")
    assert set(_damage(result)) == {"body"}
    finding = _damage(result)["body"]
    ev = finding.evidence
    assert finding.message == (f"activation_error_method = MAE puts body's threshold at 2 where NOCLIPPING keeps 4 "
                               f"(predicted SQNR {ev['exempted_sqnr_db']:.1f} -> {ev['predicted_sqnr_db']:.1f} dB)")
    assert ev["predicted_sqnr_db"] == pytest.approx(_sqnr(x, 2.0), abs=0.02)
    assert ev["exempted_sqnr_db"] == pytest.approx(_sqnr(x, 4.0), abs=0.02)
    assert finding.recommendation.config == {'overrides."body"': {"activation_error_method": "MSE"}}
    fixed = _diagnosed(z_threshold=math.inf, activation_error_method="MAE",
                       overrides={"body": {"activation_error_method": "MSE"}})
    assert _damage(fixed) == {}
    assert {p.name: p.activation.threshold for p in fixed.points}["body"] == 4.0


def test_an_exemption_carries_over_what_already_applies_to_the_point():
    """A type-wide entry stops applying once the point has its own: its keys are copied."""
    result = _diagnosed(overrides={"Linear": {"weights_n_bits": 6}})
    entry = _damage(result)["detector"].recommendation.config['overrides."detector"']
    assert entry == {"weights_n_bits": 6, "z_threshold": math.inf}


def test_kl_keeps_both_heads_at_their_bound_as_brute_force_does(raw):
    result = _diagnosed(z_threshold=math.inf, activation_error_method="KL")
    acts = {p.name: p.activation for p in result.points}
    for point in HEADS:
        t_ref, _, _ = ref.brute_force_threshold(raw[point], "KL", 8)
        assert acts[point].threshold == t_ref == 1.0
    assert _damage(result) == {}


# ---------------------------------------------------------------- the override's new fields


def test_point_override_fields_round_trip_through_json():
    settings = QuantSettings(z_threshold=5.0, overrides={
        "detector": PointOverride(z_threshold=math.inf, activation_error_method=ErrorMethod.MSE),
        "body": PointOverride(activation_n_bits=16)})
    text = json.dumps(settings.to_json(), allow_nan=False)  # strict JSON: no Infinity
    assert json.loads(text)["overrides"]["detector"]["z_threshold"] == "inf"
    assert QuantSettings.from_json(json.loads(text)) == settings


def _project(tmp_path: Path, override: str) -> Path:
    (tmp_path / "quantlens.toml").write_text(
        f'[quantlens]\nmodel = "{MODEL_DIR / "model.py"}:build_model"\n'
        f'data = "{MODEL_DIR / "data.py"}:calibration_batches"\n'
        f"\n[quantlens.overrides.detector]\n{override}\n")
    return tmp_path


def test_point_override_fields_are_read_from_the_config(tmp_path):
    config = load_config(_project(tmp_path, 'z_threshold = inf\nactivation_error_method = "mse"'))
    assert config.settings.overrides["detector"] == PointOverride(z_threshold=math.inf,
                                                                  activation_error_method=ErrorMethod.MSE)


@pytest.mark.parametrize(("line", "message"), [
    ('activation_error_method = "median"', "overrides.detector: activation_error_method must be one of"),
    ("z_threshold = 0", "overrides.detector: z_threshold must be positive"),
])
def test_bad_point_override_fields_are_reported(tmp_path, line, message):
    with pytest.raises(QuantlensError) as info:
        load_config(_project(tmp_path, line))
    assert any(message in p.message for p in info.value.problems), [p.message for p in info.value.problems]


def test_an_override_re_searches_only_its_point():
    _, calibration, _ = measured("probability_heads_zscore")
    memo = SearchMemo()
    settings = QuantSettings(z_threshold=5.0)
    before = quantize_activations(calibration, settings, memo=memo)
    searches = len(memo)
    exempted = settings.with_changes(overrides={"detector": PointOverride(z_threshold=math.inf)})
    after = quantize_activations(calibration, exempted, memo=memo)
    assert len(memo) == searches + 1
    assert (before["detector"].threshold, after["detector"].threshold) == (0.5, 1.0)
    assert all(after[n].threshold == before[n].threshold for n in before if n != "detector")
    quantize_activations(calibration, settings, memo=memo)
    assert len(memo) == searches + 1  # back to the model-wide setting: found, not searched
