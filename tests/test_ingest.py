"""Central's ingest, one message at a time: what it stores, answers and refuses, in the test's process.

``Ingest.handle`` is the door every batch, status, hello and activation request comes through; these
tests hand it signed messages as the broker would (real keys, a real store) and read what it returns and
what the store then holds. The MQTT side is tested end to end in test_delivery.py and test_fleet.py.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.mqtt import Message
from central.errors import Rejected
from central.ingest import Accepted, Answered, Cleared, Ingest, StatusReceived, Waiting
from central.store import CentralStore, Shop
from provisioning import activation, jws, protocol
from provisioning.errors import ProtocolError
from provisioning.activation import ActivationCode
from provisioning.identity import broker_password, device_id_for, public_key_text
from storage import Event

PREFIX = protocol.DEFAULT_PREFIX


@dataclass
class Central:
    ingest: Ingest
    store: CentralStore
    central_public: Ed25519PublicKey
    box_key: Ed25519PrivateKey  # shop-1's

    def handle(self, message: Message, settled: bool = True):
        return self.ingest.handle(message, settled)


@pytest.fixture
def central(tmp_path):
    """Central's key, a store with one registered box, and the ingest over them."""
    store = CentralStore(tmp_path / "central.db")
    key, box = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store.register("shop-1", public_key_text(box), shop="530100000001", region="honghe")
    yield Central(Ingest(store=store, signing_key=key), store, key.public_key(), box)
    store.close()


def sales(*seqs):
    return [Event(seq, "sale", {"code": "6901028075831", "n": seq}) for seq in seqs]


def batch_message(events, *, device="shop-1", key, topic_device=None, session=1):
    token = protocol.encode_batch(events, device=device, session=session, key=key, sent_at=time.time())
    return Message(protocol.batch_topic(PREFIX, topic_device or device), token)


def status_message(state="online", *, key, sent_at, retain=False, session=1, connection=1, **health):
    token = protocol.encode_status({"state": state, "session": session, "connection": connection, "sent_at": sent_at,
                                    **health}, device="shop-1", key=key)
    return Message(protocol.status_topic(PREFIX, "shop-1"), token, retain=retain)


def test_a_batch_is_stored_once_and_answered_with_a_signed_acknowledgement(central):
    result, (topic, token) = central.handle(batch_message(sales(1, 2), key=central.box_key))
    assert result == Accepted("shop-1", 1, 2, added=2, acked_seq=2)
    assert topic == protocol.ack_topic(PREFIX, "shop-1")
    assert protocol.decode_ack(token, device="shop-1", key=central.central_public).seq == 2
    assert [(e["seq"], e["n"], e["session"]) for e in central.store.events()] == [(1, 1, 1), (2, 2, 1)]
    # Sent again (its acknowledgement was lost): nothing added, the same acknowledgement.
    result, (_, token) = central.handle(batch_message(sales(1, 2), key=central.box_key, session=2))
    assert result == Accepted("shop-1", 1, 2, added=0, acked_seq=2)
    assert protocol.decode_ack(token, device="shop-1", key=central.central_public).seq == 2


def test_an_acknowledgement_names_the_event_central_holds_at_its_seq(central):
    """By its digest, so that a box's journal restored from an older backup tells central's events from the ones
    it recorded since: from the batch when it carries that seq, from the store when the batch is behind it."""
    def acknowledged(events):
        _, (_, token) = central.handle(batch_message(events, key=central.box_key))
        return protocol.decode_ack(token, device="shop-1", key=central.central_public)

    def named(seq):
        return protocol.Acknowledgement(seq, protocol.event_digest(seq, "sale", {"code": "6901028075831", "n": seq}))

    assert acknowledged(sales(1, 2)) == named(2)
    assert acknowledged(sales(4)) == named(2)  # 3 still to come
    assert acknowledged(sales(3)) == named(4)  # the gap filled: 4 is in the store, not in the batch
    assert acknowledged(sales(1, 2)) == named(4)  # sent again
    assert named(4).event != protocol.event_digest(4, "sale", {"code": "6901028075831", "n": 5})


def test_each_batch_that_brought_an_event_is_kept_as_the_box_signed_it_for_consumers_that_missed_it(central):
    """A consumer whose queue the broker dropped, or one added late, had no way back to the signed events central
    acknowledged: the boxes never send them again."""
    first, again, second = (batch_message(sales(*seqs), key=central.box_key) for seqs in ((1, 2), (1, 2), (2, 3)))
    for message in (first, again, second):
        central.handle(message)
    # The one sent again brought nothing: not kept; the one over 2 and 3 brought 3: kept whole.
    assert list(central.store.signed_batches("shop-1")) == [first.payload, second.payload]
    assert list(central.store.signed_batches("shop-1", after=2)) == [second.payload]
    assert list(central.store.signed_batches("shop-1", after=3)) == []
    # As the box signed it: a consumer verifies it with the box's key alone.
    public = central.box_key.public_key()
    batch = protocol.decode_batch(list(central.store.signed_batches("shop-1", after=2))[0], device="shop-1", key=public)
    assert [event["seq"] for event in batch.events] == [2, 3]


def test_a_batch_after_a_gap_is_kept_and_acknowledged_only_up_to_the_gap(central):
    result, (_, token) = central.handle(batch_message(sales(3, 4), key=central.box_key))
    assert result == Accepted("shop-1", 3, 4, added=2, acked_seq=0)
    assert protocol.decode_ack(token, device="shop-1", key=central.central_public).seq == 0


@pytest.mark.parametrize("message, reason", [
    (lambda c: batch_message(sales(1), key=Ed25519PrivateKey.generate()), "signature"),
    (lambda c: batch_message(sales(1), device="shop-2", key=c.box_key), "not registered"),
    (lambda c: batch_message(sales(1), key=c.box_key, topic_device="shop-2"), "not registered"),
    (lambda c: Message(protocol.batch_topic(PREFIX, "shop-1"), b"not a token"), "not a JWS compact token"),
    (lambda c: Message("elsewhere/v1/devices/shop-1/batch", batch_message(sales(1), key=c.box_key).payload),
     "not a device's batch or status topic"),
])
def test_a_batch_forged_misdirected_or_malformed_is_rejected_and_stores_nothing(central, message, reason):
    with pytest.raises(Rejected, match=reason):
        central.handle(message(central))
    assert list(central.store.events()) == []
    assert central.store.device("shop-1").acked_seq == 0


def test_a_batch_signed_by_one_box_on_another_boxs_topic_is_rejected(central):
    other = Ed25519PrivateKey.generate()
    central.store.register("shop-2", public_key_text(other))
    with pytest.raises(Rejected, match="does not verify with the expected key"):  # checked with shop-2's key
        central.handle(batch_message(sales(1), device="shop-1", key=central.box_key, topic_device="shop-2"))
    with pytest.raises(Rejected, match="shop-2"):  # shop-2's own key, another's device in the payload and kid
        central.handle(batch_message(sales(1), device="shop-1", key=other, topic_device="shop-2"))
    assert list(central.store.events()) == []


