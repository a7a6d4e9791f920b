"""A full disk: the event is refused with a clear error, and nothing already recorded is lost."""

import os
import subprocess

import pytest

from storage import Journal, JournalFull


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KB filesystem (tmpfs), so SQLite meets a real ENOSPC."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mountpoint)], check=True)
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_a_full_disk_refuses_the_event_and_keeps_the_rest(small_disk):
    key = os.urandom(32)
    journal = Journal.open(small_disk / "journal.db", key)
    recorded = []
    with pytest.raises(JournalFull, match="the disk is full; the event was not recorded"):
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
