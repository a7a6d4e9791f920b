"""The box before it is activated: it waits for an activation code, and records nothing as a sale.

While it waits, the box says hello (its device id and public key, signed)
on its activation topic every ``HELLO_INTERVAL`` seconds, so operations can
find it for a remote install. A code reaches it in one of two ways: scanned
from the printed slip (the scanner types the QR code's text), or pushed by
operations to its activation topic. Either way the box first checks the code
itself (signed by a trusted operations key, not expired, not bound to another
device), then asks central to bind its key to the code's shop, and is active
once central's signed answer says so: it records an ``activation`` event, the
journal's and so the box's own record of whose box it is. A code refused at
any step changes nothing; a scanned one is answered with the error signal.

Every other scan is refused with the error signal and a log line: it is not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.decoder import NotABarcode, Scan
from drivers.feedback import Signal
from provisioning import activation, protocol
from provisioning.errors import ProtocolError
from storage import Journal, StorageError, Store

from .mqtt import MqttError, MqttLink

logger = logging.getLogger(__name__)

HELLO_INTERVAL = 60.0  # seconds between hellos while waiting
REQUEST_RETRY = 2.0  # seconds between requests to central while no answer comes
ANSWER_WAIT = 20.0  # seconds a scanned code waits for central before the error signal
RECORD_RETRY = 2.0  # seconds between tries to record an activation central accepted, while the disk is full


def current(journal: Journal, device: str) -> dict[str, Any] | None:
    """The activation ``device`` holds: the body of the journal's latest ``activation`` event, or None; None
    too when that activation was another device's (a backup of another box restored onto this one): this box
    was never admitted, and waits for its own code. An activation recorded before events named their device
    is this box's unless it was recorded before the journal took this box's identity from another's."""
    event = journal.last("activation")
    if event is None:
        return None
    named = event.body.get("device")
    if named is None:
        return event.body if event.seq > journal.identity_since() else None
    return event.body if named == device else None


def subscriptions(prefix: str, device: str) -> list[str]:
    return [activation.topic(prefix, device, "code"), activation.topic(prefix, device, "result")]


