"""A full disk: the event is refused with a clear error, nothing already recorded is lost, and the
journal takes events again by itself when space returns."""

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.counter import Counter
from agent.config import Config, DeviceConfig, StorageConfig
from agent.daemon import FAULT_AFTER, Box, record_scan
from drivers.decoder import Scan
from drivers.feedback import Signal
from storage import DataKeyError, Journal, JournalFull, Store, destroy_secret

from .harness import small_filesystem


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KB filesystem (tmpfs), so SQLite meets a real ENOSPC."""
    with small_filesystem(tmp_path / "disk", "160k") as mountpoint:
        yield mountpoint


def fill(disk) -> None:
    """Take the disk's last free byte, as a file named filler."""
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(filler, b"\0" * 512)
    finally:
        os.close(filler)


def test_a_full_disk_refuses_the_event_and_keeps_the_rest(small_disk):
    key = os.urandom(32)
    journal = Journal.open(small_disk / "journal.db", key)
    recorded = []
    with pytest.raises(JournalFull, match="the disk is full; nothing was recorded"):
        for i in range(10_000):
            journal.append("sale", {"code": f"{i:013d}", "note": "x" * 200})
            recorded.append(i)
    assert len(recorded) > 10
    events = journal.read_after(0, limit=len(recorded) + 10)
    assert [e.body["code"] for e in events] == [f"{i:013d}" for i in recorded]
    journal.close()

    # Space is freed (say, old logs rotated): the same journal takes events again.
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    reopened = Journal.open(small_disk / "journal.db", key)
    assert reopened.append("sale", {"code": "after"}) == len(recorded) + 1
    assert reopened.read_after(len(recorded))[0].body == {"code": "after"}
    reopened.close()


def test_the_same_journal_takes_events_again_once_space_returns_without_reopening(small_disk):
    key = os.urandom(32)
    journal = Journal.open(small_disk / "journal.db", key)
    recorded = _fill(journal)
    for _ in range(3):  # refused again and again, cleanly, while the disk stays full
        with pytest.raises(JournalFull):
            journal.append("sale", {"code": "refused", "note": "x" * 200})
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    assert journal.append("sale", {"code": "after"}) == recorded + 1
    assert journal.verify().ok and journal.verify().events == recorded + 1
    journal.close()


def test_the_store_says_once_that_the_disk_is_full_and_once_that_space_returned(small_disk, caplog):
    async def main():
        store = await Store.open(small_disk / "journal.db", os.urandom(32))
        recorded = 0
        with pytest.raises(JournalFull):
            while True:
                await store.append("sale", {"code": f"{recorded:013d}", "note": "x" * 200})
                recorded += 1
        refused = await asyncio.gather(*[store.append("sale", {"code": "x" * 200}) for _ in range(5)],
                                       return_exceptions=True)
        full_while_refused = store.full
        assert await store.read(lambda journal: journal.acked_seq()) == 0  # reading goes on
        assert await store.write(lambda journal: journal.acked_seq()) == 0  # a write that writes nothing commits,
        full_while_refused = full_while_refused and store.full  # and says nothing of the space
        subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
        seq = await store.append("sale", {"code": "after"})
        verified = await store.read(lambda journal: journal.verify())
        full_after = store.full
        await store.close()
        return recorded, refused, full_while_refused, seq, verified, full_after

    with caplog.at_level(logging.INFO, logger="storage.store"):
        recorded, refused, full_while_refused, seq, verified, full_after = asyncio.run(main())
    assert all(isinstance(error, JournalFull) for error in refused) and full_while_refused
    assert seq == recorded + 1 and verified.ok and not full_after
    said = [r.getMessage() for r in caplog.records if r.name == "storage.store"]
    assert len(said) == 2
    assert "the disk is full; new events are refused until space returns" in said[0]
    assert "space returned; events are recorded again" in said[1]


def _fill(journal) -> int:
    """Append sales until the disk is full; how many were recorded."""
    recorded = 0
    with pytest.raises(JournalFull):
        while True:
            journal.append("sale", {"code": f"{recorded:013d}", "note": "x" * 200})
            recorded += 1
    return recorded


