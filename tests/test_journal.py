"""The journal: append-only, encrypted per event, durable, and strict about its key."""

import hashlib
import os
import sqlite3
import stat

import pytest

from storage import DataKeyError, Journal, JournalError, load_data_key


@pytest.fixture
def key():
    return os.urandom(32)


@pytest.fixture
def journal_path(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def journal(journal_path, key):
    j = Journal.open(journal_path, key)
    yield j
    j.close()


def test_sequence_numbers_start_at_one_and_increase(journal):
    assert [journal.append("sale", {"n": i}) for i in range(3)] == [1, 2, 3]
    assert [(e.seq, e.body["n"]) for e in journal.read_after(0)] == [(1, 0), (2, 1), (3, 2)]
    assert [e.seq for e in journal.read_after(1, limit=1)] == [2]


def test_events_survive_reopening(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "6901028075831"})
    j.close()
    again = Journal.open(journal_path, key)
    assert again.read_after(0)[0].body == {"code": "6901028075831"}
    again.close()


def test_the_store_runs_wal_with_synchronous_full(journal):
    conn = journal._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize("statement", ["UPDATE events SET kind = 'x'", "DELETE FROM events"])
def test_the_log_is_append_only(journal, statement):
    journal.append("sale", {})
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        journal._conn.execute(statement)


def test_the_cursor_moves_forward_only_and_never_past_the_end(journal):
    for _ in range(3):
        journal.append("sale", {})
    assert journal.acknowledge(2) is True
    assert journal.acknowledge(1) is False
    assert journal.acked_seq() == 2
    with pytest.raises(JournalError, match="beyond the last event 3"):
        journal.acknowledge(9)
    assert journal.acked_seq() == 2


def test_sessions_count_starts(journal):
    assert [journal.start_session(), journal.start_session()] == [1, 2]


def test_no_content_is_readable_in_the_file_or_its_wal(journal_path, journal):
    journal.append("sale", {"code": "6901028075831", "unit_price": 2345, "name": "Hongtashan"})
    files = [journal_path, journal_path.with_name(journal_path.name + "-wal")]
    raw = b"".join(p.read_bytes() for p in files if p.exists())
    for secret in (b"6901028075831", b"2345", b"Hongtashan"):
        assert secret not in raw


def test_a_sealed_body_moved_to_another_row_fails_to_open(journal_path, journal):
    journal.append("sale", {"code": "1"})
    journal.append("sale", {"code": "2"})
    conn = sqlite3.connect(journal_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET sealed = (SELECT sealed FROM events WHERE seq = 1) WHERE seq = 2")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="event 2 .* fails authentication"):
        journal.read_after(1)


def test_a_wrong_key_is_refused_and_touches_nothing(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    j.close()
    before = hashlib.sha256(journal_path.read_bytes()).hexdigest()
    with pytest.raises(DataKeyError, match="created with another key. Nothing was changed"):
        Journal.open(journal_path, os.urandom(32))
    assert hashlib.sha256(journal_path.read_bytes()).hexdigest() == before
    assert Journal.open(journal_path, key).read_after(0)[0].body == {"code": "1"}


def test_a_new_key_file_is_created_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "keys" / "data.key"
    key = load_data_key(key_file=path, credential="counterbox-data-key", create=True)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_data_key(key_file=path, credential="counterbox-data-key", create=True) == key


def test_a_missing_key_for_an_existing_journal_is_not_recreated(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "data.key"
    with pytest.raises(DataKeyError, match="missing but the journal exists"):
        load_data_key(key_file=path, credential="counterbox-data-key", create=False)
    assert not path.exists()


def test_a_systemd_credential_wins_over_the_key_file(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "counterbox-data-key").write_bytes(b"k" * 32)
    (tmp_path / "data.key").write_bytes(b"f" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert load_data_key(key_file=tmp_path / "data.key", credential="counterbox-data-key", create=False) == b"k" * 32


def test_a_key_of_the_wrong_size_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "data.key").write_bytes(b"short")
    with pytest.raises(DataKeyError, match="holds 5 bytes, not 32"):
        load_data_key(key_file=tmp_path / "data.key", credential="x", create=False)
