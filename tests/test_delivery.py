"""Delivery is central's signed acknowledgement, and nothing less."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTv5

from agent.config import UplinkConfig
from agent.downlink import Downlink
from agent.mqtt import MqttLink
from agent import uplink as uplink_module
from agent.uplink import Uplink
from provisioning import jws, protocol
from provisioning.identity import load_key
from storage import Event, Journal, Store

from .harness import feed, price_list, scans, wait_until
from .journals import rot

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
                                  sent_at=time.time(), journal=device.status()["journal"])
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


# -- The uplink in this process ---------------------------------------------------------------------
# Central's side is played by the test (``Central``): it sees every batch the broker carries for the
# device, verified with the device's key, and acknowledges, signed with central's key, what the test
# says when it says, so that what the uplink does while batches wait for acknowledgement is seen.

PREFIX = "counterbox/v1"


class Central:
    """Every batch published for ``device`` (as the events' seqs), and acknowledgements on demand."""

    def __init__(self, stack, device: str, device_key: Ed25519PrivateKey):
        self.device = device
        self._device_key = device_key.public_key()
        self._central_key = load_key(stack.central_key)
        self._tokens: list[bytes] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=MQTTv5)
        self.client.on_message = lambda client, userdata, message: self._tokens.append(message.payload)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", stack.broker_port)
        self.client.subscribe(protocol.batch_topic(PREFIX, device), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "central's side did not subscribe"

    @property
    def public_key(self):
        return self._central_key.public_key()

    def tokens(self) -> list[bytes]:
        return list(self._tokens)

    def batches(self) -> list[list[int]]:
        """The seqs of each batch received so far, each batch verified as central verifies it."""
        return [[event["seq"] for event in protocol.decode_batch(token, device=self.device,
                                                                 key=self._device_key).events]
                for token in self.tokens()]

    def wait_for(self, count: int, what: str) -> list[list[int]]:
        """The batches, once there are ``count`` of them (called in a thread: it polls)."""
        return wait_until(lambda: len(b := self.batches()) >= count and b, 20, what)

    def acknowledge(self, seq: int, journal: str | None = None) -> None:
        self.client.publish(protocol.ack_topic(PREFIX, self.device), self.ack(seq, journal), qos=1)

    def ack(self, seq: int, journal: str | None = None) -> bytes:
        """Central's signed acknowledgement of everything up to ``seq`` of ``journal`` (by default the one the
        batches name, as central acknowledges), as it publishes it."""
        if journal is None:
            named = {protocol.decode_batch(token, device=self.device, key=self._device_key).journal
                     for token in self.tokens()}
            assert len(named) == 1, f"no single journal to acknowledge: the batches name {named}"
            journal = named.pop()
        return protocol.encode_ack(self.device, seq, key=self._central_key, journal=journal)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.asynccontextmanager
async def uplink_running(stack, central: Central, key: Ed25519PrivateKey, journal: Path, *, before=None, **settings):
    """An Uplink and the Downlink that hands it acknowledgements, on a real journal (``before(journal)`` done in it
    first) and the stack's broker, as the daemon runs them. Unless a test sets them, batch_max_delay and
    ack_timeout are longer than any test: a batch goes because the test's events or acknowledgements send it."""
    config = UplinkConfig(**{"batch_max_delay": 600.0, "ack_timeout": 600.0, **settings})
    store = await Store.open(journal, b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
    try:
        if before is not None:
            await store.write(before)
        session = await store.write(lambda journal: journal.start_session())
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id=central.device,
                            subscriptions=[protocol.ack_topic(PREFIX, central.device)]) as link:
            uplink = Uplink(store=store, link=link, device_id=central.device, session=session, key=key,
                            central_key=central.public_key, config=config)
            downlink = Downlink(store=store, uplink=uplink, device_id=central.device, region="", trusted={},
                                topic_prefix=PREFIX)
            tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(downlink.run(link))]
            try:
                yield Recorder(store, uplink, tasks[0])
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        await store.close()


