"""Documents operations push down: only what a trusted operations key signed for this box, newer than
what it holds and still in time, is applied; anything else is refused, logged, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo

import paho.mqtt.publish as mqtt_publish
import pytest

from central.store import CentralStore
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey
from paho.mqtt.client import MQTTv5

from agent.config import UplinkConfig
from agent.downlink import Downlink
from agent.mqtt import Message, MqttLink
from agent.uplink import Uplink
from provisioning import documents, jws, protocol
from provisioning.documents import Document, Scope
from provisioning.errors import ProtocolError, SignatureError
from provisioning.identity import key_id, load_key, public_key_text
from storage import Store

from .harness import feed, scans, signed_with_header, wait_until

NOW = 1_764_000_000.0
PRICES = {"currency": "CNY", "items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2300}]}
ORDER = {"order_id": "2026-W48-17", "lines": [{"barcode": "6901028075848", "name": "Hongtashan (carton)", "quantity": 5}]}


@pytest.fixture
def ops():
    return Ed25519PrivateKey.generate()


def document(kind="price_list", name="price_list", version=1, scope=Scope(region="honghe"), body=PRICES,
             issued_at=NOW, expires_at=NOW + 86400):
    return Document(kind, name, version, scope, body, issued_at, expires_at)


def test_a_document_round_trips_and_an_off_the_shelf_library_verifies_it(ops):
    kid = key_id(ops)
    token = documents.encode_document(document(), key=ops, kid=kid)
    assert documents.decode_document(token, trusted={kid: ops.public_key()}) == document()
    public = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": public_key_text(ops)})
    assert public.thumbprint() == kid  # the key id is the key's RFC 7638 thumbprint
    verified = joserfc_jws.deserialize_compact(token, public, algorithms=["Ed25519"])
    assert verified.protected == {"alg": "Ed25519", "kid": kid, "typ": "counterbox-doc+jws"}
    assert json.loads(verified.payload)["scope"] == {"region": "honghe"}


def _signed(payload: dict, key, kid: str, typ: str = documents.DOCUMENT_TYPE) -> bytes:
    return jws.sign(json.dumps(payload).encode(), key, kid=kid, typ=typ).encode()


def _payload(**change):
    base = {"v": 1, "kind": "price_list", "name": "price_list", "version": 3, "scope": {"region": "honghe"},
            "issued_at": "2025-11-24T16:00:00.000Z", "expires_at": "2025-12-24T16:00:00.000Z", "body": PRICES}
    return {**base, **change}


def _item(**change):
    return {"currency": "CNY", "items": [{**PRICES["items"][0], **change}]}


@pytest.mark.parametrize("forge,reason", [
    (lambda k, kid: documents.encode_document(document(), key=Ed25519PrivateKey.generate(), kid="someone"),
     "signed by 'someone', which is not a trusted operations key"),
    (lambda k, kid: documents.encode_document(document(), key=Ed25519PrivateKey.generate(), kid=kid),
     "signature check failed"),
    (lambda k, kid: _signed(_payload(), k, kid, typ=protocol.BATCH_TYPE), "typ 'counterbox-batch+jws'"),
    (lambda k, kid: _signed(_payload(v=2), k, kid), "not a version 1 document"),
    (lambda k, kid: _signed(_payload(kind="firmware"), k, kid), "lacks a known kind"),
    (lambda k, kid: _signed(_payload(version=0), k, kid), "a version of 1 or more"),
    (lambda k, kid: _signed(_payload(name="order/1"), k, kid), "does not fit its kind"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/a/b", body=ORDER), k, kid), "does not fit its kind"),
    (lambda k, kid: _signed(_payload(scope={"region": "honghe", "device": "shop-1"}), k, kid), "one device or for one region"),
    (lambda k, kid: _signed(_payload(scope={"shop": "x"}), k, kid), "scope or times"),
    (lambda k, kid: _signed(_payload(scope={"device": "shop-1", "region": None}), k, kid),
     "a scope is for one device or for one region, naming that one alone"),
    (lambda k, kid: _signed(_payload(scope={"region": "a/b"}), k, kid), "region 'a/b' must be"),
    (lambda k, kid: _signed(_payload(expires_at="tomorrow"), k, kid), "not an RFC 3339 UTC time"),
    (lambda k, kid: _signed(_payload(body={"items": []}), k, kid), "a price list's currency None is not an ISO 4217 code"),
    (lambda k, kid: _signed(_payload(body=_item(price=-1)), k, kid), "price list item 1 needs"),
    (lambda k, kid: _signed(_payload(body=_item(price=23.5)), k, kid), "price list item 1 needs"),
    (lambda k, kid: _signed(_payload(body=_item(price=True)), k, kid), "price list item 1 needs"),
    (lambda k, kid: _signed(_payload(body=_item(barcode="")), k, kid), "price list item 1 needs"),
    (lambda k, kid: _signed(_payload(body=_item(barcode=6901028075831)), k, kid), "price list item 1 needs"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/1", body={"order_id": "1", "lines": []}), k, kid), "needs its lines"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/1", body={"order_id": "1", "lines": [
        {"barcode": "1", "name": "x", "quantity": 0}]}), k, kid),
     "order line 1 needs"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/1", body={"order_id": "1", "lines": [
        {"barcode": "96385074", "name": "x\r\nEVIL", "quantity": 1}]}), k, kid),
     "order line 1 needs a barcode with its check digit right, a name (text without control characters)"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/1", body={"order_id": "1", "lines": [
        {"barcode": "96385074", "name": "x", "quantity": 1, "price": 100}]}), k, kid),
     "order line 1 holds barcode, name, quantity only"),
    (lambda k, kid: _signed(_payload(kind="revocation", name="revocation", body={"reason": "closed",
                                                                                 "grace_seconds": 60}), k, kid),
     "a revocation is for one device, never a region"),
    (lambda k, kid: _signed(_payload(kind="order", name="order/1", body={"order_id": "1", "lines": [
        {"barcode": "96385074", "name": "x", "quantity": 1}]}), k, kid), "an order is for one device, never a region"),
    (lambda k, kid: _signed(_payload(kind="settings", name="settings", scope={"device": "shop-1"},
                                     body={"counter": {"mode_timeout": 60}}), k, kid),
     "a region's settings are for a region; a device's own are settings/device"),
    (lambda k, kid: _signed(_payload(body=_item(cost=None)), k, kid), "cost an integer from 0 to"),
    (lambda k, kid: _signed(_payload(body=_item(product=None)), k, kid), "price list item 1: unit must be pack"),
    (lambda k, kid: _signed(_payload(kind="revocation", name="revocation", scope={"device": "shop-1"},
                                     body={"reason": "closed"}), k, kid), "needs a reason and grace_seconds"),
    (lambda k, kid: b"A" * (protocol.MAX_TOKEN_BYTES + 1), "over the protocol's limit"),
    (lambda k, kid: b"\xff" + documents.encode_document(document(), key=k, kid=kid), "not a JWS compact token"),
], ids=["untrusted-kid", "other-key", "typ", "version", "kind", "version-0", "name", "order-name", "two-scopes",
        "unknown-scope", "scope-and-null", "region", "time", "no-currency", "negative-price", "fractional-price", "bool-price",
        "empty-barcode", "numeric-barcode", "no-lines", "zero-quantity", "line-name-control", "line-key", "region-revocation", "region-order", "device-region-settings", "null-cost", "null-product", "no-grace", "oversize",
        "non-ascii"])
def test_a_document_that_is_not_a_trusted_well_formed_one_is_refused_with_its_reason(ops, forge, reason):
    kid = key_id(ops)
    with pytest.raises((ProtocolError, SignatureError), match=re.escape(reason)):
        documents.decode_document(forge(ops, kid), trusted={kid: ops.public_key()})


UNIT_RULE = "price list item 1: unit must be pack"


@pytest.mark.parametrize("body,reason", [
    ({"currency": "CNY", "items": {"barcode": "1"}}, "a price list needs a list of one item or more"),
    ({"currency": "CNY", "items": []}, "needs a list of one item or more"),  # a file of no items is refused too
    ({**PRICES, "region": "honghe"}, "a price list holds currency, items, source only, not region"),
    ({**PRICES, "source": "prices\x1b[2J.csv"}, "a price list's source is text without control characters"),
    (_item(name="Hongtashan\x1b]0;owned\x07"), "price list item 1 needs a barcode with its check digit right, a name "
                                               "(text without control characters)"),
    (_item(name="Hongta\x85shan"), "a name (text without control characters)"),  # C1 as well as C0
    # Shown the other way round in an operator's table: "Hongtashan" read as "nahsatgnoH" and the like.
    (_item(name="Hong\u202etashan"), "a name (text without control characters)"),
    (_item(name="Hong\u2067tashan\u2069"), "a name (text without control characters)"),
    # Codes no scan ever hands on: the decoder takes an AIM identifier off, and a stray space never matches.
    (_item(barcode="]E06901028075831"), "price list item 1 needs a barcode with its check digit right"),
    (_item(barcode=" 6901028075832"), "price list item 1 needs a barcode with its check digit right"),
    (_item(barcode="6901028075831 "), "price list item 1 needs a barcode with its check digit right"),
    (_item(note={"deep": [1]}), "price list item 1 holds barcode, cost, name, packs, price, product, unit only"),
    ({"currency": "cny", "items": []}, "a price list's currency 'cny' is not an ISO 4217 code: three capital letters"),
    (_item(unit="box"), UNIT_RULE),
    (_item(unit="pack", packs=2), UNIT_RULE),
    (_item(unit="carton", packs=0, product="6901028075848"), UNIT_RULE),
    (_item(unit="case", product="6901028075848"), UNIT_RULE),
    (_item(unit="carton", packs=10), UNIT_RULE),
    (_item(cost=-1), UNIT_RULE),
    (_item(product=""), UNIT_RULE),
    (_item(barcode="6" * 49), "price list item 1 needs a barcode with its check digit right, a name "),
    (_item(barcode="69010280\x0175831"), "price list item 1 needs"),
    (_item(name=None), "price list item 1 needs"),
    (_item(barcode="6901028075832"), "price list item 1 needs a barcode with its check digit right"),
    (_item(price=documents.MAX_AMOUNT + 1), "a price in the currency's minor unit (an integer from 0 to 99999999999)"),
    (_item(price=10**30), "price list item 1 needs"),
    (_item(cost=documents.MAX_AMOUNT + 1), UNIT_RULE),
    (_item(barcode="16901028075838", unit="case", packs=documents.MAX_PACKS + 1, product="6901028075831"), UNIT_RULE),
    (_item(unit="carton", product="6901028075831"), UNIT_RULE),  # a carton priced as its own pack
    (_item(unit="pack", product="6901028075848"), UNIT_RULE),  # a pack that says it is another product
    (_item(barcode="6901028075848", unit="carton", product="6901028075832"), UNIT_RULE),
    ({"currency": "CNY", "items": [PRICES["items"][0], {**PRICES["items"][0], "price": 1}]},
     "price list items 1 and 2 list the same product"),
    ({"currency": "CNY", "items": [{"barcode": "036000291452", "name": "x", "price": 1},
                                   {"barcode": "0036000291452", "name": "y", "price": 2}]},
     "price list items 1 and 2 list the same product"),  # a UPC-A and its EAN-13: one product
    ({"currency": "CNY", "items": [{"barcode": "00000000100007", "name": "x", "price": 1},
                                   {"barcode": "00100007", "name": "y", "price": 9}]},
     "price list items 1 and 2 list one 8-digit label twice, read as an EAN-8 and as a UPC-E"),
    ({"currency": "CNY", "items": [{"barcode": "00100007", "name": "x", "price": 1},
                                   {"barcode": "96385074", "name": "z", "price": 5},
                                   {"barcode": "00000000100007", "name": "y", "price": 9}]},
     "price list items 1 and 3 list one 8-digit label twice"),  # either order
    ({"currency": "CNY", "items": [{"barcode": "6901028075831", "name": "pack", "price": 23},
                                   {"barcode": "6901028075848", "name": "carton", "price": 230, "unit": "carton",
                                    "product": "6901028075831"},
                                   {"barcode": "16901028075838", "name": "case", "price": 11500, "unit": "case",
                                    "packs": 500, "product": "6901028075848"}]},
     "price list item 3 names item 2 as its product, which is not a pack"),  # stock kept apart from the pack's
], ids=["items-not-a-list", "no-items", "other-key", "source-control", "name-escape", "name-c1", "name-override",
        "name-isolate", "barcode-aim", "barcode-leading-space", "barcode-trailing-space", "item-key",
        "currency-case", "unit", "pack-of-two", "no-packs", "case-without-packs",
        "carton-without-product", "negative-cost", "empty-product", "barcode-49", "barcode-control", "no-name",
        "check-digit", "price-over", "price-huge", "cost-over", "packs-over", "carton-of-itself", "pack-of-another",
        "product-check-digit", "twice", "upc-and-ean", "ean8-and-upce", "upce-and-ean8", "case-of-a-carton"])
def test_a_price_list_row_a_box_could_not_use_is_refused_for_its_one_fault(ops, body, reason):
    kid = key_id(ops)
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        documents.decode_document(_signed(_payload(body=body), ops, kid), trusted={kid: ops.public_key()})


@pytest.mark.parametrize("item", [
    {"price": 0},
    {"barcode": "6"},
    {"barcode": "6" * 48},
    {"cost": 0},
    {"unit": "pack", "packs": 1, "product": "6901028075831"},
    {"barcode": "6901028075848", "unit": "carton", "product": "6901028075831"},
    {"barcode": "6901028075848", "unit": "carton", "packs": 10, "product": "6901028075831", "cost": 21000},
    {"barcode": "16901028075838", "unit": "case", "packs": 500, "product": "6901028075831"},
], ids=["free", "one-character-barcode", "48-character-barcode", "zero-cost", "pack", "carton", "carton-of-ten", "case"])
def test_a_price_list_row_at_the_edge_of_the_rules_is_taken(ops, item):
    kid = key_id(ops)
    document_ = documents.decode_document(_signed(_payload(body=_item(**item)), ops, kid), trusted={kid: ops.public_key()})
    assert document_.body["items"][0] == {**PRICES["items"][0], **item}


def test_a_decoded_document_names_the_operations_key_that_signed_it(ops):
    kid = key_id(ops)
    assert documents.decode_document(_signed(_payload(), ops, kid), trusted={kid: ops.public_key()}).kid == kid


@pytest.mark.parametrize("kid", [5, ["k"], {"k": 1}, None])
def test_a_key_id_that_is_not_a_string_is_an_untrusted_key_not_a_crash(ops, kid):
    token = signed_with_header(json.dumps(_payload()).encode(), ops, {"alg": "Ed25519", "kid": kid, "typ": documents.DOCUMENT_TYPE})
    with pytest.raises(SignatureError, match="which is not a trusted operations key"):
        documents.decode_document(token, trusted={key_id(ops): ops.public_key()})


SETTINGS_BODY = {"counter": {"timezone": "Asia/Shanghai", "mode_timeout": 600, "pending_timeout": 60.5},
                 "uplink": {"status_interval": 60, "snapshot_interval": 30 * 86400}}


def test_settings_within_the_rules_are_taken(ops):
    kid = key_id(ops)
    token = _signed(_payload(kind="settings", name="settings", body=SETTINGS_BODY), ops, kid)
    assert documents.decode_document(token, trusted={kid: ops.public_key()}).body == SETTINGS_BODY


@pytest.mark.parametrize("body,reason", [
    ({}, "settings need at least one section"),
    ({"counter": 5}, "settings need at least one section"),
    ({"scanner": {"timeout": 5}}, "settings section 'scanner' is not one a box takes (counter, uplink)"),
    ({"counter": {}}, "settings [counter] may set mode_timeout, pending_timeout, timezone only"),
    ({"counter": {"currency": "CNY"}}, "settings [counter] may set"),
    ({"counter": {"timezone": "Asia/Shanghai; rm"}}, "timezone 'Asia/Shanghai; rm' is not an IANA time zone name"),
    ({"counter": {"timezone": 8}}, "is not an IANA time zone name"),
    ({"counter": {"mode_timeout": 0}}, "settings [counter] mode_timeout must be a number of seconds above 0"),
    ({"counter": {"mode_timeout": -1}}, "mode_timeout must be"),
    ({"counter": {"mode_timeout": True}}, "mode_timeout must be"),
    ({"counter": {"mode_timeout": "600"}}, "mode_timeout must be"),
    ({"uplink": {"status_interval": 30 * 86400 + 1}}, "settings [uplink] status_interval must be"),
    # A region's boxes reporting in a tight loop (1,933 statuses in 5 s from one box) flood the broker and central.
    ({"uplink": {"status_interval": 1e-6}}, "settings [uplink] status_interval must be at least 0.5 seconds"),
    ({"uplink": {"snapshot_interval": 0.4}}, "settings [uplink] snapshot_interval must be at least 0.5 seconds"),
], ids=["empty", "section-not-a-table", "unknown-section", "empty-section", "unknown-key", "timezone-shell",
        "timezone-number", "zero", "negative", "bool", "string", "over-30-days", "status-tight-loop",
        "snapshot-tight-loop"])
def test_settings_a_box_cannot_take_are_refused_with_their_reason(ops, body, reason):
    kid = key_id(ops)
    token = _signed(_payload(kind="settings", name="settings", body=body), ops, kid)
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        documents.decode_document(token, trusted={kid: ops.public_key()})


@pytest.mark.parametrize("kind,name,body,reason", [
    ("order", "order/7", {"lines": ORDER["lines"]}, "an order needs its order_id, the one its name 'order/7' gives"),
    ("order", "order/7", {**ORDER, "order_id": "8"}, "an order needs its order_id"),
    ("order", "order/7", {**ORDER, "order_id": "7", "name": None}, "an order holds lines, order_id only, not name"),
    ("order", "order/7", {**ORDER, "order_id": "7", "version": 99}, "not version"),
    ("order", "order/7", {"order_id": "7", "lines": [{**ORDER["lines"][0], "quantity": documents.MAX_QUANTITY + 1}]},
     "order line 1 needs a barcode with its check digit right, a name (text without control characters) and a quantity from 1 to 100000"),
    ("order", "order/7", {"order_id": "7", "lines": [{**ORDER["lines"][0], "quantity": 10**30}]}, "order line 1 needs"),
    ("order", "order/7", {"order_id": "7", "lines": [{**ORDER["lines"][0], "barcode": "6901028075832"}]},
     "order line 1 needs"),
    ("order", "order/7", {"order_id": "7", "lines": [{**ORDER["lines"][0], "name": None}]}, "order line 1 needs"),
    ("revocation", "revocation", {"reason": "closed", "grace_seconds": documents.MAX_GRACE + 1},
     "a revocation needs a reason and grace_seconds (0 to 2592000)"),
    ("revocation", "revocation", {"reason": "closed", "grace_seconds": 10**400}, "grace_seconds (0 to"),
    ("revocation", "revocation", {"reason": "closed", "grace_seconds": 60, "name": "x"},
     "a revocation holds grace_seconds, reason only, not name"),
], ids=["no-order-id", "other-order-id", "name-in-body", "version-in-body", "quantity-over", "quantity-huge",
        "check-digit", "line-name-null", "grace-over", "grace-huge", "revocation-name-in-body"])
def test_an_order_or_revocation_a_box_could_not_use_as_it_is_is_refused(ops, kind, name, body, reason):
    """Its body goes into the box's event beside the document's name and version: nothing in it may stand for
    those, and its numbers keep the bounds of a file loaded on the box."""
    kid = key_id(ops)
    payload = _payload(kind=kind, name=name, body=body, scope={"device": "shop-1"})
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        documents.decode_document(_signed(payload, ops, kid), trusted={kid: ops.public_key()})


@pytest.mark.parametrize("change,reason", [
    ({"version": 2**53}, "a version of 1 or more"),
    ({"expires_at": "9999-12-31T23:59:59.999999Z"}, "later than any time the protocol writes"),
    ({"issued_at": "9999-12-31T23:59:59.9999995Z"}, "not an RFC 3339 UTC time"),
], ids=["version-past-json", "time-rounding-into-10000", "seven-digits"])
def test_numbers_and_times_a_box_could_not_carry_back_on_the_wire_are_refused(ops, change, reason):
    kid = key_id(ops)
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        documents.decode_document(_signed(_payload(**change), ops, kid), trusted={kid: ops.public_key()})


def test_the_last_second_the_wire_writes_is_taken():
    assert protocol.rfc3339(protocol.parse_rfc3339("9999-12-31T23:59:59.998Z")).startswith("9999-12-31T23:59:59.")


def test_operations_cannot_sign_a_document_a_box_would_refuse(ops):
    with pytest.raises(ProtocolError, match="price list item 1 needs"):
        documents.encode_document(document(body=_item(price=-1)), key=ops, kid="k")


def test_a_price_list_too_big_for_one_message_is_refused_when_it_is_signed(ops):
    items = [{"barcode": f"P{n:012d}", "name": "x" * 200, "price": 100} for n in range(40_000)]
    with pytest.raises(ProtocolError, match="is more than a box records as one event"):
        documents.encode_document(document(body={"currency": "CNY", "items": items}), key=ops, kid="k")


def _body_of(size: int) -> dict:
    """A price list whose body's JSON is ``size`` bytes: one item, its name the filler."""
    body = {"currency": "CNY", "items": [{"barcode": "6901028075831", "name": "", "price": 2300}]}
    body["items"][0]["name"] = "x" * (size - len(protocol.payload_json(body)))
    assert len(protocol.payload_json(body)) == size
    return body


