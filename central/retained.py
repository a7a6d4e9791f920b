"""The documents operations published, kept at the broker by central.

A box that was away finds its documents as the broker's retained copies
(docs/protocol.md, Documents pushed down). Mosquitto writes those to disk
only every ``autosave_interval`` (30 s as shipped) and at a clean stop: a
broker killed or losing power just after a push starts again without it, and
the box then never hears of its price list, or of its revocation. Central
keeps every document it signed; on each connection to the broker it reads
the retained copies of every document topic and publishes again, retained,
the newest unexpired version of each stream whose copy the broker lacks or
holds another copy of (an older version; or one this database never issued,
whatever version it claims: a forgery, or central's database restored from a
backup older than its last pushes). A box ignores a version it holds, so a
copy sent again is harmless.

    keeper = Keeper(store=store, prefix="counterbox/v1", thread=thread, reader=reader_options)
    await keeper.run(link)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agent.mqtt import MqttError, MqttLink, TooLarge
from provisioning import documents, jws, protocol
from provisioning.documents import Scope
from provisioning.errors import SignatureError

from .errors import CentralError
from .store import CentralStore

logger = logging.getLogger(__name__)

READ_TIMEOUT = 30.0  # seconds to read the broker's retained copies, a fleet's price lists among them
LOOK_AGAIN = 3600.0  # seconds between looks while connected: a broker restarted between two looks is seen anew


@dataclass(kw_only=True)
class Keeper:
    store: CentralStore
    prefix: str
    thread: ThreadPoolExecutor  # the store's
    reader: dict[str, Any]  # how to connect: host, port, client_id, username, password, ca_file
    # Documents too large for the broker, by topic: the connection on which that was last said.
    _too_large: dict[str, int] = field(default_factory=dict)

    async def run(self, link: MqttLink) -> None:
        """Look at each new connection of ``link`` (central's own: a broker that restarted is seen by its
        reconnection), and every LOOK_AGAIN meanwhile."""
        while True:
            await link.connected.wait()
            generation = link.generation
            try:
                await self.keep(link)
            except (MqttError, CentralError, sa.exc.SQLAlchemyError, TimeoutError) as error:
                logger.warning("documents at the broker not checked: %s; checked again at the next connection", error)
            except Exception:  # its own fault, not the ingest's: batches go on being stored
                logger.exception("documents at the broker not checked; checked again at the next connection")
            await link.next_connection(generation, within=LOOK_AGAIN)

    async def keep(self, link: MqttLink) -> int:
        """Publish again each document in force whose copy the broker lacks, or holds another of; how many were.
        The broker's copies are read first: operations keep a version before they publish it, so one pushed
        meanwhile is in central's database by the time it is read. The broker's copy is only ever compared,
        byte for byte: what it says of itself is nobody's word (anyone who may publish there can write it)."""
        loop = asyncio.get_running_loop()
        held = await self._retained()
        in_force = await loop.run_in_executor(self.thread, self.store.documents_in_force, time.time())
        published = 0
        for name, scope, version, token, expires_at in in_force:
            topic = documents.topic(self.prefix, Scope(**json.loads(scope)), name)
            if held.get(topic) == token:
                continue
            if await loop.run_in_executor(self.thread, self.store.latest_document, name, scope) != token:
                continue  # operations issued a newer one meanwhile, and publish it themselves
            try:
                await link.publish(topic, token, retain=True, expires_at=expires_at)
            except TooLarge as error:  # the others go on: a revocation the broker lost never waits behind it
                if self._too_large.get(topic) != link.generation:
                    self._too_large[topic] = link.generation
                    logger.error("document %s version %d cannot be published again on %s: %s; set the broker's "
                                 "max_packet_size to %d", name, version, topic, error, protocol.MAX_PACKET_BYTES)
                continue
            published += 1
            logger.warning("document %s version %d published again on %s: the broker %s", name, version, topic,
                           _what_was_there(held.get(topic), version))
        return published

    async def _retained(self) -> dict[str, bytes]:
        """The broker's retained copy on every document topic: read on a connection of its own, up to a
        message central sends itself once connected. Its subscriptions went first on that connection, and
        the broker sends a subscription's retained copies as it takes it: the marker comes after them all."""
        marker = f"{self.prefix}/regions/-central-{secrets.token_hex(8)}/docs/end"
        topics = [f"{self.prefix}/devices/+/docs/#", f"{self.prefix}/regions/+/docs/#"]
        options = {**self.reader, "client_id": f"{self.reader['client_id']}-documents"}
        held: dict[str, bytes] = {}
        async with MqttLink(**options, subscriptions=topics) as reader:
            async with asyncio.timeout(READ_TIMEOUT):  # within the caller's error handling: said, and tried again
                await reader.connected.wait()
                await reader.publish(marker, b"", qos=1)
                async for message in reader.messages():
                    if message.topic == marker:
                        return held
                    if message.retain and message.payload:
                        held[message.topic] = message.payload
        return held


def _what_was_there(there: bytes | None, version: int) -> str:
    """For the log: what the broker held in place of central's newest version."""
    if there is None:
        return "had lost it (stopped before it saved it)"
    claimed = _version(there)
    if claimed is None:
        return "held no document there"
    if claimed < version:
        return f"held version {claimed} there"
    return (f"held a copy there that says it is version {claimed}, which this database never issued: a forgery, "
            "or central's database restored from a backup older than operations' last push (push again, with "
            "--past-boxes)")


def _version(token: bytes) -> int | None:
    """The version a retained copy says it is, unverified (for the log alone): None for anything that is not
    a document's token."""
    try:
        payload = json.loads(jws.b64url_decode(token.decode("ascii").split(".")[1]))
        version = payload.get("version")
    except (ValueError, IndexError, AttributeError, SignatureError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
