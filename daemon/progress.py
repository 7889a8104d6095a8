"""A progress bar on stderr for the CLI (a plain line per stage when not a terminal).

Every stage of a run reports here, to the end: loading, calibration, the threshold search,
the simulation, the diagnosis that picks the changes to verify, the verification, the
confirmation on every batch of the changes the simulated batches cannot decide, the
sensitivity search on request, the report and the final diagnosis. A stage that counts
steps shows the time left at its measured rate; every stage's time is printed when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24
LABELS = {"load": "loading", "calibrate": "calibrating", "thresholds": "thresholds", "simulate": "simulating",
          "diagnose": "diagnosing", "verify": "verifying", "confirm": "confirming", "sensitivity": "sensitivity",
          "report": "report"}
UNITS = {"verify": "passes", "confirm": "passes", "sensitivity": "passes"}
"""What a stage counts (batches unless said): verification runs one quantized pass per change and batch."""


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
