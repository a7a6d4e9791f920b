"""counterbox-central's commands, run in this process: keys, exports and the per-device report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent import reports as box_reports
from central.cli import main as central_main
from drivers.barcode import classify
from provisioning.protocol import rfc3339
from central.store import CentralStore, Shop

from .harness import run_main


@pytest.fixture
def central(tmp_path):
    """A central with its database made (by its ingest's first start) and nothing in it yet."""
    db, key = tmp_path / "central.db", tmp_path / "central.key"
    CentralStore(db).close()

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


def test_keys_prints_every_registered_devices_key_and_centrals_as_a_jwk_set(central):
    command, db = central
    central_key = json.loads(command("keygen").stdout)["central_key"]
    assert json.loads(command("keys").stdout) == {"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": central_key, "kid": "central", "alg": "Ed25519", "use": "sig"}]}
    store = CentralStore(db)
    store.register("shop-2", "k2")
    store.register("shop-1", "k1")
    store.revoke("shop-2")
    store.close()
    listed = json.loads(command("keys").stdout)["keys"]
    # A revoked box's key stays: the batches it hands in after its revocation verify with it.
    assert [(key["kid"], key["x"]) for key in listed] == [("shop-1", "k1"), ("shop-2", "k2"), ("central", central_key)]
    assert all(key["alg"] == "Ed25519" and key["kty"] == "OKP" for key in listed)


@pytest.mark.parametrize("args", [
    ["keys"], ["export"], ["report"], ["report", "sales"], ["report", "stock"], ["report", "prices"],
    ["report", "counts"], ["report", "receipts"], ["uploads"], ["devices"], ["batches"]], ids=" ".join)
def test_a_command_that_reads_given_a_database_that_is_not_there_says_so_and_makes_none(central, tmp_path, args):
    command, _ = central
    command("keygen")
    mistyped = tmp_path / "centrl.db"
    result = run_main(central_main, ["--db", str(mistyped), "--key", str(tmp_path / "central.key"), *args])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"counterbox-central: error: central's database {mistyped} does not exist: give the one "
                             "central's ingest uses (--db, --central-db)\n")
    assert not mistyped.exists()


@pytest.mark.parametrize("args", [
    ["activation", "waiting"], ["activation", "codes"], ["activation", "issue", "--shop", "1"],
    ["revoke", "--device", "shop-1"], ["prices", "push", "--region", "north", "PRICES"]], ids=" ".join)
def test_an_operation_on_what_is_registered_given_a_database_that_is_not_there_says_so_and_makes_none(tmp_path, args):
    from central.ops import main as ops_main
    from provisioning.identity import create_key

    create_key(tmp_path / "ops.key")
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan,23.00\n")
    args = [str(tmp_path / "prices.csv") if arg == "PRICES" else arg for arg in args]
    db = tmp_path / "mistyped.db"
    signs = args[:2] not in (["activation", "waiting"], ["activation", "codes"])
    result = run_main(ops_main, [*args, "--central-db", str(db), *(["--ops-key", str(tmp_path / "ops.key")] * signs)])
    assert result.returncode == 2 and result.stdout == ""
    assert f"central's database {db} does not exist" in result.stderr
    assert not db.exists()


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


def test_the_reports_total_takes_returns_and_voids_off_as_the_box_does(central):
    command, db = central
    store = CentralStore(db)
    store.register("shop-1", "k1")
    void = {"voids": 2, "voided_kind": "sale", "day": "", "product": classify("b").key, "packs": 1, "amount": 150}
    store.add_events("shop-1", 1, [sale(1, "a", 2300), sale(2, "b", 150),
                                   {"seq": 3, "kind": "return", "body": {**sale(0, "a", 2300)["body"]}},
                                   {"seq": 4, "kind": "void", "body": void}, sale(5, "c", 1000)])
    store.close()
    assert command("report").stdout.splitlines() == [
        "shop-1: 3 sales (0 of unknown products), 0 misreads refused, total 10.00 CNY, acknowledged up to seq 5"]


