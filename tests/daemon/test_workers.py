"""Worker processes (daemon/workers.py): every fault of user code becomes a located problem,
and the pool keeps working after it. Real processes on a private fixture copy."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from quantlens.daemon.workers import WorkerLimits, WorkerPool
from tests.daemon.lsp_session import copy_fixture


def _request(root: Path) -> dict:
    return {"directory": str(root), "config_file": str(root / "quantlens.toml")}


def _factory_line(model: Path, code: str) -> int:
    """Insert ``code`` as the first statement of build_model(); its 1-based line."""
    lines = model.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("def build_model")) + 1
    lines.insert(at, f"    {code}")
    model.write_text("\n".join(lines) + "\n")
    return at + 1


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path)


def _workers_of_this_process() -> set[int]:
    """Live worker processes this test process started (children running quantlens.daemon.worker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(ppid) == os.getpid() and state != "Z" and b"quantlens.daemon.worker" in cmdline:
            found.add(int(entry.name))
    return found


def _workers_settled(others: set[int], expected: set[int]) -> set[int]:
    """The workers beyond ``others`` once they are ``expected`` (within 10 s), else as they
    are then: a process just started shows its parent's command line until it has exec'd, and
    one just stopped is gone only once reaped."""
    deadline = time.monotonic() + 10.0
    while True:
        found = _workers_of_this_process() - others
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_memory_limit_is_a_problem_not_a_crash(root: Path) -> None:
    line = _factory_line(root / "model.py", "torch.ones(4_000_000_000)  # 16 GB")
    pool = WorkerPool(WorkerLimits(timeout_s=120, memory_limit_mb=256), spare=False)
    try:
        outcome = pool.run(_request(root), None, None)
    finally:
        pool.close()
    assert not outcome.ok
    problem = outcome.problems[0]
    assert "out of memory (worker_memory_limit_mb = 256)" in problem.message
    assert problem.location is not None and problem.location.line == line  # the allocating line


def test_an_endless_loop_at_import_time_is_killed_at_the_timeout(root: Path) -> None:
    model = root / "model.py"
    model.write_text(model.read_text() + "\nwhile True:  # at import time\n    pass\n")
    pool = WorkerPool(WorkerLimits(timeout_s=3), spare=False)
    try:
        outcome = pool.run(_request(root), None, None)
    finally:
        pool.close()
    assert outcome.problems[0].code == "worker-timeout"
    assert "killed after 3 s without finishing loading the model and the data" in outcome.problems[0].message
    assert outcome.elapsed_s < 60


def test_a_segfault_names_the_signal_and_the_stage(root: Path) -> None:
    _factory_line(root / "model.py", "import ctypes; ctypes.string_at(0)")
    pool = WorkerPool(spare=False)
    try:
        outcome = pool.run(_request(root), None, None)
    finally:
        pool.close()
    assert "the worker crashed (SIGSEGV: a segmentation fault in native code) during loading" \
        in outcome.problems[0].message


def test_os_exit_is_reported_at_its_line(root: Path) -> None:
    line = _factory_line(root / "model.py", "import os; os._exit(0)")
    pool = WorkerPool(spare=False)
    try:
        outcome = pool.run(_request(root), None, None)
    finally:
        pool.close()
    problem = outcome.problems[0]
    assert "os._exit(0)" in problem.message
    assert problem.location is not None and problem.location.line == line
    assert Path(problem.location.file) == (root / "model.py").resolve()


def test_cancel_stops_the_run_and_the_spare_takes_the_next(root: Path) -> None:
    pool = WorkerPool()
    try:
        progress: list[tuple] = []
        model = root / "model.py"
        original = model.read_text()
        model.write_text(original.replace("    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
                                          "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
                                          "        import time; time.sleep(0.5)\n"))
        outcome_box: list = []
        thread = threading.Thread(target=lambda: outcome_box.append(
            pool.run(_request(root), lambda *a: progress.append(a), None)))
        thread.start()
        deadline = time.monotonic() + 120
        while not any(p[0] == "calibrate" for p in progress) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.spare_pid is None  # the replacement starts when the run ends
        pool.cancel()
        thread.join(30)
        assert outcome_box and outcome_box[0].cancelled and not outcome_box[0].problems
        spare = pool.spare_pid
        assert spare is not None  # started by the cancelled run's end
        model.write_text(original)
        start = time.monotonic()
        ran_in: set[int | None] = set()
        again = pool.run(_request(root), lambda *a: ran_in.add(pool.current_pid), None)
        assert again.ok and ran_in == {spare}
        assert time.monotonic() - start < 120
    finally:
        pool.close()


def test_the_spare_starts_when_a_run_ends_never_during_it(root: Path) -> None:
    """A run never shares the CPU with a spare's torch import; success and failure both leave
    exactly one spare waiting."""
    others = _workers_of_this_process()
    pool = WorkerPool()
    try:
        first = pool.spare_pid
        during: list[tuple[int | None, set[int]]] = []
        outcome = pool.run(_request(root), lambda *a: during.append((pool.spare_pid, _workers_of_this_process())),
                           None)
        assert outcome.ok, outcome.problems
        assert during and all(spare is None and workers - others == {first} for spare, workers in during)
        second = pool.spare_pid
        assert second not in (None, first) and pool.current_pid is None
        assert _workers_settled(others, {second}) == {second}
        _factory_line(root / "model.py", "raise ValueError('broken on purpose')")
        failed = pool.run(_request(root), None, None)
        assert not failed.ok and "broken on purpose" in failed.problems[0].message
        assert pool.spare_pid not in (None, second)
        assert _workers_settled(others, {pool.spare_pid}) == {pool.spare_pid}
    finally:
        pool.close()
    assert _workers_settled(others, set()) == set()


def test_a_run_no_longer_wanted_starts_no_worker_and_keeps_the_spare(root: Path) -> None:
    """The last check before a worker starts: a newer change came in meanwhile."""
    others = _workers_of_this_process()
    pool = WorkerPool()
    try:
        spare = pool.spare_pid
        outcome = pool.run(_request(root), None, None, wanted=lambda: False)
        assert outcome.cancelled and not outcome.ok and not outcome.problems
        assert pool.spare_pid == spare and _workers_settled(others, {spare}) == {spare}
    finally:
        pool.close()
