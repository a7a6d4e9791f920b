"""The store's async face: one thread, group commit, and errors that stay on the caller's side."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.counter import Counter
from agent.daemon import record_scan
from drivers.decoder import NotABarcode, Scan
from drivers.feedback import Signal
from storage import DataKeyError, EventTooLarge, Journal, JournalError, NoJournal, Store
from storage.store import LOG_ROOM, MAX_GROUP

from .harness import small_filesystem

ROOT = Path(__file__).resolve().parent.parent


def run(coroutine):
    return asyncio.run(coroutine)


def test_appends_run_in_the_stores_own_thread_and_are_durable_when_answered(tmp_path):
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        threads = await asyncio.gather(*[store.write(lambda j: threading.current_thread().name) for _ in range(3)])
        seqs = await asyncio.gather(*[store.append("sale", {"n": n}) for n in range(50)])
        await store.close()
        return threads, seqs

    threads, seqs = run(main())
    assert set(threads) == {"journal journal.db"} and threading.current_thread().name not in threads
    assert seqs == list(range(1, 51))


def test_a_scan_is_with_the_stores_thread_as_record_scan_returns_before_anyone_awaits_it(tmp_path):
    """The reader hands a scan on in its own turn of the loop: the store's queue has it then, ahead of
    whatever the loop does next (a read handed in after it sees it recorded)."""
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        answer = record_scan(store, Counter(), Scan("6901028075831", "/dev/input/event3", 1.0, 1.0))
        seen = await store.read(lambda j: [e.kind for e in j.read_after(0)])
        signal = await answer
        await store.close()
        return seen, signal

    assert run(main()) == (["sale"], Signal.ATTENTION)  # recorded; on no price list


def test_the_write_ahead_log_has_its_room_before_the_first_scan_and_its_commits_write_within_it(tmp_path):
    """A commit that lengthens a file costs the filesystem's own journal a commit too: the store's log is
    given its room as it opens. SQLite writes it, in a transaction rolled back, which leaves the journal
    as it was: after a power cut too (the files copied as they are on disk while the store holds them)."""
    path, key, cut = tmp_path / "journal.db", os.urandom(32), tmp_path / "cut"
    log = path.with_name("journal.db-wal")
    cut.mkdir()

    async def main():
        store = await Store.open(path, key)
        room = log.stat().st_size
        for n in range(300):
            await store.append("sale", {"n": n})
        for name in ("journal.db", "journal.db-wal"):
            shutil.copyfile(tmp_path / name, cut / name)
        after = log.stat().st_size
        await store.close()
        return room, after

    room, after = run(main())
    assert room >= LOG_ROOM * 4096 and after == room
    journal = Journal.open(cut / "journal.db", key)
    assert [e.body for e in journal.read_after(0, 1000)] == [{"n": n} for n in range(300)] and journal.verify().ok
    journal.close()
    tables = sqlite3.connect(cut / "journal.db").execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    assert "log_room" not in {name for name, in tables}


def test_a_store_whose_log_could_not_be_given_room_opens_and_records_all_the_same(tmp_path, monkeypatch, caplog):
    """Room ahead only saves time: whatever fails in making it (here a fault nobody foresaw) neither keeps
    the store from opening nor leaves its opener waiting."""
    def fails(journal, pages, **options):
        raise RuntimeError("no room today")

    monkeypatch.setattr(Journal, "reserve_log", fails)

    async def main():
        store = await asyncio.wait_for(Store.open(tmp_path / "journal.db", os.urandom(32)), 10)
        seq = await store.append("sale", {"n": 1})
        await store.close()
        return seq

    assert run(main()) == 1 and "no room made ahead in its write-ahead log (no room today)" in caplog.text


def test_on_a_disk_low_on_space_the_write_ahead_log_is_given_no_room_ahead(tmp_path):
    with small_filesystem(tmp_path / "disk", "10m") as disk:
        async def main():
            store = await Store.open(disk / "journal.db", os.urandom(32))
            await store.append("sale", {"n": 1})
            length = (disk / "journal.db-wal").stat().st_size
            await store.close()
            return length

        assert run(main()) < 64 * 1024


def test_writes_waiting_together_share_one_commit(tmp_path):
    commits = []

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        await store.write(lambda j: j._conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql.startswith("COMMIT") else None))
        await asyncio.gather(*[store.append("sale", {"n": n}) for n in range(100)])
        await store.close()

    run(main())
    assert 1 <= len(commits) < 20  # 100 appends, a handful of fsyncs


def test_a_keyed_digit_is_applied_once_when_another_write_of_its_group_fails(tmp_path):
    """Keyed 3 and 0, then * and a product: 30 packs. The 0 went in one group with a scan the counter failed
    on; a group rolled back whole and run again keyed it twice (the digit records no event, and the counter
    kept it in memory): 300 packs sold."""
    from drivers.keypad import Keypress

    keypad = "/dev/input/event4"

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        counter = Counter(start_guard=0.0)
        await record_scan(store, counter, Keypress("3", keypad, 1.0))
        gate = threading.Event()
        blocker = asyncio.ensure_future(store.read(lambda j: gate.wait(5)))  # holds the store's thread
        await asyncio.sleep(0.05)
        digit = asyncio.ensure_future(record_scan(store, counter, Keypress("0", keypad, 2.0)))
        failing = asyncio.ensure_future(record_scan(store, counter, Scan("6901028075831", "/dev/input/event3",
                                                                         2.0 ** 40, 2.0 ** 40)))
        await asyncio.sleep(0.05)  # both wait: one group
        gate.set()
        await blocker
        signals = await asyncio.gather(digit, failing)
        await record_scan(store, counter, Keypress("*", keypad, 3.0))
        await record_scan(store, counter, Scan("6901028075831", "/dev/input/event3", 4.0, 4.0))
        sales = [e.body for e in await store.read(lambda j: j.read_after(0)) if e.kind == "sale"]
        await store.close()
        return signals, sales

    signals, sales = run(main())
    assert signals[1] is Signal.ERROR
    assert [sale["quantity"] for sale in sales] == [30]


@pytest.mark.parametrize("waiting", [1, 2, 3, 300])
def test_every_write_of_a_group_of_any_size_is_answered_once_its_one_commit_is_durable(tmp_path, waiting):
    """The store's thread is held by a write while ``waiting`` more arrive: they go in one group
    (at most MAX_GROUP to a commit), and each is answered with its own result."""
    commits = []

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        await store.write(lambda j: j._conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql.startswith("COMMIT") else None))
        held, go = threading.Event(), threading.Event()
        first = asyncio.ensure_future(store.write(lambda j: (held.set(), go.wait(10), j.append("sale", {"n": 0}))[2]))
        await asyncio.to_thread(held.wait, 10)
        rest = [asyncio.ensure_future(store.append("sale", {"n": n})) for n in range(1, waiting + 1)]
        await asyncio.sleep(0.05)  # all of them in the store's queue
        commits.clear()
        go.set()
        async with asyncio.timeout(30):  # a write never answered fails the test rather than hanging it
            seqs = [await first] + [await write for write in rest]
        events = await store.read(lambda j: j.read_after(0, 1000))
        await store.close()
        return seqs, events

    seqs, events = run(main())
    assert seqs == list(range(1, waiting + 2))
    assert [e.body["n"] for e in events] == list(range(waiting + 1))
    assert len(commits) == 1 + -(-waiting // MAX_GROUP)  # the held write's own, then the group's


def test_a_failing_write_fails_alone_and_its_neighbours_commit(tmp_path):
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32), max_event_bytes=100)
        results = await asyncio.gather(store.append("sale", {"n": 1}), store.append("sale", {"x": "y" * 200}),
                                       store.append("sale", {"n": 2}), return_exceptions=True)
        events = await store.read(lambda j: j.read_after(0))
        await store.close()
        return results, events

    results, events = run(main())
    assert results[0] == 1 and isinstance(results[1], EventTooLarge) and results[2] == 2
    assert [e.body for e in events] == [{"n": 1}, {"n": 2}]


_LEFT_OPEN = """
import asyncio, os, sys
from pathlib import Path
from storage import Store