@pytest.mark.parametrize("args, message", [
    # A group of two levels subscribed to another topic, and took nothing, silently; a wildcard one was refused
    # by paho inside its thread, the ingest connected and subscribed to nothing.
    (["--share", "a/b"], "argument --share: share group 'a/b' must be a name without '/', '+' or '#'"),
    (["--share", "a+"], "share group 'a+' must be"),
    (["--share", ""], "share group '' must be"),
    (["--port", "0"], "argument --port: '0' is not a port from 1 to 65535"),
    (["--port", "99999"], "'99999' is not a port"),
    (["--host", ""], "argument --host: '' is not a host name or address"),
    (["--client-id", "c" * 65536], "argument --client-id: the client id must be 1 to 65535 bytes of UTF-8"),
])
def test_ingest_given_a_broker_or_group_it_could_never_use_stops_at_once(central, args, message):
    command, _ = central
    result = command("ingest", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_ingest_without_central_s_key_stops_with_a_clear_error(central):
    command, _ = central
    result = command("ingest", "--port", "1")
    assert result.returncode == 2 and "does not exist (create it with 'counterbox-central keygen')" in result.stderr


def test_uploads_rates_each_device_against_its_shops_target_and_sums_up_each_region(central):
    import time

    from central.store import Shop

    command, db = central
    store = CentralStore(db)
    store.add_shop(Shop("530102100001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_shop(Shop("530102100002", "Gejiu corner", "honghe"))
    today = time.strftime("%Y-%m-%d")
    store.add_shop(Shop("530102100003", "Kaiyuan No. 5", "kunming"))
    for device, shop, region in (("cb-monitor", "530102100001", "honghe"), ("cb-general", "530102100002", "honghe"),
                                 ("cb-morning", "530102100003", "kunming")):
        store.register(device, "key", shop=shop, region=region)
        store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id = ?", [time.time() - 9 * 86400, device])
    online = {"v": 1, "state": "online", "session": 1, "connection": 1, "sent_at": 0.0, "backlog": 0}

    def days_ago(n: int) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(time.mktime(time.strptime(today, "%Y-%m-%d")) + 43200 - n * 86400))

    for back in range(10):  # cb-general reports every day; cb-monitor misses one day in ten
        noon = time.mktime(time.strptime(today, "%Y-%m-%d")) + 12 * 3600 - back * 86400
        store.record_status("cb-general", {**online, "device": "cb-general"}, received_at=noon, live=True)
        if back != 3:
            store.record_status("cb-monitor", {**online, "device": "cb-monitor"}, received_at=noon, live=True)
        if back != 0:  # not yet today: the day is under way, not missed
            store.record_status("cb-morning", {**online, "device": "cb-morning"}, received_at=noon, live=True)
    store.close()

    report = json.loads(command("uploads", "--days", "10", "--json").stdout)
    rows = {row["device"]: row for row in report["devices"]}
    assert (rows["cb-general"]["rate"], rows["cb-general"]["meets_target"]) == (1.0, True)
    assert (rows["cb-monitor"]["rate"], rows["cb-monitor"]["target"], rows["cb-monitor"]["meets_target"]) == (0.9, 0.9, True)
    assert [day["reported"] for day in rows["cb-monitor"]["failed_days"]] == [False]
    assert (rows["cb-morning"]["days"], rows["cb-morning"]["rate"], rows["cb-morning"]["failed_days"]) == (9, 1.0, [])
    assert report["regions"] == [{"region": "honghe", "devices": 2, "days": 20, "uploaded": 19, "below_target": 0,
                                  "rate": 0.95},
                                 {"region": "kunming", "devices": 1, "days": 9, "uploaded": 9, "below_target": 0,
                                  "rate": 1.0}]
    table = command("uploads", "--days", "10").stdout
    assert "cb-monitor" in table and "monitoring" in table and "90.0%" in table
    assert "region honghe: 2 devices, 95.0% of device-days uploaded, 0 below target" in table
    assert table.splitlines()[1:] == [
        "device                   shop             region     kind       days   ok    rate  target",
        "cb-general               530102100002     honghe     general      10   10  100.0%     85%",
        "cb-monitor               530102100001     honghe     monitoring   10    9   90.0%     90%",
        f"  failed: {days_ago(3)} no status (the box was off or cut off)",
        "cb-morning               530102100003     kunming    general       9    9  100.0%     85%",
        "region honghe: 2 devices, 95.0% of device-days uploaded, 0 below target",
        "region kunming: 1 devices, 100.0% of device-days uploaded, 0 below target"]
    week = command("uploads", "--days", "7", "--until", days_ago(3), "--deadline-minutes", "90").stdout.splitlines()
    assert week[0] == (f"upload success {days_ago(9)} to {days_ago(3)}: a day counts when the box reported that day, "
                       "none of its sales left the box more than 90 minutes after the scan, and nothing it held "
                       "waited longer unacknowledged")
    assert week[3].split() == ["cb-monitor", "530102100001", "honghe", "monitoring", "7", "6", "85.7%", "90%", "BELOW",
                               "TARGET"]
    assert week[6] == "region honghe: 2 devices, 92.9% of device-days uploaded, 1 below target"
    below = json.loads(command("uploads", "--days", "5", "--json").stdout)  # the missed day weighs more
    assert {row["device"]: row["meets_target"] for row in below["devices"]} == {"cb-general": True, "cb-monitor": False,
                                                                                "cb-morning": True}


@pytest.mark.parametrize("content", [b"", b"   \n", b"short\n", b"\xff\xfe password!!"])
def test_broker_init_takes_no_empty_short_or_unreadable_password_file(central, tmp_path, content):
    command, _ = central
    (tmp_path / "central.pass").write_bytes(content)
    result = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    assert result.returncode == 2 and f"password file {tmp_path / 'central.pass'}" in result.stderr
    assert not (tmp_path / "dynsec.json").exists()


def test_broker_init_with_a_consumer_password_makes_the_read_only_consumer_client(central, tmp_path):
    command, _ = central
    result = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"),
                     "--consumer-password-file", str(tmp_path / "consumer.pass"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["consumer"] == "counterbox-consumer"
    assert (tmp_path / "consumer.pass").stat().st_mode & 0o777 == 0o600
    plugin = json.loads((tmp_path / "dynsec.json").read_text())
    assert {c["username"]: c["roles"] for c in plugin["clients"]}["counterbox-consumer"] == [{"rolename": "consumer"}]
    consumer = {r["rolename"]: r["acls"] for r in plugin["roles"]}["consumer"]
    assert not any(acl["acltype"] == "publishClientSend" for acl in consumer)  # it reads; it never sends


def test_broker_init_keeps_a_password_file_it_finds(central, tmp_path):
    command, _ = central
    (tmp_path / "central.pass").write_text("a long enough password\n")
    result = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "central.pass").read_text() == "a long enough password\n"
    assert len((tmp_path / "ops.pass").read_text().strip()) >= 24  # made, as none was there
    # The plugin's file holds every client's password hash: its owner's alone, like the passwords.
    assert (tmp_path / "dynsec.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ops.pass").stat().st_mode & 0o777 == 0o600
    clients = {c["username"]: c["roles"] for c in json.loads((tmp_path / "dynsec.json").read_text())["clients"]}
    assert clients == {"counterbox-central": [{"rolename": "central"}], "counterbox-ops": [{"rolename": "operations"}]}
    again = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                    str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    assert again.returncode != 0 and "exists: the broker's access control is set up already" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--until", "2026-02-30"], "argument --until: '2026-02-30' is not a date like 2026-11-29"),
    (["--until", "0001-01-01"], "argument --until: '0001-01-01' is not a day of the years 1970 to 9998"),
    (["--days", "0"], "argument --days: '0' is not a number of days from 1 to 3660"),
    (["--days", "999999999999999999999"], "argument --days: '999999999999999999999' is not a number of days"),
    (["--deadline-minutes", "nan"], "argument --deadline-minutes: 'nan' is not a number of minutes above 0"),
    (["--deadline-minutes", "-5"], "argument --deadline-minutes: '-5' is not a number of minutes above 0"),
])
def test_an_uploads_period_out_of_range_is_named(central, args, message):
    command, _ = central
    result = command("uploads", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("report", ["sales", "stock", "prices", "counts", "receipts"])
def test_a_report_for_a_device_shop_or_region_central_does_not_know_says_so(central, report):
    command, db = central
    store = CentralStore(db)
    store.register("shop-1", "k1", shop="Mengzi No. 3", region="honghe")  # by hand: a shop named only on its device
    store.close()
    assert command("report", report, "--shop", "Mengzi No. 3").returncode == 0
    assert command("report", report, "--region", "honghe").returncode == 0
    for option, value, message in (("--device", "shop-9", "device shop-9 is not registered"),
                                   ("--shop", "530100000009", "shop 530100000009 is not registered"),
                                   ("--region", "hongh", "region hongh has no device registered")):
        result = command("report", report, option, value)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_keygen_onto_a_directory_says_so(tmp_path):
    result = run_main(central_main, ["--db", str(tmp_path / "c.db"), "--key", str(tmp_path), "keygen"])
    assert result.returncode == 2 and f"{tmp_path} is a directory; give the key file's path" in result.stderr


def test_devices_shows_each_boxs_presence_health_clock_and_price_list_for_people_and_programs(central):
    import time

    command, db = central
    now = time.time()
    store = CentralStore(db)
    for device, shop, region in (("cb-live", "530102100001", "honghe"), ("cb-fast-clock", "530102100002", "honghe"),
                                 ("cb-never", "530102100003", "kunming"), ("cb-gone", "530102100004", "kunming")):
        store.register(device, "key", shop=shop, region=region)
    status = {"v": 1, "state": "online", "session": 2, "connection": 1, "backlog": 3, "scanners": 1,
              "agent_version": "0.1.0", "free_bytes": 52_000_000}
    store.record_status("cb-live", {**status, "device": "cb-live", "sent_at": now - 125.0}, received_at=now - 120, live=True)
    store.record_status("cb-fast-clock", {**status, "device": "cb-fast-clock", "sent_at": now - 7200 + 300,
                                          "backlog": 0}, received_at=now - 7200, live=True)
    store.record_status("cb-gone", {**status, "device": "cb-gone", "state": "offline", "sent_at": now - 3 * 86400},
                        received_at=now - 3 * 86400, live=True)
    store.add_events("cb-live", 2, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 3}},
                                    {"seq": 2, "kind": "document", "body": {"name": "order/W48", "version": 1}},
                                    {"seq": 3, "kind": "document", "body": {"name": "price_list", "version": 4}}])
    store.revoke("cb-gone")
    revoked_at = store.device("cb-gone").revoked_at
    store.close()

    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert list(rows) == ["cb-fast-clock", "cb-gone", "cb-live", "cb-never"]
    live = rows["cb-live"]
    assert live == {"device": "cb-live", "shop": "530102100001", "region": "honghe", "acked_seq": 3,
                    "documents": {"price_list": 4, "order/W48": 1}, "documents_issued": {},
                    "prices_loaded_on_the_box": False, "state": "online",
                    "last_seen": rfc3339(now - 120), "backlog": 3, "scanners": 1, "agent_version": "0.1.0",
                    "free_bytes": 52_000_000, "clock_offset": -5.0, "clock_ok": True, "revoked_at": None}
    assert (rows["cb-fast-clock"]["clock_offset"], rows["cb-fast-clock"]["clock_ok"]) == (300.0, False)
    assert rows["cb-never"] == {"device": "cb-never", "shop": "530102100003", "region": "kunming", "acked_seq": 0,
                                "documents": {}, "documents_issued": {}, "prices_loaded_on_the_box": False,
                                "state": "never seen",
                                "last_seen": None, "backlog": None,
                                "scanners": None, "agent_version": None, "free_bytes": None, "clock_offset": None,
                                "clock_ok": None, "revoked_at": None}
    assert (rows["cb-gone"]["state"], rows["cb-gone"]["revoked_at"]) == ("revoked", rfc3339(revoked_at))

    table = command("devices").stdout.splitlines()
    assert table[0].split() == ["device", "shop", "state", "seen", "backlog", "scanners", "clock", "prices", "version"]
    lines = {line.split()[0]: line.split() for line in table[1:]}
    assert lines["cb-live"] == ["cb-live", "530102100001", "online", "2m", "ago", "3", "1", "-5s", "4", "0.1.0"]
    assert lines["cb-fast-clock"] == ["cb-fast-clock", "530102100002", "online", "2h", "ago", "0", "1", "+300s", "!",
                                      "-", "0.1.0"]
    assert lines["cb-never"] == ["cb-never", "530102100003", "never", "seen", "-", "-", "-", "-", "-", "-"]
    assert lines["cb-gone"] == ["cb-gone", "530102100004", "revoked", "3d", "ago", "3", "1", "-", "-", "0.1.0"]


