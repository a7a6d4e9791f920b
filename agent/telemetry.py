"""Presence and health: a device's signed status, retained on its status topic.

When the link comes up, and every ``status_interval`` seconds while it stays
up, the agent publishes an ``online`` status with its health: how far its
journal runs, how far central has acknowledged it, the backlog between, the
scanners it holds, its version and the free space on the journal's disk. Its
last will, signed when the connection is made, says ``offline``: the broker
publishes it when the box loses power or its link, and when the agent stops.
The status is retained, so whoever subscribes (central, an operator's tool)
learns each box's state at once. Central compares each live status's
``sent_at`` with its own clock and flags a box whose clock is off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning import protocol
from storage import StorageError, Store

from .mqtt import MqttError, MqttLink

logger = logging.getLogger(__name__)


def agent_version() -> str:
    # Not importlib.metadata: it costs the box half a MiB of memory to read one string.
    from . import __version__

    return __version__


@dataclass(kw_only=True)
class Telemetry:
    store: Store
    device_id: str
    session: int
    key: Ed25519PrivateKey
    topic_prefix: str
    interval: float  # seconds between health reports while online
    scanners: set[str] = field(default_factory=set)  # the scanners held now; kept by the daemon
    version: str = field(default_factory=agent_version)
    # Counts connections (one will is made for each): central orders statuses by (session,
    # connection), the will of a connection after every online status of that connection. A start the
    # journal could not count goes on under the last one's session, and counts its connections on from
    # the time it started (milliseconds since the epoch): after every connection of the start before it.
    first_connection: int = 0
    _connection: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._connection = self.first_connection

    @property
    def topic(self) -> str:
        return protocol.status_topic(self.topic_prefix, self.device_id)

    def will(self) -> tuple[str, bytes]:
        """The last will for a connection made now (MqttLink.will); its sent_at is the connection's start."""
        self._connection += 1
        status = {"state": "offline", "session": self.session, "connection": self._connection, "sent_at": time.time()}
        return self.topic, protocol.encode_status(status, device=self.device_id, key=self.key)

    async def run(self, link: MqttLink) -> None:
        """Report health on each connection and every ``interval`` seconds while connected."""
        while True:
            await link.connected.wait()
            generation = link.generation
            try:
                await link.publish(self.topic, await self._online(), retain=True)
            except MqttError as error:
                logger.warning("status not published: %s", error)
            except StorageError as error:  # its backlog cannot be read now; the next report may
                logger.warning("status not published: the journal cannot be read (%s)", error)
            # The next report when the interval is up (as it is now: settings pushed by operations may
            # change it meanwhile, so it is looked at every second), or at once on a new connection.
            sent = time.monotonic()
            while time.monotonic() < sent + self.interval:
                if await link.next_connection(generation, within=min(1.0, max(0.0, sent + self.interval - time.monotonic()))):
                    break

    async def farewell(self, link: MqttLink, *, acked: int, within: float) -> bool:
        """A revoked box's last word, before it erases itself: an online status that says so (``erasing``;
        central then removes its access), with ``acked``, the acknowledgement it holds (kept in memory where
        the disk had no room for it). Waits at most ``within`` seconds for the broker to take it; False when
        it could not be said."""
        try:
            async with asyncio.timeout(within):
                await link.connected.wait()  # a link down as the grace ran out: it may be back in time
                await link.publish(self.topic, await self._online(acked=acked, erasing=True), retain=True)
            return True
        except (MqttError, StorageError, TimeoutError) as error:
            logger.warning("status not published: %s", error or "no answer from the broker")
            return False

    async def _online(self, *, acked: int = 0, erasing: bool = False) -> bytes:
        last, held = await self.store.read(lambda journal: (journal.last_seq(), journal.acked_seq()))
        acked = max(acked, held)
        status: dict[str, Any] = {
            "state": "online", "session": self.session, "connection": self._connection, "sent_at": time.time(),
            "last_seq": last, "acked_seq": acked, "backlog": max(last - acked, 0),
            "scanners": len(self.scanners), "agent_version": self.version,
        }
        if erasing:
            status["erasing"] = True
        try:
            disk = await asyncio.to_thread(os.statvfs, self.store.path.parent)
            status["free_bytes"] = disk.f_bavail * disk.f_frsize
        except OSError as error:  # the data directory gone from under the agent: reported without it
            logger.warning("status without free_bytes: %s", error)
        logger.debug("status online backlog=%d scanners=%d", last - acked, len(self.scanners))
        return protocol.encode_status(status, device=self.device_id, key=self.key)