@dataclass
class Recorder:
    """What the daemon does on the uplink's side: records events and wakes the uplink."""

    store: Store
    uplink: Uplink
    task: asyncio.Task  # the uplink's

    async def record(self, count: int = 1, *, size: int = 0) -> None:
        """``count`` misreads, each in its own commit, the uplink woken after each."""
        for _ in range(count):
            await self.store.append("misread", misread(size))
            self.uplink.wake.set()

    async def acked_seq(self) -> int:
        return await self.store.read(lambda journal: journal.acked_seq())

    async def wait_acked(self, seq: int) -> None:
        """Until the journal's cursor is at ``seq``: central's acknowledgement reached it."""
        async with asyncio.timeout(20):
            while await self.acked_seq() != seq:
                await asyncio.sleep(0.05)


def misread(size: int = 0) -> dict:
    return {"code": "7" * size or "NOT-A-CODE", "symbology": "raw", "aim": None, "scanner": "/dev/input/event3",
            "scanned_at": protocol.rfc3339(time.time()), "reason": "no check digit"}


def connect_as(stack, client_id: str) -> None:
    """Connect to the broker with ``client_id``, and leave: the broker ends the connection that had it."""
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5)
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", stack.broker_port)
    client.loop_start()
    try:
        assert connected.wait(10), f"no connection as {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()


def recorded(count: int, *, size: int = 0):
    """``count`` misreads recorded in one commit (as a backlog is found at a start)."""
    return lambda journal: [journal.append("misread", misread(size)) for _ in range(count)]


def run_uplink(stack, tmp_path, device: str, test, **settings) -> None:
    """``await test(central, box)`` while the uplink of ``device`` runs (``uplink_running``) against central's side."""
    key = Ed25519PrivateKey.generate()
    central = Central(stack, device, key)

    async def main():
        async with uplink_running(stack, central, key, tmp_path / "journal.db", **settings) as box:
            await test(central, box)

    try:
        asyncio.run(main())
    finally:
        central.close()


def test_the_uplink_starts_from_the_cursor_the_journal_holds(stack, tmp_path):
    def held_up_to_2(journal):
        recorded(3)(journal)
        journal.acknowledge(2)

    async def test(central, box):
        assert await asyncio.to_thread(central.wait_for, 1, "the first batch") == [[3]]
        central.acknowledge(3)
        await box.wait_acked(3)

    run_uplink(stack, tmp_path, "shop-cursor", test, before=held_up_to_2)


def test_events_behind_a_batch_in_flight_go_together_when_it_is_acknowledged(stack, tmp_path):
    async def test(central, box):
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 1, "the first event, at once on a quiet link") == [[1]]
        await box.record(3)  # one at a time, each waking the uplink: they wait behind batch 1
        central.acknowledge(1)
        assert await asyncio.to_thread(central.wait_for, 2, "the events that waited") == [[1], [2, 3, 4]]
        assert await box.acked_seq() == 1  # the acknowledgement moved the journal's cursor
        central.acknowledge(4)
        await box.wait_acked(4)

    run_uplink(stack, tmp_path, "shop-gather", test)


def test_a_batch_of_batch_max_events_goes_without_waiting_for_the_acknowledgement_of_those_before(stack, tmp_path):
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await box.record(2)
        assert await asyncio.to_thread(central.wait_for, 2, "a full batch, unacknowledged") == [[1], [2, 3]]

    run_uplink(stack, tmp_path, "shop-full", test, batch_max_events=2)


def test_a_batch_cut_by_batch_max_bytes_goes_at_once_when_more_events_wait_behind_it(stack, tmp_path):
    async def test(central, box):
        await box.record(size=600)
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await box.store.write(recorded(3, size=600))  # one commit: three, each a batch of its own
        box.uplink.wake.set()
        assert await asyncio.to_thread(central.wait_for, 3, "the batches with more behind them") == [[1], [2], [3]]
        central.acknowledge(3)  # the last one went when nothing was in flight
        assert await asyncio.to_thread(central.wait_for, 4, "the last event") == [[1], [2], [3], [4]]

    run_uplink(stack, tmp_path, "shop-bytes", test, batch_max_bytes=1024)


def test_an_event_behind_a_batch_in_flight_waits_for_no_longer_than_batch_max_delay(stack, tmp_path):
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 2, "the second, unacknowledged") == [[1], [2]]

    run_uplink(stack, tmp_path, "shop-delay", test, batch_max_delay=0.5)


