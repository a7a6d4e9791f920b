"""The wire contract (docs/protocol.md), one promise per test: what a batch or an acknowledgement must be."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey

from provisioning import jws, protocol
from provisioning.errors import ProtocolError, SignatureError
from provisioning.identity import public_key_text
from storage import Event

from .harness import signed_with_header

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "shop-0001"
NOW = 1_764_000_000.0


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def events(*seqs: int) -> list[Event]:
    return [Event(seq, "sale", {"code": f"69{seq:011d}", "unit_price": 2300}) for seq in seqs]


def signed(payload, key, *, kid=DEVICE, typ=protocol.BATCH_TYPE) -> bytes:
    return jws.sign(json.dumps(payload).encode(), key, kid=kid, typ=typ).encode()


def good_payload(**change):
    payload = {"v": 1, "device": DEVICE, "session": 1, "first_seq": 4, "last_seq": 5, "sent_at": "2026-11-27T09:12:03.418Z",
               "events": [{"seq": 4, "kind": "sale", "body": {}}, {"seq": 5, "kind": "sale", "body": {}}]}
    return {**payload, **change}


def test_a_batch_round_trips(key):
    token = protocol.encode_batch(events(4, 5, 6), device=DEVICE, session=3, key=key, sent_at=NOW)
    batch = protocol.decode_batch(token, device=DEVICE, key=key.public_key())
    assert (batch.device, batch.session, batch.first_seq, batch.last_seq) == (DEVICE, 3, 4, 6)
    assert batch.sent_at == "2025-11-24T16:00:00.000Z"
    assert batch.events[0] == {"seq": 4, "kind": "sale", "body": {"code": "6900000000004", "unit_price": 2300}}


def test_consumers_verify_batches_and_acknowledgements_with_an_off_the_shelf_library(key):
    public = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": public_key_text(key)})
    batch = protocol.encode_batch(events(1), device=DEVICE, session=1, key=key, sent_at=NOW)
    verified = joserfc_jws.deserialize_compact(batch, public, algorithms=["Ed25519"])
    assert verified.protected == {"alg": "Ed25519", "kid": DEVICE, "typ": "counterbox-batch+jws"}
    assert json.loads(verified.payload)["events"][0]["seq"] == 1
    ack = protocol.encode_ack(DEVICE, 9, key=key)
    verified = joserfc_jws.deserialize_compact(ack, public, algorithms=["Ed25519"])
    assert verified.protected == {"alg": "Ed25519", "kid": "central", "typ": "counterbox-ack+jws"}
    assert json.loads(verified.payload) == {"v": 1, "device": DEVICE, "ack_seq": 9}


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
def test_a_token_signed_as_eddsa_is_refused_even_with_the_right_key(key):
    """RFC 9864 deprecates the polymorphic EdDSA: the algorithm is pinned to Ed25519 alone."""
    jwk = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": public_key_text(key),
                             "d": jws.b64url(key.private_bytes_raw())})
    token = joserfc_jws.serialize_compact({"alg": "EdDSA", "kid": DEVICE, "typ": protocol.BATCH_TYPE},
                                          json.dumps(good_payload()).encode(), jwk, algorithms=["EdDSA"])
    with pytest.raises(SignatureError, match="algorithm 'EdDSA' refused"):
        protocol.decode_batch(token.encode(), device=DEVICE, key=key.public_key())


@pytest.mark.parametrize("forge,reason", [
    (lambda key: signed(good_payload(), key, kid="shop-0002"), "kid 'shop-0002'"),
    (lambda key: signed(good_payload(), key, typ="counterbox-ack+jws"), "typ 'counterbox-ack+jws'"),
    (lambda key: signed(good_payload(device="shop-0002"), key), "device 'shop-0002' does not match"),
    (lambda key: signed(good_payload(v=2), key), "batch version 2"),
    (lambda key: signed(good_payload(first_seq=3), key), "batch seq 3..5 does not match its 2 events"),
    (lambda key: signed(good_payload(last_seq=6), key), "batch seq 4..6 does not match"),
    (lambda key: signed(good_payload(events=[{"seq": 4, "kind": "sale", "body": {}},
                                             {"seq": 6, "kind": "sale", "body": {}}], last_seq=6), key), "does not match"),
    (lambda key: signed(good_payload(first_seq=0, events=[{"seq": 0, "kind": "sale", "body": {}}], last_seq=0), key),
     "first_seq of 1 or more"),
    (lambda key: signed(good_payload(session=None), key), "or a session"),
    (lambda key: signed(good_payload(events=[]), key), "lacks events"),
    (lambda key: signed(good_payload(events=[{"seq": 4, "kind": "sale", "body": []},
                                             {"seq": 5, "kind": "sale", "body": {}}]), key), "lacks its kind or body"),
    (lambda key: signed([1, 2], key), "payload is a JSON list, not an object"),
    (lambda key: signed(None, key), "payload is a JSON NoneType, not an object"),
    (lambda key: jws.sign(b"\xff\xfe", key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode(),
     "payload is not UTF-8 JSON: invalid start byte at byte 0"),
    # RFC 8259's JSON between systems is UTF-8 without a byte order mark: what a standard reader refuses is refused.
    (lambda key: jws.sign(json.dumps(good_payload()).encode("utf-8-sig"), key, kid=DEVICE,
                          typ=protocol.BATCH_TYPE).encode(), "payload is not JSON: Unexpected UTF-8 BOM"),
    (lambda key: jws.sign(json.dumps(good_payload()).encode("utf-16-le"), key, kid=DEVICE,
                          typ=protocol.BATCH_TYPE).encode(), "payload is not JSON"),
    (lambda key: jws.sign(json.dumps(good_payload()).encode("utf-32-be"), key, kid=DEVICE,
                          typ=protocol.BATCH_TYPE).encode(), "payload is not JSON"),
    # A lone surrogate as bytes (ED A0 80), not as an escape: no UTF-8 reader or store takes it.
    (lambda key: jws.sign(json.dumps(good_payload()).replace('"sale"', '"sale\udc00"').encode("utf-8", "surrogatepass"),
                          key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode(), "payload is not UTF-8 JSON"),
    (lambda key: jws.sign(json.dumps(good_payload(events=[{"seq": 4, "kind": "sale", "body": {"x": float("nan")}},
                                                           {"seq": 5, "kind": "sale", "body": {}}])).encode(),
                          key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode(), "payload is not JSON"),
    (lambda key: jws.sign(json.dumps(good_payload()).replace('"seq": 4', '"seq": 4, "x": 1e400').encode(),
                          key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode(), "payload is not JSON: 1e400 is beyond"),
    (lambda key: b"\xff" + signed(good_payload(), key), "non-ASCII"),
    (lambda key: signed(good_payload(), Ed25519PrivateKey.generate()), "signature check failed"),
    (lambda key: signed(good_payload(session=-1), key), "or a session"),
    (lambda key: signed_with_header(json.dumps(good_payload()).encode(), key,
                                    {"alg": "Ed25519", "kid": DEVICE, "typ": protocol.BATCH_TYPE, "crit": ["exp"], "exp": NOW}),
     "signature check failed: unsupported critical header parameters ['exp']"),
    (lambda key: jws.sign(b"[" * 100_000 + b"]" * 100_000, key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode(),
     "payload is not JSON: nested too deeply"),
    (lambda key: b"\xff" + signed(good_payload(), key)[1:], "not a JWS compact token (non-ASCII bytes)"),
    (lambda key: signed(good_payload(events=[4, 5]), key), "batch seq 4..5 does not match its 2 events"),
], ids=["kid", "typ", "payload-device", "version", "first-seq", "last-seq", "gap", "seq-zero", "session",
        "no-events", "body-not-object", "array", "null", "not-json", "bom", "utf-16", "utf-32", "surrogate-bytes", "nan", "1e400", "non-ascii", "other-key",
        "session-negative", "crit", "nested", "non-ascii-first", "events-not-objects"])
def test_a_batch_that_breaks_the_contract_is_refused_with_its_reason(key, forge, reason):
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        protocol.decode_batch(forge(key), device=DEVICE, key=key.public_key())


def _header_text(text: str, payload: bytes, key, encoding: str = "utf-8") -> bytes:
    """A token whose protected header is ``text`` exactly as written (a name twice, say), rightly signed."""
    signing_input = f"{jws.b64url(text.encode(encoding))}.{jws.b64url(payload)}"
    return f"{signing_input}.{jws.b64url(key.sign(signing_input.encode()))}".encode()


def _respelt_signature(token: bytes, respell) -> bytes:
    head, _, signature = token.decode().rpartition(".")
    return f"{head}.{respell(signature)}".encode()


@pytest.mark.parametrize("forge, reason", [
    # Which of two names a reader takes would decide what it checks: RFC 7515 lets a parser refuse them.
    (lambda key, payload: _header_text(f'{{"alg":"none","alg":"Ed25519","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}"}}',
                                       payload, key), "the protected header is not UTF-8 JSON with each name once"),
    (lambda key, payload: _header_text(f'{{"alg":"Ed25519","kid":"x","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}"}}',
                                       payload, key), "the protected header is not UTF-8 JSON with each name once"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": DEVICE, "typ": protocol.BATCH_TYPE,
                                                            "crit": []}), "unsupported critical header parameters []"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": DEVICE, "typ": protocol.BATCH_TYPE,
                                                            "b64": False}), "an unencoded payload (b64) is refused"),
    (lambda key, payload: _respelt_signature(signed(good_payload(), key), lambda s: s + "=="), "not base64url"),
    # 64 bytes are 86 characters, the last one's low 4 bits encoding nothing: A, Q, g or w, and nothing else.
    (lambda key, payload: _respelt_signature(signed(good_payload(), key),
                                             lambda s: s[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}[s[-1]]),
     "not base64url"),
    # RFC 7515 writes the header BASE64URL(UTF8(header)): in UTF-16, or behind a BOM, it is another spelling.
    (lambda key, payload: _header_text(f'{{"alg":"Ed25519","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}"}}',
                                       payload, key, "utf-16"), "the protected header is not UTF-8 JSON with each name once"),
    (lambda key, payload: _header_text(f'{{"alg":"Ed25519","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}"}}',
                                       payload, key, "utf-8-sig"), "the protected header is not UTF-8 JSON with each name once"),
    # The header holds alg, kid and typ, as text, and nothing else: central once stored batches whose header held
    # a NaN, a number beyond a double or a parameter of no standard, which the consumers' JOSE library refuses.
    (lambda key, payload: _header_text(f'{{"alg":"Ed25519","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}",'
                                       '"cty":NaN}', payload, key), "the protected header is not UTF-8 JSON"),
    (lambda key, payload: _header_text(f'{{"alg":"Ed25519","kid":"{DEVICE}","typ":"{protocol.BATCH_TYPE}",'
                                       '"n":1e999}', payload, key), "the protected header is not UTF-8 JSON"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": DEVICE,
                                                            "typ": protocol.BATCH_TYPE, "ext": 1}),
     "the protected header holds a parameter this protocol has none of: 'ext'"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": DEVICE,
                                                            "typ": protocol.BATCH_TYPE, "cty": "json"}),
     "the protected header holds a parameter this protocol has none of: 'cty'"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": 7, "typ": protocol.BATCH_TYPE}),
     "the protected header's kid is not text"),
    (lambda key, payload: signed_with_header(payload, key, {"alg": "Ed25519", "kid": DEVICE, "typ": ["x"]}),
     "the protected header's typ is not text"),
], ids=["alg-twice", "kid-twice", "crit-empty", "b64-false", "padded-signature", "signature-spare-bits",
        "header-utf-16", "header-bom", "header-nan", "header-infinite", "header-extension", "header-cty",
        "kid-number", "typ-list"])
def test_a_token_is_read_in_its_one_spelling_or_refused(key, forge, reason):
    with pytest.raises(SignatureError, match=re.escape(reason)):
        protocol.decode_batch(forge(key, json.dumps(good_payload()).encode()), device=DEVICE, key=key.public_key())


def test_a_message_over_the_limit_is_refused_before_it_is_verified(key):
    with pytest.raises(ProtocolError, match=f"over the protocol's limit of {protocol.MAX_TOKEN_BYTES}"):
        protocol.decode_batch(b"A" * (protocol.MAX_TOKEN_BYTES + 1), device=DEVICE, key=key.public_key())
    # At the limit it is read: refused for what it is, not for its size.
    with pytest.raises(SignatureError, match="not a JWS compact token: 1 parts"):
        protocol.decode_batch(b"A" * protocol.MAX_TOKEN_BYTES, device=DEVICE, key=key.public_key())


def test_a_batch_of_a_devices_first_session_zero_is_taken(key):
    token = signed(good_payload(session=0), key)
    assert protocol.decode_batch(token, device=DEVICE, key=key.public_key()).session == 0


@pytest.mark.parametrize("forge,reason", [
    (lambda key: protocol.encode_ack("shop-0002", 5, key=key), "for device 'shop-0002', not 'shop-0001'"),
    (lambda key: signed({"v": 1, "device": DEVICE, "ack_seq": 5}, key, kid="central", typ=protocol.BATCH_TYPE),
     "typ 'counterbox-batch+jws'"),
    (lambda key: signed({"v": 1, "device": DEVICE, "ack_seq": 5}, key, kid=DEVICE, typ=protocol.ACK_TYPE),
     "kid 'shop-0001'"),
    (lambda key: signed({"v": 1, "device": DEVICE, "ack_seq": -1}, key, kid="central", typ=protocol.ACK_TYPE),
     "no valid ack_seq"),
    (lambda key: signed({"v": 1, "device": DEVICE, "ack_seq": True}, key, kid="central", typ=protocol.ACK_TYPE),
     "no valid ack_seq"),
    (lambda key: protocol.encode_ack(DEVICE, 5, key=Ed25519PrivateKey.generate()), "signature check failed"),
    # Every message says its protocol version, the integer 1: a central speaking another is not read as this one.
    (lambda key: signed({"v": 2, "device": DEVICE, "ack_seq": 5}, key, kid="central", typ=protocol.ACK_TYPE),
     "acknowledgement version 2 is not 1"),
    (lambda key: signed({"v": "1", "device": DEVICE, "ack_seq": 5}, key, kid="central", typ=protocol.ACK_TYPE),
     "acknowledgement version '1' is not 1"),
    (lambda key: signed({"device": DEVICE, "ack_seq": 5}, key, kid="central", typ=protocol.ACK_TYPE),
     "acknowledgement version None is not 1"),
], ids=["other-device", "typ", "kid", "negative", "bool", "other-key", "v2", "v-text", "no-v"])
def test_an_acknowledgement_that_is_not_centrals_for_this_device_is_refused(key, forge, reason):
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        protocol.decode_ack(forge(key), device=DEVICE, key=key.public_key())


@pytest.mark.parametrize("typ", [f"application/{protocol.ACK_TYPE}", protocol.ACK_TYPE.upper(),
                                 f"Application/{protocol.ACK_TYPE}"])
def test_a_typ_is_read_as_the_media_type_it_names(key, typ):
    """RFC 7515, 4.1.9: a typ with no "/" has "application/" left out, and media types ignore case; the long
    form of our own type was refused."""
    token = signed({"v": 1, "device": DEVICE, "ack_seq": 5}, key, kid="central", typ=typ)
    assert protocol.decode_ack(token, device=DEVICE, key=key.public_key()).seq == 5
    other = signed({"v": 1, "device": DEVICE, "ack_seq": 5}, key, kid="central", typ=f"text/{protocol.ACK_TYPE}")
    with pytest.raises(ProtocolError, match="is not 'counterbox-ack\\+jws'"):
        protocol.decode_ack(other, device=DEVICE, key=key.public_key())


def test_an_acknowledgement_round_trips(key):
    assert protocol.decode_ack(protocol.encode_ack(DEVICE, 43, key=key), device=DEVICE, key=key.public_key()).seq == 43


@pytest.mark.parametrize("shipped", ["mosquitto.conf", "mosquitto-production.conf"])
def test_the_broker_and_the_protocol_share_one_size_limit_and_the_broker_bounds_its_queues(shipped):
    conf = (ROOT / "central" / shipped).read_text()
    assert re.search(r"^max_packet_size (\d+)$", conf, re.M).group(1) == str(protocol.MAX_PACKET_BYTES)
    # Bytes as well as messages: a box's resends of a large first event queued megabytes each while central was
    # away (0 is no bound), and room for a hundred of the largest messages.
    assert int(re.search(r"^max_queued_bytes (\d+)$", conf, re.M).group(1)) >= 100 * protocol.MAX_PACKET_BYTES
    docs = (ROOT / "docs" / "protocol.md").read_text()
    assert f"{protocol.MAX_EVENT_BYTES:,}" in docs and f"{protocol.MAX_PACKET_BYTES:,}" in docs


def test_an_event_of_the_largest_recordable_size_fits_one_message(key):
    filler = "x" * (protocol.MAX_EVENT_BYTES - len('{"items":""}'))
    token = protocol.encode_batch([Event(1, "price_list", {"items": filler})], device="d" * protocol.MAX_DEVICE_ID,
                                  session=2**31, key=key, sent_at=NOW)
    assert len(token) <= protocol.MAX_TOKEN_BYTES


@pytest.mark.parametrize("topic,parsed", [
    ("counterbox/v1/devices/shop-1/batch", ("shop-1", "batch")),
    ("counterbox/v1/devices/shop-1/status", ("shop-1", "status")),
    ("counterbox/v1/devices/shop-1/ack", None),
    ("counterbox/v1/devices//batch", None),
    ("counterbox/v1/devices/a/b/batch", None),
    ("counterbox/v1/devices/sh op/batch", None),
    ("other/v1/devices/shop-1/batch", None),
])
def test_only_a_devices_batch_or_status_topic_names_a_device(topic, parsed):
    if parsed is None:
        with pytest.raises(ProtocolError, match="not a device's batch or status topic"):
            protocol.parse_device_topic("counterbox/v1", topic)
    else:
        assert protocol.parse_device_topic("counterbox/v1", topic) == parsed


HEALTH = {"last_seq": 12, "acked_seq": 10, "backlog": 2, "scanners": 1, "agent_version": "0.1.0", "free_bytes": 10**9}


def status_payload(**change):
    return {"v": 1, "device": DEVICE, "state": "online", "session": 3, "connection": 2, "sent_at": "2025-11-24T16:00:00.000Z",
            **HEALTH, **change}


def test_a_status_round_trips_and_an_off_the_shelf_library_verifies_it(key):
    token = protocol.encode_status({"state": "online", "session": 3, "connection": 2, "sent_at": NOW, **HEALTH},
                                   device=DEVICE, key=key)
    assert protocol.decode_status(token, device=DEVICE, key=key.public_key()) == {
        "v": 1, "device": DEVICE, "state": "online", "session": 3, "connection": 2, "sent_at": NOW, **HEALTH}
    public = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": public_key_text(key)})
    verified = joserfc_jws.deserialize_compact(token, public, algorithms=["Ed25519"])
    assert verified.protected == {"alg": "Ed25519", "kid": DEVICE, "typ": "counterbox-status+jws"}
    assert json.loads(verified.payload)["sent_at"] == "2025-11-24T16:00:00.000Z"


@pytest.mark.parametrize("forge,reason", [
    (lambda key: signed(status_payload(), key, typ=protocol.BATCH_TYPE), "typ 'counterbox-batch+jws'"),
    (lambda key: signed(status_payload(), key, kid="shop-0002", typ=protocol.STATUS_TYPE), "kid 'shop-0002'"),
    (lambda key: signed(status_payload(device="shop-0002"), key, typ=protocol.STATUS_TYPE), "device 'shop-0002'"),
    (lambda key: signed(status_payload(state="asleep"), key, typ=protocol.STATUS_TYPE), "lacks a state"),
    (lambda key: signed(status_payload(session=-1), key, typ=protocol.STATUS_TYPE), "a session or a connection"),
    (lambda key: signed(status_payload(connection=0), key, typ=protocol.STATUS_TYPE), "a session or a connection"),
    (lambda key: signed(status_payload(sent_at="yesterday"), key, typ=protocol.STATUS_TYPE), "not an RFC 3339 UTC time"),
    (lambda key: signed(status_payload(sent_at="2025-11-24T16:00:00+08:00"), key, typ=protocol.STATUS_TYPE),
     "not an RFC 3339 UTC time"),
    (lambda key: signed(status_payload(backlog=-3), key, typ=protocol.STATUS_TYPE), "backlog is not a count"),
    (lambda key: signed(status_payload(free_bytes="lots"), key, typ=protocol.STATUS_TYPE), "free_bytes is not a count"),
    # What operations are shown (counterbox-central devices): never a terminal's control.
    (lambda key: signed(status_payload(agent_version="1.4\x1b]0;owned\x07"), key, typ=protocol.STATUS_TYPE),
     "status agent_version is not text of at most 64 printable characters"),
    (lambda key: signed(status_payload(agent_version="1" * 65), key, typ=protocol.STATUS_TYPE),
     "status agent_version is not text of at most 64 printable characters"),
    (lambda key: signed(status_payload(agent_version=14), key, typ=protocol.STATUS_TYPE),
     "status agent_version is not text of at most 64 printable characters"),
    (lambda key: protocol.encode_status({"state": "offline", "session": 1, "connection": 1, "sent_at": NOW},
                                        device=DEVICE, key=Ed25519PrivateKey.generate()), "signature check failed"),
], ids=["typ", "kid", "device", "state", "session", "connection", "time", "not-utc", "backlog", "free-bytes", "version-control",
                                "version-long", "version-number", "other-key"])
def test_a_status_that_is_not_this_devices_own_is_refused(key, forge, reason):
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        protocol.decode_status(forge(key), device=DEVICE, key=key.public_key())


def test_statuses_sort_by_start_then_connection_and_a_will_outlives_its_connection():
    def status(session, connection, state, sent_at):
        return {"session": session, "connection": connection, "state": state, "sent_at": sent_at}

    in_order = [status(1, 1, "online", 100.0), status(1, 1, "online", 160.0),
                status(1, 1, "offline", 90.0),  # the will: signed at the connection's start, published at its end
                status(1, 2, "online", 95.0),  # a clock set back meanwhile changes nothing
                status(2, 1, "offline", 200.0), status(2, 1, "offline", 201.0)]
    assert sorted(reversed(in_order), key=protocol.status_order) == in_order


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_no_message_is_signed_with_a_number_json_has_not(key, number):
    with pytest.raises(ValueError, match="not JSON compliant"):
        protocol.encode_status({"state": "online", "session": 1, "connection": 1, "sent_at": 0.0, "x": number},
                               device=DEVICE, key=key)


def test_a_first_session_and_counts_of_zero_are_a_status_like_any_other(key):
    zeros = {name: 0 for name in protocol.HEALTH_COUNTS}
    token = signed(status_payload(session=0, **zeros), key, typ=protocol.STATUS_TYPE)
    status = protocol.decode_status(token, device=DEVICE, key=key.public_key())
    assert status["session"] == 0 and all(status[name] == 0 for name in protocol.HEALTH_COUNTS)


def test_an_acknowledgement_of_nothing_yet_is_seq_zero(key):
    assert protocol.decode_ack(protocol.encode_ack(DEVICE, 0, key=key), device=DEVICE, key=key.public_key()).seq == 0


@pytest.mark.parametrize("device,valid", [
    ("a", True), ("d" * protocol.MAX_DEVICE_ID, True), ("d" * (protocol.MAX_DEVICE_ID + 1), False), ("", False),
    ("shop_1.a-b", True), ("shop/1", False), ("shop+1", False), ("shöp", False),
])
def test_a_device_id_is_1_to_64_ascii_letters_digits_dots_dashes_or_underscores(device, valid):
    assert protocol.valid_device_id(device) is valid


@pytest.mark.parametrize("timestamp", [NOW, NOW + 0.418, NOW + 0.999, 0.001])
def test_times_on_the_wire_keep_their_milliseconds(timestamp):
    written = protocol.rfc3339(timestamp)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", written)
    assert protocol.parse_rfc3339(written) == pytest.approx(timestamp, abs=5e-4)


@pytest.mark.parametrize("sent_at", [5, None, "not a time", "2026-11-27"])
def test_a_batch_whose_sent_at_is_not_a_time_string_is_kept_without_it(key, sent_at):
    """It only informs (central stamps its own receive time): refusing the batch would stop the box's uplink."""
    batch = protocol.decode_batch(signed(good_payload(sent_at=sent_at), key), device=DEVICE, key=key.public_key())
    assert batch.sent_at == "" and [e["seq"] for e in batch.events] == [4, 5]


