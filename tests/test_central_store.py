"""Central's store: each (device, seq) once, and an acknowledgement only for what it holds from seq 1 on.

Every test that takes ``store`` runs twice: on SQLite (a file, the default) and on PostgreSQL (a real
server the tests start, tests/postgres.py), since one code path serves both.
"""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.errors import ActivationRefused, RegistryError, SeqConflict
from central.store import HEAD, CentralStore, Device, Shop
from central.store import database as database_option
from provisioning.protocol import rfc3339


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A new database: a SQLite file's path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "central.db"
    return request.getfixturevalue("postgresql_url")


@pytest.fixture
def store(database):
    s = CentralStore(database)
    s.register("shop-1", "key-1")
    yield s
    s.close()


def batch(*seqs, body=None):
    return [{"seq": seq, "kind": "sale", "body": body or {"n": seq}} for seq in seqs]


def test_the_acknowledgement_never_runs_over_a_gap(store):
    assert store.add_events("shop-1", 1, batch(3, 4)) == (2, 0)  # 1 and 2 are still on their way
    assert store.add_events("shop-1", 1, batch(1)) == (1, 1)
    assert store.add_events("shop-1", 1, batch(2)) == (1, 4)
    assert store.device("shop-1").acked_seq == 4


def test_a_journal_of_a_box_that_named_none_restored_onto_another_is_counted_from_where_that_box_was(store):
    """A box of an earlier version named no journal; its journal, restored onto a new box of the same shop,
    names one for the first time, counted from where the old box was acknowledged. The new box's batches were
    refused for good once central held base_seq to journals named alone; a box of another shop that named none
    vouches for nothing."""
    from central.errors import UnheldBase

    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe"))
    store.add_shop(Shop("530100000002", "Gejiu No. 1", "honghe"))
    store.register("old", "key-old", shop="530100000001", region="honghe")
    store.register("elsewhere", "key-elsewhere", shop="530100000002", region="honghe")
    store.register("new", "key-new", shop="530100000001", region="honghe")
    store.register("other-new", "key-other-new", shop="530100000001", region="honghe")
    store.add_events("old", 1, batch(1, 2, 3))
    store.add_events("elsewhere", 1, batch(*range(1, 11)))
    assert store.add_events("new", 1, batch(4), journal="d" * 32, base_seq=3) == (1, 4)
    with pytest.raises(UnheldBase, match="central holds them only up to seq 3 from another device"):
        store.add_events("other-new", 1, batch(11), journal="e" * 32, base_seq=10)  # not the other shop's 10
    store.register("alone", "key-alone")  # of no shop, and no other box of none named no journal
    with pytest.raises(UnheldBase, match="central holds none of that journal's"):
        store.add_events("alone", 1, batch(11), journal="f" * 32, base_seq=10)


def test_a_box_of_another_shop_naming_a_shops_journal_is_refused_and_takes_nothing(store):
    """A journal id is no secret (batches and acknowledgements name it): a box of shop 2 that named shop 1's took
    over shop 1's stock report (shop 1 gone from it, shop 2 showing its shelf)."""
    from central.errors import ForeignJournal

    from central.store import Shop

    journal = "c" * 32
    for licence in ("530100000001", "530100000002"):
        store.add_shop(Shop(licence, f"Shop {licence[-1]}", "honghe", False))
    store.register("cb-one", "key-1", shop="530100000001", region="honghe")
    store.register("cb-two", "key-2", shop="530100000002", region="honghe")
    store.register("cb-one-new", "key-3", shop="530100000001", region="honghe")
    store.add_events("cb-one", 1, batch(1, 2, 3), journal=journal)
    for base_seq in (0, 3):
        with pytest.raises(ForeignJournal, match="which central holds from device cb-one of shop 530100000001"):
            store.add_events("cb-two", 1, batch(4), journal=journal, base_seq=base_seq)
    assert store.device("cb-two").acked_seq == 0 and store.holds_journal("cb-one")
    assert [e for e in store.events() if e["device"] == "cb-two"] == []
    assert store.add_events("cb-two", 1, batch(1), journal="d" * 32) == (1, 1)  # its own journal, as ever
    # Nor does a box of no shop (a lab's) take it.
    store.register("cb-lab", "key-4")
    with pytest.raises(ForeignJournal, match="which central holds from device cb-one of shop 530100000001"):
        store.add_events("cb-lab", 1, [{"seq": 4, "kind": "sale", "body": {}}], journal=journal, base_seq=3)
    # The shop's own replacement box, restored from the backup: goes on from it.
    assert store.add_events("cb-one-new", 1, batch(4), journal=journal, base_seq=3) == (1, 4)
    assert store.holds_journal("cb-one-new")


def test_a_box_registered_by_a_shops_name_hands_its_journal_to_the_box_registered_by_the_licence(store):
    """Before shops had licences a box was registered with the shop's name: that is no shop central knows, so
    the shop's replacement box, registered by its licence, goes on from the old box's journal."""
    from central.store import Shop

    journal = "e" * 32
    store.add_shop(Shop("530100000001", "Corner Shop", "honghe", False))
    store.register("cb-old", "key-1", shop="Corner Shop", region="honghe")
    store.add_events("cb-old", 1, batch(1, 2, 3), journal=journal)
    store.register("cb-new", "key-2", shop="530100000001", region="honghe")
    assert store.add_events("cb-new", 1, batch(4), journal=journal, base_seq=3) == (1, 4)
    assert store.holds_journal("cb-new")


def test_a_journal_of_a_box_of_no_shop_that_named_none_is_counted_from_where_that_box_was(store):
    """Boxes registered by hand, of no shop: the old one named no journal. And a batch that names no journal
    is never counted from another device's seq."""
    from central.errors import UnheldBase

    store.add_events("shop-1", 1, batch(1, 2, 3))
    store.register("replacement", "key-r")
    assert store.add_events("replacement", 1, batch(4), journal="9" * 32, base_seq=3) == (1, 4)
    store.register("unnamed", "key-u")
    with pytest.raises(UnheldBase):
        store.add_events("unnamed", 1, batch(4), journal=None, base_seq=3)


def test_a_journals_events_are_its_devices_own_and_those_delivered_before_it_by_another(store):
    """shop-1 delivered 1 to 5 of journal J; a backup taken at 3 went onto shop-2 (which sent its own 4 and
    5, another branch) and later onto shop-3 from shop-2's journal at 5. Each folds its own branch, and the
    journal goes on at the serving device that sent last."""
    journal = "c" * 32
    for device in ("shop-2", "shop-3"):
        store.register(device, f"key-{device}")
    store.add_events("shop-1", 1, batch(1, 2, 3, 4, 5), journal=journal)
    store.add_events("shop-2", 1, batch(4, 5, body={"branch": 2}), journal=journal, base_seq=3)
    store.add_events("shop-3", 1, batch(6, body={"branch": 3}), journal=journal, base_seq=5)
    assert [(seq, body) for seq, _, body in store.journal_events("shop-2")] == [
        (1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3}), (4, {"branch": 2}), (5, {"branch": 2})]
    assert [(seq, body) for seq, _, body in store.journal_events("shop-3")] == [
        (1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3}), (4, {"branch": 2}), (5, {"branch": 2}), (6, {"branch": 3})]
    assert [store.holds_journal(d) for d in ("shop-1", "shop-2", "shop-3")] == [False, False, True]
    store.revoke("shop-3")  # taken out of service: the journal's last serving device to send holds it
    assert [store.holds_journal(d) for d in ("shop-1", "shop-2", "shop-3")] == [False, True, False]
    store.register("shop-4", "key-4")  # a device of no journal (a box of an earlier version) holds its own
    assert store.holds_journal("shop-4") and list(store.journal_events("shop-4")) == []


def test_a_journal_goes_on_at_the_serving_device_whose_latest_event_came_last(store):
    """Not the one registered last: x delivered 1 to 3, its journal went to y (restored there) and came back to
    x, which sends on. A device's own event at a seq wins over another's, and its events past a gap are its
    own too; a device of another journal sending later holds nothing of this one."""
    journal, other = "a" * 32, "b" * 32
    for device in ("x", "y", "z"):
        store.register(device, f"key-{device}")
    store.add_events("x", 1, batch(1, 2, 3), journal=journal)
    store.add_events("y", 1, batch(4, 5, body={"on": "y"}), journal=journal, base_seq=3)
    assert [store.holds_journal(d) for d in ("x", "y")] == [False, True]
    store.add_events("x", 1, batch(6, 8, body={"on": "x"}), journal=journal, base_seq=5)  # back at x; 7 to come
    store.add_events("z", 1, batch(1), journal=other)
    assert [store.holds_journal(d) for d in ("x", "y", "z")] == [True, False, True]
    assert [(seq, body) for seq, _, body in store.journal_events("x")] == [
        (1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3}), (4, {"on": "y"}), (5, {"on": "y"}), (6, {"on": "x"}),
        (8, {"on": "x"})]
    # y's own 4 and 5 over x's, had x held others there; and up to y's acknowledged seq, x's events are y's past.
    store.register("w", "key-w")
    store.add_events("w", 1, batch(4, body={"on": "w"}), journal=other, base_seq=1)
    assert [(seq, body) for seq, _, body in store.journal_events("z")] == [(1, {"n": 1})]
    assert [(seq, body) for seq, _, body in store.journal_events("w")] == [(1, {"n": 1}), (4, {"on": "w"})]
    assert list(store.journal_events("nobody")) == []
    # Two restored from one that is gone, neither with an event of its own yet (what they sent, it held): the
    # one registered last, the newer box.
    for device in ("gone", "p", "q"):
        store.register(device, f"key-{device}")
    store.add_events("gone", 1, batch(1, 2), journal="c" * 32)
    for device in ("p", "q"):
        assert store.add_events(device, 1, batch(2), journal="c" * 32, base_seq=1) == (0, 2)
    store.revoke("gone")
    assert [store.holds_journal(d) for d in ("gone", "p", "q")] == [False, False, True]


