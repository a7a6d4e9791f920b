"""One agent per journal: the running agent holds an exclusive lock on ``<journal>.lock``.

    with agent_lock(Path("journal.db")):   # JournalInUse if another agent holds it
        ...                                 # the agent's whole run, across an erase too

Commands (``counterbox status``, ``prices load``) read and write beside the agent
through SQLite's own locking and never take this one. Two agents on one journal
would both grab for the scanners, take the same MQTT client id from each other
at the broker, and each hold the counter's state in memory apart from the other.

The lock is the kernel's (flock): it goes with the process, however it ends, so a
box that lost power never finds a stale one. The file is never removed (removing
it while held would let a second agent lock a new file of the same name); it holds
the holder's pid, for the message that names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import JournalInUse


def lock_path(journal: Path) -> Path:
    return journal.with_name(f"{journal.name}.lock")


@contextlib.contextmanager
def agent_lock(journal: Path, *, leave: bool = True) -> Iterator[None]:
    """Hold the journal's agent lock for the block; JournalInUse, naming the holder, if another has it.
    ``leave=False``: a lock file made here goes again at the end (a restore, run as root, would leave one
    the agent's user could not open).

    Beside the path as given and, where a link leads elsewhere, beside the journal it reaches too: two
    paths to one journal are one lock, and stay so after an erase puts a journal of its own at the link."""
    with contextlib.ExitStack() as held:
        for path in dict.fromkeys([lock_path(journal).resolve(), lock_path(journal.resolve())]):
            held.enter_context(_locked(path, journal, leave=leave))
        yield


@contextlib.contextmanager
def _locked(path: Path, journal: Path, *, leave: bool) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    made = False
    try:
        try:
            fd, made = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR)
    except OSError as error:
        raise JournalInUse(f"{path}: cannot open the agent's lock file: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise JournalInUse(f"another agent is running on {journal}" + (f" (pid {holder})" if holder.isdigit() else "")
                               + ": one agent per journal; stop it first (systemctl stop counterbox-agent)") from None
        with contextlib.suppress(OSError):  # the pid is for the message only: a full disk does not stop the agent
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if made and not leave:
                os.unlink(path)  # while still held: an agent that opened it meanwhile finds it taken, and stops
    finally:
        os.close(fd)  # and with it the lock
