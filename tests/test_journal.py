"""The journal: append-only, encrypted per event, durable, and strict about its key."""

import errno
import hashlib
import os
import re
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.retention import KEPT_LATEST
from storage import DataKeyError, EventTooLarge, Journal, JournalError, NoJournal, load_data_key, verify_journal
from storage.journal import Acknowledged
from storage.schema import LOOKED_UP, LOOKED_UP_TERM, SCHEMA_VERSION
from storage.sqlite import JOURNAL_MAGIC

from .journals import another_key, journal_path, key  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent


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
    assert journal.acknowledge(2) == Acknowledged(moved=True)
    assert journal.acknowledge(1) == Acknowledged(moved=False)
    assert journal.acknowledge(2) == Acknowledged(moved=False)  # held already: nothing moves
    assert journal.acked_seq() == 2
    beyond = journal.acknowledge(9)
    assert not beyond.moved and "beyond the last event 3" in beyond.refused
    assert journal.acked_seq() == 2


def test_sessions_count_starts(journal):
    assert [journal.start_session(), journal.start_session()] == [1, 2]


def test_no_content_is_readable_in_the_file_or_its_wal(journal_path, journal):
    # Needles no plaintext metadata (a creation time, a counter) could hold by chance.
    journal.append("sale", {"code": "6901028075831", "unit_price": 987654321, "name": "Hongtashan"})
    files = [journal_path, journal_path.with_name(journal_path.name + "-wal")]
    raw = b"".join(p.read_bytes() for p in files if p.exists())
    assert len(raw) > 4096
    for secret in (b"6901028075831", b"987654321", b"Hongtashan", b"unit_price"):
        assert secret not in raw


