"""Presence and health: each device's signed status, as central and its operators see it."""

from __future__ import annotations

import json
import re
import time

import paho.mqtt.publish as mqtt_publish
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTv5

from central.ingest import QUEUE_SETTLE
from central.store import CentralStore
from provisioning import protocol
from provisioning.identity import load_key

from .harness import feed, scans, wait_until


def devices(stack) -> dict[str, dict]:
    result = stack.central_command("devices", "--json")
    assert result.returncode == 0, result.stderr
    return {row["device"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_a_device_online_reports_its_health_and_its_stop_is_seen_at_once(stack, fifo):
    device = stack.provision("shop-health", scanners=[str(fifo)], uplink={"status_interval": 0.5, "ack_timeout": 600.0})
    assert devices(stack)["shop-health"]["state"] == "never seen"
    device.start()
    # Statuses in central's first seconds may have waited in its queue: the clock is measured after.
    online = wait_until(lambda: (d := devices(stack)["shop-health"])["state"] == "online" and d["scanners"] == 1
                        and d["clock_ok"] is not None and d, 20, "the device online with its scanner, clock measured")
    assert online["agent_version"] and online["free_bytes"] > 0 and online["clock_ok"] is True
    assert abs(online["clock_offset"]) < 5

    # The backlog is what central has not acknowledged: with central away, the scans wait.
    stack.stop_central()
    feed(fifo, scans(["6901028075831", "96385074"]))
    wait_until(lambda: device.status()["events"].get("sale") == 2, 20, "two durable scans")
    stack.start_central()
    wait_until(lambda: devices(stack)["shop-health"]["backlog"] == 0, 20, "the backlog delivered, and reported so")

    device.stop()  # a stop is announced like a loss: the broker publishes the will
    wait_until(lambda: devices(stack)["shop-health"]["state"] == "offline", 10, "the stop seen at central")


def test_a_box_whose_batches_central_refuses_does_not_upload_though_it_reports_live(stack, fifo):
    """Its statuses come every half second; its batches are refused (central holds another journal under
    its id), so its sales never arrive, late or not: its backlog waits past the deadline and today fails."""
    device = stack.provision("shop-held", scanners=[str(fifo)], uplink={"status_interval": 0.5})
    store = CentralStore(stack.central_db)
    store.conn.execute("UPDATE devices SET journal = 'a-journal-made-before' WHERE device_id = 'shop-held'")
    store.close()
    device.start()
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: device.status()["events"].get("sale") == 1, 20, "the sale durable")
    wait_until(lambda: devices(stack)["shop-held"]["backlog"] >= 1, 20, "the sale held back, and reported so")

    def today() -> dict | None:
        result = stack.central_command("uploads", "--days", "1", "--deadline-minutes", "0.02", "--json")
        assert result.returncode == 0, result.stderr
        return next((row for row in json.loads(result.stdout)["devices"] if row["device"] == "shop-held"), None)

    row = wait_until(lambda: (row := today()) and row["failed_days"] and row, 20, "the day decided")
    assert row["failed_days"][0]["reported"] and row["failed_days"][0]["held_back"]
    assert row["failed_days"][0]["late_sales"] == 0 and row["rate"] == 0.0
    assert "journal a-journal-made-before" in stack.central_log.read_text()


def test_a_report_interval_a_box_took_before_such_were_refused_is_held_to_half_a_second(stack, fifo):
    """Settings of a status interval of a microsecond, applied before operations' tools refused them, made the
    box report in a tight loop at every start after, until operations pushed another version."""
    from storage import Journal, load_data_key

    device = stack.provision("shop-tight", scanners=[str(fifo)])
    device.start()
    wait_until(lambda: devices(stack)["shop-tight"]["state"] == "online", 20, "the device online")
    device.stop()
    key = load_data_key(key_file=device.directory / "data.key", credential="none", create=False)
    journal = Journal.open(device.directory / "journal.db", key)
    journal.append("settings", {"name": "settings", "version": 1, "issued_at": protocol.rfc3339(time.time()),
                                "uplink": {"status_interval": 1e-6}})
    journal.close()
    before = stack.central_log.read_text().count("device shop-tight online")
    device.start()
    wait_until(lambda: stack.central_log.read_text().count("device shop-tight online") > before, 20, "online again")
    time.sleep(3.0)
    reports = stack.central_log.read_text().count("device shop-tight online") - before
    assert 3 <= reports <= 12  # one each half second, not hundreds a second


def test_a_box_that_loses_power_is_offline_once_its_keepalive_runs_out(stack, fifo):
    device = stack.provision("shop-power", scanners=[str(fifo)], keepalive=1)
    device.start()
    wait_until(lambda: devices(stack)["shop-power"]["state"] == "online", 20, "the device online")
    device.kill()
    started = time.monotonic()
    wait_until(lambda: devices(stack)["shop-power"]["state"] == "offline", 10, "the will, published by the broker")
    assert time.monotonic() - started < 5  # 1.5 keepalives, and the time to look


def _publish_status(stack, device_id: str, status: dict, key) -> None:
    token = protocol.encode_status(status, device=device_id, key=key)
    mqtt_publish.single(protocol.status_topic("counterbox/v1", device_id), token, qos=1, hostname="127.0.0.1",
                        port=stack.broker_port, protocol=MQTTv5)


@pytest.mark.foreign_messages  # hand-made statuses
def test_a_box_whose_clock_is_off_is_flagged_and_a_forged_status_changes_nothing(stack, fifo):
    device = stack.provision("shop-clock", scanners=[str(fifo)])
    key = load_key(device.directory / "device.key")
    time.sleep(QUEUE_SETTLE + 0.5)  # central's first seconds, when a status may have been queued, are over
    two_hours_fast = {"state": "online", "session": 1, "connection": 1, "sent_at": time.time() + 7200, "backlog": 0}
    _publish_status(stack, "shop-clock", two_hours_fast, key)
    flagged = wait_until(lambda: (d := devices(stack)["shop-clock"])["clock_ok"] is False and d, 10, "the clock flagged")
    assert 7190 < flagged["clock_offset"] < 7210
    # (Its status took a moment to reach central: the offset is two hours less that moment.)
    assert re.search(r"shop-clock clock is off by \+7(19\d|20\d)\.\d s", stack.central_log.read_text())
    table = stack.central_command("devices").stdout
    assert re.search(r"\+7(19\d|20\d)", table) and "s !" in table

    forged = {"state": "offline", "session": 9, "connection": 1, "sent_at": time.time() + 7300}
    _publish_status(stack, "shop-clock", forged, Ed25519PrivateKey.generate())
    wait_until(lambda: "status rejected topic=counterbox/v1/devices/shop-clock/status" in stack.central_log.read_text(),
               10, "the forgery rejected")
    assert devices(stack)["shop-clock"]["state"] == "online"


def test_a_status_whose_free_disk_cannot_be_read_goes_without_it(tmp_path, caplog):
    """The journal's directory gone from under a running agent: its health report once ended the agent."""
    import asyncio
    import shutil

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.telemetry import Telemetry
    from provisioning import protocol
    from storage import Store

    async def status():
        (tmp_path / "data").mkdir()
        store = await Store.open(tmp_path / "data" / "journal.db", b"k" * 32)
        key = Ed25519PrivateKey.generate()
        telemetry = Telemetry(store=store, device_id="shop-1", session=1, key=key, topic_prefix="counterbox/v1",
                              interval=60.0)
        telemetry.will()  # made as a connection opens: the statuses on it count from it
        try:
            whole = protocol.decode_status(await telemetry._online(), device="shop-1", key=key.public_key())
            shutil.move(tmp_path / "data", tmp_path / "elsewhere")
            without = protocol.decode_status(await telemetry._online(), device="shop-1", key=key.public_key())
            return whole, without
        finally:
            await store.close()

    whole, without = asyncio.run(status())
    assert whole["free_bytes"] > 0 and "free_bytes" not in without
    assert (without["state"], without["backlog"]) == ("online", 0)
    assert "status without free_bytes" in caplog.text


def test_a_status_whose_backlog_cannot_be_read_is_skipped_and_the_next_goes(stack, tmp_path, monkeypatch, caplog):
    """A failed read of the journal in the health report once ended the agent; now that report is skipped, said,
    and the next one goes at its interval."""
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.mqtt import MqttLink
    from agent.telemetry import Telemetry
    from provisioning import protocol
    from storage import Journal, Store

    from .journals import Failing

    failing = Failing(Journal.acked_seq)
    monkeypatch.setattr(Journal, "acked_seq", failing)
    key = Ed25519PrivateKey.generate()

    async def main() -> dict:
        store = await Store.open(tmp_path / "journal.db", b"k" * 32)
        telemetry = Telemetry(store=store, device_id="shop-t", session=1, key=key, topic_prefix="counterbox/v1",
                              interval=0.3)
        try:
            async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-t", will=telemetry.will) as box, \
                    MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="watcher",
                             subscriptions=[telemetry.topic]) as watcher:
                await watcher.connected.wait()
                await asyncio.sleep(0.2)  # the watcher's subscription in place
                running = asyncio.create_task(telemetry.run(box))
                async with asyncio.timeout(20):
                    async for message in watcher.messages():
                        status = protocol.decode_status(message.payload, device="shop-t", key=key.public_key())
                        if status["state"] == "online":
                            break
                assert not running.done()
                running.cancel()
                return status
        finally:
            await store.close()

    status = asyncio.run(main())
    assert failing.left == 0 and status["backlog"] == 0
    assert "status not published: the journal cannot be read (journal.db: disk I/O error)" in caplog.text
