"""The editor's settings for the language server (initialization options and
``workspace/didChangeConfiguration``), typed, with defaults.

An invalid value is reported once and replaced by its default, never a crash loop (as
jedi-language-server does). ``worker_timeout_s`` and ``worker_memory_limit_mb`` may also be
set in ``[tool.quantlens]``; the editor's value wins when both are given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from quantlens.core.config import ProjectConfig
from quantlens.core.findings import Severity
from quantlens.daemon.workers import DEFAULT_MEMORY_LIMIT_MB, DEFAULT_TIMEOUT_S, WorkerLimits

LOG_LEVELS = ("error", "warning", "info", "debug")
ALIASES = {"configPath": "config_path", "runOnSave": "run_on_save", "inlayHints": "inlay_hints",
           "minimumSeverity": "minimum_severity", "workerTimeoutS": "worker_timeout_s",
           "workerTimeout": "worker_timeout_s", "workerMemoryLimitMb": "worker_memory_limit_mb",
           "workerMemoryLimitMB": "worker_memory_limit_mb", "logLevel": "log_level"}
"""camelCase names as VS Code settings spell them."""


@dataclass(frozen=True)
class ServerOptions:
    config_path: str | None = None
    """A config file (absolute, or relative to the workspace folder) instead of discovery."""
    run_on_save: bool = True
    inlay_hints: bool = True
    minimum_severity: Severity = Severity.INFO
    worker_timeout_s: float | None = None
    """None: the project's ``worker_timeout_s``, else the default."""
    worker_memory_limit_mb: int | None = None
    log_level: str = "info"

    def limits(self, config: ProjectConfig | None = None) -> WorkerLimits:
        """The worker's limits: the editor's setting, else the project's, else the default."""
        timeout = self.worker_timeout_s or (config and config.worker_timeout_s) or DEFAULT_TIMEOUT_S
        memory = self.worker_memory_limit_mb or (config and config.worker_memory_limit_mb) or DEFAULT_MEMORY_LIMIT_MB
        return WorkerLimits(float(timeout), int(memory))


def parse_options(raw: Any, base: ServerOptions | None = None) -> tuple[ServerOptions, list[str]]:
    """Options from a client's JSON (a flat map, or one under a "quantlens" key), with the
    problems found; unknown keys are reported, bad values keep ``base``'s."""
    base = base or ServerOptions()
    if isinstance(raw, dict) and isinstance(raw.get("quantlens"), dict):
        raw = raw["quantlens"]
    if raw is None:
        return base, []
    if not isinstance(raw, dict):
        return base, [f"quantlens settings must be an object, got {type(raw).__name__}"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    names = {f.name for f in dataclasses.fields(ServerOptions)}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name not in names:
            problems.append(f"unknown quantlens setting {key!r}")
            continue
        if value is None:
            continue
        try:
            values[name] = _coerce(name, value)
        except ValueError as exc:
            problems.append(f"quantlens setting {key}: {exc}; keeping {getattr(base, name)!r}")
    return dataclasses.replace(base, **values), problems


def _coerce(name: str, value: Any) -> Any:
    if name in ("run_on_save", "inlay_hints"):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if name == "minimum_severity":
        text = str(value).lower()
        text = {"information": "info", "hint": "info", "warn": "warning"}.get(text, text)
        try:
            return Severity(text)
        except ValueError:
            raise ValueError(f"must be info, warning or error, got {value!r}") from None
    if name == "worker_timeout_s":
        return positive_number(value)
    if name == "worker_memory_limit_mb":
        number = positive_number(value)
        return int(number)
    if name == "log_level":
        if str(value).lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return str(value).lower()
    if name == "config_path":
        return str(value) or None
    raise ValueError(f"unknown setting {name}")


def positive_number(value: Any) -> float:
    """A finite number above zero (a limit in seconds or megabytes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)
