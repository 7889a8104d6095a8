"""``quantlens serve``: the language server (pygls 2.x), a thin shell over the engine.

This process never imports torch or the user's code: a worker process owns them
(:mod:`quantlens.daemon.workers`). State lives in :class:`~quantlens.daemon.project.Project`
objects; every feature reads their last :class:`~quantlens.daemon.project.Snapshot`, and
each LSP method has one small handler below that converts it (the conversions live in
:mod:`quantlens.daemon.lsp`).

A change (a save, a watched file, a setting) goes through one debouncer; the project then
re-reads its config and re-diagnoses from cached statistics at once (numpy, milliseconds),
and only asks a worker when the model, weights or data changed, or when the errors must be
measured again under new settings. A newer change cancels a stale run.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from quantlens.core.config import find_config
from quantlens.core.errors import Problem
from quantlens.daemon.cache import Cache
from quantlens.daemon.lsp.code_actions import code_actions
from quantlens.daemon.lsp.diagnostics import to_diagnostics
from quantlens.daemon.lsp.hover import hover
from quantlens.daemon.lsp.inlay_hints import inlay_hints
from quantlens.daemon.lsp.lines import LineIndex, resolved
from quantlens.daemon.options import ServerOptions, parse_options
from quantlens.daemon.progress import StageClock, spans
from quantlens.daemon.project import Plan, Project, Snapshot
from quantlens.daemon.watcher import Debouncer, FileWatcher
from quantlens.daemon.workers import RunOutcome, WorkerPool

STATUS = "quantlens/status"
"""Custom notification: {state: analysing|up to date|stale|failed, project, findings, percentage, message}."""
LAYERS = "quantlens/layers"
"""Custom request: every quantization point of the projects, for an editor's overview."""
DEBOUNCE_S = 0.25
REPORT_FOLDER = Path(".quantlens") / "report"
RULES_DOC = Path(__file__).resolve().parents[1] / "docs" / "rules.md"

log = logging.getLogger("quantlens.server")


class QuantlensServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("quantlens", _version(), text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         max_workers=4)
        self.options = ServerOptions()
        self.projects: list[Project] = []
        self.snapshots: dict[Path, Snapshot] = {}
        self.indexes: dict[Path, LineIndex] = {}
        self.published: dict[str, list[types.Diagnostic]] = {}
        self.owners: dict[str, Path] = {}
        """Which project published each URI (so a project clears only its own files)."""
        self.initial_problems: list[str] = []
        self.pool: WorkerPool | None = None
        self.watcher: FileWatcher | None = None
        self.debouncer: Debouncer | None = None
        self.running: asyncio.Task | None = None
        self.generations: dict[Path, int] = {}
        """Bumped by every schedule of a project: a run whose number is no longer current is stale."""
        self.worker_project: Path | None = None
        """The project whose plan the pool is running now (the only run a cancel may stop)."""

    # ------------------------------------------------------------------ lifecycle

    def start_session(self) -> None:
        loop = asyncio.get_running_loop()
        self.debouncer = Debouncer(DEBOUNCE_S, self.on_change, loop)
        self.pool = WorkerPool(self.options.limits(), log=lambda line: self.log(line, types.MessageType.Log))
        folders = [Path(p) for p in self._workspace_folders()]
        for folder in folders:
            for project in Project.discover(folder, self.options.config_path):
                project.cache = Cache(project.directory)
                self.projects.append(project)
        if not self.projects:
            self.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Info,
                message="quantlens: no configuration found. Add a quantlens.toml (or [tool.quantlens] in "
                        "pyproject.toml) with model = \"model.py:build\" and data = \"data.py:batches\"."))
            return
        self.watcher = FileWatcher(lambda paths: self.debouncer.touch_threadsafe(paths) if self.debouncer else None)
        for project in self.projects:
            project.reload_config()
            if project.restore():
                self.log(f"{project.directory}: diagnostics from the cache")
            self.publish(project)
        self._watch()
        self.watcher.start()
        for project in self.projects:
            self.schedule(project)

    def stop_session(self) -> None:
        if self.debouncer is not None:
            self.debouncer.cancel()
        if self.watcher is not None:
            self.watcher.stop()
        if self.pool is not None:
            self.pool.close()

    def _workspace_folders(self) -> list[str]:
        folders = [to_fs_path(f.uri) for f in (self.workspace.folders or {}).values()]
        if not folders and self.workspace.root_path:
            folders = [self.workspace.root_path]
        return [f for f in folders if f]

    def _watch(self) -> None:
        if self.watcher is not None:
            self.watcher.watch(set().union(*(p.files for p in self.projects)))

    def report_server_error(self, error: Exception, source: Any) -> None:
        """A bug of ours goes to the log, never a popup on every keystroke."""
        self.log(f"internal error: {type(error).__name__}: {error}", types.MessageType.Error)

    # ------------------------------------------------------------------ changes and runs

    async def on_change(self, paths: frozenset[Path]) -> None:
        """A debounced set of changed files: re-diagnose now, run the worker if needed."""
        for project in self.projects:
            if not (paths & project.files):
                continue
            start = time.perf_counter()
            project.reload_config()
            self.publish(project)
            self.log(f"{project.directory}: re-diagnosed in {1000 * (time.perf_counter() - start):.0f} ms")
            self.schedule(project)
        self._watch()

    def schedule(self, project: Project, *, report_dir: Path | None = None, force: bool = False,
                 done: asyncio.Future | None = None) -> None:
        """Start the worker run this project needs, after the one in progress: every earlier run
        of the same project is stale from now on (stopped if the pool runs it, skipped or dropped
        otherwise); another project's run is waited for."""
        generation = self.generations.get(project.directory, 0) + 1
        self.generations[project.directory] = generation
        if self.pool is not None and self.worker_project == project.directory:
            self.pool.cancel()
        previous = self.running
        self.running = asyncio.ensure_future(self._run(project, generation, previous, report_dir, force, done))

    def _current(self, project: Project, generation: int) -> bool:
        """False once a newer schedule of ``project`` made this run stale (also asked from the
        pool's thread, right before it starts the worker)."""
        return self.generations.get(project.directory) == generation

    async def _run(self, project: Project, generation: int, previous: asyncio.Task | None, report_dir: Path | None,
                   force: bool, done: asyncio.Future | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        outcome = await self._run_plan(project, generation, report_dir, force)
        if done is not None and not done.done():
            done.set_result(outcome)

    async def _run_plan(self, project: Project, generation: int, report_dir: Path | None,
                        force: bool) -> RunOutcome | None:
        """Plan, run and take in, unless a newer change came first. A cancel reaches only a run the
        pool has started, so staleness is checked after every await, right before the worker
        starts and before the result is taken in: a stale result is dropped, never published or
        cached (the worker may have read newer files than the plan's key stands for)."""
        def current() -> bool:
            return self._current(project, generation)

        plan = project.plan(report_dir=report_dir, force=force) if current() else None
        if plan is None or self.pool is None:
            return None
        assert project.config is not None
        self.pool.set_limits(self.options.limits(project.config))
        progress = await self._begin_progress(plan)
        outcome = RunOutcome(cancelled=True)
        if current():
            outcome = await self._run_worker(project, plan, progress, current)
        if not current():
            outcome = RunOutcome(cancelled=True, elapsed_s=outcome.elapsed_s)
        self._end_progress(progress, outcome)
        project.accept(plan, outcome)
        if outcome.cancelled:
            self.status(project, "stale", message="cancelled: the diagnostics are from the last finished run")
        else:
            self.publish(project)
            self.log(f"{project.directory}: worker run {outcome.elapsed_s:.1f} s"
                     + (f", {len(outcome.problems)} problem(s)" if outcome.problems else ""))
        return outcome

    async def _run_worker(self, project: Project, plan: Plan, progress: str | None,
                          current: Callable[[], bool]) -> RunOutcome:
        assert self.pool is not None
        loop = asyncio.get_running_loop()

        clock = StageClock()
        bar = spans(project.timings, plan.recalibrate)  # this project's last run's pace

        def on_progress(stage: str, count: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self._progress, project, progress, bar, clock, stage, count, total)

        self.status(project, "analysing", percentage=0, message="starting")
        self.worker_project = project.directory
        try:
            return await asyncio.to_thread(self.pool.run, plan.request, on_progress, project.model_location(), current)
        finally:
            self.worker_project = None

    async def _begin_progress(self, plan: Plan) -> str | None:
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return None
        token = str(uuid.uuid4())
        try:
            await self.work_done_progress.create_async(token)
        except Exception:  # noqa: BLE001 - a client that refuses progress still gets the results
            return None
        title = "quantlens: calibrating" if plan.recalibrate else "quantlens: measuring"
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=True, percentage=0))
        future = self.work_done_progress.tokens.get(token)
        if future is not None:
            future.add_done_callback(lambda f: self.pool.cancel() if f.cancelled() and self.pool else None)
        return token

    def _progress(self, project: Project, token: str | None, bar: dict[str, tuple[float, float]], clock: StageClock,
                  stage: str, count: int, total: int | None) -> None:
        """Report a worker's progress: the run's share done (each stage's part of the bar from
        :func:`progress.spans`), and the stage in words with the time it has left ("verifying
        3/12 passes, 0.8 s left")."""
        clock.enter(stage)
        low, high = bar.get(stage, bar["report"])
        share = min(count / total, 1.0) if total else 0.0
        percentage = int(low + (high - low) * share)
        message = clock.text(stage, count, total)
        if token is not None:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message, percentage=percentage))
        self.status(project, "analysing", percentage=percentage, message=message)

    def _end_progress(self, token: str | None, outcome: RunOutcome) -> None:
        if token is None:
            return
        text = "cancelled" if outcome.cancelled else ("failed" if outcome.problems else "done")
        self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=text))
        self.work_done_progress.tokens.pop(token, None)  # pygls keeps every token otherwise

    # ------------------------------------------------------------------ publishing

    def publish(self, project: Project) -> Snapshot:
        """Re-diagnose ``project`` and publish its diagnostics (clearing files that have none now)."""
        snapshot = project.snapshot()
        self.snapshots[project.directory] = snapshot
        if snapshot.result is not None:
            self.indexes[project.directory] = LineIndex(snapshot.result)
        else:
            self.indexes.pop(project.directory, None)
        fallback = project.model_location()
        problems = [p if p.location is not None else Problem(p.message, fallback, p.code, p.hint, p.related)
                    for p in snapshot.problems]
        by_file = to_diagnostics(snapshot.result, problems, rules_doc=RULES_DOC.as_uri(),
                                 min_severity=self.options.minimum_severity)
        mine = {uri for uri, owner in self.owners.items() if owner == project.directory}
        current = {from_fs_path(path): diagnostics for path, diagnostics in by_file.items()}
        for uri in mine | set(current):
            diagnostics = current.get(uri, [])
            self.published[uri] = diagnostics
            self.owners[uri] = project.directory
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics))
        for uri in mine - set(current):
            self.published.pop(uri, None)
            self.owners.pop(uri, None)
        state = self._state(project, snapshot)
        count = len(snapshot.result.findings) if snapshot.result else 0
        self.status(project, state, findings=count,
                    message=snapshot.problems[0].message if state == "failed" and snapshot.problems else None)
        self._refresh_inlay_hints()
        return snapshot


    def _state(self, project: Project, snapshot: Snapshot) -> str:
        if snapshot.problems and snapshot.result is None:
            return "failed"
        if project.run_problems or project.config_problems:  # the kept findings are not those of the config as saved
            return "failed"
        if snapshot.estimated or project.needs_run():
            return "stale"
        return "up to date"

    def status(self, project: Project, state: str, *, findings: int | None = None, percentage: int | None = None,
               message: str | None = None) -> None:
        self.protocol.notify(STATUS, {"state": state, "project": str(project.directory), "findings": findings,
                                      "percentage": percentage, "message": message})

    def _refresh_inlay_hints(self) -> None:
        workspace = self.client_capabilities.workspace
        if workspace is not None and workspace.inlay_hint is not None and workspace.inlay_hint.refresh_support:
            self.workspace_inlay_hint_refresh(None)

    def log(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        levels = {types.MessageType.Error: 0, types.MessageType.Warning: 1, types.MessageType.Info: 2,
                  types.MessageType.Log: 3}
        wanted = {"error": 0, "warning": 1, "info": 2, "debug": 3}[self.options.log_level]
        if levels.get(kind, 3) <= wanted:
            try:
                self.window_log_message(types.LogMessageParams(type=kind, message=message))
            except RuntimeError:  # called from the worker's log thread after shutdown
                pass

    # ------------------------------------------------------------------ lookups for the features

    def project_of(self, path: str) -> Project | None:
        """The project whose diagnostics cover ``path`` (a layer file, the config)."""
        target = resolved(path)
        for project in self.projects:
            snapshot = self.snapshots.get(project.directory)
            if project.config_file and resolved(str(project.config_file)) == target:
                return project
            index = self.indexes.get(project.directory)
            if snapshot and snapshot.result and index is not None and index.lines_in(target):
                return project
            if any(resolved(str(f)) == target for f in project.files):
                return project
        return None

    def lines_of(self, uri: str) -> list[str]:
        return self.workspace.get_text_document(uri).lines

    def track_edit(self, uri: str, changes: list[Any]) -> None:
        """Diagnostics follow unsaved edits (lines inserted or removed above them) until the next
        save re-diagnoses; the edited text itself is never run."""
        diagnostics = self.published.get(uri)
        if not diagnostics:
            return
        moved = False
        for change in changes:
            if not isinstance(change, types.TextDocumentContentChangePartial):
                continue
            start, end = change.range.start.line, change.range.end.line
            delta = change.text.count("\n") - (end - start)
            if delta == 0:
                continue
            for d in diagnostics:
                if d.range.start.line > end or (d.range.start.line == end and d.range.start.character >= change.range.end.character and start != end):
                    d.range = types.Range(types.Position(d.range.start.line + delta, d.range.start.character),
                                          types.Position(d.range.end.line + delta, d.range.end.character))
                    moved = True
        if moved:
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics))


