"""Watches the files a project depends on and turns bursts of changes into one rerun.

The language server hears of one save twice: from the editor (LSP ``didSave`` /
``workspace/didChangeWatchedFiles``) and from the file system (watchdog). Editors also save in
bursts (format-on-save, atomic rename). Both sources touch one :class:`Debouncer`, which calls
back once per quiet period with every path touched since its last call. Torch-free: the
language server imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from watchdog.events import (
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

logger = logging.getLogger("quantlens.watcher")

ChangeCallback = Callable[[frozenset[Path]], Awaitable[None] | None]

COUNTED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
]
"""File events that can change a file's content or existence. Given to watchdog as the event
filter, so opened / closed-without-write events (every read of a file in a watched folder) are
not even requested from inotify, and every directory event is dropped by the emitter."""


class Debouncer:
    """Collects touched paths and calls back once they have been quiet for ``delay_s``.

    One instance is shared by every source of change notifications, so the same save reported
    by the editor and by watchdog merges into one run. Runs are not serialised: if an async
    callback is still running when the next quiet period ends, a second run starts (the caller
    decides whether to cancel the stale one).
    """

    def __init__(self, delay_s: float, callback: ChangeCallback,
                 loop: asyncio.AbstractEventLoop) -> None:
        if delay_s < 0:
            raise ValueError(f"debounce delay must be >= 0 seconds, got {delay_s}")
        self._delay_s = delay_s
        self._callback = callback
        self._loop = loop
        self._pending: set[Path] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._runs: set[asyncio.Future[None]] = set()

    def touch(self, paths: Iterable[Path]) -> None:
        """Add ``paths`` to the next run and restart the quiet period (on the loop thread).

        Paths are resolved so that the editor's URI and watchdog's event name one file alike.
        An empty ``paths`` changes nothing.
        """
        resolved = {Path(path).resolve() for path in paths}
        if not resolved:
            return
        self._pending |= resolved
        self._cancel_timer()
        self._timer = self._loop.call_later(self._delay_s, self.flush)

    def touch_threadsafe(self, paths: Iterable[Path]) -> None:
        """Like :meth:`touch`, from any thread (watchdog's observer thread calls this)."""
        snapshot = tuple(paths)  # the caller may reuse its collection once this returns
        self._loop.call_soon_threadsafe(self.touch, snapshot)

    def flush(self) -> asyncio.Future[None] | None:
        """Call back now if anything is pending (the quiet timer, shutdown and tests use this).

        Returns the run's future when the callback is async, so shutdown can wait for it;
        awaiting it re-raises the callback's error, which has already been logged.
        """
        self._cancel_timer()
        if not self._pending:
            return None
        paths = frozenset(self._pending)
        self._pending.clear()
        return self._run(paths)

    def cancel(self) -> None:
        """Drop the pending paths and the timer; a run already started is left to finish."""
        self._cancel_timer()
        self._pending.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self, paths: frozenset[Path]) -> asyncio.Future[None] | None:
        """Call back, keeping any error out of the loop: a failed rerun must not stop the next."""
        try:
            result = self._callback(paths)
        except Exception:
            logger.exception("change callback failed for %d path(s)", len(paths))
            return None
        if not inspect.isawaitable(result):
            return None
        run = asyncio.ensure_future(result, loop=self._loop)
        self._runs.add(run)  # the loop keeps only a weak reference to a task
        run.add_done_callback(self._finished)
        return run

    def _finished(self, run: asyncio.Future[None]) -> None:
        self._runs.discard(run)
        if run.cancelled():
            return
        error = run.exception()
        if error is not None:
            logger.error("change callback failed", exc_info=error)


class _ChangeHandler(FileSystemEventHandler):
    """Forwards events on watched files to ``on_change``; runs on the observer thread."""

    def __init__(self, on_change: Callable[[set[Path]], None]) -> None:
        self.on_change = on_change
        # Replaced whole by FileWatcher.watch, so the observer thread never sees a half-updated
        # set, and an event queued before a watch() is judged against the new set.
        self.files: frozenset[Path] = frozenset()

    def dispatch(self, event: FileSystemEvent) -> None:
        """Report the watched files among the event's source and (atomic save) destination."""
        named = {Path(os.fsdecode(path)) for path in (event.src_path, event.dest_path) if path}
        changed = named & self.files
        if not changed:
            return
        try:
            self.on_change(changed)
        except Exception:  # an escaping error would end the observer thread, and all watching
            logger.exception("file change handler failed for %s", sorted(map(str, changed)))


class FileWatcher:
    """Reports changes to a set of files through one non-recursive watch per parent folder.

    Watching folders rather than files is what survives editors' atomic saves (a temp file
    renamed over the target) and delete-then-recreate, and what sees a missing file appear.
    """

    def __init__(self, on_change: Callable[[set[Path]], None]) -> None:
        self._handler = _ChangeHandler(on_change)
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}

    @property
    def folders(self) -> frozenset[Path]:
        """The folders watched now: the existing parents of the watched files, once started."""
        return frozenset(self._watches)

    def watch(self, files: Iterable[Path]) -> None:
        """Replace the set of watched files; folders no longer needed are unwatched.

        A folder that does not exist is skipped; calling again with the same files picks it up
        once it exists.
        """
        self._handler.files = frozenset(Path(file).resolve() for file in files)
        if self._observer is not None:
            self._reschedule(self._observer)

    def start(self) -> None:
        """Start the observer thread and watch the folders of the files given so far."""
        if self._observer is not None:
            raise RuntimeError("FileWatcher is already started")
        # Created here, not in __init__: the inotify observer starts a reader thread as soon as
        # it is constructed. Started before scheduling so each folder's emitter starts (and can
        # fail) on its own instead of failing the observer's start.
        observer = Observer()
        observer.start()
        self._observer = observer
        self._reschedule(observer)

    def stop(self) -> None:
        """Stop watching and join every watchdog thread."""
        observer = self._observer
        if observer is None:
            return
        self._observer = None
        self._watches.clear()
        observer.stop()
        observer.join()

    def _reschedule(self, observer: BaseObserver) -> None:
        wanted = {file.parent for file in self._handler.files}
        for folder in self._watches.keys() - wanted:
            observer.unschedule(self._watches.pop(folder))
        for folder in sorted(wanted - self._watches.keys()):
            self._schedule(observer, folder)

    def _schedule(self, observer: BaseObserver, folder: Path) -> None:
        if not folder.is_dir():
            logger.debug("not watching %s: no such folder", folder)
            return
        try:
            self._watches[folder] = observer.schedule(
                self._handler, str(folder), recursive=False, event_filter=COUNTED_EVENTS)
        except OSError as error:  # removed since is_dir(), or out of inotify watches
            logger.warning("cannot watch %s: %s", folder, error)