@pytest.mark.parametrize("text", ["2025-11-24T16:00:00.000", "2025-11-24T16:00:00.000+00:00", None, 1764000000,
                                  "2025-11-24Z", "yesterdayZ", "２０２５-11-24T16:00:00.000Z"])
def test_a_time_on_the_wire_is_utc_written_with_its_z_or_it_is_refused(text):
    with pytest.raises(ValueError, match="is not an RFC 3339 UTC time"):
        protocol.parse_rfc3339(text)


def nested(depth: int) -> dict | list:
    """Objects and arrays within one another, ``depth`` levels deep."""
    value: dict | list = {}
    for level in range(depth - 1):
        value = [value] if level % 2 else {"in": value}
    return value


def nested_list(depth: int, bottom) -> list:
    value = bottom
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("typ", [protocol.ACK_TYPE, protocol.STATUS_TYPE, "counterbox-document+jws"])
def test_a_message_other_than_a_batch_nests_no_deeper_than_the_protocols_limit(key, typ):
    """Every reader and writer on the path (journal, stores, a batch's encoding) keeps well away from its own
    limit: a document, acknowledgement or status nested deeper than MAX_NESTING is refused when it is opened."""
    def payload(depth: int) -> dict:
        outer = {"v": 1, "device": DEVICE, "x": 1}
        outer["x"] = nested(depth - 1)  # the payload itself is the first level
        return outer

    assert protocol.nested_within(nested(protocol.MAX_NESTING), protocol.MAX_NESTING)
    assert not protocol.nested_within(nested(protocol.MAX_NESTING + 1), protocol.MAX_NESTING)
    protocol.verified(signed(payload(protocol.MAX_NESTING), key, typ=typ), key.public_key(), typ=typ)
    with pytest.raises(ProtocolError, match=f"payload nests deeper than {protocol.MAX_NESTING} levels"):
        protocol.verified(signed(payload(protocol.MAX_NESTING + 1), key, typ=typ), key.public_key(), typ=typ)


