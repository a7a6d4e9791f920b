"""The journal's schema, as the list of migrations that build it: each takes the schema
from the version before it, so a newer agent opens (and upgrades) an older journal.

``PRAGMA user_version`` holds the version; the journal runs the missing migrations
in one exclusive transaction when it opens, so a power cut leaves the old schema
or the new one, never half of each.

- v1: ``meta(name, value)``; ``events(seq, kind, sealed)`` made append-only by
  triggers; every event sealed with the outer key itself; a sealed key check in meta.
- v2: data keys wrapped under the outer key in ``keys(id, wrapped, created_at)``;
  each event names its ``key_id`` and carries its ``chain`` hash (storage/chain.py).
  The outer key that sealed v1's events becomes data key 1, so they open as they
  are; the chain is computed for them once, here.
- v3: ``folds(seq, key_id, sealed)``, retention's checkpoint: what the events up to
  ``seq`` added up to, sealed; events at or before the chain's anchor may be deleted
  (retention moves the anchor first), none after it.
- v4: the index on ``kind`` covers only the kinds the agent looks up by kind
  (``LOOKED_UP``: operations' documents and the box's own activation), so a sale's
  commit writes the events table's page and no index page beside it.
- v5: the journal's own id in meta (``journal_id``: 128 bits derived from its first
  data key, which every copy of the journal and its backups share and each journal
  made draws at random, so a backup from before v5 gets the id its journal got), the identity it delivers as (``identity``, a device id; empty until the
  agent first starts on it) and ``base_seq``, the last event delivered under another
  identity before: batches and acknowledgements name the journal, so central never
  counts one journal's events as another's under the same device id. ``diverged_at``:
  the last event of this copy when central acknowledged more of the journal than it
  holds (a copy restored from an older backup): no acknowledgement past it is taken.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import chain, sealing
from .keys import KEY_SIZE

KEY_CHECK = b"counterbox journal key check"


def _append_only(conn: sqlite3.Connection, action: str) -> None:
    conn.execute(f"CREATE TRIGGER events_append_only_{action.lower()} BEFORE {action} ON events "
                 "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END")


def _v1(conn: sqlite3.Connection, outer: bytes) -> None:
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT NULL)")
    conn.execute("CREATE INDEX idx_events_kind ON events (kind)")
    for action in ("UPDATE", "DELETE"):
        _append_only(conn, action)
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [
        ("key_check", sealing.seal(AESGCM(outer), 0, "key-check", KEY_CHECK).hex()),
        ("created_at", str(time.time())),
        ("acked_seq", "0"),
        ("session", "0"),
    ])


_CHAIN_ROWS = 2000  # rows chained per step of v2's migration: bounded memory for any journal


def _v2(conn: sqlite3.Connection, outer: bytes) -> None:
    conn.execute("CREATE TABLE keys (id INTEGER PRIMARY KEY, wrapped BLOB NOT NULL, created_at REAL NOT NULL)")
    has_events = conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
    # v1 sealed its events with the outer key: it becomes data key 1 and they open unchanged.
    # A journal with nothing sealed yet gets a data key of its own.
    first = outer if has_events else os.urandom(KEY_SIZE)
    conn.execute("INSERT INTO keys (id, wrapped, created_at) VALUES (1, ?, ?)",
                 [sealing.wrap(outer, 1, first), time.time()])
    conn.execute("ALTER TABLE events ADD COLUMN key_id INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE events ADD COLUMN chain BLOB")
    conn.execute("DROP TRIGGER events_append_only_update")  # this once: the chain is written into v1's rows
    previous, after = chain.GENESIS, 0
    while rows := conn.execute("SELECT seq, kind, sealed FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                               [after, _CHAIN_ROWS]).fetchall():
        hashes = []
        for seq, kind, sealed in rows:
            previous = chain.link(previous, seq, kind, 1, sealed)
            hashes.append((previous, seq))
        conn.executemany("UPDATE events SET chain = ? WHERE seq = ?", hashes)
        after = rows[-1][0]
    _append_only(conn, "UPDATE")
    conn.execute("CREATE TRIGGER keys_kept BEFORE DELETE ON keys "
                 "BEGIN SELECT RAISE(ABORT, 'a data key is never removed: its events would be unreadable'); END")
    conn.execute("DELETE FROM meta WHERE name = 'key_check'")  # the wrapped keys are the key check now
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                     [("chain_anchor_seq", "0"), ("chain_anchor", chain.GENESIS.hex())])


def _v3(conn: sqlite3.Connection, outer: bytes) -> None:
    # Retention: a checkpoint of what the events removed added up to (sealed like an event), and
    # events may leave the journal only once the chain's anchor has moved past them.
    conn.execute("CREATE TABLE folds (seq INTEGER PRIMARY KEY, key_id INTEGER NOT NULL, sealed BLOB NOT NULL)")
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute("CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events "
                 "WHEN old.seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'chain_anchor_seq') "
                 "OR NOT EXISTS (SELECT 1 FROM folds WHERE seq >= old.seq) "
                 "BEGIN SELECT RAISE(ABORT, 'the journal is append-only: only events folded by retention leave it'); END")


# The kinds read by kind (the latest price list, every settings document, ...): few events among
# many sales. The journal's queries for them repeat ``LOOKED_UP_TERM`` word for word, which is how
# SQLite knows the partial index answers them; any other kind is found by a scan. The index's own
# term is written out in _v4, as a migration never changes once it has run: another kind to look
# up needs a migration that makes the index anew, and LOOKED_UP_TERM then says the same.
LOOKED_UP = ("activation", "document", "price_list", "revocation", "settings")
LOOKED_UP_TERM = "kind IN ({})".format(", ".join(f"'{kind}'" for kind in LOOKED_UP))


def _v4(conn: sqlite3.Connection, outer: bytes) -> None:
    conn.execute("DROP INDEX idx_events_kind")
    conn.execute("CREATE INDEX idx_events_looked_up ON events (kind) "
                 "WHERE kind IN ('activation', 'document', 'price_list', 'revocation', 'settings')")


def _v5(conn: sqlite3.Connection, outer: bytes) -> None:
    first = sealing.unwrap(outer, 1, conn.execute("SELECT wrapped FROM keys WHERE id = 1").fetchone()[0],
                           Path("journal"))
    journal_id = hashlib.blake2b(b"counterbox journal id", key=first, digest_size=16).hexdigest()
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                     [("journal_id", journal_id), ("identity", ""), ("base_seq", "0"), ("diverged_at", "")])


MIGRATIONS: list[Callable[[sqlite3.Connection, bytes], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)
