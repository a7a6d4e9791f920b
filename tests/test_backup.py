"""Backup and restore: one encrypted file, restored onto a new box and verified by the chain."""

import asyncio
import json
import logging
import os
import re
import sqlite3
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import UplinkConfig
from agent.mqtt import MqttLink
from agent.uplink import Uplink
from provisioning import protocol

from storage import (BackupError, DataKeyError, Journal, JournalError, JournalInUse, NoJournal, Store, agent_lock, backup,
                     restore, verify_journal)
from storage import sealing
from storage.backup import CHUNK, _new_header, _write_sealed
from storage.chain import link
from storage.schema import SCHEMA_VERSION

from .harness import small_filesystem
from .journals import another_key
from .test_chain import make_v2_journal

PASSPHRASE = b"correct horse battery staple"


def said(message):
    """A ``match`` for the whole of an error's message: what the operator reads, word for word."""
    return "^" + re.escape(str(message)) + "$"


def restores_nothing(tmp_path, file, message, passphrase=PASSPHRASE) -> None:
    """Restoring ``file`` onto a new box is refused with ``message``, word for word, and leaves nothing there."""
    target = tmp_path / "new-box" / "journal.db"
    with pytest.raises(BackupError, match=said(message)):
        restore(file, passphrase, target, os.urandom(32))
    assert list(target.parent.iterdir()) == []  # its lock too: a restore run as root leaves none the agent cannot open


@pytest.fixture
def key():
    return os.urandom(32)


@pytest.fixture
def box(tmp_path, key):
    """A box's journal with events under two data keys and an acknowledged cursor."""
    path = tmp_path / "old-box" / "journal.db"
    j = Journal.open(path, key)
    for n in range(3):
        j.append("sale", {"code": "6901028075831", "n": n})
    j.rotate_key()
    j.append("misread", {"code": "1"})
    j.acknowledge(2)
    j.close()
    return path


def events(path, key):
    j = Journal.open(path, key)
    try:
        return [(e.seq, e.kind, e.body) for e in j.read_after(0)], j.acked_seq()
    finally:
        j.close()


