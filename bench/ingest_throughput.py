"""Central's ingest: verified and stored events per second, for one and for two instances sharing the
load, beside the broker's raw delivery of the same messages to a plain subscriber, in the same run.

Signed batches from many registered devices (the agent's batch size) wait at the broker as a backlog
(a fleet coming back after central was away): each consumer, central's ingest or the plain
subscriber, is subscribed and then stopped (SIGSTOP) while the batches are published, so the
publisher's work is not timed. The clock runs from SIGCONT until central's database holds every
event (its devices' acknowledged seqs, polled on one connection) or, for the baseline, until the
plain subscriber (a process of its own) has received every batch.

    .venv/bin/python bench/ingest_throughput.py [--devices 20] [--batches 40] [--events 500] [--postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central.store import CentralStore  # noqa: E402
from demo.stack import Stack  # noqa: E402
from provisioning import protocol  # noqa: E402
from provisioning.identity import public_key_text  # noqa: E402
from storage import Event  # noqa: E402

BODY = {"code": "6901028075831", "symbology": "ean13", "aim": None, "scanner": "/dev/input/event3",
        "scanned_at": "2026-11-27T10:00:00.000Z", "quantity": 1, "known": True, "currency": "CNY",
        "unit_price": 2300, "name": "Hongtashan (pack)"}


def batches(stack: Stack, devices: int, per_device: int, events: int, tag: str) -> list[tuple[str, bytes]]:
    """Each device's batches in its order, the devices' interleaved: a fleet's boxes send at once."""
    store = CentralStore(stack.central_db)
    by_device = []
    for d in range(devices):
        key, device = Ed25519PrivateKey.generate(), f"bench-{tag}-{d}"
        store.register(device, public_key_text(key))
        topic = protocol.batch_topic(protocol.DEFAULT_PREFIX, device)
        journal = os.urandom(16).hex()  # each box's journal, named in its batches as the agent names it
        by_device.append([(topic, protocol.encode_batch([Event(seq, "sale", BODY) for seq in range(first, first + events)],
                                                        device=device, session=1, key=key, sent_at=time.time(),
                                                        journal=journal))
                          for first in range(1, per_device * events + 1, events)])
    store.close()
    return [message for round_ in zip(*by_device) for message in round_]


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def backlog(port: int, messages, consumers: list[subprocess.Popen]) -> float:
    """Publish ``messages`` while ``consumers`` are stopped; resume them; return when they resumed."""
    for process in consumers:
        process.send_signal(signal.SIGSTOP)
    try:
        publish(port, messages)
    finally:
        t0 = time.perf_counter()
        for process in consumers:
            process.send_signal(signal.SIGCONT)
    return t0


TIMEOUT = 600  # seconds for any one drain: a stuck ingest fails the bench instead of hanging it


def busy_cores() -> tuple[float, float]:
    """(busy, total) clock ticks of all the machine's cores so far, from /proc/stat."""
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def central_rate(stack: Stack, messages, total: int, tag: str,
                 consumers: list[subprocess.Popen]) -> tuple[float, float]:
    """Events per second, and how many of the machine's cores were busy meanwhile (ingest, broker,
    database, and anything else running: measure on a quiet machine)."""
    store = CentralStore(stack.central_db)
    try:
        def held() -> int:  # a few rows: the poll costs the ingest nothing
            return store.conn.execute("SELECT coalesce(sum(acked_seq), 0) FROM devices WHERE device_id LIKE ?",
                                      [f"bench-{tag}-%"]).fetchone()[0]

        t0 = backlog(stack.broker_port, messages, consumers)
        busy0, all0 = busy_cores()
        deadline = time.monotonic() + TIMEOUT
        while held() < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"central held {held()} of {total} events after {TIMEOUT} s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        busy1, all1 = busy_cores()
        return total / elapsed, (busy1 - busy0) / (all1 - all0) * (os.cpu_count() or 1)
    finally:
        store.close()


_SUBSCRIBER = """
import signal, sys, time, paho.mqtt.client as mqtt
port, expected = int(sys.argv[1]), int(sys.argv[2])
signal.alarm(int(sys.argv[3]))  # ends it if it never gets every batch
count = 0
def received(client, userdata, message):
    global count
    count += 1
    if count == expected:
        print(time.perf_counter(), flush=True)
        client.disconnect()
def subscribed(client, userdata, mid, reason_codes, properties):
    print("subscribed", flush=True)
sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
sub.on_message, sub.on_subscribe = received, subscribed
sub.connect("127.0.0.1", port)
sub.subscribe("counterbox/v1/devices/+/batch", qos=1)
sub.loop_forever()
"""


def raw_rate(port: int, messages, total: int) -> float:
    # perf_counter is CLOCK_MONOTONIC: the same clock in both processes.
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, str(port), str(len(messages)), str(TIMEOUT)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "subscribed"
        t0 = backlog(port, messages, [sub])
        line = sub.stdout.readline()
        if not line:
            raise TimeoutError(f"the plain subscriber did not get all {len(messages)} batches")
        done = float(line)
        return total / (done - t0)
    finally:
        sub.kill()
        sub.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--batches", type=int, default=40, help="per device")
    parser.add_argument("--events", type=int, default=500, help="per batch (the agent's batch_max_events)")
    parser.add_argument("--postgresql", action="store_true",
                        help="central on a PostgreSQL server of its own (as a fleet runs it), not SQLite")
    args = parser.parse_args()
    total = args.devices * args.batches * args.events
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp, \
            contextlib.ExitStack() as servers:
        database = None
        if args.postgresql:
            from tests.postgres import PostgreSQL  # the tests' own server: initdb and postgres, as its user

            database = servers.enter_context(PostgreSQL()).create_database()
        with Stack(Path(tmp) / "stack", log_level="WARNING", database=database) as stack:
            stack.start_broker()
            stack.central_public_key()
            sets = {tag: batches(stack, args.devices, args.batches, args.events, tag) for tag in ("raw", "one", "two")}
            raw = raw_rate(stack.broker_port, sets["raw"], total)
            stack.log_level = "INFO"  # the ingest's start is seen in its log
            first = stack.start_ingest("one", share="bench")
            one, one_cores = central_rate(stack, sets["one"], total, "one", [first])
            second = stack.start_ingest("two", share="bench")
            two, two_cores = central_rate(stack, sets["two"], total, "two", [first, second])
    print(f"{total} events in batches of {args.events} from {args.devices} devices, loopback, same run, "
          f"central on {'PostgreSQL' if args.postgresql else 'SQLite'}")
    print(f"  broker to a plain subscriber           {raw:10.0f} events/s")
    print(f"  one central ingest, verified + stored  {one:10.0f} events/s  ({one / raw:.3f} of raw)"
          f"   cores busy {one_cores:.2f} of {os.cpu_count()}")
    print(f"  two instances sharing the load         {two:10.0f} events/s  ({two / one:.2f}x one)"
          f"   cores busy {two_cores:.2f} of {os.cpu_count()}")


if __name__ == "__main__":
    main()