def build_server() -> QuantlensServer:
    """A server with every feature registered (one handler per LSP method)."""
    server = QuantlensServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: QuantlensServer, params: types.InitializeParams) -> None:
        ls.options, problems = parse_options(params.initialization_options)
        ls.initial_problems = problems  # shown once the client can receive messages

    @server.feature(types.INITIALIZED)
    async def initialized(ls: QuantlensServer, params: types.InitializedParams) -> None:
        for problem in ls.initial_problems:
            ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=problem))
        ls.start_session()
        await _register_watched_files(ls)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: QuantlensServer, params: None) -> None:
        ls.stop_session()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: QuantlensServer, params: types.DidChangeConfigurationParams) -> None:
        old = ls.options
        ls.options, problems = parse_options(params.settings, old)
        for problem in problems:
            ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=problem))
        if ls.options.minimum_severity != old.minimum_severity or ls.options.inlay_hints != old.inlay_hints:
            for project in ls.projects:
                ls.publish(project)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: QuantlensServer, params: types.DidSaveTextDocumentParams) -> None:
        path = to_fs_path(params.text_document.uri)
        if path and ls.options.run_on_save and ls.debouncer is not None:
            ls.debouncer.touch([Path(path)])

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched_files(ls: QuantlensServer, params: types.DidChangeWatchedFilesParams) -> None:
        paths = [Path(p) for p in (to_fs_path(c.uri) for c in params.changes) if p]
        if paths and ls.options.run_on_save and ls.debouncer is not None:
            ls.debouncer.touch(paths)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: QuantlensServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.track_edit(params.text_document.uri, list(params.content_changes))

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def on_hover(ls: QuantlensServer, params: types.HoverParams) -> types.Hover | None:
        path = to_fs_path(params.text_document.uri)
        project = ls.project_of(path) if path else None
        snapshot = ls.snapshots.get(project.directory) if project else None
        if project is None or snapshot is None or snapshot.result is None or project.directory not in ls.indexes:
            return None
        plots = project.directory / REPORT_FOLDER if project.report else None
        return hover(ls.indexes[project.directory], snapshot.result, path, params.position.line, plots_dir=plots)

    @server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
    def on_inlay_hint(ls: QuantlensServer, params: types.InlayHintParams) -> list[types.InlayHint]:
        path = to_fs_path(params.text_document.uri)
        project = ls.project_of(path) if path and ls.options.inlay_hints else None
        if project is None or project.directory not in ls.indexes:
            return []
        return inlay_hints(ls.indexes[project.directory], path, ls.lines_of(params.text_document.uri),
                           params.range.start.line, params.range.end.line)

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                    types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
    def on_code_action(ls: QuantlensServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        ours = [d for d in params.context.diagnostics if d.source == "quantlens"]
        path = to_fs_path(params.text_document.uri)
        project = ls.project_of(path) if path else None
        if not ours or project is None:
            return []
        config_text = config_table = None
        if project.config_file is not None:
            config_text = ls.workspace.get_text_document(from_fs_path(str(project.config_file))).source
            found = find_config(project.config_file.parent)
            config_table = found[1] if found else ("tool.quantlens" if project.config_file.name == "pyproject.toml"
                                                   else "quantlens")

        def read_source(file: str) -> list[str] | None:
            try:
                return [line.rstrip("\r\n") for line in ls.lines_of(from_fs_path(file))]
            except OSError:
                return None

        return code_actions(ours, config_path=project.config_file, config_text=config_text,
                            config_table=config_table, read_source=read_source)

    @server.command("quantlens.quantizeNow")
    async def quantize_now(ls: QuantlensServer) -> dict[str, Any]:
        """A full run with the HTML report, then a summary message with the report's path."""
        results: dict[str, Any] = {}
        for project in ls.projects:
            done: asyncio.Future = asyncio.get_running_loop().create_future()
            ls.schedule(project, report_dir=project.directory / REPORT_FOLDER, force=True, done=done)
            outcome = await done
            if not isinstance(outcome, RunOutcome) or outcome.cancelled:
                results[str(project.directory)] = {"cancelled": True}
                continue
            snapshot = ls.snapshots.get(project.directory)
            summary = _summary(project, snapshot, outcome)
            ls.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Error if outcome.problems else types.MessageType.Info, message=summary))
            results[str(project.directory)] = {"report": outcome.report, "summary": summary,
                                               "problems": [p.to_json() for p in outcome.problems]}
        return results

    @server.command("quantlens.showReport")
    async def show_report(ls: QuantlensServer) -> dict[str, Any]:
        """Open the last report (made by quantizeNow) in the client, if it can show documents."""
        reports = [p.report for p in ls.projects if p.report]
        if not reports:
            ls.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Info, message="quantlens: no report yet; run \"quantlens: Quantize Now\""))
            return {"report": None}
        uri = Path(reports[0]).as_uri()
        window = ls.client_capabilities.window
        if window is not None and window.show_document is not None and window.show_document.support:
            await ls.window_show_document_async(types.ShowDocumentParams(uri=uri, external=True))
        return {"report": reports[0], "uri": uri}

    @server.command("quantlens.restart")
    def restart(ls: QuantlensServer) -> dict[str, Any]:
        """Drop the workers (a new spare starts), re-read every config and rerun what is needed."""
        if ls.pool is not None:
            ls.pool.close()
            ls.pool = WorkerPool(ls.options.limits(), log=lambda line: ls.log(line, types.MessageType.Log))
        for project in ls.projects:
            project.failures.clear()
            project.reload_config()
            ls.publish(project)
            ls.schedule(project)
        return {"restarted": True, "projects": [str(p.directory) for p in ls.projects]}

    @server.feature(LAYERS)
    def layers(ls: QuantlensServer, params: Any) -> list[dict[str, Any]]:
        """Every point with its type, errors, worst finding and source line: an overview."""
        return [row for project in ls.projects for row in _layers(ls, project)]

    return server