def test_no_more_than_max_in_flight_batches_go_and_without_progress_for_ack_timeout_they_go_again(stack, tmp_path):
    """Again from the first unacknowledged event: those before it central holds."""
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        central.acknowledge(1)
        await box.wait_acked(1)
        await box.store.write(recorded(3))
        box.uplink.wake.set()
        batches = await asyncio.to_thread(central.wait_for, 5, "the batches in flight sent again")
        assert batches[:5] == [[1], [2], [3], [2], [3]]  # seq 4 waits: two batches are in flight
        central.acknowledge(3)
        await box.wait_acked(3)
        assert (await asyncio.to_thread(central.wait_for, 6, "the last event"))[-1] == [4]

    run_uplink(stack, tmp_path, "shop-resend", test, batch_max_events=1, max_in_flight=2, ack_timeout=2.0)


def test_without_any_acknowledgement_for_ack_timeout_the_first_event_goes_again(stack, tmp_path):
    """Central never answered (it was down, its answer lost): from seq 1 again, after ack_timeout, unwoken."""
    async def test(central, box):
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 2, "the batch, sent again") == [[1], [1]]

    run_uplink(stack, tmp_path, "shop-unanswered", test, ack_timeout=1.0)


def test_resends_with_no_acknowledgement_between_them_wait_longer_each_time_and_an_acknowledgement_ends_that(
        stack, tmp_path):
    """Central away: each copy sent again joins its queue at the broker. Resent every ack_timeout (0.5 s here),
    5 s would bring ten copies; waiting twice as long each time (0.5, 1, 2 s), four at most."""
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the batch")
        await asyncio.sleep(5.0)
        copies = len(central.batches())
        assert 2 <= copies <= 4, copies
        assert box.uplink._resends == copies - 1
        central.acknowledge(1)
        await box.wait_acked(1)
        assert box.uplink._resends == 0  # the next batch waits ack_timeout again

    run_uplink(stack, tmp_path, "shop-backoff", test, ack_timeout=0.5)


def counting_reads(box) -> list[float]:
    """When the uplink reads the journal for its next batch, from now on."""
    read, reads = box.uplink._next_batch, []

    async def counted(after):
        reads.append(time.monotonic())
        return await read(after)

    box.uplink._next_batch = counted
    return reads


def test_an_uplink_with_nothing_to_send_or_waiting_for_its_time_does_not_poll_the_journal(stack, tmp_path):
    """A box is quiet most of the day: its uplink sleeps until an event, an acknowledgement, a new connection or
    the end of a wait it set (ack_timeout, batch_max_delay) wakes it, never in a loop of short waits."""
    async def test(central, box):
        reads = counting_reads(box)
        await asyncio.sleep(1.0)  # nothing recorded, nothing in flight
        assert len(reads) <= 2, reads  # its first look, and perhaps one as its connection came up
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await box.record()  # behind a batch in flight: waits for its acknowledgement or batch_max_delay
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(central.batches) == [[1]]
        assert len(reads) <= 5, reads  # the first event's, the second's, and at most a wake-up or two more
        central.acknowledge(1)
        assert await asyncio.to_thread(central.wait_for, 2, "the second, once the first is acknowledged") == [[1], [2]]

    run_uplink(stack, tmp_path, "shop-quiet", test)


def test_events_central_acknowledges_before_they_are_sent_are_not_sent(stack, tmp_path):
    """Central had them from an earlier run of the box: its acknowledgement spares them the trip, also when it
    arrives while the uplink reads them from the journal (five times: that moment is not the test's to choose)."""
    async def test(central, box):
        for sent, first in enumerate(range(1, 16, 3), 1):
            await box.record()  # nothing in flight: it goes at once
            await asyncio.to_thread(central.wait_for, sent, "the batch")
            await box.record(2)  # waiting behind it
            central.acknowledge(first + 2)
            await box.wait_acked(first + 2)
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 6, "the last event") == [[s] for s in range(1, 17, 3)]

    run_uplink(stack, tmp_path, "shop-spared", test)


def test_an_acknowledgement_that_arrives_while_the_journal_is_read_leaves_the_uplink_running(stack, tmp_path):
    """The moment the previous test cannot choose, made certain: the acknowledgement of the very events the
    uplink has just read arrives before it sends them. It sends none of them, and goes on with the next."""
    async def test(central, box):
        read_batch, raced = box.uplink._next_batch, []

        async def read_then_acknowledged(after):
            events, full = await read_batch(after)
            if events and not raced:
                raced.append(events[-1].seq)
                journal = await box.store.read(lambda journal: journal.journal_id())
                await box.uplink.acknowledged(central.ack(events[-1].seq, journal))
            return events, full

        box.uplink._next_batch = read_then_acknowledged
        await box.record()
        async with asyncio.timeout(20):
            while not raced:
                await asyncio.sleep(0.01)
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 1, "the next event") == [[2]]
        assert not box.task.done()

    run_uplink(stack, tmp_path, "shop-raced", test)