def test_a_document_whose_content_the_box_could_not_record_is_refused_though_its_message_fits(tmp_path, ops):
    """A body a little under the message's limit is a little over what the box records as one event: signed,
    it would be refused by every box. The largest the box takes is recorded."""
    largest = protocol.MAX_EVENT_BYTES - documents.CONTENT_MARGIN
    over = _body_of(largest + 1)
    token = _signed(_payload(body=over), ops, key_id(ops))
    assert len(token) < protocol.MAX_TOKEN_BYTES  # the message fits; its content would not
    for attempt in (lambda: documents.encode_document(document(body=over), key=ops, kid=key_id(ops)),
                    lambda: documents.decode_document(token, trusted={key_id(ops): ops.public_key()})):
        with pytest.raises(ProtocolError, match=f"its body of {largest + 1} bytes is more than a box records"):
            attempt()

    # Signed here, not on the loop: a body of megabytes takes the test's own thread a while to sign.
    message = _message(ops, body=_body_of(largest))

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(message)
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "price_list": 1}


# -- the box's door, in this process: a real journal and the downlink the daemon runs ------------------------------

async def _door(tmp_path, ops):
    """A real journal and the box's downlink in front of it; the uplink beside it is made, not run."""
    store = await Store.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
    device_key = Ed25519PrivateKey.generate()
    link = MqttLink(host="127.0.0.1", port=1, client_id="shop-1")
    uplink = Uplink(store=store, link=link, device_id="shop-1", session=1, key=device_key,
                    central_key=device_key.public_key(), config=UplinkConfig())
    downlink = Downlink(store=store, uplink=uplink, device_id="shop-1", region="honghe",
                        trusted={key_id(ops): ops.public_key()}, topic_prefix="counterbox/v1")
    return store, downlink


