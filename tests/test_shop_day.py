"""A shop's day at the counter, typed into the agent as the kernel's input_event bytes, checked against the
reports of the box and of central: the same figures, to the fen."""

from __future__ import annotations

import json
import time

import pytest

from agent.catalog import product_key
from agent.counter import START_GUARD

from .harness import feed, scans, wait_until

DEVICE = "shop-0002"
PACK, CARTON = "6901028075831", "6901028075848"  # Hongtashan
YUXI_PACK, YUXI_CARTON = "6901028001366", "6901028001373"
GUM = "96385074"
UNKNOWN = "6935750500019"
PRICES = (
    "barcode,name,price,unit,packs,cost,product\n"
    f"{PACK},Hongtashan (pack),23.00,pack,1,19.50,\n"
    f"{CARTON},Hongtashan (carton),225.00,carton,10,195.00,{PACK}\n"
    f"{YUXI_PACK},Yuxi (pack),25.00,pack,1,21.20,\n"
    f"{YUXI_CARTON},Yuxi (carton),250.00,carton,10,212.00,{YUXI_PACK}\n"
    f"{GUM},Gum,1.50,,,,\n"
)
ORDER = f"barcode,name,quantity\n{CARTON},Hongtashan (carton),5\n{YUXI_CARTON},Yuxi (carton),2\n"


def keyed(number: str) -> list[str]:
    return [f"CB:{'DOT' if c == '.' else c}" for c in number]


# The day: the delivery is received line by line (one Yuxi carton short), a morning of sales with a
# quantity, a carton, a pack scanned as a carton, a void, a return, a keyed price and a product off the
# list, then the shelf counted the evening before the next delivery, and the day closed.
DAY = [
    "CB:RECEIVING", CARTON, CARTON, CARTON, CARTON, CARTON, YUXI_CARTON, "CB:CLOSE",
    PACK, PACK, "CB:QTY3", YUXI_PACK, CARTON, "CB:CARTON", YUXI_PACK, GUM,
    PACK, "CB:VOID",
    "CB:RETURN", YUXI_PACK,
    *keyed("21.5"), "CB:PRICE", PACK,
    UNKNOWN,
    "CB:COUNT", CARTON, CARTON, CARTON, "CB:QTY8", PACK, YUXI_CARTON, "CB:CLOSE",
    "CB:END-DAY",
]
# Packs: Hongtashan received 50, sold 2 + 10 + 1 + 1 - 1 (voided) = 13, leaving 37; 38 are counted.
# Yuxi received 10, sold 3 + 10 and 1 returned, leaving -2 (it went below zero at the carton); 10 counted.
AMOUNT = 2 * 2300 + 3 * 2500 + 22500 + 25000 + 150 - 2500 + 2150  # the void took one pack back out
COST = 2 * 1950 + 3 * 2120 + 19500 + 21200 - 2120 + 1950  # gum and the unknown have no cost price
UNCOSTED = 150


@pytest.fixture
def shop(stack, fifo, tmp_path):
    device = stack.provision(DEVICE, scanners=[str(fifo)])
    device.config.write_text(device.config.read_text() + '\n[counter]\ntimezone = "Asia/Shanghai"\n')
    (tmp_path / "prices.csv").write_text(PRICES)
    (tmp_path / "order.csv").write_text(ORDER)
    for command in (("prices", "load", str(tmp_path / "prices.csv")),
                    ("order", "load", str(tmp_path / "order.csv"), "--id", "2026-w48")):
        done = device.command(*command)
        assert done.returncode == 0, done.stderr
    return device