def test_a_batch_received_again_adds_nothing(store):
    assert store.add_events("shop-1", 1, batch(1, 2)) == (2, 2)
    assert store.add_events("shop-1", 2, batch(1, 2)) == (0, 2)
    assert len(list(store.events())) == 2


def test_the_signed_batch_that_brought_events_is_kept_as_sent_and_one_that_brought_none_is_not(store):
    first, again, more = b"header.first-token.signature", b"header.again.signature", b"header.more.signature" * 1000
    store.add_events("shop-1", 1, batch(1, 2), token=first)
    store.add_events("shop-1", 2, batch(1, 2), token=again)  # nothing new: not kept
    store.add_events("shop-1", 2, batch(2, 3), token=more)
    store.add_events("shop-1", 2, batch(4))  # a caller that keeps no token
    assert list(store.signed_batches("shop-1")) == [first, more]
    assert list(store.signed_batches("shop-1", after=2)) == [more]
    assert list(store.signed_batches("shop-2")) == []


def test_a_reused_seq_with_other_content_is_a_conflict_and_stores_nothing(store):
    store.add_events("shop-1", 1, batch(1))
    with pytest.raises(SeqConflict, match="seq 1 differs"):
        store.add_events("shop-1", 1, batch(1, 2, body={"other": True}))
    assert [e["seq"] for e in store.events()] == [1]


@pytest.mark.parametrize("sent, again", [
    ({"known": True}, {"known": 1}), ({"quantity": 4}, {"quantity": 4.0}), ({"n": [0]}, {"n": [False]}),
    ({"n": {"m": 1}}, {"n": {"m": True}}),
], ids=["true-and-1", "4-and-4.0", "0-and-false", "nested"])
def test_a_seq_sent_again_with_values_python_calls_equal_but_json_does_not_is_a_conflict(store, sent, again):
    """A consumer reads each signed batch: two different events under one seq, though Python's == says equal."""
    store.add_events("shop-1", 1, batch(1, body=sent))
    with pytest.raises(SeqConflict, match="seq 1 differs"):
        store.add_events("shop-1", 1, batch(1, body=again))
    assert store.add_events("shop-1", 1, batch(1, body=dict(reversed(list(sent.items()))))) == (0, 1)  # the same


def test_a_batch_nested_deeper_than_pythons_stack_stored_once_is_acknowledged_again_when_sent_again(store):
    """Its acknowledgement lost, the same batch came again and was refused for ever as nesting too deeply: the
    comparison with what central held recursed, where storing it had not."""
    import json
    import sys

    depth = sys.getrecursionlimit() * 6 // 10  # read and written as JSON within the limit; compared, once, not
    deep = json.loads("[" * depth + "]" * depth)
    assert store.add_events("shop-1", 1, batch(1, body={"a": deep})) == (1, 1)
    assert store.add_events("shop-1", 1, batch(1, body={"a": deep})) == (0, 1)
    with pytest.raises(SeqConflict):
        store.add_events("shop-1", 1, batch(1, body={"a": [deep]}))


@pytest.mark.parametrize("body", [{"name": "红塔山 (pack)", "unit_price": 2300, "aim": None, "known": True},
                                  {"quantity": 2 ** 70, "nested": {"list": [1, "two", 3.5]}}],
                         ids=["unicode", "integer-past-64-bits"])
def test_an_events_body_is_stored_as_the_device_sent_it(store, body):
    store.add_events("shop-1", 1, batch(1, body=body))
    [event] = store.events()
    assert {name: event[name] for name in body} == body


def test_a_device_is_registered_with_its_key_and_shop(store):
    store.register("shop-2", "key-2", shop="Mengzi No. 3")
    assert store.device("shop-2") == Device("shop-2", "key-2", 0, "Mengzi No. 3")
    assert store.device("shop-1").shop == ""  # none given
    assert store.device("shop-3") is None


def test_re_registering_with_another_key_needs_replace(store):
    with pytest.raises(RegistryError, match="pass --replace"):
        store.register("shop-1", "key-2")
    store.register("shop-1", "key-2", replace=True)
    assert store.device("shop-1").public_key == "key-2"


def test_a_device_registered_again_with_its_key_keeps_its_registration_day_shop_and_region(store):
    """Running register again (the same key) once made the device new that day: its upload record over ten days
    became one day at 100%, and without --shop and --region its sales left its shop's and region's reports."""
    import datetime

    store.register("shop-9", "key-9", shop="530100000001", region="honghe")
    ten_days_ago = time.time() - 10 * 86400
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = ?", [ten_days_ago, "shop-9"])
    store.register("shop-9", "key-9")
    assert (store.device("shop-9").shop, store.device("shop-9").region) == ("530100000001", "honghe")
    today = datetime.date.today()
    days = store.upload_days("shop-9", (today - datetime.timedelta(days=20)).isoformat(), today.isoformat(),
                             deadline=60)
    assert len(days) >= 10
    store.register("shop-9", "key-9", shop="530100000002", region="kunming")  # given anew: changed
    assert (store.device("shop-9").shop, store.device("shop-9").region) == ("530100000002", "kunming")


def test_a_status_retained_and_sent_again_on_subscribing_moves_nothing(store):
    """Central subscribes again at every start, and the broker hands it each box's retained status: once that
    copy of the status held was taken as new, and a box offline for weeks was "seen 4 s ago"."""
    offline = {"state": "offline", "session": 1, "connection": 1, "sent_at": 1000.0}
    assert store.record_status("shop-1", offline, received_at=1001.0, live=True)
    assert store.record_status("shop-1", dict(offline), received_at=9000.0, live=False) is False
    assert store.status("shop-1").received_at == 1001.0


def test_a_hello_retained_and_sent_again_on_subscribing_is_no_sight_of_the_box(store):
    store.waiting("cb-a", "key-a", "1.0.0", 1000.0)
    store.waiting("cb-a", "key-a", "1.0.0", 9000.0, retained=True)
    assert store.waiting_devices(9000.0)[0]["seen_at"] == 1000.0
    store.waiting("cb-b", "key-b", "1.0.0", 500.0, retained=True)  # not known yet: seen as it said it was
    assert [(w["device"], w["seen_at"]) for w in store.waiting_devices(9000.0)] == [("cb-a", 1000.0), ("cb-b", 500.0)]


def test_a_region_is_known_by_a_shop_or_a_box_registered_in_it_or_a_document_pushed_to_it(store):
    assert store.regions() == set()
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe"))
    store.add_shop(Shop("530100000002", "No region yet", ""))
    assert store.regions() == {"honghe"}
    store.register("shop-7", "key-7", region="kunming")  # a box registered by hand, of no shop central knows
    assert store.regions() == {"honghe", "kunming"}
    for scope in ({"region": "yuxi"}, {"device": "shop-7"}):  # a list pushed ahead of the region's shops
        store.issue_document(lambda version: ("price_list", json.dumps(scope), "ops-1", 1.0, 2.0, b"token"),
                             "price_list")
    assert store.regions() == {"honghe", "kunming", "yuxi"}


def test_the_latest_document_of_a_stream_is_its_newest_version_for_that_scope(store):
    def signed(scope, token):
        return lambda version: ("price_list", scope, "ops-1", 1.0, 2.0, token)

    assert store.latest_document("price_list/honghe", "region:honghe") is None
    store.issue_document(signed("region:honghe", b"v1"), "price_list/honghe")
    store.issue_document(signed("region:honghe", b"v2"), "price_list/honghe")
    store.issue_document(signed("region:kunming", b"other"), "price_list/kunming")
    assert store.latest_document("price_list/honghe", "region:honghe") == b"v2"
    assert store.latest_document("price_list/honghe", "region:kunming") is None
    assert store.conn.execute("SELECT name FROM documents WHERE name = ?", ["price_list/none"]).fetchone() is None


def test_no_device_is_registered_under_centrals_own_key_id(store):
    """Consumers pick the key to verify with by its id, from the key set central lists: a device registered as
    "central" put a second key under central's id, and central's own acknowledgements failed to verify."""
    with pytest.raises(RegistryError, match="^device id 'central' is central's own key id: register the box under "
                                            "another$"):
        store.register("central", "key-9")
    assert store.device("central") is None


