"""The documents central keeps at the broker (central/retained.py): what the broker lost is published again,
and nothing it holds is replaced by an older version."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.mqtt import MqttLink
from central.retained import Keeper
from central.store import CentralStore
from provisioning import documents
from provisioning.documents import Document, Scope

PREFIX = "counterbox/v1"
TOPIC = f"{PREFIX}/regions/honghe/docs/price_list"
PRICES = {"currency": "CNY", "items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2300}]}


def _token(key: Ed25519PrivateKey, version: int) -> bytes:
    now = time.time()
    return documents.encode_document(Document("price_list", "price_list", version, Scope(region="honghe"), PRICES,
                                              now, now + 3600), key=key, kid="ops-1")


def _issue(store: CentralStore, key: Ed25519PrivateKey) -> bytes:
    now = time.time()
    return store.issue_document(lambda version: ("price_list", json.dumps(Scope(region="honghe").as_json()), "ops-1",
                                                 now, now + 3600, _token(key, version)), "price_list")[1]


@pytest.mark.foreign_messages  # something on a document's topic that is no document
def test_what_the_broker_lacks_or_holds_older_is_published_again_and_a_newer_copy_is_left(stack):
    key = Ed25519PrivateKey.generate()
    store = CentralStore(stack.central_db)
    _issue(store, key)
    newest = _issue(store, key)  # version 2: what the broker should hold
    thread = ThreadPoolExecutor(max_workers=1)

    async def scenario() -> list:
        found = []
        options = {"host": "127.0.0.1", "port": stack.broker_port, "client_id": "keeper-test"}
        keeper = Keeper(store=store, prefix=PREFIX, thread=thread, reader=options)

        async def held() -> bytes | None:
            async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="a-box-later",
                                subscriptions=[TOPIC]) as box:
                try:
                    async with asyncio.timeout(1.0):
                        async for message in box.messages():
                            return message.payload
                except TimeoutError:
                    return None

        async with MqttLink(**options) as link:
            await link.connected.wait()
            found.append((await keeper.keep(link), await held() == newest))  # lost: published again
            found.append((await keeper.keep(link), await held() == newest))  # held: left as it is
            await link.publish(TOPIC, _token(key, 1), retain=True)
            found.append((await keeper.keep(link), await held() == newest))  # older: replaced
            pushed = _token(key, 3)
            await link.publish(TOPIC, pushed, retain=True)  # pushed since central read its own
            found.append((await keeper.keep(link), await held() == pushed))
            await link.publish(TOPIC, b"not a document", retain=True)
            found.append((await keeper.keep(link), await held() == newest))
        return found

    try:
        assert asyncio.run(scenario()) == [(1, True), (0, True), (1, True), (0, True), (1, True)]
    finally:
        thread.shutdown()
        store.close()