def test_devices_takes_off_a_boxs_backlog_what_central_has_acknowledged_since_its_status(central):
    """A box back after a day offline said 500 held, sent them at once, and showed 500 for a minute more."""
    import time

    command, db = central
    store = CentralStore(db)
    store.register("cb-back", "key", shop="530102100001", region="honghe")
    store.record_status("cb-back", {"v": 1, "device": "cb-back", "state": "online", "session": 1, "connection": 2,
                                    "sent_at": time.time(), "last_seq": 5, "acked_seq": 2, "backlog": 3},
                        received_at=time.time(), live=True)
    store.add_events("cb-back", 1, [{"seq": seq, "kind": "sale", "body": {}} for seq in (1, 2, 3)])

    def backlog():
        return json.loads(command("devices", "--json").stdout)["backlog"]

    assert backlog() == 2
    store.add_events("cb-back", 1, [{"seq": seq, "kind": "sale", "body": {}} for seq in (4, 5, 6)])
    store.close()
    assert backlog() == 0  # sold on since: its next status says so


def test_devices_shows_the_backlog_of_a_box_whose_new_journal_central_refuses(central):
    """Its journal made anew under its id counts from 1 again, below what central acknowledged of the old one:
    central refuses every batch of it, and the 30 it holds showed as none."""
    import time

    command, db = central
    store = CentralStore(db)
    store.register("cb-anew", "key", shop="530102100001", region="honghe")
    store.add_events("cb-anew", 1, [{"seq": seq, "kind": "sale", "body": {}} for seq in range(1, 101)])
    store.record_status("cb-anew", {"v": 1, "device": "cb-anew", "state": "online", "session": 1, "connection": 1,
                                    "sent_at": time.time(), "last_seq": 30, "acked_seq": 0, "backlog": 30},
                        received_at=time.time(), live=True)
    store.close()
    assert json.loads(command("devices", "--json").stdout)["backlog"] == 30


def test_devices_flags_a_box_behind_the_newest_price_list_issued_for_it_and_in_force(central):
    """A list pushed signed by a key the boxes did not trust yet was refused by every box, and nothing at central
    showed it: the column kept the old version, as for a box that had taken everything."""
    import time

    command, db = central
    now = time.time()
    store = CentralStore(db)
    for device in ("cb-behind", "cb-current"):
        store.register(device, "key", shop="530102100001", region="honghe")
    store.register("cb-elsewhere", "key", shop="530102100002", region="kunming")

    def issue(scope, expires_at):
        return store.issue_document(lambda version: ("price_list", json.dumps(scope), "ops-1", now, expires_at, b"t"),
                                    "price_list")[0]

    issue({"region": "honghe"}, now + 3600)  # 1
    issue({"device": "cb-current"}, now + 3600)  # 2: its own
    issue({"region": "honghe"}, now + 3600)  # 3
    issue({"region": "honghe"}, now - 1)  # 4: expired, which no box could take
    for device, version in (("cb-behind", 1), ("cb-current", 3), ("cb-elsewhere", 1)):
        store.add_events(device, 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": version}}])
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert {device: (row["documents"]["price_list"], row["documents_issued"].get("price_list"))
            for device, row in rows.items()} == {"cb-behind": (1, 3), "cb-current": (3, 3), "cb-elsewhere": (1, None)}
    lines = {line.split()[0]: line.split() for line in command("devices").stdout.splitlines()[1:]}
    assert (lines["cb-behind"][-3:-1], lines["cb-current"][-2], lines["cb-elsewhere"][-2]) == (["1", "!"], "3", "1")


def test_devices_flags_no_revoked_box_for_what_its_region_was_sent_after_its_revocation(central):
    """A box collected from its shop takes nothing more: it was flagged behind every list its region got since."""
    import time

    command, db = central
    now = time.time()
    store = CentralStore(db)
    for device in ("cb-retired", "cb-live"):
        store.register(device, "key", shop="530102100001", region="honghe")

    def issue(issued_at):
        return store.issue_document(lambda version: ("price_list", json.dumps({"region": "honghe"}), "ops-1", issued_at,
                                                     issued_at + 3600, b"t"), "price_list")[0]

    issue(now - 10)  # 1
    store.add_events("cb-retired", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 1}}])
    store.add_events("cb-live", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 1}}])
    store.revoke("cb-retired")
    issue(time.time() + 1)  # 2, after the revocation
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert rows["cb-retired"]["documents_issued"] == {"price_list": 1}
    assert rows["cb-live"]["documents_issued"] == {"price_list": 2}
    lines = {line.split()[0]: line.split() for line in command("devices").stdout.splitlines()[1:]}
    assert (lines["cb-retired"][-2], lines["cb-live"][-3:-1]) == ("1", ["1", "!"])


