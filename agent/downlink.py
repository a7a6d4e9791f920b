"""The one door for what comes back from the broker: central's acknowledgements and operations' documents.

Every message the agent receives passes here. An acknowledgement goes to the
uplink, which verifies it with central's key. A document (docs/protocol.md,
Documents) is applied only when all of these hold, and otherwise refused with
a log line that names the reason, changing nothing:

- it is signed by an operations key the box trusts (``[operations] keys``);
- it came on the topic it names, and is for this device or its region;
- it has not expired (by the box's clock);
- its version is above the one the box applied last in its stream. The same
  version again is the broker's retained copy at a reconnection: ignored.

A document the journal cannot take now (an I/O error, a full disk) is held and
tried again after a pause that doubles from 0.5 s to 30 s, until it is
recorded or a newer message on its topic takes its place.

An applied document is recorded in the journal, in one transaction: its
content (a ``price_list`` the counter prices from at the next scan, an
``order``, ``settings`` that override the configuration file's for the keys
they name, or a ``revocation``, after which the box stops selling, delivers
what it holds and erases itself) and a ``document`` event that names it, its version and the seq of
its content. That event travels to central in the batches like any other, so
central knows which price list every box is on. The journal's ``document``
events are also the box's own record of the versions it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from provisioning import documents, protocol
from provisioning.documents import Document
from provisioning.errors import ProtocolError
from storage import Event, Journal, StorageError, Store

from .config import time_zone
from .mqtt import Message, MqttLink
from .uplink import Uplink, retry_pause

logger = logging.getLogger(__name__)


def subscriptions(prefix: str, device: str, region: str) -> list[str]:
    """Every topic the downlink reads."""
    return [protocol.ack_topic(prefix, device), *documents.subscriptions(prefix, device, region)]


@dataclass(frozen=True)
class Held:
    """The version of a document stream the box holds, and what it was: the SHA-256 of the token (None in
    events recorded before it was kept) and when operations signed it."""

    version: int
    digest: str | None = None
    issued_at: float = 0.0
    superseded: bool = False  # another scope's document of the stream was applied since: this one is not in force
    scope: dict[str, str] | None = None  # whose it is (Scope.as_json()); None: not known (nothing held yet)


def applied_versions(journal: Journal, device: str, region: str) -> dict[str, Held]:
    """The version the box holds of each document stream among those still meant for it: the view of its
    ``document`` events. One applied for another region (the box moved, or a journal was restored onto a
    box of a shop in another region) or another device (the box whose backup this is) no longer counts:
    its region's or its own stream goes on from whatever version it is at (versions grow across scopes). One
    applied since for another scope took its place: a box moved back to its first region holds nothing of that
    region's stream in force, and takes the version it holds again (the one in force is the other region's)."""
    versions: dict[str, Held] = {}
    for event in journal.of_kind("document"):
        body = event.body
        if not documents.meant_for(body.get("scope"), device, region):
            if body["name"] in versions:
                versions[body["name"]] = replace(versions[body["name"]], superseded=True)
            continue
        held = versions.get(body["name"])
        if held is None or body["version"] >= held.version:
            issued_at = protocol.parse_rfc3339(body["issued_at"]) if isinstance(body.get("issued_at"), str) else 0.0
            versions[body["name"]] = Held(body["version"], body.get("digest"), issued_at, scope=body.get("scope"))
    return versions


def _whose(scope: dict[str, str]) -> str:
    return f"device {scope['device']}" if "device" in scope else f"region {scope.get('region')}"


def digest(token: bytes) -> str:
    """What tells two documents signed under one version apart (the same retained copy is the same bytes)."""
    return hashlib.sha256(token).hexdigest()


def settings_held(journal: Journal) -> list[dict[str, Any]]:
    """The bodies of the ``settings`` events that hold for this box, in order: its region's, and its own
    (not those of the box whose journal was restored onto it)."""
    since = journal.identity_since()
    return [event.body for event in journal.of_kind("settings")
            if documents.holds_for_box(event.body.get("name"), event.seq, since)]


def revocation_held(journal: Journal) -> Event | None:
    """This box's revocation, if it has one: one the journal recorded for the box whose backup was
    restored onto this one revoked that box, not its replacement."""
    event = journal.last("revocation")
    if event is None or not documents.holds_for_box("revocation", event.seq, journal.identity_since()):
        return None
    return event


def revocation_in_force(journal: Journal) -> tuple[float, float] | None:
    """(when this box first took its revocation, by its own clock; the grace of the newest one): a box revoked
    again with another grace delivers up to that grace counted from the first, as central counts it from its
    receipt of the first, started again or not. None for a box not revoked."""
    latest = revocation_held(journal)
    if latest is None:
        return None
    since = journal.identity_since()
    first = next((event for event in journal.of_kind("revocation")
                  if documents.holds_for_box("revocation", event.seq, since)), latest)
    return _taken_at(journal, first), latest.body["grace_seconds"]


def _taken_at(journal: Journal, content: Event) -> float:
    """When the box took the document whose content is ``content``, as its ``document`` event says; now, where
    none says (damaged, or folded by retention): never when operations signed it, which for a box long away
    would end a grace before it began, its events erased undelivered."""
    for event in journal.of_kind("document"):
        if event.body.get("content_seq") == content.seq:
            try:
                return protocol.parse_rfc3339(event.body.get("applied_at"))
            except ValueError:
                break
    return time.time()


def apply(journal: Journal, document: Document, token: bytes) -> int:
    """Record ``document`` (its content, then the ``document`` event naming it, with its scope and the digest
    of ``token``, the signed document); return the latter's seq."""
    about = {"name": document.name, "version": document.version, "issued_at": protocol.rfc3339(document.issued_at)}
    body: dict[str, Any] = dict(document.body)
    if document.kind == "price_list":
        content = journal.append("price_list", {"source": "operations", **about,
                                                "currency": body["currency"], "items": body["items"]})
    elif document.kind == "revocation":
        content = journal.append("revocation", {**body, **about})
    elif document.kind == "settings":
        content = journal.append("settings", {**body, **about})
    else:
        content = journal.append("order", {**body, **about})
    # applied_at, the box's own time, is when these events happened (retention goes by it): issued_at is when
    # operations signed the document, maybe months before a box long away applied it.
    return journal.append("document", {**about, "kind": document.kind, "kid": document.kid,
                                       "expires_at": protocol.rfc3339(document.expires_at), "content_seq": content,
                                       "applied_at": protocol.rfc3339(time.time()),
                                       "scope": document.scope.as_json(), "digest": digest(token)})


