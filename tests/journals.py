"""What the journal's tests share: a fresh key and path, and the bytes a journal holds on disk."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def another_key(journal_path: Path) -> str:
    """A ``match`` for the whole refusal of an outer key that is not the journal's, naming the journal."""
    return (f"^the data key does not open the journal {re.escape(str(journal_path))}: it was created with another "
            "key. Nothing was changed; start with this journal's key \\(the one it was created with, or the one it "
            "was last re-wrapped under\\).$")


def contents(journal_path: Path) -> list[str]:
    """Digests of the database and its WAL (a WAL not there holds what an empty one holds: nothing)."""
    files = [journal_path, journal_path.with_name(journal_path.name + "-wal")]
    return [hashlib.sha256(p.read_bytes() if p.exists() else b"").hexdigest() for p in files]


def rot(journal, seq: int) -> None:
    """Close ``journal`` with one bit of event ``seq``'s sealed bytes flipped in the file, as bit rot
    would leave it: under SQLite, whose triggers refuse any edit through it."""
    sealed = journal._conn.execute("SELECT sealed FROM events WHERE seq = ?", [seq]).fetchone()[0]
    journal.close()
    raw = bytearray(journal.path.read_bytes())
    raw[raw.index(sealed) + 20] ^= 1
    journal.path.write_bytes(bytes(raw))


class Failing:
    """``fn`` that raises JournalError (a disk I/O error) for its next ``left`` calls, then is itself again:
    a journal that cannot be read for a while. ``monkeypatch.setattr(Journal, "acked_seq", Failing(...))``."""

    def __init__(self, fn, left: int = 1):
        self.fn, self.left = fn, left
        self.failed_at: list[float] = []  # time.monotonic() of each failure

    def __call__(self, *args, **kwargs):
        if self.left:
            import time

            from storage import JournalError

            self.left -= 1
            self.failed_at.append(time.monotonic())
            raise JournalError("journal.db: disk I/O error")
        return self.fn(*args, **kwargs)

    def __get__(self, instance, owner):  # set on a class, it is a method like the one it stands for
        return self if instance is None else (lambda *args, **kwargs: self(instance, *args, **kwargs))
