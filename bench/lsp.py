"""Language server benchmarks: a real LSP client over stdio drives ``quantlens serve``.

For every model fixture, on a private copy under a temp folder:

1. config save -> re-diagnosis: quantlens.toml gets ``z_threshold = N`` (a new N each time: a
   search-memo miss) or loses it again (back to the settings already searched: a memo hit),
   then didSave; timed until the server's ``quantlens/status`` that closes the re-diagnosis
   (sent right after its publishDiagnostics, in the same call). The worker's follow-up
   measurement ("up to date") is awaited between saves, so saves never overlap;
2. model change: a comment appended to model.py, saved; timed until "up to date" with the new
   diagnostics, interleaved with ``quantlens check DIR --no-progress`` on the same copy;
3. cold start on a warm cache: a fresh server on the analysed folder, ``initialize`` -> first
   diagnostics;
4. idle RSS of the server and of its worker processes once the first analysis settled;

and on two_branch_concat the server's RSS across a long series of config saves, each awaited
only until its re-diagnosis (the worker runs they start are cancelled by the next save).

    .venv/bin/python bench/lsp.py [--quick] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stdio client harness lives in tests/, which is not installed

import msgpack  # noqa: E402
from lsprotocol import types  # noqa: E402
from pygls.protocol import default_converter  # noqa: E402
from pygls.uris import from_fs_path  # noqa: E402
from pytest_lsp import LanguageClient  # noqa: E402
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features  # noqa: E402

from quantlens.core.config import load_config  # noqa: E402
from quantlens.daemon.cache import Cache, project_inputs  # noqa: E402
from quantlens.daemon.server import DEBOUNCE_S, STATUS  # noqa: E402
from tests.daemon.lsp_session import CAPABILITIES, SERVER, copy_fixture, save, until  # noqa: E402

MODEL_FIXTURES = ["mobilenet_like", "deit_tiny", "two_branch_concat", "activations_zoo", "clean_mlp"]
CHURN_FIXTURE = "two_branch_concat"
SECTION = "## Language server"
REDIAGNOSED = re.compile(r"re-diagnosed in (\d+) ms")
WORKER_RUN = re.compile(r"worker run ([\d.]+) s")
SETTLED = ("stale", "up to date", "failed")
WORKER_TIMEOUT_S = 300.0
"""A first worker imports torch cold (~20 s here) before it calibrates."""


class Session:
    """One server process and a client that timestamps everything the server sends.

    Timestamps are taken in the client's handlers (as the messages are read), so polling
    for them costs no precision.
    """

    def __init__(self) -> None:
        self.status: list[tuple[float, dict[str, Any]]] = []
        self.publishes: list[tuple[float, str]] = []
        self.logs: list[tuple[float, str]] = []
        self.client = LanguageClient(converter_factory=default_converter)

        def on_publish(params: types.PublishDiagnosticsParams) -> None:
            self.publishes.append((time.perf_counter(), params.uri))

        def on_log(params: types.LogMessageParams) -> None:
            self.logs.append((time.perf_counter(), params.message))

        def on_status(params: Any) -> None:  # pygls hands unknown notifications over as named tuples
            self.status.append((time.perf_counter(), params if isinstance(params, dict) else dict(params._asdict())))

        register_lsp_features(self.client, {
            **DEFAULT_CLIENT_FEATURES, types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS: on_publish,
            types.WINDOW_LOG_MESSAGE: on_log, STATUS: on_status,
            types.CLIENT_REGISTER_CAPABILITY: lambda params: None,
            types.WORKSPACE_INLAY_HINT_REFRESH: lambda params: None})

    @property
    def pid(self) -> int:
        return self.client._server.pid  # the server process pytest-lsp spawned (no shell in between)

    async def open(self, root: Path) -> tuple[float, float, float]:
        """Start the server and initialize it on ``root``; returns when the process was spawned,
        when ``initialize`` was sent and when its answer came (the server has imported by then)."""
        spawned = time.perf_counter()
        await self.client.start_io(*SERVER.server_command)
        initialize = time.perf_counter()
        uri = from_fs_path(str(root))
        await self.client.initialize_session(types.InitializeParams(
            capabilities=CAPABILITIES, root_uri=uri, workspace_folders=[types.WorkspaceFolder(uri=uri, name=root.name)],
            initialization_options={}))
        return spawned, initialize, time.perf_counter()

    async def close(self) -> None:
        await self.client.shutdown_session()
        await self.client.stop()

    def statuses_after(self, index: int) -> list[tuple[int, float, dict[str, Any]]]:
        return [(i, t, s) for i, (t, s) in enumerate(self.status[index:], start=index)]

    async def rediagnosis(self, index: int, timeout: float = 60.0) -> tuple[int, float, dict[str, Any]]:
        """The first status from a publish (it carries a findings count) at or after ``index``."""
        return await self.until(lambda: next(((i, t, s) for i, t, s in self.statuses_after(index)
                                         if s["state"] in SETTLED and s["findings"] is not None), None),
                           timeout, "a re-diagnosis")

    async def measured(self, index: int) -> tuple[int, float, dict[str, Any]]:
        """The first "up to date" (or failed) status from a publish after ``index``."""
        return await self.until(lambda: next(((i, t, s) for i, t, s in self.statuses_after(index + 1)
                                         if s["state"] in ("up to date", "failed") and s["findings"] is not None),
                                        None), WORKER_TIMEOUT_S, "the worker's measurement")

    def log_after(self, index: int, pattern: re.Pattern[str]) -> tuple[float, float] | None:
        """(time, the number it quotes) of the first log line after ``index`` matching ``pattern``."""
        for t, message in self.logs[index:]:
            found = pattern.search(message)
            if found:
                return t, float(found.group(1))
        return None

    def published(self, index: int, uri: str) -> float | None:
        return next((t for t, u in self.publishes[index:] if u == uri), None)

    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`until`, and on a timeout what the server said last (a hung bench says why)."""
        try:
            return await until(predicate, timeout, what, POLL_S)
        except AssertionError as exc:
            returncode = self.client._server.returncode if self.client._server else None
            raise TimeoutError(f"{exc}; server exit status {returncode}; last statuses "
                               f"{[s for _, s in self.status[-5:]]}; last log lines "
                               f"{[m for _, m in self.logs[-5:]]}") from None