def test_centrals_database_is_private(tmp_path):
    store = CentralStore(tmp_path / "central.db")
    store.register("shop-1", "key-1")
    store.add_events("shop-1", 1, batch(1))
    try:
        for name in ("central.db", "central.db-wal"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        store.close()


def status(state="online", *, session=1, connection=1, sent_at=1000.0, **health):
    return {"v": 1, "device": "shop-1", "state": state, "session": session, "connection": connection,
            "sent_at": sent_at, **health}


def test_the_latest_status_stands_and_a_stale_retained_one_changes_nothing(store):
    assert store.status("shop-1") is None
    store.record_status("shop-1", status(sent_at=1000.0, backlog=3), received_at=1001.0, live=True)
    store.record_status("shop-1", status("offline", sent_at=990.0), received_at=1100.0, live=True)  # the will
    assert store.status("shop-1").state == "offline"
    store.record_status("shop-1", status(connection=2, sent_at=1200.0, backlog=0), received_at=1200.5, live=True)
    # The broker's retained copy of an older status, delivered again when central subscribes:
    store.record_status("shop-1", status("offline", sent_at=990.0), received_at=1300.0, live=False)
    held = store.status("shop-1")
    assert (held.state, held.health, held.received_at) == ("online", {"backlog": 0}, 1200.5)


def test_only_a_live_online_status_measures_the_clock(store):
    store.record_status("shop-1", status(sent_at=5000.0), received_at=1000.0, live=False)  # retained: sent long ago
    assert store.status("shop-1").clock_offset is None
    store.record_status("shop-1", status(sent_at=8200.0), received_at=1000.0, live=True)
    assert store.status("shop-1").clock_offset == 7200.0
    store.record_status("shop-1", status("offline", sent_at=8100.0), received_at=1500.0, live=True)
    assert store.status("shop-1").clock_offset == 7200.0  # a will says nothing of the clock now


def _at(day: str, hour: int) -> float:
    return time.mktime(time.strptime(f"{day} {hour:02d}:00:00", "%Y-%m-%d %H:%M:%S"))


def _sale(seq: int, scanned: float) -> dict:
    return {"seq": seq, "kind": "sale", "body": {"code": "6901028075831", "scanned_at": rfc3339(scanned)}}


def test_a_day_is_uploaded_when_the_box_reported_and_none_of_its_sales_came_late(store):
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = 'shop-1'", [_at("2026-11-20", 9)])
    # 21st: reported, its sale in a minute. 22nd: reported, a sale two hours late. 23rd: silent.
    # 24th: reported, no sales (a quiet day is no failure). The box's clock is right.
    for day in ("2026-11-21", "2026-11-22", "2026-11-24"):
        store.record_status("shop-1", status(backlog=0, sent_at=_at(day, 10)), received_at=_at(day, 10), live=True)
    store.record_status("shop-1", status("offline"), received_at=_at("2026-11-23", 10), live=True)  # no report
    store.add_events("shop-1", 1, [_sale(1, _at("2026-11-21", 11)), _sale(2, _at("2026-11-22", 11))])
    store.conn.execute("UPDATE events SET received_at = ? WHERE seq = 1", [_at("2026-11-21", 11) + 60])
    store.conn.execute("UPDATE events SET received_at = ? WHERE seq = 2", [_at("2026-11-22", 13)])
    days = store.upload_days("shop-1", "2026-11-19", "2026-11-24", deadline=3600)
    assert [(d.day, d.uploaded) for d in days] == [  # from the day it was registered
        ("2026-11-20", False), ("2026-11-21", True), ("2026-11-22", False), ("2026-11-23", False), ("2026-11-24", True)]
    assert (days[2].sales, days[2].late) == (1, 1)
    store.revoke("shop-1")
    store.conn.execute("UPDATE devices SET revoked_at = ? WHERE device_id = 'shop-1'", [_at("2026-11-22", 18)])
    assert [d.day for d in store.upload_days("shop-1", "2026-11-19", "2026-11-24", deadline=3600)][-1] == "2026-11-22"


def test_statuses_that_waited_at_the_broker_while_central_was_away_report_the_days_the_box_sent_them(store):
    """Central away from Friday evening to Monday morning: the box's statuses of the weekend, queued at the broker,
    come in on Monday. Filed under Monday, they failed Saturday and Sunday for every box that was there."""
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = 'shop-1'", [_at("2026-11-20", 9)])
    # The box's clock is an hour ahead, as its last status before central went away measured.
    store.record_status("shop-1", status(backlog=0, sent_at=_at("2026-11-20", 19)), received_at=_at("2026-11-20", 18),
                        live=True)
    # Queued: each is the box's day, less the hour (00:30 on Sunday by the box is Saturday 23:30).
    for said in (_at("2026-11-21", 12), _at("2026-11-22", 0) + 1800, _at("2026-11-22", 12)):
        store.record_status("shop-1", status(backlog=0, sent_at=said), received_at=_at("2026-11-23", 8) + 1,
                            live=True, clocked=False)
    store.record_status("shop-1", status(backlog=0, sent_at=_at("2026-11-23", 9)), received_at=_at("2026-11-23", 8) + 90,
                        live=True)
    days = store.upload_days("shop-1", "2026-11-20", "2026-11-23", deadline=3600)
    assert [(d.day, d.reports) for d in days] == [("2026-11-20", 1), ("2026-11-21", 2), ("2026-11-22", 1),
                                                  ("2026-11-23", 1)]
    # None is filed after it was received, whatever the box's clock said.
    store.record_status("shop-1", status(backlog=0, sent_at=_at("2026-11-30", 12)), received_at=_at("2026-11-24", 8),
                        live=True, clocked=False)
    assert [(d.day, d.reports) for d in store.upload_days("shop-1", "2026-11-24", "2026-11-24", deadline=3600)] == [
        ("2026-11-24", 1)]
    # Nor before central's queue could have held it: the box's clock set back to 1970 since it was measured.
    store.record_status("shop-1", status(backlog=0, sent_at=3600.0), received_at=_at("2026-11-25", 8),
                        live=True, clocked=False, queued_at_most=86400)
    assert [(d.day, d.reports) for d in store.upload_days("shop-1", "2026-11-24", "2026-11-25", deadline=3600)] == [
        ("2026-11-24", 2), ("2026-11-25", 0)]
    # A box whose clock central never measured, queued: the day central took it in, not its clock's 1970.
    store.register("shop-2", "key-2")
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = 'shop-2'", [_at("2026-11-20", 9)])
    store.record_status("shop-2", {**status(backlog=0, sent_at=3600.0), "device": "shop-2"},
                        received_at=_at("2026-11-23", 8) + 1, live=True, clocked=False)
    assert [(d.day, d.reports) for d in store.upload_days("shop-2", "2026-11-23", "2026-11-23", deadline=3600)] == [
        ("2026-11-23", 1)]


def test_a_day_on_which_the_box_held_events_unacknowledged_past_the_deadline_is_not_uploaded(store):
    """A box whose batches central refuses reports live every day, and no sale of it ever arrives late: it
    arrives never. Its statuses show what it holds: a backlog seen at 10:00 and still unacknowledged at 11:30
    fails the day against an hour's deadline; one that drains by the next status is a box at work."""
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = 'shop-1'", [_at("2026-11-20", 9)])

    def report(day: str, hour: float, last: int, acked: int, **kind) -> None:
        store.record_status("shop-1", status(last_seq=last, acked_seq=acked, backlog=last - acked, **kind),
                            received_at=_at(day, 0) + hour * 3600, live=kind.pop("live", True))

    report("2026-11-21", 10, 40, 38)  # two in flight, acknowledged by the next status
    report("2026-11-21", 11, 45, 45)
    report("2026-11-22", 10, 60, 45)  # held back from here on (a refused batch)
    report("2026-11-22", 10.5, 64, 45)
    report("2026-11-22", 11.5, 70, 45)  # 90 minutes, past the deadline
    report("2026-11-23", 9, 70, 59)  # still short of seq 60, seen held at 10:00 the day before
    report("2026-11-24", 10, 80, 70)  # the 60 delivered: the mark starts again at 80, 10:00
    report("2026-11-24", 10.75, 80, 70)  # 45 minutes: within the hour
    report("2026-11-25", 10, 5, 0)  # another journal's seqs (restored): the old mark says nothing of them
    report("2026-11-25", 10.5, 5, 5)
    days = store.upload_days("shop-1", "2026-11-21", "2026-11-25", deadline=3600)
    assert [(d.day, d.held_back, d.uploaded) for d in days] == [
        ("2026-11-21", False, True), ("2026-11-22", True, False), ("2026-11-23", True, False),
        ("2026-11-24", False, True), ("2026-11-25", False, True)]
    # The longest wait of each day is kept, whatever the deadline asked later: 23 hours by 09:00 on the 23rd.
    assert [d.held_back for d in store.upload_days("shop-1", "2026-11-22", "2026-11-24", deadline=22 * 3600)] == [
        False, True, False]


SKEWS = pytest.mark.parametrize("skew", [-3 * 3600.0, 24 * 3600.0], ids=["clock-3h-slow", "clock-a-day-fast"])


def _upload_week(store, skew: float, *, batch_time: bool) -> list[tuple[str, int, int, bool]]:
    """A box whose clock is ``skew`` off reports live on the 21st to the 23rd. A sale at 01:00 on the 22nd
    reaches central within seconds; one at 10:00 the same day, the box offline, 20 hours later. Its batches
    carry their sending time by its clock (``batch_time``), or none (a box of an earlier sort)."""
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = 'shop-1'", [_at("2026-11-20", 9)])
    for day in ("2026-11-21", "2026-11-22", "2026-11-23"):
        store.record_status("shop-1", status(sent_at=_at(day, 9) + skew), received_at=_at(day, 9), live=True)
    for seq, scanned, received in ((1, _at("2026-11-22", 1), _at("2026-11-22", 1) + 2),
                                   (2, _at("2026-11-22", 10), _at("2026-11-23", 6))):
        sent = {"sent_at": received - 1 + skew} if batch_time else {}
        store.add_events("shop-1", 1, [_sale(seq, scanned + skew)], **sent)
        store.conn.execute("UPDATE events SET received_at = ? WHERE seq = ?", [received, seq])
    return [(d.day, d.sales, d.late, d.uploaded)
            for d in store.upload_days("shop-1", "2026-11-21", "2026-11-23", deadline=3600)]


@SKEWS
def test_a_sales_lateness_and_day_are_its_boxs_own_time_from_the_scan_to_sending_it_whatever_its_clock(store, skew):
    """Judged by the box's clock alone, a box 3 hours slow whose every sale reached central in seconds was late on
    every day (and its sale of 01:00 counted the day before); a box a day fast had a sale 20 hours late counted
    on time, the next day. A batch says when the box sent it, by the same clock as its scans: the time between
    the two is the box's own, clock-free, even once its clock is set right (its statuses then say it is)."""
    store.record_status("shop-1", status(connection=2, sent_at=_at("2026-11-23", 12)), received_at=_at("2026-11-23", 12),
                        live=True)  # set right by the time the sales are judged
    assert _upload_week(store, skew, batch_time=True) == [
        ("2026-11-21", 0, 0, True), ("2026-11-22", 2, 1, False), ("2026-11-23", 0, 0, True)]


@SKEWS
def test_a_sale_whose_batch_says_no_sending_time_is_placed_by_its_boxs_clock_offset_as_its_statuses_measure(
        store, skew):
    assert _upload_week(store, skew, batch_time=False) == [
        ("2026-11-21", 0, 0, True), ("2026-11-22", 2, 1, False), ("2026-11-23", 0, 0, True)]


def test_centrals_own_absence_is_no_wait_of_the_box_it_found_with_a_sale_in_flight(store):
    """Central away from Friday 18:00 to Monday 08:00, its last status before showing one sale in flight: the
    box's weekend statuses waited in central's queue at the broker, and nothing could be acknowledged meanwhile.
    Monday was failed as held back by central's whole absence; the box had all acknowledged within a minute."""
    store.conn.execute("UPDATE devices SET registered_at = ?", [_at("2026-11-19", 9)])
    store.record_status("shop-1", status(sent_at=_at("2026-11-20", 17), last_seq=40, acked_seq=40),
                        received_at=_at("2026-11-20", 17), live=True)
    store.record_status("shop-1", status(sent_at=_at("2026-11-20", 18), last_seq=41, acked_seq=40),
                        received_at=_at("2026-11-20", 18), live=True)
    back = _at("2026-11-23", 8)
    for n, day in enumerate(("2026-11-21", "2026-11-22", "2026-11-23")):
        store.record_status("shop-1", status(sent_at=_at(day, 7), last_seq=50 + n, acked_seq=40),
                            received_at=back + 1 + n, live=True, clocked=False)
    store.record_status("shop-1", status(sent_at=back + 60, last_seq=52, acked_seq=52), received_at=back + 60, live=True)
    monday = [d for d in store.upload_days("shop-1", "2026-11-23", "2026-11-23", deadline=3600)][0]
    assert (monday.reports, monday.held_back, monday.uploaded) == (2, False, True)


def test_a_backlogs_wait_counts_the_time_the_box_was_connected_and_a_retained_status_moves_nothing(store):
    """Seen at closing and delivered in the morning's first minute, a backlog failed the next day too: the night,
    when the box was off, counted as waiting. Off-time is judged by the sales' lateness; the connected time of
    a backlog central refuses through every reconnection adds up."""
    store.conn.execute("UPDATE devices SET registered_at = 0")
    store.record_status("shop-1", status(last_seq=9, acked_seq=2, sent_at=1000.0), received_at=1000.0, live=True)
    store.record_status("shop-1", status("offline", sent_at=1001.0), received_at=2000.0, live=True)  # the will
    # The broker's retained copy of an older online status, once acknowledged as far as 9, changes nothing:
    store.record_status("shop-1", status(last_seq=9, acked_seq=9, sent_at=500.0), received_at=3000.0, live=False)

    def waited_past(deadline: float, at: float) -> bool:
        day = time.strftime("%Y-%m-%d", time.localtime(at))
        return [d for d in store.upload_days("shop-1", day, day, deadline=deadline) if d.day == day][0].held_back

    store.record_status("shop-1", status(connection=2, last_seq=9, acked_seq=2, sent_at=9000.0), received_at=9000.0,
                        live=True)
    assert waited_past(999.0, 9000.0) and not waited_past(1000.0, 9000.0)  # 1,000 s connected, 7,000 s away
    store.record_status("shop-1", status(connection=2, last_seq=9, acked_seq=2, sent_at=9500.0), received_at=9500.0,
                        live=True)
    assert waited_past(1499.0, 9500.0) and not waited_past(1500.0, 9500.0)
    # A reconnection with no will between (the link dropped and came back at once): all of it counts.
    store.record_status("shop-1", status(connection=3, last_seq=9, acked_seq=2, sent_at=9600.0), received_at=9600.0,
                        live=True)
    assert waited_past(1599.0, 9600.0) and not waited_past(1600.0, 9600.0)


def test_the_documents_in_force_are_the_newest_unexpired_version_of_each_stream_for_each_scope(store):
    """What the broker should hold, retained: central publishes again whatever of it the broker lost."""
    def issue(name: str, scope: dict, expires_at: float, kind: str = "price_list") -> int:
        return store.issue_document(lambda version: (kind, json.dumps(scope), "ops-1", 1000.0, expires_at,
                                                     f"token-{name}-{version}".encode()), name)[0]

    issue("price_list", {"region": "honghe"}, 9000.0)
    issue("price_list", {"region": "honghe"}, 9000.0)
    issue("price_list", {"region": "kunming"}, 9000.0)
    issue("price_list", {"device": "shop-1"}, 9000.0)
    issue("order/W48-1", {"device": "shop-1"}, 4000.0, kind="order")  # expired by 5000: boxes refuse it
    issue("settings", {"region": "honghe"}, 9000.0, kind="settings")
    issue("revocation", {"device": "shop-2"}, 4000.0, kind="revocation")  # never lapses: a box takes it when it comes
    assert store.documents_in_force(5000.0) == [
        ("price_list", '{"device": "shop-1"}', 4, b"token-price_list-4", 9000.0),
        ("price_list", '{"region": "honghe"}', 2, b"token-price_list-2", 9000.0),
        ("price_list", '{"region": "kunming"}', 3, b"token-price_list-3", 9000.0),
        ("revocation", '{"device": "shop-2"}', 1, b"token-revocation-1", None),
        ("settings", '{"region": "honghe"}', 1, b"token-settings-1", 9000.0)]
    assert store.documents_in_force(9000.0) == [("revocation", '{"device": "shop-2"}', 1, b"token-revocation-1", None)]


def test_two_centrals_adding_one_devices_batches_at_once_hold_each_event_once(database):
    """Two ingest instances (two connections) take interleaved batches of one device at once: one the
    odd seqs, the other the even ones, each completing the other's run, and some batches twice (sent
    again after a lost acknowledgement). Neither may miss what the other just added: the last to
    finish must acknowledge everything."""
    first, second = CentralStore(database), CentralStore(database)
    first.register("shop-1", "key-1")
    batches = [batch(seq) for seq in range(1, 301)]
    work = {first: batches[1:60:9] + batches[0::2], second: batches[0:60:9] + batches[1::2]}
    added, acks, errors = {first: 0, second: 0}, [], []
    start = threading.Barrier(2)

    def send(store):
        try:
            start.wait(10)
            for each in work[store]:
                new, acked = store.add_events("shop-1", 1, each)
                added[store] += new
                acks.append(acked)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=send, args=(store,)) for store in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        assert [e["seq"] for e in first.events()] == list(range(1, 301))
        assert added[first] + added[second] == 300  # each event counted new once, by one instance
        assert first.device("shop-1").acked_seq == second.device("shop-1").acked_seq == 300
        assert max(acks) == 300
    finally:
        first.close()
        second.close()


