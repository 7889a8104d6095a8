"""The CLI's progress: every stage named, the time left at the stage's own rate."""

from __future__ import annotations

import io

from quantlens.daemon.progress import ProgressBar


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