def test_a_shops_day_scanned_and_reported_the_same_on_the_box_and_at_central(stack, shop, fifo):
    shop.start()
    wait_until(lambda: "agent started" in shop.log.read_text(), 20, "the agent started")
    time.sleep(START_GUARD)  # the shop opens later than the box: digits keyed at its start are refused
    feed(fifo, scans(DAY, key_interval=0.004))
    wait_until(lambda: shop.status()["events"].get("day_closed"), 90, "the day to be closed")
    wait_until(lambda: (s := shop.status()) and s["acked_seq"] == s["last_seq"], 60, "central to hold every event")
    shop.stop()
    day = json.loads(shop.command("show", "--last", "1").stdout)["body"]["day"]  # the day the shop closed
    events = shop.status()["events"]
    assert (events["sale"], events["return"], events["void"], events["received"], events["counted"]) == (9, 1, 1, 6, 5)
    assert "refused" not in events and "misread" not in events  # every control code was one

    box = json.loads(shop.command("report", "sales", "--day", day, "--json").stdout)
    total = box["total"]
    assert (total["amount"], total["cost"], total["uncosted"], total["unpriced"]) == (AMOUNT, COST, UNCOSTED, 1)
    assert total["margin"] == AMOUNT - UNCOSTED - COST
    assert box["closed"] == [day]

    # A box registered by hand with no shop at central is its own shop there.
    central = json.loads(stack.central_command("report", "sales", "--day", day, "--device", DEVICE, "--json").stdout)
    assert central["shops"][DEVICE]["total"] == total  # to the fen
    assert central["shops"][DEVICE]["products"] == box["products"]

    stock = json.loads(shop.command("report", "stock", "--json").stdout)
    packs = {row["product"]: row["packs"] for row in stock["products"]}
    assert (packs[product_key(PACK)], packs[product_key(YUXI_PACK)]) == (38, 10)  # what was counted
    central_stock = json.loads(stack.central_command("report", "stock", "--device", DEVICE, "--json").stdout)
    assert {row["product"]: row["packs"] for row in central_stock[DEVICE]["products"]} == packs

    [receipt] = json.loads(shop.command("report", "receipts", "--json").stdout)
    assert [(d["product"], d["ordered"], d["received"]) for d in receipt["differences"]] == [
        (product_key(YUXI_PACK), 20, 10)]
    [count] = json.loads(shop.command("report", "counts", "--json").stdout)
    differences = {d["product"]: (d["expected"], d["counted"]) for d in count["differences"]}
    assert differences[product_key(PACK)] == (37, 38)
    assert differences[product_key(YUXI_PACK)] == (-2, 10)

    log = shop.log.read_text()
    for secret in (PACK, CARTON, YUXI_PACK, "Hongtashan", "2300", "21.5"):
        assert secret not in log, f"{secret!r} in the agent's log"


def test_sigkills_mid_day_book_no_fragment_of_any_kind_and_the_box_and_central_still_agree(stack, shop, fifo):
    """The agent killed at random moments while the day is typed: control codes, receiving and counting
    included. No event is ever made from a scan cut short (a control's tail, a product's), each event
    reaches central once, and central's figures are the box's."""
    import random
    from collections import Counter

    from .harness import LiveScanner

    rng = random.Random(23)
    products = [PACK, CARTON, YUXI_PACK, GUM, UNKNOWN]
    session = []
    for n in range(70):
        roll = rng.random()
        if roll < 0.1:
            session.append(rng.choice(["CB:VOID", "CB:RETURN", "CB:QTY3", "CB:CARTON"]))
        elif roll < 0.15:
            session += ["CB:RECEIVING", rng.choice(products), "CB:CLOSE"]
        elif roll < 0.2:
            session += ["CB:COUNT", rng.choice(products), rng.choice(products), "CB:CLOSE"]
        session.append(rng.choice(products))
    shop.start()
    kills = 0
    with LiveScanner(fifo, [(code, {}) for code in session]) as scanner:
        while not scanner.done.wait(rng.uniform(0.8, 2.0)):
            shop.kill()
            kills += 1
            shop.start()
    wait_until(lambda: (s := shop.status()) and s["acked_seq"] == s["last_seq"] and s["events"].get("sale"), 60,
               "every event acknowledged")
    shop.stop()
    assert kills >= 3
    events = [json.loads(line) for line in stack.central_command("export", "--kind", "").stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each once, none missing
    typed = Counter(session)
    for kind in ("sale", "return", "received", "counted"):
        codes = Counter(e["code"] for e in events if e["kind"] == kind and e.get("code"))
        assert not codes - typed, f"{kind} of codes nobody scanned whole: {sorted(codes - typed)}"
    assert sum(1 for e in events if e["kind"] == "void") <= typed["CB:VOID"]

    day = [e for e in events if e["kind"] == "sale"][-1]["day"]
    box = json.loads(shop.command("report", "sales", "--day", day, "--json").stdout)
    central = json.loads(stack.central_command("report", "sales", "--day", day, "--device", DEVICE, "--json").stdout)
    assert central["shops"][DEVICE]["total"] == box["total"] and box["total"]["lines"] > 0
    stock = json.loads(shop.command("report", "stock", "--json").stdout)
    central_stock = json.loads(stack.central_command("report", "stock", "--device", DEVICE, "--json").stdout)
    # Central's rows are the box's own, and name the box where one is below zero.
    rows = central_stock[DEVICE]["products"]
    assert [{k: v for k, v in row.items() if k != "negative_device"} for row in rows] == stock["products"]
    assert [row["negative_device"] for row in rows] == [DEVICE if row["negative_since"] else None for row in rows]
