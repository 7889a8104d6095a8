"""Faults in user code, end to end through a real LSP client over stdio (pytest-lsp).

Each test runs one server on a private copy of fixtures/two_branch_concat, plants one fault
by writing the user's files, and checks the diagnostic (code, message, file and line, the
line taken from the text the test wrote), the status notification, that the server still
answers a request, and that saving the original text back brings the normal diagnostics
(the ``unbalanced-concat`` warning on model.py's ``# @cat`` line) back.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.uris import from_fs_path
from pytest_lsp import LanguageClient

from quantlens.daemon.project import REPEATED_FAILURES
from tests.daemon.lsp_session import FIXTURES, SERVER, Recorder, copy_fixture, diagnostics, save, start, until

FIX_TIMEOUT_S = 60.0
"""A full run of the fixture takes ~2 s on an idle machine, ~15 s on a loaded one; a bound, not a target."""
ANSWER_TIMEOUT_S = 5.0
NOT_TRAINING = "        if not self.training:  # calibration and simulation run in eval mode; the factory trains BN\n"
AFTER_CAT = "        y = torch.cat([a, b], dim=1)  # @cat\n"
FACTORY = "def build_model() -> nn.Module:\n"
IMPORTS = "from __future__ import annotations\n"


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


@dataclass
class Session:
    """A running server on a project copy, with the original text of each file."""

    client: LanguageClient
    recorder: Recorder
    root: Path
    original: dict[str, str]

    @property
    def model(self) -> Path:
        return self.root / "model.py"

    @property
    def config(self) -> Path:
        return self.root / "quantlens.toml"

    async def diagnostic(self, path: Path, code: str, line: int, timeout: float = FIX_TIMEOUT_S) -> types.Diagnostic:
        """The diagnostic with ``code`` on 0-based ``line`` of ``path``, once it is published."""
        return await until(lambda: next((d for d in diagnostics(self.client, path)
                                         if d.code == code and d.range.start.line == line), None),
                           timeout, f"a {code} diagnostic on {path.name}:{line + 1}")

    async def failed(self) -> dict[str, Any]:
        return await until(lambda: next((s for s in self.recorder.status if s["state"] == "failed"), None),
                           FIX_TIMEOUT_S, "a failed status")

    async def answers(self, path: Path, line: int) -> types.Hover | None:
        """A hover request is answered (None is an answer) within a few seconds."""
        started = time.monotonic()
        hover = await asyncio.wait_for(self.client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=from_fs_path(str(path))),
            position=types.Position(line=line, character=8))), ANSWER_TIMEOUT_S)
        assert time.monotonic() - started < ANSWER_TIMEOUT_S
        return hover

    async def recovers(self, *files: str, gone: str) -> None:
        """Save the original text of ``files``: the fixture's own warning returns and no
        diagnostic with code ``gone`` is left in any file."""
        before = len(self.recorder.status)
        for name in files:
            save(self.client, self.root / name, self.original[name])
        states = self.recorder.states
        await until(lambda: len(states()) > before and states()[-1] == "up to date", FIX_TIMEOUT_S,
                    "up to date after the fix")
        await self.diagnostic(self.model, "unbalanced-concat", _line(self.original["model.py"], "# @cat"), 0.5)
        left = [d for ds in self.client.diagnostics.values() for d in ds if d.code == gone]
        assert not left, left


async def _open(client: LanguageClient, tmp_path: Path, edits: dict[str, str] | None = None,
                options: dict[str, Any] | None = None) -> Session:
    """Copy the fixture, write ``edits`` (file name -> new text), start the server on it."""
    root = copy_fixture(tmp_path)
    original = {p.name: p.read_text(encoding="utf-8") for p in root.iterdir() if p.is_file()}
    for name, text in (edits or {}).items():
        (root / name).write_text(text, encoding="utf-8")
    recorder = await start(client, root, options)
    return Session(client, recorder, root, original)


def _fixture_text(name: str) -> str:
    return (FIXTURES / "two_branch_concat" / name).read_text(encoding="utf-8")


def _insert(text: str, anchor: str, added: str) -> str:
    """``text`` with ``added`` right after the line ``anchor``, which must occur once."""
    assert text.count(anchor) == 1, anchor
    return text.replace(anchor, anchor + added)


def _line(text: str, marker: str) -> int:
    """0-based line of the first line of ``text`` that contains ``marker``."""
    return next(i for i, line in enumerate(text.splitlines()) if marker in line)


def _in_forward(statements: str, *, imports: str = "") -> str:
    """model.py with ``statements`` run in eval mode only, right after the concatenation
    (the factory's own training passes stay clean, so the fault hits calibration)."""
    text = _insert(_fixture_text("model.py"), AFTER_CAT, NOT_TRAINING + statements)
    return _insert(text, IMPORTS, imports) if imports else text


def _in_factory(statement: str, *, imports: str) -> str:
    """model.py whose factory runs ``statement`` first."""
    return _insert(_insert(_fixture_text("model.py"), FACTORY, statement), IMPORTS, imports)


# ----------------------------------------------------------------------------- faults in model.py


async def test_syntax_error_is_shown_at_its_line(client: LanguageClient, tmp_path: Path) -> None:
    broken = _insert(_fixture_text("model.py"), AFTER_CAT, "        y = = y  # @syntax\n")
    s = await _open(client, tmp_path, {"model.py": broken})
    d = await s.diagnostic(s.model, "load", _line(broken, "# @syntax"))
    assert d.message.startswith("syntax error: invalid syntax"), d.message
    assert d.severity == types.DiagnosticSeverity.Error and d.source == "quantlens"
    assert (await s.failed())["message"] == d.message.split("\n(hint")[0]
    assert await s.answers(s.model, _line(broken, "# @cat")) is None  # no analysis yet: nothing to show
    await s.recovers("model.py", gone="load")


async def test_exception_in_forward_is_shown_at_the_raising_line(client: LanguageClient, tmp_path: Path) -> None:
    broken = _in_forward("            raise RuntimeError(\"boom in forward\")  # @raise\n")
    s = await _open(client, tmp_path, {"model.py": broken})
    d = await s.diagnostic(s.model, "user-code", _line(broken, "# @raise"))
    assert d.message == "TwoBranch.forward() on batch 0 of shape (16, 3, 32, 32) raised RuntimeError: boom in forward", d.message
    assert (await s.failed())["message"] == d.message
    await s.answers(s.model, _line(broken, "# @raise"))
    await s.recovers("model.py", gone="user-code")


async def test_sys_exit_in_the_factory_is_shown_at_that_line(client: LanguageClient, tmp_path: Path) -> None:
    broken = _in_factory("    sys.exit(3)  # @exit\n", imports="import sys\n")
    s = await _open(client, tmp_path, {"model.py": broken})
    d = await s.diagnostic(s.model, "user-code", _line(broken, "# @exit"))
    assert d.message.startswith("model factory build_model() called sys.exit(3)\n(hint: sys.exit() would end"), \
        d.message
    await s.failed()
    await s.answers(s.model, 0)
    await s.recovers("model.py", gone="user-code")


async def test_os_exit_in_the_factory_is_shown_where_it_was_called(client: LanguageClient, tmp_path: Path) -> None:
    broken = _in_factory("    os._exit(0)  # @exit\n", imports="import os\n")
    s = await _open(client, tmp_path, {"model.py": broken})
    d = await s.diagnostic(s.model, "user-code", _line(broken, "# @exit"))
    assert d.message.startswith("user code called os._exit(0) during loading the model and the data"), d.message
    await s.failed()
    await s.answers(s.model, 0)
    await s.recovers("model.py", gone="user-code")


async def test_user_output_never_reaches_the_protocol(client: LanguageClient, tmp_path: Path) -> None:
    """Thousands of printed lines, a fake LSP header and raw writes to fd 1 in the factory and
    in forward: the analysis still succeeds with the fixture's findings."""
    noisy = _in_factory("    for i in range(3000):\n"
                        "        print(f\"factory line {i}\")\n"
                        "    print(\"Content-Length: 2\\r\\n\\r\\n{}\", flush=True)\n"
                        "    print(\"to stderr\", file=sys.stderr)\n", imports="import os\nimport sys\n")
    noisy = _insert(noisy, AFTER_CAT, "        print(\"forward\", tuple(y.shape))\n"
                                      "        os.write(1, b\"Content-Length: 5\\r\\n\\r\\n{nope\\n\" * 50)\n")
    s = await _open(client, tmp_path, {"model.py": noisy})
    await s.diagnostic(s.model, "unbalanced-concat", _line(noisy, "# @cat"))
    await until(lambda: s.recorder.status[-1]["state"] == "up to date", FIX_TIMEOUT_S, "up to date")
    assert "failed" not in s.recorder.states()
    hover = await s.answers(s.model, _line(noisy, "# @cat"))
    assert hover is not None and "cat_0" in hover.contents.value


async def test_nan_activations_are_a_finding_on_the_first_layer_that_sees_them(client: LanguageClient,
                                                                              tmp_path: Path) -> None:
    broken = _in_forward("            y = y * float(\"nan\")  # @nan\n")
    s = await _open(client, tmp_path, {"model.py": broken})
    fuse = _line(broken, "# @fuse")  # the first quantization point after the NaN
    d = await s.diagnostic(s.model, "nonfinite", fuse)
    # every value of fuse's output: 128 samples x 32 channels x 8 x 8 (32x32 input, two stride-2 convs)
    assert d.message.startswith(f"fuse produced {128 * 32 * 8 * 8} NaN/Inf value(s) during calibration"), d.message
    assert d.severity == types.DiagnosticSeverity.Error
    # the analysis itself succeeded: its findings (the concat warning too) are shown
    await s.diagnostic(s.model, "unbalanced-concat", _line(broken, "# @cat"))
    await until(lambda: s.recorder.status[-1]["state"] == "up to date", FIX_TIMEOUT_S, "up to date")
    await s.answers(s.model, fuse)
    await s.recovers("model.py", gone="nonfinite")


async def test_nan_inputs_are_a_data_problem_at_the_data_function(client: LanguageClient, tmp_path: Path) -> None:
    yielded = "        yield smooth + 0.3 * torch.randn(BATCH_SIZE, 3, 32, 32, generator=generator)\n"
    data = _fixture_text("data.py").replace(yielded, (
        "        images = smooth + 0.3 * torch.randn(BATCH_SIZE, 3, 32, 32, generator=generator)\n"
        "        images[0, 0, 0, :5] = float(\"nan\")\n"
        "        yield images\n"))
    s = await _open(client, tmp_path, {"data.py": data})
    expected = "data function calibration_batches(): batch 0 contains 5 NaN/Inf input value(s)"
    at_config = await s.diagnostic(s.config, "data", _line(s.original["quantlens.toml"], "data ="))
    at_def = await s.diagnostic(s.root / "data.py", "data", _line(data, "def calibration_batches"))
    assert at_config.message.startswith(expected) and at_def.message == at_config.message, at_config.message
    await s.failed()
    await s.answers(s.root / "data.py", 0)
    await s.recovers("data.py", gone="data")


# ----------------------------------------------------------------------------- the config


async def test_missing_weights_file_is_shown_on_the_weights_line(client: LanguageClient, tmp_path: Path) -> None:
    config = _fixture_text("quantlens.toml") + "weights = \"missing.pt\"\n"
    s = await _open(client, tmp_path, {"quantlens.toml": config})
    d = await s.diagnostic(s.config, "config", _line(config, "weights ="))
    assert d.message.startswith("weights file 'missing.pt' not found (looked at "), d.message
    assert str(s.root.resolve() / "missing.pt") in d.message
    await s.failed()
    await s.answers(s.config, 0)
    await s.recovers("quantlens.toml", gone="config")


async def test_bad_config_value_keeps_the_last_good_findings(client: LanguageClient, tmp_path: Path) -> None:
    s = await _open(client, tmp_path)
    cat = _line(s.original["model.py"], "# @cat")
    await s.diagnostic(s.model, "unbalanced-concat", cat)
    await until(lambda: s.recorder.status[-1]["state"] == "up to date", FIX_TIMEOUT_S, "up to date")
    before = len(s.recorder.status)
    bad = s.original["quantlens.toml"].replace("activation_n_bits = 8", "activation_n_bits = 99")
    save(client, s.config, bad)
    d = await s.diagnostic(s.config, "config", _line(bad, "activation_n_bits"))
    assert "activation_n_bits" in d.message and "99" in d.message, d.message
    status = await until(lambda: next((st for st in s.recorder.status[before:] if st["state"] == "failed"), None),
                         5, "a failed status for the config")
    assert status["message"] == d.message.split("\n(hint")[0] and status["findings"] > 0
    # the last good analysis stays: its findings are still on model.py and its hover works
    assert any(x.code == "unbalanced-concat" and x.range.start.line == cat for x in diagnostics(client, s.model))
    hover = await s.answers(s.model, cat)
    assert hover is not None and "cat_0" in hover.contents.value
    await s.recovers("quantlens.toml", gone="config")


# ----------------------------------------------------------------------------- the worker process


async def test_hang_past_the_timeout_is_killed_and_reported(client: LanguageClient, tmp_path: Path) -> None:
    broken = _in_forward("            time.sleep(60)  # @hang\n", imports="import time\n")
    s = await _open(client, tmp_path, {"model.py": broken}, {"worker_timeout_s": 3})
    d = await s.diagnostic(s.config, "worker-timeout", _line(s.original["quantlens.toml"], "model ="))
    assert d.message.startswith("the worker was killed after 3 s without finishing calibration batch 1"), d.message
    await s.failed()
    await s.answers(s.model, 0)
    assert len(_workers(_server_pid())) == 1  # the hung worker is gone; the spare waits
    # a healthy run of the fixture can take longer than 3 s on a loaded machine: the fix runs
    # under a generous limit (the setting applies from the next run)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"quantlens": {"worker_timeout_s": 120}}))
    await s.recovers("model.py", gone="worker-timeout")


async def test_worker_killed_from_outside_is_reported(client: LanguageClient, tmp_path: Path) -> None:
    slow = _in_forward("            time.sleep(0.5)\n", imports="import time\n")
    s = await _open(client, tmp_path, {"model.py": slow})
    calibrating = await until(lambda: next((st for st in s.recorder.status if st["state"] == "analysing"
                                            and str(st["message"]).startswith("calibrating")), None),
                              FIX_TIMEOUT_S, "calibration progress")
    server = _server_pid()
    workers = await until(lambda: _workers(server) if len(_workers(server)) == 1 else None, 10, "the run's worker")
    (running,) = workers  # no spare during a run: it starts when the run ends
    os.kill(running, signal.SIGKILL)
    d = await s.diagnostic(s.config, "worker-crash", _line(s.original["quantlens.toml"], "model ="))
    match = re.match(r"the worker crashed \(SIGKILL: out of memory, or killed from outside\) "
                     r"during calibration batch (\d+)\n", d.message)
    assert match and int(match[1]) >= 1, d.message
    assert calibrating["message"] == "calibrating"  # the stage in words (the batch count is unknown)
    await s.failed()
    await s.answers(s.model, 0)
    await s.recovers("model.py", gone="worker-crash")


async def test_a_crash_loop_is_bounded(client: LanguageClient, tmp_path: Path) -> None:
    """os._exit(1) in the factory, then saves of the same text: the runs stop after
    REPEATED_FAILURES failures on the same inputs, and a real change runs again."""
    broken = _in_factory("    os._exit(1)  # @exit\n", imports="import os\n")
    s = await _open(client, tmp_path, {"model.py": broken})

    def starts() -> list[int]:
        return [i for i, st in enumerate(s.recorder.status)
                if st["state"] == "analysing" and st["message"] == "starting"]

    def run_failed(n: int) -> bool:
        """The n-th run has started and a failed status came after it (a save during a run
        would cancel it: the next save waits for this)."""
        begun = starts()
        return len(begun) >= n and any(st["state"] == "failed" for st in s.recorder.status[begun[n - 1]:])

    await until(lambda: run_failed(1), FIX_TIMEOUT_S, "the first run's failure")
    for n in range(2, REPEATED_FAILURES + 1):
        save(client, s.model, broken)
        await until(lambda n=n: run_failed(n), FIX_TIMEOUT_S, f"run {n}'s failure")
    for _ in range(2):
        count = len(s.recorder.status)
        save(client, s.model, broken)
        await until(lambda count=count: len(s.recorder.status) > count, 5, "the re-diagnosis after the save")
        await asyncio.sleep(1.0)  # a run that was (wrongly) started would have said "starting" by now
    assert len(starts()) == REPEATED_FAILURES, s.recorder.status
    assert s.recorder.states()[-1] == "failed"
    await s.diagnostic(s.model, "user-code", _line(broken, "# @exit"), 0.5)
    await s.answers(s.model, 0)
    await s.recovers("model.py", gone="user-code")
    assert len(starts()) == REPEATED_FAILURES + 1


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(("statement", "imports", "expected"), [
    ("    os._exit(0)  # @exit\n", "import os\n", "model.py:{line}: error[user-code]: user code called os._exit(0)"),
    ("    ctypes.string_at(0)  # @exit\n", "import ctypes\n",
     "quantlens.toml:2: error[worker-crash]: the worker crashed (SIGSEGV"),
], ids=["os-exit", "segfault"])
def test_cli_reports_a_dead_worker(tmp_path: Path, statement: str, imports: str, expected: str) -> None:
    root = copy_fixture(tmp_path)
    broken = _in_factory(statement, imports=imports)
    (root / "model.py").write_text(broken, encoding="utf-8")
    script = Path(sys.executable).parent / "quantlens"
    proc = subprocess.run([str(script), "check", str(root), "--no-progress"], capture_output=True, text=True,
                          env={**os.environ, "QUANTLENS_DEBUG": ""}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected.format(line=_line(broken, "# @exit") + 1) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ----------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc: no children files on this kernel)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_time(pid: int) -> int:
    """Clock ticks after boot at which ``pid`` started (field 22 of /proc/PID/stat)."""
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])


def _server_pid() -> int:
    """This test's server: the child of the test process that runs ``quantlens.daemon.cli serve``."""
    servers = [p for p in _children(os.getpid()) if "quantlens.daemon.cli serve" in _cmdline(p)]
    assert len(servers) == 1, servers
    return servers[0]


def _workers(server: int) -> list[int]:
    return [p for p in _children(server) if "quantlens.daemon.worker" in _cmdline(p)]
