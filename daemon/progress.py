"""A progress bar on stderr for the CLI (a plain line per stage when not a terminal).

Every stage of a run reports here, to the end: loading, calibration, the threshold search,
the simulation, the diagnosis that picks the changes to verify, the verification, the
sensitivity search on request, the report and the final diagnosis. A stage that counts
steps shows the time left at its measured rate; every stage's time is printed when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24
LABELS = {"load": "loading", "calibrate": "calibrating", "thresholds": "thresholds", "simulate": "simulating",
          "diagnose": "diagnosing", "verify": "verifying", "sensitivity": "sensitivity", "report": "report"}
UNITS = {"verify": "passes", "sensitivity": "passes"}
"""What a stage counts (batches unless said): verification runs one quantized pass per change and batch."""


class ProgressBar:
    def __init__(self, stream: TextIO, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.clock = clock
        self.stage: str | None = None
        self.started = 0.0
        self.done = 0

    def update(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self._finish_stage()
            self.stage = stage
            self.started = self.clock()
        self.done = done
        if self.tty:
            self.stream.write("\r" + self.line(stage, done, total))
            self.stream.flush()

    def line(self, stage: str, done: int, total: int | None) -> str:
        """``simulating [######..........] 2/8 batches, 1.2 s left``."""
        label = LABELS.get(stage, stage)
        unit = UNITS.get(stage, "batches")
        if not total:
            return f"{label:<12} {done} {unit}" if done else f"{label:<12}"
        filled = int(WIDTH * min(done, total) / total)
        bar = "#" * filled + "." * (WIDTH - filled)
        return f"{label:<12} [{bar}] {done}/{total} {unit}{self._left(done, total)}"

    def _left(self, done: int, total: int) -> str:
        """The time left at the stage's rate so far (nothing until a step has finished)."""
        if done <= 0 or done >= total:
            return ""
        left = (self.clock() - self.started) / done * (total - done)
        return f", {left:.1f} s left"

    def _finish_stage(self) -> None:
        if self.stage is None:
            return
        took = self.clock() - self.started
        if self.tty:
            self.stream.write(f" ({took:.1f} s)\n")
        else:
            unit = UNITS.get(self.stage, "batches")
            count = f" {self.done} {unit}," if self.done else ""
            self.stream.write(f"{LABELS.get(self.stage, self.stage)}:{count} {took:.1f} s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._finish_stage()
        self.stage = None