def test_a_box_registered_again_with_a_new_key_is_heard_with_the_new_key_only(central):
    central.handle(batch_message(sales(1), key=central.box_key))
    new = Ed25519PrivateKey.generate()
    central.store.register("shop-1", public_key_text(new), replace=True)
    with pytest.raises(Rejected, match="does not verify"):
        central.handle(batch_message(sales(2), key=central.box_key))
    result, _ = central.handle(batch_message(sales(2), key=new))
    assert result.acked_seq == 2


def test_a_box_registered_with_a_key_read_less_strictly_before_is_rejected_with_what_to_do(central):
    """A key kept padded (or of small order) by a central that read keys less strictly: its batches are
    rejected with the reason, answered, never an internal error left unacknowledged at every resend."""
    central.store.register("shop-1", public_key_text(central.box_key) + "=", replace=True)
    with pytest.raises(Rejected, match="^device 'shop-1''s registered key is refused: .* register it again with its "
                                       "key as `counterbox identity show` prints it$"):
        central.handle(batch_message(sales(1), key=central.box_key))
    assert list(central.store.events()) == []


def test_a_cleared_retained_message_is_only_noted(central):
    topic = protocol.status_topic(PREFIX, "shop-1")
    assert central.handle(Message(topic, b"")) == (Cleared(topic), None)


def test_a_live_status_measures_the_clock_once_centrals_queue_has_settled(central):
    now = time.time()
    result, ack = central.handle(status_message(key=central.box_key, sent_at=now + 120, backlog=0))
    assert ack is None
    assert (result.device_id, result.state, result.cut_off) == ("shop-1", "online", False)
    assert 119 < result.clock_offset <= 120
    assert 119 < central.store.status("shop-1").clock_offset <= 120
    # Just after central connected, a status may have waited in its queue: it says nothing of the clock.
    result, _ = central.handle(status_message(key=central.box_key, sent_at=now + 500, connection=2), settled=False)
    assert result.clock_offset is None
    # A retained one, sent on subscribing, neither.
    result, _ = central.handle(status_message(key=central.box_key, sent_at=now + 900, connection=3, retain=True))
    assert result.clock_offset is None
    assert central.store.status("shop-1").sent_at == pytest.approx(now + 900, abs=0.001)  # milliseconds on the wire


def test_a_sales_lateness_is_judged_by_the_sending_time_its_batch_says_on_the_boxs_own_clock(central):
    """A box a day fast sends a sale two hours after its scan, by its clock; it reaches central at once. Judged
    by the box's clock against central's, it came a day early, on time; by its batch's sending time, two hours
    late, as it was."""
    fast = time.time() + 86400
    sale = Event(1, "sale", {"code": "6901028075831", "scanned_at": protocol.rfc3339(fast - 7200)})
    token = protocol.encode_batch([sale], device="shop-1", session=1, key=central.box_key, sent_at=fast)
    central.handle(Message(protocol.batch_topic(PREFIX, "shop-1"), token))
    central.store.conn.execute("UPDATE devices SET registered_at = 0")
    days = central.store.upload_days("shop-1", time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400)),
                                     time.strftime("%Y-%m-%d"), deadline=3600)
    assert (sum(d.sales for d in days), sum(d.late for d in days)) == (1, 1)


def test_a_status_signed_by_another_key_is_rejected(central):
    with pytest.raises(Rejected, match="does not verify"):
        central.handle(status_message(key=Ed25519PrivateKey.generate(), sent_at=time.time()))
    assert central.store.status("shop-1") is None


def _revoked_and_handed_in(central, now: float) -> None:
    """shop-1 revoked, and central holding its sale 1 and its revocation, seq 2."""
    central.store.revoke("shop-1")
    revocation = Event(2, "revocation", {"name": "revocation", "issued_at": protocol.rfc3339(now)})
    central.handle(batch_message([*sales(1), revocation], key=central.box_key))


def test_a_revoked_box_is_cut_off_once_it_says_it_erases_itself(central):
    key, now = central.box_key, time.time()
    _revoked_and_handed_in(central, now)
    routine, _ = central.handle(status_message(key=key, sent_at=now, last_seq=2, acked_seq=2, backlog=0))
    assert routine.cut_off is False  # it holds everything now, and may record more (a snapshot, a timeout)
    farewell, _ = central.handle(status_message(key=key, sent_at=now + 2, last_seq=3, acked_seq=2, backlog=1,
                                                erasing=True))
    assert farewell == StatusReceived("shop-1", "online", farewell.clock_offset, cut_off=True)  # its grace was up
    # Retained, sent again as central subscribes: the box erased itself all the same, and a cut-off that failed
    # (the plugin away) is tried again.
    again, _ = central.handle(status_message(key=key, sent_at=now + 2, retain=True, last_seq=3, acked_seq=2,
                                             backlog=1, erasing=True))
    assert again.cut_off is True


def test_a_revoked_box_that_took_its_revocation_and_talks_on_an_hour_past_its_grace_is_cut_off(central):
    """A box of an earlier version says no farewell (nor one made to stay): it kept its broker access for good,
    and central stored whatever it went on sending."""
    from central.ingest import OVERDUE

    key, now = central.box_key, time.time()
    _revoke(central.store, "shop-1", grace_seconds=600, now=now)
    revocation = Event(2, "revocation", {"name": "revocation", "issued_at": protocol.rfc3339(now), "grace_seconds": 600})
    central.handle(batch_message([*sales(1), revocation], key=key))
    status = {"key": key, "last_seq": 2, "acked_seq": 2, "backlog": 0}
    assert central.handle(status_message(sent_at=now, **status))[0].cut_off is False  # within its grace
    took = now - 600 - OVERDUE + 5
    central.store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = 2", [took])
    assert central.handle(status_message(sent_at=now + 1, **status))[0].cut_off is False  # the hour is not up
    central.store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = 2", [took - 10])
    assert central.handle(status_message(sent_at=now + 2, **status))[0].cut_off is True
    # One that never took it (off all the while) keeps its access: cut off, it could never take it, nor erase.
    central.store.conn.execute("DELETE FROM events WHERE device_id = 'shop-1' AND seq = 2")
    central.store.conn.execute("UPDATE devices SET acked_seq = 1 WHERE device_id = 'shop-1'")
    assert central.handle(status_message(sent_at=now + 3, **status))[0].cut_off is False


def _revoke(store: CentralStore, device_id: str, *, grace_seconds: int, now: float) -> None:
    """As `counterbox-ops revoke` does: the device marked revoked, then its revocation signed and kept."""
    from provisioning.documents import Document, Scope, encode_document

    store.revoke(device_id)
    scope = Scope(device=device_id)
    token = encode_document(Document("revocation", "revocation", 1, scope, {"reason": "left",
                                     "grace_seconds": grace_seconds}, now, now + 3600),
                            key=Ed25519PrivateKey.generate(), kid="ops-1")
    store.issue_document(lambda version: ("revocation", json.dumps(scope.as_json()), "ops-1", now, now + 3600, token),
                         "revocation")


