"""The CLI's progress: every stage named, the time left at the stage's own rate."""

from __future__ import annotations

import io

import pytest

from quantlens.daemon.progress import ProgressBar, spans


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_is_the_stage_rate_times_the_steps_left() -> None:
    clock = _Clock()
    bar = ProgressBar(io.StringIO(), clock=clock)
    bar.update("simulate", 0, 8)
    clock.now += 3.0  # 2 batches in 3 s: 6 batches left take 9 s
    assert bar.line("simulate", 2, 8) == "simulating   [######..................] 2/8 batches, 9.0 s left"
    assert bar.line("verify", 0, 6) == "verifying    [........................] 0/6 passes"
    assert bar.line("confirm", 0, 12) == "confirming   [........................] 0/12 passes"
    assert bar.line("thresholds", 0, None) == "thresholds  "


def test_a_plain_stream_gets_one_line_per_stage_with_its_time() -> None:
    clock = _Clock()
    out = io.StringIO()
    bar = ProgressBar(out, clock=clock)
    for stage, steps, seconds in (("calibrate", 8, 2.0), ("thresholds", 0, 0.5), ("simulate", 2, 1.5),
                                  ("diagnose", 0, 0.25), ("verify", 6, 3.0)):
        bar.update(stage, 0, steps or None)
        clock.now += seconds
        if steps:
            bar.update(stage, steps, steps)
    bar.close()
    assert out.getvalue().splitlines() == [
        "calibrating: 8 batches, 2.0 s", "thresholds: 0.5 s", "simulating: 2 batches, 1.5 s", "diagnosing: 0.2 s",
        "verifying: 6 passes, 3.0 s"]


def test_a_project_that_has_not_run_gets_the_default_shares() -> None:
    bar = spans({}, recalibrate=True)
    ends = [3, 55, 58, 73, 76, 94, 96, 98, 100]  # audio_cnn's stage times, cumulated
    assert list(bar) == ["load", "calibrate", "thresholds", "simulate", "diagnose", "verify", "confirm",
                         "sensitivity", "report"]
    assert [hi for _, hi in bar.values()] == pytest.approx(ends)
    assert [lo for lo, _ in bar.values()] == pytest.approx([0, *ends[:-1]])


def test_the_bar_follows_the_last_runs_stage_times() -> None:
    """Seconds of a last run (the worker's keys: "choose" is the diagnose stage; verify's time
    holds the confirmation's, split 18:2). Sensitivity and report were not timed: each takes
    its 2% share at the run's pace, 19 s for 96% of the default bar."""
    timings = {"load": 1.0, "calibrate": 4.0, "thresholds": 1.0, "simulate": 2.0, "choose": 1.0, "verify": 10.0}
    bar = spans(timings, recalibrate=True)
    untimed = 2 * 19 / 96
    seconds = [1, 4, 1, 2, 1, 9, 1, untimed, untimed]
    total = 19 + 2 * untimed
    widths = [hi - lo for lo, hi in bar.values()]
    assert widths == pytest.approx([100 * s / total for s in seconds])
    assert bar["load"][0] == 0 and bar["report"][1] == 100
    assert all(a[1] == b[0] for a, b in zip(list(bar.values()), list(bar.values())[1:]))


def test_cached_statistics_leave_calibration_out_and_an_instant_stage_keeps_a_sliver() -> None:
    bar = spans({"load": 1.0, "thresholds": 1.0, "simulate": 1.0, "choose": 1.0, "verify": 0.0}, recalibrate=False)
    assert "calibrate" not in bar
    assert bar["verify"][1] - bar["verify"][0] == pytest.approx(bar["confirm"][1] - bar["confirm"][0])
    assert 0.9 < bar["verify"][1] - bar["verify"][0] < 1.0  # MIN_SPAN, renormalised with the others
    assert bar["report"][1] == 100
