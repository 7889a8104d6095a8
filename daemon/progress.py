"""A progress bar on stderr for the CLI (a plain line per stage when not a terminal).

Every stage of a run reports here, to the end: loading, calibration, the threshold search,
the simulation, the diagnosis that picks the changes to verify, the verification, the
confirmation on every batch of the changes the simulated batches cannot decide, the
sensitivity search on request, the report and the final diagnosis. A stage that counts
steps shows the time left at its measured rate; every stage's time is printed when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TextIO

WIDTH = 24
LABELS = {"load": "loading", "calibrate": "calibrating", "thresholds": "thresholds", "simulate": "simulating",
          "diagnose": "diagnosing", "verify": "verifying", "confirm": "confirming", "sensitivity": "sensitivity",
          "report": "report"}
UNITS = {"verify": "passes", "confirm": "passes", "sensitivity": "passes"}
"""What a stage counts (batches unless said): verification runs one quantized pass per change and batch."""


STAGE_SHARES = {"load": 3.0, "calibrate": 52.0, "thresholds": 3.0, "simulate": 15.0, "diagnose": 3.0,
                "verify": 18.0, "confirm": 2.0, "sensitivity": 2.0, "report": 2.0}
"""Each stage's percent of a full run, in run order, after the stages' times on audio_cnn
(BENCHMARKS.md: calibration about half a run, verification a fifth): the bar of a project
that has not run yet, and the part of a stage its last run did not time."""
TIMING_KEYS = {"diagnose": "choose"}
"""A stage's key in the worker's timings, where the two names differ."""
MIN_SPAN = 1.0
"""The least percent of the bar a stage gets, so that one the last run found instantaneous
(no change to verify) still moves the bar when it has work this time."""


def spans(timings: Mapping[str, float], recalibrate: bool) -> dict[str, tuple[float, float]]:
    """Each stage's part of a run's progress bar (percent from, to), in run order, in
    proportion to its time in the project's last run (the worker's ``timings``): the bar then
    moves with the time this model takes, not audio_cnn's. A stage that run did not time
    takes its :data:`STAGE_SHARES` share, scaled to the project's pace by the stages it did;
    the confirmation is timed within the verification and takes verify's time split by their
    shares. Without ``recalibrate`` (statistics from the cache) calibration has no part."""
    stages = [s for s in STAGE_SHARES if recalibrate or s != "calibrate"]
    measured = {s: float(timings[TIMING_KEYS.get(s, s)]) for s in stages if TIMING_KEYS.get(s, s) in timings}
    if "verify" in measured and "confirm" in stages:
        both = measured.pop("verify")
        whole = STAGE_SHARES["verify"] + STAGE_SHARES["confirm"]
        measured["verify"], measured["confirm"] = (both * STAGE_SHARES[s] / whole for s in ("verify", "confirm"))
    timed = sum(measured.values())
    if timed > 0:
        scale = timed / sum(STAGE_SHARES[s] for s in measured)
    else:  # no run yet (or one that timed nothing): the default shares
        measured, scale = {}, 1.0
    seconds = {s: measured.get(s, STAGE_SHARES[s] * scale) for s in stages}
    total = sum(seconds.values())
    widths = {s: max(100.0 * seconds[s] / total, MIN_SPAN) for s in stages}
    norm = 100.0 / sum(widths.values())
    out: dict[str, tuple[float, float]] = {}
    at = 0.0
    for s in stages:
        end = 100.0 if s == stages[-1] else at + widths[s] * norm
        out[s] = (at, end)
        at = end
    return out


class StageClock:
    """The stage a run is in, since when, and its progress in words with the time left at the
    stage's rate so far: the CLI's bar and the language server's progress both read it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.stage: str | None = None
        self.started = 0.0

    def enter(self, stage: str) -> None:
        """Note ``stage``: a new one's clock starts now."""
        if stage != self.stage:
            self.stage, self.started = stage, self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def counts(self, stage: str, done: int, total: int | None) -> str:
        """``2/8 batches, 1.2 s left`` (``2 batches`` without a total, '' before the first)."""
        unit = UNITS.get(stage, "batches")
        if not total:
            return f"{done} {unit}" if done else ""
        return f"{done}/{total} {unit}{self._left(done, total)}"

    def text(self, stage: str, done: int, total: int | None) -> str:
        """``simulating 2/8 batches, 1.2 s left``."""
        return " ".join(part for part in (label(stage), self.counts(stage, done, total)) if part)

    def _left(self, done: int, total: int) -> str:
        """The time left at the stage's rate so far (nothing until a step has finished)."""
        if done <= 0 or done >= total:
            return ""
        return f", {self.elapsed / done * (total - done):.1f} s left"


def label(stage: str) -> str:
    return LABELS.get(stage, stage)


class ProgressBar:
    def __init__(self, stream: TextIO, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.stages = StageClock(clock)
        self.done = 0

    def update(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if stage != self.stages.stage:
            self._finish_stage()
        self.stages.enter(stage)
        self.done = done
        if self.tty:
            self.stream.write("\r" + self.line(stage, done, total))
            self.stream.flush()

    def line(self, stage: str, done: int, total: int | None) -> str:
        """``simulating [######..........] 2/8 batches, 1.2 s left``."""
        if not total:
            return f"{label(stage):<12} {self.stages.counts(stage, done, total)}".rstrip() if done else f"{label(stage):<12}"
        filled = int(WIDTH * min(done, total) / total)
        bar = "#" * filled + "." * (WIDTH - filled)
        return f"{label(stage):<12} [{bar}] {self.stages.counts(stage, done, total)}"

    def _finish_stage(self) -> None:
        stage = self.stages.stage
        if stage is None:
            return
        took = self.stages.elapsed
        if self.tty:
            self.stream.write(f" ({took:.1f} s)\n")
        else:
            unit = UNITS.get(stage, "batches")
            count = f" {self.done} {unit}," if self.done else ""
            self.stream.write(f"{label(stage)}:{count} {took:.1f} s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._finish_stage()
        self.stages.stage = None
