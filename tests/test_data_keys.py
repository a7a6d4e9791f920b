"""Data keys: wrapped under the outer key, rotated without rewriting history, and strict about the outer key."""

import asyncio
import os
import sqlite3

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage import DataKeyError, Journal, JournalError, Store, sealing, verify_journal

from .journals import another_key, contents, journal_path, key  # noqa: F401 (fixtures)


def test_the_outer_key_seals_no_event_it_only_wraps_the_data_keys(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    wrapped = j._conn.execute("SELECT wrapped FROM keys").fetchall()
    sealed = j._conn.execute("SELECT sealed FROM events").fetchone()[0]
    j.close()
    assert len(wrapped) == 1 and key not in wrapped[0][0]
    with pytest.raises(InvalidTag):
        sealing.open_sealed(AESGCM(key), 1, "sale", sealed)


def test_after_a_rotation_old_events_stay_readable_and_new_ones_use_the_new_key(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "old"})
    assert j.rotate_key() == 2
    j.append("sale", {"code": "new"})
    assert [(e.seq, e.body["code"]) for e in j.read_after(0)] == [(1, "old"), (2, "new")]
    assert j._conn.execute("SELECT seq, key_id FROM events ORDER BY seq").fetchall() == [(1, 1), (2, 2)]
    assert [key_id for key_id, _ in j.data_keys()] == [1, 2]
    j.close()
    again = Journal.open(journal_path, key)
    assert [e.body["code"] for e in again.read_after(0)] == ["old", "new"]
    again.close()
    assert verify_journal(journal_path, key).ok


def test_a_rotation_by_a_command_beside_the_agent_is_taken_at_the_agents_next_event(journal_path, key):
    agent = Journal.open(journal_path, key)
    agent.append("sale", {"n": 1})
    command = Journal.open(journal_path, key)
    command.rotate_key()
    command.close()
    agent.append("sale", {"n": 2})
    assert agent._conn.execute("SELECT key_id FROM events WHERE seq = 2").fetchone()[0] == 2
    assert [e.body["n"] for e in agent.read_after(0)] == [1, 2]
    agent.close()


def test_a_rotation_runs_only_in_a_transaction_of_its_own(journal_path, key):
    """Inside another transaction it could be rolled back after its key was used: refused."""
    j = Journal.open(journal_path, key)
    with pytest.raises(JournalError, match="a key rotation runs in a transaction of its own"):
        with j.transaction():
            j.rotate_key()
    assert [key_id for key_id, _ in j.data_keys()] == [1]
    j.close()


