"""Worker processes (daemon/workers.py): every fault of user code becomes a located problem,
and the pool keeps working after it. Real processes on a private fixture copy."""

from __future__ import annotations

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
        spare = pool.spare_pid
        pool.cancel()
        thread.join(30)
        assert outcome_box and outcome_box[0].cancelled and not outcome_box[0].problems
        model.write_text(original)
        start = time.monotonic()
        again = pool.run(_request(root), None, None)
        assert again.ok and spare is not None
        assert time.monotonic() - start < 120
    finally:
        pool.close()