@dataclass(kw_only=True)
class Downlink:
    store: Store
    uplink: Uplink
    device_id: str
    region: str
    trusted: dict[str, Ed25519PublicKey]  # operations keys, by kid
    topic_prefix: str
    # Called once a revocation is recorded: the box stops selling, delivers, and erases itself.
    on_revoked: Callable[[Document], None] = lambda document: None
    # Called once settings are recorded: what the box does on a timer takes them at once (the counter
    # takes them from the journal itself).
    on_settings: Callable[[dict[str, Any]], None] = lambda body: None
    _applied: dict[str, Held] | None = None  # the version held of each stream, read from the journal at first
    # Documents the journal could not take, by topic, to try again; and how many tries failed in a row.
    _held: dict[str, Message] = field(default_factory=dict)
    _holding: asyncio.Event = field(default_factory=asyncio.Event)
    _failed: int = 0
    # By topic, the digest of the copy seen there that was older than the version in force (the region's list
    # under this box's own): passed over, unverified, when the broker hands it again at each connection.
    _passed: dict[str, str] = field(default_factory=dict)
    # One document at a time: a held one tried again and a newer one just come never race to the journal.
    _door: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, link: MqttLink) -> None:
        async with asyncio.TaskGroup() as group:
            again = group.create_task(self._again())
            async for message in link.messages():
                self._held.pop(message.topic, None)  # a newer message on the topic takes the held one's place
                await self.handle(message)
            again.cancel()

    async def _again(self) -> None:
        """Held documents, tried again after a pause that grows while the journal keeps failing."""
        while True:
            await self._holding.wait()
            await asyncio.sleep(retry_pause(self._failed))
            held, self._held = self._held, {}
            self._holding.clear()
            for message in held.values():
                await self.handle(message)
            if not self._held:
                self._failed = 0

    def _hold(self, message: Message, reason: str) -> None:
        self._failed += 1
        (logger.error if self._failed == 1 else logger.debug)(
            "document NOT applied topic=%s: %s; tried again in %.1fs", message.topic, reason,
            retry_pause(self._failed))
        self._held[message.topic] = message
        self._holding.set()

    async def handle(self, message: Message) -> None:
        """One message from the broker: an acknowledgement for the uplink, or a document to check and apply."""
        if message.topic == protocol.ack_topic(self.topic_prefix, self.device_id):
            await self.uplink.acknowledged(message.payload)
        elif "/docs/" in message.topic:
            async with self._door:
                if self._applied is None:
                    try:
                        self._applied = await self.store.read(
                            lambda journal: applied_versions(journal, self.device_id, self.region))
                    except StorageError as error:
                        self._hold(message, f"the journal cannot be read ({error})")
                        return
                await self._document(message)
        else:
            logger.warning("message on an unexpected topic ignored topic=%s", message.topic)

    def _check(self, message: Message) -> Document:
        """The document, signed by operations and meant for this box; ProtocolError otherwise."""
        document = documents.decode_document(message.payload, trusted=self.trusted)
        expected = documents.topic(self.topic_prefix, document.scope, document.name)
        if message.topic != expected:
            raise ProtocolError(f"it names the topic {expected}, not the one it came on")
        if not document.scope.includes(self.device_id, self.region):
            raise ProtocolError(f"it is for {document.scope.as_json()}, not this device "
                                f"({self.device_id}, region {self.region or 'none'})")
        return document

    @staticmethod
    def _usable(document: Document) -> None:
        """A new version, checked before it is applied: ProtocolError when this box cannot take it now.
        A revocation never lapses: a box off (or its clock ahead) past its expiry once kept on selling for a
        shop that had left. None can reach another box: a revoked device id is never registered again."""
        if time.time() > document.expires_at and document.kind != "revocation":
            raise ProtocolError(f"it expired at {protocol.rfc3339(document.expires_at)}")
        timezone = document.body.get("counter", {}).get("timezone") if document.kind == "settings" else None
        if timezone and time_zone(timezone) is None:
            raise ProtocolError(f"its time zone {timezone!r} is not one this box knows")

    async def _document(self, message: Message) -> None:
        if not message.payload:
            return  # a retained document cleared by operations: nothing to apply
        if self._passed.get(message.topic) == digest(message.payload):
            logger.debug("document topic=%s: the copy seen before, older than the version in force", message.topic)
            return
        held = self._applied.get(message.topic.partition("/docs/")[2])
        if held is not None and held.digest == digest(message.payload) and not held.superseded:
            # The very bytes this box verified and applied: the retained copy of every order ever pushed, at
            # every connection, once took seconds of checking each time, growing week by week.
            logger.debug("document %s version %d already applied", message.topic.partition("/docs/")[2],
                         held.version)
            return
        try:
            # Verifying and checking a large price list takes milliseconds: not on the loop.
            document = await asyncio.to_thread(self._check, message)
        except ProtocolError as error:
            logger.warning("document refused topic=%s: %s; nothing changed", message.topic, error)
            return
        except Exception:
            # A document no check foresaw must not end the agent: it is retained, and would end it
            # again at every start. Refused, with what the box's maintainers need to see why.
            logger.exception("document refused topic=%s: checking it failed; nothing changed", message.topic)
            return
        held, token = self._applied.get(document.name, Held(0)), digest(message.payload)
        if document.version == held.version:
            # The same document: its bytes; or, recorded by a box of an earlier version with no digest, the time
            # it was signed (where that was recorded: else it cannot be told, and is taken for the same).
            same = token == held.digest or held.digest is None and (
                not held.issued_at or abs(document.issued_at - held.issued_at) < 0.001)
            if same and not held.superseded:
                # The retained copy, at every connection: applied already, though it may have expired since.
                # One applied by a box of an earlier version is recorded with no digest: this copy's bytes,
                # verified now, are skipped at the next connections without verifying them again.
                self._applied[document.name] = replace(held, digest=token)
                logger.debug("document %s version %d already applied", document.name, held.version)
                return
            # Operations signed two documents under one version (central's database restored from a backup
            # older than its last push): the one signed last is what they mean now.
            if not same and document.issued_at <= held.issued_at:
                logger.warning("document refused topic=%s: version %d is applied with other content, signed "
                               "later; this one changes nothing", message.topic, held.version)
                return
            if not same:
                logger.warning("document topic=%s: version %d signed again with other content, later than the "
                               "one applied (central's database restored from an older backup?); it is applied",
                               message.topic, document.version)
            else:
                # Held, but another scope's applied since is in force (the box moved to another region and back).
                logger.info("document topic=%s: version %d applied again, in place of another scope's applied "
                            "since", message.topic, document.version)
        elif document.version < held.version:
            self._passed[message.topic] = token
            if held.scope is not None and held.scope != document.scope.as_json() and not held.superseded:
                # The region's list, retained for its other boxes, under this box's own: no replay, and said
                # once (the same copy again, at the next connections, is passed over unverified).
                logger.info("document topic=%s: version %d, under version %d of %s in force; it changes nothing",
                            message.topic, document.version, held.version, _whose(held.scope))
            else:
                logger.warning("document refused topic=%s: version %d is applied; an older or replayed document "
                               "changes nothing", message.topic, held.version)
            return
        try:
            self._usable(document)
        except ProtocolError as error:
            logger.warning("document refused topic=%s: %s; nothing changed", message.topic, error)
            return
        try:
            seq = await self.store.write(lambda journal: apply(journal, document, message.payload))
        except StorageError as error:
            # Nothing recorded: held, and tried again.
            self._hold(message, f"{document.name} version={document.version} could not be recorded ({error})")
            return
        except Exception:
            # Rolled back with its transaction: as above, refused rather than ending the agent.
            logger.exception("document %s version=%d NOT applied: recording it failed", document.name,
                             document.version)
            return
        before = self._applied.get(document.name)
        if before is not None and before.digest and before.scope and before.scope != document.scope.as_json():
            # The copy it takes the place of (the region's, under the box's own now) stays retained for others:
            # the broker hands it at each connection, and it changes nothing here any more.
            with contextlib.suppress(TypeError, ValueError):
                self._passed[documents.topic(self.topic_prefix, documents.Scope(**before.scope), document.name)] = \
                    before.digest
        self._applied[document.name] = Held(document.version, token, document.issued_at, scope=document.scope.as_json())
        self._failed = 0
        logger.info("document applied seq=%d %s version=%d", seq, document.name, document.version)
        self.uplink.wake.set()
        if document.kind == "revocation":
            self.on_revoked(document)
        elif document.kind == "settings":
            self.on_settings({**document.body, "name": document.name})  # as its event records it