@pytest.mark.parametrize("typ", [protocol.ACK_TYPE, protocol.STATUS_TYPE, "counterbox-document+jws"])
def test_a_message_other_than_a_batch_naming_a_member_twice_is_refused(key, typ):
    """A document signed with "version": 3 and "version": 99 was applied as 99 (the last), and every later
    version of its stream refused as older: which value a reader takes must not decide what it applies."""
    twice = b'{"v": 1, "device": "%s", "body": {"version": 3, "version": 99}}' % DEVICE.encode()
    with pytest.raises(ProtocolError, match="^payload is not JSON: an object names 'version' twice$"):
        protocol.verified(jws.sign(twice, key, kid=DEVICE, typ=typ).encode(), key.public_key(), typ=typ)
    long = b'{"%s": 1, "%s": 2}' % (b"x" * 1000, b"x" * 1000)
    with pytest.raises(ProtocolError, match="^payload is not JSON: an object names 'x{38}… twice$"):
        protocol.verified(jws.sign(long, key, kid=DEVICE, typ=typ).encode(), key.public_key(), typ=typ)
    once = twice.replace(b', "version": 99', b"")
    assert protocol.verified(jws.sign(once, key, kid=DEVICE, typ=typ).encode(), key.public_key(), typ=typ)[1]["body"] == {
        "version": 3}


