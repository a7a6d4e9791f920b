"""Decoded barcodes per second through the whole driver path, beside a bare unpacking loop, in the same run.

Both read the same recording of N scans (the kernel's input_event bytes, as a
scanner types them: MSC_SCAN, key down, SYN, MSC_SCAN, key up, SYN per key).

- baseline: a loop that only unpacks the bytes into (sec, usec, type, code, value) tuples;
- driver path: the agent's reader (as for a recording file), its decoder (the built-in US layout,
  per-device state, timing check) fed a read's records at a time, and the barcode check, as the
  daemon runs them.

    .venv/bin/python bench/decode_throughput.py [--scans 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.barcode import classify, gs1_check_digit  # noqa: E402
from drivers.decoder import Decoder, Scan  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.reader import open_source  # noqa: E402
from drivers.recording import type_text  # noqa: E402


def recording(n: int) -> bytes:
    events = []
    t = 1_764_000_000.0
    for i in range(n):
        body = f"69010{i % 10_000_000:07d}"
        events += type_text(body + str(gs1_check_digit(body)), start=t, keypad_digits=i % 3 == 0)
        t += 0.5
    return pack_all(events)


def bare(data: bytes) -> int:
    count = 0
    for _sec, _usec, _type, _code, _value in struct.iter_unpack("@llHHi", data):
        count += 1
    return count


async def driver_path(path: str) -> int:
    decoder = Decoder(path)
    barcodes = 0
    async with open_source(path) as source:
        async for batch in source.batches():
            for result in decoder.feed_all(batch, held_keys=source.held_keys):
                if isinstance(result, Scan) and classify(result.text, result.aim).valid:
                    barcodes += 1
    return barcodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=20_000)
    args = parser.parse_args()
    data = recording(args.scans)
    with tempfile.NamedTemporaryFile(suffix=".events") as file:
        file.write(data)
        file.flush()
        t0 = time.perf_counter()
        events = bare(data)
        t_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        barcodes = asyncio.run(driver_path(file.name))
        t_driver = time.perf_counter() - t0
    assert barcodes == args.scans, f"{barcodes} barcodes decoded from {args.scans} scans"
    print(f"{args.scans} scans, {events} input events ({len(data) / 1e6:.1f} MB), same run")
    print(f"bare unpack loop          {events / t_bare:12,.0f} events/s  {args.scans / t_bare:10,.0f} barcodes/s")
    print(f"driver path (decoded)     {events / t_driver:12,.0f} events/s  {args.scans / t_driver:10,.0f} barcodes/s")
    print(f"ratio (bare / driver)     {t_driver / t_bare:12.1f}x slower than bare unpacking")


if __name__ == "__main__":
    main()