def test_a_scan_on_a_full_disk_is_refused_with_the_error_signal_and_scans_count_again_once_space_returns(small_disk):
    """Through the daemon's own scan path: not recorded, the retailer hears it, no restart needed after."""
    scan = Scan("96385074", "/dev/input/event3", 1.0, 1.0)

    announced: list[Signal] = []

    async def main():
        store = await Store.open(small_disk / "journal.db", os.urandom(32))
        key = Ed25519PrivateKey.generate()
        box = Box(config=Config(device=DeviceConfig(id="shop-full")), store=store, session=1, device_id="shop-full",
                  key=key, central_key=key.public_key(), counter=Counter(), trusted={}, announce=announced.append)
        with pytest.raises(JournalFull):
            while True:
                await store.append("sale", {"note": "x" * 200})
        refused = await box.on_scan(scan)
        again = await box.on_scan(scan)
        await asyncio.sleep(FAULT_AFTER + 0.5)
        held = await store.read(lambda journal: journal.last_seq())
        subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
        recorded = await box.on_scan(scan)
        last = await store.read(lambda journal: journal.last("sale"))
        await store.close()
        return refused, again, held, recorded, last

    refused, again, held, recorded, last = asyncio.run(main())
    assert refused is again is Signal.ERROR
    assert announced == [Signal.ATTENTION]  # the fault, said once beside each refused scan's error
    assert recorded is Signal.ATTENTION  # recorded (not on a price list): the box took sales again by itself
    assert last.seq == held + 1 and last.body["code"] == "96385074"


def test_an_activation_central_accepted_on_a_full_disk_is_recorded_once_space_returns(small_disk, monkeypatch):
    """Central bound the box to the shop and used the code (pushed, so gone from the box's topic): no code
    activates it again. Dropped on a full disk, the box waited for ever; it is kept, and recorded by itself."""
    from agent import activation as box_activation
    from provisioning import activation
    from provisioning.identity import device_id_for

    monkeypatch.setattr(box_activation, "RECORD_RETRY", 0.1)
    central, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    device = device_id_for(key)
    accepted = {"accepted": True, "code": "c0de", "shop": "530102100123", "name": "Mengzi No. 3", "region": "honghe",
                "monitoring": False}

    async def main():
        store = await Store.open(small_disk / "journal.db", os.urandom(32))
        activator = box_activation.Activator(store=store, device_id=device, key=key, central_key=central.public_key(),
                                             trusted={}, topic_prefix="counterbox/v1", agent_version="test")
        with pytest.raises(JournalFull):
            while True:
                await store.append("sale", {"note": "x" * 200})
        activator._answer(activation.encode_result(device, accepted, key=central))  # as it comes from the broker
        await asyncio.sleep(0.5)
        waiting = activator.activated.is_set()
        subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
        await asyncio.wait_for(activator.activated.wait(), 10)
        recorded = await store.read(lambda journal: journal.of_kind("activation"))
        await store.close()
        return waiting, recorded

    waiting, recorded = asyncio.run(main())
    assert waiting is False
    assert [(event.body["device"], event.body["shop"], event.body["code"]) for event in recorded] == [
        (device, "530102100123", "c0de")]  # once