def test_two_centrals_opening_a_new_database_at_once_agree_on_one_schema(database):
    stores, errors = [], []
    start = threading.Barrier(3)

    def open_it():
        try:
            start.wait(10)
            stores.append(CentralStore(database))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        stores[0].register("shop-1", "key-1")
        assert stores[1].device("shop-1") == Device("shop-1", "key-1", 0)
        assert stores[2].conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    finally:
        for store in stores:
            store.close()


def test_a_sqlite_database_from_before_migrations_is_taken_as_it_stands(tmp_path):
    """A file central kept before its schema had revisions: its rows stay, the columns added since are
    added, and it is stamped with the first revision rather than created again."""
    path = tmp_path / "central.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, shop TEXT,
                              registered_at REAL, acked_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE events (device_id TEXT REFERENCES devices(device_id), seq INTEGER, kind TEXT, session INTEGER,
                             received_at REAL, body TEXT, PRIMARY KEY (device_id, seq));
        INSERT INTO devices VALUES ('shop-1', 'key-1', 'Mengzi No. 3', 1.0, 1);
        INSERT INTO events VALUES ('shop-1', 1, 'sale', 1, 2.0, '{"n": 1}');
    """)
    conn.close()
    store = CentralStore(path)
    try:
        assert store.device("shop-1") == Device("shop-1", "key-1", 1, "Mengzi No. 3")
        assert store.add_events("shop-1", 1, batch(1, 2)) == (1, 2)
        assert store.waiting_devices() == []
        assert store.conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    finally:
        store.close()


def test_a_central_adding_a_devices_events_waits_for_another_doing_so_and_then_sees_them(database):
    """The race the previous test can only hope to hit, made certain: one instance's transaction adding
    seq 1 stays open (held open here through the store's own transaction) while another adds seq 2.
    The second must wait, then acknowledge both; it may not acknowledge from what it saw before."""
    first, second = CentralStore(database), CentralStore(database)
    first.register("shop-1", "key-1")
    held, release, result = threading.Event(), threading.Event(), {}

    def hold_open():
        with first._transaction():
            result["first"] = first.add_events("shop-1", 1, batch(1))
            held.set()
            release.wait(10)

    def add_the_next():
        result["second"] = second.add_events("shop-1", 1, batch(2))

    holder = threading.Thread(target=hold_open)
    holder.start()
    try:
        assert held.wait(10)
        adder = threading.Thread(target=add_the_next)
        adder.start()
        adder.join(0.5)
        assert adder.is_alive(), "the second instance did not wait for the first's transaction"
    finally:
        release.set()
        holder.join(10)
    adder.join(10)
    try:
        assert result == {"first": (1, 1), "second": (1, 2)}
        assert first.device("shop-1").acked_seq == 2
    finally:
        first.close()
        second.close()


def test_a_status_that_may_have_waited_in_centrals_queue_says_nothing_of_the_clock(store):
    store.record_status("shop-1", status(sent_at=1000.0), received_at=5000.0, live=True, clocked=False)
    held = store.status("shop-1")
    assert (held.state, held.clock_offset) == ("online", None)  # kept as the latest, clock unmeasured
    store.record_status("shop-1", status(sent_at=5001.0), received_at=5000.0, live=True)
    assert store.status("shop-1").clock_offset == 1.0


def test_one_devices_events_never_move_anothers_acknowledgement_nor_count_as_its_own(store):
    store.register("shop-2", "key-2")
    assert store.add_events("shop-2", 1, batch(1, 2, 3, 4, 5)) == (5, 5)
    assert store.add_events("shop-1", 1, batch(2, 3)) == (2, 0)  # shop-1's seq 1 is still on its way
    assert store.add_events("shop-1", 1, batch(1)) == (1, 3)
    assert store.add_events("shop-2", 1, batch(1, 2)) == (0, 5)  # the same seqs, another device: held
    assert (store.device("shop-1").acked_seq, store.device("shop-2").acked_seq) == (3, 5)


def test_events_are_read_back_with_their_device_kind_and_session_in_device_then_seq_order(store):
    store.register("shop-0", "key-0")
    store.add_events("shop-1", 3, batch(1) + [{"seq": 2, "kind": "misread", "body": {"code": "1"}}])
    store.add_events("shop-0", 7, batch(1))
    assert list(store.events()) == [
        {"device": "shop-0", "seq": 1, "kind": "sale", "session": 7, "n": 1},
        {"device": "shop-1", "seq": 1, "kind": "sale", "session": 3, "n": 1},
        {"device": "shop-1", "seq": 2, "kind": "misread", "session": 3, "code": "1"},
    ]
    assert [(e["device"], e["seq"]) for e in store.events(kind="misread")] == [("shop-1", 2)]
    assert [(e["device"], e["seq"]) for e in store.events(kind="sale")] == [("shop-0", 1), ("shop-1", 1)]

    # A body field named as one of the event's own (a document event's kind of document, a damaged event's
    # kind) goes beside it, never over it.
    store.add_events("shop-0", 7, [{"seq": 2, "kind": "document", "body": {"name": "price_list", "kind": "price_list"}},
                                   {"seq": 3, "kind": "damaged", "body": {"kind": "sale", "seq": 9, "reason": "x"}}])
    assert list(store.events(kind="document")) == [{"device": "shop-0", "seq": 2, "kind": "document", "session": 7,
                                                    "name": "price_list", "body_kind": "price_list"}]
    assert [(e["kind"], e["body_kind"], e["body_seq"], e["seq"]) for e in store.events(kind="damaged")] == [
        ("damaged", "sale", 9, 3)]


def test_a_status_keeps_its_session_and_time_and_one_received_twice_stands_once(store):
    assert store.record_status("shop-1", status(session=4, sent_at=1000.0), received_at=1001.0, live=True)
    held = store.status("shop-1")
    assert (held.session, held.sent_at, held.received_at) == (4, 1000.0, 1001.0)
    # The same status again (the broker delivering it twice): still the latest, taken as received now.
    assert store.record_status("shop-1", status(session=4, sent_at=1000.0), received_at=1005.0, live=True)
    assert store.status("shop-1").received_at == 1005.0
    assert not store.record_status("shop-1", status(session=3, sent_at=2000.0), received_at=1006.0, live=True)
    assert store.status("shop-1").session == 4


def test_shops_are_kept_whole_and_changed_only_on_purpose(store):
    assert store.shop("530100000001") is None
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_shop(Shop("530100000002", "Gejiu No. 1", "honghe"))
    assert store.shop("530100000001") == Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True)
    assert store.shop("530100000002") == Shop("530100000002", "Gejiu No. 1", "honghe", monitoring=False)
    with pytest.raises(RegistryError, match="shop 530100000001 is already registered; pass --replace"):
        store.add_shop(Shop("530100000001", "Mengzi No. 4", "kunming"))
    assert store.shop("530100000001").name == "Mengzi No. 3"
    store.add_shop(Shop("530100000001", "Mengzi No. 4", "kunming"), replace=True)  # replaced by a similar shop
    assert store.shop("530100000001") == Shop("530100000001", "Mengzi No. 4", "kunming", monitoring=False)
    assert store.shop("530100000002").name == "Gejiu No. 1"


def test_a_device_is_read_back_with_its_region_and_revocation_and_listed_in_order(store):
    store.register("shop-0", "key-0", shop="530100000001", region="honghe")
    assert store.device("shop-0") == Device("shop-0", "key-0", 0, "530100000001", "honghe", None)
    assert store.device_ids() == ["shop-0", "shop-1"]
    store.revoke("shop-0")
    revoked_at = store.device("shop-0").revoked_at
    assert revoked_at is not None
    store.revoke("shop-0")  # again: the first revocation's time stands
    assert store.device("shop-0").revoked_at == revoked_at
    assert store.device("shop-1").revoked_at is None
    with pytest.raises(RegistryError, match="device shop-0 was revoked; register the box under a new id"):
        store.register("shop-0", "key-0", replace=True)


def test_events_of_a_device_never_registered_are_refused(store):
    with pytest.raises(RegistryError, match="device shop-9 is not registered"):
        store.add_events("shop-9", 1, batch(1))
    assert list(store.events()) == []


def test_boxes_waiting_for_activation_are_listed_newest_first_until_registered(store):
    assert store.waiting_devices(5000.0) == []
    store.waiting("cb-a", "key-a", "1.0.0", 1000.0)
    store.waiting("cb-b", "key-b", "1.0.1", 2000.0)
    store.waiting("shop-1", "key-1", "1.0.0", 3000.0)  # registered already: not waiting
    assert store.waiting_devices(5000.0) == [
        {"device": "cb-b", "public_key": "key-b", "agent_version": "1.0.1", "seen_at": 2000.0},
        {"device": "cb-a", "public_key": "key-a", "agent_version": "1.0.0", "seen_at": 1000.0}]
    store.waiting("cb-a", "key-a2", "1.1.0", 4000.0)  # said hello again, after an update and a new key
    assert store.waiting_devices(5000.0)[0] == {"device": "cb-a", "public_key": "key-a2", "agent_version": "1.1.0",
                                          "seen_at": 4000.0}
    assert len(store.waiting_devices(5000.0)) == 2


def test_a_boxs_clock_set_back_on_a_connection_leaves_its_later_statuses_the_latest(store):
    """A box that started an hour fast and was put right by NTP signs its later statuses with earlier times: they
    were taken as older than the first and dropped, the backlog and the clock flag kept from before."""
    store.record_status("shop-1", status(sent_at=1000.0 + 3600, backlog=9), received_at=1000.0, live=True)
    assert store.status("shop-1").clock_offset == 3600.0
    assert store.record_status("shop-1", status(sent_at=1060.0, backlog=0), received_at=1060.0, live=True)
    held = store.status("shop-1")
    assert (held.health, held.clock_offset) == ({"backlog": 0}, 0.0)
    # One live status received before the one held (two ingests sharing the load) does not take it back.
    assert not store.record_status("shop-1", status(sent_at=1059.0, backlog=5), received_at=1059.0, live=True)
    assert store.status("shop-1").health == {"backlog": 0}


def test_a_connections_will_outranks_its_online_statuses_whichever_arrives_first(store):
    """The will is signed when the connection opens, before every online status of it, yet says the last
    word on that connection: an online status of it arriving after the will changes nothing."""
    store.record_status("shop-1", status("offline", sent_at=900.0), received_at=1100.0, live=True)
    assert store.record_status("shop-1", status(sent_at=1000.0), received_at=1101.0, live=True) is False
    assert store.status("shop-1").state == "offline"


def test_each_live_online_status_counts_one_report_on_its_own_devices_day(store):
    store.register("shop-2", "key-2")
    for received_at in (_at("2026-11-21", 9), _at("2026-11-21", 15)):
        store.record_status("shop-1", status(), received_at=received_at, live=True)
    store.record_status("shop-1", status(), received_at=_at("2026-11-21", 16), live=False)  # retained: no report
    store.record_status("shop-2", status(), received_at=_at("2026-11-22", 9), live=True)  # another device's
    store.conn.execute("UPDATE devices SET registered_at = ?", [_at("2026-11-20", 9)])
    days = store.upload_days("shop-1", "2026-11-21", "2026-11-22", deadline=3600)
    assert [(d.day, d.reports) for d in days] == [("2026-11-21", 2), ("2026-11-22", 0)]


def test_an_upload_day_counts_its_own_devices_sales_from_the_first_to_the_last_day_asked(store):
    """Both ends of the range count; a sale exactly ``deadline`` after its scan is on time; a sale with no
    readable scan time counts on no day, and the sales after it still count; another device's sales are not
    this one's."""
    store.register("shop-2", "key-2")
    store.conn.execute("UPDATE devices SET registered_at = ?", [_at("2026-11-01", 9)])
    scanned = [_at("2026-11-20", 23), _at("2026-11-21", 11), _at("2026-11-22", 11), _at("2026-11-23", 11)]
    store.add_events("shop-1", 1, [{"seq": 1, "kind": "sale", "body": {"code": "6901028075831"}},  # no time
                                   *(_sale(seq, at) for seq, at in enumerate(scanned, start=2))])
    store.add_events("shop-2", 1, [_sale(1, _at("2026-11-21", 12))])
    # A second sale on the 21st, and a misread (it has a scan time too, but is no sale) that came a day late.
    store.add_events("shop-1", 1, [_sale(6, _at("2026-11-21", 12)),
                                   {"seq": 7, "kind": "misread", "body": {"code": "690102807583",
                                                                          "scanned_at": rfc3339(_at("2026-11-21", 13))}}])
    for seq, at in enumerate(scanned + [_at("2026-11-21", 12)], start=2):
        store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = ?", [at + 3600, seq])
    store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = 4", [scanned[2] + 3601])
    store.conn.execute("UPDATE events SET received_at = ? WHERE device_id = 'shop-1' AND seq = 7",
                       [_at("2026-11-22", 13)])
    days = store.upload_days("shop-1", "2026-11-21", "2026-11-22", deadline=3600)
    assert [(d.day, d.sales, d.late) for d in days] == [("2026-11-21", 2, 0), ("2026-11-22", 1, 1)]


def test_upload_days_start_on_the_day_a_device_was_registered_and_end_today(store):
    """The fixture registered the box just now: its days are today alone, over any period that holds it,
    even one running on past today (this week, asked on a Wednesday: the days to come are not failures)."""
    while True:  # read again if midnight came meanwhile (then the box was registered yesterday: read from today)
        today = time.strftime("%Y-%m-%d")
        days = store.upload_days("shop-1", today, today, deadline=3600)
        later = store.upload_days("shop-1", today, "2999-12-31", deadline=3600)
        whole = store.upload_days("shop-1", "2020-01-01", today, deadline=3600)
        if time.strftime("%Y-%m-%d") == today:
            break
    assert [d.day for d in whole][-1] == today and len(whole) <= 2  # from the day it was registered, not 2020
    assert [(d.day, d.reports, d.sales, d.late, d.uploaded) for d in days] == [(today, 0, 0, 0, False)]
    assert [d.day for d in later] == [today]
    assert store.upload_days("shop-9", "2020-01-01", today, deadline=3600) == []  # never registered


@pytest.fixture
def shop(store):
    """A shop, and an activation code for it that any box may use until second 5000."""
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_code("code-1", shop="530100000001", token="token-1", device=None, issued_at=1000.0, expires_at=5000.0)
    return Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True)