async def main():
    store = await Store.open(Path(sys.argv[1]), bytes.fromhex(sys.argv[2]))
    await store.append("sale", {"code": "6901028075831"})  # and the agent ends without closing it

asyncio.run(main())
"""


def test_an_agent_that_ends_without_closing_its_store_still_exits_its_events_recorded(tmp_path):
    """A crash on the way out must not leave the process hanging on the store's thread (which would keep
    systemd from restarting it): the thread does not hold the process up, and what was answered is on disk."""
    key = os.urandom(32)
    ended = subprocess.run([sys.executable, "-c", _LEFT_OPEN, str(tmp_path / "journal.db"), key.hex()],
                           cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert ended.returncode == 0, ended.stderr

    async def main():
        store = await Store.open(tmp_path / "journal.db", key, create=False)
        events = await store.read(lambda j: j.read_after(0))
        await store.close()
        return events

    assert [(e.seq, e.body) for e in run(main())] == [(1, {"code": "6901028075831"})]


def test_a_closed_store_refuses_work_and_closing_twice_is_harmless(tmp_path, monkeypatch):
    """Its thread ends cleanly (nothing thrown in it, which the log would show as a crash), and only once."""
    thrown = []
    monkeypatch.setattr(threading, "excepthook", thrown.append)

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        await store.close()
        await store.close()
        with pytest.raises(JournalError, match=f"^{re.escape(str(tmp_path / 'journal.db'))}: the store is closed$"):
            await store.append("sale", {})

    before = threading.active_count()
    run(main())
    assert thrown == [] and threading.active_count() == before


def test_a_scan_the_journal_could_not_record_sounds_an_error_never_good(tmp_path):
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32), max_event_bytes=60)
        counter = Counter()
        refused = await record_scan(store, counter, Scan("6901028075831", "/dev/input/event3", 1.0, 1.0))
        small = await Store.open(tmp_path / "other.db", os.urandom(32))
        recorded = await record_scan(small, counter, Scan("96385074", "/dev/input/event3", 1.0, 1.0))
        broken = await record_scan(small, counter, NotABarcode("690102", "/dev/input/event3", "cut"))
        await store.close()
        await small.close()
        return refused, recorded, broken

    refused, recorded, broken = run(main())
    assert refused is Signal.ERROR
    assert recorded is Signal.ATTENTION  # recorded, not on a price list
    assert broken is Signal.ERROR


def test_a_scan_the_counter_fails_on_is_refused_with_the_error_signal_and_a_line_without_its_code(tmp_path, caplog):
    """A replayed stream can carry a kernel time past year 9999, which no timestamp holds: the scan is
    refused (ERROR, logged as not recorded) rather than lost unanswered, and the next one is recorded."""
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        counter = Counter()
        far = await record_scan(store, counter, Scan("6901028075831", "/dev/input/event3", 2.0 ** 40, 2.0 ** 40))
        next_one = await record_scan(store, counter, Scan("6901028075831", "/dev/input/event3", 1.0, 1.0))
        kinds = await store.read(lambda journal: [event.kind for event in journal.read_after(0)])
        await store.close()
        return far, next_one, kinds

    with caplog.at_level(logging.INFO):
        far, next_one, kinds = run(main())
    assert (far, next_one, kinds) == (Signal.ERROR, Signal.ATTENTION, ["sale"])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "scan from /dev/input/event3 NOT recorded: the counter failed on it (ValueError)"]
    assert "6901028075831" not in caplog.text


def _group_of_three(tmp_path, middle) -> tuple[list, list]:
    """Sale 1, the write ``middle``, and sale 3, held back until all three wait, so that the store commits
    them as one group: what each write got (its result or its error), and the events recorded after."""
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        gate = threading.Event()
        # Holds the store's thread, so that the next three wait together and form one group.
        blocker = asyncio.ensure_future(store.read(lambda j: gate.wait(5)))
        await asyncio.sleep(0.05)
        tasks = [asyncio.ensure_future(w) for w in (store.append("sale", {"n": 1}), store.write(middle),
                                                    store.append("sale", {"n": 3}))]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        events = await store.read(lambda j: j.read_after(0))
        await store.close()
        return results, events

    return run(main())


def test_a_write_that_ends_the_whole_transaction_fails_its_group_and_nothing_commits_apart(tmp_path):
    """As a full disk can: SQLite rolls back everything, so every write of the group is reported failed,
    and none of them (not even those after it) lands on disk on its own to be booked twice later."""
    results, events = _group_of_three(tmp_path, lambda j: j._conn.execute("ROLLBACK"))
    assert all(isinstance(r, JournalError) for r in results), results
    assert events == []


def test_a_store_that_cannot_open_its_journal_says_why_to_its_opener_and_leaves_no_thread(tmp_path):
    path = tmp_path / "journal.db"
    Journal.open(path, os.urandom(32)).close()

    async def main():
        with pytest.raises(DataKeyError, match="does not open"):
            await Store.open(path, os.urandom(32))  # another key
        with pytest.raises(NoJournal, match=re.escape(f"there is no journal at {tmp_path / 'other.db'}")):
            await Store.open(tmp_path / "other.db", os.urandom(32), create=False)
        assert not (tmp_path / "other.db").exists()

    before = threading.active_count()
    run(main())
    assert threading.active_count() == before


def test_cancelling_the_opening_of_a_store_leaves_no_thread_behind(tmp_path, monkeypatch):
    """The thread is told to stop, and stops cleanly: nothing thrown in it (which the log would show as a
    crash of the journal's thread), the journal it opened closed."""
    thrown = []
    monkeypatch.setattr(threading, "excepthook", thrown.append)

    async def main():
        opening = asyncio.ensure_future(Store.open(tmp_path / "journal.db", os.urandom(32)))
        await asyncio.sleep(0)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    before = threading.active_count()
    run(main())
    assert threading.active_count() == before and thrown == []


def test_a_destroyed_secret_is_zeroed_before_it_goes_and_a_removed_journal_leaves_no_file(tmp_path):
    from storage import destroy_secret, remove_journal
    from storage.keys import write_secret

    write_secret(tmp_path / "data.key", b"k" * 32)
    fd = os.open(tmp_path / "data.key", os.O_RDONLY)  # a reader holding it open sees what was left in it
    try:
        assert destroy_secret(tmp_path / "data.key") is True
        assert os.pread(fd, 64, 0) == b"\0" * 32
    finally:
        os.close(fd)
    assert not (tmp_path / "data.key").exists() and destroy_secret(tmp_path / "data.key") is False
    journal = Journal.open(tmp_path / "journal.db", b"k" * 32)
    journal.append("sale", {"code": "6901028075831"})
    journal.close()
    remove_journal(tmp_path / "journal.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut_after", ["marker", "data key", "journal"])
def test_an_erase_cut_short_by_a_power_cut_is_finished_at_the_next_start(tmp_path, cut_after):
    """Whatever step the power cut came after, the next start erases the rest: never a box that cannot
    start (its data key gone, its journal left), nor one back as the revoked identity."""
    from agent import daemon
    from agent.config import load
    from provisioning.identity import create_key
    from storage import destroy_secret, remove_journal

    (tmp_path / "agent.toml").write_text('[storage]\npath = "journal.db"\nkey_file = "data.key"\n'
                                         '[device]\nkey_file = "device.key"\n')
    config = load(tmp_path / "agent.toml")
    create_key(config.device.key_file)
    daemon.open_journal(config, create=True).close()
    (tmp_path / "journal.db.erasing").write_text("erasing\n")
    if cut_after in ("data key", "journal"):
        destroy_secret(config.storage.key_file)
    if cut_after == "journal":
        remove_journal(config.storage.path)
    assert daemon.finish_erase(config) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]
    assert daemon.finish_erase(config) is False


