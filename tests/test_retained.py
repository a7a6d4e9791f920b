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
from provisioning import documents, jws
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


async def _retained_on(stack, topic: str) -> bytes | None:
    """What a box subscribing now finds retained on ``topic``."""
    async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="a-box-later",
                        subscriptions=[topic]) as box:
        try:
            async with asyncio.timeout(1.0):
                async for message in box.messages():
                    return message.payload
        except TimeoutError:
            return None


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

        async with MqttLink(**options) as link:
            await link.connected.wait()
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))  # lost: published again
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))  # held: left as it is
            await link.publish(TOPIC, _token(key, 1), retain=True)
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))  # older: replaced
            # A copy that says it is newer, which this database never issued: its word is nobody's (anyone who
            # may publish there can write it), and junk left there would keep the real one from every box.
            await link.publish(TOPIC, _token(Ed25519PrivateKey.generate(), 3), retain=True)
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))
            await link.publish(TOPIC, _unsigned(b'{"version": 99}'), retain=True)
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))
            await link.publish(TOPIC, b"not a document", retain=True)
            found.append((await keeper.keep(link), await _retained_on(stack, TOPIC) == newest))
        return found

    try:
        assert asyncio.run(scenario()) == [(1, True), (0, True), (1, True), (1, True), (1, True), (1, True)]
    finally:
        thread.shutdown()
        store.close()


async def _one_look(stack, store: CentralStore, thread: ThreadPoolExecutor, *, first=None) -> int:
    """The Keeper's look at the broker on a connection of central's (after ``first(link)``): how many it published."""
    options = {"host": "127.0.0.1", "port": stack.broker_port, "client_id": "keeper-test"}
    keeper = Keeper(store=store, prefix=PREFIX, thread=thread, reader=options)
    async with MqttLink(**options) as link:
        await link.connected.wait()
        if first is not None:
            await first(link)
        return await keeper.keep(link)


def _issue_revocation(store: CentralStore, key: Ed25519PrivateKey, now: float) -> bytes:
    """A revocation of shop-1, kept in central's database (and not at the broker, which lost it)."""
    revocation = documents.encode_document(Document("revocation", "revocation", 1, Scope(device="shop-1"),
                                                    {"reason": "left", "grace_seconds": 60}, now, now + 3600),
                                           key=key, kid="ops-1")
    store.issue_document(lambda version: ("revocation", json.dumps({"device": "shop-1"}), "ops-1", now, now + 3600,
                                          revocation), "revocation")
    return revocation


def _unsigned(payload: bytes) -> bytes:
    """Shaped like a document's token, signed by nobody."""
    header = jws.b64url(json.dumps({"alg": "Ed25519", "kid": "ops-1", "typ": "counterbox-doc+jws"}).encode())
    return f"{header}.{jws.b64url(payload)}.{jws.b64url(bytes(64))}".encode()


@pytest.mark.foreign_messages
def test_a_copy_that_cannot_be_read_on_one_topic_holds_up_no_other_document(stack):
    """Junk nested past what a JSON reader takes, on the region's price list topic, and a revocation the broker
    lost: both are put right in one look."""
    key = Ed25519PrivateKey.generate()
    store = CentralStore(stack.central_db)
    price_list = _issue(store, key)
    now = time.time()
    revocation = _issue_revocation(store, key, now)
    thread = ThreadPoolExecutor(max_workers=1)

    async def scenario():
        published = await _one_look(stack, store, thread, first=lambda link: link.publish(
            TOPIC, _unsigned(b"[" * 100_000), retain=True))
        return (published, await _retained_on(stack, TOPIC) == price_list,
                await _retained_on(stack, f"{PREFIX}/devices/shop-1/docs/revocation") == revocation)

    try:
        assert asyncio.run(scenario()) == (2, True, True)
    finally:
        thread.shutdown()
        store.close()


def _held_at(stack, topic: str) -> bytes | None:
    return asyncio.run(_retained_on(stack, topic))