POLL_S = 0.005
"""The client polls for the server's messages this often (part of every time measured)."""


# ---------------------------------------------------------------------- processes


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def rss_mb(pid: int) -> float:
    return _status_field(pid, "VmRSS") / 1024


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def worker_pids(pid: int) -> list[int]:
    """The server's children that are quantlens workers."""
    found = []
    for child in children(pid):
        try:
            if b"quantlens.daemon.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


async def settle(pid: int, quiet_s: float = 0.5, timeout: float = 120.0) -> None:
    """Wait until the server and its children are idle (the new spare worker has imported
    torch), so the next measurement does not share the CPU with it."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid, *children(pid)]
        before = cpu_ticks(pids)
        await asyncio.sleep(quiet_s)
        if cpu_ticks(pids) - before <= 0.05 * quiet_s * ticks_per_s:
            return


# ---------------------------------------------------------------------- measurements


async def config_saves(s: Session, root: Path, saves: int) -> dict[str, Any]:
    """Config-only saves, each awaited until the worker's measurement has landed."""
    config = root / "quantlens.toml"
    original = config.read_text(encoding="utf-8")
    model_uri = from_fs_path(str(root / "model.py"))
    rows = []
    for i in range(saves):
        text = original + f"z_threshold = {9 + i // 2}\n" if i % 2 == 0 else original
        i_status, i_publish, i_log = len(s.status), len(s.publishes), len(s.logs)
        start = time.perf_counter()
        save(s.client, config, text)
        index, at, first = await s.rediagnosis(i_status)
        if first["state"] == "stale":
            await s.measured(index)
        published = s.published(i_publish, model_uri)
        logged = s.log_after(i_log, REDIAGNOSED)
        rows.append({"raw_s": at - start, "memo": "miss" if i % 2 == 0 else "hit", "state": first["state"],
                     "model_publish_s": (published - start) if published is not None and published <= at else None,
                     "server_ms": logged[1] if logged else None})
        await settle(s.pid)
    raw = [r["raw_s"] for r in rows]
    after = [t - DEBOUNCE_S for t in raw]
    published = [r["model_publish_s"] for r in rows if r["model_publish_s"] is not None]
    return {
        "saves": saves, "raw_median_ms": 1e3 * statistics.median(raw), "raw_p90_ms": 1e3 * p90(raw),
        "after_debounce_median_ms": 1e3 * statistics.median(after), "after_debounce_p90_ms": 1e3 * p90(after),
        "miss_after_debounce_median_ms": 1e3 * statistics.median(
            r["raw_s"] - DEBOUNCE_S for r in rows if r["memo"] == "miss"),
        "hit_after_debounce_median_ms": 1e3 * statistics.median(
            r["raw_s"] - DEBOUNCE_S for r in rows if r["memo"] == "hit"),
        "model_publish_median_ms": 1e3 * statistics.median(published) if published else None,
        "server_median_ms": statistics.median(r["server_ms"] for r in rows if r["server_ms"] is not None),
        "first_states": sorted({r["state"] for r in rows}),
        "samples_ms": [round(1e3 * t, 1) for t in raw],
    }


