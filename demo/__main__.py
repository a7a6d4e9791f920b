"""The main job, end to end, on this machine:

local broker -> central ingest -> a provisioned demo device -> the agent,
driven by a replayed scanner session -> what central received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from textwrap import indent

from drivers.input_event import pack_all
from drivers.recording import replay, type_text

from agent.counter import START_GUARD

from .stack import Stack

HERE = Path(__file__).resolve().parent

# A morning at the counter: (what is scanned, how the scanner types it). Codes starting "CB:" are
# the printed control sheet's (counterbox-ops controls sheet).
SESSION = [
    ("CB:ALL-RECEIVED", {}),                        # the week's order arrived in full
    ("6901028075831", {}),                         # Hongtashan pack
    ("CB:QTY3", {}),                               # three of the next:
    ("6901028075831", {}),                         # Hongtashan pack x3
    ("6902672100139", {"keypad_digits": True}),    # Yuxi carton, from a scanner sending keypad digits
    ("6901802010010", {}),                         # water
    ("40063812", {}),                              # lighter, EAN-8
    ("CB:VOID", {}),                               # the customer changed his mind about the lighter
    ("CB:CARTON", {}),                             # a carton of the next:
    ("6920883001151", {"keypad_digits": True}),    # Honghe pack barcode: sells the Honghe carton
    ("6901028075832", {}),                         # a misread: wrong check digit, refused
    ("6935750500019", {}),                         # a product not on the price list: recorded, flagged unknown
    ("PROMO-$5", {}),                              # a shifted-character code: kept as a raw code, unknown
    ("CB:2", {}), ("CB:1", {}), ("CB:DOT", {}), ("CB:5", {}),
    ("CB:PRICE", {}),                              # the regular customer's price, 21.50:
    ("6901028075831", {}),                         # Hongtashan pack at 21.50
    ("CB:RETURN", {}),                             # a return:
    ("6901802010010", {}),                         # the water comes back
    ("CB:END-DAY", {}),                            # the day closed, with its totals
]


LICENCE = "530102100123"


def read_slip(path: Path) -> str:
    """The text of the slip's QR code, as a 2D scanner reads it."""
    import zxingcpp
    from PIL import Image

    return zxingcpp.read_barcodes(Image.open(path))[0].text


