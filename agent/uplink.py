"""Store-and-forward: the journal's unacknowledged events, as signed batches, to the broker.

The outbox is not a table: it is every event after the journal's cursor
(``acked_seq``). Batches are cut by count (``batch_max_events``) and by time
(``batch_max_delay``), signed with the device key (JWS, see docs/protocol.md)
and published with QoS 1. They stay in the journal until central's
acknowledgement ("everything up to seq N") arrives; after a reconnect, a
restart, or ``ack_timeout`` without progress, sending starts again from the
first unacknowledged event. Central stores each (device, seq) once, so a resend
never duplicates a sale.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provisioning import jws
from storage import Event, Journal, JournalError

from .config import UplinkConfig
from .counter import rfc3339
from .mqtt import MqttError, MqttLink

logger = logging.getLogger(__name__)

BATCH_TYPE = "counterbox-batch+jws"
ACK_TYPE = "counterbox-ack+jws"

RETRY_MIN = 0.5  # seconds before publishing again after a failure; doubles per failure
RETRY_MAX = 30.0

# Runs a blocking journal call in the journal's own thread.
JournalCall = Callable[..., Awaitable[Any]]


def batch_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/devices/{device_id}/batch"


def ack_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/devices/{device_id}/ack"


def encode_batch(events: list[Event], *, device_id: str, session: int, key: Ed25519PrivateKey) -> bytes:
    payload = {
        "v": 1,
        "device": device_id,
        "session": session,
        "first_seq": events[0].seq,
        "last_seq": events[-1].seq,
        "sent_at": rfc3339(time.time()),
        "events": [{"seq": e.seq, "kind": e.kind, "body": e.body} for e in events],
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return jws.sign(body, key, kid=device_id, typ=BATCH_TYPE).encode()


def decode_ack(token: bytes, *, device_id: str, central_key: Ed25519PublicKey) -> int:
    """The acknowledged sequence number in a signed acknowledgement; raises jws.SignatureError or ValueError."""
    header, payload = jws.verify(token.decode("ascii", "replace"), central_key)
    if header.get("typ") != ACK_TYPE:
        raise ValueError(f"not an acknowledgement (typ {header.get('typ')!r})")
    ack = json.loads(payload)
    if ack.get("device") != device_id:
        raise ValueError(f"acknowledgement is for device {ack.get('device')!r}")
    seq = ack.get("ack_seq")
    if not isinstance(seq, int) or seq < 0:
        raise ValueError(f"acknowledgement carries no valid ack_seq: {seq!r}")
    return seq


@dataclass
class Uplink:
    journal: Journal
    call: JournalCall
    link: MqttLink
    device_id: str
    session: int
    key: Ed25519PrivateKey
    central_key: Ed25519PublicKey
    config: UplinkConfig
    # Set by the counter after each append and by acknowledgements: there is work.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: list[tuple[int, float]] = field(default_factory=list)  # (last_seq, sent at)
    _acked: int = 0
    _failures: int = 0  # publishes failed in a row

    async def run(self) -> None:
        self._acked = await self.call(self.journal.acked_seq)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive_acks())
            group.create_task(self._send())

    async def _receive_acks(self) -> None:
        expected = ack_topic(self.config.topic_prefix, self.device_id)
        while True:
            topic, payload = await self.link.messages.get()
            if topic != expected:
                continue
            try:
                seq = decode_ack(payload, device_id=self.device_id, central_key=self.central_key)
            except (jws.SignatureError, ValueError) as error:
                logger.warning("acknowledgement refused topic=%s: %s", topic, error)
                continue
            try:
                if await self.call(self.journal.acknowledge, seq):
                    logger.info("acknowledged by central up to seq=%d", seq)
            except JournalError as error:
                logger.error("acknowledgement refused: %s", error)
                continue
            self._acked = max(self._acked, seq)
            self._in_flight = [(last, at) for last, at in self._in_flight if last > seq]
            self.wake.set()

    async def _send(self) -> None:
        cfg = self.config
        topic = batch_topic(cfg.topic_prefix, self.device_id)
        generation = -1
        next_seq = self._acked + 1
        waiting_since: float | None = None
        while True:
            await self.link.connected.wait()
            # Cleared before reading the journal, so an append made meanwhile still wakes us.
            self.wake.clear()
            now = time.monotonic()
            if generation != self.link.generation:
                generation = self.link.generation
                next_seq, self._in_flight = self._acked + 1, []
            elif self._in_flight and now - self._in_flight[0][1] > cfg.ack_timeout:
                logger.warning("no acknowledgement for %.1fs; resending from seq=%d", cfg.ack_timeout, self._acked + 1)
                next_seq, self._in_flight = self._acked + 1, []
            next_seq = max(next_seq, self._acked + 1)
            timeout = cfg.ack_timeout
            if len(self._in_flight) < cfg.max_in_flight:
                events = await self.call(self.journal.read_after, next_seq - 1, cfg.batch_max_events)
                if events:
                    waiting_since = waiting_since or now
                    if len(events) >= cfg.batch_max_events or now - waiting_since >= cfg.batch_max_delay:
                        if await self._publish(topic, events):
                            self._in_flight.append((events[-1].seq, time.monotonic()))
                            next_seq = events[-1].seq + 1
                        waiting_since = None
                        continue
                    timeout = cfg.batch_max_delay - (now - waiting_since)
                else:
                    waiting_since = None
            if self._in_flight:
                timeout = min(timeout, max(0.0, self._in_flight[0][1] + cfg.ack_timeout - now))
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(timeout, 0.01))
            except TimeoutError:
                pass

    async def _publish(self, topic: str, events: list[Event]) -> bool:
        payload = encode_batch(events, device_id=self.device_id, session=self.session, key=self.key)
        try:
            await self.link.publish(topic, payload)
        except MqttError as error:
            # A fault that repeats (a broker ACL refusing us) is a warning once, then quiet
            # with a growing pause, so it neither floods the log nor the broker.
            log = logger.warning if self._failures == 0 else logger.debug
            log("batch seq=%d..%d not published: %s", events[0].seq, events[-1].seq, error)
            await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2**self._failures))
            self._failures += 1
            return False
        if self._failures:
            logger.info("batches published again after %d failed attempts", self._failures)
            self._failures = 0
        logger.debug("batch published seq=%d..%d bytes=%d", events[0].seq, events[-1].seq, len(payload))
        return True