def _message(ops, **change) -> Message:
    now = time.time()
    payload = _payload(**{"issued_at": protocol.rfc3339(now), "expires_at": protocol.rfc3339(now + 3600), **change})
    scope = payload["scope"]
    where = f"devices/{scope['device']}" if "device" in scope else f"regions/{scope['region']}"
    return Message(f"counterbox/v1/{where}/docs/{payload['name']}", _signed(payload, ops, key_id(ops)))


def test_the_regions_list_retained_under_a_boxs_own_is_neither_verified_again_nor_called_a_replay(
        tmp_path, caplog, monkeypatch):
    """A box with a price list of its own (device scope) over its region's, which stays retained for the region's
    other boxes: the broker hands it that copy at every connection. It changes nothing, is no replay, and a
    20,000-item list verified again each time costs the box a second of CPU."""
    ops = Ed25519PrivateKey.generate()
    region = _message(ops, version=5)
    own = _message(ops, version=6, scope={"device": "shop-1"}, body=_item(price=1999))
    checked = []
    decode = documents.decode_document
    monkeypatch.setattr(documents, "decode_document", lambda token, **kw: checked.append(token) or decode(token, **kw))

    async def test(first):
        store, downlink = await _door(tmp_path, ops)
        try:
            for message in first:
                await downlink.handle(message)
            checked.clear()
            caplog.clear()
            for _ in range(3):  # three connections: both retained copies each time
                await downlink.handle(region)
                await downlink.handle(own)
        finally:
            await store.close()

    with caplog.at_level(logging.DEBUG, logger="agent.downlink"):
        asyncio.run(test([region, own]))
    assert checked == [] and [r for r in caplog.records if r.levelno >= logging.INFO] == []
    # A box started again (its own list in the journal) sees the region's copy first: said once, not as a replay.
    with caplog.at_level(logging.DEBUG, logger="agent.downlink"):
        asyncio.run(test([]))
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [("INFO", "document topic=counterbox/v1/regions/honghe/docs/price_list: version 5, under version 6 "
                             "of device shop-1 in force; it changes nothing")]
    assert len(checked) == 1


