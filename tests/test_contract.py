"""The contract for central consumers: docs/asyncapi.yaml is valid AsyncAPI 3, and it is what the system sends.

Every test that runs a stack checks each message published there against it (conftest's ``stack``);
these tests check the document itself, and that the check is not vacuous."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft7Validator

from provisioning import jws, protocol
from storage import Event

from . import contract

# The AsyncAPI 3.0.0 JSON Schema, from github.com/asyncapi/spec-json-schemas (Apache-2.0), unchanged.
ASYNCAPI_SCHEMA = Path(__file__).resolve().parent / "schemas" / "asyncapi-3.0.0.json"


def test_the_contract_is_a_valid_asyncapi_3_document():
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    errors = list(Draft7Validator(schema).iter_errors(contract.document()))
    assert errors == [], [e.message[:200] for e in errors[:5]]


def test_every_reference_in_the_contract_resolves():
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(contract.document())
    assert refs
    for ref in refs:
        contract._resolve(ref)


def test_every_topic_of_the_protocol_is_a_channel_of_the_contract():
    prefix, device = protocol.DEFAULT_PREFIX, "shop-1"
    topics = [protocol.batch_topic(prefix, device), protocol.ack_topic(prefix, device),
              protocol.status_topic(prefix, device), f"{prefix}/devices/{device}/docs/order/W48-1",
              f"{prefix}/regions/honghe/docs/price_list"] + [f"{prefix}/activation/{device}/{leaf}"
                                                             for leaf in ("hello", "code", "request", "result")]
    for topic in topics:
        assert contract.check(topic, b"x") == f"{topic}: not a JWS compact token (not a JWS compact token: 1 parts instead of 3)"
    assert "no channel of the contract" in contract.check(f"{prefix}/devices/{device}/other", b"x")


def test_the_check_finds_a_message_that_breaks_the_contract():
    key = Ed25519PrivateKey.generate()
    good = protocol.encode_batch([Event(1, "sale", {"code": "6901028075831", "symbology": "ean13", "aim": None,
                                                    "scanner": "/dev/input/event3", "quantity": 1, "known": True,
                                                    "unit_price": 2300, "currency": "CNY", "name": "x",
                                                    "scanned_at": "2026-11-27T09:12:02.911Z"})],
                                 device="shop-1", session=1, key=key, sent_at=0)
    topic = protocol.batch_topic(protocol.DEFAULT_PREFIX, "shop-1")
    assert contract.check(topic, good) is None
    broken = protocol.encode_batch([Event(1, "sale", {"code": "6901028075831", "unit_price": "23.00"})],
                                   device="shop-1", session=1, key=key, sent_at=0)
    assert "batch payload at /events/0/body" in contract.check(topic, broken)
    wrong_typ = jws.sign(json.dumps({"v": 1, "device": "shop-1", "ack_seq": 1}).encode(), key, kid="central",
                         typ="counterbox-batch+jws").encode()
    assert "ack header at /typ" in contract.check(protocol.ack_topic(protocol.DEFAULT_PREFIX, "shop-1"), wrong_typ)
