"""``quantlens``: the command line, a thin shell over the engine.

Exit codes: 0 success, 1 findings at or above --fail-on (diagnosis), 2 usage or config
error. Problems are printed as ``file:line: error[code]: message``; never a traceback,
unless QUANTLENS_DEBUG=1 asks for one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantlens.core.config import load_config, parse_set_argument
from quantlens.core.errors import Location, Problem, QuantlensError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit with a usage dump
        raise QuantlensError([Problem(message, Location("<command line>"), code="usage")])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantlens", description="Post-training quantization diagnostics for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = sub.add_parser("check", help="calibrate, search thresholds, simulate and report per layer")
    check.add_argument("directory", nargs="?", default=".", help="project folder (holds quantlens.toml or pyproject.toml)")
    check.add_argument("--config", type=Path, help="config file (quantlens.toml or pyproject.toml)")
    check.add_argument("--model", help="model factory, FILE.py:FUNCTION")
    check.add_argument("--data", help="representative data, FILE.py:FUNCTION returning an iterable of batches")
    check.add_argument("--weights", help="checkpoint (state_dict) loaded with torch.load(weights_only=True)")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    check.add_argument("--json", type=Path, metavar="FILE", help="write the whole result as JSON (- for stdout)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "check":
            return _check(args)
    except QuantlensError as exc:
        _print_problems(exc.problems)
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
    values, texts = _overrides(args)
    config = load_config(directory, args.config, values, texts)
    from quantlens.core.torch_engine.pipeline import analyze_project  # torch only when needed
    from quantlens.daemon.progress import ProgressBar
    from quantlens.daemon.text_report import format_summary, format_table

    bar = ProgressBar(sys.stderr, enabled=not args.no_progress)
    try:
        result = analyze_project(config, progress=bar.update)
    finally:
        bar.close()
    if args.json is not None:
        payload = json.dumps(result.to_json(), indent=1)
        if str(args.json) == "-":
            sys.stdout.write(payload + "\n")
        else:
            args.json.write_text(payload + "\n", encoding="utf-8")
    if args.json is None or str(args.json) != "-":
        print(format_table(result, config.root))
        print()
        print(format_summary(result))
        if args.json is not None:
            print(f"wrote {args.json}")
    _print_problems(result.problems)
    return EXIT_OK


def _print_problems(problems: list[Problem]) -> None:
    for p in problems:
        print(str(p), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