@pytest.mark.parametrize("change", [
    {"kind": "settings", "name": "settings", "body": {"counter": {"timezone": "America"}}},
    {"kind": "settings", "name": "settings", "body": {"counter": {"timezone": "A" * 300}}},
    {"kind": "settings", "name": "settings", "body": {"counter": {"timezone": "a/" * 3000 + "b"}}},
    {"expires_at": "9999-12-31T23:59:59.999999Z"},
    {"kind": "revocation", "name": "revocation", "scope": {"device": "shop-1"},
     "body": {"reason": "closed", "grace_seconds": 10**400}},
    {"kind": "order", "name": "order/7", "body": {"lines": ORDER["lines"], "name": None}},
], ids=["zone-a-directory", "zone-too-long", "zone-too-deep", "time-past-9999", "grace-past-any-clock", "order-no-id"])
def test_a_document_a_box_cannot_use_is_refused_at_the_door_and_the_next_one_applies(tmp_path, ops, change, caplog):
    """Each of these once ended the agent (and, retained at the broker, ended it again at every start)."""
    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(_message(ops, **change))
            assert await store.read(lambda journal: journal.last_seq()) == 0  # nothing changed
            await downlink.handle(_message(ops))  # a price list right behind it
            assert [e.kind for e in await store.read(lambda journal: journal.read_after(0))] == ["price_list", "document"]
        finally:
            await store.close()

    asyncio.run(test())
    assert "document refused" in caplog.text and "nothing changed" in caplog.text


def test_a_document_whose_check_fails_unforeseen_is_refused_and_the_agent_goes_on(tmp_path, ops, caplog, monkeypatch):
    """The last guard at the door: a check that raises what nobody foresaw (here made to) refuses that
    document alone, with the traceback for the box's maintainers."""
    real = documents.decode_document

    def failing(token, *, trusted):
        document_ = real(token, trusted=trusted)
        if document_.version == 3:
            raise RecursionError("maximum recursion depth exceeded")
        return document_

    monkeypatch.setattr(documents, "decode_document", failing)

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(_message(ops))
            assert await store.read(lambda journal: journal.last_seq()) == 0
            await downlink.handle(_message(ops, version=4))
            assert await store.read(lambda journal: journal.last_seq()) == 2
        finally:
            await store.close()

    asyncio.run(test())
    refused = [r for r in caplog.records if "checking it failed" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelname == "ERROR" and refused[0].exc_info[0] is RecursionError


def test_a_document_that_comes_while_the_journal_cannot_be_read_waits_for_the_next_one(tmp_path, ops, caplog,
                                                                                     monkeypatch):
    """The look at which versions the box holds failing once (an I/O error) left the downlink's task, and the
    agent, ended. Said, and the document held: the same document coming again (retained, at the next
    connection) takes its place and is applied."""
    from agent import downlink as downlink_module

    from .journals import Failing

    monkeypatch.setattr(downlink_module, "applied_versions", Failing(downlink_module.applied_versions))

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            message = _message(ops)
            await downlink.handle(message)
            assert await store.read(lambda journal: journal.last_seq()) == 0
            await downlink.handle(message)  # the retained copy, at the next connection
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "price_list": 1}
    [said] = [r for r in caplog.records if "NOT applied" in r.getMessage()]
    assert said.levelname == "ERROR" and "the journal cannot be read (journal.db: disk I/O error)" in said.getMessage()