@pytest.mark.parametrize("said", [1e300, 10**400, -1, "600"], ids=["huge", "past-a-float", "negative", "text"])
def test_a_revoked_box_is_cut_off_by_the_grace_operations_signed_not_the_one_it_says(central, said):
    """The box's revocation event says when it took it; how long it may stay is operations' word alone (a box
    made to stay named a grace of its own; one past a float made every status an internal error)."""
    from central.ingest import OVERDUE

    key, now = central.box_key, time.time()
    _revoke(central.store, "shop-1", grace_seconds=600, now=now)
    revocation = Event(2, "revocation", {"name": "revocation", "issued_at": protocol.rfc3339(now), "grace_seconds": said})
    central.handle(batch_message([*sales(1), revocation], key=key))
    status = {"key": key, "last_seq": 2, "acked_seq": 2, "backlog": 0}
    assert central.handle(status_message(sent_at=now, **status))[0].cut_off is False  # within its grace
    central.store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = 2",
                               [now - 600 - OVERDUE - 10])
    assert central.handle(status_message(sent_at=now + 1, **status))[0].cut_off is True


def test_a_revoked_boxs_farewell_handled_after_its_connections_will_still_cuts_it_off(central):
    """The box leaves the link right after its farewell: central (two messages at once, or two instances) may
    handle the will first, which sorts after every status of its connection; the farewell, not the newest
    then, was passed over, and the box, erased, never sends again."""
    key, now = central.box_key, time.time()
    _revoked_and_handed_in(central, now)
    central.handle(status_message("offline", key=key, sent_at=now - 60))
    farewell, _ = central.handle(status_message(key=key, sent_at=now, last_seq=2, acked_seq=2, backlog=0,
                                                erasing=True))
    assert farewell.cut_off is True


def test_a_revoked_box_that_goes_offline_after_handing_in_its_revocation_keeps_its_access(central):
    """It may have lost power before it took central's acknowledgement: cut off, it could never read it, and
    would wait out its grace to say events central holds were lost."""
    key, now = central.box_key, time.time()
    _revoked_and_handed_in(central, now)
    offline, _ = central.handle(status_message("offline", key=key, sent_at=now + 1))
    assert offline == StatusReceived("shop-1", "offline", None, cut_off=False)


def test_only_an_online_status_says_erasing_and_only_as_true(central):
    key, now = central.box_key, time.time()
    for state, erasing in (("online", False), ("online", 1), ("online", "yes"), ("offline", True)):
        with pytest.raises(Rejected, match="erasing"):
            central.handle(status_message(state, key=key, sent_at=now, last_seq=1, acked_seq=1, backlog=0,
                                          erasing=erasing))


def test_a_box_that_is_not_revoked_is_never_cut_off(central):
    central.handle(batch_message([*sales(1), Event(2, "revocation", {})], key=central.box_key))
    for state, erasing in (("online", {"erasing": True}), ("online", {}), ("offline", {})):
        result, _ = central.handle(status_message(state, key=central.box_key, sent_at=time.time(), last_seq=2,
                                                  acked_seq=2, backlog=0, **erasing))
        assert result.cut_off is False


# -- activation ------------------------------------------------------------------------

@pytest.fixture
def box():
    key = Ed25519PrivateKey.generate()
    return key, device_id_for(key)


def issue(central, *, device=None, expires_in=3600.0):
    ops = Ed25519PrivateKey.generate()
    now = time.time()
    central.store.add_shop(Shop("530100000009", "Jianshui No. 2", "honghe", monitoring=True), replace=True)
    code = activation.encode_code(ActivationCode(activation.new_code_id(), "530100000009", "honghe", True, now,
                                                 now + expires_in, device), key=ops, kid="ops-1")
    central.store.add_code(activation.code_id_of(code), shop="530100000009", token=code, device=device,
                           issued_at=now, expires_at=now + expires_in)
    return code


def request(key, device_id, code):
    return Message(activation.topic(PREFIX, device_id, "request"),
                   activation.encode_request(device_id, key, code, sent_at=time.time()))


def test_a_waiting_boxs_hello_is_noted(central, box):
    key, device_id = box
    hello = activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=time.time())
    assert central.handle(Message(activation.topic(PREFIX, device_id, "hello"), hello)) == (Waiting(device_id), None)
    [waiting] = central.store.waiting_devices()
    assert (waiting["device"], waiting["public_key"], waiting["agent_version"]) == (device_id, public_key_text(key),
                                                                                    "1.4.0")


def test_a_waiting_boxs_retained_hello_sent_again_on_subscribing_is_seen_when_it_was_said(central, box):
    """Central subscribes again at every start: the broker's retained hello of a box long gone once listed
    it as seen just now, newest first, for operations looking for a box to install remotely."""
    key, device_id = box
    said = time.time() - 3600
    hello = activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=said)
    topic = activation.topic(PREFIX, device_id, "hello")
    central.handle(Message(topic, hello, retain=True))
    assert central.store.waiting_devices()[0]["seen_at"] == pytest.approx(said, abs=0.001)
    live = time.time()
    central.handle(Message(topic, activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=live)))
    central.handle(Message(topic, hello, retain=True))  # the retained copy again, on the next start
    assert central.store.waiting_devices()[0]["seen_at"] >= live


def test_an_activation_request_with_a_good_code_registers_the_box_and_answers_it_signed(central, box):
    key, device_id = box
    code = issue(central)
    answered, (topic, token) = central.handle(request(key, device_id, code))
    assert answered == Answered(device_id, True, "", "honghe", broker_password(key))
    assert topic == activation.topic(PREFIX, device_id, "result")
    result = activation.decode_result(token, device=device_id, key=central.central_public)
    assert {k: result[k] for k in ("accepted", "code", "shop", "name", "region", "monitoring")} == {
        "accepted": True, "code": activation.code_id_of(code), "shop": "530100000009", "name": "Jianshui No. 2",
        "region": "honghe", "monitoring": True}
    device = central.store.device(device_id)
    assert (device.public_key, device.shop, device.region) == (public_key_text(key), "530100000009", "honghe")
    # Activated, it is heard at once: its first batch is stored.
    accepted, _ = central.handle(batch_message(sales(1), device=device_id, key=key))
    assert accepted.acked_seq == 1


def test_an_activation_refused_is_answered_with_the_reason_and_changes_nothing(central, box):
    key, device_id = box
    code = issue(central, device="cb-someoneelse0000")
    answered, (_, token) = central.handle(request(key, device_id, code))
    assert (answered.accepted, answered.reason) == (False, "the code was issued for device cb-someoneelse0000")
    result = activation.decode_result(token, device=device_id, key=central.central_public)
    assert (result["accepted"], result["reason"]) == (False, "the code was issued for device cb-someoneelse0000")
    assert central.store.device(device_id) is None