def tamper(journal_path, statement: str) -> None:
    """Change the file behind the journal's back, as someone with the disk but not the key could."""
    conn = sqlite3.connect(journal_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute(statement)
    conn.commit()
    conn.close()


def test_a_sealed_body_moved_to_another_row_fails_to_open(journal_path, journal):
    journal.append("sale", {"code": "1"})
    journal.append("sale", {"code": "2"})
    tamper(journal_path, "UPDATE events SET sealed = (SELECT sealed FROM events WHERE seq = 1) WHERE seq = 2")
    with pytest.raises(JournalError, match="event 2 .* fails authentication"):
        journal.read_after(1)


def test_an_event_relabelled_as_another_kind_fails_to_open(journal_path, journal):
    """The kind is authenticated with the body: a sale turned into a misread in the file is caught."""
    journal.append("sale", {"code": "1"})
    tamper(journal_path, "UPDATE events SET kind = 'misread' WHERE seq = 1")
    with pytest.raises(JournalError, match=r"event 1 \(misread\) fails authentication"):
        journal.read_after(0)


def test_a_wrong_key_is_refused_and_touches_nothing(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    j.close()
    before = hashlib.sha256(journal_path.read_bytes()).hexdigest()
    with pytest.raises(DataKeyError, match=another_key(journal_path)):
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


def test_a_file_where_the_key_files_directory_goes_is_named_not_taken_for_a_key_made_beside_us(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "keys").write_text("not a directory")
    with pytest.raises(DataKeyError, match=re.escape(f"cannot create the data key {tmp_path / 'keys' / 'data.key'}: Not a directory")):
        load_data_key(key_file=tmp_path / "keys" / "data.key", credential="counterbox-data-key", create=True)


def test_a_key_made_beside_us_is_read_as_any_key_file_and_named_when_it_cannot_be(tmp_path, monkeypatch):
    """Creating the key finds a file there already (another process starting beside us made it):
    that one is read. A link to nowhere is such a file that cannot be read: named, path and all."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "data.key"
    path.symlink_to(tmp_path / "gone.key")  # exists() says no; creating it finds it there
    with pytest.raises(DataKeyError, match=re.escape(f"cannot read the data key in {path}: No such file")):
        load_data_key(key_file=path, credential="counterbox-data-key", create=True)
    assert not (tmp_path / "gone.key").exists() and [p.name for p in tmp_path.iterdir()] == ["data.key"]


def test_a_missing_key_for_an_existing_journal_is_not_recreated(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "data.key"
    with pytest.raises(DataKeyError, match=f"^the data key {re.escape(str(path))} is missing but the journal exists: "
                                           "restore the key file \\(or provide the systemd credential "
                                           "'counterbox-data-key'\\); a new key could not read the journal$"):
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
    with pytest.raises(DataKeyError, match=f"^the data key in {re.escape(str(tmp_path))}/data.key holds 5 bytes, "
                                           "not 32: it is not a counterbox data key$"):
        load_data_key(key_file=tmp_path / "data.key", credential="x", create=False)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "x").write_bytes(b"k" * 33)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(DataKeyError, match=f"^the data key from systemd credential {re.escape(str(credentials))}/x "
                                           "holds 33 bytes, not 32: it is not a counterbox data key$"):
        load_data_key(key_file=tmp_path / "data.key", credential="x", create=False)


def _crash_copy(journal_path, key, directory):
    """The journal's files as a power cut leaves them: committed events still in the WAL, -shm beside it."""
    j = Journal.open(journal_path, key)
    for n in range(3):
        j.append("sale", {"code": str(n)})
    directory.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{journal_path}{suffix}", directory / f"journal.db{suffix}")
    j.close()
    return directory / "journal.db"


def test_a_wrong_key_after_a_crash_changes_no_byte_of_the_journal_or_its_wal(journal_path, key, tmp_path):
    crashed = _crash_copy(journal_path, key, tmp_path / "crashed")
    files = [crashed, crashed.with_name("journal.db-wal")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert files[1].stat().st_size > 0
    with pytest.raises(DataKeyError, match="Nothing was changed"):
        Journal.open(crashed, os.urandom(32))
    # No checkpoint ran, nothing was deleted: the promise holds to the byte.
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == before
    recovered = Journal.open(crashed, key)
    assert [e.body["code"] for e in recovered.read_after(0)] == ["0", "1", "2"]
    recovered.close()


def _cut_while_made(path: Path, *, how: str) -> None:
    """The files a process cut off while it made the journal leaves: SQLite has written pages of the new
    file, and its rollback journal, which says the file was empty before, is hot beside them. ``switch``:
    cut in the switch to WAL, its first page written (WAL mode in its header) and the journal not yet
    removed, as strace's kill at that unlink leaves it: the agent's own first start. ``spill``: cut in
    a transaction of rollback mode whose pages spilled from a one-page cache."""
    path.write_bytes(b"")
    if how == "switch":
        made = sqlite3.connect(path)
        made.execute("PRAGMA journal_mode = WAL")
        made.close()  # its first page as the switch writes it: nothing else was in it yet
        header = JOURNAL_MAGIC + struct.pack(">IIIII", 0, 0x5EED, 0, 512, len(path.read_bytes()))
        path.with_name(path.name + "-journal").write_bytes(header.ljust(512, b"\0"))
        return
    subprocess.run([sys.executable, "-c", """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = 1")
conn.execute("BEGIN")
conn.execute("CREATE TABLE t (x BLOB)")
for _ in range(50):
    conn.execute("INSERT INTO t VALUES (zeroblob(2000))")
os._exit(0)
""", str(path)], check=True)


@pytest.mark.parametrize("how", ["switch", "spill"])
def test_a_journal_cut_off_while_it_was_made_is_rolled_back_and_made_again(journal_path, key, how):
    """A crash or power cut in a box's first start (or its first after an erase) left a file that every
    read-only open refused ("attempt to write a readonly database"), so the agent never started again."""
    _cut_while_made(journal_path, how=how)
    hot = journal_path.with_name("journal.db-journal")
    assert journal_path.stat().st_size >= 4096 and hot.read_bytes().startswith(JOURNAL_MAGIC)
    with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
        sqlite3.connect(f"{journal_path.as_uri()}?mode=ro", uri=True).execute("PRAGMA user_version")
    with pytest.raises(NoJournal, match="its file is empty"):  # rolled back to what it was: being made
        verify_journal(journal_path, key)
    _cut_while_made(journal_path, how=how)
    journal = Journal.open(journal_path, key)
    assert journal.append("sale", {"code": "6901028075831"}) == 1 and journal.verify().ok
    assert not hot.exists()
    journal.close()
    assert verify_journal(journal_path, key).ok


def test_a_rollback_journal_beside_a_journal_in_wal_mode_is_left_alone(journal_path, key, tmp_path):
    """Only a journal still being made can have a hot rollback journal; beside one in WAL mode a spent one
    (its header zeroed, as SQLite leaves them) is SQLite's to ignore, and a wrong key still changes no byte:
    no writing connection is opened, whose close would checkpoint the WAL."""
    crashed = _crash_copy(journal_path, key, tmp_path / "crashed")
    crashed.with_name("journal.db-journal").write_bytes(bytes(1024))
    files = [crashed, crashed.with_name("journal.db-wal"), crashed.with_name("journal.db-journal")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    with pytest.raises(DataKeyError, match="Nothing was changed"):
        Journal.open(crashed, os.urandom(32))
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == before


def test_the_journal_its_wal_and_shm_are_private_to_the_service(journal_path, journal):
    journal.append("sale", {"code": "1"})
    for suffix in ("", "-wal", "-shm"):
        path = journal_path.with_name(journal_path.name + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_journal_is_created_only_when_asked(journal_path, key):
    with pytest.raises(NoJournal, match="there is no journal at"):
        Journal.open(journal_path, key, create=False)
    assert not journal_path.exists()


_OPEN_AND_APPEND = """
import sys
from pathlib import Path
from storage import Journal, load_data_key
key = load_data_key(key_file=Path(sys.argv[2]), credential="none", create=True)
journal = Journal.open(Path(sys.argv[1]), key)
journal.append("sale", {"by": sys.argv[3]})
journal.close()
"""


@pytest.mark.parametrize("round_", range(3))
def test_processes_opening_a_new_journal_at_once_all_agree_on_it(tmp_path, round_, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    journal_path, key_path = tmp_path / "journal.db", tmp_path / "data.key"
    processes = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_APPEND, str(journal_path), str(key_path), str(n)],
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True) for n in range(6)]
    errors = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, errors
    journal = Journal.open(journal_path, key_path.read_bytes())
    assert sorted(e.body["by"] for e in journal.read_after(0)) == [str(n) for n in range(6)]
    assert [e.seq for e in journal.read_after(0)] == [1, 2, 3, 4, 5, 6]
    journal.close()


def test_a_new_key_file_and_its_directory_entry_are_fsynced(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "keys" / "data.key"
    load_data_key(key_file=path, credential="none", create=True)
    assert str(path.parent) in synced  # the directory entry, after the link
    assert any(name.startswith(str(path.parent / ".data.key.")) for name in synced)  # the bytes, before it


def test_every_sqlite_error_leaves_the_store_as_a_journal_error(journal, journal_path):
    journal._conn.execute("DROP TRIGGER events_append_only_update")
    journal._conn.execute("CREATE TRIGGER broken BEFORE INSERT ON events BEGIN SELECT no_such_function(); END")
    with pytest.raises(JournalError, match="no such function"):
        journal.append("sale", {"code": "1"})
    assert journal.last_seq() == 0  # rolled back, and the journal still answers


def test_one_event_is_read_by_its_seq_and_kinds_are_counted(journal):
    for kind in ("price_list", "sale", "sale", "misread"):
        journal.append(kind, {"kind": kind})
    assert journal.get(3) == journal.read_after(2, limit=1)[0] and journal.get(3).body == {"kind": "sale"}
    assert journal.get(9) is None and journal.get(0) is None
    assert journal.counts() == {"misread": 1, "price_list": 1, "sale": 2}
    assert journal.last("sale").seq == 3 and journal.last_seq("sale") == 3 and journal.last("refused") is None
    assert journal.last_seq("refused") == 0 and journal.last_seq() == 4


@pytest.mark.parametrize("kind", ["price_list", "settings", "sale", "mode_ended"])
def test_the_latest_event_and_every_event_of_a_kind_are_found_whether_or_not_the_index_covers_it(journal, kind):
    for n in range(3):
        journal.append(kind, {"n": n})
        journal.append("sale" if kind != "sale" else "return", {"other": n})
    assert (journal.last(kind).seq, journal.last(kind).body) == (5, {"n": 2})
    assert [(e.seq, e.body["n"]) for e in journal.of_kind(kind)] == [(1, 0), (3, 1), (5, 2)]
    assert journal.last_seq(kind) == 5


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_a_body_json_cannot_hold_is_refused_when_it_is_recorded(journal, number):
    with pytest.raises(JournalError, match="NaN or infinite number, which JSON has not; it was not recorded"):
        journal.append("snapshot", {"stock": number})
    assert journal.last_seq() == 0


def test_a_body_nested_deeper_than_json_is_written_is_refused_when_it_is_recorded(journal):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(JournalError, match="a snapshot event nests too deeply for JSON; it was not recorded"):
        journal.append("snapshot", {"stock": deep})
    assert journal.last_seq() == 0 and journal.append("snapshot", {"stock": [[1]]}) == 1


def test_text_no_batch_could_carry_is_refused_when_it_is_recorded(journal):
    """A lone surrogate (what Python makes of a file name's bytes that are not UTF-8) fits the JSON of a
    journal but no UTF-8 batch: it would sit at the head of the outbox for ever. Refused at once."""
    with pytest.raises(JournalError, match="^a price_list event holds text that is not UTF-8 \\(bytes a file name or "
                                           "file carried undecoded\\); it was not recorded$"):
        journal.append("price_list", {"source": "prices\udcff.csv", "items": []})
    assert journal.last_seq() == 0
    seq = journal.append("price_list", {"source": "价格 \ufffd.csv", "items": []})  # any real text is taken
    assert journal.get(seq).body["source"] == "价格 \ufffd.csv"
    # A NUL (a name in a CSV file, a HID POS scanner's padding): no batch carries one, as PostgreSQL keeps none.
    with pytest.raises(JournalError, match="^a sale event holds a NUL character, which no batch carries \\(central's "
                                           "databases keep no NUL in text\\); it was not recorded$"):
        journal.append("sale", {"code": "6901028075831\x00"})
    assert journal.last_seq() == seq
    taken = journal.append("sale", {"code": "\\u0000"})  # a backslash, then u0000: text like any other
    assert journal.get(taken).body["code"] == "\\u0000"


def test_a_sale_writes_no_index_page_while_the_looked_up_kinds_are_found_through_one(journal):
    """Only the kinds read by kind are indexed: a sale's commit writes the table's page alone, and the
    journal's own queries for a looked-up kind are answered from the index."""
    indexes = journal._conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
                                    ).fetchall()
    assert indexes == [("idx_events_looked_up",
                        f"CREATE INDEX idx_events_looked_up ON events (kind) WHERE {LOOKED_UP_TERM}")]
    journal.append("price_list", {"items": []})
    queries: list[str] = []
    journal._conn.set_trace_callback(queries.append)
    journal.last("price_list")
    journal.of_kind("settings")
    journal._conn.set_trace_callback(None)
    by_kind = [query for query in queries if "FROM events WHERE kind" in query]
    assert len(by_kind) == 2
    for query in by_kind:
        plan = " ".join(row[3] for row in journal._conn.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert "USING INDEX idx_events_looked_up" in plan or "USING COVERING INDEX idx_events_looked_up" in plan, plan


def test_every_kind_the_agent_reads_by_kind_is_one_the_index_covers():
    read = set()
    for source in (ROOT / "agent").glob("*.py"):
        read |= set(re.findall(r"\.(?:last|of_kind|last_seq)\(\"(\w+)\"\)", source.read_text()))
    read |= set(KEPT_LATEST)
    assert read and read <= set(LOOKED_UP)


def test_a_v3_journal_with_events_gets_the_partial_index_and_finds_every_kind(journal_path, key):
    j = Journal.open(journal_path, key)
    for kind in ("price_list", "sale", "settings", "sale"):
        j.append(kind, {"kind": kind})
    # As schema v3 left it: the index on every kind, and no journal id.
    j._conn.executescript("DROP INDEX idx_events_looked_up; CREATE INDEX idx_events_kind ON events (kind); "
                          "DELETE FROM meta WHERE name IN ('journal_id', 'identity', 'base_seq', 'diverged_at'); "
                          "PRAGMA user_version = 3;")
    j.close()
    j = Journal.open(journal_path, key)
    assert j._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert re.fullmatch("[0-9a-f]{32}", j.journal_id()) and j.base_seq() == 0
    assert [name for (name,) in j._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                "AND tbl_name = 'events'")] == ["idx_events_looked_up"]
    assert (j.last("price_list").seq, [e.seq for e in j.of_kind("sale")], j.last("settings").seq) == (1, [2, 4], 3)
    j.close()


def test_a_key_file_is_made_in_directories_that_do_not_exist_yet_or_already_do(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    deep = tmp_path / "var" / "lib" / "counterbox" / "data.key"
    assert load_data_key(key_file=deep, credential="none", create=True) == deep.read_bytes()
    beside = deep.with_name("other.key")  # its directory exists now
    assert len(load_data_key(key_file=beside, credential="none", create=True)) == 32
    assert sorted(p.name for p in deep.parent.iterdir()) == ["data.key", "other.key"]  # nothing left aside


def test_a_key_that_cannot_be_read_or_made_is_named_with_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "data.key").mkdir()  # not a file
    with pytest.raises(DataKeyError, match=rf"^cannot read the data key in {re.escape(str(tmp_path))}/data.key: Is a directory$"):
        load_data_key(key_file=tmp_path / "data.key", credential="counterbox-data-key", create=False)
    credentials = tmp_path / "credentials"
    (credentials / "counterbox-data-key").mkdir(parents=True)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(DataKeyError, match=rf"^cannot read the data key from systemd credential {re.escape(str(credentials))}/"
                                           "counterbox-data-key: Is a directory$"):
        load_data_key(key_file=tmp_path / "data.key", credential="counterbox-data-key", create=False)


@pytest.mark.parametrize("with_key", [False, True])
def test_verify_changes_no_byte_of_a_journal_a_crash_left_with_its_wal(tmp_path, key, with_key):
    """`counterbox verify` after a crash: the events still in the WAL are checked where they are,
    and neither the journal nor its WAL is rewritten (a connection that could write would fold
    the WAL into the journal as it closed)."""
    path = tmp_path / "journal.db"
    crash = ("import os, sys; from pathlib import Path; from storage import Journal; "
             "j = Journal.open(Path(sys.argv[1]), bytes.fromhex(sys.argv[2])); "
             "[j.append('sale', {'n': n}) for n in range(5)]; os._exit(0)")  # no close: as killed
    subprocess.run([sys.executable, "-c", crash, str(path), key.hex()], cwd=ROOT, check=True)
    files = [path, path.with_name("journal.db-wal")]
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert os.path.getsize(files[1]) > 0  # the events are in the WAL
    result = verify_journal(path, key if with_key else None)
    assert result.ok and (result.last_seq, result.events, result.seals_checked) == (5, 5, with_key)
    assert [hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None for f in files] == before


def test_what_the_journal_refuses_to_do_is_named_and_changes_nothing(journal, journal_path):
    """Each refusal says what and why: an operator reads these lines, not a class name."""
    for n in range(1, 6):
        journal.append("sale", {"n": n})
    journal.acknowledge(4)
    tamper(journal_path, "UPDATE events SET sealed = CAST(sealed || x'00' AS BLOB) WHERE seq = 5")
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: event 5 \\(sale\\) fails authentication: "
                                           "the file was altered$"):
        journal.get(5)
    with pytest.raises(JournalError, match="^event 5 is not acknowledged by central: it cannot be folded away$"):
        journal.fold_prefix(5, {}, [])
    journal.fold_prefix(2, {}, [])
    with pytest.raises(JournalError, match="^there is no event 1 to fold up to$"):  # folded away already
        journal.fold_prefix(1, {}, [])
    assert journal.acknowledge(9).refused.startswith(  # the cursor stays; what it says of the copy is kept
        "acknowledgement for seq 9 beyond the last event 5: central holds more of this journal than this copy")
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: there is no data key 7 in the journal$"):
        journal._data_key(7)
    with journal.transaction():
        with pytest.raises(JournalError, match="^a key rotation runs in a transaction of its own, not inside another$"):
            journal.rotate_key()
        with pytest.raises(JournalError, match="^re-wrapping the data keys runs in a transaction of its own"):
            journal.rewrap(os.urandom(32))
    assert journal.anchor_seq() == 2 and journal.acked_seq() == 4 and journal.last_seq() == 5
    assert [key_id for key_id, _ in journal.data_keys()] == [1]


@pytest.mark.parametrize("what", ["directory", "fifo"])
def test_a_journal_path_that_is_no_file_is_named_and_nothing_waits_on_it(tmp_path, key, what):
    """A directory there said "disk I/O error"; a FIFO held `counterbox prices load` for ever."""
    path = tmp_path / "journal.db"
    path.mkdir() if what == "directory" else os.mkfifo(path)
    message = f"^{re.escape(str(path))} is not a file \\(a directory, a FIFO or a device is there\\)"
    with pytest.raises(JournalError, match=message):
        Journal.open(path, key)
    with pytest.raises(JournalError, match=message):
        verify_journal(path, key)


def test_a_journal_that_is_not_there_is_named(tmp_path, key):
    with pytest.raises(NoJournal, match=f"^there is no journal at {re.escape(str(tmp_path / 'none.db'))}$"):
        verify_journal(tmp_path / "none.db", key)
    with pytest.raises(NoJournal, match=f"^there is no journal at {re.escape(str(tmp_path / 'none.db'))}: "
                                        "the agent has not run on this box yet$"):
        Journal.open(tmp_path / "none.db", key, create=False)


@pytest.mark.parametrize("size", [1, 99, 511])
def test_a_journal_cut_shorter_than_any_page_is_refused_not_made_anew(journal_path, key, size):
    """SQLite takes such a file for an empty database: opened, the box would number its events from 1
    again, and central would refuse them all as conflicts."""
    journal = Journal.open(journal_path, key)
    journal.append("sale", {"code": "6901028075831"})
    journal.close()
    journal_path.write_bytes(journal_path.read_bytes()[:size])
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))} is {size} bytes, shorter than any "
                                           "journal: it was cut short. Nothing was changed; restore it from a "
                                           "backup or move it away$"):
        Journal.open(journal_path, key)
    assert journal_path.stat().st_size == size


