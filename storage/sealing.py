"""Sealing: the journal's data keys, wrapped under the outer key, and the events sealed with them.

The outer key (a systemd credential or the key file, storage/keys.py) never
seals an event itself. It wraps the journal's data keys, which live in the
journal's ``keys`` table; every event row names the data key that sealed it.
So a new data key (rotation) leaves old events readable, and a new outer key
means re-wrapping a few rows, never rewriting the log.

    wrapped = wrap(outer, key_id, data_key)
    data_key = unwrap(outer, key_id, wrapped, path)   # DataKeyError: another outer key
    sealed = seal(AESGCM(data_key), seq, kind, plaintext)
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DataKeyError

NONCE = 12
SEALED_MIN = NONCE + 16  # a sealed body: its nonce, its ciphertext (as long as the plaintext) and the GCM tag


def aad(seq: int, kind: str) -> bytes:
    """What an event's seal authenticates besides its body: a body moved or relabelled fails to open.
    (Unchanged since schema v1, so the events of a migrated journal open as they are.)"""
    return f"counterbox-event-v1\x00{seq}\x00{kind}".encode()


def seal(aead: AESGCM, seq: int, kind: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + aead.encrypt(nonce, plaintext, aad(seq, kind))


def open_sealed(aead: AESGCM, seq: int, kind: str, sealed: bytes) -> bytes:
    """The plaintext; InvalidTag when the seal does not open (altered, or another key)."""
    return aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad(seq, kind))


def _wrap_aad(key_id: int) -> bytes:
    return f"counterbox-data-key-v2\x00{key_id}".encode()


def wrap(outer: bytes, key_id: int, data_key: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(outer).encrypt(nonce, data_key, _wrap_aad(key_id))


def unwrap(outer: bytes, key_id: int, wrapped: bytes, path: Path) -> bytes:
    try:
        return AESGCM(outer).decrypt(wrapped[:NONCE], wrapped[NONCE:], _wrap_aad(key_id))
    except InvalidTag:
        raise wrong_key(path) from None


def wrong_key(path: Path) -> DataKeyError:
    return DataKeyError(
        f"the data key does not open the journal {path}: it was created with another key. "
        "Nothing was changed; start with this journal's key (the one it was created with, or the one it was "
        "last re-wrapped under)."
    )


def rewrap_keys(conn: sqlite3.Connection, path: Path, old: bytes, new: bytes) -> None:
    """Wrap every data key in the ``keys`` table under ``new`` instead of ``old`` (in the caller's transaction)."""
    rows = conn.execute("SELECT id, wrapped FROM keys").fetchall()
    conn.executemany("UPDATE keys SET wrapped = ? WHERE id = ?",
                     [(wrap(new, key_id, unwrap(old, key_id, wrapped, path)), key_id) for key_id, wrapped in rows])
