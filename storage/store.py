"""The journal's async face for the daemon: every SQLite call, and so every fsync, in one thread of its own.

    store = await Store.open(Path("journal.db"), key)
    seq = await store.append("sale", {...})             # durable when it returns
    event = await store.write(lambda journal: ...)      # any work that writes, in one transaction
    events = await store.read(lambda journal: journal.read_after(0))
    await store.close()

Writes are group-committed: the thread takes every write waiting in its queue
into one transaction and one fsync, and answers each only once that commit
is on disk. A write that fails rolls back to its own savepoint and fails
alone; a commit that fails fails every write in it. The event loop never
waits on the disk: it hands work to the thread and is called back once per
group.

A full disk refuses writes (JournalFull) and changes nothing recorded; the store
says so once in the log, shows it in ``full``, and takes writes again by itself
as soon as one commits, when space returns. SQLite's write-ahead log grows by
a page a commit until it is emptied into the database (every 1000 pages): on a
disk low on space the store empties it after each commit, and a write the disk
refuses has it emptied and is tried once more, so the log never takes the last
of the disk, nor what space returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import JournalError, JournalFull
from .journal import DEFAULT_MAX_EVENT_BYTES, Journal

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 256  # writes in one commit at most: bounds how long the first of them waits
# SQLite empties its write-ahead log into the database every 1000 pages (4 MiB); on a disk with less room
# than twice that, the store empties it after each commit, or the log would take the last of the disk and
# leave none for the database to take it in: full for good.
LOW_SPACE = 8 * 1024 * 1024  # bytes free
LOG_ROOM = 1024  # pages: the write-ahead log's length ahead of the commits, past SQLite's 1000-page checkpoint


@dataclass
class _Work:
    fn: Callable[[Journal], Any]
    writes: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


@dataclass
class _Health:
    """Written by the store's thread, read on the loop (one bool: no lock needed)."""

    full: bool = False
    gone: bool = False  # the journal's file was removed or replaced under it