def test_space_that_returns_goes_to_events_not_to_the_write_ahead_log(tmp_path):
    """Each commit adds a page to SQLite's write-ahead log, which it empties into the database only every 1000
    pages: on a disk filled while the log was young (after any start), the space freed went to the log, a page
    a sale, and the journal was full again some 60 sales later (or for good on a small partition, where no
    room was left for the database to take the log in). A write the disk refuses empties the log first."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        async def main():
            store = await Store.open(disk / "journal.db", os.urandom(32))
            for n in range(10):
                await store.append("sale", {"n": n})
            # The store empties its log after a commit on a disk low on space, once the commit is answered: done
            # by the time it answers what comes next (else the room it gives back would go to the write below).
            await store.read(lambda journal: None)
            fill(disk)  # something else took the rest of the disk
            with pytest.raises(JournalFull):
                await store.append("sale", {"n": "refused"})
            filler = disk / "filler"
            os.truncate(filler, filler.stat().st_size - 256 * 1024)  # 256 KiB freed
            for n in range(10, 1010):
                await store.append("sale", {"n": n})  # never refused
            events = await store.read(lambda journal: journal.read_after(0, limit=10_000))
            await store.close()
            return events

        events = asyncio.run(main())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
    assert [event.body["n"] for event in events] == list(range(1010))


def test_a_revoked_box_on_a_full_disk_still_erases_itself(small_disk, caplog):
    """The erase's marker needs space; destroying the keys needs none. A full disk once stopped the erase
    before its first step, at every start, leaving the keys and the journal on the box."""
    from agent.daemon import crypto_erase
    from provisioning.identity import create_key

    key = os.urandom(32)
    (small_disk / "data.key").write_bytes(key)
    create_key(small_disk / "device.key")
    journal = Journal.open(small_disk / "journal.db", key)
    with pytest.raises(JournalFull):
        for i in range(10_000):
            journal.append("sale", {"code": f"{i:013d}", "note": "x" * 200})
    journal.close()
    fill(small_disk)  # whatever the journal's last page left
    config = Config(device=DeviceConfig(key_file=small_disk / "device.key"),
                    storage=StorageConfig(path=small_disk / "journal.db", key_file=small_disk / "data.key"))
    crypto_erase(config)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert "erase marker" in caplog.text and "No space left on device" in caplog.text


def test_an_erase_of_a_credentials_journal_cut_short_on_a_full_disk_is_finished_at_the_next_start(
        small_disk, tmp_path, monkeypatch):
    """A journal made under a systemd credential alone (before shares were) is erased by overwriting its files;
    with no room for the marker, and a power cut while the zeros went in, nothing marked the erase: the next start
    found zeros it could not open, and the revoked box's signing key, until someone came."""
    from agent import daemon
    from provisioning.identity import create_key

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "counterbox-data-key").write_bytes(os.urandom(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = Config(device=DeviceConfig(key_file=small_disk / "device.key"),
                    storage=StorageConfig(path=small_disk / "journal.db", key_file=small_disk / "data.key"))
    create_key(config.device.key_file)
    journal = Journal.open(config.storage.path, (credentials / "counterbox-data-key").read_bytes())
    for n in range(5):
        journal.append("sale", {"code": "6901028075831", "n": n})
    journal.close()
    fill(small_disk)

    def power_cut(path, *, overwrite=False):
        destroy_secret(path, keep=True)  # the database zeroed, durably...
        raise KeyboardInterrupt  # ...and the power gone before the files were removed

    with monkeypatch.context() as cut:
        cut.setattr(daemon, "remove_journal", power_cut)
        with pytest.raises(KeyboardInterrupt):
            daemon.crypto_erase(config)
    assert daemon.finish_erase(config)  # the next start
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no journal, no signing key
    os.unlink(small_disk / "filler")
    daemon.open_journal(config, create=True).close()  # a new box's, once there is room for one


def test_a_journal_opened_on_a_full_disk_says_the_disk_is_full(small_disk):
    """Stopped cleanly, the journal leaves no shared-memory file; on a full disk SQLite cannot make one
    and says only "disk I/O error"."""
    key = os.urandom(32)
    journal = Journal.open(small_disk / "journal.db", key)
    journal.append("sale", {"code": "6901028075831"})
    journal.close()
    assert not (small_disk / "journal.db-shm").exists()
    fill(small_disk)
    with pytest.raises(JournalFull, match="journal.db: the disk is full"):
        Journal.open(small_disk / "journal.db", key)
    os.unlink(small_disk / "filler")
    reopened = Journal.open(small_disk / "journal.db", key)  # space again: as it was
    assert [e.body for e in reopened.read_after(0)] == [{"code": "6901028075831"}]
    reopened.close()


def test_a_backup_onto_a_disk_too_small_says_the_disk_is_full_and_leaves_nothing(small_disk, tmp_path):
    """The snapshot aside fails inside SQLite: named, never sqlite3's own exception."""
    from storage import backup

    key = os.urandom(32)
    journal = Journal.open(tmp_path / "journal.db", key)
    for i in range(3000):
        journal.append("sale", {"code": f"{i:013d}", "note": "x" * 100})
    journal.close()
    with pytest.raises((JournalFull, OSError), match="the disk is full|No space left on device"):
        backup(tmp_path / "journal.db", key, small_disk / "box.cbbackup", b"a long passphrase")
    assert list(small_disk.iterdir()) == []


def _io_error(code: int) -> sqlite3.OperationalError:
    """The error SQLite raises when it cannot write a file (its extended code kept, as sqlite3 keeps it)."""
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = code
    return error


def test_an_io_error_is_a_full_disk_only_when_fewer_than_64_kib_are_free(small_disk):
    """SQLite names a full disk "disk I/O error" when it cannot make its shared-memory file: the
    disk's free space decides. A disk that cannot be looked at, or another error, is not called full."""
    from storage.sqlite import disk_full

    journal = small_disk / "journal.db"
    seen = {}
    for free_kib in (0, 60, 64, 68):
        fill(small_disk)
        with open(small_disk / "filler", "r+b") as filler:  # the disk's last bytes given back, to the page
            filler.truncate(os.path.getsize(small_disk / "filler") - free_kib * 1024)
        disk = os.statvfs(small_disk)
        assert disk.f_bavail * disk.f_frsize == free_kib * 1024
        seen[free_kib] = disk_full(_io_error(sqlite3.SQLITE_IOERR_SHMOPEN), journal)
        os.unlink(small_disk / "filler")
    assert seen == {0: True, 60: True, 64: False, 68: False}
    assert disk_full(_io_error(sqlite3.SQLITE_IOERR_SHMOPEN), small_disk / "gone" / "journal.db") is False
    assert disk_full(_io_error(sqlite3.SQLITE_FULL), journal) is True
    assert disk_full(_io_error(sqlite3.SQLITE_CANTOPEN), journal) is False
    assert disk_full(sqlite3.ProgrammingError("Cannot operate on a closed database."), journal) is False


def test_on_a_full_disk_acknowledgements_are_kept_in_memory_and_the_backlog_goes_on_to_central(stack, small_disk):
    """The journal's cursor cannot be written while the disk is full; the batches central acknowledged are
    not sent again and again meanwhile, and those behind them go on (for good stuck, were it the journal
    itself that filled the disk). The cursor is written with the first acknowledgement after space returns."""
    from .test_delivery import recorded, run_uplink

    async def test(central, box):
        await box.store.write(recorded(6))
        box.uplink.wake.set()
        assert await asyncio.to_thread(central.wait_for, 2, "the batches in flight") == [[1], [2]]
        fill(small_disk)
        central.acknowledge(2)
        assert await asyncio.to_thread(central.wait_for, 4, "the batches behind them") == [[1], [2], [3], [4]]
        assert await box.acked_seq() == 0  # the journal's cursor: no room to write it
        central.acknowledge(4)
        assert await asyncio.to_thread(central.wait_for, 6, "the rest") == [[1], [2], [3], [4], [5], [6]]
        await _until(lambda: box.uplink.acked == 4)
        # Revoked now, the box knows central holds what it acknowledged, though its cursor says nothing yet:
        # it hands in the rest and erases itself, never waiting out the grace over events central holds.
        revoked = Box(config=Config(device=DeviceConfig(id="shop-full-acks")), store=box.store, session=1,
                      device_id="shop-full-acks", key=Ed25519PrivateKey.generate(),
                      central_key=Ed25519PrivateKey.generate().public_key(), counter=Counter(), trusted={})
        revoked._uplink = box.uplink
        revoked._revocation(600, taken_at=time.time())
        delivering = asyncio.create_task(revoked._deliver_all())
        await asyncio.sleep(0.5)
        assert not delivering.done()  # 5 and 6 are not acknowledged yet
        central.acknowledge(6)
        await asyncio.wait_for(delivering, 10)
        os.unlink(small_disk / "filler")  # space returns
        central.acknowledge(6)
        await box.wait_acked(6)
        assert central.batches() == [[1], [2], [3], [4], [5], [6]]  # nothing went twice

    run_uplink(stack, small_disk, "shop-full-acks", test, batch_max_events=1, max_in_flight=2)


@pytest.fixture
def failing_disk(tmp_path):
    """A real ext4 filesystem (on a loop device: the tests need one, as the fresh machine has) mounted errors=remount-ro, and a way to make it fail as a
    worn card does: the kernel records a filesystem error and remounts it read-only under the open files."""
    image, mountpoint = tmp_path / "card.img", tmp_path / "card"
    mountpoint.mkdir()
    with open(image, "wb") as card:
        card.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mountpoint)], check=True)
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mountpoint)], capture_output=True, text=True,
                            check=True).stdout.strip()

    def fail() -> None:
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("a test's worn card\n")

    yield mountpoint, fail
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_on_a_disk_that_fails_writes_acknowledgements_are_kept_in_memory_and_the_backlog_goes_on(stack, failing_disk,
                                                                                                 caplog):
    """A disk that fails writes without being full (ext4 remounted read-only after an error, as a worn card
    does): once, the first acknowledged batches were sent again and again, and the backlog behind them stood
    still for as long as the disk did."""
    from .test_delivery import recorded, run_uplink

    disk, fail = failing_disk

    async def test(central, box):
        await box.store.write(recorded(6))
        box.uplink.wake.set()
        assert await asyncio.to_thread(central.wait_for, 2, "the batches in flight") == [[1], [2]]
        fail()
        central.acknowledge(2)
        assert await asyncio.to_thread(central.wait_for, 4, "the batches behind them") == [[1], [2], [3], [4]]
        assert await box.acked_seq() == 0  # the journal's cursor: the disk takes no write
        central.acknowledge(4)
        assert await asyncio.to_thread(central.wait_for, 6, "the rest") == [[1], [2], [3], [4], [5], [6]]
        await _until(lambda: box.uplink.acked == 4)
        assert central.batches() == [[1], [2], [3], [4], [5], [6]]  # nothing went twice

    run_uplink(stack, disk, "shop-failing-disk", test, batch_max_events=1, max_in_flight=2)
    assert "kept in memory only" in caplog.text and "its filesystem is mounted read-only" in caplog.text


