"""The hash chain: every event carries the hash of the one before; verify names the first broken event."""

import json
import os
import re
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import SCHEMA_VERSION, DataKeyError, Journal, JournalError, verify_journal
from storage.chain import GENESIS, link
from storage.schema import MIGRATIONS

from .journals import another_key, contents, journal_path, key  # noqa: F401 (fixtures)


@pytest.fixture
def journal(journal_path, key):
    j = Journal.open(journal_path, key)
    for n in range(1, 6):
        j.append("sale", {"n": n})
    yield j
    j.close()


def tamper(journal_path, *statements: str) -> None:
    """Change the file behind the journal's back, as someone with the disk but not the key could."""
    conn = sqlite3.connect(journal_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("DROP TRIGGER events_append_only_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_an_untouched_journal_verifies_from_its_first_event_to_its_last(journal, journal_path, key):
    result = journal.verify()
    assert result.ok and (result.events, result.anchor_seq, result.last_seq) == (5, 0, 5)
    assert result.seals_checked
    # As `counterbox verify --json` prints it.
    assert result.as_dict() == {"ok": True, "events": 5, "anchor_seq": 0, "last_seq": 5, "head": result.head.hex(),
                                "seals_checked": True, "first_broken": None}
    assert result.head == journal._conn.execute("SELECT chain FROM events WHERE seq = 5").fetchone()[0]
    alone = verify_journal(journal_path, None)  # without the key: the chain alone
    assert alone.ok and not alone.seals_checked and alone.head == result.head


def test_an_empty_journal_verifies(journal_path, key):
    Journal.open(journal_path, key).close()
    result = verify_journal(journal_path, key)
    assert result.ok and result.events == 0 and result.head == bytes(32)


ALTERED = "does not match its chain hash: the row was altered, or replaces another"


@pytest.mark.parametrize("statements,first_broken,reason", [
    (["UPDATE events SET sealed = CAST(sealed || x'00' AS BLOB) WHERE seq = 3"], 3, f"event 3 (sale) {ALTERED}"),
    (["UPDATE events SET sealed = 'text' WHERE seq = 3"], 3, f"event 3 (sale) {ALTERED}"),
    (["UPDATE events SET kind = 'misread' WHERE seq = 4"], 4, f"event 4 (misread) {ALTERED}"),
    (["UPDATE events SET key_id = 2 WHERE seq = 2"], 2, f"event 2 (sale) {ALTERED}"),
    (["DELETE FROM events WHERE seq = 3"], 3, "event 3 is missing: event 4 follows event 2"),
    (["DELETE FROM events WHERE seq = 2"], 2, "event 2 is missing: event 3 follows event 1"),
    (["DELETE FROM events WHERE seq = 1"], 1, "event 1 is missing: event 2 follows the chain's anchor"),
    (["UPDATE meta SET value = '5' WHERE name = 'chain_anchor_seq'"], 5,
     "events at or before the chain's anchor 5 are present: the anchor was altered"),
    (["DELETE FROM events WHERE seq < 5", "UPDATE meta SET value = '5' WHERE name = 'chain_anchor_seq'"], 5,
     "events at or before the chain's anchor 5 are present: the anchor was altered"),  # the anchor's own event
], ids=["sealed-longer", "sealed-text", "kind", "key-id", "middle-removed", "second-removed", "first-removed",
        "anchor-moved-past-all", "anchor-moved-onto-the-last"])
def test_a_row_altered_or_removed_behind_the_journals_back_is_named(journal, journal_path, key,
                                                                   statements, first_broken, reason):
    tamper(journal_path, *statements)
    for result in (journal.verify(), verify_journal(journal_path, None), verify_journal(journal_path, key)):
        assert not result.ok
        assert (result.broken.seq, result.broken.reason) == (first_broken, reason)


def test_two_rows_swapped_are_named_at_the_first_of_them(journal, journal_path):
    tamper(journal_path,
           "UPDATE events SET seq = -1 WHERE seq = 2", "UPDATE events SET seq = 2 WHERE seq = 4",
           "UPDATE events SET seq = 4 WHERE seq = -1")
    result = verify_journal(journal_path, None)
    assert result.broken.seq == 2 and result.last_seq == 1


@pytest.mark.parametrize("change", ["a bit of its sealed body", "the data key it names, one the journal has not"])
def test_a_sealed_body_changed_and_chained_again_is_caught_by_its_seal(journal, journal_path, key, change):
    """Someone who recomputes the chain (it needs no key) still cannot forge a seal."""
    conn = sqlite3.connect(journal_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    rows = conn.execute("SELECT seq, kind, key_id, sealed FROM events ORDER BY seq").fetchall()
    previous = GENESIS
    for seq, kind, key_id, sealed in rows:
        if seq == 3 and change.startswith("a bit"):
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        elif seq == 3:
            key_id = 9
        previous = link(previous, seq, kind, key_id, sealed)
        conn.execute("UPDATE events SET sealed = ?, key_id = ?, chain = ? WHERE seq = ?", [sealed, key_id, previous, seq])
    conn.commit()
    conn.close()
    assert verify_journal(journal_path, None).ok  # the chain alone cannot tell
    forged = "event 3 (sale) fails authentication: its sealed body was altered"
    result = verify_journal(journal_path, key)
    assert (result.broken.seq, result.broken.reason, result.events) == (3, forged, 2)
    reopened = Journal.open(journal_path, key)  # the agent's own check says the same
    try:
        assert reopened.verify(seals=False).ok
        result = reopened.verify()
        assert (result.broken.seq, result.broken.reason, result.events) == (3, forged, 2)
    finally:
        reopened.close()


def test_events_removed_from_the_end_are_caught_when_central_had_acknowledged_them(journal, journal_path):
    journal.acknowledge(5)
    tamper(journal_path, "DELETE FROM events WHERE seq >= 4")
    result = verify_journal(journal_path, None)
    assert (result.broken.seq, result.broken.reason) == (
        4, "the journal ends at event 3 but central acknowledged up to 5: events 4 to 5 were removed")
    assert result.as_dict()["first_broken"] == {"seq": 4, "reason": result.broken.reason}


def test_the_chain_can_start_from_an_anchor_after_a_prefix_is_removed(journal, journal_path, key):
    """What retention does: fold old events into a checkpoint, remove them, keep the last one's hash as the anchor."""
    journal.acknowledge(5)
    journal.fold_prefix(2, {}, [])
    result = verify_journal(journal_path, key)
    assert result.ok and (result.anchor_seq, result.events, result.last_seq) == (2, 3, 5)
    assert journal.append("sale", {"n": 6}) == 6 and journal.verify().ok


def test_a_journal_with_every_event_removed_up_to_its_anchor_continues_from_it(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"n": 1})
    j.acknowledge(1)
    j.fold_prefix(1, {}, [])
    j.close()
    j = Journal.open(journal_path, key)
    assert j.append("sale", {"n": 2}) == 2
    assert j.verify().ok and j.verify().events == 1
    j.close()


def test_a_prefix_removed_without_its_checkpoint_is_named_by_verify(journal, journal_path, key):
    anchor = journal._conn.execute("SELECT chain FROM events WHERE seq = 2").fetchone()[0]
    tamper(journal_path, "DELETE FROM events WHERE seq <= 2",
           "UPDATE meta SET value = '2' WHERE name = 'chain_anchor_seq'",
           f"UPDATE meta SET value = '{anchor.hex()}' WHERE name = 'chain_anchor'")
    result = verify_journal(journal_path, key)
    assert not result.ok and "no checkpoint" in result.broken.reason


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.sampled_from(["sale", "misread", "refused"]), st.booleans()), max_size=12))
def test_writes_rolled_back_in_a_group_never_break_the_chain(tmp_path, writes):
    """A savepoint rolled back (one write of a group commit failing) leaves the chain whole."""
    path = tmp_path / f"{os.urandom(4).hex()}.db"
    j = Journal.open(path, os.urandom(32))
    kept = []
    with j.transaction():
        for n, (kind, fails) in enumerate(writes):
            try:
                with j.transaction():
                    j.append(kind, {"n": n})
                    if fails:
                        raise ValueError("this write fails")
                kept.append(n)
            except ValueError:
                pass
    assert j.verify().ok and [e.body["n"] for e in j.read_after(0)] == kept
    j.close()