def test_devices_says_when_a_box_sells_at_a_price_list_loaded_on_it_after_the_one_pushed(central):
    """The pushed version was shown while the box sold at prices from a file loaded on it."""
    command, db = central
    store = CentralStore(db)
    for device in ("cb-pushed", "cb-local"):
        store.register(device, "key", shop="530102100001")
        store.add_events(device, 1, [{"seq": 1, "kind": "price_list", "body": {"source": "operations"}},
                                     {"seq": 2, "kind": "document", "body": {"name": "price_list", "version": 4,
                                                                             "content_seq": 1}}])
    store.add_events("cb-local", 1, [{"seq": 3, "kind": "price_list", "body": {"source": "week48.csv"}}])
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert {device: row["prices_loaded_on_the_box"] for device, row in rows.items()} == {"cb-local": True,
                                                                                         "cb-pushed": False}
    lines = {line.split()[0]: line.split() for line in command("devices").stdout.splitlines()[1:]}
    assert (lines["cb-local"][-2], lines["cb-pushed"][-2]) == ("local", "4")


def test_devices_says_a_failed_box_whose_journal_goes_on_at_another_was_replaced_by_it(central):
    """It never delivers its revocation (it is dead): it showed revoked, as one still to hand in, for ever."""
    command, db = central
    store = CentralStore(db)
    journal = "f" * 32
    for device in ("cb-failed", "cb-new", "cb-other"):
        store.register(device, "key", shop="530102100001")
    store.add_events("cb-failed", 1, [{"seq": 1, "kind": "sale", "body": {}}], journal=journal)
    store.revoke("cb-failed")
    store.revoke("cb-other")
    store.add_events("cb-new", 1, [{"seq": 2, "kind": "sale", "body": {}}], journal=journal, base_seq=1)
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert (rows["cb-failed"]["state"], rows["cb-failed"]["replaced_by"]) == ("replaced", "cb-new")
    assert rows["cb-other"]["state"] == "revoked" and "replaced_by" not in rows["cb-other"]
    lines = {line.split()[0]: line.split() for line in command("devices").stdout.splitlines()[1:]}
    assert lines["cb-failed"][2] == "replaced"


def test_devices_says_when_a_revoked_box_has_handed_in_everything_it_held_and_when_it_erased_itself(central):
    """Revoked while it delivers; handed in once central holds its revocation and all before it; retired, to
    be collected, once it said (signed) that it erases itself; erased, when it did so before central held all it
    had (its grace ran out). Retired once meant only handed in: a box that had not yet erased itself was
    collected with its key and journal on it."""
    import time

    from .test_central_store import revocation

    command, db = central
    store = CentralStore(db)
    for device in ("cb-leaving", "cb-left", "cb-cut", "cb-erased", "cb-lost", "cb-lost-after"):
        store.register(device, "key", shop="530102100001")
        store.revoke(device)
    store.add_events("cb-leaving", 1, [{"seq": 1, "kind": "sale", "body": {}},
                                       {"seq": 3, "kind": "revocation", "body": revocation(time.time())}])  # 2 missing
    # cb-lost's grace ran out with its seq 2 undelivered: it erased itself all the same.
    store.add_events("cb-lost", 1, [{"seq": 1, "kind": "sale", "body": {}},
                                    {"seq": 3, "kind": "revocation", "body": revocation(time.time())}])
    # cb-lost-after's refused scan after its revocation (seq 3) never came: it said it held up to 3.
    for device in ("cb-left", "cb-erased", "cb-lost", "cb-lost-after"):
        if device != "cb-lost":
            store.add_events(device, 1, [{"seq": 1, "kind": "sale", "body": {}},
                                         {"seq": 2, "kind": "revocation", "body": revocation(time.time())}])
        online = {"v": 1, "device": device, "state": "online", "session": 1, "connection": 1, "sent_at": time.time(),
                  "last_seq": 3 if device == "cb-lost-after" else 2, "acked_seq": 2}
        store.record_status(device, {**online, **({"erasing": True} if device != "cb-left" else {})},
                            received_at=time.time(), live=True)
    # Its going offline after its last word leaves it said.
    store.record_status("cb-erased", {"v": 1, "device": "cb-erased", "state": "offline", "session": 1, "connection": 1,
                                      "sent_at": time.time() + 1}, received_at=time.time() + 1, live=True)
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    states = {"cb-cut": "revoked", "cb-leaving": "revoked", "cb-left": "handed in", "cb-erased": "retired",
              "cb-lost": "erased", "cb-lost-after": "erased"}
    assert {device: row["state"] for device, row in rows.items()} == states
    lines = {line.split()[0]: line for line in command("devices").stdout.splitlines()[1:]}
    assert all(lines[device][46:56].rstrip() == state for device, state in states.items())


def test_reports_write_out_a_boxs_control_characters_instead_of_handing_them_to_the_terminal(central):
    """A box's signed sale whose name, product or currency holds an escape sequence (clear the screen, hide what
    follows) or a right-to-left override would otherwise rewrite the operator's report of every shop."""
    from .test_central_reports import DAY, PACK, count, order, sale as line

    command, db = central
    store = CentralStore(db)
    store.register("cb-a", "k" * 43, shop="530100000001", region="honghe")
    evil = "\x1b[2J\x1b[H\x1b]0;title\x07ALL SHOPS OK\u202e\x9b8m"
    store.add_events("cb-a", 1, [line(1, PACK, name=evil, product_name=evil),
                                 sale(2, PACK, 2300, currency="CNY\x1b[8m")])
    store.close()
    store = CentralStore(db)
    store.add_events("cb-a", 3, [{**count(3, 5, name=evil), "body": {**count(3, 5)["body"], "at": evil}},
                                 order(4, "W48", (PACK, 2))])
    store.close()
    for report in (["report"], ["report", "sales", "--day", DAY], ["report", "stock"],
                   ["report", "prices", "--day", DAY], ["report", "counts", "--week", DAY],
                   ["report", "receipts", "--week", DAY]):
        printed = command(*report)
        assert printed.returncode == 0, printed.stderr
        assert all(char.isprintable() or char == "\n" for char in printed.stdout), (report, printed.stdout)
    assert "\\x1b[2J\\x1b[H\\x1b]0;title\\x07ALL SHOPS OK\\u202e\\x9b8m" in command("report", "sales", "--day", DAY).stdout
    assert "CNY\\x1b[8m" in command("report").stdout


