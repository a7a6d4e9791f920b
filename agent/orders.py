"""Orders: what the company sends a shop, line by line, to be received at the counter.

An order reaches the box as a document signed by operations (the fleet link),
or, offline, as a CSV file loaded with ``counterbox order load``:

    barcode,name,quantity
    6901028075831,Hongtashan (pack),20
    6901028075848,Hongtashan (carton),5

A line's quantity is in the units its barcode stands for (a carton barcode:
cartons). Either way the order is an ``order`` event in the journal; the
counter receives it in full (``CB:ALL-RECEIVED``) or line by line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from provisioning.documents import MAX_ORDER_LINES, MAX_QUANTITY

from .prices import check_code, csv_rows, csv_text


class OrderError(Exception):
    """An order file that cannot be loaded; says which line and why."""




def read_csv(path: Path) -> list[dict[str, Any]]:
    """The order in the CSV file at ``path``: UTF-8 (a byte order mark allowed), as ``parse_csv`` reads it.
    Its errors name the file."""
    try:
        return parse_csv(csv_text(path, OrderError))
    except OrderError as error:
        raise OrderError(f"{path}: {error}") from None


def parse_csv(text: str) -> list[dict[str, Any]]:
    lines = []
    for number, row in csv_rows(text, {"barcode", "quantity"}, OrderError, read={"barcode", "name", "quantity"}):
        unread = [column for column in ("unit", "packs") if column in row]
        if unread:
            # A line's quantity is in the units its barcode stands for: 5 with a unit of carton was received as 5.
            raise OrderError(f"the order names a column {unread[0]}, which an order does not have: a line's quantity "
                             "is in the units its barcode stands for (a carton's barcode for cartons)")
        barcode, written = row.get("barcode", ""), row.get("quantity", "")
        # Grouped by thousands, as a spreadsheet writes 1,000.
        quantity = written.replace(",", "") if re.fullmatch(r"[1-9][0-9]{0,2}(,[0-9]{3})+", written) else written
        try:
            check_code(barcode)
        except ValueError as error:
            raise OrderError(f"line {number}: {error}") from None
        if not re.fullmatch(r"[0-9]{1,9}", quantity) or not 1 <= int(quantity) <= MAX_QUANTITY:
            raise OrderError(f"line {number}: quantity {written!r} must be a whole number from 1 to {MAX_QUANTITY}")
        lines.append({"barcode": barcode, "name": row.get("name", ""), "quantity": int(quantity)})
    if not lines:
        raise OrderError("the order has no lines")
    if len(lines) > MAX_ORDER_LINES:
        raise OrderError(f"{len(lines)} lines are more than the {MAX_ORDER_LINES} a box receives in one order")
    return lines