STEPS = st.sampled_from(["agent", "agent group", "agent group failing", "command", "command rotates", "look"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEPS, max_size=14))
def test_two_connections_writing_in_turn_keep_one_sequence_and_one_chain(tmp_path, steps):
    """The agent's journal and a command's beside it (two connections to one file) append, group,
    roll back and rotate keys in any order: every event takes the next seq and chains to the one
    before, whoever wrote that, and each connection's last_seq is the file's."""
    path, key = tmp_path / f"{os.urandom(4).hex()}.db", os.urandom(32)
    agent, command = Journal.open(path, key), Journal.open(path, key)
    kept = []
    for n, step in enumerate(steps):
        if step == "agent":
            agent.append("sale", {"n": n})
            kept.append(n)
        elif step.startswith("agent group"):
            with agent.transaction():
                assert agent.last_seq() == len(kept)  # read inside the transaction, where it is kept
                agent.append("sale", {"n": n})
                try:
                    with agent.transaction():
                        agent.append("sale", {"n": -n})
                        if step.endswith("failing"):
                            raise ValueError("this write fails")
                    kept.append(n)
                    kept.append(-n)
                except ValueError:
                    kept.append(n)
                agent.append("misread", {"n": n + 100})
                kept.append(n + 100)
        elif step == "command":
            command.append("price_list", {"n": n})
            kept.append(n)
        elif step == "command rotates":
            command.rotate_key()
        else:
            assert agent.last_seq() == command.last_seq() == len(kept)
    agent.append("sale", {"n": "last"})
    kept.append("last")
    assert agent.verify().ok and [e.body["n"] for e in command.read_after(0)] == kept
    assert [e.seq for e in agent.read_after(0)] == list(range(1, len(kept) + 1))
    newest = max(key_id for key_id, _ in agent.data_keys())
    assert agent._conn.execute("SELECT key_id FROM events ORDER BY seq DESC").fetchone()[0] == newest
    agent.close()
    command.close()


