"""Scan-to-durable latency and burst throughput, beside plain SQLite commits on the same disk, in the same run.

Latency: from the moment the scanner's terminating key event is written to the
scanner FIFO to the moment the sale is committed (WAL, synchronous=FULL,
AES-256-GCM sealed; scan-to-durable, taken in the store's thread as its commit
returns) and to the moment its answer is back on the event loop, where the
feedback signal starts (scan-to-answer); through the agent's own scanner
manager, reader, decoder, store thread and counter, as the daemon runs them. Baselines: one unencrypted row of the same JSON inserted and
committed with the same pragmas by plain sqlite3; and the counter and journal
called directly in one thread.

Burst: 200 scans written to the FIFO at once, as fast as the kernel can hand
them over; the store commits the scans waiting together in one transaction
(each still durable before it is answered). Baseline: 200 plain one-row
commits back to back.

    .venv/bin/python bench/scan_to_durable.py [--scans 1000] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import FeedbackConfig, ScannerConfig  # noqa: E402
from agent.counter import Counter  # noqa: E402
from agent.daemon import record_scan  # noqa: E402
from agent.scanners import Scanners  # noqa: E402
from drivers.decoder import Scan  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.recording import type_text  # noqa: E402
from storage import Journal, Store  # noqa: E402
from storage import store as store_module  # noqa: E402

CODE = "6901028075831"
PRICES = {"items": [{"barcode": CODE, "name": "Hongtashan (pack)", "price": 2300}]}
# Scans arrive apart, not back to back; every latency variant waits this long between commits, untimed,
# because a commit after an idle gap costs more than one straight after another on the same disk.
GAP = 0.002  # seconds
BODY = {"code": CODE, "symbology": "ean13", "scanner": "/dev/input/event3", "scanned_at": "2026-11-27T10:00:00.000Z",
        "quantity": 1, "known": True, "currency": "CNY", "unit_price": 2300, "name": "Hongtashan (pack)"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def plain_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL)")
    return conn


def plain_commit(conn: sqlite3.Connection, row: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO events (kind, body) VALUES ('sale', ?)", [row])
    conn.execute("COMMIT")


def baseline_burst(directory: Path, n: int, name: str = "plain-burst") -> float:
    """Rows per second, one commit each, back to back."""
    conn = plain_db(directory / f"{name}.db")
    row = json.dumps(BODY)
    t0 = time.perf_counter()
    for _ in range(n):
        plain_commit(conn, row)
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


@contextlib.asynccontextmanager
async def agent(directory: Path, name: str):
    """The daemon's scan path on a FIFO: scanner manager, store and counter; yields (fifo, done times)."""
    fifo = directory / f"{name}.fifo"
    os.mkfifo(fifo)
    store = await Store.open(directory / f"{name}.db", os.urandom(32))
    await store.append("price_list", PRICES)
    counter = Counter()
    durable: list[float] = []
    arrived = asyncio.Event()

    def on_scan(scan):  # as the daemon's: the store has the scan as this returns
        return answered(record_scan(store, counter, scan))

    async def answered(recorded):
        signal = await recorded
        durable.append(time.perf_counter())
        arrived.set()
        return signal

    config = ScannerConfig(paths=(str(fifo),), auto=False, hid_pos=False)
    task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"), on_scan=on_scan).run())
    try:
        yield fifo, durable, arrived
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


# When each group commit returned in the store's thread: the moment its scans were durable.
COMMITTED: list[float] = []


def _timed_commit(commit):
    def timed(journal, group):
        results = commit(journal, group)
        COMMITTED.append(time.perf_counter())
        return results
    return timed


store_module._commit = _timed_commit(store_module._commit)


def _writer(fifo: Path) -> int:
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)  # the agent has not opened it yet


