"""Activation on loopback: from the scanned code to the box's first sale acknowledged by central.

A new box (a real agent with its scanner a FIFO) waits for activation; the clock starts when the
activation code's text, as a 2D scanner types it, is written to the scanner, and stops when central
has acknowledged the first sale scanned once the box answered. Each run is a new box; medians.
Baseline, in the same run: the same box's next sale, from its scan to central's acknowledgement.

    .venv/bin/python bench/activation.py [--boxes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.stack import Stack  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.recording import type_text  # noqa: E402


def until(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.01)
    return value


def scan(fd: int, text: str) -> float:
    os.write(fd, pack_all(type_text(text, start=time.time())))
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=5)
    args = parser.parse_args()
    activation, sale = [], []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        with Stack(Path(tmp) / "stack") as stack:
            stack.start_broker()
            stack.start_central()
            stack.ops_command("shop", "add", "--central-db", str(stack.central_db), "--licence", "530102100123",
                              "--name", "Mengzi No. 3", "--region", "honghe")
            for n in range(args.boxes):
                fifo = Path(tmp) / f"box{n}.fifo"
                os.mkfifo(fifo)
                device = stack.install(f"box{n}", scanners=[str(fifo)])
                device.start()
                fd = os.open(fifo, os.O_WRONLY)
                until(lambda: "waiting for activation" in device.log.read_text())
                issued = json.loads(stack.ops_command(
                    "activation", "issue", "--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key),
                    "--shop", "530102100123").stdout)
                token = _token(stack, issued["code"])
                time.sleep(0.3)  # a pause before the scan, as at a counter
                t0 = scan(fd, token)
                until(lambda: "activated seq=" in device.log.read_text())
                scan(fd, "6901028075831")
                until(lambda: (s := device.status())["acked_seq"] == s["last_seq"] and s["events"].get("sale"))
                activation.append(time.perf_counter() - t0)
                time.sleep(0.3)
                t1 = scan(fd, "96385074")
                until(lambda: (s := device.status())["acked_seq"] == s["last_seq"] and s["events"].get("sale") == 2)
                sale.append(time.perf_counter() - t1)
                os.close(fd)
                device.stop()
    print(f"{args.boxes} new boxes, loopback, same run (medians; each wait polls 'counterbox status')")
    print(f"  a sale, scan to central's acknowledgement            {statistics.median(sale):6.2f} s")
    print(f"  activation code scanned to first sale acknowledged   {statistics.median(activation):6.2f} s"
          f"  (slowest {max(activation):.2f} s)")


def _token(stack: Stack, code_id: str) -> str:
    """The code's text as the slip carries it (central keeps the token it issued)."""
    import sqlite3

    with sqlite3.connect(stack.central_db) as conn:
        return conn.execute("SELECT token FROM activation_codes WHERE code_id = ?", [code_id]).fetchone()[0]


if __name__ == "__main__":
    main()
