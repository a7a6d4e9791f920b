"""storage.sqlite.transaction: the one transaction helper every write of the journal goes through."""

import sqlite3

import pytest

from storage import sqlite


@pytest.fixture
def conn(tmp_path):
    conn = sqlite.connect(tmp_path / "t.db")
    sqlite.durable(conn)
    conn.execute("CREATE TABLE t (n INTEGER)")
    yield conn
    conn.close()


def rows(conn):
    return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")]


def test_commits_what_its_block_wrote(conn):
    with sqlite.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
    assert not conn.in_transaction
    assert rows(conn) == [1]


def test_an_error_rolls_everything_back_and_goes_on(conn):
    with pytest.raises(ZeroDivisionError), sqlite.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        1 / 0
    assert not conn.in_transaction
    assert rows(conn) == []


def test_nested_blocks_roll_back_to_their_own_savepoint(conn):
    with sqlite.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with sqlite.transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            with pytest.raises(ValueError), sqlite.transaction(conn):
                conn.execute("INSERT INTO t VALUES (3)")
                raise ValueError
            conn.execute("INSERT INTO t VALUES (4)")
        with pytest.raises(ValueError), sqlite.transaction(conn):
            conn.execute("INSERT INTO t VALUES (5)")
            with sqlite.transaction(conn):
                conn.execute("INSERT INTO t VALUES (6)")
            raise ValueError
    assert rows(conn) == [1, 2, 4]


def test_a_commit_that_fails_leaves_no_transaction_open(conn):
    # A deferred foreign key is checked at COMMIT, which then fails and leaves the
    # transaction open: the helper must roll it back, or the next BEGIN would fail.
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), sqlite.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO child VALUES (7)")
    assert not conn.in_transaction
    assert rows(conn) == []
    with sqlite.transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
    assert rows(conn) == [2]


def test_begins_in_the_mode_asked(conn, tmp_path):
    other = sqlite.connect(tmp_path / "t.db")
    other.execute("PRAGMA busy_timeout = 0")
    try:
        with sqlite.transaction(conn, mode="EXCLUSIVE"):
            conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