def test_an_activation_request_under_another_boxs_id_is_rejected_unanswered(central, box):
    key, device_id = box
    code = issue(central)
    with pytest.raises(Rejected, match="not the one derived"):
        central.handle(request(key, "cb-0000000000000000", code))
    with pytest.raises(Rejected, match="not an activation request"):
        central.handle(Message(activation.topic(PREFIX, device_id, "request"), b"garbage"))
    assert central.store.device("cb-0000000000000000") is None


def raw_batch(text: str, key) -> Message:
    """A batch whose payload is ``text`` exactly, signed by ``key`` as shop-1 (what no encoder here writes)."""
    return Message(protocol.batch_topic(PREFIX, "shop-1"), jws.sign(text.encode(), key, kid="shop-1",
                                                                     typ=protocol.BATCH_TYPE).encode())


BATCH = ('{"v":%s,"device":"shop-1","session":1,"first_seq":1,"last_seq":%s,"sent_at":%s,'
         '"events":[{"seq":%s,"kind":%s,"body":%s}]}')
GOOD = {"v": "1", "last": "1", "sent_at": '"2026-11-27T09:12:03.418Z"', "seq": "1", "kind": '"sale"',
        "body": '{"code":"6901028075831"}'}


@pytest.mark.parametrize("change, reason", [
    ({"body": '{"code":"\\ud800"}'}, "a lone surrogate, or a NUL character"),
    ({"body": '{"\\udfff":1}'}, "a lone surrogate, or a NUL character"),
    ({"kind": '"sa\\ud800le"'}, "a lone surrogate, or a NUL character"),
    ({"body": '{"code":"6901\\u00002"}'}, "a lone surrogate, or a NUL character"),
    ({"v": "true"}, "batch version True"),
    ({"v": "1.0"}, "batch version 1.0"),
    ({"last": "true"}, "does not match its 1 events"),
    ({"last": "1.0"}, "does not match its 1 events"),
    ({"seq": "true"}, "batch seq 1..1 does not match its 1 events"),
    ({"seq": "1.0"}, "batch seq 1..1 does not match its 1 events"),
], ids=["surrogate-in-text", "surrogate-as-key", "surrogate-in-kind", "nul", "v-true", "v-float", "last-true",
        "last-float", "seq-true", "seq-float"])
def test_a_batch_with_text_no_store_keeps_or_numbers_of_the_wrong_type_is_rejected(central, change, reason):
    """Signed by the box itself: each was stored (wrong types), or raised past the door (text that neither
    SQLite's UTF-8 nor PostgreSQL's text takes)."""
    fields = {**GOOD, **change}
    with pytest.raises(Rejected, match=re.escape(reason)):
        central.handle(raw_batch(BATCH % (fields["v"], fields["last"], fields["sent_at"], fields["seq"],
                                          fields["kind"], fields["body"]), central.box_key))
    assert list(central.store.events()) == []
    # An emoji spelled as a surrogate pair, and a backslash before u0000 as text, are text like any other.
    fields = {**GOOD, "body": '{"name":"\\ud83d\\ude00","code":"\\\\u0000"}'}
    accepted, _ = central.handle(raw_batch(BATCH % tuple(fields[k] for k in ("v", "last", "sent_at", "seq", "kind",
                                                                             "body")), central.box_key))
    assert accepted.acked_seq == 1
    assert [(e["name"], e["code"]) for e in central.store.events()] == [("\U0001f600", "\\u0000")]


def test_an_anonymous_hello_with_text_no_operator_should_see_is_rejected(central, box):
    key, device_id = box
    for version in ["1.4\n cb-AAAAAAAAAAAAAAAA  2026-11-29  0.0.1", "\x1b[2J1.4", "1.4\x7f"]:
        hello = activation.encode_hello(device_id, key, agent_version=version, sent_at=time.time())
        with pytest.raises(Rejected, match="hello lacks an agent version of at most 64 printable characters"):
            central.handle(Message(activation.topic(PREFIX, device_id, "hello"), hello))
    assert central.store.waiting_devices() == []


def test_a_request_naming_a_code_id_no_code_has_is_rejected(central, box):
    key, device_id = box
    for code_id in ["\ud800", "", "a" * 65, "code/1"]:
        fake = f"eyJhbGciOiJFZDI1NTE5In0.{jws.b64url(json.dumps({'code': code_id}).encode())}.AAAA"
        with pytest.raises(Rejected, match=re.escape("not an activation code: it names no code id")):
            central.handle(request(key, device_id, fake))
    assert central.store.waiting_devices() == [] and central.store.device(device_id) is None


def test_an_accepted_request_again_is_answered_the_same_and_changes_nothing(central, box):
    """Its result was lost, or someone replays it: the box's registration and upload history stand."""
    key, device_id = box
    code = issue(central)
    first, _ = central.handle(request(key, device_id, code))
    registered = central.store.device(device_id)
    central.store.add_shop(Shop("530100000009", "Jianshui No. 2", "kunming", monitoring=True), replace=True)
    again, (_, token) = central.handle(request(key, device_id, code))
    assert again == first and again.accepted
    assert central.store.device(device_id) == registered  # the same registered_at, and region


def _hello(key, device_id, *, retain=False):
    return Message(activation.topic(PREFIX, device_id, "hello"),
                   activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=time.time()), retain=retain)


def test_a_box_central_holds_active_that_says_it_waits_is_answered_again_with_its_acceptance(central, box):
    """Its retained acceptance was lost with the broker's unsaved state, its pushed code cleared: it waited for
    ever, and a new code was refused as the box was active already."""
    key, device_id = box
    code = issue(central)
    first, (_, accepted) = central.handle(request(key, device_id, code))
    answered, (topic, token) = central.handle(_hello(key, device_id))
    assert answered == Answered(device_id, True, "", "honghe", again=True)
    assert topic == activation.topic(PREFIX, device_id, "result")
    result = activation.decode_result(token, device=device_id, key=central.central_public)
    before = activation.decode_result(accepted, device=device_id, key=central.central_public)
    assert {k: result[k] for k in ("accepted", "code", "shop", "name", "region", "monitoring")} == {
        k: before[k] for k in ("accepted", "code", "shop", "name", "region", "monitoring")}
    assert central.store.waiting_devices() == []


def test_a_box_that_waits_is_answered_again_only_while_central_has_never_heard_from_it_as_active(central, box):
    """Heard from since (a batch, a status), a box that waits has lost its journal: for operations to look at,
    not to be activated behind their back with a journal central would refuse."""
    key, device_id = box
    central.handle(request(key, device_id, issue(central)))
    assert central.handle(_hello(key, device_id, retain=True))[0] == Waiting(device_id)  # a retained copy: no sight of it now
    central.handle(Message(protocol.status_topic(PREFIX, device_id), protocol.encode_status(
        {"state": "online", "session": 1, "connection": 1, "sent_at": time.time()}, device=device_id, key=key)))
    assert central.handle(_hello(key, device_id))[0] == Waiting(device_id)


