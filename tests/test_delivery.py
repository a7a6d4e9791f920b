"""Delivery is central's signed acknowledgement, and nothing less."""

from __future__ import annotations

import json
import re
import time

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTv5

from provisioning import jws, protocol
from provisioning.identity import load_key
from storage import Event

from .harness import feed, price_list, scans, wait_until

CODES = ["6901028075831", "96385074", "036000291452"]


def test_a_publish_refused_by_the_broker_acl_is_not_delivery(stack, fifo):
    """paho reports an ACL-refused QoS 1 publish as published (PUBACK, reason 135); the journal keeps it."""
    stack.stop_broker()
    stack.start_broker(acl="topic read counterbox/#\ntopic write counterbox/v1/devices/+/ack\n")
    device = stack.provision("shop-acl", scanners=[str(fifo)])
    device.start()
    feed(fifo, scans(CODES))
    refusal = "not published: broker refused the publish: Not authorized (135)"
    wait_until(lambda: refusal in device.log.read_text(), 20, "the refusal to be logged")
    status = device.status()
    assert (status["events"]["sale"], status["acked_seq"]) == (3, 0)
    assert stack.sales() == []

    stack.stop_broker()
    stack.start_broker()  # the ACL is fixed: the same events go through
    sales = wait_until(lambda: len(s := stack.sales()) == 3 and s, 30, "the sales after the ACL is fixed")
    assert [s["code"] for s in sales] == CODES


def test_an_acknowledgement_not_signed_by_central_moves_nothing(stack, fifo):
    stack.stop_central()
    device = stack.provision("shop-ack", scanners=[str(fifo)])
    device.start()
    feed(fifo, scans(CODES))
    wait_until(lambda: device.status()["events"].get("sale") == 3, 20, "three durable scans")
    last = device.status()["last_seq"]
    forged = jws.sign(json.dumps({"v": 1, "device": "shop-ack", "ack_seq": last}).encode(), Ed25519PrivateKey.generate(),
                      kid="central", typ="counterbox-ack+jws")
    mqtt_publish.single("counterbox/v1/devices/shop-ack/ack", forged, qos=1, hostname="127.0.0.1",
                        port=stack.broker_port, protocol=MQTTv5)
    wait_until(lambda: "acknowledgement refused" in device.log.read_text(), 20, "the forged acknowledgement refused")
    assert device.status()["acked_seq"] == 0

    stack.start_central()
    wait_until(lambda: device.status()["acked_seq"] == last, 30, "central's genuine acknowledgement")
    assert [s["code"] for s in stack.sales()] == CODES


def test_batches_sent_while_central_is_away_arrive_when_it_returns(stack, fifo):
    """The broker keeps them in central's persistent session: the device does not send them again."""
    device = stack.provision("shop-away", scanners=[str(fifo)], uplink={"ack_timeout": 600.0})
    device.start()
    feed(fifo, scans(CODES[:1]))
    wait_until(lambda: len(stack.sales()) == 1, 20, "central running")
    stack.stop_central()
    feed(fifo, scans(CODES[1:]))
    wait_until(lambda: device.status()["events"].get("sale") == 3, 20, "durable scans while central is away")
    stack.start_central()
    sales = wait_until(lambda: len(s := stack.sales()) == 3 and s, 30, "all sales once central is back")
    assert [s["code"] for s in sales] == CODES
    assert len({s["seq"] for s in sales}) == 3


def test_a_20000_item_price_list_is_delivered_and_nothing_waits_behind_it(stack, fifo, tmp_path):
    device = stack.provision("shop-big", scanners=[str(fifo)])
    csv_text, items = price_list(20_000)
    (tmp_path / "prices.csv").write_text(csv_text)
    loaded = device.command("prices", "load", str(tmp_path / "prices.csv"))
    assert loaded.returncode == 0, loaded.stderr
    device.start()
    code = next(iter(items))
    feed(fifo, scans([code]))
    wait_until(lambda: device.status()["acked_seq"] == device.status()["last_seq"] == 3, 60, "everything acknowledged")
    export = stack.central_command("export", "--kind", "price_list")
    [held] = [json.loads(line) for line in export.stdout.splitlines()]
    assert len(held["items"]) == 20_000 and held["items"][-1]["barcode"] in items
    assert [(s["code"], s["unit_price"]) for s in stack.sales()] == [(code, items[code][1])]


