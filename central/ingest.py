"""Central's ingest: verify each device's signed batches, store each event once, acknowledge.

Verification uses joserfc, an off-the-shelf JOSE library, exactly as any
central consumer would (docs/protocol.md). A batch that is forged, altered,
signed by another key, or inconsistent with its topic is rejected with a
logged reason and stores nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from .store import CentralStore, SeqConflict

logger = logging.getLogger(__name__)

BATCH_TYPE = "counterbox-batch+jws"
ACK_TYPE = "counterbox-ack+jws"
CENTRAL_KID = "central"
SESSION_EXPIRY = 7 * 24 * 3600  # seconds the broker keeps batches for central while it is away


class Rejected(Exception):
    """A batch that central will not store; the message is the logged reason."""


@dataclass(frozen=True)
class Accepted:
    device_id: str
    first_seq: int
    last_seq: int
    added: int
    acked_seq: int


def verify_batch(store: CentralStore, topic_device: str, token: bytes) -> dict[str, Any]:
    """The verified batch payload, or Rejected with the reason."""
    device = store.device(topic_device)
    if device is None:
        raise Rejected(f"device {topic_device!r} is not registered")
    key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": device.public_key})
    try:
        obj = jws.deserialize_compact(token, key, algorithms=["Ed25519"])
    except (JoseError, ValueError) as error:
        raise Rejected(f"signature check failed: {type(error).__name__}: {error}") from None
    if obj.protected.get("kid") != topic_device or obj.protected.get("typ") != BATCH_TYPE:
        raise Rejected(f"header {obj.protected} does not name this device's batch")
    try:
        batch = json.loads(obj.payload)
    except ValueError:
        raise Rejected("payload is not JSON") from None
    if batch.get("v") != 1 or batch.get("device") != topic_device:
        raise Rejected(f"batch version {batch.get('v')!r} / device {batch.get('device')!r} does not match the topic")
    events = batch.get("events")
    first, last = batch.get("first_seq"), batch.get("last_seq")
    if not isinstance(events, list) or not events or not isinstance(first, int) or not isinstance(batch.get("session"), int):
        raise Rejected("batch lacks events, first_seq or session")
    seqs = [e.get("seq") if isinstance(e, dict) else None for e in events]
    if seqs != list(range(first, first + len(events))) or last != seqs[-1] or first < 1:
        raise Rejected(f"batch seq {first}..{last} does not match its {len(events)} events")
    if not all(isinstance(e.get("kind"), str) and isinstance(e.get("body"), dict) for e in events):
        raise Rejected("an event lacks its kind or body")
    return batch


class Ingest:
    def __init__(self, store: CentralStore, *, signing_key: OKPKey, topic_prefix: str = "counterbox/v1"):
        self.store = store
        self.signing_key = signing_key
        self.prefix = topic_prefix

    def handle(self, topic: str, payload: bytes) -> tuple[Accepted, tuple[str, bytes]]:
        """Verify and store one batch; return the result and the acknowledgement (topic, token) to publish."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[-1] != "batch" or parts[-3] != "devices":
            raise Rejected(f"not a batch topic: {topic}")
        device_id = parts[-2]
        batch = verify_batch(self.store, device_id, payload)
        try:
            added, acked = self.store.add_events(device_id, batch["session"], batch["events"])
        except SeqConflict as conflict:
            raise Rejected(str(conflict)) from None
        result = Accepted(device_id, batch["first_seq"], batch["last_seq"], added, acked)
        ack = json.dumps({"v": 1, "device": device_id, "ack_seq": acked}).encode()
        token = jws.serialize_compact({"alg": "Ed25519", "kid": CENTRAL_KID, "typ": ACK_TYPE}, ack, self.signing_key,
                                      algorithms=["Ed25519"])
        return result, (f"{self.prefix}/devices/{device_id}/ack", token.encode())

    # -- the MQTT consumer -----------------------------------------------------

    def serve(self, host: str, port: int, client_id: str = "counterbox-central") -> None:
        """Consume batches until interrupted; a persistent session keeps what arrives while we are away."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = lambda c, u, f, rc, p: logger.warning("disconnected from broker: %s", rc)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_async(host, port, clean_start=False, properties=properties)
        try:
            client.loop_forever(retry_first_connection=True)
        finally:
            client.disconnect()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("broker refused central: %s", reason_code)
            return
        client.subscribe(f"{self.prefix}/devices/+/batch", qos=1)
        logger.info("central ingest connected; subscribed to %s/devices/+/batch", self.prefix)

    def _on_message(self, client, userdata, message) -> None:
        try:
            result, (ack_topic, ack) = self.handle(message.topic, message.payload)
        except Rejected as reason:
            logger.warning("batch rejected topic=%s bytes=%d: %s", message.topic, len(message.payload), reason)
            return
        except Exception:
            # Not acknowledged, so the device sends it again; the consumer itself keeps running.
            logger.exception("batch not stored topic=%s: internal error", message.topic)
            return
        logger.info(
            "batch accepted device=%s seq=%d..%d new=%d acked_seq=%d",
            result.device_id, result.first_seq, result.last_seq, result.added, result.acked_seq,
        )
        # Retained, so a device that reconnects learns at once how far central holds its events.
        client.publish(ack_topic, ack, qos=1, retain=True)
