"""counterbox-central's commands, run in this process: keys, exports and the per-device report."""

from __future__ import annotations

import json

import pytest

from central.cli import main as central_main
from central.store import CentralStore

from .harness import run_main


@pytest.fixture
def central(tmp_path):
    db, key = tmp_path / "central.db", tmp_path / "central.key"

    def command(*args):
        return run_main(central_main, ["--db", str(db), "--key", str(key), *args])

    return command, db


def sale(seq, code, price=None, currency="CNY"):
    return {"seq": seq, "kind": "sale", "body": {"code": code, "quantity": 1, "known": price is not None,
                                                 "unit_price": price, "currency": currency}}


def test_keygen_makes_one_key_and_pubkey_prints_it(central, tmp_path):
    command, _ = central
    made = command("keygen")
    assert made.returncode == 0
    public = json.loads(made.stdout)["central_key"]
    assert json.loads(command("pubkey").stdout) == {"central_key": public}
    again = command("keygen")
    assert again.returncode == 2 and "already holds a key" in again.stderr


def test_pubkey_without_a_key_says_how_to_make_one(central):
    command, _ = central
    result = command("pubkey")
    assert result.returncode == 2
    assert result.stderr.startswith("counterbox-central: error: signing key ") and "does not exist" in result.stderr


def test_export_prints_each_stored_event_of_a_kind_as_a_json_line(central):
    command, db = central
    store = CentralStore(db)
    store.register("shop-1", "k1")
    store.register("shop-2", "k2")
    store.add_events("shop-2", 3, [sale(1, "96385074", 150)])
    store.add_events("shop-1", 1, [sale(1, "6901028075831", 2300), {"seq": 2, "kind": "misread", "body": {"code": "1"}}])
    store.close()
    sales = [json.loads(line) for line in command("export").stdout.splitlines()]
    assert [(s["device"], s["seq"], s["kind"], s["session"], s["code"]) for s in sales] == [
        ("shop-1", 1, "sale", 1, "6901028075831"), ("shop-2", 1, "sale", 3, "96385074")]
    everything = [json.loads(line) for line in command("export", "--kind", "").stdout.splitlines()]
    assert [(e["device"], e["seq"], e["kind"]) for e in everything] == [
        ("shop-1", 1, "sale"), ("shop-1", 2, "misread"), ("shop-2", 1, "sale")]
    misreads = [json.loads(line) for line in command("export", "--kind", "misread").stdout.splitlines()]
    assert [(m["device"], m["seq"], m["code"]) for m in misreads] == [("shop-1", 2, "1")]


def test_the_report_totals_each_device_in_each_currency(central):
    command, db = central
    store = CentralStore(db)
    store.register("shop-1", "k1", shop="Mengzi No. 3")
    store.register("shop-2", "k2")
    store.add_events("shop-1", 1, [sale(1, "a", 2300), sale(2, "b", 150), sale(3, "c"),
                                   {"seq": 4, "kind": "misread", "body": {"code": "x"}},
                                   {"seq": 5, "kind": "misread", "body": {"code": "y"}}])
    store.add_events("shop-2", 1, [sale(1, "a", 2300, "HKD")])
    store.close()
    assert command("report").stdout.splitlines() == [
        "shop-1 (Mengzi No. 3): 3 sales (1 of unknown products), 2 misreads refused, total 24.50 CNY, "
        "acknowledged up to seq 5",
        "shop-2: 1 sale (0 of unknown products), 0 misreads refused, total 23.00 HKD, acknowledged up to seq 1",
    ]


def test_ingest_without_central_s_key_stops_with_a_clear_error(central):
    command, _ = central
    result = command("ingest", "--port", "1")
    assert result.returncode == 2 and "does not exist (create it with 'counterbox-central keygen')" in result.stderr
