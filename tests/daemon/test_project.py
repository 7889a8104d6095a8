"""The incremental invariant: once the worker's results are in, what a running project settles
on after an edit equals what a fresh project (no cache) gives on the edited files.

Real worker processes on a private copy of fixtures/two_branch_concat; the fresh project is
the independent answer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantlens.core.distribution import Distribution
from quantlens.daemon.cache import Cache
from quantlens.daemon.lsp.diagnostics import to_diagnostics
from quantlens.daemon.project import Project
from quantlens.daemon.workers import WorkerPool
from tests.daemon.lsp_session import copy_fixture


@pytest.fixture(scope="module")
def pool():
    workers = WorkerPool()
    yield workers
    workers.close()


def _settle(project: Project, pool: WorkerPool) -> None:
    project.reload_config()
    plan = project.plan()
    if plan is not None:
        outcome = pool.run(plan.request, None, project.model_location())
        assert outcome.ok, outcome.problems
        project.accept(plan, outcome)
    assert not project.needs_run()


def _shown(project: Project) -> tuple[list[dict], dict]:
    snapshot = project.snapshot()
    assert snapshot.result is not None and not snapshot.estimated
    diagnostics = to_diagnostics(snapshot.result, snapshot.problems, rules_doc="file:///rules.md")
    return ([f.to_json() for f in snapshot.result.findings],
            {path: [(d.range.start.line, d.code, d.message) for d in ds] for path, ds in diagnostics.items()})


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text(encoding="utf-8")
    new = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert new != text, pattern
    path.write_text(new, encoding="utf-8")


EDITS = {
    "config": ("quantlens.toml", r"^activation_n_bits = 8$", "activation_n_bits = 6"),
    # the changes worth verifying depend on the diagnosis settings: points under 45 dB are
    # degraded here, and their fixes are verified
    "diagnosis": ("quantlens.toml", r"^weights_n_bits = 8$",
                  "weights_n_bits = 8\n\n[quantlens.diagnosis]\nthreshold_quantize_error = { sqnr = 0.45 }"),
    "model": ("model.py", r"^BRANCH_B_SCALE = .*$", "BRANCH_B_SCALE = 4.0"),
    "data": ("data.py", r"manual_seed\((\d+)\)", r"manual_seed(\g<1>7)"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_an_edit_settles_on_what_a_fresh_run_gives(kind: str, tmp_path: Path, pool: WorkerPool) -> None:
    root = copy_fixture(tmp_path)
    running = Project(root, root / "quantlens.toml", cache=Cache(root))
    _settle(running, pool)
    before = _shown(running)
    key = running.inputs.key
    file, pattern, replacement = EDITS[kind]
    _edit(root / file, pattern, replacement)
    running.reload_config()
    config_edit = kind in ("config", "diagnosis")
    assert (running.inputs.key == key) == config_edit  # only a config edit keeps the statistics
    if kind == "config":
        assert running.snapshot().estimated  # published at once, from the statistics
    if kind == "diagnosis":  # the measurements hold, the choice of what to verify does not
        assert not running.snapshot().estimated and running.needs_run()
    _settle(running, pool)
    fresh = Project(root, root / "quantlens.toml", cache=None)
    _settle(fresh, pool)
    assert _shown(running) == _shown(fresh)
    assert _shown(running) != before  # the edit mattered


def test_a_restarted_project_restores_from_the_cache(tmp_path: Path, pool: WorkerPool) -> None:
    """With the worker's threshold searches: neither the first snapshot after the run nor the
    one after a restart searches anything (the memo gains parts of distributions only)."""
    root = copy_fixture(tmp_path)
    first = Project(root, root / "quantlens.toml", cache=Cache(root))
    _settle(first, pool)
    searched = _searches(first)
    assert searched > 0
    shown = _shown(first)
    assert _searches(first) == searched
    second = Project(root, root / "quantlens.toml", cache=Cache(root))
    second.reload_config()
    assert second.restore() and not second.needs_run()
    assert _searches(second) == searched
    assert _shown(second) == shown
    assert _searches(second) == searched


def _searches(project: Project) -> int:
    """Searches in the project's memo (the parts of distributions that keys read are not)."""
    return sum(not isinstance(v, Distribution) for v in project.memo._searches.values())