def test_an_erase_without_room_for_its_marker_cut_short_is_finished_at_the_next_start(tmp_path, monkeypatch):
    """A full disk refused the marker, then the power went after the data key was gone: the journal could not be
    opened, and nothing said to finish the erase. The data key moved aside (a rename needs no room) marks it."""
    from agent import daemon
    from agent.config import load
    from provisioning.identity import create_key

    (tmp_path / "agent.toml").write_text('[storage]\npath = "journal.db"\nkey_file = "data.key"\n'
                                         '[device]\nkey_file = "device.key"\n')
    config = load(tmp_path / "agent.toml")
    create_key(config.device.key_file)
    daemon.open_journal(config, create=True).close()

    def no_room(path, data):
        raise OSError(28, "No space left on device")

    def power_cut(path, **how):
        raise KeyboardInterrupt  # the power, gone before the journal's files were removed

    monkeypatch.setattr(daemon, "write_secret", no_room)
    monkeypatch.setattr(daemon, "remove_journal", power_cut)
    with pytest.raises(KeyboardInterrupt):
        daemon.crypto_erase(config)
    monkeypatch.undo()
    assert not config.storage.key_file.exists() and config.storage.path.exists()  # the state it left
    assert daemon.finish_erase(config) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]
    assert daemon.finish_erase(config) is False