def test_after_a_reconnection_the_uplink_sends_again_from_the_first_unacknowledged_event(stack, tmp_path):
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await box.record()  # waits behind batch 1
        link = box.uplink.link
        before = link.generation
        await asyncio.to_thread(connect_as, stack, "shop-reconnect")  # the broker drops the uplink's connection
        async with asyncio.timeout(20):
            while link.generation == before or not link.connected.is_set():
                await asyncio.sleep(0.05)
        # No scan, no acknowledgement, and ack_timeout far off: the new connection itself sends them.
        batches = await asyncio.to_thread(central.wait_for, 2, "everything unacknowledged, again")
        assert batches[:2] == [[1], [1, 2]]

    run_uplink(stack, tmp_path, "shop-reconnect", test)


def test_a_stop_ends_the_uplink_also_when_it_comes_with_a_wake_up(stack, tmp_path):
    """The daemon stops the uplink by cancelling it; an acknowledgement or a scan that wakes it in the same turn of
    the loop must not make it wait out ack_timeout (600 s here) instead."""
    async def test(central, box):
        await box.record()
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        await asyncio.sleep(0.5)  # the uplink is back waiting for a wake-up: batch 1 is in flight
        box.uplink.wake.set()
        box.task.cancel()
        done, _ = await asyncio.wait([box.task], timeout=10)
        assert done and box.task.cancelled(), "the uplink outlived its stop"

    run_uplink(stack, tmp_path, "shop-stop", test)


def test_a_batch_over_the_protocol_limit_goes_in_halves_that_fit(stack, tmp_path):
    """500 events of 12 KiB fit batch_max_bytes but not one message: the per-event JSON around the bodies is more
    than their sealing's overhead."""
    # As large as 500 can be within batch_max_bytes: the journal counts a body's JSON and 28 bytes of sealing.
    empty = len(json.dumps(misread(), separators=(",", ":"), sort_keys=True)) - len(misread()["code"])
    size = protocol.MAX_EVENT_BYTES // 500 - 28 - empty
    whole = [Event(seq, "misread", misread(size)) for seq in range(1, 501)]
    assert len(protocol.encode_batch(whole, device="shop-halves", session=1, key=Ed25519PrivateKey.generate(),
                                     sent_at=time.time())) > protocol.MAX_TOKEN_BYTES

    async def test(central, box):
        # The second half goes at once, as a full batch would: it waits for no acknowledgement.
        batches = await asyncio.to_thread(central.wait_for, 2, "both halves")
        assert batches == [list(range(1, 251)), list(range(251, 501))]
        assert all(len(token) <= protocol.MAX_TOKEN_BYTES for token in central.tokens())

    run_uplink(stack, tmp_path, "shop-halves", test, batch_max_events=500, batch_max_bytes=protocol.MAX_EVENT_BYTES,
               before=recorded(500, size=size))


REFUSING = "topic read counterbox/#\ntopic write counterbox/v1/devices/+/ack\n"  # no batches


def broker_acl(stack, acl: str) -> None:
    """The broker's access control from now on: Mosquitto rereads it on SIGHUP, its clients stay connected."""
    (stack.directory / "acl").write_text(acl)
    log = stack.directory / "mosquitto.log"
    reloads = log.read_bytes().count(b"Reloading config")
    stack.broker.send_signal(signal.SIGHUP)
    # The broker reads it in its one thread, before any packet after its log line: wait for that line.
    wait_until(lambda: log.read_bytes().count(b"Reloading config") > reloads, 10, "the broker to reread its ACL")


def refusing_broker(stack, caplog) -> None:
    """The broker restarted refusing every batch; the uplink's lines, debug ones too, in ``caplog``."""
    caplog.set_level(logging.DEBUG, logger="agent.uplink")
    stack.stop_broker()
    stack.start_broker(acl=REFUSING)


async def first_refusal(box, caplog) -> None:
    """A scan recorded, and its batch refused by the broker."""
    await box.record()
    await asyncio.to_thread(wait_until, lambda: "not published: broker refused" in caplog.text, 20, "the refusal")


