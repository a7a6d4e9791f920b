"""Backup: the journal as one encrypted file, and its restore onto a box with no journal.

    backup(journal_path, outer_key, Path("box.cbbackup"), passphrase)
    restore(Path("box.cbbackup"), passphrase, journal_path, new_box_outer_key)

A backup is a consistent snapshot (SQLite's backup API, taken beside a running
agent) whose data keys are re-wrapped under a key derived from the operator's
passphrase, so it opens on any box that is given the passphrase, not only on the
one whose credential sealed it. The events stay exactly as they were sealed and
chained. Both ends check the chain and every seal; a restore that does not
verify leaves nothing behind.

The file: one JSON header line, then the snapshot in chunks sealed with
AES-256-GCM (the STREAM construction: each chunk's nonce is a random prefix, its
number and whether it is the last, so a chunk reordered, dropped or cut off
fails to open); the header is every chunk's associated data.

    {"format": "counterbox-backup", "version": 1, "cipher": "AES-256-GCM", "chunk": 1048576,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": HEX}, "nonce_prefix": HEX}

scrypt(passphrase, salt) gives 64 bytes: the first 32 seal the file, the last 32
wrap the data keys inside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import sealing, sqlite
from .chain import Verification
from .errors import BackupError, JournalError, JournalFull
from .journal import Journal, check_no_log_left, drop_pending_rewrap, finish_rewrap, verify_journal
from .keys import leftovers, sync_directory
from .owner import agent_lock
from .schema import SCHEMA_VERSION

FORMAT, VERSION = "counterbox-backup", 1
CHUNK = 1 << 20  # bytes of the snapshot per sealed chunk: bounds memory for a journal of any size
_TAG = 16
_PREFIX = 7  # bytes of a chunk's nonce before its number (4) and last-chunk flag (1): 12 in all
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1  # 32 MiB and about 0.1 s per derivation on the box
# scrypt takes 128 * n * r bytes: a header asking for more is refused rather than exhaust the box's
# memory (a box's own backups take 32 MiB).
_MOST_MEMORY = 128 << 20
MIN_PASSPHRASE = 12  # bytes


def backup(journal_path: Path, outer: bytes, target: Path, passphrase: bytes) -> Verification:
    """Write the journal at ``journal_path`` to the new file ``target``, sealed under ``passphrase``."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"the passphrase has {len(passphrase)} bytes; a backup needs at least {MIN_PASSPHRASE}")
    if target.exists():
        raise BackupError(f"{target} exists; a backup is written to a new file")
    if not target.parent.is_dir():
        # Made, it would put the backup on the box's own disk where a stick was meant (not mounted yet).
        raise BackupError(f"{target.parent} is not a directory: a backup is written into one that exists (is the "
                          "stick mounted?)")
    Journal.open(journal_path, outer, create=False).close()  # a wrong key stops here; an older schema is brought up
    # The copy it is sealed from goes on whichever disk has more room, the box's or the target's: the
    # target then needs room for the backup alone.
    for beside in (target, journal_path):
        _clear_leftovers(beside, "db")
    snapshot = _aside_name(max((target, journal_path), key=lambda path: _free(path.parent)), "db")
    try:  # from before the copy is made: a stop (an ssh session hung up) at any moment removes it
        _make_aside(snapshot)
        with _named(snapshot):
            _snapshot(journal_path, snapshot)
        verified = verify_journal(snapshot, outer)
        if not verified.ok:
            raise BackupError(f"the journal does not verify, so it was not backed up: {verified.broken.reason}")
        header, file_key, wrap_key = _new_header(passphrase)
        with _named(snapshot), _connection(snapshot) as conn:
            finish_rewrap(conn, journal_path, outer)  # a copy under the key given, the new one of a re-wrap too
            drop_pending_rewrap(conn)
            sealing.rewrap_keys(conn, journal_path, outer, wrap_key)
        _write_sealed(snapshot, target, header, file_key)
    finally:
        _remove(snapshot)
    return verified