def test_what_a_message_brought_is_named_in_an_error_at_forty_characters_at_most(key):
    """A kid or alg is named before any signature is checked, and a message may be megabytes long: each was
    logged whole, at every reconnect for a retained one."""
    header = {"alg": "x" * 100_000, "kid": DEVICE}
    token = signed_with_header(b"{}", key, header)
    with pytest.raises(SignatureError) as refused:
        protocol.verified(token, key.public_key(), typ=protocol.ACK_TYPE)
    assert str(refused.value) == f"signature check failed: algorithm '{'x' * 38}… refused: only Ed25519 is accepted"
    assert jws.shown("short") == "'short'" and len(jws.shown("y" * 41)) == 40


def test_text_a_store_cannot_keep_is_found_however_deep_it_lies_without_recursing(key):
    """Checked by walking, not by encoding the payload again (which recursed past Python's limit at depths
    the parser had taken, and failed as an internal error rather than a refusal)."""
    assert not protocol._text_stores(nested_list(5000, {"name": "\ud800"}))
    assert not protocol._text_stores(nested_list(5000, "a\x00b"))
    assert protocol._text_stores(nested_list(5000, "fine"))
    token = jws.sign(json.dumps(good_payload(events=[{"seq": 4, "kind": "sale", "body": {"n": {"\u0000": 1}}},
                                                     {"seq": 5, "kind": "sale", "body": {}}])).encode(),
                     key, kid=DEVICE, typ=protocol.BATCH_TYPE).encode()
    with pytest.raises(ProtocolError, match="text no store keeps"):  # a NUL in a key, too
        protocol.decode_batch(token, device=DEVICE, key=key.public_key())
    assert not protocol._text_stores([[[[{"k": ["fine", "\udfff"]}]]]])
    assert protocol._text_stores({"k": ["f\u00e9ine", {"\u4e2d": "\U0001f600"}]})