class Store:
    def __init__(self, journal: Journal, thread: threading.Thread, work: queue.SimpleQueue, health: _Health):
        self._thread = thread
        self._work = work
        self._health = health
        self._closed = False
        self.path = journal.path

    @property
    def full(self) -> bool:
        """The disk was full at the last write: events are refused until a write commits again."""
        return self._health.full

    @classmethod
    async def open(cls, path: Path, key: bytes, *, create: bool = True,
                   max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> "Store":
        """Open the journal in the store's own thread, which then serves it until ``close``."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future = loop.create_future()
        work: queue.SimpleQueue = queue.SimpleQueue()
        health = _Health()

        def serve() -> None:
            try:
                journal = Journal.open(path, key, create=create, max_event_bytes=max_event_bytes, finish_rewrap=True)
            except BaseException as error:  # handed to the opener, who raises it
                loop.call_soon_threadsafe(_settle, [(opened, None, error)])
                return
            try:
                # Each commit then writes over room the log has (see there); none taken on a disk low on space.
                journal.reserve_log(LOG_ROOM, keep_free=LOW_SPACE)
            except Exception as error:  # room ahead only saves time: never the reason a store does not open
                logger.warning("journal %s: no room made ahead in its write-ahead log (%s)", path, error)
            loop.call_soon_threadsafe(_settle, [(opened, journal, None)])
            _serve(journal, work, health)

        thread = threading.Thread(target=serve, name=f"journal {path.name}", daemon=True)
        thread.start()
        try:
            journal = await opened
        except BaseException:
            # Failed, or the opener was cancelled while the journal opened: either way the thread
            # must end (it serves nobody), and the journal it may have opened is closed.
            work.put(_STOP)
            await asyncio.to_thread(thread.join)
            raise
        return cls(journal, thread, work, health)

    def write(self, fn: Callable[[Journal], T]) -> "asyncio.Future[T]":
        """Run ``fn(journal)`` in a transaction; the future's result is ``fn``'s, once the commit is durable.

        The thread has the work as this returns, not when the future is awaited: a scan is handed on in
        the reader's own turn of the loop. Each write of a group runs in a savepoint of its own, once: a
        write that fails leaves its neighbours' work as it was, in the journal and in the views they keep
        of it in memory (a keyed digit the counter holds records no event, and run twice it would be keyed
        twice). The one run again is a group whose every write the disk refused (the write-ahead log
        emptied to make room)."""
        return self._submit(fn, writes=True)

    def read(self, fn: Callable[[Journal], T]) -> "asyncio.Future[T]":
        """Run ``fn(journal)``, which only reads, in the store's thread."""
        return self._submit(fn, writes=False)

    def append(self, kind: str, body: dict[str, Any]) -> "asyncio.Future[int]":
        return self.write(lambda journal: journal.append(kind, body))

    def _submit(self, fn: Callable[[Journal], T], *, writes: bool) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(JournalError(f"{self.path}: the store is closed"))
        else:
            self._work.put(_Work(fn, writes, future, loop))
        return future

    async def close(self) -> None:
        """Finish the work handed in so far, close the journal and end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._work.put(_STOP)
        await asyncio.to_thread(self._thread.join)


def _settle(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """On the loop: answer a whole group at once (one call back per commit, not one per write)."""
    for future, result, error in results:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _serve(journal: Journal, work: queue.SimpleQueue, health: _Health) -> None:
    pending: deque = deque()
    try:
        while True:
            if not pending:
                pending.append(work.get())
            # Take whatever else is already waiting: one commit for all the writes among it.
            while len(pending) < MAX_GROUP:
                try:
                    pending.append(work.get_nowait())
                except queue.Empty:
                    break
            item = pending.popleft()
            if item is _STOP:
                # The last thing queued: work is handed in on the event loop, where close() refuses any more
                # before it puts the stop, so every piece handed in before it has been answered.
                return
            if not item.writes:
                _answer([_run(journal, item)])
                continue
            group = [item]
            while pending and pending[0] is not _STOP and pending[0].writes:
                group.append(pending.popleft())
            changes = journal.changes
            try:
                journal.check_file()  # one stat a group: never a sale into a file nobody will read again
            except JournalError as error:
                _report_gone(journal, health, error)
                _answer([(item, None, error) for item in group])
                continue
            results = _commit(journal, group)
            if _all_refused_as_full(results) and journal.empty_log():
                results = _commit(journal, group)  # the write-ahead log gave back its room: once more
            _watch_space(journal, health, results, wrote=journal.changes != changes)
            _answer(results)
            if any(error is None for _, _, error in results) and _low_on_space(journal.path):
                journal.empty_log()  # (answered first: the scan's signal waits for nothing of this)
    finally:
        journal.close()


def _report_gone(journal: Journal, health: _Health, error: JournalError) -> None:
    """Said once in the log: every write after it is refused the same way."""
    if not health.gone:
        health.gone = True
        logger.error("journal %s: %s", journal.path, error)


def _all_refused_as_full(results: list[tuple[_Work, Any, BaseException | None]]) -> bool:
    """The disk refused the group's whole transaction: none of it stands, so all of it may be run again.
    (One write refused in its own savepoint while the others committed is not: they would be recorded twice.)"""
    return all(error is not None for _, _, error in results) and any(
        isinstance(error, JournalFull) for _, _, error in results)


def _low_on_space(path: Path) -> bool:
    """Less room on the journal's disk than SQLite's write-ahead log may grow by before it empties it."""
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < LOW_SPACE


def _watch_space(journal: Journal, health: _Health, results: list, *, wrote: bool) -> None:
    """Say once that the disk is full, and once that it is not any more (a write committed)."""
    if any(isinstance(error, JournalFull) for _, _, error in results):
        if not health.full:
            health.full = True
            logger.error("journal %s: the disk is full; new events are refused until space returns", journal.path)
    elif health.full and wrote and any(error is None for _, _, error in results):
        health.full = False
        logger.warning("journal %s: space returned; events are recorded again", journal.path)


def _run(journal: Journal, item: _Work) -> tuple[_Work, Any, BaseException | None]:
    try:
        return item, item.fn(journal), None
    except Exception as error:
        return item, None, error


class _GroupLost(Exception):
    """SQLite ended the group's whole transaction (a full disk, an I/O error): none of it stands."""


def _commit(journal: Journal, group: list[_Work]) -> list[tuple[_Work, Any, BaseException | None]]:
    if len(group) == 1:  # its own transaction is all the savepoint it needs
        return [_run_alone(journal, group[0])]
    results = []
    try:
        with journal.transaction():
            for item in group:
                try:
                    with journal.transaction():  # a savepoint: one failing write leaves the others
                        results.append((item, item.fn(journal), None))
                except Exception as error:
                    if not journal.in_transaction:
                        # Not one write's failure: the whole transaction is gone, the writes before
                        # this one with it. Run nothing more (it would commit on its own, apart).
                        raise _GroupLost(str(error)) from error
                    results.append((item, None, error))
    except _GroupLost as lost:
        error = lost.__cause__ if isinstance(lost.__cause__, JournalError) else JournalError(str(lost))
        return [(item, None, error) for item in group]
    except JournalError as error:  # the commit itself failed: nothing in the group is on disk
        return [(item, None, error) for item in group]
    return results


def _run_alone(journal: Journal, item: _Work) -> tuple[_Work, Any, BaseException | None]:
    try:
        with journal.transaction():
            return item, item.fn(journal), None
    except Exception as error:
        return item, None, error


def _answer(results: list[tuple[_Work, Any, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for item, result, error in results:
        by_loop.setdefault(item.loop, []).append((item.future, result, error))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:
            pass  # that loop has closed: nobody is waiting any more
