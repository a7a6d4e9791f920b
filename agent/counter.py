"""The counter: what a scanned code means for the shop.

A product barcode is a sale of one unit at the price in the latest price
list; an unknown barcode is still a sale, flagged unknown, never dropped; a
code that fails its check digit is a misread, recorded but never a sale.
The counter writes to the journal and returns once the event is durable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from drivers.barcode import classify
from drivers.decoder import Scan
from drivers.feedback import Signal
from storage import Event, Journal

logger = logging.getLogger(__name__)


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Counter:
    journal: Journal
    currency: str = "CNY"
    _prices: dict[str, dict] | None = None
    _prices_seq: int = -1

    def _price_book(self) -> dict[str, dict]:
        # The journal is the source of truth; a price list loaded by the command
        # line while the daemon runs is picked up at the next scan.
        seq = self.journal.last_seq("price_list")
        if seq != self._prices_seq:
            event = self.journal.last("price_list")
            items = event.body["items"] if event else []
            # Keyed by GTIN-14, so a UPC-A matches its 13-digit EAN reading.
            self._prices = {classify(item["barcode"]).key: item for item in items}
            self._prices_seq = seq
        return self._prices or {}

    def record(self, scan: Scan) -> Event:
        """Record ``scan`` durably; blocking (SQLite and fsync), so call it from the journal's thread."""
        barcode = classify(scan.text, scan.aim)
        common = {"code": barcode.data, "symbology": barcode.symbology.value, "aim": scan.aim or None,
                  "scanner": scan.source, "scanned_at": rfc3339(scan.finished)}
        if not barcode.valid:
            body = {**common, "reason": "check digit"}
            seq = self.journal.append("misread", body)
            logger.warning("misread seq=%d code=%s scanner=%s: check digit fails, not a sale", seq, barcode.data, scan.source)
            return Event(seq, "misread", body)
        item = self._price_book().get(barcode.key)
        body = {**common, "quantity": 1, "known": item is not None, "currency": self.currency,
                "unit_price": item["price"] if item else None, "name": item["name"] if item else None}
        seq = self.journal.append("sale", body)
        if item:
            logger.info("sale seq=%d code=%s price=%d name=%r", seq, barcode.data, item["price"], item["name"])
        else:
            logger.warning("sale seq=%d code=%s scanner=%s: unknown barcode, recorded without a price", seq, barcode.data, scan.source)
        return Event(seq, "sale", body)


def signal_for(event: Event) -> Signal:
    """What the retailer hears: good for a priced sale, attention for an unknown product, error for a misread."""
    if event.kind == "sale":
        return Signal.GOOD if event.body["known"] else Signal.ATTENTION
    return Signal.ERROR
