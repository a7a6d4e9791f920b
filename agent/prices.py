"""Price lists: what each barcode sells for, in the currency's minor unit (fen for CNY).

A price list file is CSV with a header row:

    barcode,name,price
    6901028075831,Hongtashan (pack),23.00
    6901028075848,Hongtashan (carton),230.00

Loading one appends a ``price_list`` event to the journal; the counter prices
sales from the latest one. Pack, carton and case have distinct barcodes, so
each is its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.barcode import classify


class PriceListError(Exception):
    """A price list that cannot be loaded; says which line and why."""


@dataclass(frozen=True)
class Item:
    barcode: str
    name: str
    price: int  # minor units


def to_minor(text: str) -> int:
    from decimal import Decimal, InvalidOperation  # imported where prices are read, not in the daemon

    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"price {text!r} is not a number") from None
    if amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"price {text!r} must be zero or more, with at most two decimals")
    return int(amount * 100)


def parse_csv(text: str) -> list[Item]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"barcode", "price"} <= set(reader.fieldnames):
        raise PriceListError("the first line must be a header naming at least the columns barcode and price")
    items: dict[str, Item] = {}
    for line, row in enumerate(reader, start=2):
        code = (row.get("barcode") or "").strip()
        barcode = classify(code)
        if not code or not barcode.valid:
            raise PriceListError(f"line {line}: barcode {code!r} fails its check digit")
        if barcode.key in items:
            raise PriceListError(f"line {line}: barcode {code} is listed twice (as {items[barcode.key].barcode})")
        try:
            price = to_minor(row.get("price") or "")
        except ValueError as error:
            raise PriceListError(f"line {line}: {error}") from None
        items[barcode.key] = Item(code, (row.get("name") or "").strip(), price)
    if not items:
        raise PriceListError("the price list has no items")
    return list(items.values())
