"""A revoked box hands in what it holds within its grace, counted from when it first took its revocation: the
newest revocation's grace holds (operations revoke again to give a box with a backlog longer, or to erase it
now), and a start of the agent never begins the grace anew (a box switched off each night would never erase)."""

from __future__ import annotations

import asyncio
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import retention
from agent.config import BrokerConfig, Config, DeviceConfig, StorageConfig
from agent.counter import Counter
from agent.daemon import Box
from agent.downlink import revocation_in_force
from provisioning import protocol
from provisioning.identity import device_id_for
from storage import Journal, Store

from .test_chain import tamper

SHOP = "530102100123"


def _revoked(journal: Journal, device: str, *, grace: int, at: float, version: int = 1,
             issued: float | None = None) -> int:
    """A revocation as the downlink records it, taken ``at`` (signed ``issued``, 5 s before unless said): its
    content, then the document event saying when it was taken. The content's seq."""
    signed = at - 5 if issued is None else issued
    about = {"name": "revocation", "version": version, "issued_at": protocol.rfc3339(signed)}
    content = journal.append("revocation", {"reason": "shop closed", "grace_seconds": grace, **about})
    journal.append("document", {**about, "kind": "revocation", "kid": "ops", "content_seq": content,
                                "expires_at": protocol.rfc3339(at + 30 * 86400), "applied_at": protocol.rfc3339(at),
                                "scope": {"device": device}, "digest": "0" * 64})
    return content


def _activated(journal: Journal, device: str, at: float) -> None:
    journal.take_identity(device)
    journal.append("activation", {"device": device, "shop": SHOP, "name": "x", "region": "honghe", "monitoring": False,
                                  "code": "c0de", "kid": None, "activated_at": protocol.rfc3339(at)})


def test_the_grace_counts_from_the_first_revocation_and_is_the_newest_one_s(tmp_path):
    journal = Journal.open(tmp_path / "journal.db", b"k" * 32, create=True)
    now = time.time()
    _activated(journal, "cb-1", now - 7200)
    assert revocation_in_force(journal) is None
    _revoked(journal, "cb-1", grace=60, at=now - 3600)
    _revoked(journal, "cb-1", grace=7200, at=now - 60, version=2)
    taken_at, grace = revocation_in_force(journal)
    assert (round(taken_at), grace) == (round(now - 3600), 7200)
    journal.close()


def _box(tmp_path, store: Store, key: Ed25519PrivateKey) -> Box:
    config = Config(device=DeviceConfig(key_file=tmp_path / "device.key"),
                    storage=StorageConfig(path=tmp_path / "journal.db", key_file=tmp_path / "data.key"),
                    broker=BrokerConfig(host="127.0.0.1", port=1))  # no broker: nothing is delivered
    return Box(config=config, store=store, session=2, device_id=device_id_for(key), key=key,
               central_key=key.public_key(), counter=Counter(), trusted={})


def test_a_revoked_box_started_again_after_its_grace_ran_out_erases_now_never_after_a_new_grace(tmp_path):
    key = Ed25519PrivateKey.generate()
    device, hour_ago = device_id_for(key), time.time() - 3600

    async def scenario() -> float:
        store = await Store.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
        try:
            await store.write(lambda journal: (_activated(journal, device, hour_ago - 60),
                                               _revoked(journal, device, grace=60, at=hour_ago)))
            started = time.monotonic()
            async with asyncio.timeout(30):
                assert await _box(tmp_path, store, key).run() is True
            return time.monotonic() - started
        finally:
            await store.close()

    # Its grace ran out 59 minutes ago: on to erasing (after the few seconds it gives the broker for its farewell),
    # never a new minute counted from this start.
    assert asyncio.run(scenario()) < 15


def _with_a_backlog(tmp_path, revoked) -> object:
    """What ``revoked`` (a coroutine function given the box) returns, for a box whose events central never
    acknowledged (it is away)."""
    key = Ed25519PrivateKey.generate()

    async def scenario():
        store = await Store.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
        try:
            await store.write(lambda journal: _activated(journal, device_id_for(key), time.time()))
            return await revoked(_box(tmp_path, store, key))
        finally:
            await store.close()

    return asyncio.run(scenario())


def _delivering_while_revoked_again(tmp_path, first: float, again: float) -> bool:
    """Whether the box still waits for central to hold its events 2 s after it was revoked with grace ``first``
    and then, 0.3 s in, again with grace ``again``."""
    async def revoked(box: Box) -> bool:
        box._revocation(first, taken_at=time.time())
        delivering = asyncio.create_task(box._deliver_all())
        await asyncio.sleep(0.3)
        box._revocation(again, taken_at=time.time())
        await asyncio.wait([delivering], timeout=1.7)
        still = not delivering.done()
        delivering.cancel()
        return still

    return _with_a_backlog(tmp_path, revoked)


def test_a_longer_grace_pushed_again_keeps_a_box_with_a_backlog_delivering(tmp_path):
    assert _delivering_while_revoked_again(tmp_path, first=1.0, again=3600.0)


def test_a_revocation_again_with_no_grace_ends_the_delivery_now(tmp_path):
    assert not _delivering_while_revoked_again(tmp_path, first=3600.0, again=0.0)


def test_a_clock_put_back_since_the_revocation_gives_no_grace_longer_than_the_one_signed(tmp_path):
    """A box whose clock is behind the time it took its revocation (started before its time was set) waits out
    at most its grace from now, never an hour more."""
    async def revoked(box: Box) -> float:
        box._revocation(1.0, taken_at=time.time() + 3600)
        started = time.monotonic()
        await asyncio.wait_for(box._deliver_all(), 10)
        return time.monotonic() - started

    assert 0.8 < _with_a_backlog(tmp_path, revoked) < 3


def _revoked_while_away(tmp_path) -> tuple[Journal, int, float, float]:
    """A box that took its revocation (grace 10 days) ten minutes ago, back after 15 days away: signed long before."""
    journal = Journal.open(tmp_path / "journal.db", b"k" * 32, create=True)
    now = time.time()
    _activated(journal, "cb-1", now - 100 * 86400)
    content = _revoked(journal, "cb-1", grace=10 * 86400, at=now - 600, issued=now - 15 * 86400)
    journal.append("sale", {"code": "6901028075831", "scanned_at": protocol.rfc3339(now - 300)})  # not delivered
    return journal, content, now, protocol.parse_rfc3339(protocol.rfc3339(now - 600))


def test_a_revocation_folded_by_retention_keeps_the_time_it_was_taken(tmp_path):
    journal, content, now, taken = _revoked_while_away(tmp_path)
    journal.acknowledge(content + 1)  # central holds the revocation; the sale after it is not delivered
    assert retention.fold_old(journal, days=0.001, now=now + 10) == content + 1
    assert revocation_in_force(journal) == (taken, 10 * 86400)
    journal.close()


def test_a_revocation_whose_document_event_cannot_be_read_counts_its_grace_from_now_never_from_its_signing(tmp_path):
    """Signed 15 days before the box took it: a grace of 10 days counted from then was over before it began, and
    what the box had not delivered was erased."""
    journal, content, now, taken = _revoked_while_away(tmp_path)
    tamper(tmp_path / "journal.db", f"UPDATE events SET sealed = CAST(sealed || x'00' AS BLOB) WHERE seq = {content + 1}")
    taken_at, grace = revocation_in_force(journal)
    assert taken_at >= now and grace == 10 * 86400
    journal.close()
