"""A box back after a week offline: its whole backlog to central, beside the broker's raw delivery rate.

The box's journal holds N sales recorded while it was offline (written straight into its journal
before the agent starts). Then the broker comes back (the agent has been trying to reconnect for a
while, with its backoff), and the clock runs from the broker's start until central has
acknowledged every event. Baseline, in the same run: the same number of events, in batches of the
same size, published by a plain paho client and received by a plain subscriber on the same broker.

    .venv/bin/python bench/backlog_drain.py [--events 100000] [--offline 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load  # noqa: E402
from agent.daemon import open_journal  # noqa: E402
from demo.stack import Stack  # noqa: E402

BODY = {"code": "6901028075831", "symbology": "ean13", "aim": None, "scanner": "/dev/input/event3",
        "scanned_at": "2026-11-27T10:00:00.000Z", "quantity": 1, "known": True, "currency": "CNY",
        "unit_price": 2300, "name": "Hongtashan (pack)"}


def baseline(port: int, events: int, per_batch: int, batch_bytes: int) -> float:
    """Seconds for a plain publisher to hand ``events`` (as batches of ``batch_bytes``) to a plain subscriber."""
    batches = events // per_batch
    got = threading.Event()
    count = 0

    def received(client, userdata, message):
        nonlocal count
        count += 1
        if count == batches:
            got.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
    subscriber.on_message = received
    subscriber.connect("127.0.0.1", port)
    subscriber.subscribe("bench/#", qos=1)
    subscriber.loop_start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    time.sleep(0.5)
    payload = b"x" * batch_bytes
    t0 = time.perf_counter()
    for _ in range(batches):
        publisher.publish("bench/batch", payload, qos=1)
    got.wait(300)
    elapsed = time.perf_counter() - t0
    for client in (publisher, subscriber):
        client.loop_stop()
        client.disconnect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--offline", type=float, default=30.0, help="seconds the agent waits for the broker first")
    parser.add_argument("--batch", type=int, default=500, help="[uplink] batch_max_events (default: the agent's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        with Stack(Path(tmp) / "stack", uplink={"batch_max_events": args.batch}) as stack:
            stack.start_broker()
            stack.start_central()
            device = stack.provision("bench-week", scanners=[])
            config = load(device.config)
            journal = open_journal(config, create=True)
            with journal.transaction():
                for _ in range(args.events):
                    journal.append("sale", BODY)
            last = journal.last_seq()
            journal.close()
            stack.stop_broker()
            device.start()
            time.sleep(args.offline)  # the agent's backoff grows meanwhile
            t0 = time.perf_counter()
            stack.start_broker()
            while device.status()["acked_seq"] < last:
                time.sleep(0.2)
            ours = time.perf_counter() - t0
            first_line = [line for line in device.log.read_text().splitlines() if "connected to broker" in line]
            plain = baseline(stack.broker_port, args.events, args.batch, args.batch * 260)
    print(f"{args.events} events after {args.offline:.0f} s offline, batches of {args.batch}, loopback, same run")
    print(f"  plain publisher to plain subscriber        {plain:7.2f} s  ({args.events / plain:9.0f} events/s)")
    print(f"  box to central, acknowledged, from the broker's return {ours:7.2f} s  ({args.events / ours:9.0f} events/s)")
    print(f"  ratio {ours / plain:.1f}x; reconnections logged: {len(first_line)}")


if __name__ == "__main__":
    main()