# -- a journal made by schema v1, written here the way v1 wrote it ----------------------

def make_v1_journal(path, key: bytes, bodies: list[tuple[str, dict]]) -> None:
    aead = AESGCM(key)

    def seal(seq, kind, plaintext):
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, plaintext, f"counterbox-event-v1\x00{seq}\x00{kind}".encode())

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT NULL)")
    conn.execute("CREATE INDEX idx_events_kind ON events (kind)")
    for action in ("UPDATE", "DELETE"):
        conn.execute(f"CREATE TRIGGER events_append_only_{action.lower()} BEFORE {action} ON events "
                     "BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END")
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [
        ("key_check", seal(0, "key-check", b"counterbox journal key check").hex()),
        ("created_at", str(time.time())), ("acked_seq", "2"), ("session", "7")])
    for seq, (kind, body) in enumerate(bodies, 1):
        plaintext = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        conn.execute("INSERT INTO events (seq, kind, sealed) VALUES (?, ?, ?)", [seq, kind, seal(seq, kind, plaintext)])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()


V1_EVENTS = [("price_list", {"items": []}), ("sale", {"code": "6901028075831"}), ("misread", {"code": "1"})]


def test_a_v1_journal_opens_migrates_and_verifies_with_every_event_readable(journal_path, key):
    make_v1_journal(journal_path, key, V1_EVENTS)
    with pytest.raises(JournalError, match=f"^{re.escape(str(journal_path))} has schema version 1, which has no hash "
                                           "chain yet; the agent \\(or any counterbox command that opens it\\) "
                                           "adds one$"):
        verify_journal(journal_path, key)
    j = Journal.open(journal_path, key)
    assert j._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [(e.seq, e.kind, e.body) for e in j.read_after(0)] == [(n, k, b) for n, (k, b) in enumerate(V1_EVENTS, 1)]
    assert (j.acked_seq(), j.start_session()) == (2, 8)
    assert j.append("sale", {"code": "after"}) == 4
    j.close()
    result = verify_journal(journal_path, key)
    assert result.ok and result.events == 4 and result.seals_checked


