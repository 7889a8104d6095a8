"""Errors as values with a location.

Everything that can go wrong because of the user's input (a config value, a model file,
an exception inside their forward) becomes a :class:`Problem` that names a file and a
line. Only the edges (CLI, language server) turn problems into text or diagnostics, so a
problem never reaches the user as a bare traceback.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """A place in a user's file; ``line`` is 1-based, 0 when only the file is known."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.column}

    @staticmethod
    def from_json(obj: dict | None) -> Location | None:
        if not obj:
            return None
        return Location(str(obj["file"]), int(obj.get("line", 0)), int(obj.get("column", 0)))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, with where it is and what to do."""

    message: str
    location: Location | None = None
    code: str = "config"
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        return f"{where}error[{self.code}]: {self.message}{hint}"

    def to_json(self) -> dict:
        return {
            "message": self.message,
            "location": self.location.to_json() if self.location else None,
            "code": self.code,
            "hint": self.hint,
        }


@dataclass
class QuantlensError(Exception):
    """Carries problems from deep in the engine to the edge that shows them."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def fail(message: str, location: Location | None = None, code: str = "config", hint: str = "") -> QuantlensError:
    """Build an error with a single problem (raise the result)."""
    return QuantlensError([Problem(message, location, code, hint)])


def user_code_location(exc: BaseException, roots: list[Path]) -> Location | None:
    """The innermost frame of ``exc``'s traceback that lies in the user's workspace.

    An exception raised inside the user's forward should be reported on their line, not on
    a line of torch; frames outside ``roots`` are skipped.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    resolved = [r.resolve() for r in roots]
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if any(_is_under(path, r) for r in resolved) and "site-packages" not in path.parts:
            return Location(str(path), frame.lineno or 0)
    return None


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