def test_a_batch_the_broker_refused_is_published_again_once_the_broker_takes_it(stack, tmp_path, caplog):
    """After a pause that doubles from 0.5 s: refusals neither flood the broker nor the log."""
    refusing_broker(stack, caplog)

    async def test(central, box):
        await first_refusal(box, caplog)
        await asyncio.sleep(2.0)
        assert caplog.text.count("not published") <= 4  # at 0, 0.5 and 1.5 s after the first (later under load)
        assert [r.levelname for r in caplog.records if "not published" in r.message][0] == "WARNING"
        generation = box.uplink.link.generation
        await asyncio.to_thread(broker_acl, stack, "topic readwrite counterbox/#\n")
        assert await asyncio.to_thread(central.wait_for, 1, "the batch, published again") == [[1]]
        assert box.uplink.link.generation == generation  # on the same connection: no reconnection sent it
        central.acknowledge(1)
        await box.wait_acked(1)
        # In the log: the first refusal a warning, the others quiet, and one line when publishing works again,
        # counting them all.
        lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.uplink"]
        refused = [level for level, message in lines if "not published" in message]
        assert refused == ["WARNING"] + ["DEBUG"] * (len(refused) - 1)
        assert ("INFO", f"batches published again after {len(refused)} failed attempts") in lines

        # A second outage is told afresh: a warning again, and a count of its own refusals only.
        caplog.clear()
        await asyncio.to_thread(broker_acl, stack, REFUSING)
        await first_refusal(box, caplog)
        await asyncio.to_thread(broker_acl, stack, "topic readwrite counterbox/#\n")
        assert await asyncio.to_thread(central.wait_for, 2, "the second batch, published again") == [[1], [2]]
        # Said once the broker has taken it (its PUBACK), which may be after central has it.
        await asyncio.to_thread(wait_until, lambda: "batches published again" in caplog.text, 20, "the line")
        lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.uplink"]
        refused = [level for level, message in lines if "not published" in message]
        assert refused == ["WARNING"] + ["DEBUG"] * (len(refused) - 1)
        assert ("INFO", f"batches published again after {len(refused)} failed attempts") in lines

    run_uplink(stack, tmp_path, "shop-refused", test)


def test_an_acknowledgement_that_comes_before_the_uplink_has_read_its_journal_is_checked_against_that_journal(
        tmp_path):
    """Central's retained acknowledgement reaches the downlink as soon as it subscribes, which may be before the
    uplink has read which journal it sends from: it reads it then, and only an acknowledgement naming that
    journal moves the cursor."""
    central_key = Ed25519PrivateKey.generate()

    def ack(seq: int, journal: str | None) -> bytes:
        return protocol.encode_ack("shop-early", seq, key=central_key, journal=journal)

    async def test():
        store = await Store.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
        try:
            for _ in range(3):
                await store.append("misread", misread())
            own = await store.read(lambda journal: journal.journal_id())
            uplink = Uplink(store=store, link=MqttLink(host="127.0.0.1", port=1, client_id="shop-early"),
                            device_id="shop-early", session=1, key=Ed25519PrivateKey.generate(),
                            central_key=central_key.public_key(), config=UplinkConfig())
            cursors = []
            for token in (ack(3, "e" * 32), ack(3, None), ack(2, own)):  # not run: it has not looked yet
                await uplink.acknowledged(token)
                cursors.append(await store.read(lambda journal: journal.acked_seq()))
            return cursors
        finally:
            await store.close()

    assert asyncio.run(test()) == [0, 0, 2]