def test_with_the_production_broker_a_waiting_box_is_answered_again_only_once_central_admitted_it(central, box):
    """Its admission failed (the plugin away): answered from its hello, it would record its activation and
    connect with credentials the broker never had, shut out for good; its request, asked again, admits it."""
    key, device_id = box
    central.handle(request(key, device_id, issue(central)))
    assert central.store.activation_held(device_id, public_key_text(key), admitted=True) is None
    assert central.store.activation_held(device_id, public_key_text(key), admitted=False) is not None
    central.store.admitted(device_id, at=time.time())
    code_id, shop = central.store.activation_held(device_id, public_key_text(key), admitted=True)
    assert (shop.licence, shop.region) == ("530100000009", "honghe")


def test_a_waiting_box_that_another_key_or_a_revocation_stands_for_is_not_answered_again(central, box):
    key, device_id = box
    central.handle(request(key, device_id, issue(central)))
    other = Ed25519PrivateKey.generate()
    with pytest.raises(Rejected):  # a device id is its key's: another key cannot say hello for it
        central.handle(_hello(other, device_id))
    central.store.revoke(device_id)
    assert central.handle(_hello(key, device_id))[0] == Waiting(device_id)


def test_an_event_central_holds_sent_again_as_damaged_is_a_duplicate_not_a_conflict(central):
    """Sent whole, its acknowledgement lost, then rotted on the box: the box sends it as damaged. A
    conflict there would stop the box's uplink for good; central keeps the event it holds."""
    central.handle(batch_message(sales(1, 2), key=central.box_key))
    damaged = [Event(1, "damaged", {"kind": "sale", "reason": "its sealed body fails authentication: the file was "
                                                               "altered"}), *sales(2, 3)]
    accepted, _ = central.handle(batch_message(damaged, key=central.box_key))
    assert (accepted.added, accepted.acked_seq) == (1, 3)
    assert [(e["seq"], e["kind"]) for e in central.store.events()] == [(1, "sale"), (2, "sale"), (3, "sale")]
    with pytest.raises(Rejected, match="seq 1 differs from the event central already holds"):
        central.handle(batch_message([Event(1, "damaged", {"kind": "misread", "reason": "x"})], key=central.box_key))


# -- serving, against a real broker ---------------------------------------------------------------

def test_serve_takes_each_message_from_the_broker_stores_it_and_answers_on_its_topics(central, box, tmp_path, caplog):
    """``serve`` in this process against a real Mosquitto: a batch stored and acknowledged retained, a forged
    one rejected with nothing answered, a status and a hello noted, an activation answered and its pushed
    code cleared, and the ingest ends when cancelled."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)
    key, device_id = box
    code = issue(central)
    forger = Ed25519PrivateKey.generate()

    async def main(port: int) -> tuple[dict[str, list[Message]], Message]:
        serving = asyncio.create_task(central.ingest.serve(host="127.0.0.1", port=port, client_id="central-test"))
        heard: dict[str, list[Message]] = {}
        topics = [protocol.ack_topic(PREFIX, "shop-1"), activation.topic(PREFIX, device_id, "result"),
                  activation.topic(PREFIX, device_id, "code")]
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box", subscriptions=topics) as box_link:
            async with asyncio.timeout(10):
                while sum("subscribed to" in r.getMessage() for r in caplog.records) < 4 + len(topics):
                    await asyncio.sleep(0.02)  # central's four subscriptions and the box's own are in place
            await box_link.publish(activation.topic(PREFIX, device_id, "code"), code.encode(), retain=True)
            await box_link.publish(protocol.batch_topic(PREFIX, "shop-1"), batch_message(sales(1), key=forger).payload)
            for message in (batch_message(sales(1, 2), key=central.box_key),
                            status_message(key=central.box_key, sent_at=time.time(), backlog=0),
                            Message(activation.topic(PREFIX, device_id, "hello"),
                                    activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=time.time())),
                            request(key, device_id, code)):
                await box_link.publish(message.topic, message.payload)
            async with asyncio.timeout(20):
                async for message in box_link.messages():
                    heard.setdefault(message.topic.rsplit("/", 1)[-1], []).append(message)
                    if "ack" in heard and "result" in heard and any(not m.payload for m in heard.get("code", [])):
                        break
        # The acknowledgement is retained: a box that connects later learns at once how far central holds.
        # The code pushed to the waiting box is not: it was used. (Subscribed first, so a code still retained
        # would come before the acknowledgement.)
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box-later",
                            subscriptions=[topics[2], topics[0]]) as later:
            async with asyncio.timeout(20):
                retained = await anext(later.messages())
        await _stopped(serving)
        return heard, retained

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        heard, retained = asyncio.run(main(stack.broker_port))
    [ack] = heard["ack"]
    assert retained.retain and (retained.topic, retained.payload) == (ack.topic, ack.payload)
    assert protocol.decode_ack(ack.payload, device="shop-1", key=central.central_public).seq == 2
    assert [e["seq"] for e in central.store.events()] == [1, 2]
    assert central.store.status("shop-1").state == "online"
    [result] = heard["result"]
    assert activation.decode_result(result.payload, device=device_id, key=central.central_public)["accepted"] is True
    assert central.store.device(device_id).shop == "530100000009"
    logged = [r.getMessage() for r in caplog.records if r.name == "central.ingest"]
    assert any(line.startswith("batch rejected topic=counterbox/v1/devices/shop-1/batch") for line in logged), logged
    assert "batch accepted device=shop-1 seq=1..2 new=2 acked_seq=2" in logged
    assert f"device {device_id} waits for activation" in logged and f"device {device_id} activated" in logged
    assert "device shop-1 online" in logged


def test_a_message_nested_as_deep_as_the_parser_goes_is_refused_never_an_internal_error(central, box):
    """Anyone may say hello (any key makes a device id): a hello nested near the parser's limit, with an
    escape that makes central look at its text, was an internal error at every retained delivery. And a box's
    own batch with a body deeper than a store writes is refused with its reason rather than failing each resend."""
    import threading

    key, device_id = box
    outcomes: list[str] = []

    def hello(depth: int) -> Message:
        body = ('{"v":1,"device":"%s","public_key":"%s","agent_version":"0.1.0","sent_at":"2026-01-01T00:00:00.000Z",'
                '"note":"\\u00e9","x":%s}' % (device_id, public_key_text(key), "[" * depth + "]" * depth)).encode()
        return Message(activation.topic(PREFIX, device_id, "hello"),
                       jws.sign(body, key, kid=device_id, typ=activation.HELLO_TYPE).encode(), retain=True)

    def deep_batch(depth: int) -> Message:
        body = '{"x":' + "[" * depth + "]" * depth + "}"
        events = '[{"seq":1,"kind":"sale","body":%s}]' % body
        payload = ('{"v":1,"device":"shop-1","session":1,"first_seq":1,"last_seq":1,'
                   '"sent_at":"2026-01-01T00:00:00.000Z","events":%s}' % events).encode()
        return Message(protocol.batch_topic(PREFIX, "shop-1"),
                       jws.sign(payload, central.box_key, kid="shop-1", typ=protocol.BATCH_TYPE).encode())

    def run() -> None:  # in a thread of its own, as central's store thread runs it
        for message in [*(deep_batch(depth) for depth in range(1000, 900, -3)),
                        *(hello(depth) for depth in range(1000, 20, -7))]:
            try:
                central.handle(message)
                outcomes.append("handled")
            except Rejected as rejected:
                outcomes.append(str(rejected))
            except Exception as error:  # what the consumer logs as an internal error
                outcomes.append(f"INTERNAL {type(error).__name__}")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not [outcome for outcome in outcomes if outcome.startswith("INTERNAL")], set(outcomes)
    assert any("nests deeper than 32 levels" in outcome for outcome in outcomes)
    assert outcomes[-1] == "handled"  # a hello within the limit is noted


# -- a device's journal -----------------------------------------------------------------------------------

J1, J2 = "1" * 32, "2" * 32


def journal_batch(events, *, journal, base_seq=0, device="shop-1", key):
    token = protocol.encode_batch(events, device=device, session=1, key=key, sent_at=time.time(), journal=journal,
                                  base_seq=base_seq)
    return Message(protocol.batch_topic(PREFIX, device), token)


def test_a_new_journal_under_a_devices_id_is_refused_and_nothing_of_it_is_acknowledged(central):
    """A box whose journal was made anew (moved away, as its error says to) numbers its sales from 1 again:
    they are not central's 1, 2, 3. Once, those at seqs central did not hold yet were stored and the
    acknowledgement of the run covered the ones it refused: sales lost, with the box's cursor past them."""
    result, (_, token) = central.handle(journal_batch(sales(1, 2, 3), journal=J1, key=central.box_key))
    assert result.acked_seq == 3
    assert protocol.decode_ack(token, device="shop-1", key=central.central_public, journal=J1).seq == 3
    with pytest.raises(ProtocolError, match="acknowledgement is for journal"):  # the new journal moves nothing
        protocol.decode_ack(token, device="shop-1", key=central.central_public, journal=J2)
    for seqs in ((1, 2), (4, 5, 6)):  # the seqs central holds, and those it does not
        with pytest.raises(Rejected) as refused:
            central.handle(journal_batch(sales(*seqs), journal=J2, key=central.box_key))
        assert str(refused.value) == (  # what the operator is to do, in full
            f"device shop-1 sends events of journal {J2}, but central holds those of journal {J1}: the box's "
            "journal was made anew or replaced under the same id, and its seqs are not the ones central holds. "
            "Nothing is stored or acknowledged; the box keeps its events. Restore the box's journal from its "
            "backup, or register the box under a new id (docs/commands.md, Replacing a box's journal)")
    assert [e["seq"] for e in central.store.events()] == [1, 2, 3] and central.store.device("shop-1").acked_seq == 3
    # Its own journal goes on as before; a box of an earlier version (no journal named) too.
    assert central.handle(journal_batch(sales(4), journal=J1, key=central.box_key))[0].acked_seq == 4
    assert central.handle(batch_message(sales(5), key=central.box_key))[0].acked_seq == 5


