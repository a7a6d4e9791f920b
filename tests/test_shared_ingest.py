"""Several central ingest instances share the load; one killed loses nothing (the boxes send again)."""

from __future__ import annotations

import os
import signal

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.store import CentralStore
from demo.stack import Stack
from drivers.barcode import gs1_check_digit
from provisioning import protocol
from provisioning.identity import public_key_text
from storage import Event

from .harness import feed, scans, wait_until


def _codes(device: int, start: int, n: int) -> list[str]:
    return [(body := f"69{device:02d}{k:08d}") + str(gs1_check_digit(body)) for k in range(start, start + n)]


def test_two_instances_share_the_batches_and_a_killed_one_loses_nothing(stack, tmp_path):
    stack.stop_central()
    first = stack.start_ingest("ingest-a", share="ingest")
    stack.start_ingest("ingest-b", share="ingest")
    boxes = []
    for n in range(4):
        fifo = tmp_path / f"box{n}.fifo"
        os.mkfifo(fifo)
        device = stack.provision(f"shop-{n}", scanners=[str(fifo)], uplink={"batch_max_events": 2, "ack_timeout": 2.0})
        device.start()
        boxes.append((device, fifo))

    def all_acknowledged(sales_each: int) -> bool:
        return all((s := d.status())["events"].get("sale") == sales_each and s["acked_seq"] == s["last_seq"]
                   for d, _ in boxes)

    for n, (_, fifo) in enumerate(boxes):
        feed(fifo, scans(_codes(n, 0, 6)))
    wait_until(lambda: all_acknowledged(6), 60, "the first round acknowledged")
    logs = [(stack.directory / f"{name}.log").read_text() for name in ("ingest-a", "ingest-b")]
    assert all("batch accepted" in log for log in logs), "both instances took a share"

    # Frozen, the first instance still gets its turn of the next batches and handles none; then it is
    # killed with them: with a clean session they are gone from the broker, and only the boxes' resend
    # (ack_timeout) brings them to the instance left.
    first.send_signal(signal.SIGSTOP)
    for n, (_, fifo) in enumerate(boxes):
        feed(fifo, scans(_codes(n, 6, 6)))
    wait_until(lambda: all(d.status()["events"].get("sale") == 12 for d, _ in boxes), 30, "the second round recorded")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: all_acknowledged(12), 60, "the second round acknowledged by the instance left")
    sales = stack.sales()
    assert sorted((s["device"], s["code"]) for s in sales) == sorted(
        (f"shop-{n}", code) for n in range(4) for code in _codes(n, 0, 12))  # each once, none lost


def test_on_postgresql_one_devices_batch_waiting_for_its_row_holds_up_no_other_device(tmp_path, postgresql_url):
    """One ingest handles two messages at once on PostgreSQL: a batch that waits (here for its device's row, held
    by another transaction: a peer central frozen mid-transaction, an operator's open session) stops no other
    device's from being stored and acknowledged, nor does the box's resend of it. Once, the second worker went on
    only until the broker's window of unacknowledged messages filled behind the first, and a resend took both
    workers: every shop's delivery stopped for as long as the row was held. The wait now ends after the busy
    timeout, and the box sends again what was not stored."""
    with Stack(tmp_path / "stack", database=postgresql_url) as stack:
        stack.start_broker()
        stack.start_central()
        store = CentralStore(postgresql_url)
        keys = {device: Ed25519PrivateKey.generate() for device in ("shop-a", "shop-b")}
        for device, key in keys.items():
            store.register(device, public_key_text(key))
        acked = lambda device: store.device(device).acked_seq  # noqa: E731
        holder = store.engine.connect()
        holder.execute(sa.text("SELECT 1 FROM devices WHERE device_id = 'shop-a' FOR UPDATE"))  # shop-a's row, held
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher", protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", stack.broker_port)
        publisher.loop_start()

        def send(device: str, first: int) -> None:
            token = protocol.encode_batch([Event(seq, "sale", {"n": seq}) for seq in range(first, first + 3)],
                                          device=device, session=1, key=keys[device], sent_at=0)
            publisher.publish(protocol.batch_topic(protocol.DEFAULT_PREFIX, device), token, qos=1).wait_for_publish(5)

        try:
            send("shop-a", 1)
            send("shop-a", 1)  # the box's resend
            for first in range(1, 60 * 3, 3):  # more than the broker lets wait unacknowledged
                send("shop-b", first)
            wait_until(lambda: acked("shop-b") == 60 * 3, 30, "shop-b's batches stored while shop-a's row is held")
            assert acked("shop-a") == 0
            wait_until(lambda: "another transaction held what this one needed for over 5 s" in
                       stack.central_log.read_text(), 20, "the wait said")
            holder.rollback()
            send("shop-a", 1)  # sent again, as the box does with what is not acknowledged
            wait_until(lambda: acked("shop-a") == 3, 20, "shop-a's batch stored once its row is free")
            assert "Traceback" not in stack.central_log.read_text()
        finally:
            holder.close()
            publisher.loop_stop()
            publisher.disconnect()
            store.close()