def test_a_code_activates_one_box_for_its_shop_once(store, shop):
    store.waiting("cb-a", "key-a", "1.0.0", 1500.0)
    assert [box["device"] for box in store.waiting_devices(2000.0)] == ["cb-a"]
    assert store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=2000.0) == shop
    assert store.device("cb-a") == Device("cb-a", "key-a", 0, "530100000001", "honghe", None)
    assert store.waiting_devices(2000.0) == []  # no longer waiting
    # The same box asking again with the same key (its answer was lost) gets the same answer, even later.
    assert store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=9000.0) == shop
    for device_id, key in (("cb-b", "key-b"), ("cb-a", "key-other")):
        with pytest.raises(ActivationRefused, match="^the code was already used by another box$"):
            store.activate("code-1", "token-1", device_id=device_id, public_key=key, now=2000.0)
    assert store.device("cb-b") is None
    assert store.device("cb-a").public_key == "key-a"


@pytest.mark.parametrize("code_id, token, now, reason", [
    ("code-9", "token-1", 2000.0, "^central never issued this code$"),
    ("code-1", "token-9", 2000.0, "^central never issued this code$"),  # an id with another token
    ("code-1", "token-1", 5000.1, "^the code has expired$"),
])
def test_a_code_never_issued_or_expired_activates_nothing(store, shop, code_id, token, now, reason):
    with pytest.raises(ActivationRefused, match=reason):
        store.activate(code_id, token, device_id="cb-a", public_key="key-a", now=now)
    assert store.device("cb-a") is None
    # Refused, the code is still unused: the box it was meant for can use it in time.
    assert store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=5000.0).licence == shop.licence


