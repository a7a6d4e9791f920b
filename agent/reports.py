"""Reports: the ledger's figures as tables for people and JSON for programs.

The box (`counterbox report ...`, for the technician on site) and central
(`counterbox-central report ...`, per shop and per region) fold the same
events with ``agent.ledger`` and print them with these functions, so both
say the same to the fen.

    ledger = fold(events)                        # (seq, kind, body), in order
    report = sales(ledger, week_of("2026-11-29"))
    print(sales_table(report))
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from .ledger import Ledger, Totals


def fold(events: Iterable[tuple[int, str, dict[str, Any]]], start: Ledger | None = None) -> Ledger:
    """The ledger of ``events`` (in order), from ``start`` (a box's retention checkpoint) or from nothing."""
    ledger = start if start is not None else Ledger(keep_days=True)
    for seq, kind, body in events:
        if seq > ledger.last_seq:
            ledger.apply(seq, kind, body)
    return ledger


def day_argument(text: str) -> str:
    """A day given on a command line (YYYY-MM-DD), for argparse's ``type=``."""
    import argparse

    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-29") from None
    if not 1970 <= day.year <= 9998:  # a week (or a period of days) around it must stay in the calendar
        raise argparse.ArgumentTypeError(f"{text!r} is not a day of the years 1970 to 9998")
    return day.isoformat()


def week_of(day: str) -> list[str]:
    """The days, Monday to Sunday, of the ISO week that holds ``day`` (YYYY-MM-DD)."""
    start = date.fromisoformat(day) - timedelta(days=date.fromisoformat(day).weekday())
    return [(start + timedelta(days=n)).isoformat() for n in range(7)]


def sales(ledger: Ledger, days: list[str]) -> dict[str, Any]:
    """Sales by product over ``days``: lines, packs, amount, cost and gross margin, and their total; the days
    closed, and those sold on (or returned, voided) and not closed, or not since: open (``sold_on_since_closed``
    names the latter: their figures are not those they closed with). A day in neither saw nothing."""
    products: dict[str, Totals] = {}
    total = Totals()
    closed, open_, sold_on = [], [], []
    for name in days:
        day = ledger.days.get(name)
        if day is None:
            continue
        for product, totals in day.products.items():
            _add(products.setdefault(product, Totals()), totals)
        _add(total, day.total)
        (open_ if day.closed is None or day.sold_on else closed).append(name)
        if day.sold_on:
            sold_on.append(name)
    return {
        "days": days,
        "closed": closed,
        "open": open_,
        "sold_on_since_closed": sold_on,
        # A product whose every line was voided is left out; one sold and returned stays (its lines say so).
        "products": [{"product": p, "name": ledger.names.get(p), **t.as_json()}
                     for p, t in sorted(products.items(), key=lambda item: (-item[1].amount, item[0])) if t.lines],
        "total": total.as_json(),
    }


def _add(into: Totals, other: Totals) -> None:
    for name in ("lines", "packs", "amount", "cost", "uncosted", "unpriced"):
        setattr(into, name, getattr(into, name) + getattr(other, name))


def merge_sales(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several reports over the same days as one: a shop's boxes', or a region's shops'. A day is closed when
    one of them closed it and none left it open: a box (or a shop) with nothing that day, one revoked before it or
    not yet serving, holds it open no more than it closes it."""
    products: dict[str, dict[str, Any]] = {}
    total = {"lines": 0, "packs": 0, "amount": 0, "cost": 0, "uncosted": 0, "margin": 0, "unpriced": 0}
    for report in reports:
        for row in report["products"]:
            merged = products.setdefault(row["product"], {"product": row["product"], "name": row["name"],
                                                          **{k: 0 for k in total}})
            merged["name"] = merged["name"] or row["name"]
            for k in total:
                merged[k] += row[k]
        for k in total:
            total[k] += report["total"][k]
    days = reports[0]["days"] if reports else []
    open_ = {day for report in reports for day in report["open"]}
    closed = {day for report in reports for day in report["closed"]} - open_
    sold_on = {day for report in reports for day in report["sold_on_since_closed"]}
    return {"days": days, "closed": [day for day in days if day in closed],
            "open": [day for day in days if day in open_],
            "sold_on_since_closed": [day for day in days if day in sold_on], "total": total,
            "products": sorted(products.values(), key=lambda row: (-row["amount"], row["product"]))}


def stock(ledger: Ledger) -> dict[str, Any]:
    """Packs on the shelf by product as the events say; which are known (received or counted) and
    which are below zero, since which event."""
    rows = [{"product": p, "name": ledger.names.get(p), "packs": packs, "tracked": p in ledger.tracked,
             "negative_since": ledger.negative.get(p)} for p, packs in sorted(ledger.stock.items())]
    return {"products": rows, "negative": [row for row in rows if row["negative_since"] is not None]}


def counts(ledger: Ledger) -> list[dict[str, Any]]:
    """Each closed stock count with the products whose count differed from the ledger."""
    return [{"seq": count["seq"], "at": count.get("at"), "day": count.get("day"), "products": len(count["lines"]),
             "differences": [line for line in count["lines"] if line["difference"]]} for count in ledger.counts]


def receipts(ledger: Ledger) -> list[dict[str, Any]]:
    """Each closed receiving, with the lines that differ from the order (none for a receiving of no order,
    which closed with the good signal: there was nothing to differ from)."""
    return [{"seq": receipt["seq"], "at": receipt.get("at"), "day": receipt.get("day"), "order": receipt.get("order"),
             "differences": [line for line in receipt["lines"] if line["difference"]] if receipt.get("order") else []}
            for receipt in ledger.receipts]


# -- tables ------------------------------------------------------------------------------

def money(minor: int) -> str:
    """Minor units as a decimal amount, exactly: 23050 -> 230.50, -5 -> -0.05."""
    sign = "-" if minor < 0 else ""
    whole, fen = divmod(abs(minor), 100)
    return f"{sign}{whole}.{fen:02d}"


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a wide character (a Chinese product's name) two, a combining one none."""
    return sum(0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
               for char in text)


def printable(text: str) -> str:
    """``text`` with control and format characters written out (ESC as ``\\x1b``): a name or currency comes
    from a box's events, and one that held a terminal's escape sequence would clear or rewrite the screen
    of whoever reads the report, or hide the rows after it."""
    if text.isprintable():
        return text
    return "".join(char if unicodedata.category(char) not in ("Cc", "Cf")
                   else f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}" for char in text)


def table(headers: list[str], rows: list[list[Any]], *, text_columns: int = 2) -> str:
    """Columns aligned for a terminal: the first ``text_columns`` (names) to the left, figures to the right."""
    cells = [headers] + [["" if value is None else printable(str(value)) for value in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell + " " * (size - width(cell)) if i < text_columns else " " * (size - width(cell)) + cell
                       for i, (cell, size) in enumerate(zip(row, widths))).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * size for size in widths))
    return "\n".join(lines)


def sales_table(report: dict[str, Any]) -> str:
    days = report["days"]
    span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    rows = [[row["product"], row["name"] or ("(not on the price list)" if row["unpriced"] else ""), row["lines"],
             row["packs"],
             money(row["amount"]), money(row["cost"]), money(row["margin"])] for row in report["products"]]
    total = report["total"]
    rows.append(["total", "", total["lines"], total["packs"], money(total["amount"]), money(total["cost"]),
                 money(total["margin"])])
    notes = []
    if total["uncosted"]:
        notes.append(f"{money(total['uncosted'])} of sales have no cost price: left out of the margin")
    if total["unpriced"]:
        notes.append(f"{total['unpriced']} line{'s' if total['unpriced'] != 1 else ''} of products not on the price "
                     "list, sold without a price")
    if report["closed"]:
        notes.append(f"closed: {', '.join(report['closed'])}")
    if report.get("sold_on_since_closed"):
        notes.append(f"sold on since closed (CB:END-DAY closes it again): {', '.join(report['sold_on_since_closed'])}")
    return "\n".join([f"Sales {span}", table(["product", "name", "lines", "packs", "amount", "cost", "margin"], rows),
                      *notes])


def _below_zero(row: dict[str, Any]) -> str:
    """Since which event; central's rows of a shop with several boxes also say on which box (a seq is one box's)."""
    if row["negative_since"] is None:
        return ""
    device = row.get("negative_device")
    return f"since seq {row['negative_since']}" + (f" on {device}" if device else "")


def stock_table(report: dict[str, Any]) -> str:
    rows = [[row["product"], row["name"], row["packs"], "yes" if row["tracked"] else "not yet",
             _below_zero(row)]
            for row in report["products"]]
    # Known: received or counted (before either, the box knows only what it sold from a shelf it never saw).
    lines = ["Stock (packs)", table(["product", "name", "packs", "known", "below zero"], rows)]
    if report["negative"]:
        lines.append(f"{len(report['negative'])} products below zero: count them and find the cause")
    return "\n".join(lines)


def differences_table(title: str, reports: list[dict[str, Any]], expected: str, actual: str) -> str:
    lines = [title]
    for report in reports:
        about = f" order {printable(report['order'])}" if report.get("order") else ""
        differ = len(report["differences"])
        lines.append(f"seq {report['seq']} at {report['at']}{about}: {differ} difference{'' if differ == 1 else 's'}")
        if report["differences"]:
            lines.append(table(["product", "name", expected, actual, "difference"],
                               [[d["product"], d["name"], d[expected], d[actual], d["difference"]]
                                for d in report["differences"]]))
    return "\n".join(lines)