def test_a_journal_cut_at_a_page_or_more_is_named_in_sqlites_words_and_an_empty_one_is_being_made(journal_path, key):
    """From 512 bytes (SQLite's smallest page) a cut journal is SQLite's to judge, and it says how; an empty
    file is a journal whose first page was not written yet (a power cut right after its file was made),
    and opens as a new journal."""
    journal = Journal.open(journal_path, key)
    journal.append("sale", {"code": "6901028075831"})
    journal.close()
    whole = journal_path.read_bytes()
    journal_path.write_bytes(whole[:512])
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: database disk image is malformed$"):
        Journal.open(journal_path, key)
    assert journal_path.read_bytes() == whole[:512]
    journal_path.write_bytes(b"")
    journal = Journal.open(journal_path, key)
    assert journal.append("sale", {"code": "6901028075831"}) == 1 and journal.verify().ok
    journal.close()


def test_a_journal_has_an_id_of_its_own_and_says_what_it_delivered_as_another_device(journal_path, key, tmp_path):
    """Batches and acknowledgements name the journal, so central never counts one journal's events as
    another's under a device's id; a journal restored onto another box delivers the rest as that box, from
    where the last one's acknowledgements had reached."""
    j = Journal.open(journal_path, key)
    made = j.journal_id()
    assert re.fullmatch("[0-9a-f]{32}", made) and Journal.open(tmp_path / "other.db", key).journal_id() != made
    assert j.take_identity("shop-a") == (0, "")  # a new journal: nothing delivered as anyone before
    for n in range(5):
        j.append("sale", {"n": n})
    j.acknowledge(3)
    assert j.take_identity("shop-a") == (0, "shop-a") and j.base_seq() == 0  # the same box, started again
    j.close()
    j = Journal.open(journal_path, key)
    assert j.journal_id() == made
    assert j.take_identity("shop-b") == (3, "shop-a") and j.base_seq() == 3  # restored onto another box
    j.acknowledge(5)
    assert j.take_identity("shop-b") == (3, "shop-b")  # and started again there
    j.close()


