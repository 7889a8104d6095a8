"""``quantlens``: the command line, a thin shell over the engine.

Exit codes: 0 success, 1 findings at or above --fail-on (``error`` unless told otherwise, as
ruff exits on violations; ``--fail-on never`` never fails) or a baseline regression, 2 usage
or config error. Problems are printed as ``file:line: error[code]: message``; never a
traceback, unless QUANTLENS_DEBUG=1 asks for one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantlens.core.config import ProjectConfig, load_config, parse_set_argument
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.findings import Severity
from quantlens.daemon.options import ServerOptions
from quantlens.daemon.progress import ProgressBar
from quantlens.daemon.text_report import format_findings, format_summary, format_table, format_verdict

if TYPE_CHECKING:
    from quantlens.core.result import AnalysisResult

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
FORMATS = ("text", "json", "sarif", "github")
FAIL_NEVER = "never"
FAIL_ON = (*(s.value for s in Severity), FAIL_NEVER)
DEFAULT_FAIL_ON = Severity.ERROR.value
RUN_OPTIONS = ("config", "model", "data", "weights", "set", "json", "sensitivity")
"""What only a run reads: ``report --from-json`` runs nothing, so it refuses them."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit with a usage dump
        raise QuantlensError([Problem(message, Location("<command line>"), code="usage")])


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("directory", nargs="?", default=".", help="project folder (holds quantlens.toml or pyproject.toml)")
    common.add_argument("--config", type=Path, help="config file (quantlens.toml or pyproject.toml)")
    common.add_argument("--model", help="model factory, FILE.py:FUNCTION")
    common.add_argument("--data", help="representative data, FILE.py:FUNCTION returning an iterable of batches")
    common.add_argument("--weights", help="checkpoint (state_dict) loaded with torch.load(weights_only=True)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    common.add_argument("--json", type=Path, metavar="FILE", help="write the whole result as JSON (- for stdout)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    common.add_argument("--sensitivity", action="store_true",
                        help="also re-simulate with the most sensitive points at 16 bits (beyond what the findings need)")

    parser = _Parser(prog="quantlens", description="Post-training quantization diagnostics for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = sub.add_parser("check", parents=[common], help="calibrate, search thresholds, simulate, diagnose")
    check.add_argument("--format", choices=FORMATS, default="text", help="how to print the findings on stdout")
    check.add_argument("--fail-on", choices=FAIL_ON, default=DEFAULT_FAIL_ON,
                       help=f"exit 1 when a finding is at or above this severity (default {DEFAULT_FAIL_ON}; "
                            f"{FAIL_NEVER}: exit 0 whatever the findings)")
    check.add_argument("--baseline", type=Path, metavar="FILE", help="fail on per-point regressions against FILE")
    check.add_argument("--baseline-tolerance-db", type=float, default=1.0, metavar="DB",
                       help="SQNR drop that counts as a regression (default 1 dB)")
    check.add_argument("--write-baseline", type=Path, metavar="FILE", help="write this run's metrics as a baseline")
    report = sub.add_parser("report", parents=[common], help="run the check and write an HTML report with pictures")
    report.add_argument("--out", type=Path, default=Path("quantlens-report"), help="report folder")
    report.add_argument("--from-json", type=Path, metavar="FILE",
                        help="render a result saved with --json instead of running the analysis")
    serve = sub.add_parser("serve", help="the language server, over stdio (or --tcp PORT on 127.0.0.1)")
    serve.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    watch = sub.add_parser("watch", parents=[common], help="rerun on every change and print what changed")
    watch.add_argument("--format", choices=FORMATS, default="text", help="how to print the findings")
    watch.add_argument("--once", action="store_true", help="run once and exit with the check command's codes")
    watch.add_argument("--fail-on", choices=FAIL_ON, default=DEFAULT_FAIL_ON,
                       help=f"with --once: exit 1 when a finding is at or above this severity (default "
                            f"{DEFAULT_FAIL_ON}; {FAIL_NEVER}: exit 0 whatever the findings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "report" and args.from_json is not None:
            return _report_from_json(args)
        if args.command in ("check", "report"):
            return _check(args)
        if args.command == "serve":
            from quantlens.daemon.server import serve

            return serve(args.tcp)
        if args.command == "watch":
            from quantlens.daemon.watch import watch

            return watch(args)
    except QuantlensError as exc:
        print_problems(exc.problems)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no bare traceback
        if os.environ.get("QUANTLENS_DEBUG"):
            raise
        print(f"quantlens: internal error: {type(exc).__name__}: {exc}\n"
              "  (a bug in quantlens; rerun with QUANTLENS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3
    return EXIT_USAGE


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for key in ("model", "data", "weights"):
        text = getattr(args, key)
        if text:
            values[key] = str(Path(text).resolve()) if key == "weights" else _absolute_ref(text)
            texts[key] = f"--{key} {text}"
    for item in args.set:
        key, value = parse_set_argument(item)
        values[key] = value
        texts[key] = f"--set {item}"
    return values, texts


def _absolute_ref(text: str) -> str:
    """FILE:FUNC from the command line is relative to the current folder, not the config's."""
    if ":" not in text:
        return text
    path, func = text.rsplit(":", 1)
    return f"{Path(path).resolve()}:{func}"


def _check(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise QuantlensError([Problem(f"{directory} is not a folder", Location("<command line>"), code="usage")])
    config, result = analyze_in_worker(args, directory)
    if result is None:
        return EXIT_USAGE
    baseline_failed = False
    baseline_json: dict[str, Any] | None = None
    if getattr(args, "baseline", None) is not None:
        baseline_json = _apply_baseline(args, result)
        baseline_failed = not baseline_json["ok"]
    payload = result.to_json()
    if baseline_json is not None:
        payload["baseline"] = baseline_json
    if getattr(args, "write_baseline", None) is not None:
        from quantlens.core.baseline import write_baseline

        args.write_baseline.write_text(json.dumps(write_baseline(payload), indent=1) + "\n", encoding="utf-8")
    fmt = getattr(args, "format", "text")
    if args.command == "report" or args.json is not None or fmt == "json":
        from quantlens.daemon.report.payload import with_pictures

        payload = with_pictures(payload, result, config.diagnosis, config.root)
    root = ci_root(config.root)
    if args.json is not None:
        text = json.dumps(payload, indent=1)
        if str(args.json) == "-":
            sys.stdout.write(text + "\n")
        else:
            args.json.write_text(text + "\n", encoding="utf-8")
    to_stdout = args.json is None or str(args.json) != "-"
    if args.command == "report":
        from quantlens.daemon.report.html import render_report

        index = render_report(payload, args.out)
        print(format_findings(result, config.root))
        print(format_verdict(result, config.root))
        print(f"wrote {index}")
    elif to_stdout:
        sys.stdout.write(render(fmt, result, payload, config.root, root))
    print_problems(result.problems)
    if baseline_failed:
        return EXIT_FINDINGS
    return exit_code(result, getattr(args, "fail_on", FAIL_NEVER))


def _report_from_json(args: argparse.Namespace) -> int:
    """``report --from-json FILE``: the HTML report of a saved result, nothing run."""
    from quantlens.daemon.report.html import render_report

    given = [f"--{key.replace('_', '-')}" for key in RUN_OPTIONS if getattr(args, key)]
    if args.directory != ".":
        given.insert(0, args.directory)
    if given:
        raise QuantlensError([Problem(f"--from-json renders a saved result and runs nothing: drop {', '.join(given)}",
                                      Location("<command line>"), code="usage")])
    print(f"wrote {render_report(_read_result(args.from_json), args.out)}")
    return EXIT_OK


def _read_result(path: Path) -> dict[str, Any]:
    """A saved result document that holds the report's section, or a problem at the file."""
    from quantlens.core.result import FORMAT

    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = Problem(f"cannot read {path}: {exc.strerror}", Location(str(path)), code="usage")
        raise QuantlensError([problem]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 0
        raise QuantlensError([Problem(f"{path} is not JSON: {exc}", Location(str(path), line), code="usage")]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "report" not in payload:
        raise QuantlensError([Problem(
            f"{path} is not a {FORMAT} document with a report section", Location(str(path)), code="usage",
            hint="write one with `quantlens check --json FILE` (or `quantlens report --json FILE`)")])
    return payload


def render(fmt: str, result: AnalysisResult, payload: dict[str, Any], project_root: Path, ci_root: Path) -> str:
    """The findings as ``--format`` asks (``payload`` is ``result.to_json()``)."""
    if fmt == "json":
        return json.dumps(payload, indent=1) + "\n"
    if fmt == "sarif":
        from quantlens.daemon.formats.sarif import to_sarif

        return json.dumps(to_sarif(payload, ci_root, _version()), indent=1) + "\n"
    if fmt == "github":
        from quantlens.daemon.formats.github import to_github_annotations

        return to_github_annotations(payload, ci_root)
    return "\n\n".join([format_table(result, project_root), format_summary(result),
                         format_findings(result, project_root), format_verdict(result, project_root)]) + "\n"


def exit_code(result: AnalysisResult, fail_on: str) -> int:
    """1 when a finding is at or above ``fail_on`` (a severity, or ``never``), else 0."""
    if fail_on != FAIL_NEVER and any(f.severity.rank >= Severity(fail_on).rank for f in result.findings):
        return EXIT_FINDINGS
    return EXIT_OK


def analyze_in_worker(args: argparse.Namespace, directory: Path) -> tuple[ProjectConfig, AnalysisResult | None]:
    """Load the config here, run the model in a worker process (so ``os._exit``, a crash or a
    hang in user code becomes a located problem), and diagnose here (numpy)."""
    from quantlens.core.activations import SearchMemo
    from quantlens.core.measurements import Measurements
    from quantlens.core.rediagnose import rediagnose
    from quantlens.core.stats import CalibrationResult
    from quantlens.daemon.workers import WorkerPool

    values, texts = _overrides(args)
    config = load_config(directory, args.config, values, texts)
    pool = WorkerPool(ServerOptions().limits(config), spare=False)
    bar = ProgressBar(sys.stderr, enabled=not args.no_progress)
    request = {"directory": str(directory.resolve()), "config_file": str(args.config.resolve()) if args.config else None,
               "overrides": values, "override_text": texts, "sensitivity": bool(getattr(args, "sensitivity", False))}
    try:
        outcome = pool.run(request, bar.update, config.location_of("model"))
        if outcome.ok:
            assert outcome.calibration is not None and outcome.measurements is not None
            bar.update("diagnose", 0, None)
            start = time.perf_counter()
            calibration = CalibrationResult.from_msgpack(outcome.calibration)
            memo = SearchMemo()
            memo.load(outcome.searches, calibration)  # the worker's searches: the diagnosis makes the same
            result = rediagnose(calibration, config, Measurements.from_msgpack(outcome.measurements),
                                timings=outcome.timings, memo=memo)
            result.timings["diagnose"] = time.perf_counter() - start
    finally:
        bar.close()
        pool.close()
    if not outcome.ok:
        print_problems(outcome.problems)
        return config, None
    return config, result


def _apply_baseline(args: argparse.Namespace, result: Any) -> dict[str, Any]:
    """Put baseline regressions in front of the findings; the comparison's summary for the JSON."""
    from quantlens.core.baseline import compare_to_baseline, regressions_to_findings

    try:
        baseline = json.loads(args.baseline.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantlensError([Problem(f"cannot read baseline {args.baseline}: {exc}", Location(str(args.baseline)),
                                      code="usage")]) from None
    current = result.to_json(with_curves=False)
    report = compare_to_baseline(current, baseline, tolerance_db=args.baseline_tolerance_db, origin=str(args.baseline))
    result.findings = [*regressions_to_findings(report, current), *result.findings]
    return {"file": str(args.baseline), "ok": report.ok, "tolerance_db": report.tolerance_db,
            "missing": report.missing, "new": report.new, "settings_changed": report.settings_changed}


def ci_root(project_root: Path) -> Path:
    """Paths in CI formats are relative to the repository GitHub checked out, when inside it."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace and project_root.resolve().is_relative_to(Path(workspace).resolve()):
        return Path(workspace).resolve()
    return project_root


def _version() -> str:
    try:
        return importlib.metadata.version("quantlens")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        print(str(p), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