def test_an_event_no_batch_could_carry_is_refused_when_recorded_with_a_clear_error(tmp_path):
    from demo.stack import Stack

    with Stack(tmp_path / "stack") as offline:  # no broker needed: the refusal is on the box
        device = offline.provision("shop-huge", scanners=[str(tmp_path / "unused")])
        csv_text, _ = price_list(100_000)
        (tmp_path / "prices.csv").write_text(csv_text)
        result = device.command("prices", "load", str(tmp_path / "prices.csv"))
        assert result.returncode == 2
        assert re.fullmatch(r"counterbox: error: a price_list event of \d+ bytes is over the limit of "
                            rf"{protocol.MAX_EVENT_BYTES} bytes that one batch can carry; it was not recorded\n",
                            result.stderr), result.stderr
        assert not (device.directory / "journal.db").exists() or device.status()["last_seq"] == 0


def test_a_retained_acknowledgement_moves_the_cursor_of_a_device_that_missed_it(stack, tmp_path):
    """Central stored and acknowledged while the device was down; central is gone when the device returns."""
    device = stack.provision("shop-late", scanners=[str(tmp_path / "unused")])
    csv_text, _ = price_list(3)
    (tmp_path / "prices.csv").write_text(csv_text)
    assert device.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    [shown] = [json.loads(line) for line in device.command("show", "1").stdout.splitlines()]
    key = load_key(device.directory / "device.key")
    batch = protocol.encode_batch([Event(1, shown["kind"], shown["body"])], device="shop-late", session=1, key=key,
                                  sent_at=time.time())
    mqtt_publish.single("counterbox/v1/devices/shop-late/batch", batch, qos=1, hostname="127.0.0.1",
                        port=stack.broker_port, protocol=MQTTv5)
    wait_until(lambda: "batch accepted device=shop-late" in stack.central_log.read_text(), 20, "central to store it")
    stack.stop_central()
    device.start()
    wait_until(lambda: device.status()["acked_seq"] == 1, 20, "the retained acknowledgement")


def test_no_more_batches_are_in_flight_than_allowed(stack, fifo):
    seen: list[bytes] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    watcher.on_message = lambda client, userdata, message: seen.append(message.payload)
    watcher.connect("127.0.0.1", stack.broker_port)
    watcher.subscribe("counterbox/v1/devices/shop-flight/batch", qos=1)
    watcher.loop_start()
    try:
        stack.stop_central()
        device = stack.provision("shop-flight", scanners=[str(fifo)],
                                 uplink={"max_in_flight": 2, "batch_max_events": 1, "ack_timeout": 600.0})
        device.start()
        feed(fifo, scans(CODES * 3))
        wait_until(lambda: device.status()["events"].get("sale") == 9, 20, "nine durable scans")
        time.sleep(1.0)
        assert len(seen) == 2  # nine events waiting, no acknowledgement: two batches out, the rest held
        stack.start_central()
        wait_until(lambda: (s := device.status())["acked_seq"] == s["last_seq"], 30, "everything acknowledged")
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def _watch(stack, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    seen: list[bytes] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    watcher.on_message = lambda client, userdata, message: seen.append(message.payload)
    watcher.connect("127.0.0.1", stack.broker_port)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()
    return watcher, seen


def _batch_sizes(tokens: list[bytes]) -> list[int]:
    return [len(json.loads(jws.b64url_decode(t.split(b".")[1].decode()))["events"]) for t in tokens]


def test_a_scan_on_a_quiet_link_goes_at_once_and_scans_gather_only_behind_a_batch_in_flight(stack, fifo):
    watcher, seen = _watch(stack, "counterbox/v1/devices/shop-quick/batch")
    try:
        # batch_max_delay is far longer than the test waits: nothing here may wait for it.
        device = stack.provision("shop-quick", scanners=[str(fifo)],
                                 uplink={"batch_max_delay": 600.0, "ack_timeout": 600.0})
        device.start()
        wait_until(lambda: "subscribed to" in device.log.read_text(), 20, "the device online")
        feed(fifo, scans(CODES[:1]))
        wait_until(lambda: device.status()["acked_seq"] == device.status()["last_seq"] > 0, 10,
                   "the first scan acknowledged without waiting for batch_max_delay")

        stack.stop_central()  # its session stays at the broker: batches wait there for it
        before = len(seen)
        feed(fifo, scans(CODES[1:2]))  # goes at once, and stays in flight: nobody acknowledges it
        wait_until(lambda: len(seen) == before + 1, 10, "the second scan published at once")
        assert _batch_sizes(seen[before:]) == [1]
        published = len(seen)
        feed(fifo, scans(CODES * 2))  # behind a batch in flight: these gather
        wait_until(lambda: device.status()["events"].get("sale") == 8, 20, "eight durable scans")
        time.sleep(0.5)
        assert len(seen) == published
        stack.start_central()
        wait_until(lambda: (s := device.status())["acked_seq"] == s["last_seq"], 30, "everything acknowledged")
        assert _batch_sizes(seen[published:]) == [6]  # the acknowledgement let them go, together
    finally:
        watcher.loop_stop()
        watcher.disconnect()
