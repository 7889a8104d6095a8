"""A progress bar on stderr for the CLI (a plain line per stage when not a terminal)."""

from __future__ import annotations

from typing import TextIO

WIDTH = 24


class ProgressBar:
    def __init__(self, stream: TextIO, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.stage: str | None = None
        self.done = 0

    def update(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self._finish_stage()
            self.stage = stage
        self.done = done
        if not self.tty:
            return
        if total:
            filled = int(WIDTH * min(done, total) / total)
            bar = "#" * filled + "." * (WIDTH - filled)
            text = f"\r{stage:<10} [{bar}] {done}/{total} batches"
        else:
            text = f"\r{stage:<10} {done} batches"
        self.stream.write(text)
        self.stream.flush()

    def _finish_stage(self) -> None:
        if self.stage is None:
            return
        if self.tty:
            self.stream.write("\n")
        else:
            self.stream.write(f"{self.stage}: {self.done} batches\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._finish_stage()
        self.stage = None