async def latency(directory: Path, n: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """The three variants interleaved, one scan of each in turn, so the disk's drift touches all alike."""
    conn = plain_db(directory / "plain.db")
    row = json.dumps(BODY)
    journal = Journal.open(directory / "direct.db", os.urandom(32))
    journal.append("price_list", PRICES)
    direct_counter = Counter()
    scan = Scan(CODE, "/dev/input/event3", time.time(), time.time())
    plain, direct, ours, answered = [], [], [], []
    async with agent(directory, "latency") as (fifo, durable, arrived):
        fd = await asyncio.to_thread(_writer, fifo)
        os.set_blocking(fd, True)
        await asyncio.sleep(0.2)  # a pause after the open: the first scan is seen from its start
        for _ in range(n):
            time.sleep(GAP)  # untimed; nothing else runs on this loop meanwhile
            t0 = time.perf_counter()
            plain_commit(conn, row)
            plain.append(time.perf_counter() - t0)

            time.sleep(GAP)
            t0 = time.perf_counter()
            direct_counter.record(journal, scan)
            direct.append(time.perf_counter() - t0)

            events = type_text(CODE, start=time.time())
            split = next(i for i, e in enumerate(events) if e.code == 28 and e.value == 1)
            os.write(fd, pack_all(events[:split]))
            await asyncio.sleep(GAP)  # the head is read and decoded, untimed
            arrived.clear()
            t0 = time.perf_counter()
            os.write(fd, pack_all(events[split:]))  # the terminator: from here the clock runs
            await arrived.wait()
            ours.append(COMMITTED[-1] - t0)
            answered.append(durable[-1] - t0)
        os.close(fd)
    conn.close()
    journal.close()
    return plain, direct, ours, answered


async def burst(directory: Path, n: int, name: str = "burst") -> float:
    """Scans per second, from the first byte written to the last scan durable."""
    async with agent(directory, name) as (fifo, durable, arrived):
        fd = await asyncio.to_thread(_writer, fifo)
        os.set_blocking(fd, True)
        await asyncio.sleep(0.2)
        events, t = [], time.time()
        for _ in range(n):
            events += type_text(CODE, start=t)
            t = events[-1].timestamp() + 0.004
        data = pack_all(events)
        t0 = time.perf_counter()
        writing = threading.Thread(target=os.write, args=(fd, data))  # more than a pipe holds: the reader drains it
        writing.start()
        while len(durable) < n:
            arrived.clear()
            await arrived.wait()
        elapsed = durable[-1] - t0
        await asyncio.to_thread(writing.join)
        os.close(fd)
        return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        directory = Path(tmp)
        plain, direct, ours, answered = asyncio.run(latency(directory, args.scans))
        # Bursts are short: each is measured five times, alternating, and the medians compared.
        plain_rates, burst_rates = [], []
        for round_ in range(5):
            plain_rates.append(baseline_burst(directory, args.burst, f"plain-burst-{round_}"))
            burst_rates.append(asyncio.run(burst(directory, args.burst, f"burst-{round_}")))
        plain_rate, burst_rate = statistics.median(plain_rates), statistics.median(burst_rates)
    rows = [("plain sqlite3 insert+commit", plain), ("counter+journal, in thread", direct),
            ("counterbox scan-to-durable", ours), ("counterbox scan-to-answer", answered)]
    print(f"{args.scans} scans, WAL + synchronous=FULL, same disk, same run")
    print(f"{'':32} {'median':>9} {'p99':>9}")
    for name, values in rows:
        print(f"{name:32} {statistics.median(values) * 1e3:8.3f}ms {percentile(values, 99) * 1e3:8.3f}ms")
    for name, values in rows[1:]:
        print(f"{'ratio ' + name.split(',')[0] + ' / plain':32} "
              f"{statistics.median(values) / statistics.median(plain):8.2f}x "
              f"{percentile(values, 99) / percentile(plain, 99):8.2f}x")
    print(f"\nburst of {args.burst} scans, median of 5 alternating runs")
    print(f"{'plain one-row commits':32} {plain_rate:9.0f} rows/s")
    print(f"{'counterbox, group commit':32} {burst_rate:9.0f} scans/s")
    print(f"{'ratio counterbox / plain':32} {burst_rate / plain_rate:8.2f}x")


if __name__ == "__main__":
    main()
