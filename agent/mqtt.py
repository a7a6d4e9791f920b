"""One small asyncio surface over paho-mqtt (MQTT v5), for the agent and for central.

paho's client runs on the caller's event loop (its socket is watched with
add_reader/add_writer, as paho documents for external loops), so there is no
network thread and no select() limit; this module turns paho's callbacks and
reason codes into awaitables, an async iterator and exceptions:

    async with MqttLink(host="127.0.0.1", port=1883, client_id="shop-0001",
                        subscriptions=["counterbox/v1/devices/shop-0001/ack"]) as link:
        await link.connected.wait()
        await link.publish("counterbox/v1/devices/shop-0001/batch", payload)  # raises PublishRefused
        async for message in link.messages():
            ...

The link connects in the background and reconnects for as long as it is
open, with exponential backoff and jitter (``Backoff``), so a fleet that lost
its broker does not come back in one stampede. A PUBACK is only the broker's
receipt, and a refused publish (reason code 135, not authorized, for one)
arrives as a PUBACK too: ``publish`` raises on those. Delivery is counted
elsewhere, on central's acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import logging
import random
import socket
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path


def _import_on_first_use(name: str) -> None:
    """Put a stand-in for module ``name`` in ``sys.modules`` that imports the real one when an
    attribute is first asked of it, and hands on every attribute asked of it from then on
    (PEP 562's module ``__getattr__``), so whoever holds the stand-in sees the real module as it is.

    paho imports ``urllib.request`` (and with it http.client, email, tempfile: 40 modules, about
    2 MiB resident) only to read proxy settings when PySocks is installed, which a box never has,
    and ``uuid`` only for a client id the link always gives.
    """
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    spec = importlib.util.find_spec(name)  # imports the parent package only
    if spec is None:
        return
    stand_in = types.ModuleType(name)
    stand_in.__spec__ = spec
    lock = threading.RLock()  # two threads asking at once import it once; the importing one may ask again

    def __getattr__(attribute: str):
        with lock:
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            real = importlib.import_module(name)
        return getattr(real, attribute)

    stand_in.__getattr__ = __getattr__
    sys.modules[name] = stand_in
    if parent:
        setattr(sys.modules[parent], child, stand_in)


_import_on_first_use("urllib.request")
_import_on_first_use("uuid")

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

logger = logging.getLogger(__name__)


# Bytes a second the slowest link a box may have carries (a poor mobile connection): a publish waits for
# its answer publish_timeout, and as long as its bytes take at this pace on top.
SLOWEST_LINK = 16 * 1024

# Messages that may wait in the inbox while one arrives at QoS 0, which no in-flight window holds back.
INBOX_AT_MOST_QOS0 = 1000


class MqttError(Exception):
    """Root of the link's errors."""


class NotConnected(MqttError):
    """The link is down; the message was not handed to the broker."""


class PublishRefused(MqttError):
    """The broker answered the publish with a failure reason code."""


class NoReceipt(MqttError):
    """The broker, still connected, did not answer the publish in time; it may yet have it."""


class TooLarge(MqttError):
    """Larger than the broker takes (the Maximum Packet Size of its CONNACK): not sent, for the broker would
    end the connection over it."""


def publish_size(topic: str, payload: bytes, qos: int, properties: Properties | None) -> int:
    """The bytes of an MQTT 5 PUBLISH packet: what a broker's Maximum Packet Size is measured against."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + (len(properties.pack()) if properties else 1) \
        + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4) + remaining


@dataclass(frozen=True)
class Backoff:
    """Seconds between connection attempts: ``first`` doubling up to ``most``, each drawn at random
    from its upper half (jitter), so devices that lost the broker together do not return together."""

    first: float = 0.1
    most: float = 10.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.most, self.first * 2 ** min(attempt, 32))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Session:
    """MQTT v5 session settings: a clean session (the agent: its journal is its queue), or a persistent
    one that the broker keeps ``expiry`` seconds while the client is away (central: batches wait for it)."""

    persistent: bool = False
    expiry: int = 0  # seconds


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    mid: int = 0
    retain: bool = False  # a retained message the broker had kept, sent on subscribing: not live
    qos: int = 1  # as it came: one that came at QoS 0 is answered with nothing (a PUBACK would end the link)
    _client: object = field(default=None, repr=False, compare=False)  # the connection it came on


@dataclass(kw_only=True)
class MqttLink:
    host: str
    port: int
    client_id: str
    subscriptions: list[str] = field(default_factory=list)
    keepalive: int = 30
    session: Session = field(default_factory=Session)
    backoff: Backoff = field(default_factory=Backoff)
    # Acknowledge each message only when ``ack`` is called: the broker then holds what is not yet
    # handled (and redelivers it after a crash), and sends no more unacknowledged messages than its
    # max_inflight_messages, so a backlog waits at the broker, not in this process's memory.
    manual_ack: bool = False
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    # Counts connections; a change tells the uplink its in-flight batches may be lost.
    generation: int = 0
    connected_at: float = 0.0  # the loop's time of the latest CONNACK
    # The largest packet the broker takes on this connection (its CONNACK's Maximum Packet Size, MQTT 5;
    # Mosquitto's max_packet_size), None when it sets none.
    max_packet: int | None = None
    # Called on the loop after each CONNACK (after ``connected`` is set): for those who must act on
    # a new connection at once rather than notice it at their next look.
    on_connect: list[Callable[[], None]] = field(default_factory=list)
    # The last will (topic, payload), made afresh for each connection (a signed message carries its
    # time); published retained by the broker when the connection ends, and asked for at close.
    will: Callable[[], tuple[str, bytes]] | None = None
    # The broker's access control: credentials (a device's are its id and broker_password), and TLS
    # verified against this CA file (the production broker); None: plain TCP (the development broker).
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    publish_timeout: float = 60.0  # seconds for the broker's PUBACK, the connection up

    async def __aenter__(self) -> "MqttLink":
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._waiting: dict[int, asyncio.Future] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._dropped = 0  # QoS 0 messages dropped with the inbox full
        self._client: paho.Client | None = None
        self._down: asyncio.Future | None = None
        self._misc: asyncio.Task | None = None
        self._sock: socket.socket | None = None
        self._fd = -1  # the socket's number as watched: paho may have closed the socket itself
        self._closed = False
        self._subscribing: dict[int, str] = {}
        self._tls = None  # one TLS context for every connection of the link
        self._runner = asyncio.create_task(self._keep_connected(), name=f"mqtt {self.client_id}")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect and stop reconnecting. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._runner.cancel()
        try:
            await asyncio.wait([self._runner])  # its end, not ours: a cancellation of the caller goes on
        finally:
            # Even when the caller is cancelled again meanwhile (a second SIGTERM): a link left connected
            # here would be pinged and watched with nobody to close it.
            client, self._client = self._client, None
            housekeeping = self._misc
            if client is not None:
                if client.is_connected():
                    # With a will: "disconnect with will message" (4), so a stop is announced like a loss.
                    client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4) if self.will else None)
                    client.loop_write()  # a clean DISCONNECT, flushed now: the loop will not watch this socket again
                self._drop(client)
            self.connected.clear()
            self._fail_waiting(NotConnected("link closed"))
            if housekeeping is not None:
                await asyncio.wait([housekeeping])  # cancelled by the drop: ended before close returns

    def _new_client(self) -> paho.Client:
        # A new client per connection: paho keeps nothing of a lost connection (no in-flight
        # messages to send again on its own; the journal is the only queue, the uplink resends).
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5,
                             reconnect_on_failure=False, manual_ack=self.manual_ack)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.ca_file is not None:
            if self._tls is None:
                import ssl  # imported where TLS is used

                try:
                    self._tls = ssl.create_default_context(cafile=str(self.ca_file))
                except ssl.SSLError as error:
                    raise OSError(f"the broker's CA file {self.ca_file} holds no certificate it can use "
                                  f"({error.reason})") from None
                except OSError as error:
                    raise OSError(f"the broker's CA file {self.ca_file}: {error.strerror}") from None
                self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            client.tls_set_context(self._tls)
        return client

    # -- what the rest of counterbox sees ---------------------------------------

    async def next_connection(self, generation: int, *, within: float) -> bool:
        """Wait for a connection newer than ``generation``: True once it is up, False after ``within``
        seconds without one. For who says something on each connection and repeats it meanwhile."""
        if self.generation != generation:
            return True
        arrived = asyncio.Event()
        self.on_connect.append(arrived.set)
        try:
            async with asyncio.timeout(within):
                await arrived.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.on_connect.remove(arrived.set)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      expires_at: float | None = None) -> None:
        """Publish and wait for the broker's PUBACK; raise NotConnected or PublishRefused. ``expires_at`` (a
        time): the broker drops the message then (MQTT 5 message expiry), retained copy included."""
        info = self._send(topic, payload, qos, retain, expires_at)
        # paho runs on this loop: its PUBACK cannot be handled before the future is registered.
        future = self._waiting[info.mid] = self._loop.create_future()
        try:
            # A broker that keeps the connection (it answers pings) but never answers this: the caller
            # goes on (the uplink sends again) rather than waiting for the connection to die.
            # Its bytes must cross first: a slow link (16 KiB/s) may take minutes over a large one.
            within = self.publish_timeout + len(payload) / SLOWEST_LINK
            async with asyncio.timeout(within):
                await future
        except TimeoutError:
            self._waiting.pop(info.mid, None)
            raise NoReceipt(f"no answer from {self.host}:{self.port} to a publish within {within:.1f}s") from None

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Hand a message to the broker without waiting for its receipt; NotConnected when the link is down."""
        self._send(topic, payload, qos, retain, None)

    def ack(self, message: Message) -> None:
        """With ``manual_ack``: the message is handled; the broker may forget it. A message that came
        on a connection since lost is left alone: the broker sends it again on the next one."""
        if self.manual_ack and message._client is self._client and self._client is not None:
            self._client.ack(message.mid, message.qos)  # (paho's: nothing for QoS 0)

    async def messages(self) -> AsyncIterator[Message]:
        """Every message on the subscribed topics, in the order they arrive, across reconnections."""
        while True:
            yield await self._inbox.get()

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool,
              expires_at: float | None) -> paho.MQTTMessageInfo:
        if self._client is None or not self.connected.is_set():
            raise NotConnected(f"not connected to {self.host}:{self.port}")
        properties = None
        if expires_at is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, min(int(expires_at - time.time()), 2 ** 32 - 1))
        size = publish_size(topic, payload, qos, properties)
        if self.max_packet is not None and size > self.max_packet:
            raise TooLarge(f"a message of {size} bytes to {topic} is over the {self.max_packet} bytes the broker "
                           f"{self.host}:{self.port} takes (its max_packet_size): not sent")
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:  # (the link went as this was handed over)
            raise NotConnected(f"not connected to {self.host}:{self.port}: publish not sent")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish not sent: {paho.error_string(info.rc)}")
        return info

    # -- connecting ------------------------------------------------------------

    async def _keep_connected(self) -> None:
        attempt, warned = 0, False
        properties = None
        if self.session.persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session.expiry
        while True:
            try:
                client = self._client = self._new_client()
            except OSError as error:  # the CA file missing or not a CA: said, and tried again until it is one
                (logger.debug if warned else logger.error)("MQTT link to %s:%d cannot be set up: %s", self.host,
                                                           self.port, error)
                warned = True
                await asyncio.sleep(self.backoff.most)
                continue
            if self.will is not None:
                try:
                    will_topic, will_payload = self.will()
                except Exception as error:  # never the link's end: it connects without one, and says so
                    logger.error("MQTT link to %s:%d: no last will this time (%s)", self.host, self.port, error)
                else:
                    client.will_set(will_topic, will_payload, qos=1, retain=True)
            self._down = self._loop.create_future()
            try:
                # Name lookup and the TCP handshake block: in a thread, never on the loop.
                await self._loop.run_in_executor(None, functools.partial(
                    client.connect, self.host, self.port, keepalive=self.keepalive,
                    clean_start=not self.session.persistent, properties=properties))
                reason = await self._down
            except (OSError, paho.WebsocketConnectionError, ValueError) as error:
                reason = error
            self._client = None
            self._drop(client)
            if self.connected.is_set():
                self.connected.clear()
                # Only a connection that lasted starts the backoff again: one the broker ends right after
                # its CONNACK (another client with this id, a refusal that costs the connection) is a
                # failed attempt, or two clients would take the id from each other many times a second.
                if self._loop.time() - self.connected_at >= self.backoff.most:
                    attempt, warned = 0, False
            self._fail_waiting(NotConnected(f"connection lost: {reason}"))
            # A broker that stays away is logged once, not at every attempt.
            (logger.debug if warned else logger.warning)(
                "broker %s:%d unavailable (%s); reconnecting with backoff", self.host, self.port, reason)
            warned = True
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    def _lost(self, client: paho.Client, reason: object) -> None:
        if client is self._client and self._down is not None and not self._down.done():
            self._down.set_result(reason)

    # -- paho's callbacks (all on the loop, except on_socket_open and register_write during connect) ----

    def _on_connect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            self._lost(client, f"the broker refused the connection: {reason_code}")  # logged once, with backoff
            return
        self._subscribing = {}
        self.max_packet = getattr(properties, "MaximumPacketSize", None)
        for topic in self.subscriptions:
            _, mid = client.subscribe(topic, qos=1)
            self._subscribing[mid] = topic
        logger.info("connected to broker %s:%d as %s", self.host, self.port, self.client_id)
        self.generation += 1
        self.connected_at = self._loop.time()
        self.connected.set()
        for listener in list(self.on_connect):
            try:
                listener()
            except Exception:  # one listener's fault is its own: the connection and the others go on
                logger.exception("on_connect listener %r failed", listener)

    def _on_subscribe(self, client, userdata, mid: int, reason_codes: list[ReasonCode], properties) -> None:
        topic = self._subscribing.pop(mid, "?")
        if any(code.is_failure for code in reason_codes):
            logger.warning("subscription to %s refused by the broker: %s", topic, ", ".join(map(str, reason_codes)))
        else:
            logger.info("subscribed to %s", topic)

    def _on_disconnect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        self._lost(client, reason_code)

    def _on_publish(self, client, userdata, mid: int, reason_code: ReasonCode, properties: Properties) -> None:
        future = self._waiting.pop(mid, None)
        if future is not None:  # else a publish_nowait
            self._settle(future, reason_code)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        if message.qos == 0 and self._inbox.qsize() >= INBOX_AT_MOST_QOS0:
            # At QoS 1 the broker sends no more than its in-flight window until we acknowledge; at QoS 0
            # nothing holds a flood back but this (the protocol's messages are QoS 1: a sender that wants
            # it delivered sends again).
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                logger.warning("inbox full: %d QoS 0 messages dropped (latest on %s)", self._dropped, message.topic)
            return
        self._inbox.put_nowait(Message(message.topic, message.payload, message.mid, retain=bool(message.retain),
                                         qos=message.qos, _client=client))

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._loop.call_soon_threadsafe(self._watch, client, sock)

    def _watch(self, client: paho.Client, sock) -> None:
        if client is not self._client:
            client._sock_close()  # a connection given up (the link closed) while it was being made
            return
        self._sock, self._fd = sock, sock.fileno()
        # Batches, PUBACKs and acknowledgements are small packets written back to back: with
        # Nagle's algorithm the second waits for the peer's delayed ACK of the first (40 ms).
        with contextlib.suppress(OSError):  # not a TCP socket: nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(self._fd, self._readable, client)
        self._misc = self._loop.create_task(self._housekeeping(client))

    def _readable(self, client: paho.Client) -> None:
        rc = client.loop_read()
        # TLS may hold decrypted bytes the socket no longer signals: read them now, or they wait.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and getattr(self._sock, "pending", lambda: 0)():
            rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost(client, paho.error_string(rc))

    def _on_socket_close(self, client, userdata, sock) -> None:
        # paho calls this just before it closes the socket: stop watching its number now, on the
        # loop, before the number can be reused (from connect's thread, the loop does it next).
        if threading.get_ident() == self._loop_thread:
            self._unwatch(sock)
        else:
            self._loop.call_soon_threadsafe(self._unwatch, sock)
        self._loop.call_soon_threadsafe(self._lost, client, "socket closed")

    def _unwatch(self, sock) -> None:
        if sock is self._sock and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._sock, self._fd = None, -1

    def _on_socket_register_write(self, client, userdata, sock) -> None:
        self._loop.call_soon_threadsafe(self._want_write, client, sock)

    def _want_write(self, client: paho.Client, sock) -> None:
        if client is self._client and sock is self._sock and self._fd >= 0:
            self._loop.add_writer(self._fd, self._writable, client)

    def _writable(self, client: paho.Client) -> None:
        rc = client.loop_write()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost(client, paho.error_string(rc))

    def _on_socket_unregister_write(self, client, userdata, sock) -> None:
        if sock is self._sock and self._fd >= 0:
            self._loop.remove_writer(self._fd)

    async def _housekeeping(self, client: paho.Client) -> None:
        # Keepalive pings and retries of unacknowledged packets.
        while client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)
        self._lost(client, "keepalive")

    def _drop(self, client: paho.Client) -> None:
        with contextlib.suppress(Exception):
            client._sock_close()  # paho keeps its socket after a failed read; closing it unwatches it
        self._unwatch(self._sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _settle(future: asyncio.Future, reason_code: ReasonCode) -> None:
        if future.done():
            return
        if reason_code.is_failure:
            future.set_exception(PublishRefused(f"broker refused the publish: {reason_code} ({reason_code.value})"))
        else:
            future.set_result(None)

    def _fail_waiting(self, error: MqttError) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