JOURNAL = "0123456789abcdef0123456789abcdef"


def test_a_batch_names_its_journal_and_what_was_delivered_before_under_another_identity(key):
    token = protocol.encode_batch(events(4, 5), device=DEVICE, session=1, key=key, sent_at=NOW, journal=JOURNAL,
                                  base_seq=3)
    batch = protocol.decode_batch(token, device=DEVICE, key=key.public_key())
    assert (batch.journal, batch.base_seq, batch.first_seq) == (JOURNAL, 3, 4)
    earlier = protocol.decode_batch(protocol.encode_batch(events(1), device=DEVICE, session=1, key=key, sent_at=NOW),
                                    device=DEVICE, key=key.public_key())
    assert (earlier.journal, earlier.base_seq) == (None, 0)  # a box of an earlier version names none
    for change, reason in [({"journal": "0123"}, "batch journal '0123' is not a journal id"),
                           ({"journal": JOURNAL.upper()}, "is not a journal id (32 lowercase hex digits)"),
                           ({"journal": 7}, "batch journal '7' is not a journal id"),
                           ({"journal": JOURNAL, "base_seq": 4}, "batch base_seq 4 is not a seq before its first, 4"),
                           ({"journal": JOURNAL, "base_seq": -1}, "batch base_seq -1 is not"),
                           ({"journal": JOURNAL, "base_seq": True}, "batch base_seq True is not")]:
        with pytest.raises(ProtocolError, match=re.escape(reason)):
            protocol.decode_batch(signed(good_payload(**change), key), device=DEVICE, key=key.public_key())