async def _register_watched_files(ls: QuantlensServer) -> None:
    """Ask the client to send file events for what the analysis reads, when it can."""
    workspace = ls.client_capabilities.workspace
    dynamic = workspace is not None and workspace.did_change_watched_files is not None and \
        workspace.did_change_watched_files.dynamic_registration
    if not dynamic:
        return
    watchers = [types.FileSystemWatcher(glob_pattern=pattern) for pattern in
                ("**/quantlens.toml", "**/pyproject.toml", "**/*.py", "**/*.pt", "**/*.pth")]
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
            id=str(uuid.uuid4()), method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(watchers=watchers))]))
    except Exception as exc:  # noqa: BLE001 - watchdog still watches
        ls.log(f"the client refused file watching ({exc}); watchdog watches instead", types.MessageType.Log)


def _layers(ls: QuantlensServer, project: Project) -> list[dict[str, Any]]:
    snapshot = ls.snapshots.get(project.directory)
    if snapshot is None or snapshot.result is None:
        return []
    result = snapshot.result
    worst: dict[str, Any] = {}
    for f in result.findings:  # findings come sorted by severity
        for name in f.points:
            worst.setdefault(name, f)
    rows = []
    for p in result.points:
        f = worst.get(p.name)
        rows.append({
            "project": str(project.directory), "name": p.name, "op": p.info.op, "kind": p.info.kind,
            "source": p.info.source.to_json() if p.info.source else None,
            "isolated_sqnr_db": p.isolated.sqnr_db if p.isolated else None,
            "cumulative_sqnr_db": p.cumulative.sqnr_db if p.cumulative else None,
            "quantized": p.activation.quantize, "bits": p.activation.n_bits,
            "finding": {"rule": f.rule, "severity": f.severity.value, "message": f.message} if f else None,
            "estimated": result.estimated,
        })
    return rows


def _summary(project: Project, snapshot: Snapshot | None, outcome: RunOutcome) -> str:
    if outcome.problems:
        return f"quantlens: the run failed: {outcome.problems[0].message}"
    result = snapshot.result if snapshot else None
    if result is None:
        return "quantlens: no result"
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[f.severity.value] = counts.get(f.severity.value, 0) + 1
    found = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no findings"
    return (f"quantlens: output SQNR {result.output.error.sqnr_db:.1f} dB, {found}; "
            f"report: {outcome.report}")


def _version() -> str:
    try:
        return importlib.metadata.version("quantlens")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def serve(tcp_port: int | None = None) -> int:
    """Run the server over stdio (or TCP on 127.0.0.1 only) until the client says exit."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    server = build_server()
    # what the imports built lives as long as the server: frozen, a full collection no longer
    # walks it (~60k objects, 30 ms a collection, which could land on a save's re-diagnosis)
    gc.freeze()
    if tcp_port is not None:
        server.start_tcp("127.0.0.1", tcp_port)
        return 0
    # fd 1 is the protocol's alone: anything else that writes there (a library's print)
    # goes to stderr instead of corrupting the stream VS Code reads.
    rpc_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, rpc_out)
    return 0
