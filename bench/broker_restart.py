"""After a broker restart: how soon central and a box are back, beside a plain paho client, in the same run.

A real agent and central's ingest run against Mosquitto on loopback. The broker
is stopped for ``--away`` seconds (long enough for every backoff to reach its
ceiling), then started again; the clock runs from the broker accepting
connections until each has connected again (its log line, with the time it
was written). Baseline: a plain paho client with paho's own reconnect delays
(1 s doubling to 120 s), the way a client that only relies on its library
comes back. Several rounds; medians.

    .venv/bin/python bench/broker_restart.py [--rounds 5] [--away 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.stack import Stack  # noqa: E402

CONNECTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*connected to broker")


def connections(log: Path) -> list[float]:
    """When each connection in ``log`` was made (the stderr format's timestamps, local time)."""
    times = []
    for line in log.read_text().splitlines():
        match = CONNECTED.match(line)
        if match:
            times.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


class Plain:
    """A paho client that reconnects by itself, as the library does by default."""

    def __init__(self, port: int):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-plain", protocol=mqtt.MQTTv5)
        self.connected_at: list[float] = []
        self.client.on_connect = lambda client, userdata, flags, reason, properties: self.connected_at.append(time.time())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--away", type=float, default=15.0, help="seconds the broker is down each round")
    args = parser.parse_args()
    box, central, plain = [], [], []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        with Stack(Path(tmp) / "stack") as stack:
            stack.start_broker()
            stack.start_central()
            fifo = Path(tmp) / "scanner.fifo"
            os.mkfifo(fifo)
            device = stack.provision("shop-restart", scanners=[str(fifo)])
            device.start()
            deadline = time.monotonic() + 30
            while not connections(device.log) or not connections(stack.central_log):
                if time.monotonic() > deadline:
                    raise SystemExit("the agent or central did not connect")
                time.sleep(0.1)
            client = Plain(stack.broker_port)
            time.sleep(1.0)
            for _ in range(args.rounds):
                seen = (len(connections(device.log)), len(connections(stack.central_log)), len(client.connected_at))
                stack.stop_broker()
                time.sleep(args.away)
                stack.start_broker()  # returns once the broker accepts connections
                back = time.time()
                deadline = time.monotonic() + 150
                while (len(connections(device.log)) <= seen[0] or len(connections(stack.central_log)) <= seen[1]
                       or len(client.connected_at) <= seen[2]):
                    if time.monotonic() > deadline:
                        raise SystemExit("not everyone came back within 150 s")
                    time.sleep(0.05)
                box.append(connections(device.log)[-1] - back)
                central.append(connections(stack.central_log)[-1] - back)
                plain.append(client.connected_at[-1] - back)
            client.close()
    print(f"broker down {args.away:.0f} s, {args.rounds} rounds; seconds from the broker's return to connected again")
    print(f"{'':34} {'median':>8} {'worst':>8}")
    for name, values in (("plain paho client (default delays)", plain), ("counterbox agent", box),
                         ("central ingest", central)):
        print(f"{name:34} {statistics.median(values):8.2f} {max(values):8.2f}")


if __name__ == "__main__":
    main()
