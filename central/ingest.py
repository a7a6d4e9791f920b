"""Central's ingest: verify each device's signed batches, store each event once, acknowledge.

A batch that is forged, altered, signed by another key, too big, or
inconsistent with its topic is rejected with a logged reason and stores
nothing. The wire contract is provisioning.protocol, the same module the
devices use; any JOSE library verifies the same tokens (docs/protocol.md).

    ingest = Ingest(store=CentralStore(path), signing_key=key)
    await ingest.serve(host="127.0.0.1", port=1883)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.mqtt import Backoff, Message, MqttError, MqttLink, Session
from provisioning import activation, protocol
from provisioning.errors import IdentityError, ProtocolError
from provisioning.identity import parse_public_key

from . import broker
from .broker import BrokerAdmin
from .errors import ActivationRefused, Busy, CentralError, Rejected
from .retained import Keeper
from .store import CentralStore

logger = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600  # seconds the broker keeps batches for central while it is away
# Central comes back quickly after a broker restart: its backoff stays short.
RECONNECT = Backoff(first=0.05, most=1.0)
# A device whose clock differs from central's by more than this is flagged (log, report).
CLOCK_TOLERANCE = 60.0  # seconds
GRANTS_AGAIN = 30.0  # seconds between attempts to bring central's role at the broker up to date
# How long past its grace a revoked box that took its revocation may still talk before central removes its
# broker access without its farewell.
OVERDUE = 3600.0  # seconds
QUEUE_SETTLE = 5.0  # seconds after central connects during which a status may have been queued for it
# Messages one ingest handles at once on PostgreSQL: one is verified while the server stores another,
# so the process does not stand idle through each commit. On SQLite one: its writers take turns at the
# file's lock, and a second would only wait there.
POSTGRESQL_WORKERS = 2


@dataclass(frozen=True)
class Cleared:
    topic: str


@dataclass(frozen=True)
class Waiting:
    device_id: str


@dataclass(frozen=True)
class Answered:
    device_id: str
    accepted: bool
    reason: str
    region: str = ""
    broker_password: str = field(default="", repr=False)
    again: bool = False  # a box central holds active, waiting: its acceptance sent again (it is admitted already)


@dataclass(frozen=True)
class StatusReceived:
    device_id: str
    state: str
    clock_offset: float | None  # from a live online status only
    cut_off: bool = False  # a revoked device says it erases itself now: its broker access goes


@dataclass(frozen=True)
class Accepted:
    device_id: str
    first_seq: int
    last_seq: int
    added: int
    acked_seq: int


class Ingest:
    def __init__(self, *, store: CentralStore, signing_key: Ed25519PrivateKey,
                 topic_prefix: str = protocol.DEFAULT_PREFIX):
        self.store = store
        self.signing_key = signing_key
        self.prefix = topic_prefix
        self._keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self._admin: BrokerAdmin | None = None
        # Devices heard from as active in this run, whose retained activation acceptance (if any) is cleared.
        self._past_activation: set[str] = set()

    def handle(self, message: Message, settled: bool = True) -> tuple[Any, tuple[str, bytes] | None]:
        """Verify and store one batch or status; return the result and, for a batch, the
        acknowledgement (topic, token) to publish.

        Blocking (SQLite): ``serve`` runs it in central's store thread.
        """
        received_at = time.time()
        if not message.payload:
            return Cleared(message.topic), None  # a retained message cleared by its sender
        if message.topic.startswith(f"{self.prefix}/activation/"):
            return self._activation(message, received_at)
        try:
            device_id, leaf = protocol.parse_device_topic(self.prefix, message.topic)
            key = self._public_key(device_id)
            if leaf == "status":
                status = protocol.decode_status(message.payload, device=device_id, key=key)
            else:
                batch = protocol.decode_batch(message.payload, device=device_id, key=key)
        except ProtocolError as error:
            raise Rejected(str(error)) from None
        if leaf == "status":
            live = not message.retain
            self.store.record_status(device_id, status, received_at=received_at, live=live, clocked=settled,
                                     queued_at_most=SESSION_EXPIRY)
            offset = status["sent_at"] - received_at if live and settled and status["state"] == "online" else None
            # Any farewell, the newest or not (its connection's will may be handled first, two at once), and
            # a retained one sent again as central subscribes: a cut-off that failed is tried again then.
            cut_off = self._done(device_id, status)
            return StatusReceived(device_id, status["state"], offset, cut_off), None
        try:
            # Its sending time, by the box's clock like its scans' ("" when unreadable): how long
            # the box held each sale, whatever its clock is off by (upload success).
            sent_at = protocol.parse_rfc3339(batch.sent_at) if batch.sent_at else None
            added, acked = self.store.add_events(device_id, batch.session, batch.events, journal=batch.journal,
                                                 base_seq=batch.base_seq, sent_at=sent_at, token=message.payload)
        except RecursionError:  # within the protocol's size, but deeper than a store writes JSON
            raise Rejected(f"batch seq {batch.first_seq}..{batch.last_seq}: an event's body nests too deeply "
                           "to be stored") from None
        result = Accepted(device_id, batch.first_seq, batch.last_seq, added, acked)
        ack = protocol.encode_ack(device_id, acked, key=self.signing_key, journal=batch.journal,
                                  event=self._event_at(device_id, acked, batch))
        return result, (protocol.ack_topic(self.prefix, device_id), ack)

    def _event_at(self, device_id: str, seq: int, batch: protocol.Batch) -> str | None:
        """The digest of the device's event at ``seq`` as central holds it: from the batch when it carries
        that seq (central refuses a batch whose events differ from those it holds), else from the store.
        None where the device holds none at it (delivered by another device of its journal, or seq 0)."""
        if batch.first_seq <= seq <= batch.last_seq:
            event = batch.events[seq - batch.first_seq]
            return protocol.event_digest(seq, event["kind"], event["body"])
        held = self.store.event_at(device_id, seq) if seq else None
        return protocol.event_digest(seq, *held) if held is not None else None

    def _activation(self, message: Message, received_at: float) -> tuple[Any, tuple[str, bytes] | None]:
        """A waiting box's hello (noted), or its activation request (answered, signed, on its result topic)."""
        try:
            if message.topic.endswith("/hello"):
                device_id = activation.device_of_topic(self.prefix, message.topic, "hello")
                hello = activation.decode_hello(message.payload, device=device_id)
                held = None if message.retain else self.store.activation_held(device_id, hello["public_key"],
                                                                              admitted=self._admin is not None)
                if held is not None:
                    # Active here, and the box says it waits: central's acceptance never reached it (the
                    # broker lost it, or the box its request). Answered again, as its own request would be.
                    code_id, shop = held
                    result = {"accepted": True, "code": code_id, "shop": shop.licence, "name": shop.name,
                              "region": shop.region, "monitoring": shop.monitoring}
                    answer = activation.encode_result(device_id, result, key=self.signing_key)
                    return (Answered(device_id, True, "", shop.region, again=True),
                            (activation.topic(self.prefix, device_id, "result"), answer))
                seen_at = min(received_at, _said_at(hello)) if message.retain else received_at
                self.store.waiting(device_id, hello["public_key"], hello["agent_version"], seen_at,  # both checked
                                   retained=message.retain)
                return Waiting(device_id), None
            device_id = activation.device_of_topic(self.prefix, message.topic, "request")
            request = activation.decode_request(message.payload, device=device_id)
            code, public_key = request.code, request.public_key
            code_id = activation.code_id_of(code)
        except ProtocolError as error:
            raise Rejected(str(error)) from None
        try:
            shop = self.store.activate(code_id, code, device_id=device_id, public_key=public_key, now=received_at)
            result = {"accepted": True, "code": code_id, "shop": shop.licence, "name": shop.name,
                      "region": shop.region, "monitoring": shop.monitoring}
        except ActivationRefused as refused:
            result = {"accepted": False, "code": code_id, "reason": str(refused)}
        answer = activation.encode_result(device_id, result, key=self.signing_key)
        return (Answered(device_id, result["accepted"], result.get("reason", ""), result.get("region", ""),
                         request.broker_password), (activation.topic(self.prefix, device_id, "result"), answer))

    def _done(self, device_id: str, status: dict[str, Any]) -> bool:
        """A revoked box's access goes once it says (signed) that it erases itself now: it has handed in all it
        could, or its grace is up, and will never send again. Not on its going offline: a box cut off
        before it took central's acknowledgement (a power cut just after its last batch) could not learn it,
        and would wait out its grace to say them lost; nor on a routine status saying it holds everything,
        after which it may record more (a snapshot, a timeout) to hand in."""
        if self.store.device(device_id).revoked_at is None:
            return False
        if status.get("erasing") is True:
            return True
        # One that took its revocation and still talks long past its grace never erases itself (a box of an
        # earlier version, or one made to stay): its access goes all the same.
        taken = self.store.revocation_taken(device_id)
        return taken is not None and time.time() > taken[0] + taken[1] + OVERDUE

    def _public_key(self, device_id: str) -> Ed25519PublicKey:
        device = self.store.device(device_id)
        if device is None:
            raise Rejected(f"device {device_id!r} is not registered")
        cached = self._keys.get(device_id)
        if cached is None or cached[0] != device.public_key:  # registered again with a new key
            try:
                key = parse_public_key(device.public_key)
            except IdentityError as error:  # registered before keys were read this strictly (small order, padded)
                raise Rejected(f"device {device_id!r}'s registered key is refused: {error}; register it "
                               "again with its key as `counterbox identity show` prints it") from None
            cached = self._keys[device_id] = (device.public_key, key)
        return cached[1]

    # -- the MQTT consumer -----------------------------------------------------

    async def serve(self, *, host: str, port: int, client_id: str = "counterbox-central", username: str | None = None,
                    password: str | None = None, ca_file: Path | None = None, broker_admin: bool = False,
                    share: str | None = None) -> None:
        """Consume batches until cancelled; a persistent session keeps what arrives while central is away.
        With ``share``, this instance is one of several sharing the subscriptions ($share/GROUP/...),
        on a clean session: the broker would keep giving a dead member its turn, so what a killed instance
        did not acknowledge is sent again by the devices (ack_timeout), and nothing is lost.
        With ``broker_admin``, central also keeps the production broker's access control (central/broker.py)."""
        workers = POSTGRESQL_WORKERS if self.store.engine.dialect.name == "postgresql" else 1
        thread = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="central-store")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if broker_admin:
                    self._admin = await stack.enter_async_context(BrokerAdmin(BrokerAdmin.link(
                        host=host, port=port, username=username, password=password, ca_file=ca_file,
                        client_id=f"{client_id}-admin")))
                await self._consume_all(thread, workers, host=host, port=port, client_id=client_id,
                                        username=username, password=password, ca_file=ca_file, share=share)
        finally:
            await asyncio.to_thread(thread.shutdown)

    async def _grants(self) -> None:
        """Central's role as this central needs it, on a broker set up by an earlier one; tried again every
        GRANTS_AGAIN seconds while it fails (a broker away), beside the ingest, which goes on meanwhile."""
        while True:
            try:
                await self._admin.bring_central_up_to_date(self.prefix)
                return
            except CentralError as error:
                logger.warning("central's role at the broker not brought up to date (%s); tried again in %.0f s",
                               error, GRANTS_AGAIN)
            await asyncio.sleep(GRANTS_AGAIN)

    async def _consume_all(self, thread: ThreadPoolExecutor, workers: int, *, host: str, port: int,
                           share: str | None, **options) -> None:
        subscriptions = [protocol.batch_subscription(self.prefix), protocol.status_subscription(self.prefix),
                         activation.subscription(self.prefix, "hello"), activation.subscription(self.prefix, "request")]
        if share:
            subscriptions = [f"$share/{share}/{topic}" for topic in subscriptions]
        session = Session() if share else Session(persistent=True, expiry=SESSION_EXPIRY)
        async with MqttLink(host=host, port=port, **options, subscriptions=subscriptions, session=session,
                            backoff=RECONNECT, manual_ack=True) as link:
            logger.info("central ingest for %s on %s:%d", protocol.batch_subscription(self.prefix), host, port)
            # Up to ``workers`` messages handled at once, acknowledged to the broker in the order they came
            # (MQTT's rule), each once handled: stored, rejected, or failed and left to the device to send
            # again. Until then the broker holds it. Two batches of one device take turns at its row's lock.
            handling: asyncio.Queue[tuple[Message, asyncio.Task]] = asyncio.Queue()
            free = asyncio.Semaphore(workers)

            async def acknowledge() -> None:
                while True:
                    message, task = await handling.get()
                    await task
                    link.ack(message)

            keeper = Keeper(store=self.store, prefix=self.prefix, thread=thread,
                            reader={"host": host, "port": port, **options, "backoff": RECONNECT})
            # A task that fails ends them all, and the ingest with its error; stopping cancels them all,
            # and what is still being handled is not acknowledged.
            async with asyncio.TaskGroup() as group:
                group.create_task(acknowledge())
                group.create_task(keeper.run(link))
                if self._admin is not None:
                    group.create_task(self._grants())
                async for message in link.messages():
                    await free.acquire()
                    task = group.create_task(self._consume(link, thread, message))
                    # A worker is free once its message is handled, not once those before it are: one waiting
                    # on its device's lock holds up no other device's.
                    task.add_done_callback(lambda _: free.release())
                    handling.put_nowait((message, task))

    def _activation_taken(self, link: MqttLink, device_id: str) -> None:
        """A device heard from as active has taken its activation: central's acceptance, retained for it while it
        could not yet, goes (anyone who may wait for activation may read the activation topics, and it names the
        shop). Once per device and run; clearing a topic that holds nothing changes nothing."""
        if device_id in self._past_activation:
            return
        try:
            link.publish_nowait(activation.topic(self.prefix, device_id, "result"), b"", qos=1, retain=True)
        except MqttError:
            return  # said again at its next batch or status
        self._past_activation.add(device_id)

    async def _consume(self, link: MqttLink, thread: ThreadPoolExecutor, message: Message) -> None:
        try:
            # Just after central (re)connects, what arrives may have waited in its queue at the broker:
            # such a status says nothing of the box's clock.
            loop = asyncio.get_running_loop()
            settled = loop.time() - link.connected_at > QUEUE_SETTLE
            result, ack = await loop.run_in_executor(thread, self.handle, message, settled)
        except Rejected as reason:
            what = message.topic.rsplit("/", 1)[-1]  # batch, status, hello or request: what central subscribes to
            logger.warning("%s rejected topic=%s bytes=%d: %s", what, message.topic, len(message.payload), reason)
            if message.topic.startswith(f"{self.prefix}/activation/"):
                # Anyone may say hello, retained (central, subscribed, hears it as live): what the broker would
                # keep of a refused one, and hand central again at each start, goes. A box's own hello comes
                # again within a minute.
                with contextlib.suppress(MqttError):
                    link.publish_nowait(message.topic, b"", qos=1, retain=True)
            return
        except Busy as error:  # not acknowledged to the device either: it sends again
            logger.warning("message not stored topic=%s: %s; the box sends it again", message.topic, error)
            return
        except Exception:
            # Not acknowledged to the device, so it sends the batch again; the consumer itself keeps running.
            logger.exception("message not stored topic=%s: internal error", message.topic)
            return
        if isinstance(result, Cleared):
            return
        if isinstance(result, Waiting):
            logger.info("device %s waits for activation", result.device_id)
            return
        if isinstance(result, Answered):
            if result.accepted and self._admin is not None and not result.again:
                try:
                    await self._admin.execute(broker.admit_commands(self.prefix, result.device_id, result.region,
                                                                    result.broker_password))
                except CentralError as error:
                    # Its code stays used by this box: when it asks again, it is admitted again.
                    logger.error("device %s not admitted at the broker: %s; it will ask again", result.device_id, error)
                    return
                try:  # noted, so that its acceptance may be sent again should the broker lose it
                    await loop.run_in_executor(thread, partial(self.store.admitted, result.device_id, at=time.time()))
                except Exception as error:  # it is admitted all the same: answered now, as any
                    logger.error("device %s admitted at the broker, but central could not note it: %s",
                                 result.device_id, error)
            if result.accepted:  # its retained acceptance goes once it is heard from as active (again)
                self._past_activation.discard(result.device_id)
            if result.again:
                logger.warning("device %s waits for activation though central holds it active: its acceptance "
                               "is sent again", result.device_id)
            elif result.accepted:
                logger.info("device %s activated", result.device_id)
            else:
                logger.warning("device %s activation refused: %s", result.device_id, result.reason)
            topic, token = ack
            try:
                # An acceptance is retained: the box may have stopped waiting (central was away) or be off, and
                # its code is used now; a refusal answers one request, asked again if it matters.
                link.publish_nowait(topic, token, qos=1, retain=result.accepted)
                if result.accepted:  # a code pushed to the box is used: it waits retained no longer
                    link.publish_nowait(activation.topic(self.prefix, result.device_id, "code"), b"", qos=1, retain=True)
            except MqttError as error:
                logger.warning("activation result for %s not sent (%s); the box asks again", result.device_id, error)
            return
        if isinstance(result, (StatusReceived, Accepted)):
            self._activation_taken(link, result.device_id)
        if isinstance(result, StatusReceived):
            logger.info("device %s %s", result.device_id, result.state)
            if result.cut_off and self._admin is not None:
                # A revoked box that erases itself now: its credentials go (before, it needed them to deliver).
                try:
                    if await self._admin.cut_off(result.device_id):
                        logger.info("device %s revoked: removed from the broker", result.device_id)
                except CentralError as error:
                    logger.error("device %s revoked, but NOT removed from the broker: %s", result.device_id, error)
            if result.clock_offset is not None and abs(result.clock_offset) > CLOCK_TOLERANCE:
                logger.warning("device %s clock is off by %+.1f s: its scans carry wrong times (no NTP?)",
                               result.device_id, result.clock_offset)
            return
        logger.info("batch accepted device=%s seq=%d..%d new=%d acked_seq=%d",
                    result.device_id, result.first_seq, result.last_seq, result.added, result.acked_seq)
        ack_topic, token = ack
        try:
            # Retained, so a device that reconnects learns at once how far central holds its events.
            link.publish_nowait(ack_topic, token, qos=1, retain=True)
        except MqttError as error:
            logger.warning("acknowledgement for %s not sent (%s); the device will send again", result.device_id, error)


def _said_at(hello: dict[str, Any]) -> float:
    """When a box's hello says it was sent; the dawn of time for one that says no time (a retained copy: it
    is no sight of the box now)."""
    try:
        return protocol.parse_rfc3339(hello.get("sent_at"))
    except ValueError:
        return 0.0
