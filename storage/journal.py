"""The journal: one ordered, append-only, encrypted log of what happened at the counter.

It is the box's single source of truth. Every sale, price list and misread is
an event with a sequence number (1, 2, 3, ... per device, never reused); the
outbox is simply the events after the cursor that central has acknowledged.

Each event's content is sealed with AES-256-GCM under one of the journal's data
keys (storage/sealing.py: the outer key from the credential or key file wraps
them); its sequence number and kind are the associated data, so a sealed body
moved to another row or relabelled fails to open. Each event also carries the
hash of the one before (storage/chain.py), so ``verify`` names the first row
altered, moved or removed. Only the sequence number, the kind and the key id
are readable in the file; no barcode, price or amount is.

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
import dataclasses
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import chain, sealing, sqlite
from .chain import Verification
from .errors import DataKeyError, EventTooLarge, JournalError, JournalFull, NoJournal
from .keys import KEY_SIZE, destroy_secret, leftovers
from .schema import LOOKED_UP, LOOKED_UP_TERM, MIGRATIONS, SCHEMA_VERSION

logger = logging.getLogger(__name__)

__all__ = ["DAMAGED", "DEFAULT_MAX_EVENT_BYTES", "Event", "Journal", "MIGRATIONS", "SCHEMA_VERSION", "remove_copies_left", "remove_journal",
           "verify_journal"]

# The largest event body (its JSON) the journal takes; the agent passes the protocol's own
# limit, so that nothing is recorded that no batch could carry.
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
CACHE_KIB = 128  # SQLite's page cache for the journal (its default is 2 MiB): an append touches a few pages
_WAL_HEADER, _WAL_FRAME_HEADER = 32, 24  # bytes: SQLite's write-ahead log is its header, then frames of a page each


# An event read with ``damaged=True`` whose seal did not open: its body names the kind it was.
DAMAGED = "damaged"


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    body: dict[str, Any]


# The one statement that finds an event's place: its seq, the hash it chains to and the data key
# that seals it (the newest, which another process may have just added).
_LAST = "SELECT seq, chain, (SELECT max(id) FROM keys) FROM events ORDER BY seq DESC LIMIT 1"
_FIRST = ("SELECT (SELECT value FROM meta WHERE name = 'chain_anchor_seq'), "
          "(SELECT value FROM meta WHERE name = 'chain_anchor'), (SELECT max(id) FROM keys)")
_INSERT = "INSERT INTO events (seq, kind, key_id, sealed, chain) VALUES (?, ?, ?, ?, ?)"
_COLUMNS = "seq, kind, key_id, sealed"
# A NUL in the event's JSON: an escape behind an even number of backslashes (as provisioning/protocol.py
# refuses it on the wire).
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# An event's body as it is sealed: canonical (sorted keys, no spaces), UTF-8 as it is, no NaN. One
# encoder for every event: json.dumps with options builds a new one at each call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode


def _indexed(kind: str) -> str:
    """The term that lets SQLite answer a query for ``kind`` from the partial index (schema v4)."""
    return f" AND {LOOKED_UP_TERM}" if kind in LOOKED_UP else ""


class Journal:
    def __init__(self, *, conn: sqlite3.Connection, outer: bytes, path: Path, max_event_bytes: int,
                 finish_rewrap: bool = False):
        self._conn = conn
        self._outer = outer
        self._finish_rewrap = finish_rewrap  # the agent's: a re-wrap's new key, opening it, replaces the old
        # Unwrapped data keys by id. Filled only from committed rows (rotation runs in a transaction
        # of its own), and a key row is never removed, so an id here always means the same key.
        self._keys: dict[int, AESGCM] = {}
        self.path = path
        self.max_event_bytes = max_event_bytes
        # Transactions and savepoints rolled back so far: whoever keeps a view of what it wrote (the
        # counter's ledger) sees here that some of it may be gone.
        self.rollbacks = 0
        self._folded: tuple[int, dict[str, Any]] | None = None  # retention's checkpoint, as last opened
        # Where the next event goes: (the last seq, the hash it chains to, the newest data key), as last
        # read or written here, with SQLite's data_version and our rollback count at that moment.
        self._tail: tuple[int, bytes, int] | None = None
        self._tail_seen: tuple[int, int] = (-1, -1)
        self._tail_held = False  # checked in the transaction under way, which no other writer can enter
        self._file = _file_id(path)  # the file opened: a journal removed or replaced meanwhile is another
        # Per transaction level under way (a savepoint in a transaction), what to call should it be rolled back.
        self._undo: list[list[Callable[[], None]]] = []

    def check_file(self) -> None:
        """Raise JournalError if the file at the journal's path is no longer the one opened (removed, or
        another moved there): what would be written next would go into a file nobody will read again."""
        if _file_id(self.path) != self._file:
            raise JournalError(f"{self.path} was removed or replaced while the journal was open: nothing more is "
                               "recorded in it; what it held is in the file opened, if a process still holds it "
                               "(start the agent again to open the journal at its path)")

    @classmethod
    def open(cls, path: Path, key: bytes, *, create: bool = True,
             max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, finish_rewrap: bool = False) -> "Journal":
        """Open the journal at ``path`` with its outer ``key`` (the credential or the key file); create
        it (mode 0600) when absent and ``create``; bring an older schema up to this one. With
        ``finish_rewrap`` (the agent's store), opened with the new key of a re-wrap that waits, the new
        key takes the old one's place; a command beside an agent still under the old key never does that.

        A journal that exists is checked against ``key`` on a read-only connection first:
        a wrong key changes nothing on disk, not even a WAL checkpoint.
        """
        AESGCM(key)  # a key of the wrong size fails here, before anything is opened
        if not path.exists():
            if not create:
                raise NoJournal(f"there is no journal at {path}: the agent has not run on this box yet")
            check_no_log_left(path)
            sqlite.create_private(path)
        else:
            check_path(path)
            with _translated(path):
                sqlite.roll_back_hot_journal(path)
            size = path.stat().st_size
            if size == 0 and not create:  # being made by the agent this moment, or left so by a start cut short
                raise _being_made(path)
            if 0 < size < 512:
                # Empty is a journal being made (its file comes before SQLite's first page); a file
                # shorter than any page was cut short, and SQLite would take it for an empty one.
                raise JournalError(f"{path} is {size} bytes, shorter than any journal: it was cut short. "
                                   "Nothing was changed; restore it from a backup or move it away")
            _check_key(path, key)
        with _translated(path):
            conn = sqlite.connect(path)
        journal = cls(conn=conn, outer=key, path=path, max_event_bytes=max_event_bytes, finish_rewrap=finish_rewrap)
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
        try:
            self._migrate_once(finish=self._finish_rewrap)
        except JournalFull as error:
            if not self._finish_rewrap:
                raise
            # Finishing the re-wrap is a write: on a full disk the journal opens under the wrappings that wait,
            # as for a command, and the re-wrap is finished at a start with space (never an agent that cannot
            # start, answering no scan).
            logger.warning("journal %s: the re-wrap waiting for this key is finished at a later start: %s",
                           self.path, error)
            self._migrate_once(finish=False)

    def _migrate_once(self, *, finish: bool) -> None:
        if not finish:
            # A journal of this schema opened by a command beside the agent: nothing to write, so no write lock
            # to wait for (the agent commits a scan at a time, and a command waiting its turn could time out).
            with self.snapshot():
                if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                    self._tail = None
                    self._keys = _open_keys(self._conn, self.path, self._outer, SCHEMA_VERSION)
                    return
        # EXCLUSIVE: any number of processes opening a new journal at once agree on one schema.
        with self.transaction(mode="EXCLUSIVE"):
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            _check_version(self.path, version)
            if version:
                # Checked again under the lock: another process may have created it since our check.
                _open_keys(self._conn, self.path, self._outer, version)
            self._tail = None
            for migrate in MIGRATIONS[version:]:
                migrate(self._conn, self._outer)
            if version != SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if finish:
                finish_rewrap(self._conn, self.path, self._outer)
            self._keys = _open_keys(self._conn, self.path, self._outer, SCHEMA_VERSION)

    # -- transactions --------------------------------------------------------

    def transaction(self, *, mode: str = "IMMEDIATE") -> "_Transaction":
        """``with journal.transaction():`` one transaction (a savepoint when nested); sqlite3's errors
        leave it as JournalError or JournalFull."""
        return _Transaction(self, sqlite.transaction(self._conn, mode=mode))

    def snapshot(self) -> "_Transaction":
        """``with journal.snapshot():`` the reads within see the journal at one moment: what another
        process (the agent beside a command) commits meanwhile, retention's fold included, is not seen
        half. A deferred transaction that only reads: it takes no write lock."""
        return self.transaction(mode="DEFERRED")

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` should the transaction under way (or its savepoint) be rolled back, or its commit fail:
        what a write keeps in memory beside the journal goes back with what it wrote. (The store runs a group of
        writes in one transaction, whose commit may fail after each write returned; and may run the group
        again.) Outside a transaction each write commits by itself: nothing to call."""
        if self._undo:
            self._undo[-1].append(undo)

    @property
    def in_transaction(self) -> bool:
        with _translated(self.path):  # a closed journal's connection raises even when asked this
            return self._conn.in_transaction

    @property
    def changes(self) -> int:
        """Rows written on this connection so far (SQLite's count): tells a write that wrote from one that did not."""
        with _translated(self.path):
            return self._conn.total_changes

    def _meta(self, name: str) -> str:
        return chain.meta(self._conn, name)

    def _set_meta(self, name: str, value: str) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE name = ?", [value, name])

    # -- keys ----------------------------------------------------------------

    def _data_key(self, key_id: int) -> AESGCM:
        aead = self._keys.get(key_id)
        if aead is None:  # added since we loaded them (a rotation by a command beside the agent)
            self._keys = _open_keys(self._conn, self.path, self._outer, SCHEMA_VERSION)
            aead = self._keys.get(key_id)
            if aead is None:
                raise JournalError(f"{self.path}: there is no data key {key_id} in the journal")
        return aead

    def rotate_key(self) -> int:
        """Add a new data key, which seals every event recorded from now on; the events before keep
        theirs and stay readable. Returns its id. Runs in a transaction of its own."""
        self._alone("a key rotation")
        self._tail = None
        with self.transaction():
            if _pending_rewrap(self._conn) is not None:
                # Its wrapping under the new outer key could not be made here: that key is not at hand.
                raise JournalError(f"{self.path}: a re-wrap waits for its new outer key to be installed; install it "
                                   "and open the journal with it (start the agent, with room on its disk: on a full "
                                   "disk it finishes the re-wrap at a later start) before rotating the data key")
            key_id = self._conn.execute("SELECT max(id) FROM keys").fetchone()[0] + 1
            self._conn.execute("INSERT INTO keys (id, wrapped, created_at) VALUES (?, ?, ?)",
                               [key_id, sealing.wrap(self._outer, key_id, os.urandom(KEY_SIZE)), time.time()])
        return key_id

    def rewrap(self, outer: bytes) -> None:
        """Wrap every data key under a new outer key (the credential or key file changes); the events
        are not touched. Both keys open the journal until it is first opened with the new one, which
        then replaces the old: a new key lost before it was installed (on a tmpfs, at a power cut)
        leaves the journal to the old one, never to no key at all."""
        AESGCM(outer)
        if secrets.compare_digest(outer, self._outer):
            # It would wait for the new key for ever: opened with it, the journal takes it for the old one.
            raise JournalError("the new key is the journal's outer key already: nothing to re-wrap (give a new "
                               "32-byte key)")
        self._alone("re-wrapping the data keys")
        with self.transaction():
            rows = self._conn.execute("SELECT id, wrapped FROM keys").fetchall()
            pending = {str(key_id): sealing.wrap(outer, key_id, sealing.unwrap(self._outer, key_id, wrapped, self.path)).hex()
                       for key_id, wrapped in rows}
            self._conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = "
                               "excluded.value", [_REWRAPPED, json.dumps(pending)])

    def rewrap_waiting(self) -> bool:
        """A re-wrap waits for its new outer key to be installed (the agent opened with the old one)."""
        with _translated(self.path):
            return _pending_rewrap(self._conn) is not None

    def data_keys(self) -> list[tuple[int, float]]:
        """(id, created_at) of every data key, oldest first; the last seals new events."""
        with _translated(self.path):
            return self._conn.execute("SELECT id, created_at FROM keys ORDER BY id").fetchall()

    def _alone(self, what: str) -> None:
        if self.in_transaction:
            raise JournalError(f"{what} runs in a transaction of its own, not inside another")

    def verify(self, *, seals: bool = True) -> Verification:
        """Check the hash chain from its anchor to the last event (and, with ``seals``, that every
        event's seal opens); the first event that fails is named."""
        with _translated(self.path):
            verification = chain.verify(self._conn, self._opens if seals else None)
            return _anchor_checked(self._conn, verification, self._data_key if seals else None)

    def _opens(self, seq: int, kind: str, key_id: int, sealed: bytes) -> bool:
        try:
            sealing.open_sealed(self._data_key(key_id), seq, kind, sealed)
        except (InvalidTag, JournalError):
            return False
        return True

    # -- the log -------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Record an event durably (or within the caller's transaction) and return its sequence number."""
        try:
            # UTF-8 strictly, as a batch carries it: text with a lone surrogate (a file name that was not
            # UTF-8) is refused here, not recorded and then left unsendable at the head of the outbox.
            plaintext = _ENCODE(body).encode()
        except UnicodeEncodeError:
            raise JournalError(f"a {kind} event holds text that is not UTF-8 (bytes a file name or file "
                               "carried undecoded); it was not recorded") from None
        except ValueError:
            raise JournalError(f"a {kind} event holds a NaN or infinite number, which JSON has not; "
                               "it was not recorded") from None
        except RecursionError:
            raise JournalError(f"a {kind} event nests too deeply for JSON; it was not recorded") from None
        if b"\\u0000" in plaintext and _NUL.search(plaintext):
            raise JournalError(f"a {kind} event holds a NUL character, which no batch carries (central's "
                               "databases keep no NUL in text); it was not recorded")
        if len(plaintext) > self.max_event_bytes:
            raise EventTooLarge(
                f"a {kind} event of {len(plaintext)} bytes is over the limit of {self.max_event_bytes} bytes "
                "that one batch can carry; it was not recorded"
            )
        try:
            try:
                inside = self._conn.in_transaction
            except sqlite3.ProgrammingError as error:  # closed: the journal's own error, as every other
                raise JournalError(f"{self.path}: {error}") from None
            if inside:  # the caller's (the store's group commit): no savepoint of its own needed
                with _translated(self.path):
                    return self._insert(kind, plaintext)
            with self.transaction():
                return self._insert(kind, plaintext)
        except BaseException:
            self._tail = None  # whatever became of the insert, the next one reads its place anew
            raise

    def _insert(self, kind: str, plaintext: bytes) -> int:
        # Under BEGIN IMMEDIATE no other writer (the daemon or a command) can take this place.
        last, previous, key_id = self._place()
        seq = last + 1
        sealed = sealing.seal(self._data_key(key_id), seq, kind, plaintext)
        link = chain.link(previous, seq, kind, key_id, sealed)
        self._conn.execute(_INSERT, [seq, kind, key_id, sealed, link])
        self._tail = (seq, link, key_id)
        return seq

    def _place(self) -> tuple[int, bytes, int]:
        """(the last seq, the hash the next event chains to, the data key that seals it).

        Kept in memory only while nothing else can have moved it: another process's commit changes
        SQLite's data_version, a rollback here our count of them (and an insert that failed drops
        it). Checked once per transaction: inside one, no other writer can come in."""
        conn = self._conn
        if self._tail is not None and self._tail_held and conn.in_transaction \
                and self._tail_seen[1] == self.rollbacks:
            return self._tail
        seen = (conn.execute("PRAGMA data_version").fetchone()[0], self.rollbacks)
        if self._tail is None or seen != self._tail_seen:
            row = conn.execute(_LAST).fetchone()
            if row is None:  # the first event, or the first after the chain's anchor
                anchor_seq, anchor, key_id = conn.execute(_FIRST).fetchone()
                row = (int(anchor_seq), bytes.fromhex(anchor), key_id)
            self._tail = row
        self._tail_seen, self._tail_held = seen, conn.in_transaction
        return self._tail

    def read_after(self, seq: int, limit: int = 1000, *, damaged: bool = False) -> list[Event]:
        """Events with sequence numbers above ``seq``, in order, at most ``limit``."""
        return self.read_batch(seq, max_events=limit, max_bytes=None, damaged=damaged)

    def read_batch(self, after: int, *, max_events: int, max_bytes: int | None, damaged: bool = False) -> list[Event]:
        """The events after ``after``, at most ``max_events``, and no more than ``max_bytes`` of
        event bodies in all, except that the first event is always taken (the journal took no
        event bigger than ``max_event_bytes``).

        With ``damaged``, an event whose seal does not open (bit rot, a row edited in the file) is
        read as a ``damaged`` event naming its kind, rather than stopping the read: the readers
        that must go on past it (the uplink, the counter's fold) count it for nothing and say so."""
        events: list[Event] = []
        total = 0
        with _translated(self.path):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [after, max_events]
            )
            for seq, kind, key_id, sealed in rows:
                # The sealed size bounds the body's JSON: nonce and tag are 28 bytes.
                total += len(sealed) if isinstance(sealed, bytes) else 0  # (not bytes: damaged, read as such)
                if events and max_bytes is not None and total > max_bytes:
                    break
                events.append(self._event(seq, kind, key_id, sealed, damaged=damaged))
        return events

    def get(self, seq: int) -> Event | None:
        with _translated(self.path):
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM events WHERE seq = ?", [seq]).fetchone()
        return self._event(*row) if row else None

    def _event(self, seq: int, kind: str, key_id: int, sealed: bytes, *, damaged: bool = False) -> Event:
        try:
            if not (isinstance(sealed, bytes) and len(sealed) >= sealing.SEALED_MIN and isinstance(kind, str)):
                # A flipped bit in the row's header reads its body back as NULL, a number or a few bytes.
                raise InvalidTag
            plaintext = sealing.open_sealed(self._data_key(key_id), seq, kind, sealed)
        except (InvalidTag, JournalError) as error:
            reason = "fails authentication: the file was altered" if isinstance(error, InvalidTag) else \
                f"has no data key to open it (key {key_id})"
            if damaged:
                return Event(seq, DAMAGED, {"kind": str(kind), "reason": f"its sealed body {reason}"})
            raise JournalError(f"{self.path}: event {seq} ({kind}) {reason}") from None
        return Event(seq, kind, json.loads(plaintext))

    def last(self, kind: str, *, upto: int | None = None) -> Event | None:
        """The latest event of ``kind`` (at or before seq ``upto``): in the log, or kept by retention's checkpoint."""
        bound, values = ("", [kind]) if upto is None else (" AND seq <= ?", [kind, upto])
        with _translated(self.path):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE kind = ?{_indexed(kind)}{bound} ORDER BY seq DESC", values)
            for row in rows:  # the latest that opens: one damaged in the file never stops the views
                event = self._event(*row, damaged=True)
                if event.kind != DAMAGED:
                    return event
        kept = [event for event in self._kept() if event.kind == kind and (upto is None or event.seq <= upto)]
        return kept[-1] if kept else None

    def of_kind(self, kind: str) -> list[Event]:
        """Every event of ``kind``, in order (those retention kept first): for the small kinds whose
        whole history makes a view."""
        with _translated(self.path):
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM events WHERE kind = ?{_indexed(kind)} ORDER BY seq",
                                      [kind]).fetchall()
        opened = (self._event(*row, damaged=True) for row in rows)  # one damaged is left out, never a stop
        return [event for event in self._kept() if event.kind == kind] + [e for e in opened if e.kind != DAMAGED]

    def last_seq(self, kind: str | None = None) -> int:
        if kind is not None:
            event = self.last(kind)
            return event.seq if event else 0
        with _translated(self.path):
            # Past the anchor: when retention has removed every event, numbering goes on from there.
            return self._place()[0]

    # -- retention ---------------------------------------------------------------

    def anchor_seq(self) -> int:
        """The chain starts after this event: those up to it were folded away by retention (0: none)."""
        with _translated(self.path):
            return chain.anchor(self._conn)[0]

    def checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """Retention's checkpoint: (the seq it was folded up to, the state it was given), or None."""
        held = self._fold()
        return (held[0], held[1]["state"]) if held else None

    def fold_prefix(self, upto: int, state: dict[str, Any], kept: list[Event]) -> None:
        """Retention: keep ``state`` (what the events up to ``upto`` add up to) and the events ``kept``
        (those a view reads by kind: the price list in force, ...), then remove every event up to
        ``upto``. Only events central holds may go; the chain goes on from the last one removed."""
        self._tail = None
        with self.transaction():
            if upto > int(self._meta("acked_seq")):
                raise JournalError(f"event {upto} is not acknowledged by central: it cannot be folded away")
            row = self._conn.execute("SELECT chain FROM events WHERE seq = ?", [upto]).fetchone()
            if row is None:
                raise JournalError(f"there is no event {upto} to fold up to")
            key_id = self._conn.execute("SELECT max(id) FROM keys").fetchone()[0]
            # The anchor is sealed too: verify holds the plaintext one in meta against it.
            content = json.dumps({"state": state, "kept": [[e.seq, e.kind, e.body] for e in kept],
                                  "anchor": row[0].hex()}, separators=(",", ":")).encode()
            sealed = sealing.seal(self._data_key(key_id), upto, "fold", content)
            self._conn.execute("INSERT INTO folds (seq, key_id, sealed) VALUES (?, ?, ?)", [upto, key_id, sealed])
            self._conn.execute("DELETE FROM folds WHERE seq < ?", [upto])
            self._set_meta("chain_anchor_seq", str(upto))
            self._set_meta("chain_anchor", row[0].hex())
            self._conn.execute("DELETE FROM events WHERE seq <= ?", [upto])
        self._folded = None

    def _fold(self) -> tuple[int, dict[str, Any]] | None:
        with _translated(self.path):
            row = self._conn.execute("SELECT seq, key_id, sealed FROM folds ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        if self._folded is not None and self._folded[0] == row[0]:
            return self._folded
        seq, key_id, sealed = row
        try:
            content = json.loads(sealing.open_sealed(self._data_key(key_id), seq, "fold", sealed))
        except InvalidTag:
            raise JournalError(f"{self.path}: the checkpoint at event {seq} fails authentication: the file was altered") from None
        self._folded = (seq, content)
        return self._folded

    def _kept(self) -> list[Event]:
        held = self._fold()
        return [Event(seq, kind, body) for seq, kind, body in held[1]["kept"]] if held else []

    def counts(self) -> dict[str, int]:
        """How many events of each kind the journal holds (kinds are not secret; contents are)."""
        with _translated(self.path):
            return dict(self._conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

    # -- uplink cursor and sessions -------------------------------------------

    def acked_seq(self) -> int:
        """Everything up to this sequence number is held by central."""
        with _translated(self.path):
            return int(self._meta("acked_seq"))

    def acknowledge(self, seq: int, *, differs: bool = False) -> "Acknowledged":
        """Move the cursor forward to ``seq``; acknowledgements are cumulative and never move it back.

        One past the last event says central holds more of this journal than this copy (restored from a
        backup older than central's count); ``differs``, that central's event at ``seq`` is not this copy's
        (the acknowledgement named another: a copy restored so that recorded on before it heard central).
        Either way the events this copy recorded since it was restored (``restored_at``, or, a copy not
        restored by ``counterbox restore``, its last event or its cursor) are not the ones central holds at
        their seqs, so no acknowledgement past that point is ever taken (``diverged_at``), and the box keeps
        them until it delivers as another device. That is recorded and the acknowledgement refused in the
        result, never by raising: raised, the caller's transaction (the store's) would roll back what was
        recorded, and a later acknowledgement be taken."""
        with self.transaction():
            acked = int(self._meta("acked_seq"))
            if seq <= acked:
                return Acknowledged(moved=False)
            last, diverged = self.last_seq(), self._meta("diverged_at")
            if diverged and seq > int(diverged):
                return Acknowledged(moved=False, refused=(
                    f"acknowledgement for seq {seq} refused: central holds events of this journal past seq "
                    f"{diverged} that this copy does not (it was restored from an older backup); the events after "
                    f"{diverged} are this copy's own: deliver them as another device (docs/commands.md, Replacing "
                    "a box's journal)"))
            restored = self._restored_at()
            if seq > last:
                since = min(last, restored) if restored is not None else last
                self._set_meta("diverged_at", str(since))
                return Acknowledged(moved=False, refused=(
                    f"acknowledgement for seq {seq} beyond the last event {last}: central holds more of this "
                    f"journal than this copy (restored from an older backup?); no acknowledgement past {since} is "
                    "taken from now on"))
            if differs:
                since = restored if restored is not None and restored < seq else acked
                self._set_meta("diverged_at", str(since))
                return Acknowledged(moved=False, refused=(
                    f"acknowledgement for seq {seq} refused: central holds another event at that seq than this "
                    f"copy, which was restored from an older backup and recorded on before it heard central; the "
                    f"events after {since} are this copy's own: deliver them as another device (docs/commands.md, "
                    "Replacing a box's journal)"))
            self._set_meta("acked_seq", str(seq))
        return Acknowledged(moved=True)

    def _restored_at(self) -> int | None:
        """The last event of this copy as ``counterbox restore`` put it in place (None: not restored so)."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'restored_at'").fetchone()
        value = str(row[0]) if row else ""
        return int(value) if value.isdigit() else None

    def journal_id(self) -> str:
        """This journal's own id, made with it and kept by its backups (batches and acknowledgements name it)."""
        with _translated(self.path):
            return self._meta("journal_id")

    def take_identity(self, device: str) -> tuple[int, str]:
        """Deliver from now on as ``device``; return the last event delivered under another identity
        before (0 when none), and the identity it delivered as until now ('' for none yet): a journal
        restored onto another box delivers the rest as that box, and central counts that device's
        events from there."""
        with self.transaction():
            before = self._meta("identity")
            if before != device:
                # What central holds of it so far was acknowledged to another identity (or, a journal from
                # before identities, to this one: central holds at least as much of it then). A new identity
                # starts a count of its own at central: what diverged from the old one's is behind it.
                self._set_meta("base_seq", self._meta("acked_seq"))
                self._set_meta("identity", device)
                self._set_meta("diverged_at", "")
                if before:  # the events so far were another box's: where this one's begin
                    self._conn.execute("INSERT INTO meta (name, value) VALUES ('identity_since', ?) ON CONFLICT (name) "
                                       "DO UPDATE SET value = excluded.value", [str(self.last_seq())])
            return int(self._meta("base_seq")), before

    def identity_since(self) -> int:
        """The last event recorded under another box's identity than this journal's now (0: none)."""
        with _translated(self.path):
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'identity_since'").fetchone()
        return int(row[0]) if row else 0

    def base_seq(self) -> int:
        """The last event delivered under another identity than the one this journal delivers as now (0: none)."""
        with _translated(self.path):
            return int(self._meta("base_seq"))

    def session(self) -> int:
        """The agent's starts counted so far."""
        with _translated(self.path):
            return int(self._meta("session"))

    def start_session(self) -> int:
        """Count one more start of the agent; batches carry it so central can tell restarts apart."""
        with self.transaction():
            session = int(self._meta("session")) + 1
            self._set_meta("session", str(session))
        return session

    def empty_log(self) -> bool:
        """Copy the write-ahead log into the database and empty it (SQLite's TRUNCATE checkpoint), outside
        any transaction. After a full disk: the log's frames, of commits long since done, give back their
        room, which the log would otherwise take again from whatever space returns (SQLite copies it only
        every 1000 pages). False when it could not (no room yet for the database to take them, or a reader
        beside the agent holds them: never waited for)."""
        try:
            # Never waiting for a reader (a command beside the agent, its snapshot open): the scans behind
            # would wait with it, up to the busy timeout each. What a reader still holds is emptied next time.
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {sqlite.BUSY_TIMEOUT_MS}")
        except sqlite3.Error:
            return False
        return busy == 0

    def reserve_log(self, pages: int, *, keep_free: int = 0) -> bool:
        """Grow the write-ahead log to ``pages`` frames now, so that the commits after it write over room
        the file has rather than lengthen it. fsync of a file whose length changed commits the
        filesystem's own journal too (ext4's): on this machine's disk a scan's commit costs a quarter
        less written into a log that has its room. SQLite keeps the log's length while open (it empties
        it from its start after each checkpoint, and truncates it only for the store on a disk low on
        space), but makes it anew at every start: the first thousand commits after a start would each
        lengthen it.

        SQLite writes the room itself: a table made and filled with zeros in a transaction rolled back,
        whose pages spill into the log past the end of what it holds (the page cache is small), and which
        SQLite's recovery never reads as committed. Nothing of it stays but the log's length. False when
        the log was long enough already, when the disk would have less than ``keep_free`` bytes left after
        it, or when the disk refused (it is only room ahead: nothing is lost)."""
        log = self.path.with_name(f"{self.path.name}-wal")
        try:
            wanted = _WAL_HEADER + pages * (_WAL_FRAME_HEADER + self._conn.execute("PRAGMA page_size").fetchone()[0])
            if log.exists() and log.stat().st_size >= wanted:
                return False
            disk = os.statvfs(self.path.parent)
            if disk.f_bavail * disk.f_frsize < keep_free + wanted:
                return False
            with sqlite.transaction(self._conn):
                self._conn.execute("CREATE TABLE log_room (room BLOB)")
                # (and the page cache's worth more, which the rollback takes back unwritten)
                self._conn.execute("INSERT INTO log_room VALUES (zeroblob(?))", [wanted + CACHE_KIB * 1024])
                raise _Reserved
        except _Reserved:
            return True
        except (sqlite3.Error, OSError):
            return False
        finally:
            self._tail = None  # (a schema changed and changed back: the place is read anew)

    def close(self) -> None:
        self._conn.close()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_path(path: Path) -> None:
    """A journal is a file: a directory there said "disk I/O error", a FIFO held the command for ever (and on a
    box with no key yet, the key was said to be missing beside a journal that was never made)."""
    if not path.is_file():
        raise JournalError(f"{path} is not a file (a directory, a FIFO or a device is there): the journal is a "
                           "SQLite file; check [storage] path. Nothing was changed")


def _being_made(path: Path) -> NoJournal:
    return NoJournal(f"there is no journal at {path} yet: its file is empty (the agent has not run on this box, "
                     "or is making it now)")


def _check_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise JournalError(f"{path} has schema version {version}; this counterbox knows up to {SCHEMA_VERSION}. "
                           "Nothing was changed; run a newer counterbox")


_READING_FULL = ("the journal cannot be opened even to read it (SQLite needs a few pages beside it, for its "
                 "shared memory); free some space. Nothing was changed")


def _check_key(path: Path, outer: bytes) -> None:
    """Check the key and schema version of an existing journal without being able to write a byte."""
    with _translated(path, full=_READING_FULL):
        conn = sqlite.connect(path, readonly=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                return  # being created by another process right now: checked again under its lock
            _check_version(path, version)
            _open_keys(conn, path, outer, version)
        finally:
            conn.close()


def verify_journal(path: Path, outer: bytes | None) -> Verification:
    """Check the journal's chain on a read-only connection (nothing on disk changes); with its outer
    key, also check that every seal opens. DataKeyError for a wrong key."""
    if not path.exists():
        raise NoJournal(f"there is no journal at {path}")
    check_path(path)
    with _translated(path, full=_READING_FULL):
        sqlite.roll_back_hot_journal(path)
        if path.stat().st_size == 0:
            raise _being_made(path)
        conn = sqlite.connect(path, readonly=True)
        try:
            # One read transaction: the agent beside it commits and folds while it reads, and each
            # statement on its own would see another moment (a false "missing" or "moved anchor").
            conn.execute("BEGIN")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            _check_version(path, version)
            if version < 2:
                raise JournalError(f"{path} has schema version {version}, which has no hash chain yet; "
                                   "the agent (or any counterbox command that opens it) adds one")
            if outer is None:
                return _anchor_checked(conn, chain.verify(conn), None)
            keys = _open_keys(conn, path, outer, version)

            def opens(seq: int, kind: str, key_id: int, sealed: bytes) -> bool:
                try:
                    sealing.open_sealed(keys[key_id], seq, kind, sealed)
                except (InvalidTag, KeyError):
                    return False
                return True

            return _anchor_checked(conn, chain.verify(conn, opens), keys.__getitem__)
        finally:
            conn.close()


def _anchor_checked(conn: sqlite3.Connection, verification: Verification,
                    data_key: Callable[[int], AESGCM] | None) -> Verification:
    """Events before the chain's anchor were folded away by retention: only with a checkpoint at the
    anchor, whose sealed anchor (checked when the keys are given) is the one in meta, which anyone
    with the file could otherwise move to hide events cut from the start."""
    anchor_seq = verification.anchor_seq
    if not verification.ok or anchor_seq == 0:
        return verification
    row = conn.execute("SELECT key_id, sealed FROM folds WHERE seq = ?", [anchor_seq]).fetchone() \
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'folds'").fetchone() else None
    reason = None
    if row is None:
        reason = f"events up to {anchor_seq} are gone with no checkpoint of them: the anchor was moved"
    elif data_key is not None:
        try:
            content = json.loads(sealing.open_sealed(data_key(row[0]), anchor_seq, "fold", row[1]))
        except (InvalidTag, KeyError, ValueError):
            content = {}
        if content.get("anchor") != chain.anchor(conn)[1].hex():
            reason = f"the checkpoint at event {anchor_seq} does not open or does not seal this anchor"
    return verification if reason is None else dataclasses.replace(verification, broken=chain.Broken(anchor_seq, reason))


def _open_keys(conn: sqlite3.Connection, path: Path, outer: bytes, version: int) -> dict[int, AESGCM]:
    """Every data key, unwrapped; DataKeyError when ``outer`` is not the journal's outer key (nor the
    new one of a re-wrap waiting to be installed)."""
    if version == 1:  # before data keys: the outer key sealed a key check
        sealed = bytes.fromhex(conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()[0])
        try:
            sealing.open_sealed(AESGCM(outer), 0, "key-check", sealed)
        except InvalidTag:
            raise sealing.wrong_key(path) from None
        return {}
    rows = conn.execute("SELECT id, wrapped FROM keys").fetchall()
    try:
        return {key_id: AESGCM(sealing.unwrap(outer, key_id, wrapped, path)) for key_id, wrapped in rows}
    except DataKeyError:
        pending = _pending_rewrap(conn)
        if pending is None:
            raise
        return {key_id: AESGCM(sealing.unwrap(outer, key_id, wrapped, path)) for key_id, wrapped in pending.items()}


# meta: the data keys wrapped under the new outer key of a re-wrap, until the journal is first opened with it.
_REWRAPPED = "rewrapped"


def _pending_rewrap(conn: sqlite3.Connection) -> dict[int, bytes] | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", [_REWRAPPED]).fetchone()
    return None if row is None else {int(key_id): bytes.fromhex(wrapped) for key_id, wrapped in json.loads(row[0]).items()}


def finish_rewrap(conn: sqlite3.Connection, path: Path, outer: bytes) -> None:
    """Opened with the new outer key of a re-wrap (in the caller's transaction): it replaces the old one,
    which opens the journal no more. Opened with the old one, the re-wrap waits on."""
    pending = _pending_rewrap(conn)
    if pending is None:
        return
    key_id, wrapped = conn.execute("SELECT id, wrapped FROM keys ORDER BY id LIMIT 1").fetchone()
    try:
        sealing.unwrap(outer, key_id, wrapped, path)
        return  # the old key: the new one is not installed yet
    except DataKeyError:
        pass
    conn.executemany("UPDATE keys SET wrapped = ? WHERE id = ?", [(new, key_id) for key_id, new in pending.items()])
    conn.execute("DELETE FROM meta WHERE name = ?", [_REWRAPPED])


def drop_pending_rewrap(conn: sqlite3.Connection) -> None:
    """Forget a re-wrap waiting for its new outer key (a backup's copy: the box it is restored on has its own)."""
    conn.execute("DELETE FROM meta WHERE name = ?", [_REWRAPPED])


@dataclass(frozen=True)
class Acknowledged:
    """What became of central's acknowledgement: the cursor moved, or not (held already, or refused: why)."""

    moved: bool
    refused: str = ""


class _Reserved(Exception):
    """Rolls back ``reserve_log``'s transaction, which wrote only to take the log's room."""


class _translated:
    """``with _translated(path):`` sqlite3's errors, wherever they arise, as the store's own: a full
    disk as JournalFull. (A class, not a generator: it wraps every event recorded.)"""

    __slots__ = ("path", "full")

    def __init__(self, path: Path, *, full: str = "nothing was recorded") -> None:
        self.path = path
        self.full = full  # what a full disk means here

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None or not issubclass(kind, sqlite3.Error):
            return False
        if sqlite.disk_full(error, self.path):
            raise JournalFull(f"{self.path}: the disk is full; {self.full}") from error
        if sqlite.read_only(self.path):
            raise JournalError(f"{self.path}: {error}: its filesystem is mounted read-only (remounted so after a "
                               "disk error, maybe: see the kernel's log)") from error
        raise JournalError(f"{self.path}: {error}") from error



class _Transaction:
    __slots__ = ("_journal", "_transaction")

    def __init__(self, journal: "Journal", transaction: sqlite.transaction) -> None:
        self._journal = journal
        self._transaction = transaction

    def __enter__(self) -> None:
        journal = self._journal
        with _translated(journal.path):  # a closed journal's connection raises even when asked if it is in one
            if not journal._conn.in_transaction:
                journal._tail_held = False  # a new transaction: what others wrote before it is to be looked at
            self._transaction.__enter__()
        journal._undo.append([])

    def __exit__(self, kind, error, traceback) -> bool:
        journal = self._journal
        undo = journal._undo.pop()
        if kind is not None:
            journal.rollbacks += 1
        try:
            with _translated(journal.path):
                self._transaction.__exit__(kind, error, traceback)  # commits, or rolls back and lets the error go on
        except BaseException:
            if kind is None:
                journal.rollbacks += 1  # the commit itself failed and was rolled back
            _undo(undo)  # after the rollback: a call that fails can never leave the transaction open
            raise
        if kind is not None:
            _undo(undo)
        elif journal._undo:
            journal._undo[-1].extend(undo)  # a savepoint released: the transaction around it may yet roll back
        return _translated(journal.path).__exit__(kind, error, traceback)  # which leaves as the store's own


def _undo(calls: list[Callable[[], None]]) -> None:
    """What the writes rolled back kept in memory, put back: the latest first. One that fails is logged, and
    the others go on: the error under way is the one that matters."""
    for call in reversed(calls):
        try:
            call()
        except Exception:
            logger.exception("journal: putting back what a write rolled back kept in memory failed")


def check_no_log_left(path: Path) -> None:
    """Refuse to make a journal at ``path`` where the write-ahead log of one that stood there is left.

    After a stop that was not clean (a power cut, a kill) the newest events are in that log alone; a
    journal made anew at the path would read the log as its own (another journal's events in it) or
    let SQLite throw it away: either way the moved journal has lost them."""
    log = path.with_name(f"{path.name}-wal")
    if log.exists():
        raise JournalError(f"{path} is not there but its write-ahead log {log} is: the journal was moved or removed "
                           "without it, and its newest events may be in that file alone. Nothing was changed; move "
                           f"the log (and {path.name}-shm) to where the journal went, or put the journal back")


def remove_journal(path: Path, *, overwrite: bool = False) -> None:
    """Remove a closed journal's files (database, WAL, shared memory). What they held is sealed
    under the data key; removing them after destroying that key is the crypto-erase's tidy end.
    With ``overwrite``, each is first overwritten with zeros where it lies, durably: the erase of a
    journal whose outer key cannot be destroyed (a systemd credential), which would otherwise still
    open the data keys wrapped in the blocks the files leave."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        if overwrite:
            destroy_secret(path.parent / name)
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).unlink()
    remove_copies_left(path, overwrite=overwrite)


def remove_copies_left(path: Path, *, overwrite: bool = False) -> None:
    """Remove the copies of the journal at ``path`` that a backup or restore left beside it, ended before it
    could (killed, its ssh session hung up, a power cut): ``.NAME.PID.db`` and SQLite's files of it, a whole
    copy of the journal each, its data keys wrapped under the journal's outer key; and ``.NAME.PID.restoring``,
    a restore's. With ``overwrite``, zeroed first (as ``remove_journal``)."""
    for stale in [*leftovers(path, "db"), *leftovers(path, "restoring")]:
        if overwrite:
            destroy_secret(stale)
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()

