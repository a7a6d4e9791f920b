"""Scan-to-durable latency, beside a plain SQLite insert-and-commit on the same disk, in the same run.

Measured: from the moment the scanner's terminating key event is written to
the scanner FIFO to the moment the sale is committed (WAL, synchronous=FULL,
AES-256-GCM sealed) — through the agent's own reader, decoder, counter and
journal thread, as the daemon runs them. Baseline: one unencrypted row of the
same JSON inserted and committed with the same pragmas by plain sqlite3.

    .venv/bin/python bench/scan_to_durable.py [--scans 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.counter import Counter  # noqa: E402
from drivers.decoder import Decoder, Scan  # noqa: E402
from drivers.input_event import EVENT_SIZE, pack_all  # noqa: E402
from drivers.reader import read_events  # noqa: E402
from drivers.recording import type_text  # noqa: E402
from storage import Journal  # noqa: E402

CODE = "6901028075831"
# Scans arrive apart, not back to back; every variant waits this long between commits, untimed,
# because a commit after an idle gap costs more than one straight after another on the same disk.
GAP = 0.002  # seconds
BODY = {"code": CODE, "symbology": "ean13", "scanner": "/dev/input/event3", "scanned_at": "2026-11-27T10:00:00.000Z",
        "quantity": 1, "known": True, "currency": "CNY", "unit_price": 2300, "name": "Hongtashan (pack)"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def baseline(directory: Path, n: int) -> list[float]:
    conn = sqlite3.connect(directory / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL)")
    row = json.dumps(BODY)
    latencies = []
    for _ in range(n):
        time.sleep(GAP)
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (kind, body) VALUES ('sale', ?)", [row])
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    conn.close()
    return latencies


def in_thread(directory: Path, n: int) -> list[float]:
    """The counter and journal alone (classify, price, seal, commit), called directly: no reader, no thread hop."""
    journal = Journal.open(directory / "direct.db", os.urandom(32))
    journal.append("price_list", {"items": [{"barcode": CODE, "name": "Hongtashan (pack)", "price": 2300}]})
    counter = Counter(journal)
    scan = Scan(CODE, "/dev/input/event3", time.time(), time.time())
    latencies = []
    for _ in range(n):
        time.sleep(GAP)
        t0 = time.perf_counter()
        counter.record(scan)
        latencies.append(time.perf_counter() - t0)
    journal.close()
    return latencies


async def counterbox(directory: Path, n: int) -> list[float]:
    fifo = directory / "scanner.fifo"
    os.mkfifo(fifo)
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    journal = await loop.run_in_executor(executor, Journal.open, directory / "journal.db", os.urandom(32))
    journal.append("price_list", {"items": [{"barcode": CODE, "name": "Hongtashan (pack)", "price": 2300}]})
    counter = Counter(journal)
    events = type_text(CODE, start=time.time())
    # Everything up to the terminator's key-down, then the terminator (key-down, and what follows it).
    split = next(i for i, e in enumerate(events) if e.code == 28 and e.value == 1)
    head, tail = pack_all(events[:split]), pack_all(events[split:])
    started: list[float] = []
    latencies: list[float] = []
    done = threading.Semaphore(0)

    def scanner() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        for _ in range(n):
            os.write(fd, head)
            time.sleep(GAP)
            started.append(time.perf_counter())
            os.write(fd, tail)
            done.acquire()
        os.close(fd)

    thread = threading.Thread(target=scanner)
    decoder = Decoder(str(fifo))
    reader = read_events(str(fifo))
    thread.start()
    async for event in reader:
        scan = decoder.feed(event)
        if scan is None:
            continue
        await loop.run_in_executor(executor, functools.partial(counter.record, scan))
        latencies.append(time.perf_counter() - started[len(latencies)])
        done.release()
        if len(latencies) == n:
            break
    await reader.aclose()
    thread.join()
    await loop.run_in_executor(executor, journal.close)
    executor.shutdown()
    assert EVENT_SIZE == 24
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=1000)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        directory = Path(tmp)
        plain = baseline(directory, args.scans)
        direct = in_thread(directory, args.scans)
        ours = asyncio.run(counterbox(directory, args.scans))
    rows = [("plain sqlite3 insert+commit", plain), ("counter+journal, in thread", direct),
            ("counterbox scan-to-durable", ours)]
    print(f"{args.scans} scans, WAL + synchronous=FULL, same disk, same run")
    print(f"{'':32} {'median':>9} {'p99':>9}")
    for name, values in rows:
        print(f"{name:32} {statistics.median(values) * 1e3:8.3f}ms {percentile(values, 99) * 1e3:8.3f}ms")
    for name, values in rows[1:]:
        print(f"{'ratio ' + name.split(',')[0].split(' ')[0] + ' / plain':32} "
              f"{statistics.median(values) / statistics.median(plain):8.2f}x "
              f"{percentile(values, 99) / percentile(plain, 99):8.2f}x")


if __name__ == "__main__":
    main()
