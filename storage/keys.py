"""Where the journal's 256-bit data key comes from.

A systemd credential wins when the service has one ($CREDENTIALS_DIRECTORY/NAME,
set up with LoadCredentialEncrypted= so the key is sealed to the device's TPM
or host key); otherwise a key file, created with mode 0600 the first time the
journal itself is created, and never silently re-created later: a fresh key
for an existing journal would only make its data unreadable.

With a credential, the outer key is derived from it and the journal's own share
(``data.key.share``, made with the journal): the service cannot destroy the
credential, so an erase destroys the share, and the credential alone opens
nothing of that journal, in whatever blocks its files left.
"""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import DataKeyError

KEY_SIZE = 32
_CHUNK = 1 << 20  # bytes zeroed per write


def _read(path: Path, origin: str) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as error:
        raise DataKeyError(f"cannot read the data key {origin} {path}: {error.strerror}") from None
    if len(key) != KEY_SIZE:
        raise DataKeyError(f"the data key {origin} {path} holds {len(key)} bytes, not {KEY_SIZE}: it is not a counterbox data key")
    return key


def read_key_file(path: Path) -> bytes:
    """A 32-byte key from a file given on the command line (a new outer key, say)."""
    return _read(path, "in")


def share_file(key_file: Path) -> Path:
    """Beside a systemd credential, the journal's own share of its outer key: the file an erase destroys,
    since the service cannot destroy the credential (and the box's next life runs under it)."""
    return key_file.with_name(f"{key_file.name}.share")


def with_share(credential: bytes, share: bytes) -> bytes:
    """The outer key made of a credential and a journal's share: neither alone opens the journal."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=share,
                info=b"counterbox journal outer key v1").derive(credential)


def new_outer_key(*, key_file: Path, credential: str, new: bytes) -> bytes:
    """The outer key a re-wrap to ``new`` (a key file's, or a credential's content) makes: with a credential
    and the journal's share, the two together, as ``load_data_key`` will make them."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    share = share_file(key_file)
    if credentials and credential and (Path(credentials) / credential).exists() and share.exists():
        return with_share(new, _read(share, "share in"))
    return new


def load_data_key(*, key_file: Path, credential: str, create: bool) -> bytes:
    """Return the data key; create ``key_file`` (or, with a credential, the journal's share) only when
    ``create`` (the journal does not exist yet). A journal made under a credential before shares were
    is opened by the credential alone."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and credential and not (Path(credentials) / credential).exists():
        # systemd gave this process credentials, and not the one named: a name misspelt on either side would
        # make (or open) a plain key file beside the journal instead of the sealed one.
        raise DataKeyError(f"[storage] credential {credential!r} is not among the systemd credentials this process "
                           f"was given ({', '.join(_names(Path(credentials))) or 'none'} in {credentials}): check "
                           f"its name here and in the unit's LoadCredentialEncrypted=, or set credential = \"\" to "
                           f"use the key file {key_file}")
    if credentials and credential:
        sealed = _read(Path(credentials) / credential, "from systemd credential")
        share = share_file(key_file)
        if share.exists():
            return with_share(sealed, _read(share, "share in"))
        if not create:
            return sealed  # a journal made before shares were (one whose share is gone: agent.daemon says so)
        try:
            write_secret(share, made := os.urandom(KEY_SIZE))
        except FileExistsError:
            made = _read(share, "share in")  # another process starting beside us made it first
        except OSError as error:
            raise DataKeyError(f"cannot create the data key's share {share}: {error.strerror}") from None
        return with_share(sealed, made)
    if key_file.exists():
        return _read(key_file, "in")
    if not create:
        raise DataKeyError(
            f"the data key {key_file} is missing but the journal exists: restore the key file "
            f"(or provide the systemd credential {credential!r}); a new key could not read the journal"
        )
    key = os.urandom(KEY_SIZE)
    try:
        write_secret(key_file, key)
    except FileExistsError:
        return _read(key_file, "in")  # another process starting beside us made it first: use that one
    except OSError as error:
        raise DataKeyError(f"cannot create the data key {key_file}: {error.strerror}") from None
    return key


def _names(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in directory.iterdir())
    except OSError:
        return []


def leftovers(path: Path, what: str) -> list[Path]:
    """What processes now gone (killed, cut by a power cut) left beside ``path`` while making it: files
    ``.NAME.PID.WHAT`` (and SQLite's ``-wal``, ``-shm``, ``-journal`` of them), never put in place.
    A process of that pid alive now keeps its own (a pid from before a reboot may be another's: kept too)."""
    found = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.{glob.escape(what)}*"):
        pid = candidate.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            found.append(candidate)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 holding ``data``, durably; FileExistsError if it exists.

    The file and its directory entry are both fsynced: a key lost to a power cut
    right after it was made would leave a journal or an identity nobody can open.
    The file appears whole or not at all (written aside, then linked into place),
    so a process reading it beside us never sees it half written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the directory goes: not "the key exists", which it does not
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
    for stale in leftovers(path, "new"):  # a copy of a secret, left by a process killed while it wrote it
        destroy_secret(stale)
    aside = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(aside, path)  # atomic, and refuses (FileExistsError) to replace what is there
    finally:
        os.unlink(aside)
    sync_directory(path.parent)


def destroy_secret(path: Path, *, keep: bool = False) -> bool:
    """Overwrite a secret file with zeros, make that durable, and remove it (``keep``: leave the zeros,
    the file standing for something else): what was encrypted under it cannot be read again. False
    when there was no such file."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        # In place, a chunk at a time: a journal's files are erased this way too, and may be large.
        size, chunk = os.fstat(fd).st_size, b"\0" * min(_CHUNK, os.fstat(fd).st_size)
        for offset in range(0, size, _CHUNK):
            os.pwrite(fd, chunk[:size - offset], offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not keep:
        os.unlink(path)
        sync_directory(path.parent)
    return True


def sync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

