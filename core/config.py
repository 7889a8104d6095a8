"""Project configuration: ``[tool.quantlens]`` in pyproject.toml or a ``quantlens.toml``.

Every key keeps the line it was written on, so a bad value is reported at that line (the
CLI prints it, the language server puts a diagnostic there). Command-line overrides
(``--model``, ``--data``, ``--set KEY=VALUE``) go through the same checks and are
reported against the command line.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantlens.core.diagnosis.catalog import RULES
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.settings import SETTING_NAMES, QuantSettings, coerce_override, coerce_setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "quantlens.toml"
COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class FuncRef:
    """``path/to/file.py:function``, resolved against the config file's folder."""

    path: Path
    function: str
    location: Location | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.function}"

    def definition(self) -> Location | None:
        """The line of ``def function`` at the top level of the file, read without running it
        (findings about the data are shown there); None when the file cannot be parsed or the
        function is not defined by a plain ``def``."""
        try:
            tree = ast.parse(self.path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == self.function:
                return Location(str(self.path), node.lineno, node.col_offset + 1)
        return None


SIMULATION_BATCHES = 2
"""Default ``num_simulation_batches``: the errors are means over many values, so they settle
on far fewer batches than the thresholds need (BENCHMARKS.md measures the difference); each
simulated batch costs about three forwards and each verified change one more. A verified
change whose simulated batches disagree about its gain, and the top recommendation when they
lie far apart, are measured again on every batch."""

@dataclass(frozen=True)
class ProjectConfig:
    """Everything needed to run one analysis: what to load, which data, which settings."""

    root: Path
    model: FuncRef
    data: FuncRef
    settings: QuantSettings = field(default_factory=QuantSettings)
    weights: Path | None = None
    validation: FuncRef | None = None
    evaluate: FuncRef | None = None
    metrics: tuple[FuncRef, ...] = ()
    device: str = "cpu"
    num_calibration_batches: int | None = None
    num_simulation_batches: int | None = SIMULATION_BATCHES
    """Batches (the first ones) the error simulation and the verification run on; None: all."""
    config_file: Path | None = None
    diagnosis: DiagnosisSettings = field(default_factory=DiagnosisSettings)
    ignore: tuple[str, ...] = ()
    worker_timeout_s: float | None = None
    """How long one analysis may run in the worker before it is killed (None: the default)."""
    worker_memory_limit_mb: int | None = None
    """Address space the worker may add beyond its own footprint (None: the default)."""
    locations: dict[str, Location] = field(default_factory=dict)
    """Where each key was written (key -> file and line)."""

    def location_of(self, key: str) -> Location | None:
        return self.locations.get(key) or (Location(str(self.config_file)) if self.config_file else None)

    @property
    def roots(self) -> list[Path]:
        """The folders user code lives in and imports resolve against: the project, the
        model's and the data's folders."""
        roots = [self.root, self.model.path.parent, self.data.path.parent]
        return list(dict.fromkeys(r.resolve() for r in roots))


PROJECT_KEYS = {
    "model", "data", "weights", "validation", "evaluate", "metrics", "device",
    "num_calibration_batches", "num_simulation_batches", "overrides", "diagnosis", "ignore", "worker_timeout_s", "worker_memory_limit_mb",
}


def find_config(directory: Path) -> tuple[Path, str] | None:
    """The config file for a project folder and the TOML table that holds the settings."""
    candidate = directory / CONFIG_FILE
    if candidate.is_file():
        return candidate, "quantlens"
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return pyproject, "tool.quantlens"
        if "quantlens" in data.get("tool", {}):
            return pyproject, "tool.quantlens"
    return None


def load_config(
    directory: Path | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    override_text: dict[str, str] | None = None,
) -> ProjectConfig:
    """Read, check and resolve the configuration; raises QuantlensError listing every problem.

    ``overrides`` come from the command line (``--model`` etc. and ``--set``) and win over
    the file; ``override_text`` maps a key to the argument text that set it, for messages.
    """
    directory = (directory or Path.cwd()).resolve()
    table: dict[str, Any] = {}
    locations: dict[str, Location] = {}
    source: Path | None = None
    problems: list[Problem] = []
    if config_file is not None:
        config_file = config_file.resolve()
        if not config_file.is_file():
            raise QuantlensError([Problem(f"config file {config_file} does not exist", Location(COMMAND_LINE))])
        section = "tool.quantlens" if config_file.name == "pyproject.toml" else "quantlens"
        found: tuple[Path, str] | None = (config_file, section)
    else:
        found = find_config(directory)
    if found is not None:
        source, section = found
        table, locations, problem = _read_table(source, section)
        if problem:
            raise QuantlensError([problem])
    root = source.parent if source else directory
    for key, value in (overrides or {}).items():
        table[key] = value
        text = (override_text or {}).get(key, f"--set {key}")
        locations[key] = Location(COMMAND_LINE, 0)
        locations[f"{key}@arg"] = Location(f"{COMMAND_LINE} ({text})")

    def where(key: str) -> Location | None:
        if f"{key}@arg" in locations:
            return locations[f"{key}@arg"]
        return locations.get(key) or (Location(str(source)) if source else Location(COMMAND_LINE))

    settings_args: dict[str, Any] = {}
    project: dict[str, Any] = {}
    for key, value in table.items():
        if key in SETTING_NAMES and key != "overrides":
            try:
                settings_args[key] = coerce_setting(key, value)
            except ValueError as exc:
                problems.append(Problem(str(exc), where(key)))
        elif key in PROJECT_KEYS:
            project[key] = value
        else:
            problems.append(Problem(f"unknown key {key!r}", where(key), hint=_suggest(key)))

    overrides_table = project.pop("overrides", {})
    point_overrides = {}
    if not isinstance(overrides_table, dict):
        problems.append(Problem("overrides must be a table of point or module type names", where("overrides")))
    else:
        for name, value in overrides_table.items():
            try:
                point_overrides[str(name)] = coerce_override(value)
            except ValueError as exc:
                problems.append(Problem(f"overrides.{name}: {exc}", locations.get(f"overrides.{name}") or where("overrides")))
    settings_args["overrides"] = point_overrides

    def func_ref(key: str, required: bool) -> FuncRef | None:
        value = project.get(key)
        if value is None:
            if required:
                problems.append(Problem(
                    f"no {key} configured",
                    Location(str(source)) if source else Location(COMMAND_LINE),
                    hint=f'add {key} = "path/to/file.py:function" to the config, or pass --{key} FILE:FUNC',
                ))
            return None
        ref = _parse_func_ref(key, value, root, where(key), problems)
        return ref

    model = func_ref("model", True)
    data = func_ref("data", True)
    validation = func_ref("validation", False)
    evaluate = func_ref("evaluate", False)
    metrics: list[FuncRef] = []
    raw_metrics = project.get("metrics", [])
    if not isinstance(raw_metrics, list):
        problems.append(Problem("metrics must be a list of \"file.py:function\" strings", where("metrics")))
    else:
        for item in raw_metrics:
            ref = _parse_func_ref("metrics", item, root, where("metrics"), problems)
            if ref:
                metrics.append(ref)

    weights = None
    if project.get("weights") is not None:
        if not isinstance(project["weights"], str):
            problems.append(Problem("weights must be a path to a checkpoint file", where("weights")))
        else:
            weights = (root / project["weights"]).resolve()
            if not weights.is_file():
                problems.append(Problem(f"weights file {project['weights']!r} not found (looked at {weights})", where("weights")))

    device = project.get("device", "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        problems.append(Problem(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}", where("device")))
        device = "cpu"

    num_batches = project.get("num_calibration_batches")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1):
        problems.append(Problem(f"num_calibration_batches must be a positive whole number, got {num_batches!r}", where("num_calibration_batches")))
        num_batches = None

    simulation_batches = project.get("num_simulation_batches", SIMULATION_BATCHES)
    if simulation_batches == "all":
        simulation_batches = None
    elif isinstance(simulation_batches, bool) or not isinstance(simulation_batches, int) or simulation_batches < 1:
        problems.append(Problem(f'num_simulation_batches must be a positive whole number or "all", '
                                f"got {simulation_batches!r}", where("num_simulation_batches")))
        simulation_batches = SIMULATION_BATCHES

    diagnosis_table = project.get("diagnosis", {})
    if not isinstance(diagnosis_table, dict):
        problems.append(Problem("diagnosis must be a table", where("diagnosis")))
        diagnosis_table = {}
    diagnosis, bad = DiagnosisSettings.from_table(diagnosis_table)
    for key, message in bad:
        problems.append(Problem(message, locations.get(f"diagnosis.{key}") or where("diagnosis")))
    ignore = project.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        problems.append(Problem('ignore must be a list of rule ids ("rule-id" or "rule-id:point-name")',
                                where("ignore")))
        ignore = []
    problems.extend(Problem(message, where("ignore"), hint=hint) for message, hint in map(_ignore_entry, ignore)
                    if message)

    limits: dict[str, Any] = {}
    for key in ("worker_timeout_s", "worker_memory_limit_mb"):
        value = project.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append(Problem(f"{key} must be a positive number, got {value!r}", where(key)))
        else:
            limits[key] = int(value) if key == "worker_memory_limit_mb" else float(value)

    if problems:
        raise QuantlensError(problems)
    assert model is not None and data is not None
    return ProjectConfig(
        root=root,
        model=model,
        data=data,
        settings=QuantSettings(**settings_args),
        weights=weights,
        validation=validation,
        evaluate=evaluate,
        metrics=tuple(metrics),
        device=device,
        num_calibration_batches=num_batches,
        num_simulation_batches=simulation_batches,
        config_file=source,
        diagnosis=diagnosis,
        ignore=tuple(ignore),
        **limits,
        locations={k: v for k, v in locations.items() if not k.endswith("@arg")},
    )


