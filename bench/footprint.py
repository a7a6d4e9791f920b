"""Memory and flash: what the agent costs a small box, as ratios against a baseline in the same run.

- Journal size: bytes per sale on disk (database + WAL after a checkpoint), beside
  the same sale bodies as plain JSON rows in an unencrypted SQLite table.
- Agent memory: resident set (VmRSS, and the peak VmHWM) of the real ``counterbox run``
  process, with a broker and central, after it has recorded and delivered N scans fed through
  its scanner FIFO, beside a bare Python interpreter of the same virtualenv. The agent's
  modules are compiled to bytecode first, as the image has them.

    .venv/bin/python bench/footprint.py [--scans 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.stack import Stack  # noqa: E402
from drivers.barcode import gs1_check_digit  # noqa: E402
from drivers.input_event import pack_all  # noqa: E402
from drivers.recording import type_text  # noqa: E402
from storage import Journal  # noqa: E402


def memory(pid: int) -> tuple[int, int, int, int]:
    """(VmRSS, VmHWM, RssAnon, RssFile) of a process, in KiB: the resident set, its peak, and the
    resident set split into the process's own pages and pages of mapped files (shared libraries)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"))


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def codes(n: int) -> list[str]:
    return [(body := f"69010{i:07d}") + str(gs1_check_digit(body)) for i in range(n)]


def journal_footprint(directory: Path, n: int) -> tuple[float, float]:
    body = {"code": "", "symbology": "ean13", "aim": None, "scanner": "/dev/input/event3",
            "scanned_at": "2026-11-27T10:00:00.000Z", "quantity": 1, "known": True, "currency": "CNY",
            "unit_price": 2300, "name": "Hongtashan (pack)"}
    journal = Journal.open(directory / "journal.db", os.urandom(32))
    plain = sqlite3.connect(directory / "plain.db", isolation_level=None)
    plain.execute("PRAGMA journal_mode = WAL")
    plain.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL)")
    for code in codes(n):
        journal.append("sale", {**body, "code": code})
        plain.execute("INSERT INTO events (kind, body) VALUES ('sale', ?)", [json.dumps({**body, "code": code})])
    for conn in (journal._conn, plain):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result = size(directory / "journal.db") / n, size(directory / "plain.db") / n
    journal.close()
    plain.close()
    return result


def agent_memory(directory: Path, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(1.0)
    baseline = memory(bare.pid)
    bare.kill()
    with Stack(directory / "stack") as stack:
        stack.start_broker()
        stack.start_central()
        fifo = directory / "scanner.fifo"
        os.mkfifo(fifo)
        device = stack.provision("bench-0001", scanners=[str(fifo)])
        device.start()
        fd = os.open(fifo, os.O_WRONLY)  # waits for the agent to open its scanner
        t = time.time() + 0.5  # the first scan a moment after the open, as after plugging a scanner in
        data = pack_all([ev for i, code in enumerate(codes(n)) for ev in type_text(code, start=t + i * 0.5)])
        os.write(fd, data)
        os.close(fd)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = device.status()
            if status["events"].get("sale") == n and status["acked_seq"] == status["last_seq"]:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError("the agent did not record and deliver every scan")
        agent = memory(device.process.pid)
    return baseline, agent


# What the agent's process imports, in the order it does; each step's resident memory is what it adds.
IMPORTS = [
    ("interpreter", ""),
    ("asyncio", "import asyncio"),
    ("paho-mqtt (with ssl), as agent.mqtt imports it", "import agent.mqtt"),
    ("cryptography (AES-GCM, Ed25519)", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM; "
                                        "from cryptography.hazmat.primitives.asymmetric import ed25519"),
    ("sqlite3", "import sqlite3"),
    ("evdev", "import evdev"),
    ("counterbox agent (daemon, store, protocol)", "import agent.cli, agent.daemon"),
    ("scanner manager (the US layout built in)", "import agent.scanners"),
    ("pyusb (only with HID POS on)", "import usb.core, drivers.hidpos"),
    ("xkbcommon (only for a layout other than US)", "import xkbcommon.xkb"),
]
_MEASURE = """
import sys
sys.path.insert(0, {root!r})
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
steps = {steps!r}
before = rss()
print("interpreter", before)
for name, statement in steps[1:]:
    exec(statement)
    now = rss()
    print(name, now - before)
    before = now
print("modules", " ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("sqlite_utils", "joserfc", "central", "demo",
                                                                               "reportlab", "http", "email", "_uuid")
                                 or m == "cryptography.hazmat.primitives.serialization")))
"""


def import_breakdown() -> list[tuple[str, int]]:
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(root=root, steps=IMPORTS)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    rows = [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in out if not line.startswith("modules")]
    unwanted = [line for line in out if line.startswith("modules")][0].split()[1:]
    if unwanted:
        raise AssertionError(f"the agent's process imports what it does not run: {unwanted}")
    return rows


def compile_bytecode() -> None:
    """The agent's own modules compiled, as a box has them (the image compiles every module when it is
    built). A checkout may have none (PYTHONDONTWRITEBYTECODE), and a process that compiles its
    modules as it imports them keeps the compiler's memory too."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("agent", "drivers", "storage", "provisioning"):
        if not compileall.compile_dir(root / package, quiet=1):
            raise RuntimeError(f"{package}: does not compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=2000)
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        ours, plain = journal_footprint(Path(tmp), args.scans)
        (bare_rss, bare_peak, bare_anon, bare_file), (rss, peak, anon, file) = agent_memory(Path(tmp), args.scans)
    print(f"{args.scans} sales, same run")
    print(f"journal on disk        {ours:8.0f} bytes/sale   plain JSON rows {plain:6.0f} bytes/sale   ratio {ours / plain:.2f}x")
    print(f"agent memory (RSS)     {rss / 1024:8.1f} MiB          bare interpreter {bare_rss / 1024:5.1f} MiB   ratio {rss / bare_rss:.2f}x")
    print(f"agent memory (peak)    {peak / 1024:8.1f} MiB          bare interpreter {bare_peak / 1024:5.1f} MiB   ratio {peak / bare_peak:.2f}x")
    print(f"  its own pages        {anon / 1024:8.1f} MiB          bare interpreter {bare_anon / 1024:5.1f} MiB")
    print(f"  files' pages         {file / 1024:8.1f} MiB          bare interpreter {bare_file / 1024:5.1f} MiB"
          "   (shared libraries' code, shared with other processes)")
    print("\nresident memory each import adds, in the agent's order (KiB):")
    for name, kib in import_breakdown():
        print(f"  {name:45} {kib:7d}")


if __name__ == "__main__":
    main()