def engine_seconds(root: Path) -> float:
    """The worker's own stage timings (load, calibrate, search, simulate, ...) of the cached run."""
    inputs = project_inputs(load_config(root))
    blob = Cache(root).load(inputs.key)
    if blob is None:
        raise RuntimeError(f"no cache entry for {root} after a run")
    return sum(msgpack.unpackb(blob, raw=False)["timings"].values())


async def model_change(s: Session, root: Path, edit: int) -> dict[str, float]:
    model = root / "model.py"
    text = model.read_text(encoding="utf-8") + f"# bench edit {edit}\n"
    i_status, i_log = len(s.status), len(s.logs)
    start = time.perf_counter()
    save(s.client, model, text)
    index, _, _ = await s.rediagnosis(i_status)
    _, at, last = await s.measured(index)
    if last["state"] != "up to date":
        raise RuntimeError(f"{root.name}: the run after a model edit failed: {last}")
    await s.until(lambda: s.log_after(i_log, WORKER_RUN), 10, "the worker-run log line")
    worker = s.log_after(i_log, WORKER_RUN)
    assert worker is not None
    return {"daemon_s": at - start, "worker_run_s": worker[1], "engine_s": engine_seconds(root)}


def check_run(root: Path, out: Path) -> dict[str, float]:
    """Wall time of ``quantlens check`` and its worker's own stage timings (from ``--json``)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "quantlens.daemon.cli", "check", str(root), "--no-progress",
                           "--fail-on", "never", "--json", str(out)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"quantlens check {root} exited {done.returncode}: {done.stderr[-2000:]}")
    timings = json.loads(out.read_text(encoding="utf-8"))["timings_s"]
    return {"check_s": elapsed, "check_engine_s": sum(v for k, v in timings.items() if k != "diagnose")}


async def model_vs_check(s: Session, root: Path, rounds: int) -> dict[str, Any]:
    """Daemon (A) and ``quantlens check`` (B) interleaved, A B A B ..., after one warm-up pair."""
    rows = []
    for r in range(rounds + 1):
        await settle(s.pid)
        a = await model_change(s, root, r)
        await settle(s.pid)
        b = await asyncio.to_thread(check_run, root, root.parent / f"{root.name}-check.json")
        if r > 0:
            rows.append({**a, **b, "load": os.getloadavg()[0]})
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    return {
        "rounds": rounds, **{f"{k}_median": v for k, v in med.items()},
        "daemon_over_check": statistics.median(row["daemon_s"] / row["check_s"] for row in rows),
        "daemon_over_engine": statistics.median(row["daemon_s"] / row["engine_s"] for row in rows),
        "daemon_minus_debounce_over_engine": statistics.median(
            (row["daemon_s"] - DEBOUNCE_S) / row["engine_s"] for row in rows),
        "check_over_engine": statistics.median(row["check_s"] / row["check_engine_s"] for row in rows),
        "engine_over_check_engine": statistics.median(row["engine_s"] / row["check_engine_s"] for row in rows),
        "rows": rows,
    }


async def cold_starts(root: Path, starts: int, model_published: bool) -> dict[str, Any]:
    """Fresh servers on a folder whose cache holds the current inputs' entry."""
    model_uri = from_fs_path(str(root / "model.py"))
    rows = []
    for _ in range(starts):
        s = Session()
        spawned, initialize, answered = await s.open(root)
        if model_published:
            at = await s.until(lambda: s.published(0, model_uri), WORKER_TIMEOUT_S, "the first diagnostics")
        else:
            _, at, _ = await s.rediagnosis(0)
        _, _, first = await s.rediagnosis(0)
        rows.append({"from_initialize_s": at - initialize, "from_spawn_s": at - spawned,
                     "initialize_answer_s": answered - initialize,
                     "first_state": first["state"],
                     "worker_ran": any(st["state"] == "analysing" for _, st in s.status)})
        await s.close()
    return {
        "starts": starts, "waited_for": "publishDiagnostics(model.py)" if model_published else "quantlens/status",
        "from_initialize_median_ms": 1e3 * statistics.median(r["from_initialize_s"] for r in rows),
        "from_spawn_median_ms": 1e3 * statistics.median(r["from_spawn_s"] for r in rows),
        "initialize_answer_median_ms": 1e3 * statistics.median(r["initialize_answer_s"] for r in rows),
        "first_states": sorted({r["first_state"] for r in rows}),
        "worker_ran": any(r["worker_ran"] for r in rows),
    }