@dataclass(kw_only=True)
class Activator:
    store: Store
    device_id: str
    key: Ed25519PrivateKey
    central_key: Ed25519PublicKey
    trusted: dict[str, Ed25519PublicKey]  # operations keys
    topic_prefix: str
    agent_version: str
    activated: asyncio.Event = field(default_factory=asyncio.Event)
    _link: MqttLink | None = None
    _answers: dict[str, asyncio.Future] = field(default_factory=dict)  # by code id
    _attempts: set[asyncio.Task] = field(default_factory=set)
    _one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)
    _recording: bool = False  # an activation central accepted waits for the journal to take it

    async def run(self, link: MqttLink) -> None:
        """Say hello, take pushed codes and central's answers, until the box is activated."""
        self._link = link
        tasks = [asyncio.create_task(self._hello(link)), asyncio.create_task(self._receive(link)),
                 asyncio.create_task(self.activated.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure of the hello or the receiving ends the waiting with it
        finally:
            pending = [*tasks, *self._attempts]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _hello(self, link: MqttLink) -> None:
        topic = activation.topic(self.topic_prefix, self.device_id, "hello")
        while True:
            await link.connected.wait()
            generation = link.generation
            token = activation.encode_hello(self.device_id, self.key, agent_version=self.agent_version,
                                            sent_at=time.time())
            try:
                await link.publish(topic, token, retain=True)
                logger.info("waiting for activation device=%s: scan the activation code, or have operations push one",
                            self.device_id)
            except MqttError as error:
                logger.warning("hello not published: %s", error)
            # Said again every HELLO_INTERVAL, and at once on a new connection.
            await link.next_connection(generation, within=HELLO_INTERVAL)

    async def _receive(self, link: MqttLink) -> None:
        code_topic = activation.topic(self.topic_prefix, self.device_id, "code")
        async for message in link.messages():
            if message.topic == code_topic:
                if message.payload:
                    logger.info("activation code pushed by operations")
                    self._spawn(self.attempt(message.payload.decode("ascii", errors="replace")))
            else:
                self._answer(message.payload)

    def _answer(self, token: bytes) -> None:
        try:
            result = activation.decode_result(token, device=self.device_id, key=self.central_key)
        except ProtocolError as error:
            logger.warning("activation answer refused: %s", error)
            return
        future = self._answers.get(result["code"])
        if future is not None and not future.done():
            future.set_result(result)
        elif future is None and result["accepted"]:
            self._spawn(self._take_late(result))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    async def scanned(self, scan: Scan | NotABarcode) -> Signal:
        """The box's answer to a scan while it is not activated."""
        if isinstance(scan, Scan) and activation.looks_like_code(scan.text):
            logger.info("activation code scanned scanner=%s", scan.source)
            return Signal.GOOD if await self.attempt(scan.text) else Signal.ERROR
        logger.warning("scan NOT recorded scanner=%s: this box is not activated yet; scan its activation code first",
                       scan.source)
        return Signal.ERROR  # not attention: that one says a sale was recorded (without a price)

    async def attempt(self, token: str) -> bool:
        """Try one code: check it, ask central, record the activation. True once the box is active.
        One code at a time: a code scanned while one pushed is under way waits for its answer."""
        async with self._one_at_a_time:
            if self.activated.is_set():
                logger.warning("activation code refused: the box is already active; nothing changed")
                return False
            return await self._attempt(token)

    async def _attempt(self, token: str) -> bool:
        try:
            code = activation.decode_code(token, trusted=self.trusted)
            if code.device is not None and code.device != self.device_id:
                raise ProtocolError(f"it was issued for device {code.device}")
            if time.time() > code.expires_at:
                raise ProtocolError(f"it expired at {protocol.rfc3339(code.expires_at)}")
        except ProtocolError as error:
            logger.warning("activation code refused: %s; nothing changed", error)
            return False
        future = self._answers.setdefault(code.code_id, asyncio.get_running_loop().create_future())
        deadline = time.monotonic() + ANSWER_WAIT
        topic = activation.topic(self.topic_prefix, self.device_id, "request")
        while not future.done() and time.monotonic() < deadline:
            request = activation.encode_request(self.device_id, self.key, token, sent_at=time.time())
            try:
                if self._link is not None and self._link.connected.is_set():
                    await self._link.publish(topic, request)
            except MqttError as error:
                logger.warning("activation request not sent: %s", error)
            await asyncio.wait([future], timeout=REQUEST_RETRY)
        if not future.done():
            self._answers.pop(code.code_id, None)
            logger.error("activation: no answer from central within %.0f s; scan the code again", ANSWER_WAIT)
            return False
        result = future.result()
        if not result["accepted"]:
            self._answers.pop(code.code_id, None)
            logger.warning("activation refused by central: %s; nothing changed", result["reason"])
            return False
        if self.activated.is_set():
            return True
        return await self._record(result, kid=code.kid)

    async def _take_late(self, result: dict[str, Any]) -> None:
        """Central's acceptance of a request this box no longer waits for: it answered after the box gave up
        (central away longer than ANSWER_WAIT), or while the box was off (the answer is retained). Central
        has bound this box's key to the shop, and a pushed code is gone: taken, or the box waits for ever.
        Only central signs it, for this device id, which is this box's key's own."""
        async with self._one_at_a_time:
            if self.activated.is_set():
                return
            logger.info("activation answered by central after the box stopped waiting for it; taken")
            await self._record(result, kid=None)

    async def _record(self, result: dict[str, Any], *, kid: str | None) -> bool:
        body = {"device": self.device_id, "shop": result["shop"], "name": result.get("name", ""), "region": result["region"],
                "monitoring": result["monitoring"], "code": result["code"], "kid": kid,
                "activated_at": protocol.rfc3339(time.time())}
        try:
            seq = await self.store.append("activation", body)
        except StorageError as error:
            # Central has bound this box to the shop and used the code: no code will do it again. Kept,
            # and recorded as soon as the journal takes it (space returns), without a scan or a restart.
            logger.error("activation accepted by central, NOT recorded: %s; recorded as soon as the journal "
                         "takes it", error)
            if not self._recording:
                self._recording = True
                self._spawn(self._record_later(body, result))
            return False
        self._activated(seq, result)
        return True

    async def _record_later(self, body: dict[str, Any], result: dict[str, Any]) -> None:
        while not self.activated.is_set():
            await asyncio.sleep(RECORD_RETRY)
            async with self._one_at_a_time:
                if self.activated.is_set():
                    return
                try:
                    seq = await self.store.append("activation", body)
                except StorageError:
                    continue
                self._activated(seq, result)

    def _activated(self, seq: int, result: dict[str, Any]) -> None:
        logger.info("activated seq=%d device=%s shop=%s region=%s", seq, self.device_id, result["shop"], result["region"])
        if self._link is not None:
            with contextlib.suppress(MqttError):  # the retained hello goes: this box waits no more
                self._link.publish_nowait(activation.topic(self.topic_prefix, self.device_id, "hello"), b"", retain=True)
        self.activated.set()