def restore(source: Path, passphrase: bytes, journal_path: Path, outer: bytes) -> Verification:
    """Restore the backup ``source`` as the journal at ``journal_path`` (which must not exist), its
    data keys wrapped under this box's ``outer`` key; only a journal that verifies is put in place."""
    with agent_lock(journal_path, leave=False):  # never beneath a running agent, nor an agent started meanwhile
        return _restore(source, passphrase, journal_path, outer)


def _restore(source: Path, passphrase: bytes, journal_path: Path, outer: bytes) -> Verification:
    if journal_path.exists():
        raise JournalError(f"a journal exists at {journal_path}: a backup is restored only onto a box with no "
                           "journal (move this one away first, with its -wal and -shm files)")
    check_no_log_left(journal_path)
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    restored = _aside_name(journal_path, "restoring")
    try:
        _make_aside(restored)
        with source.open("rb") as sealed:
            header, file_key, wrap_key = _read_header(sealed, source, passphrase)
            with _disk(journal_path.parent, "restored"), restored.open("wb") as plain:
                _open_stream(sealed, plain, source, header, file_key)
        with _named(restored, source), _connection(restored) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if not 2 <= version <= SCHEMA_VERSION:
                raise BackupError(f"{source} holds a journal of schema version {version}; this counterbox "
                                  f"restores versions 2 to {SCHEMA_VERSION}")
            sealing.rewrap_keys(conn, source, wrap_key, outer)
            # Where this copy's own events begin: central may hold others at the seqs after it (the journal
            # went on at the box after the backup), told apart by the event its acknowledgements name.
            conn.execute("INSERT INTO meta (name, value) VALUES ('restored_at', coalesce((SELECT max(seq) FROM "
                         "events), (SELECT value FROM meta WHERE name = 'chain_anchor_seq'))) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value")
        journal = Journal.open(restored, outer, create=False)
        try:
            verified = journal.verify()
        finally:
            journal.close()
        if not verified.ok:
            raise BackupError(f"{source} does not verify, so nothing was restored: {verified.broken.reason}")
        os.link(restored, journal_path)  # refuses to replace a journal made meanwhile
        sync_directory(journal_path.parent)
    finally:
        _remove(restored)
    return verified


# -- the snapshot ---------------------------------------------------------------------

def _clear_leftovers(beside: Path, what: str) -> None:
    for stale in leftovers(beside, what):  # a backup or restore killed before it ended (all of it sealed)
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _aside_name(beside: Path, what: str) -> Path:
    """Where this process makes its copy beside ``beside`` (``leftovers`` finds it, should the process end
    before it removes it); what others left there, gone now, is removed."""
    _clear_leftovers(beside, what)
    return beside.with_name(f".{beside.name}.{os.getpid()}.{what}")


def _make_aside(path: Path) -> None:
    _remove(path)
    sqlite.create_private(path)


def _free(directory: Path) -> int:
    try:
        found = os.statvfs(directory)
    except OSError:
        return -1
    return found.f_bavail * found.f_frsize


@contextlib.contextmanager
def _disk(directory: Path, what: str):
    """A disk that filled while a file was written there: said so, naming the disk, not as a bare errno."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JournalFull(f"{directory}: the disk is full ({_free(directory)} bytes free); nothing was {what}") from None


def _remove(path: Path) -> None:
    for name in (path.name, f"{path.name}-journal", f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).unlink()


def _snapshot(journal_path: Path, snapshot: Path) -> None:
    """A consistent copy of the journal, even while the agent writes to it, as one plain file."""
    source = sqlite.connect(journal_path, readonly=True)
    try:
        with contextlib.closing(sqlite3.connect(snapshot)) as copy:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no WAL beside it
    finally:
        source.close()


class _named:
    """``with _named(path):`` SQLite's errors on a copy aside as the store's own: a full disk (which
    SQLite may call only "disk I/O error") as JournalFull. ``source``: the backup the copy came from,
    which the error names (the copy is gone by the time anyone reads it)."""

    def __init__(self, path: Path, source: Path | None = None) -> None:
        self.path = path
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None or not issubclass(kind, sqlite3.Error):
            return False
        if sqlite.disk_full(error, self.path):
            raise JournalFull(f"{self.path.parent}: the disk is full ({error}); nothing was written") from error
        if self.source is not None:
            raise BackupError(f"{self.source}: {error}; nothing was restored") from error
        raise BackupError(f"{self.path}: {error}") from error


class _connection:
    """``with _connection(path) as conn:`` one transaction on a snapshot, committed and closed."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._conn.execute("COMMIT")
            elif self._conn.in_transaction:  # SQLite ends it itself on a full disk: nothing to roll back
                with contextlib.suppress(sqlite3.Error):  # the error that ended it is the one to tell
                    self._conn.execute("ROLLBACK")
        finally:
            self._conn.close()


