"""Store-and-forward: the journal's unacknowledged events, as signed batches, to the broker.

The outbox is not a table: it is every event after the journal's cursor
(``acked_seq``). The first event after a quiet spell goes out at once; while
batches are in flight, new events gather until an acknowledgement arrives, a
batch is full (``batch_max_events``, ``batch_max_bytes``) or the oldest has
waited ``batch_max_delay``. Batches are signed with the
device key (JWS, see docs/protocol.md) and published with QoS 1. They stay in
the journal until central's acknowledgement ("everything up to seq N")
arrives; as soon as a new connection is up (after a reconnect or a restart),
and after ``ack_timeout`` without progress, sending starts again from the
first unacknowledged event (each resend with no progress since waits twice as
long, up to ``RESEND_MAX``). Central stores each
(device, seq) once, so a resend never duplicates a sale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provisioning import protocol
from provisioning.errors import ProtocolError
from storage import DAMAGED, Event, StorageError, Store

from .config import UplinkConfig
from .mqtt import MqttError, MqttLink, TooLarge, publish_size

logger = logging.getLogger(__name__)

RETRY_MIN = 0.5  # seconds before publishing again after a failure; doubles per failure
RETRY_MAX = 30.0
# Resends with no acknowledgement between them wait twice as long each time, up to this: central away
# for a day then costs the broker's queue for it a few copies of the same batches, not thousands.
RESEND_MAX = 300.0  # seconds


@dataclass(kw_only=True)
class Uplink:
    store: Store
    link: MqttLink
    device_id: str
    session: int
    key: Ed25519PrivateKey
    central_key: Ed25519PublicKey
    config: UplinkConfig
    # Set by the daemon after each append and by acknowledgements: there is work.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: list[tuple[int, float]] = field(default_factory=list)  # (last_seq, sent at)
    _acked: int = 0
    _failures: int = 0  # publishes failed in a row
    _too_large: int = -1  # the connection on which an event too large for the broker was last said
    _resends: int = 0  # resends since the last acknowledgement that moved the cursor
    # The journal the events come from (batches name it; an acknowledgement of another is refused), and
    # the last of its events delivered under another identity: read from the journal as the uplink starts.
    _journal: str | None = None
    _base: int = 0
    _known: bool = False  # the cursor has been read from the journal: ``acked`` says what central holds
    # Central acknowledged less than before (see _acknowledged_less): the lowest such seq, and since when,
    # while no answer at or past what it held before has come (an older answer come last is no loss).
    _below: int | None = None
    _below_since: float = 0.0
    _again: bool = False  # send again from ``_acked``, lowered to what central holds now
    _put_back: int = 0  # answers at or past ``_acked`` so far: one during a look at a lower answer voids the look
    # Central's count, stopped short of events it lost and this box folded: each answer of it says central took a
    # batch in flight (it stores the events, it cannot count them), and ``_acked`` goes on in memory past it.
    _stuck: int = -1

    async def _know(self) -> None:
        """Read the journal's cursor and id, once (StorageError when the journal cannot be read)."""
        if not self._known:
            acked, self._journal = await self.store.read(lambda journal: (journal.acked_seq(), journal.journal_id()))
            if not self._known:  # (an acknowledgement may have read them meanwhile, and gone on from there)
                self._acked, self._known = acked, True

    async def run(self) -> None:
        failed = 0
        while True:
            try:
                await self._know()
                self._base = await self.store.read(lambda journal: journal.base_seq())
                break
            except StorageError as error:  # a read that fails now may not next time: never the agent's end
                failed += 1
                (logger.error if failed == 1 else logger.debug)("uplink: the journal cannot be read (%s); "
                                                                "trying again", error)
                await asyncio.sleep(retry_pause(failed))
        # A new connection wakes the uplink: what was in flight on the last one is sent again at once.
        listener = self.wake.set
        self.link.on_connect.append(listener)
        try:
            await self._send()
        finally:
            self.link.on_connect.remove(listener)

    @property
    def acked(self) -> int:
        """The last event central is known to hold: the journal's cursor, or past it an acknowledgement
        kept in memory while the disk had no room to write it, or below it what central holds since it
        lost events it had acknowledged (see _acknowledged_less)."""
        return self._acked

    @property
    def known(self) -> bool:
        """Whether ``acked`` is known (the uplink has read the journal's cursor)."""
        return self._known

    async def acknowledged(self, token: bytes) -> None:
        """Central's acknowledgement, as the downlink received it on this device's ack topic."""
        try:
            await self._know()  # a retained acknowledgement may come before the uplink has looked
            ack = protocol.decode_ack(token, device=self.device_id, key=self.central_key, journal=self._journal)
        except ProtocolError as error:
            logger.warning("acknowledgement refused: %s", error)
            return
        except StorageError as error:
            logger.error("acknowledgement not taken: %s", error)
            return
        seq = ack.seq
        if seq < self._acked:
            if seq == self._stuck:
                if self._in_flight:
                    self._acked = max(self._acked, self._in_flight.pop(0)[0])
                    self._resends = 0
                    self.wake.set()
            else:
                self._lower(seq)
            return
        # Central holds what it said before: a lower answer was an older one come last, or central counts on.
        self._below, self._stuck = None, -1
        self._put_back += 1
        try:
            taken = await self.store.write(lambda journal: journal.acknowledge(seq, differs=_differs(journal, ack)))
        except StorageError as error:  # a full disk, or one that fails writes (remounted read-only, worn)
            if seq <= self._acked:
                return  # held in memory already (an acknowledgement before it could not be written either)
            if not (self._in_flight and seq <= self._in_flight[-1][0]):
                logger.error("acknowledgement not taken: %s", error)
                return
            # Of a batch this uplink sent from this journal: central holds it. Kept in memory, so a backlog
            # goes on to central while the disk takes no write (it would otherwise wait behind the cursor,
            # and for good if the journal itself filled the disk); the journal's cursor is written with the
            # next acknowledgement once the disk takes one.
            logger.warning("acknowledged by central up to seq=%d, kept in memory only: %s", seq, error)
            self._resends = 0
        else:
            if taken.refused:
                logger.error("%s", taken.refused)
                return
            if taken.moved:
                logger.info("acknowledged by central up to seq=%d", seq)
                self._resends = 0
        self._acked = max(self._acked, seq)
        self._in_flight = [(last, at) for last, at in self._in_flight if last > seq]
        self.wake.set()

    def _lower(self, seq: int) -> None:
        """Note an answer below what central held before: the sender looks at it after ``ack_timeout`` (counted
        from the first such answer), unless an answer at or past what central held puts it back first."""
        if self._below is None:
            self._below_since = time.monotonic()
        if self._below is None or seq < self._below:
            self._below = seq
        self.wake.set()

    async def _acknowledged_less(self, seq: int) -> None:
        """Central acknowledged less of this journal than it did before, and for ``ack_timeout`` no answer
        put it back: its database was restored from a backup older than its last acknowledgement (or an
        older answer, of two central workers answering at once, came last and nothing came after it).
        Central may hold this journal only up to ``seq`` then, and nothing the box sends from its cursor on
        moves that: the events between go again, from the journal, which keeps them (its cursor stays where
        it is; a copy central holds already is stored once). Central's answer to them puts ``acked`` back;
        a lower one again, later, is looked at again."""
        put_back = self._put_back
        try:
            kept = await self.store.read(lambda journal: journal.read_after(seq, 1, damaged=True))
        except StorageError as error:
            logger.error("acknowledgement up to seq=%d, below the %d before: the journal cannot be read to send "
                         "the events between again (%s); looking again", seq, self._acked, error)
            self._lower(seq)
            return
        if self._put_back != put_back or seq >= self._acked:
            return  # an answer put it back meanwhile
        if kept and kept[0].seq == seq + 1:
            logger.info("central's answers stopped at seq=%d, below the %d it acknowledged before (an older answer "
                        "come last, or its database restored from an older backup): sending seq=%d..%d again", seq,
                        self._acked, seq + 1, self._acked)
            self._acked, self._again = seq, True
        else:
            # Folded here since: central's count can never pass them, but what the journal still holds after
            # them goes again, and on, each answer of that count taking a batch.
            gone = (kept[0].seq - 1) if kept else self._acked
            self._stuck = seq
            logger.error("central acknowledges up to seq=%d, below the %d it acknowledged before (its database "
                         "restored from an older backup?): seq=%d..%d are no longer in this journal (folded after "
                         "their retention days) and cannot be sent again; the events after them go to central again, "
                         "whose count of this box moves on only once it delivers as another device, from seq=%d "
                         "(docs/commands.md, Replacing a box's journal)", seq, self._acked, seq + 1, gone, self._acked)
            if gone < self._acked:
                self._acked, self._again = gone, True
        self.wake.set()

    @property
    def _ack_wait(self) -> float:
        """How long the batches in flight wait for their acknowledgement before they go again."""
        return min(self.config.ack_timeout * 2 ** min(self._resends, 16), max(RESEND_MAX, self.config.ack_timeout))

    async def _next_batch(self, after: int) -> tuple[list[Event], bool]:
        """The events of the next batch, and whether more are waiting behind them (the batch is full)."""
        cfg = self.config

        def read(journal) -> tuple[list[Event], bool]:
            events = journal.read_batch(after, max_events=cfg.batch_max_events, max_bytes=cfg.batch_max_bytes,
                                        damaged=True)
            return events, bool(events) and journal.last_seq() > events[-1].seq

        return await self.store.read(read)

    async def _send(self) -> None:
        cfg = self.config
        topic = protocol.batch_topic(cfg.topic_prefix, self.device_id)
        sending: _Sending | None = None
        while True:
            await self.link.connected.wait()
            # Cleared before reading the journal, so an append made meanwhile still wakes us.
            self.wake.clear()
            now = time.monotonic()
            if sending is None or sending.generation != self.link.generation:
                # A new connection: what was in flight on the last one may be lost, and a pause
                # after failures on it is no reason to wait on this one.
                sending, self._in_flight = _Sending(self.link.generation), []
            if self._below is not None and now - self._below_since >= cfg.ack_timeout:
                below, self._below = self._below, None
                await self._acknowledged_less(below)
            if self._again:
                sending.sent, self._in_flight, self._again = 0, [], False
            elif self._in_flight and now - self._in_flight[0][1] > self._ack_wait:
                logger.warning("no acknowledgement for %.1fs; resending from seq=%d", self._ack_wait, self._acked + 1)
                sending.sent, self._in_flight = 0, []
                self._resends += 1
            until = now + cfg.ack_timeout  # when to look again, woken or not (time.monotonic())
            if now < sending.retry_at:
                until = sending.retry_at
            elif len(self._in_flight) < cfg.max_in_flight:
                try:
                    events, full = await self._next_batch(max(sending.sent, self._acked))
                except StorageError as error:
                    # An I/O error, a busy lock held past its timeout: the events stay in the journal and
                    # are read again after a pause, as after a failed publish. Never the uplink's end.
                    sending.failed += 1
                    (logger.error if sending.failed == 1 else logger.debug)(
                        "uplink: the journal cannot be read (%s); trying again", error)
                    sending.retry_at = time.monotonic() + retry_pause(sending.failed)
                    continue
                if events and events[0].seq <= self._acked:
                    continue  # acknowledged while the journal was read: read again, from the new cursor
                if events:
                    if sending.waiting_since is None:
                        sending.waiting_since = now
                    # A quiet link sends at once; events wait for others only while earlier
                    # batches are in flight (their acknowledgement wakes us), so under load
                    # they travel together, and a backlog goes out in full batches.
                    if (not self._in_flight or full or sending.cut or len(events) >= cfg.batch_max_events
                            or now - sending.waiting_since >= cfg.batch_max_delay):
                        sent = await self._publish(topic, events)
                        if sent:
                            if sent > self._acked:  # else acknowledged while it was signed and published
                                self._in_flight.append((sent, time.monotonic()))
                            sending.sent, sending.cut, sending.failed = sent, sent < events[-1].seq, 0
                        else:
                            sending.failed += 1
                            # A fault that repeats (a broker ACL refusing us) gets a growing pause,
                            # so it floods neither the log nor the broker.
                            sending.retry_at = time.monotonic() + retry_pause(sending.failed)
                        sending.waiting_since = None
                        continue
                    until = sending.waiting_since + cfg.batch_max_delay
                else:
                    sending.waiting_since = None
            if self._in_flight:
                until = min(until, self._in_flight[0][1] + self._ack_wait)
            if self._below is not None:
                until = min(until, self._below_since + cfg.ack_timeout)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns normally when a cancellation
            # meets a wake-up in one turn of the loop, and the uplink would outlive its stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(until - now, 0.01)):
                    await self.wake.wait()

    async def _publish(self, topic: str, events: list[Event]) -> int:
        """Sign and publish ``events`` (or as many of them as fit one message); the last seq sent, or 0."""
        for event in events:
            if event.kind == DAMAGED:  # central learns of it, and the events behind it go on
                logger.error("event seq=%d (%s) sent as damaged: %s", event.seq, event.body["kind"], event.body["reason"])
        # Signing a batch of large events takes milliseconds: not on the loop.
        payload = await asyncio.to_thread(self._encode, events)
        # As many as fit one message: the protocol's, and the broker's own limit (one set below the protocol's
        # would end the connection at every batch over it, and nothing would ever go).
        while not self._fits(topic, payload) and len(events) > 1:
            events = events[: len(events) // 2]
            payload = await asyncio.to_thread(self._encode, events)
        try:
            await self.link.publish(topic, payload)
        except TooLarge as error:
            if self._too_large != self.link.generation:
                self._too_large = self.link.generation
                logger.error("event seq=%d cannot be delivered: %s. It and the events after it wait; set the "
                             "broker's max_packet_size to %d, as counterbox's broker configuration does",
                             events[0].seq, error, protocol.MAX_PACKET_BYTES)
            self._failures += 1
            return 0
        except MqttError as error:
            # Logged as a warning once, then quietly until a publish goes through.
            log = logger.warning if self._failures == 0 else logger.debug
            log("batch seq=%d..%d not published: %s", events[0].seq, events[-1].seq, error)
            self._failures += 1
            return 0
        if self._failures:
            logger.info("batches published again after %d failed attempts", self._failures)
            self._failures = 0
        logger.debug("batch published seq=%d..%d bytes=%d", events[0].seq, events[-1].seq, len(payload))
        return events[-1].seq

    def _fits(self, topic: str, payload: bytes) -> bool:
        limit = self.link.max_packet
        return len(payload) <= protocol.MAX_TOKEN_BYTES and (
            limit is None or publish_size(topic, payload, 1, None) <= limit)

    def _encode(self, events: list[Event]) -> bytes:
        return protocol.encode_batch(events, device=self.device_id, session=self.session, key=self.key,
                                     sent_at=time.time(), journal=self._journal, base_seq=self._base)


@dataclass
class _Sending:
    """The uplink's sending on one connection: a new connection starts it afresh."""

    generation: int  # the link's connection it belongs to
    sent: int = 0  # the last seq sent on it (0: from the cursor)
    waiting_since: float | None = None  # when the first event not yet sent was found (time.monotonic())
    retry_at: float = 0.0  # after a failed publish or read: nothing is tried before this time
    cut: bool = False  # the last batch was cut to fit one message: the rest is as good as a full batch
    failed: int = 0  # publishes or reads failed in a row


def _differs(journal, ack: protocol.Acknowledgement) -> bool:
    """Whether the event central names in ``ack`` is not this journal's at that seq (a copy restored from an
    older backup that recorded on before it heard central). Unknown (no event named, none here at that
    seq, or one whose seal no longer opens) is not a difference."""
    if ack.event is None or ack.seq <= journal.acked_seq():
        return False
    found = journal.read_after(ack.seq - 1, 1, damaged=True)
    if not found or found[0].seq != ack.seq or found[0].kind == DAMAGED:
        return False
    event = found[0]
    return protocol.event_digest(event.seq, event.kind, event.body) != ack.event


def retry_pause(failed: int) -> float:
    """Seconds before trying again after ``failed`` failures in a row: growing, up to RETRY_MAX. The
    downlink's documents the journal could not take wait as long."""
    return min(RETRY_MAX, RETRY_MIN * 2 ** min(failed - 1, 16))
