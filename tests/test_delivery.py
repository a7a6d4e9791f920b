"""Delivery is central's signed acknowledgement, and nothing less."""

from __future__ import annotations

import json
import re

import paho.mqtt.publish as mqtt_publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTv5

from provisioning import jws, protocol

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
    device = stack.provision("shop-away", scanners=[str(fifo)])
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
