"""Central's store: each (device, seq) once, and an acknowledgement only for what it holds from seq 1 on."""

from __future__ import annotations

import stat

import pytest

from central.errors import RegistryError, SeqConflict
from central.store import CentralStore, Device


@pytest.fixture
def store(tmp_path):
    s = CentralStore(tmp_path / "central.db")
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


def test_a_batch_received_again_adds_nothing(store):
    assert store.add_events("shop-1", 1, batch(1, 2)) == (2, 2)
    assert store.add_events("shop-1", 2, batch(1, 2)) == (0, 2)
    assert len(list(store.events())) == 2


def test_a_reused_seq_with_other_content_is_a_conflict_and_stores_nothing(store):
    store.add_events("shop-1", 1, batch(1))
    with pytest.raises(SeqConflict, match="seq 1 differs"):
        store.add_events("shop-1", 1, batch(1, 2, body={"other": True}))
    assert [e["seq"] for e in store.events()] == [1]


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


def test_centrals_database_is_private(tmp_path, store):
    store.add_events("shop-1", 1, batch(1))
    for name in ("central.db", "central.db-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


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