def test_a_journal_restored_onto_another_box_is_counted_from_where_its_last_box_was_acknowledged(central):
    """The restored journal holds events 1 to 5, of which central acknowledged 1 to 3 to the old box; the new box
    (another id) sends 4 and 5 as itself. Once, its count started at 1 and never moved: acknowledged 0 for ever."""
    assert central.handle(journal_batch(sales(1, 2, 3), journal=J1, key=central.box_key))[0].acked_seq == 3
    new_key = Ed25519PrivateKey.generate()
    central.store.register("shop-new", public_key_text(new_key), shop="530100000001", region="honghe")
    later, _ = central.handle(journal_batch(sales(5), journal=J1, base_seq=3, device="shop-new", key=new_key))
    assert (later.added, later.acked_seq) == (1, 3)  # counted from 3 on; 4 is still on its way
    result, (_, token) = central.handle(journal_batch(sales(4), journal=J1, base_seq=3, device="shop-new", key=new_key))
    assert (result.added, result.acked_seq) == (1, 5)
    assert protocol.decode_ack(token, device="shop-new", key=central.central_public, journal=J1).seq == 5
    assert [(e["device"], e["seq"]) for e in central.store.events()][3:] == [("shop-new", 4), ("shop-new", 5)]


def test_a_journal_is_counted_as_delivered_only_as_far_as_central_holds_it_for_another_box(central):
    """``base_seq`` says "my journal's events up to here were delivered as another device". Once central took it
    on the box's word: a box naming a journal no other box delivered (or naming a seq past the one that did) had
    seqs acknowledged that central never held, and the gap in its sales went unseen for good."""
    new_key = Ed25519PrivateKey.generate()
    central.store.register("shop-new", public_key_text(new_key), shop="530100000001", region="honghe")
    with pytest.raises(Rejected) as refused:
        central.handle(journal_batch(sales(1001), journal=J2, base_seq=1000, device="shop-new", key=new_key))
    assert str(refused.value) == (
        f"device shop-new counts the events of journal {J2} up to seq 1000 as delivered by another device, but "
        "central holds none of that journal's from another device. Nothing is stored or acknowledged; the box "
        "keeps its events")
    assert central.handle(journal_batch(sales(1, 2, 3), journal=J1, key=central.box_key))[0].acked_seq == 3
    with pytest.raises(Rejected) as refused:
        central.handle(journal_batch(sales(6), journal=J1, base_seq=5, device="shop-new", key=new_key))
    assert str(refused.value) == (
        f"device shop-new counts the events of journal {J1} up to seq 5 as delivered by another device, but "
        "central holds them only up to seq 3 from another device. Nothing is stored or acknowledged; the box "
        "keeps its events")
    assert [(e["device"], e["seq"]) for e in central.store.events()] == [("shop-1", 1), ("shop-1", 2), ("shop-1", 3)]
    assert central.store.device("shop-new").acked_seq == 0
    # Once the old box delivers them, the new box's batch is counted on from there.
    assert central.handle(journal_batch(sales(4, 5), journal=J1, key=central.box_key))[0].acked_seq == 5
    assert central.handle(journal_batch(sales(6), journal=J1, base_seq=5, device="shop-new",
                                        key=new_key))[0].acked_seq == 6