def test_a_code_issued_for_one_waiting_box_activates_no_other(store, shop):
    store.add_code("code-2", shop=shop.licence, token="token-2", device="cb-a", issued_at=1000.0, expires_at=5000.0)
    with pytest.raises(ActivationRefused, match="^the code was issued for device cb-a$"):
        store.activate("code-2", "token-2", device_id="cb-b", public_key="key-b", now=2000.0)
    assert store.activate("code-2", "token-2", device_id="cb-a", public_key="key-a", now=2000.0) == shop


def test_the_codes_issued_are_listed_newest_first_with_who_used_each_and_when_never_their_tokens(store, shop):
    store.add_shop(Shop("530100000002", "Jianshui No. 2", "honghe", monitoring=False))
    store.add_code("code-2", shop=shop.licence, token="token-2", device="cb-b", issued_at=3000.0, expires_at=9000.0)
    store.add_code("code-3", shop="530100000002", token="token-3", device=None, issued_at=2000.0, expires_at=6000.0)
    store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=2500.0)
    store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=2600.0)  # asked again: first use kept
    assert store.codes() == [
        {"code": "code-2", "shop": shop.licence, "device": "cb-b", "issued_at": 3000.0, "expires_at": 9000.0,
         "used_by": None, "used_at": None, "withdrawn_at": None},
        {"code": "code-3", "shop": "530100000002", "device": None, "issued_at": 2000.0, "expires_at": 6000.0,
         "used_by": None, "used_at": None, "withdrawn_at": None},
        {"code": "code-1", "shop": shop.licence, "device": None, "issued_at": 1000.0, "expires_at": 5000.0,
         "used_by": "cb-a", "used_at": 2500.0, "withdrawn_at": None}]
    assert [code["code"] for code in store.codes(shop.licence)] == ["code-2", "code-1"]
    assert store.codes("530100000404") == []


def test_a_registered_box_is_not_activated_again_by_a_new_code(store, shop):
    store.register("cb-a", "key-a", shop="530100000002", region="kunming")
    with pytest.raises(ActivationRefused, match="^device cb-a is registered with another key$"):
        store.activate("code-1", "token-1", device_id="cb-a", public_key="key-new", now=2000.0)
    with pytest.raises(ActivationRefused, match="^device cb-a is already active for shop 530100000002$"):
        store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=2000.0)
    store.revoke("cb-a")
    with pytest.raises(ActivationRefused, match="^device cb-a was revoked; a revoked box is activated again only "):
        store.activate("code-1", "token-1", device_id="cb-a", public_key="key-a", now=2000.0)
    assert store.device("cb-a").shop == "530100000002"
    # The code was used by none of those: a new box takes it.
    assert store.activate("code-1", "token-1", device_id="cb-b", public_key="key-b", now=2000.0) == shop