def test_every_copy_of_a_journal_from_before_its_id_gets_the_same_id(journal_path, key, tmp_path):
    """A backup taken before the journal had an id, restored after: both copies are one journal, and central,
    holding the one, must take the other as it (a random id each would refuse the restore for ever)."""
    import shutil

    j = Journal.open(journal_path, key)
    j.append("sale", {"n": 1})
    j._conn.executescript("DELETE FROM meta WHERE name IN ('journal_id', 'identity', 'base_seq', 'diverged_at'); "
                          "PRAGMA user_version = 4;")  # as schema v4 left it
    j.close()
    shutil.copy(journal_path, tmp_path / "backup.db")
    first, second = Journal.open(journal_path, key), Journal.open(tmp_path / "backup.db", key)
    assert first.journal_id() == second.journal_id()
    second.rewrap(os.urandom(32))  # a restore wraps its data keys under the new box's key: the id stays
    assert second.journal_id() == first.journal_id() != Journal.open(tmp_path / "new.db", key).journal_id()
    first.close()
    second.close()


def test_a_copy_central_holds_more_of_takes_no_acknowledgement_past_its_own_last_event(journal_path, key):
    """A journal restored from a backup older than central's count: central acknowledges 5 of it, this copy holds
    3. Its next events, 4 and 5, are not the ones central holds at those seqs: were the acknowledgement of 5 taken
    once this copy reached 5, they would never be delivered. None past 3 is taken, until it delivers as another
    device, whose count is its own."""
    j = Journal.open(journal_path, key)
    j.take_identity("shop-a")
    for n in range(3):
        j.append("sale", {"n": n})
    assert j.acknowledge(5) == Acknowledged(moved=False, refused=(
        "acknowledgement for seq 5 beyond the last event 3: central holds more of this journal than this copy "
        "(restored from an older backup?); no acknowledgement past 3 is taken from now on"))
    for n in range(3):
        j.append("sale", {"n": n + 3})
    assert j.acknowledge(3) == Acknowledged(moved=True)  # what both hold alike
    assert j.acknowledge(5) == Acknowledged(moved=False, refused=(
        "acknowledgement for seq 5 refused: central holds events of this journal past seq 3 that this copy does "
        "not (it was restored from an older backup); the events after 3 are this copy's own: deliver them as "
        "another device (docs/commands.md, Replacing a box's journal)"))
    j.close()
    j = Journal.open(journal_path, key)  # kept across a restart
    assert "past seq 3" in j.acknowledge(4).refused
    assert j.take_identity("shop-b") == (3, "shop-a")  # delivered as a new device: its acknowledgements count
    assert j.acknowledge(6) == Acknowledged(moved=True) and j.acked_seq() == 6
    j.close()