def test_a_read_that_fails_fails_its_caller_alone_and_the_store_goes_on(tmp_path):
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        await store.append("sale", {"n": 1})
        with pytest.raises(ZeroDivisionError):
            await store.read(lambda j: 1 / 0)
        seq = await store.append("sale", {"n": 2})
        events = await store.read(lambda j: j.read_after(0))
        await store.close()
        return seq, events

    seq, events = run(main())
    assert seq == 2 and [e.body for e in events] == [{"n": 1}, {"n": 2}]


def test_a_caller_whose_event_loop_has_ended_does_not_stop_the_store_serving_others(tmp_path):
    """A write answered after its caller's loop closed (a command that gave up) is dropped, not thrown in
    the store's thread, which goes on serving the next caller."""
    gate = threading.Event()

    async def give_up():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        asyncio.ensure_future(store.write(lambda j: gate.wait(5) and j.append("sale", {"n": 1})))
        await asyncio.sleep(0.05)
        return store  # its loop ends with the write still under way

    store = run(give_up())
    gate.set()

    async def go_on():
        seq = await asyncio.wait_for(store.append("sale", {"n": 2}), 10)
        await store.close()
        return seq

    assert run(go_on()) == 2


def test_a_write_whose_caller_gave_up_leaves_its_group_answered(tmp_path):
    """Cancelling a caller does not take its write back (it may be on disk already): it is recorded with its
    group, whose other writes are answered as ever."""
    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        gate = threading.Event()
        blocker = asyncio.ensure_future(store.read(lambda j: gate.wait(5)))  # holds the thread: a group forms
        await asyncio.sleep(0.05)
        tasks = [asyncio.ensure_future(store.append("sale", {"n": n})) for n in range(1, 5)]
        await asyncio.sleep(0.05)
        tasks[0].cancel()
        tasks[2].cancel()
        gate.set()
        await blocker
        answered = await asyncio.wait_for(asyncio.gather(tasks[1], tasks[3]), 10)
        events = await store.read(lambda j: j.read_after(0))
        await store.close()
        return answered, events, tasks

    answered, events, tasks = run(main())
    assert answered == [2, 4] and tasks[0].cancelled() and tasks[2].cancelled()
    assert [e.body["n"] for e in events] == [1, 2, 3, 4]