def test_a_document_the_journal_cannot_take_for_a_while_is_applied_once_it_can_on_the_same_connection(
        stack, tmp_path, ops, caplog, monkeypatch):
    """A full disk or an I/O error while a price list comes in: the box held it until the next connection
    (days, on a steady link). Now it is held and tried again after pauses that double from 0.5 s, and
    the log says so once, then quietly, and says when it is applied."""
    import logging

    from agent import downlink as downlink_module

    from .journals import Failing

    caplog.set_level(logging.DEBUG, logger="agent.downlink")
    monkeypatch.setattr(downlink_module, "apply", Failing(downlink_module.apply, left=2))
    message = _message(ops)

    async def test():
        store = await Store.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
        try:
            async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-1",
                                subscriptions=[message.topic]) as link:
                device_key = Ed25519PrivateKey.generate()
                uplink = Uplink(store=store, link=link, device_id="shop-1", session=1, key=device_key,
                                central_key=device_key.public_key(), config=UplinkConfig())
                downlink = Downlink(store=store, uplink=uplink, device_id="shop-1", region="honghe",
                                    trusted={key_id(ops): ops.public_key()}, topic_prefix="counterbox/v1")
                running = asyncio.create_task(downlink.run(link))
                try:
                    await link.connected.wait()
                    generation = link.generation
                    await asyncio.to_thread(_publish, stack, message.topic, message.payload)
                    async with asyncio.timeout(20):
                        while not await store.read(lambda journal: journal.counts()):
                            await asyncio.sleep(0.05)
                    assert link.generation == generation  # no new connection brought it again
                    return await store.read(lambda journal: journal.counts())
                finally:
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "price_list": 1}
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.downlink"]
    held = [(level, text) for level, text in said if "NOT applied" in text]
    assert [level for level, _ in held] == ["ERROR", "DEBUG"]
    assert held[0][1] == (f"document NOT applied topic={message.topic}: price_list version=3 could not be recorded "
                          "(journal.db: disk I/O error); tried again in 0.5s")
    assert held[1][1].endswith("tried again in 1.0s")
    assert said[-1][0] == "INFO" and said[-1][1].startswith("document applied seq=2 price_list version=3")


def test_an_order_applied_keeps_its_stream_name_and_version_in_the_event(tmp_path, ops):
    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(_message(ops, kind="order", name="order/7", version=2, scope={"device": "shop-1"},
                                           body={**ORDER, "order_id": "7"}))
            return await store.read(lambda journal: journal.last("order"))
        finally:
            await store.close()

    order = asyncio.run(test())
    assert (order.body["name"], order.body["version"], order.body["order_id"]) == ("order/7", 2, "7")
    assert order.body["lines"] == ORDER["lines"]


def test_a_document_applied_and_since_expired_comes_again_retained_and_is_quietly_ignored(tmp_path, ops, caplog,
                                                                                           monkeypatch):
    """An order stays retained for good: once past its expiry, its copy at every reconnection is the one the
    box applied, not a refusal to warn of. A new version that has expired is refused."""
    import logging

    caplog.set_level(logging.DEBUG, logger="agent.downlink")

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            now = time.time()
            order = _message(ops, kind="order", name="order/7", version=1, scope={"device": "shop-1"}, body={**ORDER, "order_id": "7"},
                             expires_at=protocol.rfc3339(now + 60))
            await downlink.handle(order)
            monkeypatch.setattr(time, "time", lambda: now + 120)  # an hour of reconnections later, past its expiry
            for _ in range(3):
                await downlink.handle(order)
            newer = _message(ops, kind="order", name="order/7", version=2, scope={"device": "shop-1"}, body={**ORDER, "order_id": "7"},
                             issued_at=protocol.rfc3339(now), expires_at=protocol.rfc3339(now + 60))
            await downlink.handle(newer)
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "order": 1}
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.downlink"]
    assert [m for level, m in said if level == "DEBUG"] == ["document order/7 version 1 already applied"] * 3
    [refused] = [m for level, m in said if level == "WARNING"]
    assert refused.startswith("document refused topic=counterbox/v1/devices/shop-1/docs/order/7: it expired at ")


def _counted_checks(monkeypatch) -> list[int]:
    """A list that grows by one each time the downlink verifies a document."""
    from agent import downlink as downlink_module

    checked: list[int] = []
    decode = downlink_module.documents.decode_document
    monkeypatch.setattr(downlink_module.documents, "decode_document",
                        lambda *args, **kwargs: checked.append(1) or decode(*args, **kwargs))
    return checked


def test_the_retained_copy_of_a_document_applied_is_not_checked_again_at_each_connection(tmp_path, ops, monkeypatch):
    """Every order ever pushed stays retained: each connection brought them all again, each verified and checked
    in full (seconds a year on), before the next acknowledgement could be read."""
    checked = _counted_checks(monkeypatch)
    signed = protocol.rfc3339(time.time())
    order = _message(ops, kind="order", name="order/7", version=1, scope={"device": "shop-1"},
                     body={**ORDER, "order_id": "7"}, issued_at=signed)
    other = _message(ops, kind="order", name="order/7", version=1, scope={"device": "shop-1"}, issued_at=signed,
                     body={**ORDER, "order_id": "7", "lines": [{**ORDER["lines"][0], "quantity": 6}]})

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            for message in (order, order, order, other):
                await downlink.handle(message)
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "order": 1}
    assert len(checked) == 2  # the first copy, and the other bytes under its version (refused: signed no later)


def test_a_document_an_earlier_version_of_the_box_applied_is_checked_once_then_known_by_its_bytes(tmp_path, ops,
                                                                                                 monkeypatch):
    """A box of an earlier version recorded no digest of what it applied: after an upgrade the retained copy is
    verified once, at the first connection, and skipped like any other from then on."""
    checked = _counted_checks(monkeypatch)
    signed = protocol.rfc3339(time.time())
    order = _message(ops, kind="order", name="order/7", version=1, scope={"device": "shop-1"},
                     body={**ORDER, "order_id": "7"}, issued_at=signed)

    def applied_before_the_upgrade(journal):
        about = {"name": "order/7", "version": 1, "issued_at": signed}
        content = journal.append("order", {**ORDER, "order_id": "7", **about})
        journal.append("document", {**about, "kind": "order", "content_seq": content})  # no scope, no digest

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await store.write(applied_before_the_upgrade)
            for _ in range(4):
                await downlink.handle(order)
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "order": 1}
    assert len(checked) == 1


