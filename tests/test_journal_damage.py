"""A journal the storage damaged (a flipped bit, a file cut short): every reader reads past the damage or
says so as the store's own error; never another exception, which would end the agent's task group and end it
again at every start (no scan counted, nothing delivered), or print a traceback for a command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storage import Journal, StorageError, verify_journal
from storage.journal import DAMAGED

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))


def _journal(path: Path) -> bytes:
    """Eight sales, three acknowledged, all in the database file; event 5's sealed body."""
    journal = Journal.open(path, KEY)
    for i in range(1, 9):
        journal.append("sale", {"code": f"{i:013d}", "price": 100 * i})
    journal.acknowledge(3)
    sealed = journal._conn.execute("SELECT sealed FROM events WHERE seq = 5").fetchone()[0]
    journal.close()
    return sealed


def _flipped(path: Path, raw: bytes, offset: int, bit: int) -> None:
    for file in path.parent.glob(path.name + "*"):
        file.unlink()
    damaged = bytearray(raw)
    damaged[offset] ^= 1 << bit
    path.write_bytes(bytes(damaged))


def _read_past_damage(path: Path) -> list:
    """What the uplink and the counter's fold read: past the damage (damaged=True)."""
    journal = Journal.open(path, KEY, create=False)
    try:
        return journal.read_batch(journal.acked_seq(), max_events=100, max_bytes=1 << 20, damaged=True)
    finally:
        journal.close()


def _fault(read) -> str | None:
    """What ``read`` raised other than the store's own error (None: it read, or said StorageError)."""
    try:
        read()
    except StorageError:
        return None
    except Exception as error:  # noqa: BLE001 (what these tests are for)
        return f"{type(error).__name__}: {error}"
    return None


def _by_kind(path: Path) -> None:
    """What the counter, retention and activation read: the latest of a kind, every one of a kind."""
    journal = Journal.open(path, KEY, create=False)
    try:
        journal.last("sale")
        journal.of_kind("sale")
    finally:
        journal.close()


def test_an_event_whose_record_header_is_flipped_is_read_as_damaged_or_said_as_the_stores_error(tmp_path):
    """The bytes before event 5's kind are its record's header: a flipped bit there reads its sealed body back as
    NULL, a number or a few bytes (ValueError: "Nonce must be between 8 and 128 bytes", or a TypeError; for
    verify, a struct.error). Every reader: the uplink's and the fold's, by kind, and verify."""
    path = tmp_path / "journal.db"
    sealed = _journal(path)
    raw = path.read_bytes()
    kind_at = raw.index(b"sale" + sealed)
    failures, damaged, broken = [], 0, 0
    for offset in range(kind_at - 8, kind_at):
        for bit in range(8):
            _flipped(path, raw, offset, bit)
            read: list = []
            for what, reader in (("read", lambda: read.extend(_read_past_damage(path))), ("by kind", lambda: _by_kind(path)),
                                 ("verify", lambda: read.append(verify_journal(path, KEY)))):
                if fault := _fault(reader):
                    failures.append(f"offset {offset} bit {bit} {what}: {fault}")
            damaged += any(getattr(item, "kind", None) == DAMAGED for item in read)
            broken += any(getattr(item, "broken", None) is not None for item in read)
    assert not failures, "\n".join(failures)
    assert damaged and broken  # some flips leave the row readable: read as damaged, and verify names it


def test_a_flipped_bit_in_a_name_the_journal_keeps_in_meta_is_the_stores_error(tmp_path):
    path = tmp_path / "journal.db"
    _journal(path)
    raw = path.read_bytes()
    failures = []
    for name in (b"acked_seq", b"chain_anchor_seq", b"journal_id", b"session"):
        start = 0
        while (at := raw.find(name, start)) >= 0:
            start = at + 1
            for bit in (0, 1):
                _flipped(path, raw, at + len(name) - 1, bit)
                for what, read in (("verify", lambda: verify_journal(path, KEY)), ("read", lambda: _read_past_damage(path))):
                    if fault := _fault(read):
                        failures.append(f"{name.decode()} @{at} bit {bit} {what}: {fault}")
    assert not failures, "\n".join(failures)


def test_a_journal_cut_short_within_its_last_page_is_read_past_or_said_as_the_stores_error(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal.open(path, KEY)
    for i in range(1, 200):
        journal.append("sale", {"code": f"{i:013d}", "price": 100 * i, "note": "n" * 50})
    journal.acknowledge(150)
    journal.close()
    raw = path.read_bytes()
    failures = []
    for cut in range(len(raw) - 4096 + 512, len(raw), 512):
        path.write_bytes(raw[:cut])
        if fault := _fault(lambda: _read_past_damage(path)):
            failures.append(f"cut at {cut} of {len(raw)}: {fault}")
    assert not failures, "\n".join(failures)


def test_counterbox_verify_on_a_journal_whose_chain_anchor_name_is_flipped_says_so_without_a_traceback(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    config = box / "agent.toml"
    config.write_text('[device]\nid = "shop-1"\nkey_file = "device.key"\n'
                      '[storage]\npath = "journal.db"\nkey_file = "data.key"\n[scanner]\nauto = false\nhid_pos = false\n')
    (box / "data.key").write_bytes(KEY)
    os.chmod(box / "data.key", 0o600)
    path = box / "journal.db"
    _journal(path)
    raw = bytearray(path.read_bytes())
    start = 0
    while (at := raw.find(b"chain_anchor_seq", start)) >= 0:  # the row and its primary key's index
        raw[at + len(b"chain_anchor_seq") - 1] ^= 1
        start = at + 1
    path.write_bytes(bytes(raw))
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    result = subprocess.run([sys.executable, "-m", "agent", "-c", str(config), "verify"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and result.returncode in (1, 2), result.stderr
    assert "'chain_anchor_seq' is missing from its meta table: the file was altered" in result.stderr
