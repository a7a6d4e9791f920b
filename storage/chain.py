"""The journal's hash chain: each event carries the hash of the one before, so an altered,
moved or removed row is found and named.

    chain(n) = SHA-256("counterbox-chain-v1" 0x00 || chain(n-1) || seq:u64 || key_id:u32
                       || len(kind):u16 || kind || sealed)

over what is on disk, so the chain is checked without the data key; with it, every
seal is opened too. The chain starts from an anchor kept in meta (``chain_anchor``,
``chain_anchor_seq``): 32 zero bytes after event 0 for a new journal. A later step
that removes a prefix of old events keeps the hash of the last one it removed as the
anchor, and the chain still checks from there.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import JournalError

GENESIS = bytes(32)
_TAG = b"counterbox-chain-v1\x00"
_HEADER = struct.Struct(">QIH")
_ROWS = 2000  # rows read per query while verifying: bounded memory for a journal of any length


def link(previous: bytes, seq: int, kind: str, key_id: int, sealed: bytes) -> bytes:
    name = kind.encode()
    return hashlib.sha256(b"".join((_TAG, previous, _HEADER.pack(seq, key_id, len(name)), name, sealed))).digest()


def meta(conn: sqlite3.Connection, name: str) -> str:
    """The journal's value ``name`` in its meta table; JournalError when the row is gone (a bit flipped in
    its name reads as another row's)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", [name]).fetchone()
    if row is None:
        raise JournalError(f"the journal's {name!r} is missing from its meta table: the file was altered")
    return row[0]


def anchor(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(seq, hash) the chain starts after."""
    seq, chained = meta(conn, "chain_anchor_seq"), meta(conn, "chain_anchor")
    try:
        return int(seq), bytes.fromhex(chained)
    except (TypeError, ValueError):
        raise JournalError("the journal's chain anchor in its meta table is not a seq and a hash: the file was "
                           "altered") from None


@dataclass(frozen=True)
class Broken:
    seq: int  # the first event that fails
    reason: str


@dataclass(frozen=True)
class Verification:
    anchor_seq: int  # the chain starts after this event (0: from the first event)
    last_seq: int
    events: int  # how many were checked
    head: bytes  # the chain hash of the last event checked
    seals_checked: bool  # every seal was opened too (the data key was given)
    broken: Broken | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict:
        return {"ok": self.ok, "events": self.events, "anchor_seq": self.anchor_seq, "last_seq": self.last_seq,
                "head": self.head.hex(), "seals_checked": self.seals_checked,
                "first_broken": None if self.broken is None else {"seq": self.broken.seq, "reason": self.broken.reason}}


# Opens one event's seal; False when it does not open. None: the chain alone is checked.
SealCheck = Callable[[int, str, int, bytes], bool]


def verify(conn: sqlite3.Connection, opens: SealCheck | None = None) -> Verification:
    """Check the whole chain, from its anchor to the last event, and name the first event that fails."""
    anchor_seq, previous = anchor(conn)
    expected, count = anchor_seq + 1, 0

    def result(broken: Broken | None = None) -> Verification:
        return Verification(anchor_seq=anchor_seq, last_seq=expected - 1, events=count, head=previous,
                            seals_checked=opens is not None, broken=broken)

    while True:
        # Cast: a row altered behind the journal's back may hold text where the bytes were.
        rows = conn.execute("SELECT seq, CAST(kind AS TEXT), CAST(key_id AS INTEGER), CAST(sealed AS BLOB), chain "
                            "FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", [expected, _ROWS]).fetchall()
        if not rows:
            break
        for seq, kind, key_id, sealed, stored in rows:
            if seq != expected:
                before = f"event {expected - 1}" if expected - 1 > anchor_seq else "the chain's anchor"
                return result(Broken(expected, f"event {expected} is missing: event {seq} follows {before}"))
            if not (isinstance(kind, str) and isinstance(key_id, int) and isinstance(sealed, bytes)):
                return result(Broken(seq, f"event {seq}'s row header was altered: its kind, key or sealed body "
                                          "reads back as another type"))
            current = link(previous, seq, kind, key_id, sealed)
            if stored != current:
                return result(Broken(seq, f"event {seq} ({kind}) does not match its chain hash: the row was "
                                          "altered, or replaces another"))
            if opens is not None and not opens(seq, kind, key_id, sealed):
                return result(Broken(seq, f"event {seq} ({kind}) fails authentication: its sealed body was altered"))
            previous, expected, count = current, expected + 1, count + 1
    if conn.execute("SELECT 1 FROM events WHERE seq < ? LIMIT 1", [anchor_seq + 1]).fetchone():
        return result(Broken(anchor_seq, f"events at or before the chain's anchor {anchor_seq} are present: "
                                         "the anchor was altered"))
    acked = int(meta(conn, "acked_seq"))
    if acked > expected - 1:
        return result(Broken(expected, f"the journal ends at event {expected - 1} but central acknowledged up to "
                                       f"{acked}: events {expected} to {acked} were removed"))
    return result()
