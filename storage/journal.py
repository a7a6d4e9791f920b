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
event has been fsynced and survives a crash or a power cut.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import DataKeyError

_NONCE = 12
_KEY_CHECK = b"counterbox journal key check"
SCHEMA_VERSION = 1


class JournalError(Exception):
    """The journal cannot be opened or written."""


class JournalFull(JournalError):
    """The disk is full: the event was not recorded."""


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    body: dict[str, Any]


def _aad(seq: int, kind: str) -> bytes:
    return f"counterbox-event-v1\x00{seq}\x00{kind}".encode()


class Journal:
    def __init__(self, db: sqlite_utils.Database, aead: AESGCM, path: Path):
        self._db = db
        self._aead = aead
        self.path = path

    @classmethod
    def open(cls, path: Path, key: bytes) -> "Journal":
        """Open (creating it if absent) the journal at ``path`` with data ``key``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        db = sqlite_utils.Database(conn)
        journal = cls(db, AESGCM(key), path)
        try:
            journal._migrate_and_check()
        except BaseException:
            conn.close()
            raise
        return journal

    def _migrate_and_check(self) -> None:
        db = self._db
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise JournalError(f"{self.path}: SQLite refused WAL mode (is it on a filesystem without shared memory?)")
        db.execute("PRAGMA synchronous = FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path} has schema version {version}; this counterbox knows up to {SCHEMA_VERSION}")
        if version == 0:
            with self._transaction():
                db["meta"].create({"name": str, "value": str}, pk="name")
                db["events"].create({"seq": int, "kind": str, "sealed": bytes}, pk="seq", not_null={"kind", "sealed"})
                db["events"].create_index(["kind"])
                for action in ("UPDATE", "DELETE"):
                    db.execute(
                        f"CREATE TRIGGER events_append_only_{action.lower()} BEFORE {action} ON events "
                        "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"
                    )
                check = self._seal(0, "key-check", _KEY_CHECK)
                db["meta"].insert_all(
                    [
                        {"name": "key_check", "value": check.hex()},
                        {"name": "created_at", "value": str(time.time())},
                        {"name": "acked_seq", "value": "0"},
                        {"name": "session", "value": "0"},
                    ]
                )
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        sealed = bytes.fromhex(self._meta("key_check"))
        try:
            self._open_sealed(0, "key-check", sealed)
        except InvalidTag:
            raise DataKeyError(
                f"the data key does not open the journal {self.path}: it was created with another key. "
                "Nothing was changed; start with the key this journal was created with."
            ) from None

    # -- transactions --------------------------------------------------------

    def _transaction(self):
        return _Immediate(self._db.conn, self.path)

    def _meta(self, name: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()[0]

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE name = ?", [value, name])

    # -- sealing -------------------------------------------------------------

    def _seal(self, seq: int, kind: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, _aad(seq, kind))

    def _open_sealed(self, seq: int, kind: str, sealed: bytes) -> bytes:
        return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(seq, kind))

    # -- the log -------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Record an event durably and return its sequence number."""
        plaintext = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        with self._transaction():
            # Under BEGIN IMMEDIATE no other writer (the daemon or a command) can take this number.
            seq = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchone()[0]
            self._db.execute(
                "INSERT INTO events (seq, kind, sealed) VALUES (?, ?, ?)", [seq, kind, self._seal(seq, kind, plaintext)]
            )
        return seq

    def read_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Events with sequence numbers above ``seq``, in order, at most ``limit``."""
        rows = self._db.execute(
            "SELECT seq, kind, sealed FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [seq, limit]
        ).fetchall()
        return [self._event(*row) for row in rows]

    def _event(self, seq: int, kind: str, sealed: bytes) -> Event:
        try:
            return Event(seq, kind, json.loads(self._open_sealed(seq, kind, sealed)))
        except InvalidTag:
            raise JournalError(f"{self.path}: event {seq} ({kind}) fails authentication: the file was altered") from None

    def last(self, kind: str) -> Event | None:
        row = self._db.execute(
            "SELECT seq, kind, sealed FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1", [kind]
        ).fetchone()
        return self._event(*row) if row else None

    def last_seq(self, kind: str | None = None) -> int:
        if kind is None:
            return self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        return self._db.execute("SELECT coalesce(max(seq), 0) FROM events WHERE kind = ?", [kind]).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """How many events of each kind the journal holds (kinds are not secret; contents are)."""
        return dict(self._db.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

    # -- uplink cursor and sessions -------------------------------------------

    def acked_seq(self) -> int:
        """Everything up to this sequence number is held by central."""
        return int(self._meta("acked_seq"))

    def acknowledge(self, seq: int) -> bool:
        """Move the cursor forward to ``seq``; acknowledgements are cumulative and never move it back."""
        with self._transaction():
            if seq <= int(self._meta("acked_seq")):
                return False
            if seq > self.last_seq():
                raise JournalError(f"acknowledgement for seq {seq} beyond the last event {self.last_seq()}")
            self._set_meta("acked_seq", str(seq))
        return True

    def start_session(self) -> int:
        """Count one more start of the agent; batches carry it so central can tell restarts apart."""
        with self._transaction():
            session = int(self._meta("session")) + 1
            self._set_meta("session", str(session))
        return session

    def close(self) -> None:
        self._db.conn.close()


class _Immediate:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; disk-full becomes JournalFull."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self._path = path

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return False
            except sqlite3.OperationalError as error:
                exc = error
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise JournalFull(f"{self._path}: the disk is full; the event was not recorded") from exc
        if exc is not None and exc_type is None:
            raise JournalError(f"{self._path}: {exc}") from exc
        return False