def _prices_held(store) -> list[int]:
    return store.read(lambda journal: [event.body["items"][0]["price"] for event in journal.of_kind("price_list")])


def test_a_version_signed_again_with_other_content_is_applied_when_signed_later_and_said_either_way(tmp_path, ops,
                                                                                                 caplog):
    """Central's database restored from a backup older than its last push signs the next list under a version a
    box holds: the box once ignored it at DEBUG and sold at the old prices."""
    import logging

    caplog.set_level(logging.DEBUG, logger="agent.downlink")
    now = time.time()
    first = _message(ops, version=2, issued_at=protocol.rfc3339(now - 3600), body=_item(price=2400))
    again = _message(ops, version=2, issued_at=protocol.rfc3339(now), body=_item(price=1990))

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            for message in (first, again, first, again):
                await downlink.handle(message)
            return await _prices_held(store)
        finally:
            await store.close()

    assert asyncio.run(test()) == [2400, 1990]
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.downlink"]
    topic = "counterbox/v1/regions/honghe/docs/price_list"
    assert [(level, text.split(":", 1)[0]) for level, text in said] == [
        ("INFO", "document applied seq=2 price_list version=2"),
        ("WARNING", f"document topic={topic}"), ("INFO", "document applied seq=4 price_list version=2"),
        ("WARNING", f"document refused topic={topic}"), ("DEBUG", "document price_list version 2 already applied")]
    assert "signed again with other content, later than the one applied" in said[1][1]
    assert "version 2 is applied with other content, signed later; this one changes nothing" in said[3][1]


def test_a_box_in_another_region_now_takes_its_new_regions_list_whatever_the_version_it_held_of_the_old(
        tmp_path, ops):
    """Versions grow across scopes: kunming's list at version 1, the box moved from honghe at version 2 once
    refused it as a replay and sold at honghe's prices. What another device's documents said (the box whose
    journal was restored onto this one) no longer counts either."""
    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(_message(ops, version=2, body=_item(price=2300)))
            await downlink.handle(_message(ops, kind="order", name="order/7", version=3, scope={"device": "shop-1"},
                                           body={**ORDER, "order_id": "7"}))
            moved = Downlink(store=store, uplink=downlink.uplink, device_id="shop-2", region="kunming",
                             trusted={key_id(ops): ops.public_key()}, topic_prefix="counterbox/v1")
            await moved.handle(_message(ops, version=1, scope={"region": "kunming"}, body=_item(price=2100)))
            await moved.handle(_message(ops, kind="order", name="order/7", version=1, scope={"device": "shop-2"},
                                        body={**ORDER, "order_id": "7"}))
            # Still in honghe: a list older than the one held is a replay.
            await downlink.handle(_message(ops, version=1, body=_item(price=9900)))
            return await _prices_held(store), await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    prices, counts = asyncio.run(test())
    assert prices == [2300, 2100]
    assert counts == {"document": 4, "price_list": 2, "order": 2}


def test_a_box_moved_back_to_its_first_region_takes_that_regions_list_again(tmp_path, ops):
    """Moved to kunming and back: honghe's retained list, the very bytes applied before the move, was skipped
    as held, and the box sold at kunming's prices in honghe."""
    honghe = _message(ops, version=2, body=_item(price=2300))

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(honghe)
            for region, message in (("kunming", _message(ops, version=3, scope={"region": "kunming"},
                                                         body=_item(price=2100))), ("honghe", honghe)):
                moved = Downlink(store=store, uplink=downlink.uplink, device_id="shop-1", region=region,
                                 trusted={key_id(ops): ops.public_key()}, topic_prefix="counterbox/v1")
                await moved.handle(message)
                await moved.handle(message)  # the retained copy at the next connection: held now
            await moved.handle(_message(ops, version=1, body=_item(price=9900)))  # older than it held there: a replay
            return await _prices_held(store)
        finally:
            await store.close()

    assert asyncio.run(test()) == [2300, 2100, 2300]


def test_moved_back_a_copy_signed_before_the_one_applied_under_its_version_is_still_refused(tmp_path, ops):
    """Version 2 signed twice (central restored from a backup): the box applied the later copy. Moved to kunming
    and back, the earlier copy was applied over it, as if applying the region's list again were all it asked."""
    now = time.time()
    earlier = _message(ops, version=2, issued_at=protocol.rfc3339(now - 3600), body=_item(price=2400))
    later = _message(ops, version=2, issued_at=protocol.rfc3339(now), body=_item(price=1990))

    def box(store, downlink, region):
        return Downlink(store=store, uplink=downlink.uplink, device_id="shop-1", region=region,
                        trusted={key_id(ops): ops.public_key()}, topic_prefix="counterbox/v1")

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await downlink.handle(later)
            await downlink.handle(earlier)  # refused: signed no later than the one applied
            await box(store, downlink, "kunming").handle(
                _message(ops, version=3, scope={"region": "kunming"}, body=_item(price=2100)))
            back = box(store, downlink, "honghe")
            await back.handle(earlier)
            await back.handle(later)
            return await _prices_held(store)
        finally:
            await store.close()

    assert asyncio.run(test()) == [1990, 2100, 1990]


def test_a_version_an_earlier_box_version_applied_is_told_from_one_signed_again_later_by_its_signing_time(tmp_path,
                                                                                                       ops):
    """A box of an earlier version recorded no digest: any copy of the version was taken for the one applied,
    so a list signed again later under it (central restored from a backup) was never applied."""
    now = time.time()
    before = protocol.rfc3339(now - 3600)
    same = _message(ops, version=2, issued_at=before, body=_item(price=2400))
    later = _message(ops, version=2, issued_at=protocol.rfc3339(now), body=_item(price=1990))

    def applied_before_the_upgrade(journal):
        about = {"name": "price_list", "version": 2, "issued_at": before}
        content = journal.append("price_list", {"source": "operations", **about, **_item(price=2400)})
        journal.append("document", {**about, "kind": "price_list", "content_seq": content})  # no scope, no digest

    async def test():
        store, downlink = await _door(tmp_path, ops)
        try:
            await store.write(applied_before_the_upgrade)
            await downlink.handle(later)
            await downlink.handle(same)  # the copy it applied before: signed earlier, it changes nothing now
            return await _prices_held(store)
        finally:
            await store.close()

    assert asyncio.run(test()) == [2400, 1990]


def test_a_revocation_past_its_expiry_still_takes_the_box_out_of_service(tmp_path, ops):
    """A box off while it was revoked, back after the revocation's expiry (or with its clock ahead), once refused
    it as expired and went on selling for a shop that had left."""
    revoked = []

    async def test():
        store, downlink = await _door(tmp_path, ops)
        downlink.on_revoked = revoked.append
        try:
            now = time.time()
            await downlink.handle(_message(ops, kind="revocation", name="revocation", scope={"device": "shop-1"},
                                           body={"reason": "closed", "grace_seconds": 60},
                                           issued_at=protocol.rfc3339(now - 2 * 86400),
                                           expires_at=protocol.rfc3339(now - 86400)))
            return await store.read(lambda journal: journal.counts())
        finally:
            await store.close()

    assert asyncio.run(test()) == {"document": 1, "revocation": 1}
    assert [document.kind for document in revoked] == ["revocation"]