def test_a_backup_restored_on_a_new_box_verifies_and_holds_the_same_events(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    made = backup(box, key, file, PASSPHRASE)
    assert made.ok and made.events == 4
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert b"6901028075831" not in file.read_bytes() and b"SQLite format" not in file.read_bytes()

    new_key = os.urandom(32)  # the new box's own credential
    new_box = tmp_path / "new-box" / "data" / "journal.db"  # its data directory not made yet
    restored = restore(file, PASSPHRASE, new_box, new_key)
    assert sorted(p.name for p in new_box.parent.iterdir()) == ["journal.db"]  # nothing left aside
    assert restored.ok and restored.seals_checked and restored.head == made.head
    assert events(new_box, new_key) == events(box, key)
    assert verify_journal(new_box, new_key).ok
    with pytest.raises(DataKeyError):
        Journal.open(new_box, key)  # the old box's key does not open the new box's journal


def test_a_backups_first_line_is_the_header_its_format_documents(box, key, tmp_path):
    """One JSON line, its keys in order, that a later counterbox (or an operator's own tool) reads: AES-256-GCM
    in chunks of 1 MiB, scrypt with n=2^15, r=8, p=1 over a salt of 16 bytes, a nonce prefix of 7."""
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    line = file.read_bytes().split(b"\n", 1)[0].decode()
    header = json.loads(line)
    salt, prefix = header["kdf"].pop("salt"), header.pop("nonce_prefix")
    assert header == {"format": "counterbox-backup", "version": 1, "cipher": "AES-256-GCM", "chunk": 1 << 20,
                      "kdf": {"name": "scrypt", "n": 1 << 15, "r": 8, "p": 1}}
    assert re.fullmatch("[0-9a-f]{32}", salt) and re.fullmatch("[0-9a-f]{14}", prefix)
    assert line == json.dumps(json.loads(line), sort_keys=True)


def test_a_restore_goes_on_recording_where_the_backup_ended(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    new_key, new_box = os.urandom(32), tmp_path / "new-box" / "journal.db"
    restore(file, PASSPHRASE, new_box, new_key)
    j = Journal.open(new_box, new_key)
    assert j.append("sale", {"code": "after"}) == 5 and j.verify().ok
    j.close()


def restored_behind_central(box, key, tmp_path):
    """The box's own journal (4 events, cursor at 2) restored from its backup after it went on to record and
    deliver events 5 to 9 (central holds them): the restored copy, its key, and central's events 5 to 9."""
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    j = Journal.open(box, key)
    delivered = [(j.append("sale", {"code": "6901028075831", "n": n}), {"code": "6901028075831", "n": n})
                 for n in range(5, 10)]
    j.acknowledge(9)
    j.close()
    copy = tmp_path / "restored" / "journal.db"
    restore(file, PASSPHRASE, copy, key)
    return copy, dict(delivered)


def acknowledge_through_the_uplink(path, key, central_key, box_key, acks, *, record=0):
    """``record`` sales recorded on the copy first (the shop sells before the link is up), then each of
    ``acks`` (seq, the event central names) handed to the uplink as the downlink would; the cursor after each."""
    async def main():
        store = await Store.open(path, key, max_event_bytes=protocol.MAX_EVENT_BYTES)
        uplink = Uplink(store=store, link=MqttLink(host="127.0.0.1", port=1, client_id="shop-1"), device_id="shop-1",
                        session=1, key=box_key, central_key=central_key.public_key(), config=UplinkConfig())
        try:
            for n in range(record):
                await store.append("sale", {"code": "6901028075831", "n": 100 + n})
            journal_id = await store.read(lambda j: j.journal_id())
            cursors = []
            for seq, event in acks:
                await uplink.acknowledged(protocol.encode_ack("shop-1", seq, key=central_key, journal=journal_id,
                                                              event=event))
                cursors.append(await store.read(lambda j: j.acked_seq()))
            return cursors, await store.read(lambda j: [e.seq for e in j.read_after(0)])
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_restored_journal_that_recorded_before_it_heard_central_keeps_its_own_events(box, key, tmp_path, caplog):
    """Central's retained acknowledgement reaches the copy after the shop sold on (the link down that
    morning): it names central's event at its seq, not this copy's, and moves the cursor over none of the
    copy's own events, which are kept to deliver as another device. Central's events up to the backup's
    last are the copy's too: acknowledged as before."""
    copy, delivered = restored_behind_central(box, key, tmp_path)
    central_key, box_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ours = {seq: protocol.event_digest(seq, "sale", body) for seq, body in delivered.items()}
    with caplog.at_level(logging.ERROR, logger="agent.uplink"):
        cursors, kept = acknowledge_through_the_uplink(
            copy, key, central_key, box_key, [(9, ours[9]), (4, None), (6, ours[6])], record=6)
    assert cursors == [2, 4, 4] and kept == list(range(1, 11))
    assert "central holds another event at that seq than this copy" in caplog.text and "after 4" in caplog.text


def test_an_acknowledgement_naming_the_copys_own_event_moves_its_cursor(box, key, tmp_path):
    copy, _ = restored_behind_central(box, key, tmp_path)
    central_key, box_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    own = protocol.event_digest(5, "sale", {"code": "6901028075831", "n": 100})
    assert acknowledge_through_the_uplink(copy, key, central_key, box_key, [(5, own)], record=1)[0] == [5]


def test_a_restored_journal_behind_central_takes_no_acknowledgement_past_the_backups_last_event(box, key, tmp_path):
    """Central acknowledges more than the copy holds, after it recorded a few of its own: those are the copy's,
    never taken as central's (an acknowledgement of the journal's last event at the time would have)."""
    copy, _ = restored_behind_central(box, key, tmp_path)
    j = Journal.open(copy, key)
    for n in range(3):
        j.append("sale", {"code": "6901028075831", "n": 100 + n})  # 5, 6, 7
    assert j.acknowledge(9).refused.endswith("no acknowledgement past 4 is taken from now on")
    assert not j.acknowledge(6).moved and j.acknowledge(4).moved
    j.close()


def test_a_backup_of_a_journal_in_use_is_a_consistent_snapshot(tmp_path, key):
    path, file = tmp_path / "journal.db", tmp_path / "box.cbbackup"

    async def main():
        store = await Store.open(path, key)
        writing = asyncio.gather(*[store.append("sale", {"n": n}) for n in range(300)])
        made = await asyncio.to_thread(backup, path, key, file, PASSPHRASE)
        await writing
        await store.close()
        return made

    made = asyncio.run(main())
    restored = restore(file, PASSPHRASE, tmp_path / "new" / "journal.db", key)
    assert made.ok and restored.ok and restored.events == made.events


def test_a_wrong_passphrase_restores_nothing(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    restores_nothing(tmp_path, file, f"{file} does not open with this passphrase, or it was altered or cut short; "
                     "nothing was restored", passphrase=b"not the passphrase")


@pytest.mark.parametrize("damage", ["flip a byte", "cut the end", "cut a chunk's tag"])
def test_a_damaged_backup_restores_nothing(box, key, tmp_path, damage):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    data = bytearray(file.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 1
    elif damage == "cut the end":
        data = data[: len(data) - 100]
    else:
        data = data[:-16]
    file.write_bytes(bytes(data))
    target = tmp_path / "new-box" / "journal.db"
    with pytest.raises(BackupError, match=said(f"{file} does not open with this passphrase, or it was altered or "
                                               "cut short; nothing was restored")):
        restore(file, PASSPHRASE, target, os.urandom(32))
    assert not target.exists()


def test_a_restore_never_replaces_a_journal(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    before = box.read_bytes()
    with pytest.raises(JournalError, match=said(f"a journal exists at {box}: a backup is restored only onto a box "
                                                "with no journal (move this one away first, with its -wal and -shm files)")):
        restore(file, PASSPHRASE, box, key)
    assert box.read_bytes() == before


def test_a_backup_is_written_to_a_new_file_under_a_long_enough_passphrase(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    with pytest.raises(BackupError, match=said("the passphrase has 5 bytes; a backup needs at least 12")):
        backup(box, key, file, b"short")
    with pytest.raises(BackupError, match=said("the passphrase has 11 bytes; a backup needs at least 12")):
        backup(box, key, file, b"x" * 11)
    backup(box, key, tmp_path / "twelve.cbbackup", b"x" * 12)  # twelve is enough
    (tmp_path / "twelve.cbbackup").unlink()
    file.write_bytes(b"something else")
    with pytest.raises(BackupError, match=said(f"{file} exists; a backup is written to a new file")):
        backup(box, key, file, PASSPHRASE)
    assert file.read_bytes() == b"something else"
    with pytest.raises(DataKeyError, match=another_key(box)):
        backup(box, os.urandom(32), tmp_path / "other.cbbackup", PASSPHRASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.cbbackup", "old-box"]


def test_a_box_with_no_journal_has_nothing_to_back_up_and_none_is_made(tmp_path, key):
    journal, file = tmp_path / "data" / "journal.db", tmp_path / "box.cbbackup"
    with pytest.raises(NoJournal, match=said(f"there is no journal at {journal}: the agent has not run on this "
                                             "box yet")):
        backup(journal, key, file, PASSPHRASE)
    assert list(tmp_path.iterdir()) == []


def test_a_journal_that_does_not_verify_is_not_backed_up(box, key, tmp_path):
    conn = sqlite3.connect(box)
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute("DELETE FROM events WHERE seq = 2")
    conn.commit()
    conn.close()
    with pytest.raises(BackupError, match=said("the journal does not verify, so it was not backed up: "
                                               "event 2 is missing: event 3 follows event 1")):
        backup(box, key, tmp_path / "box.cbbackup", PASSPHRASE)
    assert not (tmp_path / "box.cbbackup").exists()


def test_a_journal_with_a_forged_seal_is_not_backed_up(box, key, tmp_path):
    """The chain needs no key, so whoever holds the file can chain an altered body again: the backup opens
    every seal before it is written, and names the first that fails."""
    conn = sqlite3.connect(box)
    conn.execute("DROP TRIGGER events_append_only_update")
    rows = conn.execute("SELECT seq, kind, key_id, sealed FROM events ORDER BY seq").fetchall()
    previous = bytes(32)
    for seq, kind, key_id, sealed in rows:
        if seq == 2:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        previous = link(previous, seq, kind, key_id, sealed)
        conn.execute("UPDATE events SET sealed = ?, chain = ? WHERE seq = ?", [sealed, previous, seq])
    conn.commit()
    conn.close()
    with pytest.raises(BackupError, match=said("the journal does not verify, so it was not backed up: event 2 (sale) "
                                               "fails authentication: its sealed body was altered")):
        backup(box, key, tmp_path / "box.cbbackup", PASSPHRASE)
    assert not (tmp_path / "box.cbbackup").exists()


def test_a_file_that_is_not_a_backup_is_named_as_such(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_bytes(b"hello\n")
    with pytest.raises(BackupError, match=said(f"{file} is not a counterbox backup")):
        restore(file, PASSPHRASE, tmp_path / "journal.db", os.urandom(32))


def test_a_first_line_longer_than_any_header_is_not_a_backup(box, key, tmp_path):
    """A header is at most 4096 bytes (a box's own are some 250): a longer first line is not read
    whole, and the file is refused as what it is, not as a backup that was altered."""
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    _with_header(file, comment="x" * 5000)
    with pytest.raises(BackupError, match=said(f"{file} is not a counterbox backup")):
        restore(file, PASSPHRASE, tmp_path / "new-box" / "journal.db", os.urandom(32))


def _sealed_by_hand(box, key, file, **more):
    """A backup of ``box`` written here with more fields in its header (what a later counterbox might add)."""
    snapshot = file.with_name("snapshot.db")
    snapshot.write_bytes(box.read_bytes())
    header, file_key, wrap_key = _new_header(PASSPHRASE)
    conn = sqlite3.connect(snapshot)
    sealing.rewrap_keys(conn, snapshot, key, wrap_key)
    conn.commit()
    conn.close()
    fields = json.loads(header)
    fields.update(more)
    _write_sealed(snapshot, file, (json.dumps(fields, sort_keys=True) + "\n").encode(), file_key)
    snapshot.unlink()


@pytest.mark.parametrize("size", [4096, 4097])
def test_a_header_is_read_up_to_4096_bytes_its_newline_included(box, key, tmp_path, size):
    file = tmp_path / "box.cbbackup"
    _sealed_by_hand(box, key, file, note="")
    header_size = len(file.read_bytes().split(b"\n", 1)[0]) + 1
    _sealed_by_hand(box, key, file.with_name("sized.cbbackup"), note="x" * (size - header_size))
    file = file.with_name("sized.cbbackup")
    assert len(file.read_bytes().split(b"\n", 1)[0]) + 1 == size
    target = tmp_path / "new-box" / "journal.db"
    if size == 4096:
        assert restore(file, PASSPHRASE, target, os.urandom(32)).ok
    else:  # cut at 4096 bytes: the header the chunks were sealed with is not the one read
        with pytest.raises(BackupError, match=said(f"{file} does not open with this passphrase, or it was altered "
                                                   "or cut short; nothing was restored")):
            restore(file, PASSPHRASE, target, os.urandom(32))
        assert not target.exists()


def _with_header(file, **change):
    """The backup at ``file`` with its header line changed (what a damaged or crafted file holds)."""
    header, rest = file.read_bytes().split(b"\n", 1)
    fields = json.loads(header)
    for name, value in change.items():
        if name.startswith("kdf_"):
            fields["kdf"][name[4:]] = value
        elif value is None:
            del fields[name]
        else:
            fields[name] = value
    file.write_bytes(json.dumps(fields, sort_keys=True).encode() + b"\n" + rest)


@pytest.mark.parametrize("change,reason", [
    ({"version": 2}, "is a counterbox backup of format version 2; this counterbox reads version 1"),
    ({"format": "other-backup"}, "is not a counterbox backup"),
    ({"chunk": 4096}, "is not a counterbox backup"),
    ({"kdf_name": "pbkdf2"}, "is not a counterbox backup"),
    ({"kdf_salt": "not hex"}, "is not a counterbox backup"),
    ({"kdf_n": "many"}, "is not a counterbox backup"),
    ({"nonce_prefix": "zz"}, "is not a counterbox backup"),
    ({"kdf": None}, "is not a counterbox backup"),
    ({"kdf_n": 1 << 21}, "asks for a key derivation this box will not run (scrypt n=2097152 r=8 p=1)"),
    ({"kdf_n": 1}, "asks for a key derivation this box will not run (scrypt n=1 r=8 p=1)"),
    ({"kdf_r": 8, "kdf_p": 9}, "asks for a key derivation this box will not run (scrypt n=32768 r=8 p=9)"),
    ({"kdf_r": 5, "kdf_p": 13, "kdf_n": 2}, "will not run (scrypt n=2 r=5 p=13)"),  # r times p of 65
    ({"kdf_n": 1 << 20, "kdf_r": 64}, "will not run (scrypt n=1048576 r=64 p=1)"),  # 8 GiB
    ({"kdf_n": 1 << 18, "kdf_r": 8}, "will not run (scrypt n=262144 r=8 p=1)"),  # 256 MiB
    ({"kdf_n": 3}, "will not run (scrypt n=3 r=8 p=1)"),  # not a power of two
    ({"kdf_r": 0}, "will not run (scrypt n=32768 r=0 p=1)"),
    ({"kdf_p": 0}, "will not run (scrypt n=32768 r=8 p=0)"),
    ({"kdf_r": -1, "kdf_p": -1}, "will not run (scrypt n=32768 r=-1 p=-1)"),
    ({"kdf_p": 2 ** 70}, "will not run (scrypt n=32768 r=8 p=1180591620717411303424)"),
    ({"version": None}, "is not a counterbox backup"),
    ({"nonce_prefix": ""}, "is not a counterbox backup"),
    ({"nonce_prefix": "00" * 8}, "is not a counterbox backup"),
], ids=["version", "format", "chunk", "kdf", "salt", "n-not-a-number", "nonce", "no-kdf", "n-too-big", "n-one",
        "r-times-p", "r-times-p-65", "memory-8GiB", "memory-256MiB", "n-three", "r-zero", "p-zero", "negative", "p-huge", "no-version",
        "no-nonce", "nonce-too-long"])
def test_a_backup_whose_header_this_box_cannot_take_is_refused_for_what_it_asks(box, key, tmp_path, change, reason):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    _with_header(file, **change)
    target = tmp_path / "new-box" / "journal.db"
    if "will not run" in reason:
        reason = "asks for a key derivation this box " + reason[reason.index("will not run"):]
    with pytest.raises(BackupError, match=said(f"{file} {reason}")):
        restore(file, PASSPHRASE, target, os.urandom(32))
    assert not target.exists()


@pytest.mark.parametrize("kdf", [{"kdf_r": 8, "kdf_p": 8, "kdf_n": 2}, {"kdf_r": 1, "kdf_p": 1, "kdf_n": 2},
                                 {"kdf_r": 8, "kdf_p": 1, "kdf_n": 1 << 17}, {"kdf_r": 1, "kdf_p": 64, "kdf_n": 4}],
                         ids=["r-times-p-64", "r-one", "memory-128MiB", "p-64"])
def test_a_header_at_the_edge_of_what_a_box_derives_is_taken(box, key, tmp_path, kdf):
    """r times p of 64 and 128 MiB of memory are the most a box runs; the header is the chunks'
    associated data, so a changed one is read and then refused as altered, never restored."""
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    _with_header(file, **kdf)
    with pytest.raises(BackupError, match=said(f"{file} does not open with this passphrase, or it was altered or "
                                               "cut short; nothing was restored")):
        restore(file, PASSPHRASE, tmp_path / "new-box" / "journal.db", os.urandom(32))


@pytest.mark.parametrize("version", [1, SCHEMA_VERSION + 1])
def test_a_backup_of_a_journal_of_a_schema_this_box_does_not_restore_is_refused(tmp_path, version):
    snapshot = tmp_path / "snapshot.db"
    conn = sqlite3.connect(snapshot)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    header, file_key, _ = _new_header(PASSPHRASE)
    _write_sealed(snapshot, tmp_path / "old.cbbackup", header, file_key)
    restores_nothing(tmp_path, tmp_path / "old.cbbackup", f"{tmp_path / 'old.cbbackup'} holds a journal of schema "
                     f"version {version}; this counterbox restores versions 2 to {SCHEMA_VERSION}")


def test_a_backup_that_holds_no_journal_is_refused_by_its_name_and_restores_nothing(tmp_path):
    """Sealed under the passphrase, but what it holds is no SQLite database (another program's file): the
    backup is named, with SQLite's words (not the copy restored aside, which is gone when this is read)."""
    snapshot = tmp_path / "notes.txt"
    snapshot.write_bytes(b"not a database, " * 512)
    header, file_key, _ = _new_header(PASSPHRASE)
    _write_sealed(snapshot, tmp_path / "odd.cbbackup", header, file_key)
    restores_nothing(tmp_path, tmp_path / "odd.cbbackup",
                     f"{tmp_path / 'odd.cbbackup'}: file is not a database; nothing was restored")


def test_a_backup_whose_journal_does_not_verify_restores_nothing(box, key, tmp_path):
    """Made by hand with the passphrase (a box's own backups verify before they are written): the restore
    checks the chain again, and names the first event that fails."""
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(box.read_bytes())
    header, file_key, wrap_key = _new_header(PASSPHRASE)
    conn = sqlite3.connect(snapshot)
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute("DELETE FROM events WHERE seq = 3")
    sealing.rewrap_keys(conn, snapshot, key, wrap_key)
    conn.commit()
    conn.close()
    _write_sealed(snapshot, tmp_path / "cut.cbbackup", header, file_key)
    restores_nothing(tmp_path, tmp_path / "cut.cbbackup", f"{tmp_path / 'cut.cbbackup'} does not verify, so nothing "
                     "was restored: event 3 is missing: event 4 follows event 2")


def test_a_backup_of_a_v2_journal_is_restored_brought_up_to_date(tmp_path, key):
    """Version 2 is the oldest a backup holds (it brought the hash chain a restore verifies): such a backup,
    made by an older counterbox, restores, and the journal it gives is of this schema."""
    old, file = tmp_path / "old-box" / "journal.db", tmp_path / "old.cbbackup"
    old.parent.mkdir()
    make_v2_journal(old, key, [("sale", {"code": "6901028075831"}), ("misread", {"code": "1"})])
    _sealed_by_hand(old, key, file)
    new_key, target = os.urandom(32), tmp_path / "new-box" / "journal.db"
    restored = restore(file, PASSPHRASE, target, new_key)
    assert restored.ok and restored.events == 2
    assert events(target, new_key) == ([(1, "sale", {"code": "6901028075831"}), (2, "misread", {"code": "1"})], 2)
    conn = sqlite3.connect(target)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


@pytest.fixture
def big_box(tmp_path, key):
    """A journal of some 3 MiB: a backup of it is several sealed chunks (storage.backup.CHUNK)."""
    path = tmp_path / "big-box" / "journal.db"
    j = Journal.open(path, key)
    for n in range(200):
        j.append("price_list", {"n": n, "items": os.urandom(8000).hex()})
    j.close()
    assert path.stat().st_size > 3 * CHUNK
    return path


def test_a_backup_of_several_chunks_restores_whole(big_box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    backup(big_box, key, file, PASSPHRASE)
    new_key, target = os.urandom(32), tmp_path / "new-box" / "journal.db"
    assert restore(file, PASSPHRASE, target, new_key).ok
    assert events(target, new_key) == events(big_box, key)


@pytest.mark.parametrize("damage", ["swap two chunks", "drop the last chunk", "drop a middle chunk"])
def test_chunks_out_of_order_or_missing_restore_nothing(big_box, key, tmp_path, damage):
    """Each chunk's nonce is its number and whether it is the last: a file reordered, or cut at a
    chunk's end (where a cut leaves whole chunks), does not open."""
    file = tmp_path / "box.cbbackup"
    backup(big_box, key, file, PASSPHRASE)
    header, body = file.read_bytes().split(b"\n", 1)
    size = CHUNK + 16
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    assert len(chunks) >= 4
    if damage == "swap two chunks":
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif damage == "drop the last chunk":
        chunks = chunks[:-1]
    else:
        del chunks[1]
    file.write_bytes(header + b"\n" + b"".join(chunks))
    target = tmp_path / "new-box" / "journal.db"
    with pytest.raises(BackupError, match=said(f"{file} does not open with this passphrase, or it was altered or "
                                               "cut short; nothing was restored")):
        restore(file, PASSPHRASE, target, os.urandom(32))
    assert not target.exists()


def test_a_restore_beneath_a_running_agent_is_refused_and_changes_nothing(box, key, tmp_path):
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    target = tmp_path / "new-box" / "journal.db"
    with agent_lock(target):  # the agent's, on the box restored onto
        with pytest.raises(JournalInUse, match=f"another agent is running on {re.escape(str(target))} \\(pid {os.getpid()}\\)"):
            restore(file, PASSPHRASE, target, key)
    assert [path.name for path in target.parent.iterdir()] == ["journal.db.lock"]


def moved_without_its_log(tmp_path, key) -> tuple:
    """A journal the agent was writing when the power went (its newest events in its WAL alone), then moved
    away as a file of its own: (where it stood, where it went, the events it held)."""
    path = tmp_path / "box" / "journal.db"
    journal = Journal.open(path, key)
    written = [journal.append("sale", {"code": "6901028075831", "n": n}) for n in range(5)]
    copies = {name: (path.parent / name).read_bytes() for name in ("journal.db", "journal.db-wal", "journal.db-shm")}
    journal.close()  # as the power cut leaves it: the WAL not checkpointed
    for name, data in copies.items():
        (path.parent / name).write_bytes(data)
    moved = tmp_path / "aside.db"
    path.rename(moved)
    return path, moved, written


def test_a_journal_is_not_made_where_one_was_moved_away_without_its_write_ahead_log(tmp_path, key):
    path, moved, written = moved_without_its_log(tmp_path, key)
    before = sorted(p.name for p in path.parent.iterdir())
    message = (f"{path} is not there but its write-ahead log {path}-wal is: the journal was moved or removed without "
               "it, and its newest events may be in that file alone. Nothing was changed; move the log (and "
               "journal.db-shm) to where the journal went, or put the journal back")
    with pytest.raises(JournalError, match=said(message)):
        Journal.open(path, key)
    file = tmp_path / "other.cbbackup"
    other = tmp_path / "other" / "journal.db"
    Journal.open(other, key).close()
    backup(other, key, file, PASSPHRASE)
    with pytest.raises(JournalError, match=said(message)):
        restore(file, PASSPHRASE, path, key)
    assert sorted(p.name for p in path.parent.iterdir() if p.name != "journal.db.lock") == before
    for name in ("-wal", "-shm"):  # moved to where the journal went: every event is there
        (path.parent / f"journal.db{name}").rename(tmp_path / f"aside.db{name}")
    assert events(moved, key)[0] == [(seq, "sale", {"code": "6901028075831", "n": n}) for n, seq in enumerate(written)]


def test_a_backup_taken_while_a_rewrap_waits_carries_no_wrapping_under_the_waiting_key(box, key, tmp_path):
    journal = Journal.open(box, key)
    journal.rewrap(os.urandom(32))  # not installed yet
    journal.close()
    file = tmp_path / "box.cbbackup"
    backup(box, key, file, PASSPHRASE)
    target, new_box_key = tmp_path / "new-box" / "journal.db", os.urandom(32)
    assert restore(file, PASSPHRASE, target, new_box_key).ok
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("SELECT count(*) FROM meta WHERE name = 'rewrapped'").fetchone() == (0,)
    finally:
        conn.close()
    assert events(target, new_box_key) == events(box, key)


def test_what_a_killed_backup_or_restore_left_aside_goes_at_the_next(box, key, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    file = tmp_path / "box.cbbackup"
    left = [tmp_path / f".box.cbbackup.{dead.pid}.db", tmp_path / f".box.cbbackup.{dead.pid}.db-wal"]
    for path in left:
        path.write_bytes(b"sealed snapshot")
    backup(box, key, file, PASSPHRASE)
    target = tmp_path / "new-box" / "journal.db"
    target.parent.mkdir()
    (target.parent / f".journal.db.{dead.pid}.restoring").write_bytes(b"sealed copy")
    restore(file, PASSPHRASE, target, os.urandom(32))
    assert not any(path.exists() for path in left)
    assert sorted(p.name for p in target.parent.iterdir()) == ["journal.db"]


def test_a_backup_into_a_directory_that_is_not_there_is_refused_not_made(box, key, tmp_path):
    """The stick not mounted yet: its mount point's subdirectory was made on the box's own disk, and the backup
    written there was reported done."""
    target = tmp_path / "media" / "usb" / "shop.cbbackup"
    with pytest.raises(BackupError, match=said(f"{target.parent} is not a directory: a backup is written into one "
                                               "that exists (is the stick mounted?)")):
        backup(box, key, target, PASSPHRASE)
    assert not (tmp_path / "media").exists()


@pytest.fixture
def stick(tmp_path):
    """A real small filesystem (tmpfs) as the stick a backup is written to."""
    with small_filesystem(tmp_path / "stick", "256k") as mountpoint:
        yield mountpoint


def _journal_of(path, key, size: int):
    j = Journal.open(path, key)
    for n in range(size // 1000):
        j.append("sale", {"code": "6901028075831", "n": n, "note": os.urandom(400).hex()})
    j.close()
    return path


def test_a_stick_with_room_for_the_backup_alone_takes_it(tmp_path, key, stick):
    """The copy it is sealed from went beside the target too: a stick needed room for two backups."""
    journal = _journal_of(tmp_path / "box" / "journal.db", key, 160_000)
    assert 128_000 < journal.stat().st_size < 200_000
    backup(journal, key, stick / "shop.cbbackup", PASSPHRASE)
    assert verify_journal(journal, key).ok
    assert sorted(p.name for p in stick.iterdir()) == ["shop.cbbackup"]


def test_a_stick_too_small_for_the_backup_says_its_disk_is_full_and_leaves_nothing(tmp_path, key, stick):
    from storage import JournalFull

    journal = _journal_of(tmp_path / "box" / "journal.db", key, 400_000)
    with pytest.raises(JournalFull, match=rf"^{re.escape(str(stick))}: the disk is full \(\d+ bytes free\); nothing "
                                          r"was written$"):
        backup(journal, key, stick / "shop.cbbackup", PASSPHRASE)
    assert list(stick.iterdir()) == []
    assert verify_journal(journal, key).ok


def test_a_restore_onto_a_full_disk_says_so_and_leaves_nothing(box, key, tmp_path, stick):
    from storage import JournalFull

    big = _journal_of(tmp_path / "big" / "journal.db", key, 400_000)
    file = tmp_path / "big.cbbackup"
    backup(big, key, file, PASSPHRASE)
    target = stick / "box" / "journal.db"
    with pytest.raises(JournalFull, match=rf"^{re.escape(str(target.parent))}: the disk is full \(\d+ bytes free\); "
                                          r"nothing was restored$"):
        restore(file, PASSPHRASE, target, os.urandom(32))
    assert [p.name for p in target.parent.iterdir()] == []
