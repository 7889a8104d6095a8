"""``quantlens watch [DIR]``: the daemon's engine without an editor, for a terminal or CI.

The same :class:`~quantlens.daemon.project.Project` the language server holds (config,
cache, fast re-diagnosis, worker runs), driven by the same watcher and debouncer. After each
change it prints the findings that appeared (``+``) and disappeared (``-``); ``--once`` runs
once and exits with ``quantlens check``'s exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.findings import Finding
from quantlens.daemon.cache import Cache
from quantlens.daemon.cli import EXIT_USAGE, ci_root, exit_code, print_problems, render
from quantlens.daemon.options import ServerOptions
from quantlens.daemon.progress import ProgressBar
from quantlens.daemon.project import Project
from quantlens.daemon.text_report import relative
from quantlens.daemon.watcher import Debouncer, FileWatcher
from quantlens.daemon.workers import WorkerPool

DEBOUNCE_S = 0.25


def watch(args: argparse.Namespace) -> int:
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise QuantlensError([Problem(f"{directory} is not a folder", Location("<command line>"), code="usage")])
    if args.model or args.data or args.weights or args.set or args.json:
        raise QuantlensError([Problem("watch reads the config file only; --model, --data, --weights, --set and "
                                      "--json belong to check", Location("<command line>"), code="usage")])
    project = Project(directory, args.config.resolve() if args.config else None, cache=Cache(directory))
    if not project.reload_config():
        print_problems(project.config_problems)
        if args.once:
            return EXIT_USAGE
    pool = WorkerPool(ServerOptions().limits(project.config), spare=not args.once)
    try:
        if args.once:
            return _once(project, pool, args)
        return asyncio.run(_loop(project, pool, args))
    except KeyboardInterrupt:
        return 130
    finally:
        pool.close()


def _once(project: Project, pool: WorkerPool, args: argparse.Namespace) -> int:
    project.restore()
    _run(project, pool, args)
    snapshot = project.snapshot()
    if snapshot.result is None:
        print_problems(snapshot.problems)
        return EXIT_USAGE
    sys.stdout.write(render(args.format, snapshot.result, snapshot.result.to_json(), project.directory,
                            ci_root(project.directory)))
    print_problems(snapshot.problems)
    return exit_code(snapshot.result, args.fail_on)


def _run(project: Project, pool: WorkerPool, args: argparse.Namespace) -> None:
    plan = project.plan()
    if plan is None:
        return
    bar = ProgressBar(sys.stderr, enabled=not args.no_progress)
    try:
        outcome = pool.run(plan.request, bar.update, project.model_location())
    finally:
        bar.close()
    project.accept(plan, outcome)


async def _loop(project: Project, pool: WorkerPool, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    shown: dict[tuple, Finding] = {}
    problems: list[Problem] = []

    def refresh() -> None:
        nonlocal shown, problems
        snapshot = project.snapshot()
        now = {_key(f): f for f in snapshot.result.findings} if snapshot.result else shown
        for key in shown.keys() - now.keys():
            print(f"- {_line(shown[key], project.directory)}")
        for key in now.keys() - shown.keys():
            print(f"+ {_line(now[key], project.directory)}")
        if snapshot.problems != problems:
            print_problems(snapshot.problems)
        shown, problems = now, snapshot.problems
        state = "estimated, measuring" if snapshot.estimated else f"{len(now)} finding(s)"
        print(f"quantlens: {state} ({1000 * snapshot.seconds:.0f} ms)", file=sys.stderr, flush=True)
        sys.stdout.flush()

    async def on_change(paths: frozenset[Path]) -> None:
        if not paths & project.files:
            return
        project.reload_config()
        refresh()
        await asyncio.to_thread(_run, project, pool, args)
        refresh()
        watcher.watch(project.files)

    debouncer = Debouncer(DEBOUNCE_S, on_change, loop)
    watcher = FileWatcher(debouncer.touch_threadsafe)
    project.restore()
    refresh()
    watcher.watch(project.files)
    watcher.start()
    try:
        await asyncio.to_thread(_run, project, pool, args)
        refresh()
        watcher.watch(project.files)
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        watcher.stop()
    return 0


def _key(finding: Finding) -> tuple:
    return finding.rule, finding.points, finding.location


def _line(finding: Finding, root: Path) -> str:
    return f"{relative(finding.location, root)}: {finding.severity.value}[{finding.rule}] {finding.message}"