# -- end to end: operations' command, the broker, the box -----------------------------------------------------

def _last(device, kind: str) -> dict | None:
    shown = device.command("show", "--last", "1000")
    if "there is no journal at" in shown.stderr:
        return None  # the agent has not run yet, or is making its journal this moment
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    matching = [e for e in events if e["kind"] == kind]
    return matching[-1] if matching else None


def _prices_csv(tmp_path, price: str, name: str = "prices.csv"):
    path = tmp_path / name
    path.write_text(f"barcode,name,price\n6901028075831,Hongtashan (pack),{price}\n")
    return path


def _devices(stack) -> dict[str, dict]:
    return {row["device"]: row for row in map(json.loads, stack.central_command("devices", "--json").stdout.splitlines())}


def test_a_price_list_pushed_to_a_region_prices_the_next_scan_and_central_learns_the_version(stack, fifo, tmp_path):
    device = stack.provision("shop-prices", scanners=[str(fifo)], region="honghe")
    device.start()
    wait_until(lambda: "subscribed to counterbox/v1/regions/honghe/docs/#" in device.log.read_text(), 20, "online")
    pushed = stack.push("prices", _prices_csv(tmp_path, "23.00"), "--region", "honghe")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"] == 1
    wait_until(lambda: _last(device, "document"), 20, "the price list applied")
    feed(fifo, scans(["6901028075831"]))
    sale = wait_until(lambda: _last(device, "sale"), 20, "the sale")
    assert (sale["body"]["unit_price"], sale["body"]["known"]) == (2300, True)

    assert stack.push("prices", _prices_csv(tmp_path, "24.50"), "--region", "honghe").returncode == 0
    wait_until(lambda: _last(device, "document")["body"]["version"] == 2, 20, "version 2 applied")
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: _last(device, "sale")["body"]["unit_price"] == 2450, 20, "the sale at the new price")
    wait_until(lambda: _devices(stack)["shop-prices"]["documents"] == {"price_list": 2}, 20,
               "central told which price list the box is on")
    assert "applied seq=" in device.log.read_text() and "2450" not in device.log.read_text()


def test_settings_pushed_to_a_region_change_the_shops_day_and_the_boxs_timers(stack, fifo, tmp_path):
    device = stack.provision("shop-settings", scanners=[str(fifo)], region="honghe")
    device.config.write_text(device.config.read_text() + '\n[counter]\ntimezone = "Pacific/Kiritimati"\n')
    device.start()
    wait_until(lambda: "subscribed to counterbox/v1/regions/honghe/docs/#" in device.log.read_text(), 20, "online")
    feed(fifo, scans(["6901028075831"]))
    before = wait_until(lambda: _last(device, "sale"), 20, "a sale on the file's time zone")
    pushed = stack.push("settings", None, "--region", "honghe", "--timezone", "Pacific/Pago_Pago", "--mode-timeout", "300",
                        "--status-interval", "0.5")
    assert pushed.returncode == 0, pushed.stderr
    settings = wait_until(lambda: _last(device, "settings"), 20, "the settings applied")
    assert (settings["body"]["counter"], settings["body"]["uplink"]) == (
        {"timezone": "Pacific/Pago_Pago", "mode_timeout": 300.0}, {"status_interval": 0.5})
    feed(fifo, scans(["6901028075831"]))
    after = wait_until(lambda: (sale := _last(device, "sale")) and sale["seq"] > before["seq"] and sale, 20, "a sale")
    # UTC+14 and UTC-11, 25 hours apart: never the same shop day. Each sale is on its own zone's.
    def shop_day(sale: dict, zone: str) -> date:
        scanned = datetime.fromisoformat(sale["body"]["scanned_at"].replace("Z", "+00:00"))
        return scanned.astimezone(ZoneInfo(zone)).date()

    assert date.fromisoformat(before["body"]["day"]) == shop_day(before, "Pacific/Kiritimati")
    assert date.fromisoformat(after["body"]["day"]) == shop_day(after, "Pacific/Pago_Pago")
    assert shop_day(after, "Pacific/Kiritimati") != shop_day(after, "Pacific/Pago_Pago")
    seen: set[float] = set()

    def reports_every_half_second():
        store = CentralStore(stack.central_db)
        try:
            seen.add(store.status("shop-settings").sent_at)
        finally:
            store.close()
        return len(seen) >= 4

    wait_until(reports_every_half_second, 10, "health reports every half second (the file says a minute)")


def test_settings_a_box_cannot_take_are_refused_when_they_are_signed(stack, tmp_path):
    stack.provision("shop-bad", scanners=[], region="honghe")
    for args, reason in ((["--mode-timeout", "0"], "must be a number of seconds above 0"),
                         (["--timezone", "../etc/passwd"], "not an IANA time zone name"),
                         ([], "name at least one setting")):
        pushed = stack.push("settings", None, "--device", "shop-bad", *args)
        assert pushed.returncode != 0 and reason in pushed.stderr, pushed.stderr


def test_a_document_pushed_while_the_box_is_off_is_applied_when_it_returns(stack, fifo, tmp_path):
    device = stack.provision("shop-away", scanners=[str(fifo)])
    order = tmp_path / "order.csv"
    order.write_text("barcode,name,quantity\n6901028075848,Hongtashan (carton),5\n6902672100139,Yuxi (carton),2\n")
    # The box is off: its session (clean) is long gone, so only the broker's retained copy can reach it.
    assert stack.push("order", order, "--device", "shop-away", "--order-id", "2026-W48-17").returncode == 0
    device.start()
    applied = wait_until(lambda: _last(device, "order"), 20, "the order applied")
    assert applied["body"]["name"] == "order/2026-W48-17" and applied["body"]["version"] == 1
    assert [line["quantity"] for line in applied["body"]["lines"]] == [5, 2]
    device.stop()
    device.start()  # the retained copy again: already applied, nothing new
    wait_until(lambda: device.log.read_text().count("subscribed to counterbox/v1/devices/shop-away/docs/#") == 2, 20,
               "the second start online")
    time.sleep(0.5)
    assert device.status()["events"]["order"] == 1


def _publish(stack, topic: str, token: bytes) -> None:
    mqtt_publish.single(topic, token, qos=1, retain=True, hostname="127.0.0.1", port=stack.broker_port, protocol=MQTTv5)