def test_a_batch_saying_what_was_delivered_before_without_naming_its_journal_is_refused(key):
    """Else central would count the device on from base_seq and acknowledge seqs it never stored."""
    with pytest.raises(ProtocolError, match="^batch base_seq 9 names no journal it was delivered from$"):
        protocol.decode_batch(signed(good_payload(first_seq=10, last_seq=11, base_seq=9,
                                                  events=[{"seq": 10, "kind": "sale", "body": {}},
                                                          {"seq": 11, "kind": "sale", "body": {}}]), key),
                              device=DEVICE, key=key.public_key())
    with pytest.raises(ProtocolError, match="^batch base_seq 0 names no journal it was delivered from$"):
        protocol.decode_batch(signed(good_payload(base_seq=0), key), device=DEVICE, key=key.public_key())
    decoded = protocol.decode_batch(signed(good_payload(), key), device=DEVICE, key=key.public_key())
    assert (decoded.journal, decoded.base_seq) == (None, 0)  # a box of an earlier version: neither


def test_an_acknowledgement_of_another_journal_under_the_same_device_moves_nothing(key):
    ack = protocol.encode_ack(DEVICE, 9, key=key, journal=JOURNAL)
    assert protocol.decode_ack(ack, device=DEVICE, key=key.public_key(), journal=JOURNAL).seq == 9
    other = "f" * 32
    with pytest.raises(ProtocolError, match=f"acknowledgement is for journal '{JOURNAL}', not this box's '{other}'"):
        protocol.decode_ack(ack, device=DEVICE, key=key.public_key(), journal=other)
    # One that names no journal (a central that does not name them, perhaps its retained acknowledgement of
    # the journal this box had before) moves nothing either: the events wait, they are never skipped.
    with pytest.raises(ProtocolError, match=f"acknowledgement names no journal; this box takes only one naming its "
                                            f"journal '{other}', so none of its events is acknowledged"):
        protocol.decode_ack(protocol.encode_ack(DEVICE, 9, key=key), device=DEVICE, key=key.public_key(), journal=other)


