"""The language server end to end, through a real LSP client over stdio (pytest-lsp).

One server per test on a private copy of fixtures/two_branch_concat; the expected lines and
numbers come from the fixture's own markers and from a fresh analysis, not from constants.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest_lsp
from lsprotocol import types
from pygls.protocol import default_converter
from pygls.uris import from_fs_path
from pytest_lsp import LanguageClient
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, make_test_lsp_client, register_lsp_features

from quantlens.core.config import load_config
from quantlens.daemon.cache import Cache, project_inputs
from quantlens.daemon.progress import LABELS
from tests.daemon.lsp_session import SERVER, copy_fixture, diagnostics, line_of, save, start, until


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


def _codes(diags: list[types.Diagnostic]) -> set[str]:
    return {str(d.code) for d in diags}


async def _first_diagnostics(client: LanguageClient, root: Path, **options) -> tuple:
    recorder = await start(client, root, options)
    model = root / "model.py"
    await until(lambda: diagnostics(client, model), 120, "the first diagnostics")
    await until(lambda: recorder.states() and recorder.states()[-1] == "up to date", 60, "up to date")
    return recorder, model


async def test_diagnostics_on_the_layer_lines_with_codes_and_links(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    by_line = {d.range.start.line: d for d in diagnostics(client, model)}
    cat = by_line[line_of(model, "# @cat")]
    assert cat.code == "unbalanced-concat" and cat.source == "quantlens"
    assert cat.severity == types.DiagnosticSeverity.Warning
    assert cat.code_description.href.endswith("rules.md#unbalanced-concat")
    assert "also outliers-iqr" in cat.message  # two findings on one line: one diagnostic
    assert cat.message.splitlines()[0].startswith("cat_0 concatenates inputs whose ranges differ")
    rules_doc = Path(cat.code_description.href.split("#")[0].removeprefix("file://"))
    assert "## unbalanced-concat" in rules_doc.read_text(encoding="utf-8")
    # the server asked for file events and reported its state
    assert any(r.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES for r in recorder.registrations)
    assert "analysing" in recorder.states()
    # hover, inlay hints and code actions on that line
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=from_fs_path(str(model))),
        position=types.Position(line=line_of(model, "# @cat"), character=8)))
    assert hover is not None and "cat_0" in hover.contents.value
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=from_fs_path(str(model))),
        range=types.Range(types.Position(0, 0), types.Position(200, 0))))
    assert any(h.position.line == line_of(model, "# @cat") and "int8" in str(h.label) for h in hints)
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=from_fs_path(str(model))), range=cat.range,
        context=types.CodeActionContext(diagnostics=[cat])))
    titles = [a.title for a in actions]
    assert any("ignore unbalanced-concat" in t for t in titles), titles


async def test_config_edit_rediagnoses_before_the_worker_measures(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    config = root / "quantlens.toml"
    before = len(recorder.status)
    save(client, config, config.read_text() + "activation_error_method = \"NOCLIPPING\"\n")
    # the estimate comes first (state "stale", no worker progress yet), then the measurement
    first = await until(lambda: next((s for s in recorder.status[before:] if s["state"] in ("stale", "up to date")),
                                     None), 30, "re-diagnosis")
    assert first["state"] == "stale"
    assert any("estimated from statistics" in d.message for d in diagnostics(client, model) if d.code == "degraded-layer") \
        or all(d.code != "degraded-layer" for d in diagnostics(client, model))
    await until(lambda: recorder.status[-1]["state"] == "up to date", 120, "the worker's measurement")
    assert not any("estimated" in d.message for d in diagnostics(client, model))


async def test_a_burst_of_saves_gives_one_run(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    source = model.read_text()
    before = len(recorder.status)
    for i in range(20):
        save(client, model, source + f"\n# edit {i}\n")
        await asyncio.sleep(0.01)
    await until(lambda: recorder.status[-1]["state"] == "up to date" and len(recorder.status) > before, 120, "rerun")
    await asyncio.sleep(1.0)
    starts = [s for s in recorder.status[before:] if s["state"] == "analysing" and s["message"] == "starting"]
    assert len(starts) == 1, recorder.status[before:]


async def test_restart_with_a_warm_cache_needs_no_worker(tmp_path: Path) -> None:
    """A second server on the same folder publishes from the cache before any worker runs."""
    root = copy_fixture(tmp_path)
    for attempt in range(2):
        client = make_test_lsp_client()
        await client.start_io(*SERVER.server_command)
        try:
            recorder = await start(client, root)
            model = root / "model.py"
            await until(lambda: diagnostics(client, model), 120, "diagnostics")
            if attempt == 1:
                first = await until(lambda: next((s for s in recorder.status
                                                  if s["state"] in ("up to date", "stale", "failed")), None),
                                    30, "the first state")
                assert first["state"] == "up to date"
                assert "analysing" not in recorder.states()
        finally:
            await client.shutdown_session()
            await client.stop()


async def test_corrupt_cache_is_recomputed(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    cache = root / ".quantlens" / "cache"
    cache.mkdir(parents=True)
    (cache / "junk.qlc").write_bytes(b"\x00not msgpack")
    recorder, model = await _first_diagnostics(client, root)
    assert any(d.code == "unbalanced-concat" for d in diagnostics(client, model))


def test_server_process_never_imports_torch() -> None:
    code = ("import sys; import quantlens.daemon.server, quantlens.daemon.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert json.loads(out.stdout) == []



async def test_quantize_now_writes_the_report_and_show_report_finds_it(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    answer = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="quantlens.quantizeNow"))
    entry = answer[str(root.resolve())]
    report = Path(entry["report"])
    assert report.name == "index.html" and report.is_file()
    assert report.parent == root.resolve() / ".quantlens" / "report"
    assert "output SQNR" in entry["summary"] and str(report) in entry["summary"]
    assert any(str(report) in m.message for m in client.messages)
    shown = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="quantlens.showReport"))
    assert shown["report"] == str(report)
    # progress went through begin, reports with rising percentages, end
    kinds = [[type(v).__name__ for v in values] for values in client.progress_reports.values()]
    assert any(k[0] == "WorkDoneProgressBegin" and k[-1] == "WorkDoneProgressEnd" and len(k) > 3 for k in kinds)
    # every stage in words, to the end, with the percentage never going back
    for values in client.progress_reports.values():
        reports = [v for v in values if isinstance(v, types.WorkDoneProgressReport)]
        assert all(v.message.split()[0] in LABELS.values() for v in reports), [v.message for v in reports]
        assert [v.percentage for v in reports] == sorted(v.percentage for v in reports)
    messages = [v.message for values in client.progress_reports.values() for v in values
                if isinstance(v, types.WorkDoneProgressReport)]
    assert any(re.fullmatch(r"verifying \d+/\d+ passes(, \d+\.\d s left)?", m) for m in messages), messages
    assert any(m.startswith("sensitivity ") for m in messages)  # quantize-now runs the sensitivity search


async def test_cancel_from_the_editor_stops_the_worker_and_keeps_the_diagnostics(client: LanguageClient,
                                                                               tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    before = [(d.range.start.line, d.code) for d in diagnostics(client, model)]
    source = model.read_text()
    slow = source.replace("    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
                          "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        import time; time.sleep(1)\n")
    known = set(client.progress_reports)
    save(client, model, slow)
    token = await until(lambda: next(iter(set(client.progress_reports) - known), None), 60, "a progress token")
    await until(lambda: len(client.progress_reports[token]) >= 2, 60, "the first batch")
    client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))
    stale = await until(lambda: next((s for s in recorder.status if s["state"] == "stale" and s["message"]
                                      and "cancelled" in s["message"]), None), 30, "the cancelled state")
    assert stale["message"].startswith("cancelled")
    assert [(d.range.start.line, d.code) for d in diagnostics(client, model)] == before
    assert type(client.progress_reports[token][-1]).__name__ == "WorkDoneProgressEnd"


async def test_minimum_severity_setting_filters_and_no_config_says_how(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    assert any(d.severity == types.DiagnosticSeverity.Information or "also" in d.message
               for d in diagnostics(client, model))
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"quantlens": {"minimumSeverity": "warning"}}))
    await until(lambda: all(d.severity in (types.DiagnosticSeverity.Warning, types.DiagnosticSeverity.Error)
                            for d in diagnostics(client, model)), 10, "only warnings")
    assert diagnostics(client, model)


async def test_a_workspace_without_config_gets_one_message(client: LanguageClient, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    await start(client, tmp_path / "empty")
    message = await until(lambda: client.messages, 30, "a message")
    assert len(message) == 1 and message[0].type == types.MessageType.Info
    assert "quantlens.toml" in message[0].message
    assert not client.diagnostics


def test_tcp_listener_binds_loopback_only(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "quantlens.daemon.cli", "serve", "--tcp", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening = []
        for _ in range(200):
            rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
            listening = [r.split()[1] for r in rows if r.split()[3] == "0A" and int(r.split()[1].split(":")[1], 16) == port]
            if listening:
                break
            import time
            time.sleep(0.05)
        assert listening == ["0100007F:%04X" % port]  # 127.0.0.1 only
    finally:
        proc.kill()
        proc.wait()


async def test_unbalanced_concat_points_at_both_branches(client: LanguageClient, tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    recorder, model = await _first_diagnostics(client, root)
    cat = next(d for d in diagnostics(client, model) if d.code == "unbalanced-concat")
    related = {r.location.range.start.line for r in cat.related_information or []}
    assert {line_of(model, "# @branch_a"), line_of(model, "# @branch_b")} <= related  # the two branches' lines


async def test_a_change_while_progress_is_created_drops_the_stale_plan(tmp_path: Path) -> None:
    """The server awaits window/workDoneProgress/create before it starts a worker. A newer change
    that arrives meanwhile must win: the stale plan neither runs nor lands in the cache under the
    key of the inputs it was planned for (the worker would have read the newer files)."""
    root = copy_fixture(tmp_path)
    entered, release = asyncio.Event(), asyncio.Event()
    release.set()

    async def slow_create(client: LanguageClient, params: types.WorkDoneProgressCreateParams) -> None:
        client.progress_reports.setdefault(params.token, [])
        entered.set()
        await release.wait()  # the client answers when the test says so

    client = LanguageClient(converter_factory=default_converter)
    register_lsp_features(client, {**DEFAULT_CLIENT_FEATURES, types.WINDOW_WORK_DONE_PROGRESS_CREATE: slow_create})
    await client.start_io(*SERVER.server_command)
    try:
        recorder, model = await _first_diagnostics(client, root)
        source = model.read_text()
        before = len(recorder.status)
        entered.clear()
        release.clear()
        save(client, model, source + "\n# first edit\n")
        await asyncio.wait_for(entered.wait(), 30)  # the first edit's run waits for its progress token
        stale_key = project_inputs(load_config(root)).key
        logs = len(client.log_messages)
        save(client, model, source + "\n# second edit\n")
        await until(lambda: any("re-diagnosed" in m.message for m in client.log_messages[logs:]), 30,
                    "the second edit's re-diagnosis (its schedule follows at once)")
        fresh_key = project_inputs(load_config(root)).key
        release.set()
        await until(lambda: recorder.status[-1]["state"] == "up to date", 120, "the second edit's run")
        await asyncio.sleep(1.0)
        starts = [s for s in recorder.status[before:] if s["state"] == "analysing" and s["message"] == "starting"]
        assert len(starts) == 1, recorder.status[before:]
        assert stale_key != fresh_key
        assert Cache(root).load(stale_key) is None
        assert Cache(root).load(fresh_key) is not None
    finally:
        await client.shutdown_session()
        await client.stop()
