"""What the journal's tests share: a fresh key and path, and the bytes a journal holds on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def contents(journal_path: Path) -> list[str]:
    """Digests of the database and its WAL (a WAL not there holds what an empty one holds: nothing)."""
    files = [journal_path, journal_path.with_name(journal_path.name + "-wal")]
    return [hashlib.sha256(p.read_bytes() if p.exists() else b"").hexdigest() for p in files]