def test_a_backup_older_than_the_last_acknowledgement_restored_onto_another_box_counts_nothing_twice(central):
    """The old box delivered 1 to 5 after the backup was taken at 3: the new box, from the backup, sends 4 and 5
    again (the same sales, held already as the old box's), then its own 6. Once, 4 and 5 were stored twice."""
    new_key = Ed25519PrivateKey.generate()
    central.store.register("shop-new", public_key_text(new_key), shop="530100000001", region="honghe")
    assert central.handle(journal_batch(sales(1, 2, 3, 4, 5), journal=J1, key=central.box_key))[0].acked_seq == 5
    own_sixth = [Event(6, "sale", {"code": "96385074", "n": "the new box's own"})]
    result, (_, token) = central.handle(journal_batch(sales(4, 5) + own_sixth, journal=J1, base_seq=3,
                                                      device="shop-new", key=new_key))
    assert (result.added, result.acked_seq) == (1, 6)
    assert protocol.decode_ack(token, device="shop-new", key=central.central_public, journal=J1).seq == 6
    held = [(e["device"], e["seq"]) for e in central.store.events()]
    assert held == [("shop-1", 1), ("shop-1", 2), ("shop-1", 3), ("shop-1", 4), ("shop-1", 5), ("shop-new", 6)]
    # Another event at a seq the old box holds is the new box's own: kept.
    other_fifth = [Event(5, "sale", {"code": "96385074", "n": "not the old box's fifth"})]
    new_key_2 = Ed25519PrivateKey.generate()
    central.store.register("shop-third", public_key_text(new_key_2), shop="530100000001", region="honghe")
    assert central.handle(journal_batch(sales(4) + other_fifth, journal=J1, base_seq=3, device="shop-third",
                                        key=new_key_2))[0] == Accepted("shop-third", 4, 5, added=1, acked_seq=5)


def test_a_journal_whose_identity_moves_away_and_back_is_counted_on_from_where_it_was(central):
    new_key = Ed25519PrivateKey.generate()
    central.store.register("shop-new", public_key_text(new_key), shop="530100000001", region="honghe")
    assert central.handle(journal_batch(sales(1, 2, 3), journal=J1, key=central.box_key))[0].acked_seq == 3
    assert central.handle(journal_batch(sales(4, 5), journal=J1, base_seq=3, device="shop-new",
                                        key=new_key))[0].acked_seq == 5
    back = central.handle(journal_batch(sales(6), journal=J1, base_seq=5, key=central.box_key))[0]
    assert (back.added, back.acked_seq) == (1, 6)


# -- serve: what central hears, in this process against a real Mosquitto ----------------------------------

async def _serving(central, port: int, caplog, *, client_id: str = "central-test"):
    """``serve`` started, once central's four subscriptions are in place."""
    import asyncio

    before = sum("subscribed to" in r.getMessage() for r in caplog.records)
    serving = asyncio.create_task(central.ingest.serve(host="127.0.0.1", port=port, client_id=client_id))
    async with asyncio.timeout(10):
        while sum("subscribed to" in r.getMessage() for r in caplog.records) < before + 4:
            await asyncio.sleep(0.02)
    return serving


async def _stopped(serving) -> None:
    import asyncio

    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a serve that will not stop fails here, not at the suite's end
            await serving


def test_serve_flags_a_box_whose_clock_is_off_and_names_a_status_it_rejects(central, tmp_path, caplog, monkeypatch):
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from central import ingest
    from demo.stack import Stack

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(ingest, "QUEUE_SETTLE", 0.0)  # central's queue settled at once: the clock is measured
    forger = Ed25519PrivateKey.generate()

    async def main(port: int) -> None:
        serving = await _serving(central, port, caplog)
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box") as box_link:
            await box_link.connected.wait()
            for key, sent_at in ((forger, time.time()), (central.box_key, time.time() - 300)):
                await box_link.publish(protocol.status_topic(PREFIX, "shop-1"),
                                       status_message(key=key, sent_at=sent_at).payload)
            async with asyncio.timeout(10):
                while not any("clock is off" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.02)
        await _stopped(serving)

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        asyncio.run(main(stack.broker_port))
    logged = [r.getMessage() for r in caplog.records if r.name == "central.ingest"]
    assert any(line.startswith("status rejected topic=counterbox/v1/devices/shop-1/status bytes=") for line in logged)
    [flagged] = [line for line in logged if "clock is off" in line]
    assert re.fullmatch(r"device shop-1 clock is off by -30\d\.\d s: its scans carry wrong times \(no NTP\?\)", flagged)
    assert central.store.status("shop-1").clock_offset == pytest.approx(-300, abs=5)


def test_serve_receives_what_a_box_sent_while_central_was_away(central, tmp_path, caplog):
    """Central's session at the broker outlives it: a batch sent while it was stopped waits there for it."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)

    async def main(port: int) -> bytes:
        await _stopped(await _serving(central, port, caplog, client_id="central-away"))
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box",
                            subscriptions=[protocol.ack_topic(PREFIX, "shop-1")]) as box_link:
            await box_link.connected.wait()
            await asyncio.sleep(0.5)  # central away a while
            await box_link.publish(protocol.batch_topic(PREFIX, "shop-1"),
                                   batch_message(sales(1, 2), key=central.box_key).payload)
            serving = await _serving(central, port, caplog, client_id="central-away")
            async with asyncio.timeout(10):
                ack = await anext(box_link.messages())
        await _stopped(serving)
        return ack.payload

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        ack = asyncio.run(main(stack.broker_port))
    assert protocol.decode_ack(ack, device="shop-1", key=central.central_public).seq == 2
    assert [e["seq"] for e in central.store.events()] == [1, 2]


def test_a_revoked_box_done_with_no_broker_to_keep_leaves_central_serving(central, tmp_path, caplog):
    """Central without ``broker_admin`` (the development broker, anonymous): a revoked box that hands in its
    revocation and says it holds the acknowledgement has no broker access to take away, and central goes on
    serving the others."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack
    from storage import Event

    caplog.set_level(logging.INFO)
    central.store.revoke("shop-1")

    async def main(port: int) -> bool:
        serving = await _serving(central, port, caplog)
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box") as box_link:
            await box_link.connected.wait()
            revoked = {"name": "revocation", "issued_at": protocol.rfc3339(time.time())}
            revocation = protocol.encode_batch([Event(1, "revocation", revoked)], device="shop-1",
                                               session=1, key=central.box_key, sent_at=time.time())
            await box_link.publish(protocol.batch_topic(PREFIX, "shop-1"), revocation)
            async with asyncio.timeout(10):
                while not await asyncio.to_thread(central.store.revocation_delivered, "shop-1"):
                    await asyncio.sleep(0.02)
            done = status_message(key=central.box_key, sent_at=time.time(), last_seq=1, acked_seq=1, backlog=0,
                                  erasing=True)
            await box_link.publish(protocol.status_topic(PREFIX, "shop-1"), done.payload)
            async with asyncio.timeout(10):
                while not any(r.getMessage() == "device shop-1 online" for r in caplog.records):
                    await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        serving_still = not serving.done()
        await _stopped(serving)
        return serving_still

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        assert asyncio.run(main(stack.broker_port)) is True


