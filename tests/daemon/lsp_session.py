"""A real LSP client over stdio for the server tests (pytest-lsp), and what it records."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "quantlens.daemon.cli", "serve"])

CAPABILITIES = types.ClientCapabilities(
    window=types.WindowClientCapabilities(work_done_progress=True,
                                          show_document=types.ShowDocumentClientCapabilities(support=False)),
    workspace=types.WorkspaceClientCapabilities(
        did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True),
        inlay_hint=types.InlayHintWorkspaceClientCapabilities(refresh_support=True),
        configuration=True,
    ),
    text_document=types.TextDocumentClientCapabilities(
        hover=types.HoverClientCapabilities(content_format=[types.MarkupKind.Markdown]),
        publish_diagnostics=types.PublishDiagnosticsClientCapabilities(related_information=True),
    ),
)


def copy_fixture(tmp: Path, name: str = "two_branch_concat") -> Path:
    """A private copy of a fixture (tests edit it; fixtures/ is never touched)."""
    target = tmp / name
    shutil.copytree(FIXTURES / name, target, ignore=shutil.ignore_patterns(".quantlens", "__pycache__"))
    return target


class Recorder:
    """What the server sent besides diagnostics: status notifications and registrations."""

    def __init__(self, client: LanguageClient):
        self.client = client
        self.status: list[dict[str, Any]] = []
        self.registrations: list[types.Registration] = []

        @client.feature("quantlens/status")
        def on_status(params: Any) -> None:
            self.status.append(_plain(params))

        @client.feature(types.CLIENT_REGISTER_CAPABILITY)
        def on_register(params: types.RegistrationParams) -> None:
            self.registrations.extend(params.registrations)

        @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
        def on_refresh(params: Any) -> None:
            return None

    def states(self) -> list[str]:
        return [s["state"] for s in self.status]


async def start(client: LanguageClient, root: Path, options: dict[str, Any] | None = None) -> Recorder:
    recorder = Recorder(client)
    await client.initialize_session(types.InitializeParams(
        capabilities=CAPABILITIES, root_uri=from_fs_path(str(root)),
        workspace_folders=[types.WorkspaceFolder(uri=from_fs_path(str(root)), name=root.name)],
        initialization_options=options or {}))
    return recorder


async def until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
                poll_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy (servers answer in their own time); the benchmark
    polls faster, since the poll interval is part of what it measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def diagnostics(client: LanguageClient, path: Path) -> list[types.Diagnostic]:
    return client.diagnostics.get(from_fs_path(str(path)), [])


def save(client: LanguageClient, path: Path, text: str) -> None:
    """Write a file as an editor does (temp file + rename) and send didSave."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    client.text_document_did_save(types.DidSaveTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=from_fs_path(str(path)))))


def line_of(path: Path, marker: str) -> int:
    """0-based line of the first line containing ``marker``."""
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if marker in line:
            return i
    raise AssertionError(f"{marker!r} not in {path}")


def _plain(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return dict(params._asdict())  # pygls hands unknown notifications over as named tuples