# -- the sealed file ------------------------------------------------------------------

def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes]:
    derived = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase)
    return derived[:32], derived[32:]


def _new_header(passphrase: bytes) -> tuple[bytes, bytes, bytes]:
    salt, prefix = os.urandom(16), os.urandom(_PREFIX)
    header = {"format": FORMAT, "version": VERSION, "cipher": "AES-256-GCM", "chunk": CHUNK,
              "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
              "nonce_prefix": prefix.hex()}
    return (json.dumps(header, sort_keys=True) + "\n").encode(), *_derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _read_header(sealed: BinaryIO, source: Path, passphrase: bytes) -> tuple[bytes, bytes, bytes]:
    line = sealed.readline(4096)
    try:
        header = json.loads(line)
        kdf = header["kdf"]
        if header["format"] != FORMAT or kdf["name"] != "scrypt" or header["chunk"] != CHUNK:
            raise ValueError
        n, r, p, salt = int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), bytes.fromhex(kdf["salt"])
        if len(bytes.fromhex(header["nonce_prefix"])) != _PREFIX:
            raise ValueError
        version = header["version"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackupError(f"{source} is not a counterbox backup") from None
    if version != VERSION:
        raise BackupError(f"{source} is a counterbox backup of format version {version}; "
                          f"this counterbox reads version {VERSION}")
    if not (1 < n and n & (n - 1) == 0 and r >= 1 and p >= 1 and r * p <= 64 and 128 * n * r <= _MOST_MEMORY):
        raise BackupError(f"{source} asks for a key derivation this box will not run (scrypt n={n} r={r} p={p})")
    return line, *_derive(passphrase, salt, n, r, p)


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", number, last)


def _write_sealed(snapshot: Path, target: Path, header: bytes, key: bytes) -> None:
    aead, prefix = AESGCM(key), bytes.fromhex(json.loads(header)["nonce_prefix"])
    aside = target.with_name(f".{target.name}.{os.getpid()}.new")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with _disk(target.parent, "written"), os.fdopen(fd, "wb") as out, snapshot.open("rb") as plain:
            out.write(header)
            chunk, number = plain.read(CHUNK), 0
            while True:
                following = plain.read(CHUNK)
                out.write(aead.encrypt(_nonce(prefix, number, not following), chunk, header))
                if not following:
                    break
                chunk, number = following, number + 1
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, target)  # whole or not at all, and never over a file made meanwhile
        except FileExistsError:
            raise BackupError(f"{target} exists; a backup is written to a new file") from None
    finally:
        os.unlink(aside)
    sync_directory(target.parent)


def _open_stream(sealed: BinaryIO, plain: BinaryIO, source: Path, header: bytes, key: bytes) -> None:
    aead, prefix = AESGCM(key), bytes.fromhex(json.loads(header)["nonce_prefix"])
    block, number = sealed.read(CHUNK + _TAG), 0
    while True:
        following = sealed.read(CHUNK + _TAG)
        try:
            plain.write(aead.decrypt(_nonce(prefix, number, not following), block, header))
        except InvalidTag:
            raise BackupError(f"{source} does not open with this passphrase, or it was altered or cut short; "
                              "nothing was restored") from None
        if not following:
            break
        block, number = following, number + 1
    plain.flush()
    os.fsync(plain.fileno())