def test_each_document_stream_is_numbered_on_its_own_from_one(store):
    def signer(kind, scope):
        return lambda version: (kind, scope, "ops-1", 100.0 * version, 200.0 * version, f"{kind}-{version}".encode())

    assert store.issue_document(signer("price_list", "region:honghe"), "price_list/honghe") == (1, b"price_list-1")
    assert store.issue_document(signer("price_list", "region:honghe"), "price_list/honghe") == (2, b"price_list-2")
    assert store.issue_document(signer("order", "device:cb-a"), "order/cb-a") == (1, b"order-1")
    rows = store.conn.execute("SELECT name, version, kind, scope, kid, issued_at, expires_at, token, published_at "
                              "FROM documents ORDER BY name, version").fetchall()
    assert [tuple(row) for row in rows] == [
        ("order/cb-a", 1, "order", "device:cb-a", "ops-1", 100.0, 200.0, b"order-1", None),
        ("price_list/honghe", 1, "price_list", "region:honghe", "ops-1", 100.0, 200.0, b"price_list-1", None),
        ("price_list/honghe", 2, "price_list", "region:honghe", "ops-1", 200.0, 400.0, b"price_list-2", None)]
    store.document_published("price_list/honghe", 1)
    published = dict(((name, version), at) for name, version, at in store.conn.execute(
        "SELECT name, version, published_at FROM documents").fetchall())
    assert published[("price_list/honghe", 1)] is not None
    assert published[("price_list/honghe", 2)] is None and published[("order/cb-a", 1)] is None


def test_a_document_that_fails_to_be_signed_takes_no_version(store):
    def broken(version):
        raise ValueError("no key")

    with pytest.raises(ValueError):
        store.issue_document(broken, "price_list/honghe")
    assert store.issue_document(lambda v: ("price_list", "all", "ops-1", 1.0, 2.0, b"t"), "price_list/honghe")[0] == 1


def test_the_documents_a_box_holds_are_the_version_it_applied_last_of_each_stream(store):
    """The one in force: the highest, but for a box moved to another region and back, which applies its
    region's version 2 again after the other region's 3 (central once said 3 while it sold at 2)."""
    store.register("shop-2", "key-2")
    applied = [{"name": "price_list/honghe", "version": 1}, {"name": "order/shop-1", "version": 4},
               {"name": "price_list/honghe", "version": 3}, {"name": "price_list/honghe", "version": 2}]
    store.add_events("shop-1", 1, [{"seq": seq, "kind": "document", "body": body}
                                   for seq, body in enumerate(applied, start=1)]
                     + [{"seq": 5, "kind": "sale", "body": {"name": "not-a-document", "version": 99}}]
                     # A box's event not as the protocol writes one: held to nothing (once, it stopped the fleet
                     # table for every box: a text compared with a number, a list as a name).
                     + [{"seq": 6, "kind": "document", "body": {"name": "price_list/honghe", "version": "4"}},
                        {"seq": 7, "kind": "document", "body": {"name": ["price_list/honghe"], "version": 5}},
                        {"seq": 8, "kind": "document", "body": {"name": "price_list/honghe", "version": True}},
                        {"seq": 9, "kind": "document", "body": {"name": "price_list/honghe"}}])
    store.add_events("shop-2", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list/honghe", "version": 7}}])
    assert store.documents_held("shop-1") == {"price_list/honghe": 2, "order/shop-1": 4}
    assert store.documents_held("shop-2") == {"price_list/honghe": 7}
    assert store.documents_held("shop-3") == {}


def _old_box_on_its_regions_list(store, journal: str, *later: dict) -> None:
    """cb-old and cb-new, boxes of one shop in honghe; cb-old applied honghe's price list version 3 (seq 1 and
    2) and recorded ``later`` after it, in ``journal``."""
    for device in ("cb-old", "cb-new"):
        store.register(device, f"key-{device}", shop="530100000001", region="honghe")
    store.add_events("cb-old", 1, [
        {"seq": 1, "kind": "price_list", "body": {"source": "operations"}},
        {"seq": 2, "kind": "document", "body": {"name": "price_list", "version": 3, "content_seq": 1,
                                                "scope": {"region": "honghe"}}}, *later], journal=journal)


def test_a_box_a_journal_was_restored_onto_holds_the_documents_and_price_list_its_journal_holds(store):
    """A replacement box restored from the old box's backup sells at the region's list the old one applied:
    central showed it holding none."""
    journal = "b" * 32
    order = {"name": "order/w48", "version": 2, "content_seq": 3, "scope": {"device": "cb-old"}}
    _old_box_on_its_regions_list(store, journal, {"seq": 3, "kind": "order", "body": {}},
                                 {"seq": 4, "kind": "document", "body": order})
    store.add_events("cb-new", 1, [{"seq": 5, "kind": "sale", "body": {}}], journal=journal, base_seq=4)
    # The old box's own order is not the new one's: it takes none of the old box's device documents.
    assert store.documents_held("cb-new") == {"price_list": 3}
    assert store.documents_held("cb-old") == {"price_list": 3, "order/w48": 2}
    assert store.prices_loaded_on_the_box("cb-new") is False
    store.add_events("cb-new", 1, [{"seq": 6, "kind": "price_list", "body": {"source": "week48.csv"}}])
    assert store.prices_loaded_on_the_box("cb-new") is True


def test_what_the_old_box_recorded_past_the_backup_a_box_was_restored_from_is_not_the_new_boxs(store):
    """The old box went on past yesterday's backup (a list loaded on it, an order closed): the box restored
    from the backup holds none of it, and the old box none of what the new one applied."""
    journal = "f" * 32
    _old_box_on_its_regions_list(store, journal, {"seq": 3, "kind": "sale", "body": {}},
                                 # past the backup, taken at 3
                                 {"seq": 4, "kind": "price_list", "body": {"source": "week48.csv"}},
                                 {"seq": 5, "kind": "receiving_closed", "body": {"order": "order/PO-7"}})
    store.add_events("cb-new", 1, [{"seq": 4, "kind": "sale", "body": {"n": 4}},
                                   {"seq": 5, "kind": "sale", "body": {"n": 5}},
                                   {"seq": 6, "kind": "price_list", "body": {"source": "operations"}},
                                   {"seq": 7, "kind": "document", "body": {"name": "price_list", "version": 4,
                                                                           "content_seq": 6,
                                                                           "scope": {"region": "honghe"}}}],
                     journal=journal, base_seq=3)
    assert store.prices_loaded_on_the_box("cb-new") is False
    assert store.order_closed("cb-new", "order/PO-7") is None
    assert store.order_closed("cb-old", "order/PO-7") == 5
    assert (store.documents_held("cb-new"), store.documents_held("cb-old")) == ({"price_list": 4}, {"price_list": 3})


def test_a_version_a_box_applied_that_central_never_issued_stops_the_push_until_operations_number_past_it(store):
    """Central's database restored from last month's backup had issued price_list up to version 2; the boxes of
    honghe applied 5. Numbered 3, the next push was refused by every box as a replay, week after week. Numbered
    past it silently, one box's false word (version 2^53 - 1) made every later push one no box takes."""
    from central.errors import RegistryError
    from provisioning.protocol import MAX_INTEGER

    def signer(version):
        return "price_list", "region:honghe", "ops-1", 1.0, 2.0, f"v{version}".encode()

    honghe = ("region", "honghe")
    store.issue_document(signer, "price_list", heeding=honghe)
    store.issue_document(signer, "price_list", heeding=honghe)
    for device in ("shop-2", "shop-3"):
        store.register(device, f"key-{device}", region="honghe")
    store.register("shop-4", "key-4", region="kunming")
    store.add_events("shop-2", 1, [
        {"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 4, "scope": {"region": "honghe"}}},
        {"seq": 2, "kind": "document", "body": {"name": "price_list", "version": 5}},  # a box of an earlier version
        # another stream's; another device's (the box whose journal this is); a sale that looks like one
        {"seq": 3, "kind": "document", "body": {"name": "price_list-east", "version": 90}},
        {"seq": 4, "kind": "document", "body": {"name": "price_list", "version": 70, "scope": {"device": "shop-9"}}},
        {"seq": 5, "kind": "sale", "body": {"name": "price_list", "version": 80}}])
    store.add_events("shop-3", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 3}},
                                   {"seq": 2, "kind": "document", "body": {"name": "price_list", "version": "9"}}])
    # kunming's box holds 60 of its own region's: no word about honghe's boxes
    store.add_events("shop-4", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 60,
                                                                           "scope": {"region": "kunming"}}}])
    with pytest.raises(RegistryError, match="device shop-2 says it applied price_list version 5, but this database "
                                            "issued price_list only up to version 2. .* push again with --past-boxes: "
                                            "the new version is numbered 6"):
        store.issue_document(signer, "price_list", heeding=honghe)
    assert store.issue_document(signer, "price_list", heeding=honghe, past_boxes=True) == (6, b"v6")
    assert store.issue_document(signer, "price_list", heeding=honghe)[0] == 7  # past the boxes now: as ever
    assert store.issue_document(signer, "price_list", heeding=("device", "shop-1"))[0] == 8  # shop-1 said nothing
    with pytest.raises(RegistryError, match="device shop-4 says it applied price_list version 60"):
        store.issue_document(signer, "price_list", heeding=("region", "kunming"))
    # A box's word past the highest version a box takes: never signed, whatever operations say.
    store.add_events("shop-3", 1, [{"seq": 3, "kind": "document", "body": {"name": "settings", "version": MAX_INTEGER}}])
    with pytest.raises(RegistryError, match="past the highest a box takes .*: device shop-3 says it applied version "
                                            f"{MAX_INTEGER}, a word no box could have had from central; revoke it"):
        store.issue_document(signer, "settings", heeding=honghe, past_boxes=True)
    # Revoked, its word no longer counts; nor is any box's heeded for a revocation (each box's own).
    store.revoke("shop-3")
    assert store.issue_document(signer, "settings", heeding=honghe)[0] == 1
    store.add_events("shop-2", 1, [{"seq": 6, "kind": "document", "body": {"name": "revocation", "version": 40}}])
    assert store.issue_document(signer, "revocation")[0] == 1


