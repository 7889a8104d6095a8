"""The torch-free re-diagnosis (core/rediagnose.py) against fresh full runs of fixtures/deit_tiny.

The independent answer is always a fresh analysis (calibration and simulation in torch) of
the same inputs under the new settings.
"""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from quantlens.core.activations import SearchMemo
from quantlens.core.config import ProjectConfig
from quantlens.core.distribution import Distribution
from quantlens.core.measurements import Measurements
from quantlens.core.rediagnose import ESTIMATE_NOTE, MEASURED_RULES, rediagnose
from quantlens.core.stats import CalibrationResult
from tests.analyses import measured

@pytest.fixture(scope="module")
def deit() -> tuple[ProjectConfig, CalibrationResult, Measurements]:
    return measured("deit_tiny")


def _with(config: ProjectConfig, **changes) -> ProjectConfig:
    return dataclasses.replace(config, settings=config.settings.with_changes(**changes))


def _degraded(result) -> set[str]:
    return {n for f in result.findings if f.rule == "degraded-layer" for n in f.points}


def test_measurements_round_trip_through_msgpack_give_the_fresh_findings(deit) -> None:
    from quantlens.core.torch_engine.pipeline import analyze_project

    config, calibration, measurements = deit
    decoded = rediagnose(CalibrationResult.from_msgpack(calibration.to_msgpack()), config,
                         Measurements.from_msgpack(measurements.to_msgpack()))
    fresh = analyze_project(config)  # a run of its own: the independent answer
    assert [f.to_json() for f in decoded.findings] == [f.to_json() for f in fresh.findings]
    assert not decoded.estimated and len(decoded.findings) > 10


def test_stale_measurements_are_estimated_and_say_so(deit) -> None:
    """z_threshold inf -> 9: judging with the old errors flags and misses layers; the estimate
    from the statistics errs less, finds where the damage starts, and is marked."""
    from quantlens.core.torch_engine.pipeline import analyze_project

    config, calibration, measurements = deit
    edited = _with(config, z_threshold=9.0)
    fresh = analyze_project(edited)
    truth = _degraded(fresh)
    estimate = rediagnose(calibration, edited, measurements)
    reused = rediagnose(calibration, edited, dataclasses.replace(measurements, settings=edited.settings))
    assert estimate.estimated and not reused.estimated
    errors = lambda found: len(found ^ truth)  # noqa: E731 - wrongly flagged plus missed
    assert errors(_degraded(estimate)) < errors(_degraded(reused))
    assert not truth - _degraded(estimate)  # no degraded layer is missed
    first = [f.points for f in estimate.findings if f.rule == "first-divergence"]
    fresh_first = [f.points for f in fresh.findings if f.rule == "first-divergence"]
    assert first == fresh_first
    for f in estimate.findings:
        assert (f.rule in MEASURED_RULES) == bool(f.evidence.get("estimate"))
        assert f.message.endswith(ESTIMATE_NOTE) == (f.rule in MEASURED_RULES)
    assert estimate.to_json(with_curves=False)["estimated"] is True


def test_the_memo_searches_only_what_an_edit_changed(deit) -> None:
    """The server's fast path: re-diagnosing the same settings searches nothing again, and
    switching back to settings seen before (z_threshold 9 -> inf) searches nothing either."""
    config, calibration, measurements = deit
    memo = SearchMemo()
    first = rediagnose(calibration, config, measurements, memo=memo)
    searched = len(memo)
    again = rediagnose(calibration, config, measurements, memo=memo)
    assert len(memo) == searched
    assert [f.to_json() for f in first.findings] == [f.to_json() for f in again.findings]
    rediagnose(calibration, _with(config, z_threshold=9.0), measurements, memo=memo)
    grown = len(memo)
    assert grown > searched
    back = rediagnose(calibration, config, measurements, memo=memo)
    assert len(memo) == grown
    assert [f.to_json() for f in back.findings] == [f.to_json() for f in first.findings]


def test_a_z_threshold_edit_searches_only_the_points_it_cuts(deit) -> None:
    """Points whose every value lies within mu +- z * sigma keep their search at inf: a
    z_threshold edit re-searches only the points with values beyond it (numpy on the
    calibration's bins decides which), with the same findings as a fresh memo."""
    config, calibration, measurements = deit
    memo = SearchMemo()
    rediagnose(calibration, config, measurements, memo=memo)
    z = 12.0
    edited = _with(config, z_threshold=z)
    before = dict(memo._searches)
    result = rediagnose(calibration, edited, measurements, memo=memo)
    activation_keys = {k[0] for k in memo._searches if k not in before and isinstance(k[1], int)}
    cut = set()
    for name, stats in calibration.stats.items():
        dist = stats.distribution()
        if dist.count and dist.std > 0 and (dist.lo[0] < dist.mean - z * dist.std or dist.hi[-1] > dist.mean + z * dist.std):
            cut.add(name)
    assert 0 < len(cut) < len(calibration.stats)
    assert activation_keys and activation_keys <= cut
    fresh = rediagnose(calibration, edited, measurements)
    assert [f.to_json() for f in result.findings] == [f.to_json() for f in fresh.findings]


def test_the_runs_searches_through_msgpack_leave_the_diagnosis_nothing_to_search(deit, monkeypatch) -> None:
    """What the worker sends with its result (SearchMemo.to_msgpack) holds every search the
    diagnosis of that result makes: loaded on the decoded calibration, the diagnosis calls no
    threshold search at all, and gives what a diagnosis from an empty memo gives."""
    from quantlens.core import activations
    from quantlens.core.diagnosis import context
    from quantlens.core.torch_engine.pipeline import measure_project

    config = deit[0]
    memo = SearchMemo()
    calibration, measurements, _ = measure_project(config, memo=memo)
    blob = memo.to_msgpack()
    decoded = CalibrationResult.from_msgpack(calibration.to_msgpack())
    measured_back = Measurements.from_msgpack(measurements.to_msgpack())
    fresh = rediagnose(decoded, config, measured_back)
    loaded = SearchMemo()
    assert loaded.load(blob, decoded)
    numbers = [v for v in memo._searches.values() if not isinstance(v, Distribution)]  # parts are rebuilt
    assert len(loaded) == len(numbers) > len(calibration.points)
    calls: list[str] = []
    for module, name in ((activations, "search_all"), (context, "search_threshold")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    result = rediagnose(decoded, config, measured_back, memo=loaded)
    assert calls == []
    assert result.to_json() == fresh.to_json()
    # the searches are those of this calibration's points only, and garbage is a miss
    other = SearchMemo()
    assert other.load(blob, dataclasses.replace(decoded, stats={}))
    assert len(other) == 0
    name = calibration.points[0].name
    for garbage in (b"\x00garbage", msgpack.packb([["x", 1.0]]), msgpack.packb([[[name, 8], "one"]]),
                    msgpack.packb([[[name, 8], [[["MSE", 1.0]], {}]]])):
        assert not other.load(garbage, decoded)
    assert len(other) == 0


def test_corrupt_records_raise_value_error_only() -> None:
    for blob in (b"", b"\x00garbage", b"\x81\xa1a\x01", b"\x82\xa7version\x01\xa6points\x01"):
        with pytest.raises(ValueError):
            Measurements.from_msgpack(blob)
        with pytest.raises(ValueError):
            CalibrationResult.from_msgpack(blob)
