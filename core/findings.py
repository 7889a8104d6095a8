"""Findings: what the diagnosis says about a model, each naming a cause and a fix.

A finding is a value (no printing, no LSP types): the CLI, the SARIF/GitHub writers, the
HTML report and the language server all render the same list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from quantlens.core.errors import Location


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True)
class Recommendation:
    """The fix, three ways: the quantlens config change, MCT's equivalent, plain words."""

    explanation: str
    config: dict[str, Any] = field(default_factory=dict)
    """Keys and values for ``[tool.quantlens]`` (dotted keys for sub-tables)."""
    mct: str | None = None
    """The equivalent ``mct.core.CoreConfig(...)`` snippet, where MCT has one."""

    def to_json(self) -> dict:
        return {"explanation": self.explanation, "config": self.config, "mct": self.mct}


@dataclass(frozen=True)
class Finding:
    rule: str
    """Stable rule id, e.g. ``outliers-zscore`` (also what ``# quantlens: ignore[...]`` names)."""
    severity: Severity
    message: str
    """One self-contained line (editors show it inline)."""
    points: tuple[str, ...] = ()
    locations: tuple[Location, ...] = ()
    """Where to show it: the line that created the layer (or the op's call site) first."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """The numbers that triggered the rule."""
    recommendation: Recommendation | None = None
    predicted: str | None = None
    """Predicted effect of the fix when it can be computed from the statistics alone."""
    related: tuple[Location, ...] = ()
    """Other relevant lines (where the layer is applied in forward, other blocks)."""

    @property
    def location(self) -> Location | None:
        return self.locations[0] if self.locations else None

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "points": list(self.points),
            "locations": [loc.to_json() for loc in self.locations],
            "evidence": self.evidence,
            "recommendation": self.recommendation.to_json() if self.recommendation else None,
            "predicted": self.predicted,
            "related": [loc.to_json() for loc in self.related],
        }

    @staticmethod
    def from_json(obj: dict) -> Finding:
        rec = obj.get("recommendation")
        return Finding(
            rule=obj["rule"],
            severity=Severity(obj["severity"]),
            message=obj["message"],
            points=tuple(obj.get("points", [])),
            locations=tuple(Location.from_json(x) for x in obj.get("locations", []) if x),  # type: ignore[misc]
            evidence=obj.get("evidence", {}),
            recommendation=Recommendation(rec["explanation"], rec.get("config", {}), rec.get("mct")) if rec else None,
            predicted=obj.get("predicted"),
            related=tuple(Location.from_json(x) for x in obj.get("related", []) if x),  # type: ignore[misc]
        )