def test_the_pause_after_failures_in_a_row_doubles_from_half_a_second_up_to_thirty():
    """docs/protocol.md: a batch the broker refuses is tried again after a pause that doubles from 0.5 s to
    30 s; a journal that cannot be read is read again after the same pauses."""
    assert [uplink_module.retry_pause(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert uplink_module.retry_pause(10**6) == 30  # a week of refusals: still 30 s, and no overflow on the way


def test_a_new_connection_publishes_at_once_whatever_pause_refusals_on_the_last_one_had_set(stack, tmp_path, caplog,
                                                                                            monkeypatch):
    """After a refusal the uplink pauses before it tries again (30 s here); a new connection ends the pause."""
    monkeypatch.setattr(uplink_module, "RETRY_MIN", 30.0)
    refusing_broker(stack, caplog)

    async def test(central, box):
        await first_refusal(box, caplog)
        await asyncio.to_thread(broker_acl, stack, "topic readwrite counterbox/#\n")
        await asyncio.to_thread(connect_as, stack, central.device)  # the broker drops the uplink's connection
        assert await asyncio.to_thread(central.wait_for, 1, "the batch, on the new connection") == [[1]]
        assert caplog.text.count("not published") == 1

    run_uplink(stack, tmp_path, "shop-paused", test)


def test_an_event_the_journal_cannot_read_back_goes_as_damaged_and_the_events_behind_it_follow(stack, tmp_path):
    """Bit rot in one row (its sealed bytes on disk, under SQLite): the uplink once stopped at it for good."""
    journal = Journal.open(tmp_path / "journal.db", b"k" * 32)
    for n in range(1, 4):
        journal.append("misread", misread(0))
    rot(journal, 2)

    async def test(central, box):
        assert await asyncio.to_thread(central.wait_for, 1, "the batch") == [[1, 2, 3]]
        [batch] = [protocol.decode_batch(token, device=central.device, key=box_key.public_key())
                   for token in central.tokens()]
        assert [(e["seq"], e["kind"]) for e in batch.events] == [(1, "misread"), (2, "damaged"), (3, "misread")]
        assert batch.events[1]["body"] == {"kind": "misread",
                                           "reason": "its sealed body fails authentication: the file was altered"}
        central.acknowledge(3)
        await box.wait_acked(3)

    box_key = Ed25519PrivateKey.generate()
    central = Central(stack, "shop-damaged", box_key)

    async def main():
        async with uplink_running(stack, central, box_key, tmp_path / "journal.db") as box:
            await test(central, box)

    try:
        asyncio.run(main())
    finally:
        central.close()


def failing_journal(monkeypatch, caplog, method: str, left: int):
    """``Journal.method`` failing its next ``left`` calls (a ``Failing``), with the uplink's lines, debug ones too,
    in ``caplog``."""
    from storage import Journal

    from .journals import Failing

    caplog.set_level(logging.DEBUG, logger="agent.uplink")
    failing = Failing(getattr(Journal, method), left=left)
    monkeypatch.setattr(Journal, method, failing)
    return failing


def test_a_journal_that_cannot_be_read_for_a_while_pauses_the_uplink_never_ends_it(stack, tmp_path, monkeypatch, caplog):
    """A read of the journal that fails (an I/O error, a lock held past its timeout) once ended the uplink's task,
    and with it the agent: later events were never sent. It is said once, and read again after a pause."""
    failing = failing_journal(monkeypatch, caplog, "read_batch", left=0)

    async def test(central, box):
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 1, "the first batch") == [[1]]
        central.acknowledge(1)
        await box.wait_acked(1)
        failing.left = 3
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 2, "the batch after the failed reads") == [[1], [2]]
        assert not box.task.done() and failing.left == 0

    run_uplink(stack, tmp_path, "shop-unreadable", test)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "cannot be read" in r.getMessage()]
    assert [level for level, _ in said] == ["ERROR", "DEBUG", "DEBUG"], said
    assert said[0][1] == "uplink: the journal cannot be read (journal.db: disk I/O error); trying again"
    # Read again after pauses that double from 0.5 s (at least: a loaded machine only makes them longer).
    gaps = [later - earlier for earlier, later in zip(failing.failed_at, failing.failed_at[1:])]
    assert len(gaps) == 2 and gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps


def test_a_journal_that_cannot_be_read_as_the_uplink_starts_delays_it_never_ends_it(stack, tmp_path, monkeypatch,
                                                                                    caplog):
    """Its first look (the cursor, the journal's id) failing: said once, looked at again after a pause."""
    failing = failing_journal(monkeypatch, caplog, "base_seq", left=2)

    async def test(central, box):
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 1, "the first batch") == [[1]]
        assert failing.left == 0

    run_uplink(stack, tmp_path, "shop-unreadable-at-start", test)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "cannot be read" in r.getMessage()]
    assert said == [("ERROR", "uplink: the journal cannot be read (journal.db: disk I/O error); trying again"),
                    ("DEBUG", "uplink: the journal cannot be read (journal.db: disk I/O error); trying again")]
    [gap] = [later - earlier for earlier, later in zip(failing.failed_at, failing.failed_at[1:])]
    assert gap >= 0.45, gap