def test_a_journal_on_a_filesystem_gone_read_only_says_so_to_a_command(failing_disk):
    """ext4 remounted read-only after an error: SQLite said only "unable to open database file" or "disk I/O
    error" to `counterbox status` and `verify`."""
    from storage import JournalError, verify_journal

    disk, fail = failing_disk
    key = os.urandom(32)
    journal = Journal.open(disk / "journal.db", key)
    journal.append("sale", {"code": "6901028075831"})
    journal.close()  # the agent stopped: SQLite's shared-memory file went with its last connection
    fail()
    for reading in (lambda: verify_journal(disk / "journal.db", key),
                    lambda: Journal.open(disk / "journal.db", key, create=False)):
        with pytest.raises(JournalError, match="unable to open database file: its filesystem is mounted read-only"):
            reading()


async def _until(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _holding_a_sale(stack, fifo, disk: Path, device_id: str, identity: str):
    """(config, journal, session) of a box ``device_id`` whose journal on ``disk`` holds one sale, delivered as
    ``identity``."""
    import dataclasses

    from agent import config as agent_config
    from agent import daemon

    device = stack.provision(device_id, scanners=[str(fifo)])
    config = agent_config.load(device.config)
    config = dataclasses.replace(config, storage=dataclasses.replace(
        config.storage, path=disk / "journal.db", key_file=disk / "data.key"))
    journal = Journal.open(config.storage.path, daemon.data_key(config.storage, create=True))
    journal.take_identity(identity)
    session = journal.start_session()
    with journal.transaction():
        Counter().record(journal, Scan("6901028075831", str(fifo), time.time(), time.time()))
    return config, journal, session


async def _with_agent(config, steps) -> None:
    """Run the agent as ``daemon.run`` does while ``steps(agent)`` runs; then stop it."""
    import contextlib

    from agent import daemon

    agent = asyncio.create_task(daemon.run(config))
    try:
        await steps(agent)
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


def test_an_agent_started_on_a_full_disk_runs_and_delivers_what_it_holds(stack, fifo, small_disk, caplog):
    """Its start cannot be counted in the journal: once, that ended the agent at every start (and systemd gave
    up after ten), so nothing was delivered and no scan had its error signal until someone came."""
    from .harness import feed, scans, wait_until

    config, journal, session = _holding_a_sale(stack, fifo, small_disk, "shop-full-start", "shop-full-start")
    fill(small_disk)  # the agent was stopped as the disk filled: its journal's files are there, and no byte more
    # The last run's will, the offline of its third connection, is central's latest status of the box: once, the
    # new start's statuses (the same session, its connections counted from 1 again) sorted before it, and
    # central showed the box offline, its full disk unseen, for as long as it ran.
    from central.store import CentralStore
    central = CentralStore(stack.central_db, create=False)
    central.record_status("shop-full-start", {"state": "offline", "session": session, "connection": 3,
                                              "sent_at": time.time() - 60}, received_at=time.time() - 50, live=True)

    def online() -> bool:
        status = central.status("shop-full-start")
        return status.state == "online" and status.health.get("free_bytes") is not None

    async def steps(agent):
        await asyncio.to_thread(wait_until, lambda: len(stack.sales()) == 1, 30, "the sale it held at central")
        await asyncio.to_thread(wait_until, online, 30, "central sees the box online, and its disk")
        await asyncio.to_thread(feed, fifo, scans(["6901028075831"]))  # refused: no room to record it
        await asyncio.to_thread(wait_until, lambda: "the disk is full" in caplog.text, 10, "the scan refused")

    with caplog.at_level(logging.INFO):
        asyncio.run(_with_agent(config, steps))
    journal.close()
    central.close()
    assert "this start NOT counted in the journal (it goes on as session 1)" in caplog.text
    assert len(stack.sales()) == 1


def _leave_free(disk: Path, pages: int) -> None:
    """Fill the disk, then give back ``pages`` pages of 4 KiB."""
    fill(disk)
    filler = disk / "filler"
    os.truncate(filler, max(0, filler.stat().st_size - pages * 4096))


def test_a_restore_that_meets_a_full_disk_at_any_page_says_the_disk_is_full(small_disk, tmp_path):
    """SQLite ends the transaction itself on a full disk while the copy's data keys are wrapped anew: the
    rollback after it failed ("no transaction is active"), and that was said instead, as if the backup were
    broken."""
    from storage import StorageError
    from storage.backup import backup, restore

    key = os.urandom(32)
    journal = Journal.open(tmp_path / "journal.db", key)
    for i in range(40):
        journal.append("sale", {"code": f"{i:013d}", "note": "x" * 300})
    journal.close()
    backup(tmp_path / "journal.db", key, tmp_path / "box.cbbackup", b"a long passphrase")
    said = []
    for pages in range(40):
        for path in small_disk.iterdir():
            path.unlink()
        _leave_free(small_disk, pages)
        try:
            restore(tmp_path / "box.cbbackup", b"a long passphrase", small_disk / "journal.db", os.urandom(32))
        except (StorageError, OSError) as error:
            said.append(str(error))
        else:
            break
    assert said and pages < 39, "the restore never went through"
    assert all("disk is full" in text or "No space left" in text for text in said), said


@pytest.mark.parametrize("other_write", ["scanner event", "central's acknowledgement"])
def test_a_digit_answered_with_the_error_signal_is_not_kept_nor_keyed_twice(tmp_path, other_write):
    """The retailer's next digit goes in one group commit with another write the box hands in meanwhile, and the
    disk refuses the commit: the digit is answered with the error signal (not recorded: key it again), and the
    store, once the log gave back its room, runs the group again. Keyed again, then the price and the product:
    sold at 12.00 as keyed, never at 1222.00 (the digit kept, and run twice)."""
    def scan(text):
        now = time.time()
        return Scan(text, "/dev/input/event7", now, now)

    with small_filesystem(tmp_path / "disk", "1m") as disk:
        async def main():
            store = await Store.open(disk / "journal.db", os.urandom(32))
            counter = Counter(start_guard=0.0)
            assert await record_scan(store, counter, scan("CB:1")) is Signal.GOOD
            fill(disk)
            busy = store.write(lambda journal: time.sleep(0.3))
            await asyncio.sleep(0.1)  # the store's thread has taken it, alone: the next two wait, together
            digit = record_scan(store, counter, scan("CB:2"))
            if other_write == "scanner event":
                other = store.append("scanner", {"scanner": "/dev/input/event9", "state": "taken"})
            else:
                other = store.write(lambda journal: journal.acknowledge(1))
            await busy
            with pytest.raises(JournalFull):
                await other
            heard = await digit
            os.unlink(disk / "filler")
            keyed = [await record_scan(store, counter, scan(code)) for code in ("CB:2", "CB:PRICE", "96385074")]
            sale = await store.read(lambda journal: journal.last("sale"))
            await store.close()
            return heard, keyed, sale

        heard, keyed, sale = asyncio.run(main())
    assert heard is Signal.ERROR
    assert keyed == [Signal.GOOD, Signal.GOOD, Signal.GOOD]
    assert sale.body["unit_price"] == 1200


def test_an_agent_started_on_a_full_disk_under_a_new_identity_waits_for_space_and_delivers(stack, fifo, tmp_path,
                                                                                          caplog, monkeypatch):
    """A journal that delivered as another box (restored onto this one), started on a full disk: taking this
    box's identity is a write. The agent once ended at every start (systemd's restart loop: no scan answered);
    now it says why, waits, and delivers as this box once space returns."""
    from agent import daemon

    from .harness import wait_until

    import socket

    monkeypatch.setattr(daemon, "IDENTITY_RETRY", 0.2)
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the service's notifications, as systemd has them
    systemd.bind(str(tmp_path / "notify.sock"))
    systemd.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    with small_filesystem(tmp_path / "disk", "160k") as disk:
        config, journal, _ = _holding_a_sale(stack, fifo, disk, "shop-new-identity", "shop-old-box")
        fill(disk)

        async def steps(agent):
            await asyncio.to_thread(wait_until, lambda: agent.done() or "cannot take this box's identity"
                                    in caplog.text, 30, "the full disk said")
            # Up: else systemd ends the start as timed out (90 s), and starts it again, and again.
            told = await asyncio.to_thread(systemd.recv, 4096)
            assert told.decode().startswith("READY=1\nSTATUS=waiting for space"), told
            await asyncio.sleep(1.0)
            assert not agent.done(), agent.exception()
            assert stack.sales() == []  # nothing under the identity before
            os.unlink(disk / "filler")
            await asyncio.to_thread(wait_until, lambda: agent.done() or len(stack.sales()) == 1, 30,
                                    "the sale delivered as this box")
            assert not agent.done(), agent.exception()

        with caplog.at_level(logging.INFO):
            asyncio.run(_with_agent(config, steps))
        journal.close()
    systemd.close()
    assert "space returned: the journal delivers as device=shop-new-identity" in caplog.text


def test_a_scanner_taken_or_given_back_on_a_full_disk_is_counted_in_the_status(tmp_path):
    """The status says the scanners held now (len(box.scanners)): one taken while its event cannot be recorded
    is held and read all the same (its scans refused), and was said to be none for as long as the agent ran."""
    with small_filesystem(tmp_path / "disk", "160k") as disk:
        async def main():
            store = await Store.open(disk / "journal.db", os.urandom(32))
            key = Ed25519PrivateKey.generate()
            box = Box(config=Config(device=DeviceConfig(id="shop-s")), store=store, session=1, device_id="shop-s",
                      key=key, central_key=key.public_key(), counter=Counter(), trusted={})
            with pytest.raises(JournalFull):
                while True:
                    await store.append("sale", {"note": "x" * 200})
            await box.on_device({"scanner": "/dev/input/event3", "state": "taken", "name": "Honeywell"})
            taken = set(box.scanners)
            await box.on_device({"scanner": "/dev/input/event3", "state": "removed", "name": "Honeywell"})
            await store.close()
            return taken, set(box.scanners)

        taken, removed = asyncio.run(main())
    assert (taken, removed) == ({"/dev/input/event3"}, set())


def test_retention_on_a_disk_too_full_for_a_step_takes_smaller_steps_soon(tmp_path, monkeypatch, caplog):
    """A step's removed events and new checkpoint pass through the write-ahead log: with little room, a step of
    thousands is refused. It was tried again an hour later, the same: retention never freed the room it is for."""
    from agent import daemon

    from .test_retention import START, Shop

    monkeypatch.setattr(daemon, "RETENTION_RETRY", 0.05)
    with small_filesystem(tmp_path / "disk", "8m") as disk:
        shop = Shop(disk / "journal.db", os.urandom(32))
        shop.days(0, 60)
        shop.journal.acknowledge(shop.journal.last_seq())
        shop.journal.empty_log()
        shop.journal.close()
        assert time.time() - START > 90 * 86_400  # every day of it older than the retention age
        _leave_free(disk, 24)

        async def main():
            store = await Store.open(disk / "journal.db", shop.journal._outer)
            key = Ed25519PrivateKey.generate()
            box = Box(config=Config(device=DeviceConfig(id="shop-r"), storage=StorageConfig(retention_days=30)),
                      store=store, session=1, device_id="shop-r", key=key, central_key=key.public_key(),
                      counter=Counter(), trusted={})
            retaining = asyncio.create_task(box.retain())
            try:
                await _until(lambda: "folded into the journal's checkpoint" in caplog.text, within=30)
            finally:
                retaining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retaining
                await store.close()

        with caplog.at_level(logging.INFO):
            asyncio.run(main())
    assert "retention: old events NOT folded, 5000 at a time" in caplog.text
    assert "trying 2500 at a time" in caplog.text


def test_the_agent_started_with_a_waiting_rewraps_new_key_on_a_full_disk_opens_its_journal(tmp_path):
    """Finishing a re-wrap is a write: on a full disk the agent's store did not open at all, and the agent, started
    again and again, answered no scan. It opens under the wrappings that wait, as a command does, and the re-wrap
    is finished at a start with space."""
    old, new = os.urandom(32), os.urandom(32)
    with small_filesystem(tmp_path / "disk", "400k") as disk:
        journal = Journal.open(disk / "journal.db", old)
        for n in range(20):
            journal.append("sale", {"n": n, "note": "x" * 200})
        journal.rewrap(new)  # `counterbox keys rewrap`; the new key is then installed and the agent started
        journal.close()
        holder = sqlite3.connect(disk / "journal.db")  # (its shared memory kept, as by a process beside it)
        holder.execute("SELECT count(*) FROM events").fetchone()
        fill(disk)

        async def opened() -> tuple[int, bool]:
            store = await Store.open(disk / "journal.db", new)
            try:
                return await store.read(lambda journal: (journal.last_seq(), journal.rewrap_waiting()))
            finally:
                await store.close()

        assert asyncio.run(opened()) == (20, True)
        os.unlink(disk / "filler")
        assert asyncio.run(opened()) == (20, False)  # space: finished, the old key opens it no more
        with pytest.raises(DataKeyError):
            Journal.open(disk / "journal.db", old, create=False)
        holder.close()