def test_a_v1_journal_with_a_wrong_key_is_refused_and_left_as_it_was(journal_path, key):
    make_v1_journal(journal_path, key, V1_EVENTS)
    before = contents(journal_path)
    with pytest.raises(DataKeyError, match=another_key(journal_path)):
        Journal.open(journal_path, os.urandom(32))
    assert contents(journal_path) == before


def test_a_migrated_journal_is_still_append_only(journal_path, key):
    make_v1_journal(journal_path, key, V1_EVENTS)
    j = Journal.open(journal_path, key)
    for statement in ("UPDATE events SET kind = 'x'", "DELETE FROM events", "DELETE FROM keys"):
        with pytest.raises(sqlite3.IntegrityError):
            j._conn.execute(statement)
    j.close()


def test_a_new_journal_has_the_schema_of_one_migrated_from_the_first_version(tmp_path, key):
    """Every journal, new or years old, ends the same: tables, indexes and triggers word for word (SQLite
    keeps their text), and the same rows in meta; a new one runs every migration from nothing."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    Journal.open(new, key).close()
    make_v1_journal(old, key, V1_EVENTS)
    Journal.open(old, key).close()

    def schema(path):
        conn = sqlite3.connect(path)
        try:
            return (sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                    sorted(name for (name,) in conn.execute("SELECT name FROM meta")),
                    conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    assert schema(new) == schema(old)
    assert schema(new)[1] == ["acked_seq", "base_seq", "chain_anchor", "chain_anchor_seq", "created_at",
                              "diverged_at", "identity", "journal_id", "session"]
    conn = sqlite3.connect(new)
    assert time.time() - float(conn.execute("SELECT value FROM meta WHERE name = 'created_at'").fetchone()[0]) < 60
    assert conn.execute("SELECT value FROM meta WHERE name = 'chain_anchor'").fetchone()[0] == "00" * 32
    ids = [sqlite3.connect(path).execute("SELECT value FROM meta WHERE name = 'journal_id'").fetchone()[0]
           for path in (new, old)]
    assert all(re.fullmatch("[0-9a-f]{32}", id_) for id_ in ids) and ids[0] != ids[1]  # each journal its own
    with pytest.raises(sqlite3.IntegrityError, match="a data key is never removed"):
        conn.execute("DELETE FROM keys")
    conn.close()


def test_a_v1_journal_of_many_events_is_chained_whole_when_it_migrates(journal_path, key):
    """v2's migration chains v1's events a step at a time (bounded memory): the chain runs on unbroken
    from one step to the next, to the last event."""
    bodies = [("sale", {"n": n}) for n in range(4500)]
    make_v1_journal(journal_path, key, bodies)
    Journal.open(journal_path, key).close()
    result = verify_journal(journal_path, key)
    assert result.ok and (result.events, result.last_seq, result.seals_checked) == (4500, 4500, True)


def test_v1_journals_with_nothing_sealed_yet_each_get_a_data_key_and_an_id_of_their_own(tmp_path, key):
    """A v1 journal with events keeps the outer key that sealed them as data key 1 (so two copies of it
    are one journal); one with none gets a fresh data key, as a new journal does: two boxes' empty v1
    journals under one key are two journals to central, and the outer key seals no event."""
    paths = [tmp_path / "empty-a.db", tmp_path / "empty-b.db", tmp_path / "full-a.db", tmp_path / "full-b.db"]
    for path in paths[:2]:
        make_v1_journal(path, key, [])
    for path in paths[2:]:
        make_v1_journal(path, key, V1_EVENTS)
    ids = []
    for path in paths:
        j = Journal.open(path, key)
        ids.append(j.journal_id())
        first = 1 if "empty" in path.name else 4
        assert [j.append("sale", {"n": n}) for n in range(3)] == [first, first + 1, first + 2]
        j.close()
        assert verify_journal(path, key).ok
    assert ids[0] != ids[1] and ids[2] == ids[3] and ids[0] not in ids[2:]


# The schema every journal on a box holds today, as SQLite keeps it: migrations that have run on boxes
# never change, so a new journal must end word for word as these did (another change is a new migration).
FIELD_SCHEMA = [
    ("index", "idx_events_looked_up", "events", "CREATE INDEX idx_events_looked_up ON events (kind) WHERE kind IN "
                                                "('activation', 'document', 'price_list', 'revocation', 'settings')"),
    ("index", "sqlite_autoindex_meta_1", "meta", None),
    ("table", "events", "events", "CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT "
                                  "NULL, key_id INTEGER NOT NULL DEFAULT 1, chain BLOB)"),
    ("table", "folds", "folds", "CREATE TABLE folds (seq INTEGER PRIMARY KEY, key_id INTEGER NOT NULL, sealed BLOB NOT "
                                "NULL)"),
    ("table", "keys", "keys", "CREATE TABLE keys (id INTEGER PRIMARY KEY, wrapped BLOB NOT NULL, created_at REAL NOT "
                              "NULL)"),
    ("table", "meta", "meta", "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)"),
    ("trigger", "events_append_only_delete", "events", "CREATE TRIGGER events_append_only_delete BEFORE DELETE ON "
     "events WHEN old.seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'chain_anchor_seq') OR NOT EXISTS "
     "(SELECT 1 FROM folds WHERE seq >= old.seq) BEGIN SELECT RAISE(ABORT, 'the journal is append-only: only events "
     "folded by retention leave it'); END"),
    ("trigger", "events_append_only_update", "events", "CREATE TRIGGER events_append_only_update BEFORE UPDATE ON "
     "events BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END"),
    ("trigger", "keys_kept", "keys", "CREATE TRIGGER keys_kept BEFORE DELETE ON keys BEGIN SELECT RAISE(ABORT, 'a data "
     "key is never removed: its events would be unreadable'); END"),
]


def test_a_new_journal_ends_word_for_word_as_the_journals_boxes_hold(tmp_path, key):
    Journal.open(tmp_path / "new.db", key).close()
    conn = sqlite3.connect(tmp_path / "new.db")
    try:
        assert sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")) == FIELD_SCHEMA
    finally:
        conn.close()


def make_v2_journal(path, key: bytes, bodies: list[tuple[str, dict]]) -> None:
    """A journal as schema v2 left it (from before retention): v1's, taken up by v2's own migration."""
    make_v1_journal(path, key, bodies)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    MIGRATIONS[1](conn, key)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")
    conn.close()


def test_a_v2_journal_verifies_as_it_is_and_opens_as_a_new_one_is(tmp_path, key):
    """A box on v2 (no retention yet): `counterbox verify` checks it without changing a byte; opened, it
    ends with the schema of a new journal, its events as they were."""
    old = tmp_path / "old.db"
    make_v2_journal(old, key, V1_EVENTS)
    before = contents(old)
    result = verify_journal(old, key)
    assert result.ok and (result.events, result.anchor_seq, result.seals_checked) == (3, 0, True)
    assert verify_journal(old, None).ok and contents(old) == before
    j = Journal.open(old, key)
    assert [(e.seq, e.kind, e.body) for e in j.read_after(0)] == [(n, k, b) for n, (k, b) in enumerate(V1_EVENTS, 1)]
    assert j.append("sale", {"code": "after"}) == 4
    j.close()
    conn = sqlite3.connect(old)
    try:
        assert sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")) == FIELD_SCHEMA
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