def test_a_wrong_outer_key_after_rotation_is_refused_and_changes_no_byte(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    j.rotate_key()
    j.append("sale", {"code": "2"})
    j.close()
    before = contents(journal_path)
    with pytest.raises(DataKeyError, match=another_key(journal_path)):
        Journal.open(journal_path, os.urandom(32))
    with pytest.raises(DataKeyError, match=another_key(journal_path)):
        verify_journal(journal_path, os.urandom(32))
    assert contents(journal_path) == before


def test_a_rewrap_to_the_key_the_journal_has_already_is_refused_and_waits_for_nothing(journal_path, key):
    """Taken, it waited for ever: opened with that key, the journal took it for the old one, and every start
    said a re-wrap waits, and key rotation was refused."""
    j = Journal.open(journal_path, key)
    with pytest.raises(JournalError, match="^the new key is the journal's outer key already: nothing to re-wrap"):
        j.rewrap(bytes(key))
    assert not j.rewrap_waiting()
    j.rotate_key()
    j.close()


def test_a_new_outer_key_rewraps_the_data_keys_and_once_used_the_old_one_no_longer_opens_the_journal(journal_path, key):
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    j.rotate_key()
    j.append("sale", {"code": "2"})
    events = j._conn.execute("SELECT seq, key_id, sealed, chain FROM events").fetchall()
    new = os.urandom(32)
    j.rewrap(new)
    j.append("sale", {"code": "3"})  # the open journal goes on
    with pytest.raises(JournalError, match="a re-wrap waits for its new outer key to be installed"):
        j.rotate_key()  # a data key added now could not be wrapped under the new key, which is not at hand
    assert j._conn.execute("SELECT seq, key_id, sealed, chain FROM events WHERE seq <= 2").fetchall() == events
    j.close()
    assert verify_journal(journal_path, new).ok and verify_journal(journal_path, key).ok  # both, until it is used
    still = Journal.open(journal_path, key, finish_rewrap=True)  # the new key not installed yet: the old one goes on
    assert [e.body["code"] for e in still.read_after(0)] == ["1", "2", "3"] and still.rewrap_waiting()
    still.close()
    command = Journal.open(journal_path, new)  # a command under the new key beside an agent under the old one
    assert [e.body["code"] for e in command.read_after(0)] == ["1", "2", "3"]
    command.close()
    Journal.open(journal_path, key).close()  # leaves the agent its key: only the agent's start takes the new one
    reopened = Journal.open(journal_path, new, finish_rewrap=True)  # the agent started with it installed
    assert not reopened.rewrap_waiting()
    reopened.rotate_key()  # and wraps the keys it adds under it
    reopened.append("sale", {"code": "4"})
    assert [e.body["code"] for e in reopened.read_after(0)] == ["1", "2", "3", "4"]
    reopened.close()
    with pytest.raises(DataKeyError, match=another_key(journal_path)):
        Journal.open(journal_path, key)
    assert verify_journal(journal_path, new).ok


def test_a_new_outer_key_lost_before_it_was_installed_leaves_the_journal_to_the_old_one(journal_path, key):
    """The recipe keeps the new key on a tmpfs until it is sealed into the credential: a power cut between
    the re-wrap and that step once left a journal no key opened."""
    j = Journal.open(journal_path, key)
    j.append("sale", {"code": "1"})
    j.rewrap(os.urandom(32))  # and the power goes: the new key with it
    j.close()
    again = Journal.open(journal_path, key)
    again.append("sale", {"code": "2"})
    newer = os.urandom(32)
    again.rewrap(newer)  # done again, with another new key: the one that counts
    again.close()
    installed = Journal.open(journal_path, newer, finish_rewrap=True)
    assert [e.body["code"] for e in installed.read_after(0)] == ["1", "2"]
    installed.close()
    with pytest.raises(DataKeyError):
        Journal.open(journal_path, key)


def test_a_data_key_of_a_journal_in_use_is_never_removed(journal_path, key):
    j = Journal.open(journal_path, key)
    with pytest.raises(sqlite3.IntegrityError, match="a data key is never removed"):
        j._conn.execute("DELETE FROM keys")
    j.close()


def test_the_store_serves_events_sealed_under_every_key(journal_path, key):
    async def main():
        store = await Store.open(journal_path, key)
        await store.append("sale", {"n": 1})
        await asyncio.to_thread(lambda: _rotate(journal_path, key))
        await asyncio.gather(*[store.append("sale", {"n": n}) for n in range(2, 6)])
        events = await store.read(lambda journal: journal.read_after(0))
        verified = await store.read(lambda journal: journal.verify())
        await store.close()
        return events, verified

    events, verified = asyncio.run(main())
    assert [e.body["n"] for e in events] == [1, 2, 3, 4, 5] and verified.ok


def _rotate(path, key):
    j = Journal.open(path, key)
    j.rotate_key()
    j.close()


def _credential_box(tmp_path, monkeypatch):
    from agent.config import Config, DeviceConfig, StorageConfig
    from provisioning.identity import create_key

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "counterbox-data-key").write_bytes(os.urandom(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    box = tmp_path / "box"
    config = Config(device=DeviceConfig(key_file=box / "device.key"),
                    storage=StorageConfig(path=box / "journal.db", key_file=box / "data.key"))
    create_key(config.device.key_file)
    return config, (credentials / "counterbox-data-key").read_bytes()


def _seen(tmp_path, box) -> dict:
    """Second names for the journal's files: what an erase leaves where they were."""
    kept = {}
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        kept[name] = tmp_path / f"seen-{name}"
        os.link(box / name, kept[name])
    return kept


def test_beside_a_systemd_credential_the_journals_own_share_is_what_an_erase_destroys(tmp_path, monkeypatch, caplog):
    """The service cannot destroy a credential, and the box's next life runs under it: the outer key is made of
    it and a share the journal's own, so that destroying the share leaves the credential opening nothing."""
    import logging
    import shutil

    from agent.daemon import crypto_erase, data_key
    from storage.keys import share_file

    config, credential = _credential_box(tmp_path, monkeypatch)
    outer = data_key(config.storage, create=True)
    assert outer != credential and share_file(config.storage.key_file).stat().st_mode & 0o777 == 0o600
    journal = Journal.open(config.storage.path, outer)
    journal.append("sale", {"code": "6901028075831", "unit_price": 2300})
    journal.close()
    assert data_key(config.storage, create=False) == outer  # the same, every start
    shutil.copy(config.storage.path, tmp_path / "copy.db")  # the journal's blocks, as someone might find them
    with caplog.at_level(logging.WARNING, logger="agent.daemon"):
        crypto_erase(config)
    assert sorted(p.name for p in config.storage.path.parent.iterdir()) == []
    assert "crypto-erased: data key, signing key and journal destroyed" in caplog.text
    with pytest.raises(DataKeyError):
        Journal.open(tmp_path / "copy.db", credential)
    assert data_key(config.storage, create=True) not in (outer, credential)  # the next life's: a new share


def test_a_journals_share_gone_missing_beside_a_credential_is_named(tmp_path, monkeypatch):
    """The credential opens only journals made before shares were; one with a share whose share is gone did
    not open, and the error said only that the journal was created with another key."""
    from agent.daemon import data_key, open_journal
    from storage.keys import share_file

    config, credential = _credential_box(tmp_path, monkeypatch)
    Journal.open(config.storage.path, data_key(config.storage, create=True)).close()
    share = share_file(config.storage.key_file)
    share.unlink()
    with pytest.raises(DataKeyError) as refused:
        open_journal(config)
    assert str(refused.value).endswith(f"Its share of the key, {share}, is missing beside the key file: restore it "
                                       "(a backup of the box holds it).")


def test_an_erase_of_a_journal_made_under_a_credential_alone_overwrites_its_files_where_they_lie(
        tmp_path, monkeypatch, caplog):
    """A journal made before shares were: the credential opens it, and would open the data keys wrapped in the
    blocks its files leave; they are zeroed before they go."""
    import logging

    from agent.daemon import crypto_erase, data_key

    config, credential = _credential_box(tmp_path, monkeypatch)
    journal = Journal.open(config.storage.path, credential)  # no share: as such a box made it
    journal.append("sale", {"code": "6901028075831", "unit_price": 2300})
    assert data_key(config.storage, create=False) == credential
    box = config.storage.path.parent
    kept = _seen(tmp_path, box)
    journal._conn.close()  # the connection goes; the WAL and shared memory stay, as a power cut leaves them
    for name in ("journal.db-wal", "journal.db-shm"):  # closing removed them; the links keep what they held
        os.link(kept[name], box / name)
    with caplog.at_level(logging.WARNING, logger="agent.daemon"):
        crypto_erase(config)
    assert sorted(p.name for p in box.iterdir()) == []
    for name, seen in kept.items():
        data = seen.read_bytes()
        assert data and data == bytes(len(data)), f"{name} was not overwritten"
    assert "the journal's files are overwritten with zeros instead" in caplog.text
    assert ("crypto-erased: signing key destroyed, journal overwritten with zeros (its outer key is a systemd "
            "credential)") in caplog.text



def test_a_rewrap_waits_for_the_agent_to_stop_and_an_agent_under_the_old_key_goes_on_beside_commands_under_the_new(
        journal_path, key):
    """A command that took the new key's place beside a running agent under the old one left the agent unable
    to open a data key added after: every scan refused until it was started again."""
    from storage import JournalInUse, agent_lock

    Journal.open(journal_path, key).close()
    new = os.urandom(32)
    with agent_lock(journal_path):
        agent = Journal.open(journal_path, key, finish_rewrap=True)
        agent.append("sale", {"code": "1"})
        with pytest.raises(JournalInUse):  # `counterbox keys rewrap` takes the agent's lock (see test_store_commands)
            with agent_lock(journal_path, leave=False):
                pass
    agent.rewrap(new)  # as the command does, the agent stopped (its lock released)
    command = Journal.open(journal_path, new)  # `counterbox status` with the new key installed
    command.close()
    agent.append("sale", {"code": "2"})  # the agent, still under the old key, goes on
    with pytest.raises(JournalError, match="a re-wrap waits"):
        agent.rotate_key()
    assert [e.body["code"] for e in agent.read_after(0)] == ["1", "2"]
    agent.close()


def test_a_rewrap_to_a_new_credential_keeps_the_journals_share(tmp_path, monkeypatch):
    """`counterbox keys rewrap --new-key-file F`, F the new credential's content: the outer key it makes is F's
    with the share, as the agent will make it from the new credential."""
    from agent.daemon import data_key
    from storage.keys import new_outer_key

    config, credential = _credential_box(tmp_path, monkeypatch)
    journal = Journal.open(config.storage.path, data_key(config.storage, create=True))
    journal.append("sale", {"code": "1"})
    replacement = os.urandom(32)
    journal.rewrap(new_outer_key(key_file=config.storage.key_file, credential=config.storage.credential,
                                 new=replacement))
    journal.close()
    (tmp_path / "credentials" / "counterbox-data-key").write_bytes(replacement)  # the new credential installed
    reopened = Journal.open(config.storage.path, data_key(config.storage, create=False), finish_rewrap=True)
    assert [e.body["code"] for e in reopened.read_after(0)] == ["1"]
    reopened.close()


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_copy_of_a_secret_left_by_a_process_killed_while_writing_it_is_destroyed(tmp_path):
    """A key is written aside and linked into place; a process killed between the two left the aside copy,
    which an erase of the key it became did not reach."""
    from agent.config import Config, DeviceConfig, StorageConfig
    from agent.daemon import crypto_erase
    from storage.keys import write_secret

    pid = _dead_pid()
    stale, seen = tmp_path / f".data.key.{pid}.new", tmp_path / "seen"
    stale.write_bytes(os.urandom(32))
    os.link(stale, seen)
    ours = tmp_path / f".data.key.{os.getpid()}.new.elsewhere"  # a live process's own: never touched
    ours.write_bytes(b"mine")
    write_secret(tmp_path / "data.key", os.urandom(32))
    assert not stale.exists() and seen.read_bytes() == bytes(32) and ours.read_bytes() == b"mine"

    box = tmp_path / "box"
    box.mkdir()
    left = [box / f".device.key.{pid}.new", box / f".data.key.share.{pid}.new"]
    for path in left:
        path.write_bytes(os.urandom(32))
    crypto_erase(Config(device=DeviceConfig(key_file=box / "device.key"),
                        storage=StorageConfig(path=box / "journal.db", key_file=box / "data.key")))
    assert list(box.iterdir()) == []


def test_a_credential_named_wrong_under_systemd_is_said_and_no_plain_key_file_is_made(tmp_path, monkeypatch):
    """The unit's credential misspelt in the configuration (or the other way round): the agent made a plain key
    file beside the journal and went on, unsealed, without a word."""
    import dataclasses

    from agent.daemon import data_key
    from storage.errors import DataKeyError

    config, _ = _credential_box(tmp_path, monkeypatch)
    storage = dataclasses.replace(config.storage, credential="counterbox-datakey")
    with pytest.raises(DataKeyError, match=r"\[storage\] credential 'counterbox-datakey' is not among the systemd "
                                           r"credentials this process was given \(counterbox-data-key in "):
        data_key(storage, create=True)
    from storage.keys import share_file

    assert not storage.key_file.exists() and not share_file(storage.key_file).exists()
    # Named as the unit names it: its share made beside the key file, no key file.
    data_key(config.storage, create=True)
    assert not config.storage.key_file.exists()
    # None wanted (credential = ""): the key file, whatever the unit hands over.
    plain = dataclasses.replace(config.storage, credential="", key_file=tmp_path / "plain" / "data.key")
    assert data_key(plain, create=True) == plain.key_file.read_bytes()
