"""The contract for central consumers: docs/asyncapi.yaml is valid AsyncAPI 3, and it is what the system sends.

Every test that runs a stack checks each message published there against it (conftest's ``stack``);
these tests check the document itself, and that the check is not vacuous."""

from __future__ import annotations

import json
import re
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


def _consumer() -> dict:
    """The consumer's rule for keeping each event once, as docs/protocol.md (Reading batches as a consumer) gives
    it: its code, run as written."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def keep(" in block]
    namespace: dict = {}
    exec(code, namespace)
    return namespace


def test_a_consumer_following_the_protocol_holds_each_event_once_as_central_does(tmp_path):
    """A journal restored onto a replacement box, taken while three sales waited unacknowledged that its old box
    delivered afterwards: the new box sends them again, under its own id. Keyed by (device, seq), as the protocol
    once told consumers, they counted twice where central holds them once. Another journal restored while its
    old box went on selling: both boxes hold other sales at the same seqs, which keyed by (journal, seq) counted
    once; central holds both. And the batches central stores nothing of: one sent again, one naming another
    journal under a device's id, one counted from events no device delivered, one with another event at a seq
    held. The consumer's rule, run as the protocol writes it, holds exactly what central holds."""
    from central.errors import JournalReplaced, SeqConflict, UnheldBase
    from central.store import CentralStore

    store = CentralStore(tmp_path / "central.db")
    consumer = _consumer()
    for device in ("cb-old", "cb-new", "cb-sold-on", "cb-fork", "cb-early", "cb-gap", "cb-after-gap"):
        store.register(device, "k" * 43, shop="530100000001")

    def sale(seq: int, code: str) -> dict:
        return {"seq": seq, "kind": "sale", "body": {"code": code, "scanned_at": f"2026-11-30T0{seq}:00:00.000Z"}}

    def deliver(device: str, journal: str | None, events: list[dict], base_seq: int = 0) -> None:
        payload = {"v": 1, "device": device, "session": 1, "first_seq": events[0]["seq"],
                   "last_seq": events[-1]["seq"], "sent_at": "2026-11-30T12:00:00.000Z", "events": events}
        if journal is not None:
            payload.update(journal=journal, **({"base_seq": base_seq} if base_seq else {}))  # 0 may go unsaid
        consumer["keep"](json.loads(json.dumps(payload)))  # as read from the wire
        try:
            _, acked = store.add_events(device, 1, events, journal=journal, base_seq=base_seq)
        except (JournalReplaced, SeqConflict, UnheldBase):
            return  # refused: no acknowledgement
        consumer["acked"][device] = acked  # its acknowledgement, which the consumer reads on devices/+/ack

    restored, forked = "a" * 32, "b" * 32
    deliver("cb-old", restored, [sale(1, "A1"), sale(2, "A2"), sale(3, "A3")])
    deliver("cb-old", restored, [sale(4, "A4"), sale(5, "A5"), sale(6, "A6")])  # after the backup at 3
    deliver("cb-old", restored, [sale(4, "A4"), sale(5, "A5"), sale(6, "A6")])  # sent again
    deliver("cb-new", restored, [sale(4, "A4"), sale(5, "A5"), sale(6, "A6"), sale(7, "N7")], base_seq=3)
    deliver("cb-sold-on", forked, [sale(1, "B1"), sale(2, "B2"), sale(3, "B3"), sale(4, "B4")])
    deliver("cb-fork", forked, [sale(3, "F3"), sale(4, "F4")], base_seq=2)  # restored from a backup at 2
    deliver("cb-old", "c" * 32, [sale(7, "X7")])  # another journal under cb-old's id
    deliver("cb-early", forked, [sale(6, "E6")], base_seq=5)  # counted from events no device delivered
    deliver("cb-new", restored, [sale(8, "N8"), {**sale(7, "X7"), "seq": 9}])
    deliver("cb-new", restored, [sale(9, "N9"), sale(10, "N10")])  # another event at seq 9: the journal restarted
    # A box whose batch of seq 2 was lost delivered seq 3, and broke: seq 3 is past what central acknowledged to
    # it, and is the same event when the box its journal was restored onto sends it again: held once.
    deliver("cb-gap", "d" * 32, [sale(1, "G1")])
    deliver("cb-gap", "d" * 32, [sale(3, "G3")])
    deliver("cb-after-gap", "d" * 32, [sale(2, "G2"), sale(3, "G3")], base_seq=1)

    central = sorted((event["device"], event["seq"], event["code"]) for event in store.events())
    assert sorted((device, seq, event["body"]["code"]) for (device, seq), event in consumer["held"].items()) == central
    assert sorted(code for _, _, code in central) == sorted(  # each sale once; both forks' sales
        ["A1", "A2", "A3", "A4", "A5", "A6", "N7", "N8", "X7", "B1", "B2", "B3", "B4", "F3", "F4", "G1", "G2", "G3"])
    store.close()


def test_a_code_for_a_shop_registered_without_a_region_keeps_the_contract():
    """The box takes a code whose region is empty (a shop added with none): the contract said it could not be."""
    import time

    from provisioning import activation
    from provisioning.activation import ActivationCode

    key, now = Ed25519PrivateKey.generate(), time.time()
    code = ActivationCode(activation.new_code_id(), "530102100001", "", False, now, now + 3600, None, "ops-1")
    token = activation.encode_code(code, key=key, kid="ops-1")
    activation.decode_code(token, trusted={"ops-1": key.public_key()})
    payload = json.loads(jws.b64url_decode(token.split(".")[1]))
    assert payload["region"] == ""
    assert [error.message for error in contract._validator("#/components/schemas/code").iter_errors(payload)] == []