def _writer_beside(path):
    """Another process's connection making the journal at ``path`` (an empty file yet): it holds the write
    lock, as a command started beside the agent does while it creates the schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_new_journal_another_process_is_making_is_opened_once_it_has_finished(tmp_path, key):
    """Switching a new journal to WAL while another process writes it meets "database is locked" at once,
    without SQLite's busy timeout: the journal waits for it as the busy timeout would, and opens."""
    path = tmp_path / "journal.db"
    other = _writer_beside(path)
    finishing = threading.Timer(0.3, other.execute, ["COMMIT"])
    finishing.start()
    try:
        journal = Journal.open(path, key)
    finally:
        finishing.join()
        other.close()
    assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.append("sale", {"code": "6901028075831"}) == 1
    journal.close()


def test_a_new_journal_another_process_keeps_locked_is_refused_after_the_busy_timeout(tmp_path, key):
    """Not waited on for ever: the agent says which journal is locked, and starts again later."""
    path = tmp_path / "journal.db"
    other = _writer_beside(path)
    try:
        with pytest.raises(JournalError, match=f"^{re.escape(str(path))}: database is locked$"):
            Journal.open(path, key)
    finally:
        other.close()


def test_a_journal_of_a_newer_schema_is_refused_named_and_left_as_it_is(journal_path, key):
    """A box given back an older counterbox (an image rolled back) opens no journal a newer one wrote: it
    would read it wrongly. The operator reads which journal, which version, and what to do."""
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "6901028075831"})
    j._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    j.close()
    before = hashlib.sha256(journal_path.read_bytes()).hexdigest()
    said = (f"^{re.escape(str(journal_path))} has schema version {SCHEMA_VERSION + 1}; this counterbox knows up "
            f"to {SCHEMA_VERSION}. Nothing was changed; run a newer counterbox$")
    for opening in (lambda: Journal.open(journal_path, key), lambda: Journal.open(journal_path, key, create=False),
                    lambda: verify_journal(journal_path, key), lambda: verify_journal(journal_path, None)):
        with pytest.raises(JournalError, match=said):
            opening()
    assert hashlib.sha256(journal_path.read_bytes()).hexdigest() == before


