"""The SQLite settings every counterbox database shares, and its one transaction helper.

    conn = connect(Path("journal.db"))          # created 0600, WAL, synchronous=FULL
    with transaction(conn):                     # BEGIN IMMEDIATE ... COMMIT
        with transaction(conn):                 # nested: a savepoint
            conn.execute(...)

A transaction rolls back on any exception (BaseException: a cancelled task
too); a nested one rolls back to its savepoint and leaves the outer one going.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_MS = 5000  # another process (a command beside the agent) holding the write lock
FULL_BELOW = 64 * 1024  # bytes free: fewer, and an I/O error there is the disk being full

# One name for every savepoint: SQLite takes the most recent of a name, which is the innermost
# here (they nest strictly), and one constant statement stays in sqlite3's statement cache
# where a fresh name per savepoint would be compiled anew each time.
_SAVEPOINT = "counterbox_savepoint"


def disk_full(error: sqlite3.Error, path: Path) -> bool:
    """Whether SQLite's ``error`` on the database at ``path`` means its disk is full. SQLite says only
    "disk I/O error" when it cannot make its shared-memory or journal file there: then the disk's own
    free space (less than a few pages, ``FULL_BELOW``) tells."""
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code is None or code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < FULL_BELOW


def read_only(path: Path) -> bool:
    """Whether the filesystem holding ``path`` is mounted read-only (ext4 remounts itself so after an
    error): what SQLite calls a "disk I/O error" or "unable to open database file" there."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return True
        # ext4 gone read-only after an error may still say rw in its mount flags: a nameless file tells.
        os.close(os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as error:
        return error.errno == errno.EROFS
    return False


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (made meanwhile by another process, say).

    SQLite gives its -wal and -shm files the mode of the database file, so all
    three stay private to the service's user.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# The first bytes of a rollback journal that holds a transaction to undo; SQLite zeroes or truncates
# one it is done with.
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def roll_back_hot_journal(path: Path) -> None:
    """Let SQLite undo a transaction a crash cut short in rollback-journal mode, which a read-only
    connection cannot (SQLITE_READONLY_ROLLBACK: every open failed "attempt to write a readonly
    database", for ever). A journal is in that mode only while it is made, until its switch to WAL
    commits: a crash there leaves its first page (WAL mode already written in its header) beside a hot
    ``-journal``. One read on a writing connection rolls it back to what it was (empty). A database
    with a WAL holding anything is left alone: a writing connection's close would checkpoint it, and a
    wrong key must change no byte (a journal being made has written no WAL)."""
    try:
        with open(path.with_name(path.name + "-journal"), "rb") as rollback:
            if rollback.read(len(JOURNAL_MAGIC)) != JOURNAL_MAGIC:
                return  # spent: SQLite leaves nothing to undo in it
    except FileNotFoundError:
        return
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    conn = connect(path)
    try:
        conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the busy timeout set: read-only (it only reads, in the thread that opened it), or
    in autocommit mode (transactions are explicit) and usable from any thread one at a time (central's
    pool hands its connections between threads)."""
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def durable(conn: sqlite3.Connection) -> str:
    """WAL with synchronous=FULL: a commit has been fsynced when it returns. The mode SQLite took.

    Switching a new database to WAL can meet SQLITE_BUSY at once, without the busy timeout
    (SQLite refuses rather than risk a deadlock) while another process switches it too: wait
    and ask again, as the busy timeout would.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    conn.execute("PRAGMA synchronous = FULL")
    return mode


class transaction:
    """``with transaction(conn):`` BEGIN ... COMMIT, or a savepoint when ``conn`` is already in one.

    A class rather than a generator: it wraps every event the box records, and a generator's
    frame per transaction costs more than the SQL statements it runs.
    """

    __slots__ = ("_conn", "_mode", "_nested")

    def __init__(self, conn: sqlite3.Connection, *, mode: str = "IMMEDIATE") -> None:
        self._conn = conn
        self._mode = mode

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn
        self._nested = conn.in_transaction
        conn.execute(f"SAVEPOINT {_SAVEPOINT}" if self._nested else f"BEGIN {self._mode}")
        return conn

    def __exit__(self, kind, error, traceback) -> None:  # never swallows the error: it goes on after the rollback
        if kind is not None:
            self._roll_back()
            return
        try:
            self._conn.execute(f"RELEASE {_SAVEPOINT}" if self._nested else "COMMIT")
        except BaseException:
            self._roll_back()  # a commit that failed (a full disk, a busy lock) leaves nothing half done
            raise

    def _roll_back(self) -> None:
        conn = self._conn
        # An error that already ended the whole transaction (a RAISE(ROLLBACK), a full disk at
        # times) leaves nothing to roll back: the original error is what matters.
        if conn.in_transaction:
            if self._nested:
                conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
                conn.execute(f"RELEASE {_SAVEPOINT}")
            else:
                conn.execute("ROLLBACK")
