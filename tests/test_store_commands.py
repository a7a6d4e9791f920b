"""The store's commands: verify, keys rotate and rewrap, backup and restore, as an operator runs them."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage import Journal

from .journals import contents

ROOT = Path(__file__).resolve().parent.parent


def make_box(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "agent.toml"
    config.write_text('[device]\nid = "shop-1"\nkey_file = "device.key"\n'
                      '[storage]\npath = "journal.db"\nkey_file = "data.key"\n[scanner]\nauto = false\nhid_pos = false\n')
    return config


def counterbox(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "agent", "-c", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def box(tmp_path):
    config = make_box(tmp_path / "box")
    prices = tmp_path / "prices.csv"
    prices.write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    for _ in range(3):
        assert counterbox(config, "prices", "load", str(prices)).returncode == 0
    return config


def test_verify_prints_the_chain_and_exits_zero_for_an_untouched_journal(box):
    result = counterbox(box, "verify")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["events"] == 3 and report["seals_checked"] and report["first_broken"] is None
    alone = json.loads(counterbox(box, "verify", "--chain-only").stdout)
    assert not alone["seals_checked"] and alone["head"] == report["head"]


def test_verify_names_the_first_broken_event_and_exits_one(box):
    conn = sqlite3.connect(box.parent / "journal.db")
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET kind = 'sale' WHERE seq = 2")
    conn.commit()
    conn.close()
    result = counterbox(box, "verify", "--chain-only")
    assert result.returncode == 1
    assert json.loads(result.stdout)["first_broken"]["seq"] == 2
    assert result.stderr == ("counterbox: the journal is broken at event 2: event 2 (sale) does not match its chain "
                             "hash: the row was altered, or replaces another\n")


def test_keys_rotate_and_rewrap_keep_every_event_readable(box, tmp_path):
    assert json.loads(counterbox(box, "keys", "rotate").stdout) == {"data_key": 2, "data_keys": 2}
    prices = tmp_path / "prices.csv"
    assert counterbox(box, "prices", "load", str(prices)).returncode == 0
    new_key = tmp_path / "new.key"
    new_key.write_bytes(os.urandom(32))
    result = counterbox(box, "keys", "rewrap", "--new-key-file", str(new_key))
    assert json.loads(result.stdout) == {"rewrapped": 2, "outer_key": str(new_key)}
    old_key = (box.parent / "data.key").read_bytes()
    assert counterbox(box, "status").returncode == 0  # the old key opens it until the new one is installed
    (box.parent / "data.key").write_bytes(new_key.read_bytes())  # the operator installs the new key
    shown = [json.loads(line)["seq"] for line in counterbox(box, "show", "--last", "10").stdout.splitlines()]
    assert shown == [1, 2, 3, 4]
    assert json.loads(counterbox(box, "verify").stdout)["ok"]
    Journal.open(box.parent / "journal.db", new_key.read_bytes(), finish_rewrap=True).close()  # the agent's start
    (box.parent / "data.key").write_bytes(old_key)
    refused = counterbox(box, "status")  # the new key has been used: the old one opens the journal no more
    assert refused.returncode == 2 and "created with another key. Nothing was changed" in refused.stderr


def test_a_backup_restored_onto_a_new_box_verifies_and_shows_the_same_events(box, tmp_path):
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    file = tmp_path / "box.cbbackup"
    made = counterbox(box, "backup", str(file), "--passphrase-file", str(passphrase))
    assert made.returncode == 0, made.stderr
    new_box = make_box(tmp_path / "new-box")
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    refused = counterbox(new_box, "restore", str(file), "--passphrase-file", str(wrong))
    assert refused.returncode == 2 and "does not open with this passphrase" in refused.stderr, refused.stderr
    assert sorted(p.name for p in new_box.parent.iterdir()) == ["agent.toml"]  # no key made for a restore refused
    restored = counterbox(new_box, "restore", str(file), "--passphrase-file", str(passphrase))
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["ok"] and report["events"] == 3 and report["head"] == json.loads(made.stdout)["head"]
    assert (new_box.parent / "data.key").read_bytes() != (box.parent / "data.key").read_bytes()
    assert counterbox(new_box, "show").stdout == counterbox(box, "show").stdout
    again = counterbox(new_box, "restore", str(file), "--passphrase-file", str(passphrase))
    assert again.returncode == 2 and "restored only onto a box with no journal" in again.stderr


@pytest.mark.parametrize("command", ["verify", "backup"])
def test_verify_or_backup_on_a_box_with_no_journal_says_so_and_creates_nothing(tmp_path, command):
    config = make_box(tmp_path / "box")
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    args = ["verify"] if command == "verify" else ["backup", str(tmp_path / "box.cbbackup"),
                                                   "--passphrase-file", str(passphrase)]
    result = counterbox(config, *args)
    assert result.returncode == 2 and "there is no journal at" in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["agent.toml"]


@pytest.mark.parametrize("key", ["wrong", "missing"])
def test_the_agent_with_a_wrong_or_missing_key_stops_with_a_clear_error_and_changes_nothing(box, key):
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    central_key = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    box.write_text(box.read_text() + f'[uplink]\ncentral_key = "{central_key}"\n')
    assert counterbox(box, "identity", "create").returncode == 0
    assert counterbox(box, "keys", "rotate").returncode == 0
    key_file = box.parent / "data.key"
    if key == "wrong":
        key_file.write_bytes(os.urandom(32))
    else:
        key_file.unlink()
    before = contents(box.parent / "journal.db")
    result = counterbox(box, "run")
    assert result.returncode == 2
    assert ("created with another key. Nothing was changed" if key == "wrong"
            else "is missing but the journal exists") in result.stderr
    assert contents(box.parent / "journal.db") == before
    assert key == "wrong" or not key_file.exists()


def test_keys_rewrap_beside_a_running_agent_is_refused_and_changes_nothing(box, tmp_path):
    from storage import agent_lock

    new_key = tmp_path / "new.key"
    new_key.write_bytes(os.urandom(32))
    before = (box.parent / "journal.db").read_bytes()
    with agent_lock(box.parent / "journal.db"):  # the agent's
        refused = counterbox(box, "keys", "rewrap", "--new-key-file", str(new_key))
    assert refused.returncode == 2 and "another agent is running on" in refused.stderr
    assert (box.parent / "journal.db").read_bytes() == before


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_a_backup_ended_by_its_session_hanging_up_leaves_no_copy_of_the_journal(box, tmp_path, sig):
    """The copy a backup seals from is a whole journal (13 MB at 60,000 events) on the box's disk, beside the
    journal when the stick has less room. An ssh session that hung up ended the command at once (SIGHUP's
    default), and the copy stayed until the next backup."""
    import signal
    import time

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    copies = lambda: [p for directory in (box.parent, tmp_path) for p in directory.glob(".*.db*")]  # noqa: E731
    for _ in range(20):  # caught while its copy is there: a small journal's backup is over in a few milliseconds
        # (As an ssh session starts it: SIGHUP not ignored, whatever the tests were started under, nohup too.)
        running = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(box), "backup",
                                    str(tmp_path / "b.cbbackup"), "--passphrase-file", str(passphrase)],
                                   cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        deadline = time.monotonic() + 30
        while not copies() and running.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        running.send_signal(signal.SIGSTOP)
        if copies():
            break
        running.send_signal(signal.SIGCONT)
        running.wait(30)
        (tmp_path / "b.cbbackup").unlink(missing_ok=True)
    else:
        pytest.fail("the backup's copy was never seen while it ran")
    running.send_signal(getattr(signal, sig))  # (held until it goes on)
    running.send_signal(signal.SIGCONT)
    running.wait(30)
    assert running.returncode == 128 + getattr(signal, sig) and copies() == []
    assert f"counterbox: stopped by {sig}" in running.stderr.read().decode()
    assert not (tmp_path / "b.cbbackup").exists()


def test_a_backup_under_nohup_outlives_its_session(box, tmp_path):
    """nohup ignores SIGHUP so that a long backup outlives the ssh session: the command keeps that."""
    import signal
    import time

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    running = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(box), "backup", str(tmp_path / "b.cbbackup"),
                                "--passphrase-file", str(passphrase)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    time.sleep(0.3)
    running.send_signal(signal.SIGHUP)
    assert running.wait(60) == 0, running.stderr.read().decode()
    assert (tmp_path / "b.cbbackup").exists()


def test_a_copy_of_the_journal_a_killed_backup_left_is_removed_and_a_running_ones_kept(box):
    """A backup killed outright (SIGKILL, a power cut) cannot remove its copy: the agent's next start does
    (``remove_copies_left``), and so does the erase of a revoked box (``remove_journal``)."""
    from storage import remove_copies_left, remove_journal

    left = box.parent / ".journal.db.999999999.db"  # no such process
    left.write_bytes(b"a copy of the journal")
    (box.parent / ".journal.db.999999999.db-wal").write_bytes(b"and its log")
    kept = box.parent / f".journal.db.{os.getpid()}.db"  # a backup running now keeps its own
    kept.write_bytes(b"in use")
    remove_copies_left(box.parent / "journal.db")
    assert sorted(p.name for p in box.parent.glob(".journal.db.*")) == [kept.name]
    left.write_bytes(b"another copy")
    (box.parent / ".journal.db.999999999.restoring").write_bytes(b"a restore's copy, its keys under the outer key")
    remove_journal(box.parent / "journal.db", overwrite=True)
    assert sorted(p.name for p in box.parent.glob(".journal.db.*")) == [kept.name]
    assert not (box.parent / "journal.db").exists()