def test_a_secret_whose_directory_is_a_file_is_refused_naming_that_file(tmp_path):
    """Not FileExistsError (which says the secret is there already, and a caller starting beside another
    would read it): the directory that is not one, as the system names it."""
    from storage.keys import write_secret

    (tmp_path / "keys").write_text("not a directory")
    with pytest.raises(NotADirectoryError) as refused:
        write_secret(tmp_path / "keys" / "identity.key", b"k" * 32)
    assert str(refused.value) == f"[Errno 20] Not a directory: '{tmp_path / 'keys'}'"
    assert (refused.value.errno, refused.value.filename) == (errno.ENOTDIR, str(tmp_path / "keys"))


def test_a_new_outer_key_given_in_a_file_is_read_whole_or_named(tmp_path):
    """`counterbox rewrap --new-key-file`: the file holds a key of 32 bytes, or it is named and refused."""
    from storage.keys import read_key_file

    path = tmp_path / "new.key"
    path.write_bytes(b"n" * 32)
    assert read_key_file(path) == b"n" * 32
    path.write_bytes(b"n" * 31)
    with pytest.raises(DataKeyError, match=f"^the data key in {re.escape(str(path))} holds 31 bytes, not 32: it is "
                                           "not a counterbox data key$"):
        read_key_file(path)
    with pytest.raises(DataKeyError, match=f"^cannot read the data key in {re.escape(str(tmp_path))}/none.key: "
                                           "No such file or directory$"):
        read_key_file(tmp_path / "none.key")


def test_an_event_that_does_not_open_is_read_as_damaged_naming_its_kind_and_why(journal_path, journal):
    """Bit rot or a row edited in the file: the readers that must go on past it (the uplink, the counter's
    fold, the views) read it as a damaged event; any other read stops at it, naming the event."""
    journal.append("price_list", {"items": ["old"]})
    journal.append("sale", {"code": "1"})
    journal.append("price_list", {"items": ["new"]})
    journal.append("sale", {"code": "2"})
    tamper(journal_path, "UPDATE events SET sealed = CAST(sealed || x'00' AS BLOB) WHERE seq = 3")
    conn = sqlite3.connect(journal_path)  # the trigger is gone already
    conn.execute("UPDATE events SET key_id = 9 WHERE seq = 4")
    conn.commit()
    conn.close()
    read = journal.read_after(0, damaged=True)
    assert [(e.seq, e.kind, e.body) for e in read] == [
        (1, "price_list", {"items": ["old"]}), (2, "sale", {"code": "1"}),
        (3, "damaged", {"kind": "price_list", "reason": "its sealed body fails authentication: the file was altered"}),
        (4, "damaged", {"kind": "sale", "reason": "its sealed body has no data key to open it (key 9)"})]
    assert journal.read_batch(2, max_events=5, max_bytes=None, damaged=True) == read[2:]
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: event 3 \\(price_list\\) fails "
                                           "authentication: the file was altered$"):
        journal.read_after(0)
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: event 3 \\(price_list\\) fails"):
        journal.read_batch(2, max_events=5, max_bytes=None)  # the uplink asks for damaged events by name
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: event 4 \\(sale\\) has no data key to "
                                           "open it \\(key 9\\)$"):
        journal.get(4)
    # The views go past it to the latest that opens.
    assert journal.last("price_list").body == {"items": ["old"]} and journal.last_seq("price_list") == 1
    assert [e.seq for e in journal.of_kind("price_list")] == [1]
    assert journal.last("sale").seq == 2


