"""``quantlens watch``: the daemon's engine without an editor (real processes, a fixture copy)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.daemon.lsp_session import copy_fixture

QUANTLENS = [sys.executable, "-m", "quantlens.daemon.cli"]


def test_once_exits_with_the_check_codes_and_uses_the_cache(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    first = subprocess.run([*QUANTLENS, "watch", str(root), "--once", "--no-progress", "--format", "github"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "title=quantlens unbalanced-concat" in first.stdout
    assert list((root / ".quantlens" / "cache").glob("*.qlc"))
    failing = subprocess.run([*QUANTLENS, "watch", str(root), "--once", "--no-progress", "--fail-on", "warning"],
                             capture_output=True, text=True, timeout=300)
    assert failing.returncode == 1  # the warning, from the cache this time
    assert "unbalanced-concat" in failing.stdout
    (root / "quantlens.toml").write_text((root / "quantlens.toml").read_text() + "activation_n_bits = 99\n")
    bad = subprocess.run([*QUANTLENS, "watch", str(root), "--once", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "quantlens.toml:" in bad.stderr and "Traceback" not in bad.stderr


def test_watch_prints_what_appears_and_disappears(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    config = root / "quantlens.toml"
    proc = subprocess.Popen([*QUANTLENS, "watch", str(root), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        _read_until(proc, lines, lambda: any("+ model.py" in line and "unbalanced-concat" in line for line in lines))
        config.write_text(config.read_text() + 'ignore = ["unbalanced-concat"]\n')
        _read_until(proc, lines, lambda: any(line.startswith("- ") and "unbalanced-concat" in line for line in lines))
    finally:
        proc.kill()
        proc.wait()


def _read_until(proc: subprocess.Popen, lines: list[str], done, timeout: float = 180.0) -> None:
    """Collect output lines (read on a thread, so a silent process cannot hang the test)."""
    if not hasattr(proc, "lines"):
        proc.lines = queue.Queue()  # type: ignore[attr-defined]
        threading.Thread(target=lambda: [proc.lines.put(line.rstrip()) for line in proc.stdout],  # type: ignore
                         daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "\n".join(lines)
        try:
            lines.append(proc.lines.get(timeout=remaining))  # type: ignore[attr-defined]
        except queue.Empty:
            pass
