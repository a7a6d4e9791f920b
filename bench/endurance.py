"""The agent's memory over an hour of a busy counter, beside a bare interpreter, in the same run.

A real ``counterbox run`` with Mosquitto and central's ingest on loopback
records and delivers a steady stream of scans (a price list of 60 products,
sales, a quantity now and then, a void) typed into its scanner FIFO at
``--speed`` times real time: by default an hour of a counter scanning every
2 seconds, 1,800 scans, in six minutes. Its resident memory is sampled as it
goes; the baseline is a bare interpreter of the same virtualenv. The agent's
modules are compiled to bytecode first, as the image has them.

    .venv/bin/python bench/endurance.py [--minutes 60] [--every 2.0] [--speed 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.footprint import compile_bytecode  # noqa: E402
from demo.stack import Stack  # noqa: E402
from drivers.barcode import gs1_check_digit  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.recording import type_text  # noqa: E402


def rss(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated minutes of scanning")
    parser.add_argument("--every", type=float, default=2.0, help="simulated seconds between scans")
    parser.add_argument("--speed", type=float, default=10.0, help="times real time")
    args = parser.parse_args()
    products = [(body := f"69010{i:07d}") + str(gs1_check_digit(body)) for i in range(60)]
    scans = int(args.minutes * 60 / args.every)
    compile_bytecode()
    samples: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        with Stack(Path(tmp) / "stack") as stack:
            stack.start_broker()
            stack.start_central()
            fifo = Path(tmp) / "scanner.fifo"
            os.mkfifo(fifo)
            device = stack.provision("shop-endurance", scanners=[str(fifo)])
            (Path(tmp) / "prices.csv").write_text(
                "barcode,name,price\n" + "".join(f"{code},Brand {n},{10 + n}.50\n" for n, code in enumerate(products)))
            device.command("prices", "load", str(Path(tmp) / "prices.csv"))
            device.start()
            writer = os.open(fifo, os.O_RDWR)
            time.sleep(3.0)
            bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            time.sleep(1.0)
            baseline = rss(bare.pid)
            bare.kill()
            started = time.monotonic()
            for n in range(scans):
                texts = ["CB:QTY3"] if n % 17 == 0 else []
                texts.append(products[n % len(products)])
                if n % 41 == 0:
                    texts.append("CB:VOID")
                at = time.time()
                for text in texts:
                    events = type_text(text, start=at)
                    at = events[-1].timestamp() + 0.3
                    os.write(writer, pack_all(events))
                if n % max(1, scans // 12) == 0:
                    samples.append((n, rss(device.process.pid)))
                pause = started + (n + 1) * args.every / args.speed - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            time.sleep(3.0)
            samples.append((scans, rss(device.process.pid)))
            status = device.status()
            os.close(writer)
    print(f"{scans} scans: {args.minutes:.0f} simulated minutes, one every {args.every:g} s, at {args.speed:g}x; "
          f"journal {status['last_seq']} events, acknowledged {status['acked_seq']}")
    print(f"{'after scans':>12} {'agent RSS':>10}")
    for n, kib in samples:
        print(f"{n:12d} {kib / 1024:8.1f} MiB")
    print(f"bare interpreter {baseline / 1024:.1f} MiB; agent at the end {samples[-1][1] / 1024:.1f} MiB "
          f"({samples[-1][1] / baseline:.2f}x), growth over the run {(samples[-1][1] - samples[0][1]) / 1024:+.1f} MiB")


if __name__ == "__main__":
    main()
