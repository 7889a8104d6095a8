"""The file watcher on real files with a real watchdog observer, and the debouncer on a real
asyncio loop: atomic saves, unwatched neighbours, re-watching, delete/re-create, thread
hygiene, and bursts / double reports merged into one run.

Waits poll with short sleeps up to a timeout. To show that something was NOT reported, a
"barrier" file in the same folder is written last and waited for: one folder's events arrive
in order, so once the barrier's event is in, every earlier event is too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quantlens.daemon.watcher import Debouncer, FileWatcher

TIMEOUT_S = 5.0
DELAY_S = 0.25


def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.005)


async def async_wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


class Recorder:
    """The on_change callback: keeps every call made from the observer thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[set[Path]] = []

    def __call__(self, paths: set[Path]) -> None:
        with self._lock:
            self._calls.append(set(paths))

    @property
    def calls(self) -> list[set[Path]]:
        with self._lock:
            return list(self._calls)

    def count(self, path: Path) -> int:
        return sum(path in call for call in self.calls)

    def reported(self) -> set[Path]:
        return set().union(*self.calls)

    def wait_for(self, path: Path, times: int = 1) -> None:
        wait_until(lambda: self.count(path) >= times)

    def barrier(self, path: Path) -> None:
        """Write the watched ``path`` and wait for it: all earlier events in its folder are in."""
        before = self.count(path)
        path.write_text(f"barrier {before}")
        self.wait_for(path, before + 1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watcher(recorder: Recorder) -> Iterator[FileWatcher]:
    watcher = FileWatcher(recorder)
    watcher.start()
    yield watcher
    watcher.stop()


def test_plain_write_is_reported(folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    model = folder / "model.py"
    model.write_text("v0")
    watcher.watch([model])
    model.write_text("v1")
    recorder.wait_for(model)
    assert recorder.reported() == {model}


def test_atomic_save_reports_the_target_once_and_never_the_temp_file(
        folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    model, temp, barrier = folder / "model.py", folder / ".model.py.tmp", folder / "barrier.txt"
    model.write_text("v0")
    watcher.watch([model, barrier])
    temp.write_text("v1")
    os.replace(temp, model)
    recorder.barrier(barrier)
    assert model.read_text() == "v1"
    assert recorder.count(model) == 1
    assert recorder.reported() == {model, barrier}


def test_unwatched_neighbours_reads_and_folders_are_ignored(
        folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    model, other, barrier = folder / "model.py", folder / "other.py", folder / "barrier.txt"
    named_like_a_file = folder / "assets"
    model.write_text("v0")
    watcher.watch([model, barrier, named_like_a_file])
    other.write_text("not watched")
    assert model.read_text() == "v0"  # opened + closed-without-write
    named_like_a_file.mkdir()  # a directory event on a watched name
    recorder.barrier(barrier)
    assert recorder.reported() == {barrier}


def test_a_new_watch_set_replaces_the_old_one(
        folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    first, second = folder / "first", folder / "second"
    first.mkdir()
    second.mkdir()
    old_same_folder, old_other_folder, new = first / "a.py", second / "b.py", first / "c.py"
    watcher.watch([old_same_folder, old_other_folder])
    assert watcher.folders == {first, second}
    old_same_folder.write_text("v1")
    recorder.wait_for(old_same_folder)

    threads_before = threading.active_count()
    watcher.watch([new])
    assert watcher.folders == {first}
    assert threading.active_count() == threads_before - 1  # second/'s emitter thread is gone
    calls_before = len(recorder.calls)
    old_other_folder.write_text("v1")
    old_same_folder.write_text("v2")
    recorder.barrier(new)
    assert all(call == {new} for call in recorder.calls[calls_before:])


def test_delete_then_recreate_is_reported_and_stays_watched(
        folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    model = folder / "model.py"
    model.write_text("v0")
    watcher.watch([model])
    model.unlink()
    recorder.wait_for(model)
    after_delete = recorder.count(model)
    model.write_text("v1")
    recorder.wait_for(model, after_delete + 1)
    after_create = recorder.count(model)
    with model.open("a") as handle:
        handle.write(" appended")
    recorder.wait_for(model, after_create + 1)


def test_missing_folder_is_skipped_and_a_missing_file_is_watched(
        folder: Path, recorder: Recorder, watcher: FileWatcher) -> None:
    weights_elsewhere = folder / "no_such_folder" / "model.pt"
    weights_here = folder / "model.pt"
    watcher.watch([weights_elsewhere, weights_here])
    assert watcher.folders == {folder}
    weights_here.write_bytes(b"\x00" * 16)
    recorder.wait_for(weights_here)
    assert recorder.reported() == {weights_here}

    weights_elsewhere.parent.mkdir()
    watcher.watch([weights_elsewhere, weights_here])  # re-watching picks the folder up
    assert watcher.folders == {folder, weights_elsewhere.parent}
    weights_elsewhere.write_bytes(b"\x01")
    recorder.wait_for(weights_elsewhere)


def test_paths_are_resolved_and_an_error_in_on_change_does_not_stop_watching(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "sub").mkdir()
    model = folder / "model.py"
    calls: list[set[Path]] = []

    def on_change(paths: set[Path]) -> None:
        calls.append(paths)
        if len(calls) == 1:
            raise RuntimeError("handler broke")

    watcher = FileWatcher(on_change)
    watcher.watch([folder / "sub" / ".." / "model.py"])
    watcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="quantlens.watcher"):
            model.write_text("v1")
            wait_until(lambda: len(calls) >= 2)  # created, then modified: the thread survived
    finally:
        watcher.stop()
    assert all(call == {model} for call in calls)
    assert any("handler broke" in record.exc_text for record in caplog.records if record.exc_text)


def test_stop_joins_every_watchdog_thread(folder: Path, recorder: Recorder) -> None:
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    threads_before = set(threading.enumerate())
    watcher = FileWatcher(recorder)
    watcher.watch([folder / "a" / "x.py", folder / "b" / "y.py"])
    watcher.start()
    assert len(set(threading.enumerate()) - threads_before) >= 3  # observer + 2 emitters
    watcher.stop()
    assert set(threading.enumerate()) == threads_before
    watcher.start()  # a stopped watcher starts again with the same files
    assert watcher.folders == {folder / "a", folder / "b"}
    watcher.stop()
    assert set(threading.enumerate()) == threads_before


class Runs:
    """A debouncer callback that records each run's paths, time and the files' contents."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.paths: list[frozenset[Path]] = []
        self.times: list[float] = []
        self.contents: list[dict[Path, str]] = []

    def __call__(self, paths: frozenset[Path]) -> None:
        self.paths.append(paths)
        self.times.append(self.loop.time())
        self.contents.append({path: path.read_text() for path in paths if path.exists()})


async def test_a_burst_of_saves_gives_one_run_with_the_last_state(folder: Path) -> None:
    loop = asyncio.get_running_loop()
    runs = Runs(loop)
    debouncer = Debouncer(DELAY_S, runs, loop)
    files = [folder / f"f{i}.py" for i in range(4)]
    for i in range(20):
        files[i % 4].write_text(str(i))
        debouncer.touch([files[i % 4]])
        last_touch = loop.time()
        await asyncio.sleep(0.01)
    await async_wait_until(lambda: len(runs.paths) >= 1)
    await asyncio.sleep(DELAY_S)  # a second run would be due by now
    assert runs.paths == [frozenset(files)]
    assert runs.contents == [{files[0]: "16", files[1]: "17", files[2]: "18", files[3]: "19"}]
    assert runs.times[0] - last_touch >= DELAY_S - 0.005  # loop-clock granularity


async def test_bursts_apart_by_more_than_the_delay_give_two_runs(folder: Path) -> None:
    loop = asyncio.get_running_loop()
    runs = Runs(loop)
    debouncer = Debouncer(0.05, runs, loop)
    first, second = folder / "a.py", folder / "b.py"
    debouncer.touch([first])
    debouncer.touch([first])
    await async_wait_until(lambda: len(runs.paths) == 1)
    debouncer.touch([second])
    await async_wait_until(lambda: len(runs.paths) == 2)
    assert runs.paths == [frozenset({first}), frozenset({second})]


async def test_editor_and_watchdog_reports_of_one_save_merge_into_one_run(folder: Path) -> None:
    loop = asyncio.get_running_loop()
    runs = Runs(loop)
    debouncer = Debouncer(DELAY_S, runs, loop)
    (folder / "sub").mkdir()
    model = folder / "model.py"
    model.write_text("v0")
    from_watchdog: list[set[Path]] = []

    def on_change(paths: set[Path]) -> None:
        from_watchdog.append(paths)
        debouncer.touch_threadsafe(paths)

    watcher = FileWatcher(on_change)
    watcher.watch([model])
    watcher.start()
    try:
        model.write_text("v1")
        debouncer.touch([folder / "sub" / ".." / "model.py"])  # the LSP didSave, unnormalised
        await async_wait_until(lambda: len(runs.paths) >= 1)
        await asyncio.sleep(DELAY_S)
    finally:
        watcher.stop()
    assert from_watchdog and all(paths == {model} for paths in from_watchdog)
    assert runs.paths == [frozenset({model})]
    assert runs.contents == [{model: "v1"}]


async def test_an_async_callback_error_is_logged_and_the_next_run_still_happens(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    seen: list[frozenset[Path]] = []

    async def callback(paths: frozenset[Path]) -> None:
        seen.append(paths)
        await asyncio.sleep(0)
        if len(seen) == 1:
            raise ValueError("rerun exploded")

    debouncer = Debouncer(0.05, callback, loop)
    first, second = folder / "a.py", folder / "b.py"
    with caplog.at_level(logging.ERROR, logger="quantlens.watcher"):
        debouncer.touch([first])
        await async_wait_until(lambda: any(r.name == "quantlens.watcher" for r in caplog.records))
        debouncer.touch([second])
        await async_wait_until(lambda: len(seen) == 2)
        run = debouncer.flush()
    assert run is None  # nothing pending after the second run
    assert seen == [frozenset({first}), frozenset({second})]
    errors = [r for r in caplog.records if r.name == "quantlens.watcher"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[1].args == ("rerun exploded",)
    assert loop_errors == []


async def test_a_sync_callback_error_is_logged_and_the_next_run_still_happens(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    seen: list[frozenset[Path]] = []

    def callback(paths: frozenset[Path]) -> None:
        seen.append(paths)
        if len(seen) == 1:
            raise ValueError("rerun exploded")

    debouncer = Debouncer(10.0, callback, loop)
    with caplog.at_level(logging.ERROR, logger="quantlens.watcher"):
        debouncer.touch([folder / "a.py"])
        assert debouncer.flush() is None
        debouncer.touch([folder / "b.py"])
        debouncer.flush()
    assert seen == [frozenset({folder / "a.py"}), frozenset({folder / "b.py"})]
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [("rerun exploded",)]


async def test_flush_runs_now_and_once_and_cancel_drops_pending(folder: Path) -> None:
    loop = asyncio.get_running_loop()
    seen: list[frozenset[Path]] = []

    async def callback(paths: frozenset[Path]) -> None:
        seen.append(paths)

    debouncer = Debouncer(0.05, callback, loop)
    assert debouncer.flush() is None  # nothing pending: no run
    debouncer.touch([folder / "a.py"])
    run = debouncer.flush()
    assert run is not None
    await run
    assert seen == [frozenset({folder / "a.py"})]
    debouncer.touch([folder / "b.py"])
    debouncer.cancel()
    debouncer.touch([])  # an empty touch does not restart anything
    await asyncio.sleep(0.15)  # three delays: the flushed and the cancelled timers stay silent
    assert seen == [frozenset({folder / "a.py"})]
    assert debouncer.flush() is None