def test_an_acknowledgement_names_the_event_at_its_seq_by_a_digest_of_the_event_as_a_batch_carries_it(key):
    body = {"code": "6901028075831", "unit_price": 2300, "name": "红塔山"}
    digest = protocol.event_digest(9, "sale", body)
    expected = hashlib.sha256(json.dumps({"seq": 9, "kind": "sale", "body": body}, sort_keys=True,
                                         separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert digest == expected and digest == protocol.event_digest(9, "sale", dict(reversed(list(body.items()))))
    ack = protocol.encode_ack(DEVICE, 9, key=key, journal=JOURNAL, event=digest)
    assert protocol.decode_ack(ack, device=DEVICE, key=key.public_key(), journal=JOURNAL) == \
        protocol.Acknowledgement(9, digest)
    for wrong in ("A" * 64, "0" * 63, 5, ""):
        forged = protocol.encode_ack(DEVICE, 9, key=key, journal=JOURNAL, event=wrong)
        with pytest.raises(ProtocolError, match="acknowledgement's event .* is not a SHA-256 digest"):
            protocol.decode_ack(forged, device=DEVICE, key=key.public_key(), journal=JOURNAL)


def test_a_batch_whose_last_seq_is_past_what_every_reader_holds_is_refused(key):
    first = protocol.MAX_INTEGER
    payload = good_payload(first_seq=first, last_seq=first + 1,
                           events=[{"seq": first, "kind": "sale", "body": {}}, {"seq": first + 1, "kind": "sale", "body": {}}])
    with pytest.raises(ProtocolError, match="does not match its 2 events"):
        protocol.decode_batch(signed(payload, key), device=DEVICE, key=key.public_key())