def idle_memory(pid: int) -> dict[str, Any]:
    workers = worker_pids(pid)
    return {"server_rss_mb": rss_mb(pid), "workers": len(workers),
            "worker_rss_mb": [round(rss_mb(w), 1) for w in workers]}


async def bench_fixture(name: str, tmp: Path, saves: int, rounds: int, starts: int) -> dict[str, Any]:
    root = copy_fixture(tmp, name)
    s = Session()
    await s.open(root)
    _, _, first = await s.measured(-1)
    if first["state"] != "up to date":
        raise RuntimeError(f"{name}: the first analysis failed: {first}")
    await settle(s.pid)
    memory = idle_memory(s.pid)
    model_published = s.published(0, from_fs_path(str(root / "model.py"))) is not None
    try:
        saved = await config_saves(s, root, saves)
        changed = await model_vs_check(s, root, rounds)
    finally:
        await s.close()
    cold = await cold_starts(root, starts, model_published)
    return {"fixture": name, "load_average": os.getloadavg()[0], "idle": memory, "config_save": saved,
            "model_change": changed, "cold_start": cold}


async def churn(tmp: Path, saves: int, budget_s: float, checkpoints: list[int]) -> dict[str, Any]:
    """Many config saves, each awaited only until its re-diagnosis (the server's log line)."""
    (tmp / "churn").mkdir()
    root = copy_fixture(tmp / "churn", CHURN_FIXTURE)
    config = root / "quantlens.toml"
    original = config.read_text(encoding="utf-8")
    s = Session()
    await s.open(root)
    await s.measured(-1)
    await settle(s.pid)
    points: list[dict[str, Any]] = [{"saves": 0, **_process_state(s.pid)}]
    latencies: list[float] = []
    began = time.perf_counter()
    try:
        for i in range(saves):
            i_log = len(s.logs)
            start = time.perf_counter()
            save(s.client, config, original + "z_threshold = 9\n" if i % 2 == 0 else original)
            at, _ = await s.until(lambda: s.log_after(i_log, REDIAGNOSED), 60, "a re-diagnosis")
            latencies.append(at - start)
            done = i + 1
            out_of_time = time.perf_counter() - began > budget_s
            if done in checkpoints or out_of_time or done == saves:
                points.append({"saves": done, "elapsed_s": time.perf_counter() - began,
                               "latency_median_ms": 1e3 * statistics.median(latencies[-10:]), **_process_state(s.pid)})
            if out_of_time:
                break
        save(s.client, config, original)
        await s.measured(len(s.status) - 1)
        await settle(s.pid)
        settled = {"saves": len(latencies), "settled": True, **_process_state(s.pid)}
    finally:
        await s.close()
    return {"fixture": CHURN_FIXTURE, "asked": saves, "done": len(latencies), "budget_s": budget_s,
            "elapsed_s": time.perf_counter() - began, "points": points, "settled": settled,
            "latency_median_ms": 1e3 * statistics.median(latencies), "latency_p90_ms": 1e3 * p90(latencies),
            "cancelled_runs": sum(1 for _, st in s.status if st["state"] == "stale" and st["findings"] is None)}


