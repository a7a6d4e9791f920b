"""Report time for a year of a busy shop, beside reading the same rows from plain SQLite, in the same run.

The journal holds a year of a busy shop: 300 sales a day (packs, cartons,
some keyed prices, a void and a return now and then), a delivery received
and a stock count every week; every event recorded by the counter itself,
sealed (AES-256-GCM). The clock runs over what `counterbox report sales
--week DAY` does: open the journal, decrypt and fold every event, and build
the week's report; and over the stock report alike. Baseline: the same
number of rows of the same JSON read from an unencrypted SQLite table and
parsed, nothing folded.

    .venv/bin/python bench/reports.py [--days 365] [--sales 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import reports  # noqa: E402
from agent.ledger import Ledger  # noqa: E402
from agent.counter import Counter  # noqa: E402
from drivers.barcode import gs1_check_digit  # noqa: E402
from drivers.decoder import Scan  # noqa: E402
from storage import Journal  # noqa: E402

START = 1_764_547_200.0  # 2025-12-01T00:00Z


def ean(body: str) -> str:
    return body + str(gs1_check_digit(body))


def catalog(products: int) -> tuple[dict, list[str], list[str]]:
    items, packs, cartons = [], [], []
    for n in range(products):
        pack, carton = ean(f"690102{n:06d}"), ean(f"690103{n:06d}")
        price = 1000 + 50 * n
        items.append({"barcode": pack, "name": f"Brand {n} (pack)", "price": price, "cost": price * 85 // 100})
        items.append({"barcode": carton, "name": f"Brand {n} (carton)", "price": price * 10, "unit": "carton",
                      "packs": 10, "cost": price * 850 // 100, "product": pack})
        packs.append(pack)
        cartons.append(carton)
    return {"currency": "CNY", "items": items}, packs, cartons


def build(path: Path, key: bytes, days: int, sales: int) -> int:
    """A year of the shop's scans through the counter, a day per transaction; the number of events."""
    rng = random.Random(11)
    journal = Journal.open(path, key)
    prices, packs, cartons = catalog(60)
    journal.append("price_list", prices)
    clock = [0.0]
    counter = Counter(timezone=ZoneInfo("Asia/Shanghai"), clock=lambda: clock[0])

    def scan(code: str, at: float) -> None:
        clock[0] = at
        counter.record(journal, Scan(code, "/dev/input/event3", at, at))

    for day in range(days):
        t = START + day * 86_400 + 8 * 3600
        with journal.transaction():
            if day % 7 == 0:
                lines = [{"barcode": rng.choice(cartons), "name": "", "quantity": rng.randint(1, 5)} for _ in range(20)]
                journal.append("order", {"name": f"order/w{day // 7}", "order_id": f"w{day // 7}", "lines": lines})
                scan("CB:ALL-RECEIVED", t)
            for n in range(sales):
                t += 30
                roll = rng.random()
                if roll < 0.02:
                    scan("CB:VOID", t)
                    continue
                if roll < 0.03:
                    scan("CB:RETURN", t)
                elif roll < 0.08:
                    for key in ("CB:2", "CB:1", "CB:PRICE"):
                        scan(key, t)
                elif roll < 0.15:
                    scan(f"CB:QTY{rng.randint(2, 5)}", t)
                scan(rng.choice(cartons if roll > 0.9 else packs), t)
            if day % 7 == 6:
                scan("CB:COUNT", t + 60)
                for pack in packs[:30]:
                    scan(pack, t + 61)
                scan("CB:CLOSE", t + 62)
            scan("CB:END-DAY", t + 120)
    count = journal.last_seq()
    journal.close()
    return count


def timed(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sales", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        directory = Path(tmp)
        key, path = os.urandom(32), directory / "journal.db"
        t0 = time.perf_counter()
        events = build(path, key, args.days, args.sales)
        built = time.perf_counter() - t0

        # The baseline: the same bodies, unencrypted, in a plain table.
        journal = Journal.open(path, key)
        plain = sqlite3.connect(directory / "plain.db", isolation_level=None)
        plain.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
        plain.execute("BEGIN")
        after = 0
        while batch := journal.read_after(after, 5000):
            plain.executemany("INSERT INTO events VALUES (?, ?, ?)",
                              [(e.seq, e.kind, json.dumps(e.body)) for e in batch])
            after = batch[-1].seq
        plain.execute("COMMIT")
        journal.close()
        size = path.stat().st_size

        last_day = time.strftime("%Y-%m-%d", time.gmtime(START + (args.days - 1) * 86_400))

        def baseline() -> None:
            for _seq, _kind, body in plain.execute("SELECT seq, kind, body FROM events ORDER BY seq"):
                json.loads(body)

        def report(which: str) -> None:
            opened = Journal.open(path, key)
            try:
                after = 0
                ledger = Ledger(keep_days=True)
                while batch := opened.read_after(after, 1000):
                    for event in batch:
                        ledger.apply(event.seq, event.kind, event.body)
                    after = batch[-1].seq
                if which == "sales":
                    reports.sales_table(reports.sales(ledger, reports.week_of(last_day)))
                else:
                    reports.stock_table(reports.stock(ledger))
            finally:
                opened.close()

        base = timed(baseline)
        sales_time = timed(lambda: report("sales"))
        stock_time = timed(lambda: report("stock"))
        plain.close()
    print(f"a year of a busy shop: {args.days} days x {args.sales} sales, {events} events, journal {size / 2**20:.1f} MiB"
          f" (built in {built:.0f} s)")
    print(f"{'plain SQLite: read and parse every row':44} {base:7.2f} s")
    print(f"{'report sales --week (decrypt, fold, report)':44} {sales_time:7.2f} s  {sales_time / base:5.1f}x")
    print(f"{'report stock':44} {stock_time:7.2f} s  {stock_time / base:5.1f}x")


if __name__ == "__main__":
    main()