def test_a_write_that_ends_the_whole_transaction_and_raises_fails_every_write_of_its_group_as_a_journal_error(tmp_path):
    """Whatever it raised (here a ZeroDivisionError, after ending the transaction): its neighbours' writes went
    with the transaction, and each of them is told so as the store's own error, in that error's words."""
    def ends_and_raises(journal):
        journal._conn.execute("ROLLBACK")
        return 1 / 0

    results, events = _group_of_three(tmp_path, ends_and_raises)
    assert [(type(r), str(r)) for r in results] == [(JournalError, "division by zero")] * 3
    assert events == []


def test_an_acknowledgement_beyond_a_restored_copy_is_refused_through_the_store_and_stays_refused(tmp_path):
    """Through the store, as the uplink takes it: that central holds more of this journal than this copy is
    recorded, in the store's own transaction, so a later acknowledgement past the copy's last event (the same
    one, retained, at the next connection) never moves the cursor over the copy's own events."""
    async def scenario():
        store = await Store.open(tmp_path / "journal.db", b"k" * 32)
        try:
            for n in range(3):
                await store.append("sale", {"n": n})
            first = await store.write(lambda journal: journal.acknowledge(5))
            for n in range(3, 6):
                await store.append("sale", {"n": n})  # this copy's own 4 to 6, not central's
            again = await store.write(lambda journal: journal.acknowledge(5))
            return first, again, await store.read(lambda journal: journal.acked_seq())
        finally:
            await store.close()

    first, again, acked = run(scenario())
    assert not first.moved and "beyond the last event 3" in first.refused
    assert not again.moved and "past seq 3 that this copy does not" in again.refused
    assert acked == 0