def _process_state(pid: int) -> dict[str, Any]:
    return {"server_rss_mb": rss_mb(pid), "threads": _status_field(pid, "Threads"),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "children": len(children(pid))}


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]


# ---------------------------------------------------------------------- report


def render(rows: list[dict[str, Any]], churned: dict[str, Any] | None, command: str, load: tuple[float, float],
           wall_s: float) -> str:
    debounce = f"{1e3 * DEBOUNCE_S:.0f} ms"
    lines = [
        SECTION,
        "",
        f"Produced by `{command}`. A real LSP client (pytest-lsp over stdio) drives "
        "`python -m quantlens.daemon.cli serve` on a private copy of each fixture; every time is taken in the client "
        "as the server's message arrives. "
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, a VM shared with other people's "
        f"jobs (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), Python "
        f"{platform.python_version()}, torch {_version('torch')}, pygls {_version('pygls')}; the whole run took "
        f"{wall_s / 60:.0f} min. Between measurements the bench waits until the server and its workers are idle "
        "(the spare worker that a run's end starts imports torch meanwhile).",
        "",
        "**Config save -> re-diagnosis.** quantlens.toml is written as an editor writes it (temp file + rename) and "
        "didSave is sent; timed to the `quantlens/status` notification that closes the re-diagnosis (state `stale`: "
        "estimated until the worker measures; it is sent right after the publishDiagnostics of the same call). "
        f"Saves alternate `z_threshold = N` with a new N each time (a threshold-search memo miss for the points "
        "whose bins reach beyond mu +- N sigma; the others keep their search, which N does not change) and removing it "
        "(settings searched before: a hit); the worker's measurement (\"up to date\") is awaited between saves. "
        f"The server debounces {debounce} (`DEBOUNCE_S`): *raw* includes it, *after debounce* = raw - {debounce}. "
        "Target: <= 100 ms median after the debounce. *server* = its own \"re-diagnosed in N ms\" log "
        "(reload config + re-diagnose + publish).",
        "",
        "| fixture | saves | raw median | raw p90 | after debounce median | after debounce p90 "
        "| after debounce, memo miss / hit | server | publishDiagnostics(model.py), raw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["config_save"]
        published = f"{c['model_publish_median_ms']:.0f} ms" if c["model_publish_median_ms"] is not None else \
            "none (no diagnostics there)"
        lines.append(
            f"| {r['fixture']} | {c['saves']} | {c['raw_median_ms']:.0f} ms | {c['raw_p90_ms']:.0f} ms | "
            f"**{c['after_debounce_median_ms']:.0f} ms** | {c['after_debounce_p90_ms']:.0f} ms | "
            f"{c['miss_after_debounce_median_ms']:.0f} / {c['hit_after_debounce_median_ms']:.0f} ms | "
            f"{c['server_median_ms']:.0f} ms | {published} |")
    lines += [
        "",
        "**Model change -> up to date.** A comment is appended to model.py and saved (a new cache key: calibration "
        "and measurement rerun, in the warm spare worker); timed to status \"up to date\" with the new diagnostics. "
        "Measured interleaved with `quantlens check DIR --no-progress --json FILE` on the same copy (daemon, check, "
        "daemon, check, ... after one warm-up pair; medians over rounds, ratios per round; `--json` only to read "
        "the check's own timings). `check` pays process start, its imports and a fresh worker's torch import; the "
        "daemon's worker is warm. *engine* = the sum of the worker's own stage timings (load, calibrate, "
        "thresholds, simulate, diagnosis passes): for the daemon from the run's cache entry, for check from its "
        "JSON. *worker run* = the server's \"worker run X s\" log (0.1 s resolution). Target: daemon <= 1.10x its "
        f"engine (the debounce, {debounce}, is part of the daemon's time; one column takes it out). *load* = the "
        "machine's 1-minute load average after each round (median): above 2 the 2 cores are shared.",
        "",
        "| fixture | rounds | daemon | check | daemon / check | engine, daemon | engine, check "
        "| engine daemon / check | worker run | daemon / engine | (daemon - debounce) / engine | check / its engine "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["model_change"]
        lines.append(
            f"| {r['fixture']} | {m['rounds']} | {m['daemon_s_median']:.2f} s | {m['check_s_median']:.2f} s | "
            f"**{m['daemon_over_check']:.2f}x** | {m['engine_s_median']:.2f} s | {m['check_engine_s_median']:.2f} s | "
            f"{m['engine_over_check_engine']:.2f}x | {m['worker_run_s_median']:.1f} s | "
            f"**{m['daemon_over_engine']:.2f}x** | {m['daemon_minus_debounce_over_engine']:.2f}x | "
            f"{m['check_over_engine']:.2f}x | {m['load_median']:.1f} |")
    lines += [
        "",
        "**Cold start on a warm cache, idle memory.** A fresh server on the analysed folder (its `.quantlens/` cache "
        "holds the current inputs' entry), timed from the `initialize` request to the first diagnostics for "
        "model.py (to the first `quantlens/status` where model.py gets none); *answer* = `initialize` -> its "
        "response (the server's start-up: Python and its imports), the rest is the session start (config, cache, "
        "re-diagnosis, publish). Median over the starts. *worker ran* says whether any start needed the worker (it "
        "should not). Idle RSS (VmRSS) of the server and of its worker processes (children running "
        "`quantlens.daemon.worker`: the warm spare) once the first analysis settled.",
        "",
        "| fixture | starts | initialize -> first diagnostics | of which: answer | first state "
        "| worker ran | idle RSS, server | idle RSS, workers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, i = r["cold_start"], r["idle"]
        workers = " + ".join(f"{w:.0f}" for w in i["worker_rss_mb"]) + " MB" if i["workers"] else "none"
        lines.append(
            f"| {r['fixture']} | {c['starts']} | **{c['from_initialize_median_ms']:.0f} ms** | "
            f"{c['initialize_answer_median_ms']:.0f} ms | {', '.join(c['first_states'])} | "
            f"{'yes' if c['worker_ran'] else 'no'} | {i['server_rss_mb']:.0f} MB | {workers} ({i['workers']}) |")
    if churned is not None:
        lines += _render_churn(churned)
    return "\n".join(lines) + "\n"


def _render_churn(c: dict[str, Any]) -> list[str]:
    scaled = "" if c["done"] == c["asked"] else (
        f" Asked for {c['asked']} saves; stopped after {c['done']} at the {c['budget_s']:.0f} s budget.")
    lines = [
        "",
        f"**Server memory across {c['done']} config saves** ({c['fixture']}). Saves alternate `z_threshold = 9` and "
        "removing it, each awaited only until its re-diagnosis (the server's \"re-diagnosed\" log line), so every "
        "save cancels the worker run the previous one started "
        f"({c['cancelled_runs']} runs reported cancelled); {c['elapsed_s']:.0f} s in all.{scaled} Latency = "
        "save -> that log line, raw (debounce included), median of the last 10 saves. The last row is after one "
        "final save, its measurement and the idle wait.",
        "",
        "| saves | server RSS | threads | open fds | child processes | latency, last 10 |",
        "|---|---|---|---|---|---|",
    ]
    for p in [*c["points"], c["settled"]]:
        latency = f"{p['latency_median_ms']:.0f} ms" if "latency_median_ms" in p else "-"
        label = f"{p['saves']}, settled" if p.get("settled") else str(p["saves"])
        lines.append(f"| {label} | {p['server_rss_mb']:.1f} MB | {p['threads']} | {p['fds']} | {p['children']} | "
                     f"{latency} |")
    lines.append(f"\nRe-diagnosis latency over all {c['done']} saves: median {c['latency_median_ms']:.0f} ms, "
                 f"p90 {c['latency_p90_ms']:.0f} ms (raw).")
    return lines


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def write_section(path: Path, section: str) -> None:
    """Replace this bench's section (its heading up to the next level-2 heading or the end) or append
    it; the other sections are left as they are."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, re.M | re.S)
    section = section.rstrip("\n") + "\n"
    if found is None:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    else:
        rest = text[found.end():]
        text = text[:found.start()] + section + ("\n" + rest if rest else "")
    path.write_text(text, encoding="utf-8")


def checkpoints(saves: int) -> list[int]:
    return sorted({n for n in (10, 50, 100, 250, 500, 750, saves) if n <= saves})


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantlens-lsp-bench-") as tmp:
        for name in args.fixtures:
            row = await bench_fixture(name, Path(tmp), args.saves, args.rounds, args.starts)
            rows.append(row)
            print(json.dumps(row), flush=True)
        churned = None
        if args.churn > 0:
            churned = await churn(Path(tmp), args.churn, args.churn_budget_s, checkpoints(args.churn))
            print(json.dumps(churned), flush=True)
    return rows, churned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: one fixture, a few of everything")
    parser.add_argument("--write", type=Path, help=f"replace (or append) the {SECTION!r} section of this markdown file")
    parser.add_argument("--fixtures", nargs="*", default=None)
    parser.add_argument("--saves", type=int, default=None, help="config saves per fixture (default 16; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="model-change / check rounds (default 5; quick 1)")
    parser.add_argument("--starts", type=int, default=None, help="cold starts per fixture (default 5; quick 1)")
    parser.add_argument("--churn", type=int, default=None, help="config saves for the memory series (default 1000; "
                                                                    "quick 20; 0 skips it)")
    parser.add_argument("--churn-budget-s", type=float, default=600.0, help="stop the memory series after this long")
    args = parser.parse_args()
    defaults = {"fixtures": [CHURN_FIXTURE], "saves": 4, "rounds": 1, "starts": 1, "churn": 20} if args.quick else \
        {"fixtures": MODEL_FIXTURES, "saves": 16, "rounds": 5, "starts": 5, "churn": 1000}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    command = " ".join([".venv/bin/python", "bench/lsp.py", *sys.argv[1:]])
    load_start, began = os.getloadavg()[0], time.perf_counter()
    rows, churned = asyncio.run(run(args))
    section = render(rows, churned, command, (load_start, os.getloadavg()[0]), time.perf_counter() - began)
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