def parse_set_argument(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from ``--set``; VALUE is read as TOML, else taken as a string."""
    if "=" not in text:
        raise QuantlensError([Problem(f"--set takes KEY=VALUE, got {text!r}", Location(COMMAND_LINE))])
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        value = math.inf
    return key, value


def _parse_func_ref(key: str, value: Any, root: Path, loc: Location | None, problems: list[Problem]) -> FuncRef | None:
    if not isinstance(value, str) or ":" not in value:
        problems.append(Problem(f'{key} must look like "path/to/file.py:function", got {value!r}', loc))
        return None
    path_text, function = value.rsplit(":", 1)
    if not function.isidentifier():
        problems.append(Problem(f"{key}: {function!r} is not a function name", loc))
        return None
    path = (root / path_text).resolve()
    if not path.is_file():
        problems.append(Problem(f"{key}: file {path_text!r} not found (looked at {path})", loc))
        return None
    return FuncRef(path, function, loc)


def _read_table(path: Path, section: str) -> tuple[dict[str, Any], dict[str, Location], Problem | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, {}, Problem(f"cannot read {path.name}: {exc}", Location(str(path)))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+), column (\d+)", str(exc))
        line = int(match.group(1)) if match else 0
        col = int(match.group(2)) if match else 0
        return {}, {}, Problem(f"invalid TOML: {exc}", Location(str(path), line, col))
    table: Any = data
    for part in section.split("."):
        table = table.get(part, {}) if isinstance(table, dict) else {}
    if section == "quantlens" and not table and "quantlens" not in data:
        table = data  # quantlens.toml may hold its keys at the top level
        section = ""
    if not isinstance(table, dict):
        return {}, {}, Problem(f"[{section}] must be a table", Location(str(path)))
    return dict(table), _key_lines(text, path, section), None


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*(\"[^\"]+\"|'[^']+'|[A-Za-z0-9_\-]+)\s*=")


def _key_lines(text: str, path: Path, section: str) -> dict[str, Location]:
    """Line of each key of ``section`` and of its sub-tables (``overrides.conv1`` ...)."""
    locations: dict[str, Location] = {}
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = ".".join(part.strip().strip("\"'") for part in _split_dotted(header.group(1)))
            if section and (current == section or current.startswith(section + ".")):
                sub = current[len(section) + 1:] if current != section else ""
                if sub:
                    locations.setdefault(sub, Location(str(path), number))
                    locations.setdefault(sub.split(".")[0], Location(str(path), number))
            continue
        key = _KEY.match(line)
        if not key:
            continue
        name = key.group(1).strip("\"'")
        if current == section:
            locations.setdefault(name, Location(str(path), number))
        elif section and current.startswith(section + "."):
            locations.setdefault(f"{current[len(section) + 1:]}.{name}", Location(str(path), number))
    return locations


def _split_dotted(name: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"\"[^\"]*\"|'[^']*'|[^.]+", name)]


def _ignore_entry(entry: str) -> tuple[str, str]:
    """What is wrong with one ``ignore`` entry ("" when nothing), and the hint: the rule id must
    be one the catalogue knows (a typo would silence nothing, silently); the point name after
    ``:`` cannot be checked before calibration has found the points."""
    import difflib

    rule, colon, point = (part.strip() for part in entry.partition(":"))
    if rule not in RULES:
        close = difflib.get_close_matches(rule, sorted(RULES), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "rule ids: " + ", ".join(sorted(RULES))
        return f"ignore: unknown rule id {rule!r} in {entry!r}", hint
    if colon and not point:
        return f"ignore: {entry!r} names no point after ':'", f'write "{rule}" for every point, or "{rule}:point-name"'
    return "", ""


def _suggest(key: str) -> str:
    import difflib

    known = sorted(SETTING_NAMES | PROJECT_KEYS)
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