def test_a_document_leaves_the_broker_when_it_expires_and_a_revocation_never_does(stack):
    """Every order ever pushed stayed retained for good: each box took them all again at each connection, and the
    broker's store grew week by week. The broker drops one at its expiry (MQTT 5 message expiry), when no box
    would take it any more; a revocation, which never lapses, it keeps."""
    stack.ops_public_key()
    store = CentralStore(stack.central_db)
    store.register("shop-7", "k" * 43, shop="530100000001", region="honghe")
    store.close()
    lines = stack.directory / "lines.csv"
    lines.write_text("barcode,name,quantity\n6901028075848,Hongtashan (carton),5\n")
    common = ["--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key), "--broker",
              f"127.0.0.1:{stack.broker_port}", "--device", "shop-7"]
    pushed = stack.ops_command("order", "push", *common, "--order-id", "w48", "--valid-days", "0.00004", str(lines))
    assert pushed.returncode == 0, pushed.stderr
    revoked = stack.ops_command("revoke", *common)
    assert revoked.returncode == 0, revoked.stderr
    order, revocation = f"{PREFIX}/devices/shop-7/docs/order/w48", f"{PREFIX}/devices/shop-7/docs/revocation"
    assert _held_at(stack, order) is not None and _held_at(stack, revocation) is not None
    time.sleep(4.0)  # past the order's 3.5 s
    assert _held_at(stack, order) is None
    assert _held_at(stack, revocation) is not None
    # Central's keeper publishes again only what is in force, each until its own expiry.
    key = Ed25519PrivateKey.generate()
    store = CentralStore(stack.central_db)
    now = time.time()
    token = documents.encode_document(Document("price_list", "price_list", 9, Scope(region="honghe"), PRICES, now,
                                               now + 2.5), key=key, kid="ops-1")
    store.issue_document(lambda version: ("price_list", json.dumps({"region": "honghe"}), "ops-1", now, now + 2.5,
                                          token), "price_list")
    thread = ThreadPoolExecutor(max_workers=1)

    async def keep() -> int:
        options = {"host": "127.0.0.1", "port": stack.broker_port, "client_id": "keeper-test"}
        async with MqttLink(**options) as link:
            await link.connected.wait()
            return await Keeper(store=store, prefix=PREFIX, thread=thread, reader=options).keep(link)

    try:
        assert asyncio.run(keep()) == 1  # the price list; the revocation is there, the order out of force
        assert _held_at(stack, TOPIC) == token
        time.sleep(3.0)
        assert _held_at(stack, TOPIC) is None and _held_at(stack, revocation) is not None
    finally:
        thread.shutdown()
        store.close()


@pytest.fixture
def small_packets(monkeypatch):
    """A broker that takes packets of 64 KiB at most (counterbox's take 8 MiB)."""
    import demo.stack
    shipped = demo.stack.broker_config
    monkeypatch.setattr(demo.stack, "broker_config",
                        lambda *args, **kwargs: shipped(*args, **kwargs).replace("max_packet_size 8388608",
                                                                                 "max_packet_size 65536"))


def test_a_document_too_large_for_the_broker_holds_up_no_other(small_packets, stack, caplog):
    """A region's price list over the broker's limit, and a revocation the broker lost: the revocation is put
    back; the list is said, with what to set. Before, the look ended at the list, every hour, for good."""
    key = Ed25519PrivateKey.generate()
    store = CentralStore(stack.central_db)
    now = time.time()
    big = {"currency": "CNY", "items": [{"barcode": code, "name": f"Product {n}", "price": 100}
                                        for n, code in enumerate(_valid_codes(2000))]}  # some 150 KB
    store.issue_document(lambda version: ("price_list", json.dumps(Scope(region="honghe").as_json()), "ops-1", now,
                                          now + 3600, documents.encode_document(Document(
                                              "price_list", "price_list", version, Scope(region="honghe"), big, now,
                                              now + 3600), key=key, kid="ops-1")), "price_list")
    revocation = _issue_revocation(store, key, now)
    thread = ThreadPoolExecutor(max_workers=1)

    async def scenario():
        published = await _one_look(stack, store, thread)
        return published, await _retained_on(stack, f"{PREFIX}/devices/shop-1/docs/revocation") == revocation

    try:
        assert asyncio.run(scenario()) == (1, True)
    finally:
        thread.shutdown()
        store.close()
    assert "document price_list version 1 cannot be published again" in caplog.text
    assert "max_packet_size to 8388608" in caplog.text


def _valid_codes(count: int) -> list[str]:
    from drivers.barcode import gs1_check_digit
    return [f"690{n:09d}{gs1_check_digit(f'690{n:09d}')}" for n in range(1, count + 1)]