def test_the_shop_reports_print_a_table_per_shop_and_all_shops_when_there_are_several_and_json_for_programs(central):
    from central import reports
    from central.store import Shop

    from .test_central_reports import DAY, PACK, YUNYAN, count, received, sale as line

    command, db = central
    store = CentralStore(db)
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_shop(Shop("530100000002", "Gejiu No. 1", "honghe"))
    store.register("cb-a", "k" * 43, shop="530100000001", region="honghe")
    store.register("cb-b", "k" * 43, shop="530100000002", region="honghe")
    store.add_events("cb-a", 1, [received(1, 20), line(2, PACK), line(3, PACK, price=2500), count(4, 15)])
    store.add_events("cb-b", 1, [line(1, PACK), line(2, YUNYAN, product=YUNYAN, name="Yunyan",
                                                     product_name="Yunyan (pack)", price=1100, list_price=1000)])
    everywhere, one_shop = reports.Scope(), reports.Scope(shop="530100000001")
    expected = {("sales", "--week"): reports.sales(store, box_reports.week_of(DAY), everywhere),
                ("stock",): reports.stock(store, everywhere),
                ("prices", "--day"): reports.prices(store, [DAY], everywhere)}
    store.close()

    for (report, *when), result in expected.items():
        printed = command("report", report, *(when and [when[0], DAY]), "--json")
        assert printed.returncode == 0 and json.loads(printed.stdout) == json.loads(json.dumps(result)), report

    hongtashan = "06901028075831  Hongtashan (pack)"
    header = ["product         name               lines  packs  amount   cost  margin",
              "--------------  -----------------  -----  -----  ------  -----  ------"]
    assert command("report", "sales", "--day", DAY).stdout.split("\n\n") == [
        "\n".join(["Shop 530100000001: Sales 2026-11-30", *header,
                   f"{hongtashan}      2      2   48.00  39.00    9.00",
                   "total                                  2      2   48.00  39.00    9.00"]),
        "\n".join(["Shop 530100000002: Sales 2026-11-30", *header,
                   f"{hongtashan}      1      1   23.00  19.50    3.50",
                   "06901028001915  Yunyan (pack)          1      1   11.00  19.50   -8.50",
                   "total                                  2      2   34.00  39.00   -5.00"]),
        "\n".join(["All shops: Sales 2026-11-30", *header,
                   f"{hongtashan}      3      3   71.00  58.50   12.50",
                   "06901028001915  Yunyan (pack)          1      1   11.00  19.50   -8.50",
                   "total                                  4      4   82.00  78.00    4.00\n"])]
    one = command("report", "sales", "--day", DAY, "--shop", "530100000001").stdout
    assert one.startswith("Shop 530100000001: Sales 2026-11-30\n") and "All shops" not in one
    assert command("report", "stock", "--shop", "530100000001").stdout.splitlines() == [
        "Shop 530100000001: Stock (packs)",
        "product         name               packs  known  below zero",
        "--------------  -----------------  -----  -----  ----------",
        f"{hongtashan}     15    yes"]
    # Names and prices read left to right, as text; the stock, a figure, to the right.
    assert command("report", "prices", "--day", DAY, "--monitoring").stdout.splitlines() == [
        "shop          product         name               sold at                                                 stock",
        "------------  --------------  -----------------  ------------------------------------------------------  -----",
        f"530100000001  {hongtashan}  23.00/pack (list 23.00) x1, 25.00/pack (list 23.00) x1     15"]


def test_the_prices_table_puts_each_price_beside_the_list_price_it_was_sold_under(central):
    """Sold at list all week, the list price raised on Thursday: no line reads as sold under its list price."""
    from central.store import Shop

    from .test_central_reports import PACK, sale as line

    command, db = central
    store = CentralStore(db)
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.register("cb-a", "k" * 43, shop="530100000001", region="honghe")
    week = box_reports.week_of("2026-11-18")
    store.add_events("cb-a", 1, [line(seq, PACK, day=day, price=price, list_price=price) for seq, (day, price) in
                                 enumerate([(day, 2300) for day in week[:3]] + [(day, 2400) for day in week[3:]], 1)])
    store.close()
    [row] = command("report", "prices", "--week", "2026-11-18").stdout.splitlines()[2:]
    assert row.endswith("  24.00/pack (list 24.00) x4, 23.00/pack (list 23.00) x3     -7")  # 7 sold, none received


def test_broker_init_writes_access_control_that_grants_each_party_its_own_topics_and_nothing_else(central, tmp_path):
    """The production broker's dynamic-security file, as docs/protocol.md (Broker security) states it: everything
    refused unless granted; central and operations as clients with roles of their own, their passwords hashed as
    the plugin checks them; boxes waiting for activation, anonymous, in a group that reaches the activation
    topics only."""
    import base64
    import hashlib

    command, _ = central
    (tmp_path / "central.pass").write_text("central's own password\n")
    (tmp_path / "ops.pass").write_text("operations' own password\n")
    result = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"dynsec": str(tmp_path / "dynsec.json"), "central": "counterbox-central",
                                         "operations": "counterbox-ops", "consumer": None}
    config = json.loads((tmp_path / "dynsec.json").read_text())
    assert config["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                          "unsubscribe": True}
    for client, password in zip(config["clients"], ("central's own password", "operations' own password")):
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(client["salt"]), client["iterations"])
        assert base64.b64encode(digest).decode() == client["password"] and len(base64.b64decode(client["salt"])) == 12
    assert [(c["username"], c["roles"]) for c in config["clients"]] == [
        ("counterbox-central", [{"rolename": "central"}]), ("counterbox-ops", [{"rolename": "operations"}])]
    assert config["groups"] == [{"groupname": "waiting-boxes", "roles": [{"rolename": "waiting-box"}], "clients": []}]
    assert config["anonymousGroup"] == "waiting-boxes"

    def grants(role: str) -> set[tuple[str, str]]:
        [acls] = [r["acls"] for r in config["roles"] if r["rolename"] == role]
        assert all(acl["allow"] is True for acl in acls)
        return {(acl["acltype"], acl["topic"]) for acl in acls}

    p, control = "counterbox/v1", "$CONTROL/dynamic-security/v1"
    reads = [f"{p}/devices/+/batch", f"{p}/devices/+/status", f"{p}/activation/+/hello", f"{p}/activation/+/request"]
    docs = [f"{p}/devices/+/docs/#", f"{p}/regions/+/docs/#"]  # the retained copies, kept (central/retained.py)
    assert grants("central") == {
        # hello and request: central clears a refused one, which anyone may have left retained
        *(("publishClientSend", t) for t in (f"{p}/devices/+/ack", f"{p}/activation/+/result",
                                            f"{p}/activation/+/code", f"{p}/activation/+/hello",
                                            f"{p}/activation/+/request", f"{control}/#", *docs)),
        *((kind, t) for t in (*reads, f"{control}/#", *docs) for kind in ("subscribePattern", "publishClientReceive")),
        *(("subscribePattern", f"$share/+/{t}") for t in reads)}
    assert grants("operations") == {
        *(("publishClientSend", t) for t in (f"{p}/devices/+/docs/#", f"{p}/regions/+/docs/#", f"{p}/activation/+/code",
                                            f"{control}/#")),
        ("subscribePattern", f"{control}/#"), ("publishClientReceive", f"{control}/#")}
    assert grants("waiting-box") == {
        ("publishClientSend", f"{p}/activation/+/hello"), ("publishClientSend", f"{p}/activation/+/request"),
        *((kind, t) for t in (f"{p}/activation/+/code", f"{p}/activation/+/result")
          for kind in ("subscribePattern", "publishClientReceive"))}
    # Central's consumers read what boxes send and central answers; the client is made only when asked for.
    shown = [f"{p}/devices/+/batch", f"{p}/devices/+/ack", f"{p}/devices/+/status"]
    assert grants("consumer") == {*((kind, t) for t in shown for kind in ("subscribePattern", "publishClientReceive")),
                                  *(("subscribePattern", f"$share/+/{t}") for t in shown)}
    assert sorted(r["rolename"] for r in config["roles"]) == ["central", "consumer", "operations", "waiting-box"]