def session_bytes(start: float) -> bytes:
    events = []
    t = start
    for text, how in SESSION:
        events += type_text(text, start=t, **how)
        t += 1.5  # the next customer
    return pack_all(events)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="run-demo", description=__doc__)
    parser.add_argument("--speed", type=float, default=10.0, help="replay speed (default 10x real time)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of the agent and central (their logs are in the working directory)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="counterbox-demo-"))
    try:
        with Stack(workdir, log_level=args.log_level) as stack:
            print(f"1. broker: mosquitto on 127.0.0.1:{stack.broker_port} (config: central/mosquitto.conf)")
            stack.start_broker()
            print("2. central: ingest started, signing key", stack.central_public_key())
            stack.start_central()
            fifo = workdir / "scanner.fifo"
            os.mkfifo(fifo)
            device = stack.install("demo-box", scanners=[str(fifo)])
            device.start()
            started = time.time()
            wait_until(lambda: (device.directory / "device.key").exists(), 30, "the box to make its key")
            box = device.identity()["device"]
            wait_until(lambda: box in stack.ops_command("activation", "waiting", "--central-db",
                                                         str(stack.central_db)).stdout, 30, "the box's hello")
            print(f"3. a new box out of the image: it made its key, is device {box}, and waits for activation")
            shop = stack.ops_command("shop", "add", "--central-db", str(stack.central_db), "--licence", LICENCE,
                                     "--name", "Mengzi No. 3", "--region", "honghe")
            slip = workdir / "activation-slip.png"
            issued = stack.ops_command("activation", "issue", "--central-db", str(stack.central_db), "--ops-key",
                                       str(stack.ops_key), "--shop", LICENCE, "--slip", str(slip))
            if shop.returncode or issued.returncode:
                raise SystemExit(f"activation not issued: {shop.stderr}{issued.stderr}")
            token = read_slip(slip)  # what the counter's 2D scanner reads off the printed slip
            asyncio.run(replay(pack_all(type_text(token, start=time.time())), str(fifo), speed=args.speed, lead_in=0.5))
            wait_until(lambda: device.status()["shop"] == LICENCE, 60, "the box to be activated")
            print(f"4. operations registered shop {LICENCE} and printed an activation slip ({slip.name}); "
                  "the retailer scanned it: the box is the shop's box")
            pushed = stack.push("prices", HERE / "prices.csv", "--region", "honghe")
            if pushed.returncode:
                raise SystemExit(f"price list not pushed: {pushed.stderr.strip()}")
            wait_until(lambda: device.status()["events"].get("document"), 30, "the box to apply the price list")
            print(f"5. operations pushed the week's price list to region honghe, signed (counterbox-ops prices push);"
                  f" the box applied it: {pushed.stdout.strip()}")
            pushed = stack.push("order", HERE / "order.csv", "--device", box, "--order-id", "2026-w48")
            if pushed.returncode:
                raise SystemExit(f"order not pushed: {pushed.stderr.strip()}")
            wait_until(lambda: device.status()["events"].get("order"), 30, "the box to hold the order")
            print("   and the shop's order for the week (counterbox-ops order push): 5 cartons of Hongtashan, "
                  "3 of Yuxi, 2 of Honghe")
            # The shop opens a while after the box starts: digits keyed in its first seconds are refused.
            time.sleep(max(0.0, started + START_GUARD - time.time()))
            data = session_bytes(time.time())
            print(f"6. replaying a scanner session: {len(SESSION)} scans, {len(data) // 24} input events, at {args.speed}x")
            asyncio.run(replay(data, str(fifo), speed=args.speed, lead_in=0.5))
            def delivered() -> bool:
                status = device.status()
                return status["events"].get("day_closed") and status["acked_seq"] == status["last_seq"]

            wait_until(delivered, 30, "central to acknowledge every event")
            status = device.status()
            kinds = ", ".join(f"{n} {kind}" for kind, n in status["events"].items())
            print(f"7. device journal: {status['last_seq']} events ({kinds}), "
                  f"acknowledged by central up to seq {status['acked_seq']}")
            device.stop()

            print("\nWhat central received (counterbox-central export):")
            for sale in stack.sales():
                price = f"{sale['unit_price'] / 100:8.2f} {sale['currency']}" if sale["unit_price"] is not None \
                    else "  unknown"
                print(f"  seq {sale['seq']:>3}  {sale['code']:<14} x{sale['quantity']:<2} {price}  {sale['name'] or ''}")
            day = json.loads(device.command("report", "sales", "--json").stdout)["days"][0]
            print(f"\nThe day's sales on the box (counterbox report sales --day {day}):")
            box_report = device.command("report", "sales", "--day", day)
            print(indent(box_report.stdout.strip(), "  "))
            central_report = stack.central_command("report", "sales", "--day", day, "--shop", LICENCE)
            print(f"\nThe same day at central (counterbox-central report sales --day {day} --shop {LICENCE}):")
            print(indent(central_report.stdout.strip(), "  "))
            print("\nStock on the box after the delivery and the morning (counterbox report stock):")
            print(indent(device.command("report", "stock").stdout.strip(), "  "))
            print("\nThe fleet, from each box's signed status (counterbox-central devices; the box has stopped):")
            for line in stack.central_command("devices").stdout.splitlines():
                print("  " + line)
            log = stack.central_log.read_text()
            accepted, rejected = log.count("batch accepted"), log.count("batch rejected")
            print(f"\nBatches: {accepted} accepted, every one verified (JWS, Ed25519); {rejected} rejected.")
            agent_log = device.log.read_text()
            print("\nAgent log, what needs a look (a log line names the event, never its code or price):")
            flagged = [line.split(": ", 1)[-1] for line in agent_log.splitlines()
                       if any(word in line for word in ("misread seq=", "refused seq=", "not on the price list"))]
            for line in flagged:
                print("  " + line)
            print("\nThe same events decrypted on the box (counterbox show SEQ, with the data key):")
            for line in flagged:
                seq = line.split("seq=", 1)[1].split()[0]
                print("  " + device.command("show", seq).stdout.strip())
        return 0 if rejected == 0 else 1
    finally:
        if args.keep:
            print(f"\nworking directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