def test_a_batch_holds_no_more_bytes_of_events_than_asked_but_always_its_first(journal):
    """The uplink's batches: events in order up to ``max_bytes`` of sealed bodies (a body's JSON and 28 bytes
    of sealing), and the first whatever its size, so one large event never blocks the outbox."""
    for n in range(4):
        journal.append("sale", {"code": f"{n}" * 69})  # 80 bytes of JSON: 108 sealed
    assert [e.seq for e in journal.read_batch(0, max_events=10, max_bytes=216)] == [1, 2]
    assert [e.seq for e in journal.read_batch(0, max_events=10, max_bytes=215)] == [1]
    assert [e.seq for e in journal.read_batch(0, max_events=10, max_bytes=1)] == [1]
    assert [e.seq for e in journal.read_batch(1, max_events=2, max_bytes=10_000)] == [2, 3]
    assert [e.seq for e in journal.read_batch(0, max_events=10, max_bytes=None)] == [1, 2, 3, 4]


def test_a_checkpoint_altered_in_the_file_is_named_not_read(journal_path, journal):
    for n in range(3):
        journal.append("sale", {"n": n})
    journal.acknowledge(2)
    journal.fold_prefix(2, {"sold": 2}, [])
    assert journal.checkpoint() == (2, {"sold": 2})
    conn = sqlite3.connect(journal_path)
    conn.execute("UPDATE folds SET sealed = CAST(sealed || x'00' AS BLOB)")
    conn.commit()
    conn.close()
    reopened = Journal.open(journal_path, journal._outer)
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: the checkpoint at event 2 fails "
                                           "authentication: the file was altered$"):
        reopened.checkpoint()
    reopened.close()


def test_an_event_no_batch_could_carry_is_refused_naming_its_size_and_the_limit(journal_path, key):
    journal = Journal.open(journal_path, key, max_event_bytes=100)
    journal.append("sale", {"code": "x" * 89})  # 100 bytes of JSON: taken
    with pytest.raises(EventTooLarge, match="^a sale event of 101 bytes is over the limit of 100 bytes that one "
                                            "batch can carry; it was not recorded$"):
        journal.append("sale", {"code": "x" * 90})
    assert journal.last_seq() == 1
    journal.close()


def test_a_key_that_is_no_aes_key_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(ValueError, match="^AESGCM key must be 128, 192, or 256 bits.$"):
        Journal.open(tmp_path / "data" / "journal.db", b"k" * 31)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_database_is_named_by_every_opener(tmp_path, key):
    path = tmp_path / "journal.db"
    path.write_bytes(b"not a database, " * 64)
    said = f"^{re.escape(str(path))}: file is not a database$"
    for opening in (lambda: Journal.open(path, key), lambda: verify_journal(path, key),
                    lambda: verify_journal(path, None)):
        with pytest.raises(JournalError, match=said):
            opening()
    assert path.read_bytes() == b"not a database, " * 64


def test_a_checkpoint_moved_on_by_another_process_is_read_anew(journal_path, key):
    """Retention run by a command beside the agent: the agent's journal reads the new checkpoint, not the
    one it read before."""
    agent, command = Journal.open(journal_path, key), Journal.open(journal_path, key)
    for n in range(5):
        agent.append("sale", {"n": n})
    agent.acknowledge(5)
    agent.fold_prefix(2, {"sold": 2}, [])
    assert agent.checkpoint() == command.checkpoint() == (2, {"sold": 2})
    command.fold_prefix(4, {"sold": 4}, [])
    assert agent.checkpoint() == (4, {"sold": 4}) and agent.anchor_seq() == 4
    agent.close()
    command.close()


def test_an_append_sqlite_refuses_inside_the_callers_transaction_is_named_and_the_next_takes_its_place(journal,
                                                                                                      journal_path):
    """The caller's transaction goes on (SQLite aborted only the statement): the journal names itself in the
    error, and the next event takes the seq and the place in the chain the refused one did not."""
    journal._conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.kind = 'refused' "
                          "BEGIN SELECT RAISE(ABORT, 'refused here'); END")
    with journal.transaction():
        assert journal.append("sale", {"n": 1}) == 1
        with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: refused here$"):
            journal.append("refused", {"n": 2})
        assert journal.append("sale", {"n": 3}) == 2
    assert [e.body["n"] for e in journal.read_after(0)] == [1, 3] and journal.verify().ok


def test_a_journal_read_or_written_after_it_was_closed_says_so_naming_it(journal_path, key):
    """An error Python's sqlite3 raises itself (it has no SQLite error code) is the journal's own too."""
    journal = Journal.open(journal_path, key)
    journal.close()
    for reading in (journal.acked_seq, lambda: journal.read_after(0), journal.counts, lambda: journal.get(1),
                    lambda: journal.last("sale"), lambda: journal.of_kind("sale"), journal.last_seq,
                    journal.anchor_seq, journal.checkpoint, journal.journal_id, journal.base_seq, journal.data_keys,
                    journal.verify, lambda: journal.read_batch(0, max_events=10, max_bytes=None),
                    lambda: journal.in_transaction, lambda: journal.changes):
        with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: Cannot operate on a closed "
                                               "database.$"):
            reading()
    for writing in (lambda: journal.append("sale", {"n": 1}), lambda: journal.acknowledge(1), journal.rotate_key,
                    lambda: journal.rewrap(os.urandom(32)), journal.start_session,
                    lambda: journal.take_identity("shop-1"), lambda: journal.fold_prefix(1, {}, [])):
        with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))}: Cannot operate on a closed "
                                               "database.$"):
            writing()