def test_ingest_stores_and_acknowledges_what_boxes_send_until_it_is_told_to_stop(tmp_path):
    """`counterbox-central ingest`, in this process against a real Mosquitto: a box's batch, sent until it is
    acknowledged (as a box does), is stored once and acknowledged retained; an interrupt (SIGINT, as SIGTERM) ends the ingest cleanly."""
    import asyncio
    import os
    import signal
    import threading
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.mqtt import MqttLink
    from demo.stack import Stack
    from provisioning import protocol
    from provisioning.identity import load_key, public_key_text
    from storage import Event

    db, key, box = tmp_path / "central.db", tmp_path / "central.key", Ed25519PrivateKey.generate()
    assert run_main(central_main, ["--key", str(key), "keygen"]).returncode == 0
    store = CentralStore(db)
    store.register("shop-1", public_key_text(box), shop="530100000001", region="honghe")
    store.close()
    prefix = "acme/v2"  # a deployment's own topic prefix, given with --topic-prefix
    batch = protocol.encode_batch([Event(1, "sale", {"code": "6901028075831", "quantity": 1})], device="shop-1",
                                  session=1, key=box, sent_at=time.time())
    heard: list[bytes] = []
    done = threading.Event()  # the ingest returned: nothing is left to interrupt

    def the_box(port: int) -> None:
        async def send_until_acknowledged() -> None:
            async with MqttLink(host="127.0.0.1", port=port, client_id="shop-1",
                                subscriptions=[protocol.ack_topic(prefix, "shop-1")]) as link:
                async with asyncio.timeout(15):
                    await link.connected.wait()
                    while not heard and not done.is_set():
                        await link.publish(protocol.batch_topic(prefix, "shop-1"), batch)
                        try:
                            async with asyncio.timeout(0.3):
                                heard.append((await anext(link.messages())).payload)
                        except TimeoutError:
                            pass

        try:
            asyncio.run(send_until_acknowledged())
        finally:
            if not done.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    with Stack(tmp_path / "stack") as stack:
        stack.start_broker()
        sender = threading.Thread(target=the_box, args=(stack.broker_port,))
        sender.start()
        try:
            try:
                result = run_main(central_main, ["--db", str(db), "--key", str(key), "--log-level", "WARNING",
                                                 "ingest", "--port", str(stack.broker_port),
                                                 "--client-id", "central-in-process", "--topic-prefix", prefix])
            finally:
                done.set()
            sender.join()
        except KeyboardInterrupt:
            sender.join()
            pytest.fail("the interrupt came when no ingest was running to take it")
    assert (result.returncode, result.stderr) == (0, "")
    central_key = load_key(key).public_key()
    assert [protocol.decode_ack(token, device="shop-1", key=central_key).seq for token in heard] == [1]
    store = CentralStore(db)
    try:
        assert [(e["device"], e["seq"], e["kind"]) for e in store.events()] == [("shop-1", 1, "sale")]
    finally:
        store.close()


@pytest.mark.parametrize("content, accepted", [("eleven char", False), ("twelve chars", True)])
def test_a_broker_password_kept_in_a_file_has_twelve_characters_at_least_and_a_shorter_one_is_named(
        central, tmp_path, content, accepted):
    command, _ = central
    (tmp_path / "central.pass").write_text(content + "\n")
    result = command("broker", "init", "--dynsec", str(tmp_path / "dynsec.json"), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    if accepted:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2 and result.stderr == (
            f"counterbox-central: error: password file {tmp_path / 'central.pass'} holds 11 characters, fewer than "
            "12; remove it and one is made\n")
    assert (tmp_path / "dynsec.json").exists() == accepted


def test_broker_init_into_a_directory_that_does_not_exist_says_so(central, tmp_path):
    command, _ = central
    dynsec = tmp_path / "no-such-directory" / "dynsec.json"
    result = command("broker", "init", "--dynsec", str(dynsec), "--central-password-file",
                     str(tmp_path / "central.pass"), "--ops-password-file", str(tmp_path / "ops.pass"))
    assert result.returncode == 2 and result.stderr == (
        f"counterbox-central: error: {dynsec}: cannot create the broker's access control file: "
        "No such file or directory\n")


def test_pubkey_names_the_command_that_makes_the_key_and_prints_the_key_each_box_trusts(central):
    command, _ = central
    missing = command("pubkey")
    assert "(create it with 'counterbox-central keygen')" in missing.stderr
    made = json.loads(command("keygen").stdout)
    result = command("pubkey")
    assert (result.returncode, json.loads(result.stdout)) == (0, made)


def test_export_prints_names_in_chinese_as_they_are(central):
    command, db = central
    store = CentralStore(db)
    store.register("shop-1", "k1")
    store.add_events("shop-1", 1, [{"seq": 1, "kind": "sale", "body": {"code": "6901028075831", "name": "红塔山(软)"}}])
    store.close()
    result = command("export")
    assert result.returncode == 0 and "红塔山(软)" in result.stdout


def test_a_clock_off_by_exactly_a_minute_is_not_flagged_a_moment_more_is(central):
    import time

    command, db = central
    now = float(int(time.time()))
    store = CentralStore(db)
    status = {"v": 1, "state": "online", "session": 1, "connection": 1}
    for device, offset in (("cb-minute", 60.0), ("cb-more", 61.0)):
        store.register(device, "key")
        store.record_status(device, {**status, "device": device, "sent_at": now - 10 + offset}, received_at=now - 10,
                            live=True)
    store.close()
    rows = {row["device"]: row for row in map(json.loads, command("devices", "--json").stdout.splitlines())}
    assert {device: (row["clock_offset"], row["clock_ok"]) for device, row in rows.items()} == {
        "cb-minute": (60.0, True), "cb-more": (61.0, False)}


def test_the_report_says_when_a_boxs_sales_were_in_several_currencies_and_skips_boxes_without_events(central):
    command, db = central
    store = CentralStore(db)
    store.register("shop-0", "k0")  # registered, nothing sent yet: no line, and the boxes after it still reported
    store.register("shop-1", "k1")
    store.register("shop-2", "k2")
    store.register("shop-3", "k3")
    store.add_events("shop-1", 1, [sale(1, "a", 2300, "CNY"), sale(2, "a", 2500, "HKD"), sale(3, "a", 300, "MOP")])
    store.add_events("shop-2", 1, [sale(1, "a", 2300, "CNY"), sale(2, "a", 2500, "HKD")])
    store.add_events("shop-3", 1, [{"seq": 1, "kind": "sale", "body": {"code": "x", "quantity": 1, "known": False,
                                                                       "unit_price": None}}])  # no price list: no currency
    store.close()
    result = command("report")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "shop-1: 3 sales (0 of unknown products), 0 misreads refused, total 51.00 (mixed: CNY, HKD, MOP), "
        "acknowledged up to seq 3",
        "shop-2: 2 sales (0 of unknown products), 0 misreads refused, total 48.00 (mixed: CNY, HKD), "
        "acknowledged up to seq 2",
        "shop-3: 1 sale (1 of unknown products), 0 misreads refused, total 0.00, acknowledged up to seq 1"]


