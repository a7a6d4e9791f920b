"""The journal: one ordered, append-only, encrypted log of what happened at the counter.

It is the box's single source of truth. Every sale, price list and misread is
an event with a sequence number (1, 2, 3, ... per device, never reused); the
outbox is simply the events after the cursor that central has acknowledged.

Each event's content is sealed with AES-256-GCM; its sequence number and kind
are the associated data, so a sealed body moved to another row or relabelled
fails to open. Only the sequence number and the kind are readable in the
file; no barcode, price or amount is.

    journal = Journal.open(Path("journal.db"), key)
    seq = journal.append("sale", {"barcode": "6901028075831", "price": 2300})
    for event in journal.read_after(journal.acked_seq()):
        ...

SQLite runs in WAL mode with synchronous=FULL: when ``append`` returns, the
event has been fsynced and survives a crash or a power cut. A Journal is one
connection for one thread; the daemon reaches it through ``storage.Store``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import sqlite
from .errors import DataKeyError, EventTooLarge, JournalError, JournalFull, NoJournal

_NONCE = 12
_KEY_CHECK = b"counterbox journal key check"
# The largest event body (its JSON) the journal takes; the agent passes the protocol's own
# limit, so that nothing is recorded that no batch could carry.
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
CACHE_KIB = 512  # SQLite's page cache for the journal (its default is 2 MiB)


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    body: dict[str, Any]


def _aad(seq: int, kind: str) -> bytes:
    return f"counterbox-event-v1\x00{seq}\x00{kind}".encode()


# -- schema: each migration takes the schema from the version before it --------------

def _v1(conn: sqlite3.Connection, seal: Callable[[int, str, bytes], bytes]) -> None:
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT NULL)")
    conn.execute("CREATE INDEX idx_events_kind ON events (kind)")
    for action in ("UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER events_append_only_{action.lower()} BEFORE {action} ON events "
            "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"
        )
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [
        ("key_check", seal(0, "key-check", _KEY_CHECK).hex()),
        ("created_at", str(time.time())),
        ("acked_seq", "0"),
        ("session", "0"),
    ])


MIGRATIONS: list[Callable[[sqlite3.Connection, Callable[[int, str, bytes], bytes]], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


class Journal:
    def __init__(self, *, conn: sqlite3.Connection, aead: AESGCM, path: Path, max_event_bytes: int):
        self._conn = conn
        self._aead = aead
        self.path = path
        self.max_event_bytes = max_event_bytes
        # Transactions and savepoints rolled back so far: whoever keeps a view of what it wrote (the
        # counter's ledger) sees here that some of it may be gone.
        self.rollbacks = 0

    @classmethod
    def open(cls, path: Path, key: bytes, *, create: bool = True,
             max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> "Journal":
        """Open the journal at ``path`` with data ``key``; create it (mode 0600) when absent and ``create``.

        A journal that exists is checked against ``key`` on a read-only connection first:
        a wrong key changes nothing on disk, not even a WAL checkpoint.
        """
        aead = AESGCM(key)
        if not path.exists():
            if not create:
                raise NoJournal(f"there is no journal at {path}: the agent has not run on this box yet")
            sqlite.create_private(path)
        else:
            _check_key(path, aead)
        with _translated(path):
            conn = sqlite.connect(path)
        journal = cls(conn=conn, aead=aead, path=path, max_event_bytes=max_event_bytes)
        try:
            with _translated(path):
                # An append-only log reads little back: a small page cache keeps the box's memory small.
                conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                if sqlite.durable(conn) != "wal":
                    raise JournalError(f"{path}: SQLite refused WAL mode (is it on a filesystem without shared memory?)")
            journal._migrate()
        except BaseException:
            conn.close()
            raise
        return journal

    def _migrate(self) -> None:
        # EXCLUSIVE: any number of processes opening a new journal at once agree on one schema.
        with self.transaction(mode="EXCLUSIVE"):
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            _check_version(self.path, version)
            if version:
                self._verify_key()  # another process created it between our check and this lock
            for migrate in MIGRATIONS[version:]:
                migrate(self._conn, self._seal)
            if version != SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _verify_key(self) -> None:
        _open_key_check(self.path, self._aead, self._meta("key_check"))

    # -- transactions --------------------------------------------------------

    def transaction(self, *, mode: str = "IMMEDIATE") -> "_Transaction":
        """``with journal.transaction():`` one transaction (a savepoint when nested); sqlite3's errors
        leave it as JournalError or JournalFull."""
        return _Transaction(self, sqlite.transaction(self._conn, mode=mode))

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def _meta(self, name: str) -> str:
        return self._conn.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()[0]

    def _set_meta(self, name: str, value: str) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE name = ?", [value, name])

    # -- sealing -------------------------------------------------------------

    def _seal(self, seq: int, kind: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, _aad(seq, kind))

    # -- the log -------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Record an event durably (or within the caller's transaction) and return its sequence number."""
        plaintext = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        if len(plaintext) > self.max_event_bytes:
            raise EventTooLarge(
                f"a {kind} event of {len(plaintext)} bytes is over the limit of {self.max_event_bytes} bytes "
                "that one batch can carry; it was not recorded"
            )
        if self._conn.in_transaction:  # the caller's (the store's group commit): no savepoint of its own needed
            with _translated(self.path):
                return self._insert(kind, plaintext)
        with self.transaction():
            return self._insert(kind, plaintext)

    def _insert(self, kind: str, plaintext: bytes) -> int:
        # Under BEGIN IMMEDIATE no other writer (the daemon or a command) can take this number.
        seq = self._conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchone()[0]
        self._conn.execute("INSERT INTO events (seq, kind, sealed) VALUES (?, ?, ?)", [seq, kind, self._seal(seq, kind, plaintext)])
        return seq

    def read_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Events with sequence numbers above ``seq``, in order, at most ``limit``."""
        return self.read_batch(seq, max_events=limit, max_bytes=None)

    def read_batch(self, after: int, *, max_events: int, max_bytes: int | None) -> list[Event]:
        """The events after ``after``, at most ``max_events``, and no more than ``max_bytes`` of
        event bodies in all, except that the first event is always taken (the journal took no
        event bigger than ``max_event_bytes``)."""
        events: list[Event] = []
        total = 0
        with _translated(self.path):
            rows = self._conn.execute(
                "SELECT seq, kind, sealed FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [after, max_events]
            )
            for seq, kind, sealed in rows:
                # The sealed size bounds the body's JSON: nonce and tag are 28 bytes.
                total += len(sealed)
                if events and max_bytes is not None and total > max_bytes:
                    break
                events.append(self._event(seq, kind, sealed))
        return events

    def get(self, seq: int) -> Event | None:
        with _translated(self.path):
            row = self._conn.execute("SELECT seq, kind, sealed FROM events WHERE seq = ?", [seq]).fetchone()
        return self._event(*row) if row else None

    def _event(self, seq: int, kind: str, sealed: bytes) -> Event:
        try:
            plaintext = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(seq, kind))
        except InvalidTag:
            raise JournalError(f"{self.path}: event {seq} ({kind}) fails authentication: the file was altered") from None
        return Event(seq, kind, json.loads(plaintext))

    def last(self, kind: str) -> Event | None:
        with _translated(self.path):
            row = self._conn.execute(
                "SELECT seq, kind, sealed FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1", [kind]
            ).fetchone()
        return self._event(*row) if row else None

    def of_kind(self, kind: str) -> list[Event]:
        """Every event of ``kind``, in order: for the small kinds whose whole history makes a view."""
        with _translated(self.path):
            rows = self._conn.execute("SELECT seq, kind, sealed FROM events WHERE kind = ? ORDER BY seq", [kind]).fetchall()
        return [self._event(*row) for row in rows]

    def last_seq(self, kind: str | None = None) -> int:
        with _translated(self.path):
            if kind is None:
                return self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            return self._conn.execute("SELECT coalesce(max(seq), 0) FROM events WHERE kind = ?", [kind]).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """How many events of each kind the journal holds (kinds are not secret; contents are)."""
        with _translated(self.path):
            return dict(self._conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

    # -- uplink cursor and sessions -------------------------------------------

    def acked_seq(self) -> int:
        """Everything up to this sequence number is held by central."""
        with _translated(self.path):
            return int(self._meta("acked_seq"))

    def acknowledge(self, seq: int) -> bool:
        """Move the cursor forward to ``seq``; acknowledgements are cumulative and never move it back."""
        with self.transaction():
            if seq <= int(self._meta("acked_seq")):
                return False
            last = self.last_seq()
            if seq > last:
                raise JournalError(f"acknowledgement for seq {seq} beyond the last event {last}")
            self._set_meta("acked_seq", str(seq))
        return True

    def start_session(self) -> int:
        """Count one more start of the agent; batches carry it so central can tell restarts apart."""
        with self.transaction():
            session = int(self._meta("session")) + 1
            self._set_meta("session", str(session))
        return session

    def close(self) -> None:
        self._conn.close()


def _check_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise JournalError(f"{path} has schema version {version}; this counterbox knows up to {SCHEMA_VERSION}. "
                           "Nothing was changed; run a newer counterbox")


def _open_key_check(path: Path, aead: AESGCM, sealed_hex: str) -> None:
    sealed = bytes.fromhex(sealed_hex)
    try:
        aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(0, "key-check"))
    except InvalidTag:
        raise DataKeyError(
            f"the data key does not open the journal {path}: it was created with another key. "
            "Nothing was changed; start with the key this journal was created with."
        ) from None


def _check_key(path: Path, aead: AESGCM) -> None:
    """Check the key and schema version of an existing journal without being able to write a byte."""
    with _translated(path):
        conn = sqlite.connect(path, readonly=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                return  # being created by another process right now: checked again under its lock
            _check_version(path, version)
            _open_key_check(path, aead, conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()[0])
        finally:
            conn.close()


class _translated:
    """``with _translated(path):`` sqlite3's errors, wherever they arise, as the store's own: a full
    disk as JournalFull. (A class, not a generator: it wraps every event recorded.)"""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None or not issubclass(kind, sqlite3.Error):
            return False
        code = getattr(error, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "full" in str(error):
            raise JournalFull(f"{self.path}: the disk is full; the event was not recorded") from error
        raise JournalError(f"{self.path}: {error}") from error


class _Transaction:
    __slots__ = ("_journal", "_transaction")

    def __init__(self, journal: "Journal", transaction: sqlite.transaction) -> None:
        self._journal = journal
        self._transaction = transaction

    def __enter__(self) -> None:
        with _translated(self._journal.path):
            self._transaction.__enter__()

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None:
            self._journal.rollbacks += 1
        try:
            with _translated(self._journal.path):
                self._transaction.__exit__(kind, error, traceback)  # commits, or rolls back and lets the error go on
        except BaseException:
            if kind is None:
                self._journal.rollbacks += 1  # the commit itself failed and was rolled back
            raise
        return _translated(self._journal.path).__exit__(kind, error, traceback)  # which leaves as the store's own


def remove_journal(path: Path) -> None:
    """Remove a closed journal's files (database, WAL, shared memory). What they held is sealed
    under the data key; removing them after destroying that key is the crypto-erase's tidy end."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).unlink()

