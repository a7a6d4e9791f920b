"""Logs name events, never what was sold: a whole demo's logs, at DEBUG, hold no code, product or amount."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

from demo.__main__ import SESSION

ROOT = Path(__file__).resolve().parent.parent


def test_a_whole_demo_logs_no_code_product_or_amount_at_any_level():
    result = subprocess.run([sys.executable, "-m", "demo", "--keep", "--speed", "20", "--log-level", "DEBUG"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    workdir = Path(result.stdout.rsplit("working directory kept: ", 1)[1].strip())
    try:
        # Each line's own timestamp (its milliseconds can read like a price in fen) is not what it says.
        stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)
        logs = {path.name: stamp.sub("", path.read_text()) for path in workdir.rglob("*.log")}
        assert {"agent.log", "central.log"} <= set(logs)
        assert "DEBUG" in logs["agent.log"] and "sale seq=" in logs["agent.log"]  # the logs are really there
        secrets = {code for code, _ in SESSION}
        with (ROOT / "demo" / "prices.csv").open() as prices:
            for row in csv.DictReader(prices):
                fen = round(float(row["price"]) * 100)
                secrets |= {row["barcode"], row["name"], row["name"].split(" (")[0], row["price"], str(fen)}
        for name, text in logs.items():
            for secret in sorted(secrets):
                pattern = re.escape(secret) if not secret.isdigit() else rf"(?<![\d.]){secret}(?![\d.])"
                found = re.search(pattern, text)
                assert found is None, f"{name} shows {secret!r}: ...{text[max(0, found.start() - 80):found.end() + 20]}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