def test_a_status_that_waited_at_the_broker_for_central_says_nothing_of_the_boxs_clock(central, tmp_path, caplog):
    """A status central receives in its first seconds back may have waited in its queue: its time of
    sending against central's time of receipt would be the time it waited, not the box's clock."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)

    async def main(port: int) -> None:
        await _stopped(await _serving(central, port, caplog, client_id="central-away"))
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box") as box_link:
            await box_link.connected.wait()
            # Sent while central is away, stamped as if it had waited there five minutes.
            await box_link.publish(protocol.status_topic(PREFIX, "shop-1"),
                                   status_message(key=central.box_key, sent_at=time.time() - 300).payload)
        serving = await _serving(central, port, caplog, client_id="central-away")
        async with asyncio.timeout(10):
            while not any(r.getMessage() == "device shop-1 online" for r in caplog.records):
                await asyncio.sleep(0.02)
        await _stopped(serving)

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        asyncio.run(main(stack.broker_port))
    assert not any("clock is off" in r.getMessage() for r in caplog.records)
    assert central.store.status("shop-1").clock_offset is None


def test_a_batch_central_was_storing_when_it_stopped_is_given_to_it_again_by_the_broker(central, tmp_path, caplog):
    """Central acknowledges a message to the broker only once it has handled it: a batch it had taken but
    not stored when it stopped (its database held by another process past the busy timeout, here) stays
    with the broker and is handed to central again when it comes back, without the box sending it again."""
    import asyncio
    import logging
    import sqlite3

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)

    async def main(port: int, holder: sqlite3.Connection) -> None:
        serving = await _serving(central, port, caplog, client_id="central-stopped")
        try:
            async with MqttLink(host="127.0.0.1", port=port, client_id="a-box") as box_link:
                await box_link.connected.wait()
                await box_link.publish(protocol.batch_topic(PREFIX, "shop-1"),
                                       batch_message(sales(1, 2), key=central.box_key).payload)
            await asyncio.sleep(1.0)  # taken by central, whose store waits for the database
            await _stopped(serving)  # stopped while storing it: its store gives up after the busy timeout
        finally:
            await asyncio.to_thread(holder.rollback)
        assert await asyncio.to_thread(lambda: list(central.store.events())) == []
        serving = await _serving(central, port, caplog, client_id="central-stopped")
        async with asyncio.timeout(10):
            while not await asyncio.to_thread(lambda: list(central.store.events())):
                await asyncio.sleep(0.05)
        await _stopped(serving)

    holder = sqlite3.connect(tmp_path / "central.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # central's next write waits for it, then fails
    try:
        with Stack(tmp_path / "stack") as stack:
            stack.start_broker()
            asyncio.run(main(stack.broker_port, holder))
    finally:
        holder.close()
    assert [e["seq"] for e in central.store.events()] == [1, 2]


def test_instances_sharing_the_load_divide_the_batches_between_them_and_store_each_once(tmp_path, caplog):
    """Two ``serve`` with ``share``, in this process, on one database: every batch is handled by one of them
    only, and all are stored."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)
    keys = {f"shop-{n}": Ed25519PrivateKey.generate() for n in range(4)}
    stores = [CentralStore(tmp_path / "central.db") for _ in range(2)]
    for device, key in keys.items():
        stores[0].register(device, public_key_text(key))
    central_key = Ed25519PrivateKey.generate()
    ingests = [Ingest(store=store, signing_key=central_key) for store in stores]

    async def main(port: int) -> None:
        serving = []
        for n, ingest in enumerate(ingests):
            before = sum("subscribed to" in r.getMessage() for r in caplog.records)
            serving.append(asyncio.create_task(ingest.serve(host="127.0.0.1", port=port, client_id=f"central-{n}",
                                                            share="ingest")))
            async with asyncio.timeout(10):
                while sum("subscribed to" in r.getMessage() for r in caplog.records) < before + 4:
                    await asyncio.sleep(0.02)
        async with MqttLink(host="127.0.0.1", port=port, client_id="the-boxes") as link:
            await link.connected.wait()
            for seq in range(1, 6):
                for device, key in keys.items():
                    await link.publish(protocol.batch_topic(PREFIX, device),
                                       batch_message(sales(seq), device=device, key=key).payload)
            async with asyncio.timeout(20):
                while len(await asyncio.to_thread(lambda: list(stores[0].events()))) < 20:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a duplicate delivery, were there one, would be handled by now
        for task in serving:
            await _stopped(task)

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        asyncio.run(main(stack.broker_port))
    try:
        assert sorted((e["device"], e["seq"]) for e in stores[0].events()) == sorted(
            (device, seq) for device in keys for seq in range(1, 6))
    finally:
        for store in stores:
            store.close()
    accepted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch accepted")]
    assert len(accepted) == 20  # each batch handled once, by one instance


def test_a_batch_central_fails_to_store_is_not_acknowledged_and_is_stored_when_the_box_sends_it_again(
        central, tmp_path, caplog):
    """The database refusing a write (here a trigger, as a full disk would): the batch is left unacknowledged,
    central keeps serving, and the box's resend is stored and acknowledged."""
    import asyncio
    import logging

    from agent.mqtt import MqttLink
    from demo.stack import Stack

    caplog.set_level(logging.INFO)
    central.store.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    batch = batch_message(sales(1), key=central.box_key)

    async def main(port: int) -> list[bytes]:
        serving = await _serving(central, port, caplog)
        heard: list[bytes] = []
        async with MqttLink(host="127.0.0.1", port=port, client_id="a-box",
                            subscriptions=[protocol.ack_topic(PREFIX, "shop-1")]) as link:
            await link.connected.wait()
            await link.publish(batch.topic, batch.payload)
            async with asyncio.timeout(10):
                while not any("message not stored" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(central.store.conn.execute, "DROP TRIGGER refuse")
            await link.publish(batch.topic, batch.payload)  # the box's resend, its acknowledgement not come
            async with asyncio.timeout(10):
                heard.append((await anext(link.messages())).payload)
        await _stopped(serving)
        return heard

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        heard = asyncio.run(main(stack.broker_port))
    assert [protocol.decode_ack(token, device="shop-1", key=central.central_public).seq for token in heard] == [1]
    assert [e["seq"] for e in central.store.events()] == [1]
    [failed] = [r for r in caplog.records if "message not stored" in r.getMessage()]
    assert failed.getMessage() == "message not stored topic=counterbox/v1/devices/shop-1/batch: internal error"


def test_a_hello_is_noted_with_when_central_heard_it(central, box):
    key, device_id = box
    before = time.time()
    hello = activation.encode_hello(device_id, key, agent_version="1.4.0", sent_at=before - 3600)  # its clock is off
    assert central.handle(Message(activation.topic(PREFIX, device_id, "hello"), hello)) == (Waiting(device_id), None)
    [waiting] = central.store.waiting_devices()
    assert before <= waiting["seen_at"] <= time.time()
