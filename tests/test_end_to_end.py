"""Scans to central with every real part: Mosquitto, the agent and central as processes, SQLite files, real keys."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter

import paho.mqtt.publish as mqtt_publish
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTv5

from drivers.decoder import STARTED_UNSEEN
from provisioning import jws
from provisioning.protocol import BATCH_TYPE, encode_batch
from provisioning.identity import load_key
from storage import Event

from .harness import LiveScanner, feed, price_list, scans, wait_until

DEVICE = "shop-0001"


def shop_session(items: dict, count: int = 200, seed: int = 7) -> list[tuple[str, dict]]:
    """A mix of main-row EAN-13s, keypad-digit EAN-13s and shifted-character raw codes."""
    rng = random.Random(seed)
    codes = list(items)
    session = []
    for i in range(count):
        kind = i % 10
        if kind < 6:
            session.append((rng.choice(codes), {}))
        elif kind < 9:
            session.append((rng.choice(codes), {"keypad_digits": True}))
        else:
            session.append((f"TB-{i}$%&", {}))
    return session


def session_bytes(session) -> bytes:
    return b"".join(scans([code], **how) for code, how in session)


@pytest.fixture
def shop(stack, fifo, tmp_path):
    """A provisioned device with a 50-item price list, its scanner on ``fifo``."""
    device = stack.provision(DEVICE, scanners=[str(fifo)])
    csv, items = price_list(50)
    (tmp_path / "prices.csv").write_text(csv)
    loaded = device.command("prices", "load", str(tmp_path / "prices.csv"))
    assert loaded.returncode == 0, loaded.stderr
    return device, items


def sales_recorded(device) -> int:
    return device.status()["events"].get("sale", 0)


def all_acknowledged(device) -> bool:
    status = device.status()
    return status["acked_seq"] == status["last_seq"]


def assert_central_holds_exactly(stack, session, items):
    sales = wait_until(lambda: (s := stack.sales()) and len(s) >= len(session) and s, 60, "all sales at central")
    assert len(sales) == len(session), f"{len(sales)} sales at central for {len(session)} scans"
    assert len({(s["device"], s["seq"]) for s in sales}) == len(sales)
    assert [s["code"] for s in sales] == [code for code, _ in session]
    for sale in sales:
        if sale["code"] in items:
            name, price = items[sale["code"]]
            assert (sale["known"], sale["unit_price"], sale["name"]) == (True, price, name)
        else:
            assert (sale["known"], sale["unit_price"]) == (False, None)
        assert sale["quantity"] == 1 and sale["currency"] == "CNY"


def test_200_scans_arrive_at_central_as_200_verified_sales(stack, shop, fifo):
    device, items = shop
    session = shop_session(items)
    device.start()
    feed(fifo, session_bytes(session))
    assert_central_holds_exactly(stack, session, items)
    wait_until(lambda: all_acknowledged(device), 30, "the device to see every acknowledgement")
    assert device.status()["events"] == {"price_list": 1, "sale": 200, "scanner": 1}
    log = stack.central_log.read_text()
    assert "batch rejected" not in log
    assert log.count("batch accepted") >= len(session) // stack.uplink["batch_max_events"]

    # Nothing scanned is readable in the journal or its WAL, while the agent runs.
    raw = b"".join(p.read_bytes() for p in device.directory.glob("journal.db*"))
    assert (device.directory / "journal.db-wal").exists()
    for code, _ in session:
        assert code.encode() not in raw
    for secret in (b"unit_price", b"Brand ", b"CNY"):
        assert secret not in raw


def _taken(device) -> int:
    """How many times an agent of ``device`` has taken its scanner, by its log."""
    return len(re.findall(r"scanner seq=\d+ taken ", device.log.read_text()))


def test_sigkills_mid_scan_book_no_fragment_and_lose_nothing_recorded(stack, shop, fifo):
    """The agent killed at random moments while a scanner types: no tail of a cut scan is ever a sale."""
    device, items = shop
    rng = random.Random(5)
    session = shop_session(items, count=90, seed=17)
    device.start()
    kills, down = 0, []  # when each agent was killed, and when the next took the scanner
    with LiveScanner(fifo, session) as scanner:
        while not scanner.done.wait(rng.uniform(0.8, 2.0)):
            device.kill()
            kills += 1
            killed, taken = time.time(), _taken(device)
            device.start()
            wait_until(lambda: _taken(device) > taken, 60, "the scanner taken by the next agent")
            down.append((killed, time.time()))
    wait_until(lambda: all_acknowledged(device) and sales_recorded(device) > 0, 60, "every event acknowledged")
    sales = stack.sales()
    typed = Counter(code for code, _ in session)
    booked = Counter(s["code"] for s in sales)
    assert kills >= 3
    assert not booked - typed, f"sales of codes nobody scanned (fragments): {sorted(booked - typed)}"
    assert len({(s["device"], s["seq"]) for s in sales}) == len(sales)
    # What a kill costs is the scan it cut, and the next if it began before the new agent opened the scanner;
    # and the scans typed while no agent ran, read together as the next one starts, should a kill come before
    # it has made them durable (never answered: scanned again at a counter). On a loaded machine this test's
    # own typing can stall inside a scan, which is then refused as typed or cut off, as it should be: not the
    # kills' cost.
    waited = sum(any(start <= at <= end for start, end in down) for at in scanner.started)
    shown = device.command("show", "--last", "10000")
    assert shown.returncode == 0, shown.stderr
    refusals = [json.loads(line)["body"]["reason"] for line in shown.stdout.splitlines()
                if json.loads(line)["kind"] == "refused"]
    stalled = sum(reason != STARTED_UNSEEN for reason in refusals)
    assert len(sales) >= len(session) - 2 * kills - waited - stalled, (len(sales), len(session), kills, waited,
                                                                        refusals)
    assert len(sales) + len(refusals) >= len(session) - kills - waited, (len(sales), len(refusals), kills, waited)
    # Lose nothing recorded, exactly: an agent logs a sale only once it is durable (the beep comes after), so
    # every sale any of the killed agents logged is at central.
    logged = {int(seq) for seq in re.findall(r"\bsale seq=(\d+) scanner=", device.log.read_text())}
    assert logged and logged <= {s["seq"] for s in sales}, sorted(logged - {s["seq"] for s in sales})
    assert "session=" in device.log.read_text()


def test_a_broker_that_goes_away_loses_and_duplicates_nothing(stack, shop, fifo):
    device, items = shop
    session = shop_session(items, seed=13)
    device.start()
    feed(fifo, session_bytes(session[:100]))
    wait_until(lambda: len(stack.sales()) == 100, 30, "the first 100 sales at central")
    stack.stop_broker()
    feed(fifo, session_bytes(session[100:]))
    wait_until(lambda: sales_recorded(device) == 200, 30, "200 scans durable while the broker is away")
    assert len(stack.sales()) == 100
    stack.start_broker()
    assert_central_holds_exactly(stack, session, items)


def _batch(key, seq: int, code: str) -> bytes:
    event = Event(seq, "sale", {"code": code, "quantity": 1, "known": False, "unit_price": None, "currency": "CNY"})
    return encode_batch([event], device=DEVICE, session=1, key=key, sent_at=time.time())


def _publish(stack, payload: bytes, device: str = DEVICE) -> None:
    mqtt_publish.single(
        f"counterbox/v1/devices/{device}/batch", payload, qos=1,
        hostname="127.0.0.1", port=stack.broker_port, protocol=MQTTv5,
    )


def _tamper(token: bytes) -> bytes:
    header, payload, signature = token.split(b".")
    raw = bytearray(payload)
    raw[len(raw) // 2] = ord("A") if raw[len(raw) // 2] != ord("A") else ord("B")
    return b".".join([header, bytes(raw), signature])


@pytest.mark.foreign_messages  # hand-made batches, some malformed on purpose
@pytest.mark.parametrize(
    "forge,reason",
    [
        (lambda key: _tamper(_batch(key, 1, "FORGED-1")), "signature check failed"),
        (lambda key: _batch(Ed25519PrivateKey.generate(), 1, "FORGED-2"), "signature check failed"),
        (lambda key: _batch(key, 1, "FORGED-3")[:-3] + b"AAA", "signature check failed"),
        (lambda key: b"not a token at all", "signature check failed"),
        (lambda key: jws.sign(b"[]", key, kid=DEVICE, typ=BATCH_TYPE).encode(), "payload is a JSON list, not an object"),
        (lambda key: jws.sign(b"null", key, kid=DEVICE, typ=BATCH_TYPE).encode(), "payload is a JSON NoneType"),
    ],
    ids=["one-byte-changed", "another-key", "signature-altered", "garbage", "array", "null"],
)
def test_a_forged_or_altered_batch_is_rejected_and_not_stored(stack, tmp_path, forge, reason):
    device = stack.provision(DEVICE, scanners=[str(tmp_path / "unused")])
    key = load_key(device.directory / "device.key")
    _publish(stack, forge(key))
    _publish(stack, _batch(key, 1, "GENUINE"))  # central handles messages in order: once this is in, so was the forgery
    sales = wait_until(stack.sales, 20, "the genuine batch at central")
    assert [s["code"] for s in sales] == ["GENUINE"]
    wait_until(lambda: "batch rejected" in stack.central_log.read_text(), 5, "the rejection to be logged")
    log = stack.central_log.read_text()
    rejected = [line for line in log.splitlines() if "batch rejected" in line]
    assert len(rejected) == 1 and reason in rejected[0] and f"devices/{DEVICE}/batch" in rejected[0]
    assert "internal error" not in log and "Traceback" not in log


@pytest.mark.foreign_messages  # hand-made batches, some malformed on purpose
def test_a_replayed_batch_is_stored_once_and_an_unknown_device_not_at_all(stack, tmp_path):
    device = stack.provision(DEVICE, scanners=[str(tmp_path / "unused")])
    key = load_key(device.directory / "device.key")
    genuine = _batch(key, 1, "ONCE")
    _publish(stack, _batch(key, 1, "ONCE"), device="shop-unknown")
    _publish(stack, genuine)
    _publish(stack, genuine)
    _publish(stack, _batch(key, 2, "TWICE"))
    sales = wait_until(lambda: len(s := stack.sales()) == 2 and s, 20, "two sales at central")
    assert [s["code"] for s in sales] == ["ONCE", "TWICE"]
    log = stack.central_log.read_text()
    assert "device 'shop-unknown' is not registered" in log
    assert "seq=1..1 new=0 acked_seq=1" in log  # the replay added nothing


@pytest.mark.foreign_messages  # hand-made batches, some malformed on purpose
def test_a_reused_seq_with_other_content_is_refused_not_silently_dropped(stack, tmp_path):
    """A device whose journal was wiped starts again at seq 1: its new sales must not vanish as 'already held'."""
    device = stack.provision(DEVICE, scanners=[str(tmp_path / "unused")])
    key = load_key(device.directory / "device.key")
    _publish(stack, _batch(key, 1, "BEFORE-RESET"))
    _publish(stack, _batch(key, 1, "AFTER-RESET"))
    _publish(stack, _batch(key, 2, "NEXT"))
    sales = wait_until(lambda: len(s := stack.sales()) == 2 and s, 20, "two sales at central")
    assert [s["code"] for s in sales] == ["BEFORE-RESET", "NEXT"]
    log = stack.central_log.read_text()
    assert "seq 1 differs from the event central already holds for shop-0001" in log


def _moved_away(device) -> None:
    """What an operator does with a journal the agent refuses ("move it away"): the next start makes a new one."""
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        path = device.directory / name
        if path.exists():
            path.rename(device.directory / (name + ".moved"))


def _three_sales_delivered(stack, fifo, tmp_path, name: str):
    """A box ``name`` with a price list loaded, three sales scanned and acknowledged, stopped; and the codes."""
    device = stack.provision(name, scanners=[str(fifo)])
    csv, items = price_list(50)
    (tmp_path / "prices.csv").write_text(csv)
    assert device.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    codes = list(items)
    device.start()
    feed(fifo, scans(codes[:3]))
    wait_until(lambda: (s := device.status())["acked_seq"] == s["last_seq"] and s["events"].get("sale") == 3, 30,
               f"{name}'s sales acknowledged")
    device.stop()
    return device, codes


def test_a_journal_made_anew_under_the_same_id_is_refused_at_central_and_loses_nothing(stack, fifo, tmp_path):
    """The new journal numbers its sales from 1 again. Once, central stored those past the seqs it held and its
    acknowledgement (and the old one, retained) moved the box's cursor over the ones it had refused: three sales
    acknowledged and never stored. Now central refuses every batch of the new journal, says why, and the box
    keeps all of them, unacknowledged, for an operator to see (its backlog) and deal with."""
    device, codes = _three_sales_delivered(stack, fifo, tmp_path, "shop-reset")
    _moved_away(device)
    assert device.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    device.start()
    feed(fifo, scans(codes[10:16]))
    wait_until(lambda: device.status()["events"].get("sale") == 6, 30, "the new journal's sales recorded")
    device.stop()
    device.start()  # the retained acknowledgement of the first journal comes again
    wait_until(lambda: "acknowledgement refused: acknowledgement is for journal" in device.log.read_text(), 30,
               "the first journal's acknowledgement refused")
    wait_until(lambda: "the box's journal was made anew or replaced" in stack.central_log.read_text(), 30,
               "central refusing the new journal")
    status = device.status()
    device.stop()
    assert status["acked_seq"] == 0 and status["events"]["sale"] == 6  # every event of it kept
    assert [s["code"] for s in stack.sales()] == codes[:3]


def test_a_journal_restored_onto_a_box_with_another_id_delivers_the_rest_as_that_box(stack, fifo, tmp_path):
    """docs/configuration.md: a box restored with a new identity sends the unacknowledged events as that device.
    Once, central counted that device from seq 1, acknowledged 0 for ever, and the box resent its first batches
    without end: what lay past them never left it."""
    old, codes = _three_sales_delivered(stack, fifo, tmp_path, "shop-old")
    assert old.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0  # one central has not
    (tmp_path / "pass").write_text("a long passphrase\n")
    made = old.command("backup", str(tmp_path / "box.cbbackup"), "--passphrase-file", str(tmp_path / "pass"))
    assert made.returncode == 0, made.stderr

    new = stack.provision("shop-new", scanners=[str(fifo)], uplink={"batch_max_events": 2, "max_in_flight": 2})
    done = new.command("restore", str(tmp_path / "box.cbbackup"), "--passphrase-file", str(tmp_path / "pass"))
    assert done.returncode == 0, done.stderr
    new.start()
    feed(fifo, scans(codes[5:13]))
    wait_until(lambda: (s := new.status())["acked_seq"] == s["last_seq"] and s["events"].get("sale") == 11, 30,
               "the restored box's outbox drained")
    new.stop()
    held = [(sale["device"], sale["code"]) for sale in stack.sales()]
    assert sorted(held) == sorted([("shop-new", code) for code in codes[5:13]] + [("shop-old", code) for code in codes[:3]])
    assert "journal delivers as device=shop-new from seq=" in new.log.read_text()
