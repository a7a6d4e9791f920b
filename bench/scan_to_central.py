"""Scan to central on loopback: from the scanner's terminating key to central's signed acknowledgement.

A real agent process (its scanner a FIFO), a real Mosquitto and a real central
ingest process. For each scan, the clock starts when the terminating key
event is written and stops when central's acknowledgement covering that
sale reaches a subscriber of the device's acknowledgement topic: the sale is
then durable on the box, verified and stored at central, and acknowledged.
Scans come one at a time, a quiet spell apart, as at a counter.

Baseline, in the same run and on the same broker: a QoS 1 message published
by one plain paho client, answered by a second (a QoS 1 reply), received by
the first: the same two broker hops with nothing done in between.

    .venv/bin/python bench/scan_to_central.py [--scans 200]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.stack import Stack  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.recording import type_text  # noqa: E402
from provisioning import jws  # noqa: E402

CODE = "6901028075831"
QUIET = 0.1  # seconds between scans


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _client(port: int, topic: str, inbox: queue.Queue) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, message: inbox.put((time.perf_counter(), message.payload))
    client.connect("127.0.0.1", port)
    # As the agent's link does: without it Nagle's algorithm adds a delayed ACK (40 ms) to a reply.
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(0.3)  # SUBACK
    return client


def baseline(port: int, n: int) -> list[float]:
    answers: queue.Queue = queue.Queue()
    questions: queue.Queue = queue.Queue()
    asker = _client(port, "bench/answer", answers)
    answerer = _client(port, "bench/question", questions)
    answerer.on_message = lambda c, u, message: c.publish("bench/answer", message.payload, qos=1)
    times = []
    try:
        for i in range(n):
            time.sleep(QUIET)
            t0 = time.perf_counter()
            asker.publish("bench/question", str(i).encode(), qos=1)
            while True:
                at, payload = answers.get(timeout=10)
                if payload == str(i).encode():
                    break
            times.append(at - t0)
    finally:
        for client in (asker, answerer):
            client.loop_stop()
            client.disconnect()
    return times


def ours(stack: Stack, directory: Path, n: int) -> list[float]:
    fifo = directory / "scanner.fifo"
    os.mkfifo(fifo)
    device = stack.provision("bench-latency", scanners=[str(fifo)], uplink={"batch_max_delay": 1.0})
    device.start()
    acks: queue.Queue = queue.Queue()
    watcher = _client(stack.broker_port, "counterbox/v1/devices/bench-latency/ack", acks)
    fd = os.open(fifo, os.O_WRONLY)
    times = []

    def acked(token: bytes) -> int:
        return json.loads(jws.b64url_decode(token.split(b".")[1].decode()))["ack_seq"]

    try:
        time.sleep(1.0)  # the scanner event of the open is delivered
        last = 0
        while not acks.empty():
            last = max(last, acked(acks.get()[1]))
        for _ in range(n):
            time.sleep(QUIET)
            events = type_text(CODE, start=time.time())
            split = next(i for i, e in enumerate(events) if e.code == 28 and e.value == 1)
            os.write(fd, pack_all(events[:split]))
            time.sleep(0.02)  # the head is read and decoded, untimed
            t0 = time.perf_counter()
            os.write(fd, pack_all(events[split:]))
            target = last + 1
            while last < target:
                at, token = acks.get(timeout=30)
                last = max(last, acked(token))
            times.append(at - t0)
    finally:
        os.close(fd)
        watcher.loop_stop()
        watcher.disconnect()
        device.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        with Stack(Path(tmp) / "stack") as stack:
            stack.start_broker()
            stack.start_central()
            plain = baseline(stack.broker_port, args.scans)
            scan = ours(stack, Path(tmp), args.scans)
    print(f"{args.scans} scans, one at a time, loopback, same broker, same run")
    print(f"{'':44} {'median':>9} {'p99':>9}")
    for name, values in (("plain MQTT QoS 1 request and reply", plain),
                         ("scan to central's acknowledgement", scan)):
        print(f"{name:44} {statistics.median(values) * 1e3:7.2f}ms {percentile(values, 99) * 1e3:7.2f}ms")
    print(f"{'ratio':44} {statistics.median(scan) / statistics.median(plain):8.1f}x "
          f"{percentile(scan, 99) / percentile(plain, 99):8.1f}x")


if __name__ == "__main__":
    main()