def test_a_journal_restored_onto_another_box_names_in_its_batches_where_that_box_takes_over(stack, tmp_path):
    """docs/protocol.md, base_seq: the events before it were delivered as the box the journal came from."""
    def restored(journal):
        journal.take_identity("shop-old")
        recorded(3)(journal)
        journal.acknowledge(3)  # central holds them as shop-old's
        assert journal.take_identity("shop-restored") == (3, "shop-old")

    async def test(central, box):
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 1, "the batch") == [[4]]
        batch = protocol.decode_batch(central.tokens()[0], device=central.device, key=box.uplink.key.public_key())
        assert (batch.journal, batch.base_seq) == (await box.store.read(lambda journal: journal.journal_id()), 3)

    run_uplink(stack, tmp_path, "shop-restored", test, before=restored)


def test_batches_name_the_journal_and_an_acknowledgement_of_another_journal_moves_nothing(stack, tmp_path, caplog):
    """The retained acknowledgement central holds for this device's id, of the journal it had before this one was
    made anew, once moved this journal's cursor past sales central never held."""
    async def test(central, box):
        journal = await box.store.read(lambda journal: journal.journal_id())
        await box.record(2)
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        batch = protocol.decode_batch(central.tokens()[0], device=central.device, key=box.uplink.key.public_key())
        assert (batch.journal, batch.base_seq) == (journal, 0)
        await box.uplink.acknowledged(central.ack(2, journal="e" * 32))  # another journal's, under this id
        assert await box.acked_seq() == 0
        central.acknowledge(2, journal)
        await box.wait_acked(2)

    run_uplink(stack, tmp_path, "shop-journal", test)
    [refused] = [r for r in caplog.records if r.getMessage().startswith("acknowledgement refused")]
    assert refused.levelname == "WARNING" and f"acknowledgement is for journal '{'e' * 32}'" in refused.getMessage()


@pytest.fixture
def small_packets(monkeypatch):
    """A broker set up with a smaller max_packet_size than counterbox's (a managed broker's, say): 64 KiB."""
    import demo.stack
    shipped = demo.stack.broker_config

    def config(*args, **kwargs):
        text = shipped(*args, **kwargs)
        assert "max_packet_size 8388608" in text
        return text.replace("max_packet_size 8388608", "max_packet_size 65536")

    monkeypatch.setattr(demo.stack, "broker_config", config)


def test_a_backlog_goes_through_a_broker_that_takes_smaller_packets_in_batches_that_fit(small_packets, stack, fifo):
    """300 sales recorded while the broker was away are more than one packet of 64 KiB: the broker's CONNACK says
    its limit, and the box sends batches under it. Before, each batch cost the connection, for good."""
    device = stack.provision("shop-small-packets", scanners=[str(fifo)],
                             uplink={"batch_max_events": 500, "batch_max_delay": 1.0})
    _, items = price_list(50)
    stack.stop_broker()
    device.start()
    feed(fifo, scans([list(items)[i % 50] for i in range(300)], key_interval=0.002))
    wait_until(lambda: device.status()["events"].get("sale") == 300, 60, "300 sales recorded offline")
    stack.start_broker()
    try:
        wait_until(lambda: len(stack.sales()) == 300, 60, "the 300 sales at central")
    finally:
        device.stop()
    assert device.log.read_text().count("connected to broker") <= 2


def test_an_event_larger_than_the_broker_takes_is_said_and_costs_no_connection(small_packets, stack, fifo, tmp_path):
    """A price list of 2,000 items loaded on the box is one event of some 150 KB: it cannot pass a broker of 64 KiB.
    The box says which event, why and what to set, once a connection, and stays connected (before: a reconnection
    every second, its status and documents lost with each)."""
    device = stack.provision("shop-small-packets", scanners=[str(fifo)])
    csv, _ = price_list(2000)
    (tmp_path / "prices.csv").write_text(csv)
    assert device.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    device.start()
    try:
        wait_until(lambda: "cannot be delivered" in device.log.read_text(), 30, "the event too large said")
        time.sleep(5)  # the uplink tries again meanwhile
    finally:
        device.stop()
    log = device.log.read_text()
    [said] = [line for line in log.splitlines() if "cannot be delivered" in line]
    assert "event seq=1 " in said and "max_packet_size" in said and "65536" in said
    assert log.count("connected to broker") == 1