def test_an_older_forged_expired_or_other_shops_document_changes_nothing(stack, fifo, tmp_path):
    device = stack.provision("shop-guard", scanners=[str(fifo)], region="honghe")
    device.start()
    assert stack.push("prices", _prices_csv(tmp_path, "23.00"), "--region", "honghe").returncode == 0
    assert stack.push("prices", _prices_csv(tmp_path, "24.00"), "--region", "honghe").returncode == 0
    wait_until(lambda: (_last(device, "document") or {}).get("body", {}).get("version") == 2, 20, "version 2 applied")
    held = device.status()["events"]

    ops = load_key(stack.ops_key)
    kid = key_id(ops)
    now = time.time()
    region_topic = "counterbox/v1/regions/honghe/docs/price_list"
    cheap = {"currency": "CNY", "items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 1}]}

    def doc(version=3, scope=Scope(region="honghe"), expires_at=now + 3600, body=cheap):
        return Document("price_list", "price_list", version, scope, body, now, expires_at)

    attempts = [
        # version 1 again, as a replay of what the broker once carried
        (region_topic, documents.encode_document(doc(version=1), key=ops, kid=kid), "version 2 is applied"),
        (region_topic, documents.encode_document(doc(), key=Ed25519PrivateKey.generate(), kid="intruder"),
         "not a trusted operations key"),
        (region_topic, documents.encode_document(doc(expires_at=now - 60), key=ops, kid=kid), "it expired at"),
        # another region's price list, put on this region's topic
        (region_topic, documents.encode_document(doc(scope=Scope(region="kunming")), key=ops, kid=kid), "names the topic"),
        # another shop's order, put on this shop's topic
        ("counterbox/v1/devices/shop-guard/docs/order/9",
         documents.encode_document(Document("order", "order/9", 1, Scope(device="shop-other"), {**ORDER, "order_id": "9"}, now,
                                            now + 3600),
                                   key=ops, kid=kid), "names the topic"),
        # another shop's document published on its own topic, where this box does not listen: never seen at all
    ]
    for topic, token, reason in attempts:
        _publish(stack, topic, token)
        wait_until(lambda: reason in device.log.read_text(), 10, f"the refusal: {reason}")
    assert device.status()["events"] == held
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: _last(device, "sale"), 20, "the sale")
    assert _last(device, "sale")["body"]["unit_price"] == 2400


def test_settings_in_force_are_the_regions_under_the_boxs_own_each_key_as_last_set():
    assert documents.settings_in_force([]) == {}
    assert documents.settings_in_force([
        {"name": "settings/device", "counter": {"mode_timeout": 300}, "version": 1},
        {"name": "settings", "counter": {"mode_timeout": 900, "timezone": "Asia/Shanghai"}, "version": 4},
        {"name": "settings", "counter": {"mode_timeout": 800}, "uplink": {"status_interval": 30.0}, "version": 5},
    ]) == {"counter": {"mode_timeout": 300, "timezone": "Asia/Shanghai"}, "uplink": {"status_interval": 30.0}}


@pytest.mark.parametrize("order", ["region-first", "device-first"])
def test_a_boxs_own_settings_outrank_its_regions_whichever_came_first(tmp_path, order):
    """One version sequence for both once made a box that had its own settings refuse its region's as a replay,
    and the last applied won whatever its scope."""
    from agent.counter import Counter
    from drivers.decoder import Scan
    from storage import Journal

    journal = Journal.open(tmp_path / "journal.db", b"k" * 32)
    region = {"name": "settings", "version": 7, "counter": {"timezone": "Pacific/Pago_Pago", "mode_timeout": 900.0}}
    own = {"name": "settings/device", "version": 1, "counter": {"mode_timeout": 300.0}}
    for body in ([region, own] if order == "region-first" else [own, region]):
        journal.append("settings", body)
    counter = Counter(mode_timeout=600.0)
    with journal.transaction():
        counter.record(journal, Scan("CB:CLEAR", "/dev/input/event3", 0.0, 0.0))
    assert (counter.mode_timeout, str(counter.timezone)) == (300.0, "Pacific/Pago_Pago")
    journal.close()


def test_a_journal_restored_onto_another_box_keeps_its_regions_settings_and_not_the_old_boxs_own_nor_its_revocation(
        tmp_path):
    """A backup of a box revoked and replaced, restored onto the replacement: what operations pushed for the old box
    alone (its settings, its revocation) was for that box. Taken for the new one's, the new box erased itself."""
    from agent.counter import Counter
    from agent.downlink import revocation_held, settings_held
    from drivers.decoder import Scan
    from storage import Journal

    journal = Journal.open(tmp_path / "journal.db", b"k" * 32)
    region = {"name": "settings", "version": 7, "counter": {"timezone": "Pacific/Pago_Pago", "mode_timeout": 900.0}}
    own = {"name": "settings/device", "version": 1, "counter": {"mode_timeout": 300.0}}
    journal.take_identity("cb-old")
    for body in (region, own):
        journal.append("settings", body)
    journal.append("revocation", {"name": "revocation", "version": 1, "reason": "replaced", "grace_seconds": 60})
    assert settings_held(journal) == [region, own] and revocation_held(journal).seq == 3  # the old box's, for it

    journal.take_identity("cb-new")  # the backup restored onto the replacement
    assert settings_held(journal) == [region] and revocation_held(journal) is None
    counter = Counter(mode_timeout=600.0)
    with journal.transaction():
        counter.record(journal, Scan("CB:CLEAR", "/dev/input/event3", 0.0, 0.0))
    assert (counter.mode_timeout, str(counter.timezone)) == (900.0, "Pacific/Pago_Pago")

    mine = {"name": "settings/device", "version": 2, "counter": {"mode_timeout": 120.0}}
    journal.append("settings", mine)  # pushed to the new box: its own
    journal.append("revocation", {"name": "revocation", "version": 2, "reason": "shop closed", "grace_seconds": 60})
    assert settings_held(journal) == [region, mine] and revocation_held(journal).body["reason"] == "shop closed"
    with journal.transaction():
        counter.record(journal, Scan("CB:CLEAR", "/dev/input/event3", 0.0, 0.0))
    assert counter.mode_timeout == 120.0
    journal.close()


def test_settings_pushed_hold_every_key_set_so_far_for_their_scope_and_a_boxs_own_are_a_stream_of_their_own(stack):
    """The broker keeps a stream's latest version alone: a box away when an earlier one came must find every key
    in the latest. A box's own settings are versioned apart from its region's."""
    stack.provision("shop-1", scanners=[], region="honghe")
    for args in (["--region", "honghe", "--timezone", "Asia/Shanghai"],
                 ["--region", "honghe", "--status-interval", "30", "--mode-timeout", "900"],
                 ["--region", "honghe", "--mode-timeout", "800"],
                 ["--device", "shop-1", "--mode-timeout", "300"]):
        pushed = stack.push("settings", None, *args)
        assert pushed.returncode == 0, pushed.stderr
    store = CentralStore(stack.central_db)
    try:
        kept = store.conn.execute("SELECT name, version, token FROM documents ORDER BY name, version").fetchall()
    finally:
        store.close()
    bodies = [(name, version, json.loads(jws.b64url_decode(bytes(token).decode().split(".")[1]))["body"])
              for name, version, token in kept]
    assert bodies == [
        ("settings", 1, {"counter": {"timezone": "Asia/Shanghai"}}),
        ("settings", 2, {"counter": {"timezone": "Asia/Shanghai", "mode_timeout": 900.0}, "uplink": {"status_interval": 30.0}}),
        ("settings", 3, {"counter": {"timezone": "Asia/Shanghai", "mode_timeout": 800.0}, "uplink": {"status_interval": 30.0}}),
        ("settings/device", 1, {"counter": {"mode_timeout": 300.0}})]