def test_a_group_where_the_disk_refused_one_write_and_committed_the_others_is_not_run_again(tmp_path):
    """A write refused as full in its own savepoint while the rest of its group committed: running the group once
    more (after emptying SQLite's write-ahead log, for a group the disk refused whole) recorded the others twice."""
    import threading

    from storage import JournalFull

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        gate = threading.Event()
        busy = asyncio.ensure_future(store.write(lambda journal: gate.wait(5)))  # holds the store's thread
        await asyncio.sleep(0.1)
        sale = asyncio.ensure_future(store.append("sale", {"n": 1}))

        def refused(journal):
            journal.append("sale", {"n": 2})
            raise JournalFull("the disk is full (in this write's savepoint alone)")

        full = asyncio.ensure_future(store.write(refused))
        await asyncio.sleep(0.1)  # both wait, to go in one group
        gate.set()
        await busy
        seq = await sale
        with pytest.raises(JournalFull):
            await full
        events = await store.read(lambda journal: journal.read_after(0))
        await store.close()
        return seq, events

    seq, events = asyncio.run(main())
    assert [(event.seq, event.body) for event in events] == [(seq, {"n": 1})]


def test_on_a_disk_low_on_space_a_reader_beside_the_agent_holds_up_no_write(tmp_path, monkeypatch):
    """The store empties SQLite's write-ahead log after each commit on a disk low on space; a command beside the
    agent reading (a report, its snapshot open) kept the log's frames, and emptying it waited out the busy timeout
    (5 s) after every commit, each scan behind it waiting as long."""
    import sqlite3
    import time

    from storage import store as store_module

    monkeypatch.setattr(store_module, "_low_on_space", lambda path: True)

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        await store.append("sale", {"n": 0})
        def snapshot() -> sqlite3.Connection:  # a snapshot held, as a report's
            reader = sqlite3.connect(tmp_path / "journal.db", check_same_thread=False)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM events").fetchone()
            return reader

        reader = await asyncio.to_thread(snapshot)
        took = []
        for n in range(1, 5):
            started = time.monotonic()
            await store.append("sale", {"n": n})
            took.append(time.monotonic() - started)
        await asyncio.to_thread(reader.close)
        events = await store.read(lambda journal: journal.read_after(0))
        await store.close()
        return took, events

    took, events = asyncio.run(main())
    assert max(took) < 2.0, took  # the busy timeout is 5 s: never waited out
    assert [event.body["n"] for event in events] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_journal_removed_or_replaced_while_open_records_nothing_more_and_says_so_once(tmp_path, caplog, how):
    """The agent went on selling into a file that was gone from its path (the retailer heard the good signal),
    and lost it all at the next start; or into a file whose write-ahead log another journal then read."""
    path, key = tmp_path / "journal.db", os.urandom(32)
    other = tmp_path / "other.db"
    Journal.open(other, os.urandom(32)).close()

    async def main():
        store = await Store.open(path, key)
        first = await store.append("sale", {"n": 1})
        if how == "removed":
            path.unlink()
        else:
            os.replace(other, path)
        refused = []
        for n in (2, 3):
            with pytest.raises(JournalError) as error:
                await store.append("sale", {"n": n})
            refused.append(str(error.value))
        await store.close()
        return first, refused

    with caplog.at_level(logging.ERROR, logger="storage.store"):
        first, refused = run(main())
    assert first == 1
    assert all("was removed or replaced while the journal was open: nothing more is recorded" in r for r in refused)
    assert [r.message for r in caplog.records].count(f"journal {path}: {refused[0]}") == 1