def test_a_new_journal_is_made_in_directories_that_do_not_exist_yet(tmp_path, key):
    path = tmp_path / "var" / "lib" / "counterbox" / "journal.db"
    journal = Journal.open(path, key)
    assert journal.append("sale", {"code": "6901028075831"}) == 1
    journal.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_database_file_made_meanwhile_by_another_process_is_taken_as_it_is(tmp_path):
    """Two processes opening a new journal at once both find no file and both make one: the second finds
    the first's (and what it wrote) and goes on with it."""
    from storage.sqlite import create_private

    path = tmp_path / "new" / "journal.db"
    create_private(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"SQLite format 3\0")
    create_private(path)
    assert path.read_bytes() == b"SQLite format 3\0"


def test_the_last_event_of_a_kind_at_or_before_a_seq(journal):
    for n in range(4):
        journal.append("price_list", {"week": n})
        journal.append("sale", {"n": n})
    assert journal.last("price_list").body == {"week": 3}
    assert [journal.last("price_list", upto=seq).body for seq in (1, 2, 4, 6)] == [
        {"week": 0}, {"week": 0}, {"week": 1}, {"week": 2}]
    assert journal.last("price_list", upto=0) is None and journal.last("order", upto=8) is None


def test_reads_in_a_snapshot_see_the_journal_at_one_moment_whatever_another_process_commits(tmp_path):
    """What `counterbox status`, `show` and `report` read beside the agent: one moment, not a statement's each."""
    key = os.urandom(32)
    agent, command = Journal.open(tmp_path / "journal.db", key), Journal.open(tmp_path / "journal.db", key)
    try:
        agent.append("sale", {"code": "1"})
        with command.snapshot():
            assert command.last_seq() == 1
            agent.append("sale", {"code": "2"})
            agent.acknowledge(2)
            assert (command.last_seq(), command.acked_seq(), command.counts()) == (1, 0, {"sale": 1})
            assert [event.seq for event in command.read_after(0)] == [1]
        assert (command.last_seq(), command.acked_seq()) == (2, 2)
    finally:
        agent.close()
        command.close()


def test_a_journal_taken_from_another_box_knows_where_this_boxs_events_begin(tmp_path):
    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    try:
        assert journal.take_identity("old-box") == (0, "") and journal.identity_since() == 0  # its first: all its own
        journal.append("sale", {"code": "1"})
        journal.append("sale", {"code": "2"})
        journal.acknowledge(1)
        assert journal.take_identity("new-box") == (1, "old-box") and journal.identity_since() == 2
        journal.append("sale", {"code": "3"})
        assert journal.take_identity("new-box") == (1, "new-box") and journal.identity_since() == 2  # started again
    finally:
        journal.close()


def test_a_command_opens_the_journal_while_the_agent_holds_its_write_lock(tmp_path):
    """A command beside the agent (status, a report) only reads a journal of this schema: it takes no write lock,
    so it never waits for the agent's commits (it once timed out, now and then, beside an agent selling)."""
    import sqlite3
    import time

    key = os.urandom(32)
    journal = Journal.open(tmp_path / "journal.db", key)
    journal.append("sale", {"n": 1})
    journal.close()
    writer = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the agent's store, inside a commit
    try:
        started = time.monotonic()
        command = Journal.open(tmp_path / "journal.db", key, create=False)
        try:
            assert [event.body for event in command.read_after(0)] == [{"n": 1}]
        finally:
            command.close()
        assert time.monotonic() - started < 1.0  # the busy timeout is 5 s
    finally:
        writer.rollback()
        writer.close()


def test_what_a_write_keeps_in_memory_goes_back_when_its_transaction_does(journal):
    """``on_rollback``: called when the write's savepoint or the transaction around it rolls back, the latest
    first; never for a transaction that commits; and outside a transaction there is nothing to undo."""
    undone = []
    journal.on_rollback(lambda: undone.append("alone"))  # no transaction: each write commits by itself
    with journal.transaction():
        journal.on_rollback(lambda: undone.append("committed"))
    assert undone == []
    with pytest.raises(RuntimeError):
        with journal.transaction():
            journal.on_rollback(lambda: undone.append("first"))
            with journal.transaction():  # a savepoint released: the transaction may yet take it back
                journal.on_rollback(lambda: undone.append("released"))
            with pytest.raises(ValueError):
                with journal.transaction():
                    journal.on_rollback(lambda: undone.append("savepoint"))
                    raise ValueError
            assert undone == ["savepoint"]
            raise RuntimeError
    assert undone == ["savepoint", "released", "first"]


def test_a_call_back_that_fails_never_leaves_the_transaction_open(journal, caplog):
    """The rollback comes first, and the other calls still run: a transaction left open would take every later
    write into it, each answered as recorded, and lose them all when the journal closed."""
    undone = []
    with pytest.raises(RuntimeError):
        with journal.transaction():
            journal.on_rollback(lambda: undone.append("first"))
            journal.on_rollback(lambda: 1 / 0)
            journal.append("sale", {"code": "6901028075831"})
            raise RuntimeError
    assert undone == ["first"] and not journal.in_transaction
    assert "putting back what a write rolled back kept in memory failed" in caplog.text
    seq = journal.append("sale", {"code": "6901028075831"})
    assert journal.last_seq() == seq == 1