def test_devices_keeps_a_shop_name_in_chinese_and_cuts_a_long_one_to_its_column(central):
    command, db = central
    store = CentralStore(db)
    store.register("cb-1", "key", shop="蒙自三号店")
    store.register("cb-2", "key", shop="Mengzi Tobacco and Liquor No. 3")
    store.close()
    result = command("devices", "--json")
    assert result.returncode == 0 and '"shop": "蒙自三号店"' in result.stdout
    table = command("devices")
    assert table.returncode == 0
    header, _, long = table.stdout.splitlines()
    assert long.startswith(f"{'cb-2':24} {'Mengzi Tobacco and L':20} never seen")
    assert header.index("state") == long.index("never seen")


def test_uploads_counts_a_sale_received_after_the_deadline_against_its_day_and_names_why(central):
    """A sale scanned half an hour before central received it: on time against the default hour, late against
    a deadline just under half an hour; the failed day says the box reported and how many sales came late."""
    import time

    command, db = central
    now = time.time()
    scanned = now - 1800
    day = time.strftime("%Y-%m-%d", time.localtime(scanned))
    store = CentralStore(db)
    for device, shop, region in (("cb-a-fresh", "530102100001", "honghe"),
                                 ("cb-late", "Mengzi Tobacco and Liquor No. 3", ""),
                                 ("cb-far", "530102100003", "xishuangbanna")):
        store.register(device, "key", shop=shop, region=region)
    store.conn.execute("UPDATE devices SET registered_at = ? WHERE device_id != 'cb-a-fresh'", [now - 9 * 86400])
    online = {"v": 1, "state": "online", "session": 1, "connection": 1, "sent_at": scanned}  # the clocks agree
    for device in ("cb-late", "cb-far"):
        store.record_status(device, {**online, "device": device}, received_at=scanned, live=True)
    store.add_events("cb-late", 1, [{"seq": 1, "kind": "sale", "body": {
        "code": "6901028075831", "scanned_at": rfc3339(scanned)}}])
    store.close()

    def report(*args):
        result = command("uploads", "--days", "1", "--until", day, "--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    on_time = report()
    assert (on_time["from"], on_time["to"]) == (day, day)
    assert [(row["device"], row["uploaded"], row["failed_days"]) for row in on_time["devices"]] == [
        ("cb-far", 1, []), ("cb-late", 1, [])]  # cb-a-fresh: nothing decided yet, so not listed
    late = report("--deadline-minutes", "29.8")
    rows = {row["device"]: row for row in late["devices"]}
    assert rows["cb-late"]["failed_days"] == [{"day": day, "reported": True, "late_sales": 1, "held_back": False}]
    assert (rows["cb-late"]["rate"], rows["cb-late"]["meets_target"]) == (0.0, False)
    assert late["regions"] == [
        {"region": "-", "devices": 1, "days": 1, "uploaded": 0, "below_target": 1, "rate": 0.0},
        {"region": "xishuangbanna", "devices": 1, "days": 1, "uploaded": 1, "below_target": 0, "rate": 1.0}]
    table = command("uploads", "--days", "1", "--until", day, "--deadline-minutes", "29.8")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[2:4] == [
        "cb-far                   530102100003     xishuangba general       1    1  100.0%     85%",
        "cb-late                  Mengzi Tobacco a -          general       1    0    0.0%     85%  BELOW TARGET"]
    assert lines[4] == f"  failed: {day} 1 sale late"  # why, in the table too: not only in --json
    assert "region -: 1 devices, 0.0% of device-days uploaded, 1 below target" in lines


@pytest.mark.parametrize("option, value", [("--days", "1"), ("--days", "3660"), ("--deadline-minutes", "0.01"),
                                           ("--deadline-minutes", "10080")])
def test_an_uploads_period_at_the_edges_of_its_range_is_taken(central, option, value):
    command, _ = central
    result = command("uploads", option, value)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("option, value, message", [
    ("--days", "3661", "'3661' is not a number of days from 1 to 3660"),
    ("--deadline-minutes", "10080.5", "'10080.5' is not a number of minutes above 0 and at most 10080"),
    ("--deadline-minutes", "an hour", "'an hour' is not a number of minutes above 0 and at most 10080"),
    ("--deadline-minutes", "0", "'0' is not a number of minutes above 0 and at most 10080"),
])
def test_an_uploads_period_past_the_edges_of_its_range_is_named(central, option, value, message):
    command, _ = central
    result = command("uploads", option, value)
    assert result.returncode == 2 and f"argument {option}: {message}" in result.stderr, result.stderr


@pytest.mark.parametrize("seconds, shown", [(-3.0, "0s ago"), (59.4, "59s ago"), (60, "1m ago"), (3599, "60m ago"),
                                            (3600, "1h ago"), (86399, "24h ago"), (86400, "1d ago")])
def test_how_long_ago_a_box_was_seen_is_shown_in_its_largest_whole_unit(seconds, shown):
    """The devices table's 'seen' column (a clock ahead of central's shows no time in the future)."""
    from central.cli import _age

    assert _age(seconds) == shown


def test_a_shop_report_for_one_device_or_one_region_holds_its_shops_only(central):
    from central.store import Shop

    from .test_central_reports import DAY, PACK, count, order, sale as line

    command, db = central
    store = CentralStore(db)
    for licence, device, region in (("530100000001", "cb-a", "honghe"), ("530100000002", "cb-b", "honghe"),
                                    ("530100000003", "cb-c", "kunming")):
        store.add_shop(Shop(licence, f"Shop {licence[-1]}", region))
        store.register(device, "k" * 43, shop=licence, region=region)
        store.add_events(device, 1, [line(1, PACK)])
    store.close()

    def shops(*scope) -> list[str]:
        result = command("report", "sales", "--day", DAY, *scope, "--json")
        assert result.returncode == 0, result.stderr
        return sorted(json.loads(result.stdout)["shops"])

    assert shops() == ["530100000001", "530100000002", "530100000003"]
    assert shops("--device", "cb-b") == ["530100000002"]
    assert shops("--region", "honghe") == ["530100000001", "530100000002"]


def test_a_report_for_a_registered_shop_with_no_box_yet_is_empty_not_an_error(central):
    from central.store import Shop

    command, db = central
    store = CentralStore(db)
    store.add_shop(Shop("530100000007", "Kaiyuan No. 1", "honghe"))
    store.close()
    result = command("report", "stock", "--shop", "530100000007", "--json")
    assert (result.returncode, result.stderr, json.loads(result.stdout)) == (0, "", {})


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: command"),
    # Stock is what the shelves hold now: a day or a week of it is no report central keeps.
    (["report", "stock", "--day", "2026-11-30"], "unrecognized arguments: --day 2026-11-30"),
    (["report", "stock", "--week", "2026-11-30"], "unrecognized arguments: --week 2026-11-30"),
    (["report", "sales", "--day", "2026-11-30", "--week", "2026-11-30"], "argument --week: not allowed with argument --day"),
])
def test_a_command_line_missing_its_command_or_asking_what_no_report_holds_is_refused_by_name(central, args, message):
    command, _ = central
    result = command(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_shop_report_without_a_day_is_of_today_and_with_a_week_of_its_monday_to_sunday(central):
    """Central's local calendar: the figures an operator asks for first thing are today's."""
    from datetime import date

    command, _ = central
    result = command("report", "sales", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["days"] == [date.today().isoformat()]
    week = json.loads(command("report", "sales", "--week", "2026-12-02", "--json").stdout)["days"]
    assert week == [f"2026-11-{d}" for d in (30,)] + [f"2026-12-0{d}" for d in range(1, 7)]


def test_the_first_command_on_a_new_database_says_nothing_but_its_answer(tmp_path):
    """The schema is made on first use; Alembic's own lines (its plugins' setup) are no operator's business."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "central.ops", "shop", "add", "--central-db", str(tmp_path / "central.db"),
                             "--licence", "530102100001", "--name", "Corner shop", "--region", "north"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "shop 530102100001 (Corner shop) registered in region north\n", "")
    result = subprocess.run([sys.executable, "-m", "central", "--db", str(tmp_path / "central.db"), "--key",
                             str(tmp_path / "central.key"), "devices", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("command", [["ingest"], ["broker", "init", "--dynsec", "x.json"]], ids=["ingest", "broker init"])
def test_a_topic_prefix_no_topic_can_start_with_is_refused_before_anything_starts(tmp_path, command):
    from central.ops import main as ops_main

    result = run_main(central_main, ["--db", str(tmp_path / "c.db"), *command, "--topic-prefix", "counterbox/#"])
    assert result.returncode == 2 and ("argument --topic-prefix: topic prefix 'counterbox/#' must be MQTT topic levels of "
                                       "printable characters, without the wildcards + and #") in result.stderr
    assert not (tmp_path / "c.db").exists()
    result = run_main(ops_main, ["activation", "issue", "--topic-prefix", "+/v1"])
    assert result.returncode == 2 and "argument --topic-prefix: topic prefix '+/v1' must be" in result.stderr


def test_a_report_read_into_a_command_that_stops_reading_ends_without_an_error(central):
    """`counterbox-central export | head -1` said "error: [Errno 32] Broken pipe" and exited 2."""
    _, db = central
    store = CentralStore(db)
    store.register("shop-1", "k" * 43)
    store.add_events("shop-1", 1, [sale(seq, "6901028075831", 2300) for seq in range(1, 3001)])  # past a pipe's 64 KiB
    store.close()
    export = subprocess.Popen([sys.executable, "-m", "central", "--db", str(db), "export"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    first = export.stdout.readline()
    export.stdout.close()  # as `head -1` does
    _, stderr = export.communicate(timeout=60)
    assert json.loads(first)["seq"] == 1
    assert (export.returncode, stderr) == (128 + signal.SIGPIPE, b"")


def test_the_weeks_counts_and_receipts_read_as_the_information_manager_wants_them(central):
    """Who counted and what differed; what arrived against each order, and which orders still wait."""
    from .test_central_reports import DAY, PACK, count, order, received_for, receiving_closed

    command, db = central
    store = CentralStore(db)
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_shop(Shop("530100000002", "Gejiu No. 1", "honghe", monitoring=True))
    store.register("cb-a", "k" * 43, shop="530100000001", region="honghe")
    store.register("cb-b", "k" * 43, shop="530100000002", region="honghe")
    store.add_events("cb-a", 1, [count(1, 50), order(2, "W48", (PACK, 20)), received_for(3, "W48", 18),
                                 receiving_closed(4, "W48", ordered=20, received=18), order(5, "W49", (PACK, 10))])
    store.close()
    counts = command("report", "counts", "--week", DAY).stdout
    assert counts.startswith("Shop 530100000001: 1 stock count closed\nseq 1 at 2026-11-30T09:00:00.000Z on cb-a: "
                             "1 difference\n"), counts
    assert counts.endswith("No count closed 2026-11-30 to 2026-12-06: 530100000002 (monitoring point)\n"), counts
    receipts = command("report", "receipts", "--week", DAY).stdout
    assert "seq 4 at 2026-11-30T08:30:00.000Z on cb-a order order/W48: 1 difference\n" in receipts
    assert receipts.endswith("open: order/W49 on cb-a (seq 5, issued 2026-11-30T01:00:00.000Z): 1 line, "
                             "0 products received so far\n"), receipts
    assert json.loads(command("report", "receipts", "--week", DAY, "--json").stdout)["shops"]["530100000001"][
        "open_orders"][0]["order"] == "order/W49"


def test_batches_prints_each_devices_signed_batches_for_a_consumer_to_verify(central):
    """What a consumer missed at the broker, central's boxes never send again: it fetches them signed."""
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.mqtt import Message
    from central.ingest import Ingest
    from provisioning import protocol
    from provisioning.identity import public_key_text
    from storage import Event

    command, db = central
    store = CentralStore(db)
    boxes = {device: Ed25519PrivateKey.generate() for device in ("cb-a", "cb-b")}
    for device, key in boxes.items():
        store.register(device, public_key_text(key), shop="530100000001", region="honghe")
    ingest, sent = Ingest(store=store, signing_key=Ed25519PrivateKey.generate()), {}
    for device, seqs in (("cb-a", (1, 2)), ("cb-b", (1,)), ("cb-a", (3,))):
        token = protocol.encode_batch([Event(seq, "sale", {"n": seq}) for seq in seqs], device=device, session=1,
                                      key=boxes[device], sent_at=time.time())
        ingest.handle(Message(protocol.batch_topic(protocol.DEFAULT_PREFIX, device), token))
        sent.setdefault(device, []).append(token)
    store.close()
    assert command("batches").stdout.splitlines() == [t.decode() for t in sent["cb-a"] + sent["cb-b"]]
    after = command("batches", "--device", "cb-a", "--after", "2").stdout.splitlines()
    assert after == [sent["cb-a"][1].decode()]
    batch = protocol.decode_batch(after[0].encode(), device="cb-a", key=boxes["cb-a"].public_key())
    assert [event["seq"] for event in batch.events] == [3]
    unknown = command("batches", "--device", "cb-z")
    assert (unknown.returncode, unknown.stderr) == (2, "counterbox-central: error: device cb-z is not registered\n")
    assert "is not a seq" in command("batches", "--after", "-1").stderr