def revocation(issued_at: float) -> dict:
    """A revocation event's body as a box records it: the document's name, version and time of issue."""
    return {"reason": "shop closed", "grace_seconds": 600, "name": "revocation", "version": 1,
            "issued_at": rfc3339(issued_at)}


def test_a_revocation_is_delivered_once_central_holds_it_and_everything_before_it(store):
    assert store.revocation_delivered("shop-1") is False
    store.revoke("shop-1")
    store.add_events("shop-1", 1, [{"seq": 1, "kind": "sale", "body": {}}])
    assert store.revocation_delivered("shop-1") is False  # no revocation yet
    store.add_events("shop-1", 1, [{"seq": 3, "kind": "revocation", "body": revocation(time.time())}])
    assert store.revocation_delivered("shop-1") is False  # seq 2 is still on its way
    store.add_events("shop-1", 1, [{"seq": 2, "kind": "sale", "body": {}}])
    assert store.revocation_delivered("shop-1") is True
    store.register("shop-2", "key-2")
    store.add_events("shop-2", 1, batch(1, 2, 3, 4))
    assert store.revocation_delivered("shop-2") is False  # another device's revocation is not its own
    assert store.revocation_delivered("shop-9") is False


def test_a_revocation_is_the_devices_own_event_of_that_kind_issued_within_a_second_before_its_revocation(store):
    store.register("shop-2", "key-2")
    store.revoke("shop-2")
    store.conn.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ?", [1_000_000.0, "shop-2"])
    store.revoke("shop-1")
    store.add_events("shop-1", 1, [{"seq": 1, "kind": "revocation", "body": revocation(time.time())}])
    store.add_events("shop-2", 1, [{"seq": 1, "kind": "document", "body": revocation(1_000_000.0)}])
    assert store.revocation_delivered("shop-2") is False  # another device's revocation; a document of its own
    store.add_events("shop-2", 1, [{"seq": 2, "kind": "revocation", "body": revocation(999_998.5)}])
    assert store.revocation_delivered("shop-2") is False  # signed before it was revoked: another box's
    store.add_events("shop-2", 1, [{"seq": 3, "kind": "revocation", "body": revocation(999_999.0)}])
    assert store.revocation_delivered("shop-2") is True  # signed a second before the mark, to the millisecond


def test_a_revocation_recorded_for_the_box_a_journal_was_restored_from_is_not_the_new_boxs(store):
    """A backup taken after the old box recorded its revocation, restored onto its replacement: the new box sends
    that revocation as its own event. Once, when the new box was revoked in its turn, central took the old
    revocation for its own and cut the new box off the broker before it delivered what it held."""
    store.register("shop-2", "key-2")
    store.add_events("shop-2", 1, [{"seq": 1, "kind": "sale", "body": {}},
                                   {"seq": 2, "kind": "revocation", "body": revocation(time.time() - 86400)}])
    assert store.revocation_delivered("shop-2") is False  # not revoked: nothing of its own to deliver
    store.revoke("shop-2")
    assert store.revocation_delivered("shop-2") is False  # the old box's revocation, issued before this one's
    store.add_events("shop-2", 1, [{"seq": 3, "kind": "sale", "body": {}},
                                   {"seq": 4, "kind": "revocation", "body": revocation(time.time())}])
    assert store.revocation_delivered("shop-2") is True


def test_each_database_is_the_one_named(database):
    """The same tests run on both: a PostgreSQL URL opened as a SQLite file of that name would pass them all."""
    store = CentralStore(database)
    try:
        assert store.engine.dialect.name == ("postgresql" if isinstance(database, str) else "sqlite")
    finally:
        store.close()


def test_a_sqlite_url_names_the_file(tmp_path):
    store = CentralStore(f"sqlite:///{tmp_path}/by-url.db")
    try:
        store.register("shop-1", "key-1")
    finally:
        store.close()
    assert stat.S_IMODE((tmp_path / "by-url.db").stat().st_mode) == 0o600
    again = CentralStore(tmp_path / "by-url.db")
    try:
        assert again.device_ids() == ["shop-1"]
    finally:
        again.close()


def test_a_database_that_cannot_be_reached_is_named_without_its_password():
    with pytest.raises(RegistryError, match=r"^central's database postgresql\+psycopg://ops:\*\*\*@127\.0\.0\.1:1/central: ") as error:
        CentralStore("postgresql+psycopg://ops:s3cret@127.0.0.1:1/central")
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize("value, opened", [("central.db", Path("central.db")), ("/var/lib/c.db", Path("/var/lib/c.db")),
                                           ("postgresql+psycopg://ops@/central?host=/run/postgresql",
                                            "postgresql+psycopg://ops@/central?host=/run/postgresql")])
def test_the_db_option_is_a_url_when_it_holds_a_scheme_and_a_file_otherwise(value, opened):
    assert database_option(value) == opened and type(database_option(value)) is type(opened)


@pytest.mark.parametrize("url, message", [
    ("x://y", "central's database x://y: Can't load plugin"),
    ("postgresql+nosuch://ops:s3cret@/central", "central's database postgresql+nosuch://ops:***@/central: "),
    ("post gres://::", "central's database: the URL cannot be read"),
])
def test_a_database_url_no_driver_serves_is_named(url, message):
    with pytest.raises(RegistryError, match=re.escape(message)) as error:
        CentralStore(url)
    assert "s3cret" not in str(error.value)


def test_a_write_that_waits_past_the_busy_timeout_for_another_transactions_lock_fails_whole_and_says_so(
        store, database):
    """A peer central frozen mid-transaction, an operator's open session: on either database the wait ends after
    the busy timeout, with central's own error (the ingest logs it in one line, and the box sends again)."""
    from central.errors import Busy

    other = CentralStore(database)
    try:
        with other._transaction() as conn:
            other._lock(conn, "device", "shop-1")  # what add_events takes first, as another central would
            conn.execute(sa.text("UPDATE devices SET shop = 'held' WHERE device_id = 'shop-1'"))
            started = time.monotonic()
            with pytest.raises(Busy, match=r"another transaction held what this one needed for over 5 s; "
                                           r"nothing of it was written"):
                store.add_events("shop-1", 1, [{"seq": 1, "kind": "sale", "body": {}}])
            assert 4.5 < time.monotonic() - started < 30
    finally:
        other.close()
    assert store.device("shop-1").acked_seq == 0 and store.device("shop-1").shop == "held"
    store.add_events("shop-1", 1, [{"seq": 1, "kind": "sale", "body": {}}])  # once it is free
    assert store.device("shop-1").acked_seq == 1


def test_a_waiting_box_not_heard_for_a_day_leaves_the_list(store):
    """Anyone may say hello under a key of its own: the list of boxes waiting for activation grew for good, and
    operations looked for the real box among thousands. A box waiting says hello every minute."""
    from central.store import WAITING_KEPT

    store.waiting("cb-old", "key-old", "1.0.0", 1000.0)
    store.waiting("cb-fresh", "key-fresh", "1.0.0", 1000.0 + WAITING_KEPT - 60)
    store.waiting("cb-said-again", "key-said", "1.0.0", 1000.0 + WAITING_KEPT + 50, retained=True)
    # A retained copy is no sight of the box now: it removes nothing.
    assert {w["device"] for w in store.waiting_devices(1000.0 + WAITING_KEPT)} == {"cb-old", "cb-fresh", "cb-said-again"}
    store.waiting("cb-new", "key-new", "1.0.0", 1000.0 + WAITING_KEPT + 60)
    assert [w["device"] for w in store.waiting_devices(1000.0 + WAITING_KEPT + 60)] == [
        "cb-new", "cb-said-again", "cb-fresh"]
    # Listed by the clock, whether or not a hello came since: one not heard for a day is not.
    assert [w["device"] for w in store.waiting_devices(1000.0 + 2 * WAITING_KEPT)] == ["cb-new", "cb-said-again"]


def test_on_postgresql_the_lock_timeout_keeps_the_urls_own_options(postgresql_url):
    """Set as a startup option, the lock timeout took the place of the URL's `options` (a search_path): central
    made new, empty tables in `public` and saw no box registered."""
    setup = sa.create_engine(postgresql_url)
    with setup.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA central_app")
    setup.dispose()
    store = CentralStore(f"{postgresql_url}{'&' if '?' in postgresql_url else '?'}options=-csearch_path%3Dcentral_app")
    try:
        store.register("shop-1", "key-1")
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW search_path").scalar() == "central_app"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "5s"
            assert conn.exec_driver_sql("SELECT table_schema FROM information_schema.tables "
                                        "WHERE table_name = 'devices'").scalars().all() == ["central_app"]
    finally:
        store.close()
