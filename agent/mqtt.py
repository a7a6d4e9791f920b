"""One small asyncio surface over paho-mqtt (MQTT v5), for the agent.

paho runs its network loop in its own thread and reports through callbacks
with reason codes; this module turns those into awaitables and exceptions:

    async with MqttLink(host="127.0.0.1", port=1883, client_id="shop-0001",
                        subscriptions=["counterbox/v1/devices/shop-0001/ack"]) as link:
        await link.connected.wait()
        await link.publish("counterbox/v1/devices/shop-0001/batch", payload)  # raises PublishRefused
        topic, payload = await link.messages.get()

A PUBACK is only the broker's receipt, and a refused publish (reason code 135,
not authorized, for one) arrives as a PUBACK too: ``publish`` raises on those.
Delivery is counted elsewhere, on central's acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

logger = logging.getLogger(__name__)


class MqttError(Exception):
    """Root of the link's errors."""


class NotConnected(MqttError):
    """The link is down; the message was not handed to the broker."""


class PublishRefused(MqttError):
    """The broker answered the publish with a failure reason code."""


@dataclass
class MqttLink:
    host: str
    port: int
    client_id: str
    subscriptions: list[str] = field(default_factory=list)
    keepalive: int = 30
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    messages: asyncio.Queue = field(default_factory=asyncio.Queue)
    # Counts connections; a change tells the uplink its in-flight batches may be lost.
    generation: int = 0

    async def __aenter__(self) -> "MqttLink":
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future] = {}
        self._early: dict[int, ReasonCode] = {}
        self._warned = False
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client = client
        client.connect_async(self.host, self.port, keepalive=self.keepalive, clean_start=True)
        client.loop_start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect and stop paho's thread. Idempotent."""
        client, self._client = getattr(self, "_client", None), None
        if client is None:
            return
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._fail_waiting(NotConnected("link closed"))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish and wait for the broker's PUBACK; raise NotConnected or PublishRefused."""
        if self._client is None or not self.connected.is_set():
            raise NotConnected(f"not connected to {self.host}:{self.port}")
        future = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish not sent: {paho.error_string(info.rc)}")
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._waiting[info.mid] = future
        if early is not None:
            self._settle(future, early)
        await future

    # -- paho's thread ---------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            logger.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self._warned = False
        logger.info("connected to broker %s:%d as %s", self.host, self.port, self.client_id)
        self._loop.call_soon_threadsafe(self._up)

    def _up(self) -> None:
        self.generation += 1
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        # A broker that stays away is logged once, not at every reconnect attempt.
        if not self._warned:
            logger.warning("disconnected from broker %s:%d: %s; retrying in the background", self.host, self.port, reason_code)
            self._warned = True
        self._loop.call_soon_threadsafe(self.connected.clear)
        self._fail_waiting(NotConnected(f"connection lost: {reason_code}"))

    def _on_publish(self, client, userdata, mid: int, reason_code: ReasonCode, properties: Properties) -> None:
        with self._lock:
            future = self._waiting.pop(mid, None)
            if future is None:
                self._early[mid] = reason_code
                return
        self._loop.call_soon_threadsafe(self._settle, future, reason_code)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self.messages.put_nowait, (message.topic, message.payload))

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
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._early.clear()
        for future in waiting.values():
            self._loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_exception(error))
