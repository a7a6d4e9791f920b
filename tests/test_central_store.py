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
