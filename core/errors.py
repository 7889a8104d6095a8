"""Errors as values with a location.

Everything that can go wrong because of the user's input (a config value, a model file,
an exception inside their forward) becomes a :class:`Problem` that names a file and a
line. Only the edges (CLI, language server) turn problems into text or diagnostics, so a
problem never reaches the user as a bare traceback. Which frame of a traceback is "the
user's line" is decided in :mod:`quantlens.core.workspace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    related: tuple[Location, ...] = ()
    """Other places where the fix may go (the ``def`` line of a failing factory or data
    function, when ``location`` is the config line that names it)."""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        also = "".join(f"\n  see: {loc}" for loc in self.related)
        return f"{where}error[{self.code}]: {self.message}{hint}{also}"

    def to_json(self) -> dict:
        return {
            "message": self.message,
            "location": self.location.to_json() if self.location else None,
            "code": self.code,
            "hint": self.hint,
            "related": [loc.to_json() for loc in self.related],
        }

    @staticmethod
    def from_json(obj: dict) -> Problem:
        return Problem(str(obj["message"]), Location.from_json(obj.get("location")), str(obj.get("code", "config")),
                       str(obj.get("hint", "")),
                       tuple(loc for loc in map(Location.from_json, obj.get("related", [])) if loc is not None))


@dataclass
class QuantlensError(Exception):
    """Carries problems from deep in the engine to the edge that shows them."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def fail(message: str, location: Location | None = None, code: str = "config", hint: str = "") -> QuantlensError:
    """Build an error with a single problem (raise the result)."""
    return QuantlensError([Problem(message, location, code, hint)])

