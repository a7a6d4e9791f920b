"""The counter: what a scanned code means for the shop.

A product barcode is a sale of one unit at the price in the latest price
list; an unknown barcode is still a sale, flagged unknown, never dropped; a
code that fails its check digit is a misread, recorded but never a sale; and
a scan the decoder refused (not seen whole, typed rather than scanned) is
recorded as refused, with the reason, never a sale.
The counter runs in the store's thread, inside the transaction that records
the scan, so the price it reads and the sale it writes are one durable step.

Its log lines (``log_recorded``, once the event is durable) name the event
(seq, kind, scanner), never the code, product or amount: `counterbox show SEQ`
decrypts those for whoever holds the key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from drivers.barcode import classify
from drivers.decoder import NotABarcode, Scan
from drivers.feedback import Signal
from provisioning.protocol import rfc3339
from storage import Event, Journal

from .logs import event_fields

logger = logging.getLogger(__name__)

REFUSED_TEXT = 256  # characters of a refused scan kept: enough to see what it was, never a flood


@dataclass
class Counter:
    currency: str = "CNY"
    _prices: dict[str, dict] = field(default_factory=dict)
    _prices_seq: int = -1
    _list_currency: str | None = None  # the currency of the price list in force, where it names one

    def _price_book(self, journal: Journal) -> dict[str, dict]:
        # The journal is the source of truth; a price list loaded by the command
        # line while the daemon runs is picked up at the next scan.
        seq = journal.last_seq("price_list")
        if seq != self._prices_seq:
            event = journal.last("price_list")
            items = event.body["items"] if event else []
            # Keyed by GTIN-14, so a UPC-A matches its 13-digit EAN reading.
            self._prices = {classify(item["barcode"]).key: item for item in items}
            self._list_currency = event.body.get("currency") if event else None
            self._prices_seq = seq
        return self._prices

    def record(self, journal: Journal, scan: Scan | NotABarcode) -> Event:
        """Record ``scan`` in ``journal``; blocking (SQLite and fsync), so it runs in the store's thread."""
        if isinstance(scan, NotABarcode):
            body = {"text": scan.text[:REFUSED_TEXT], "reason": scan.reason, "scanner": scan.source,
                    "refused_at": rfc3339(time.time())}
            return Event(journal.append("refused", body), "refused", body)
        barcode = classify(scan.text, scan.aim)
        common = {"code": barcode.data, "symbology": barcode.symbology.value, "aim": scan.aim or None,
                  "scanner": scan.source, "scanned_at": rfc3339(scan.finished)}
        if not barcode.valid:
            body = {**common, "reason": "check digit"}
            return Event(journal.append("misread", body), "misread", body)
        item = self._price_book(journal).get(barcode.key)
        body = {**common, "quantity": 1, "known": item is not None, "currency": self._list_currency or self.currency,
                "unit_price": item["price"] if item else None, "name": item["name"] if item else None}
        return Event(journal.append("sale", body), "sale", body)


def log_recorded(event: Event) -> None:
    """One line for a scan once it is durable (never before: its seq could yet be rolled back);
    it names the event, never its code, product or amount."""
    scanner = event.body.get("scanner")
    fields = {"extra": event_fields(event.seq, event.kind, scanner)}
    if event.kind == "refused":
        logger.warning("refused seq=%d scanner=%s: %s; not a sale", event.seq, scanner, event.body["reason"], **fields)
    elif event.kind == "misread":
        logger.warning("misread seq=%d scanner=%s: the check digit fails; not a sale", event.seq, scanner, **fields)
    elif event.body.get("known"):
        logger.info("sale seq=%d scanner=%s", event.seq, scanner, **fields)
    else:
        logger.warning("sale seq=%d scanner=%s: product not on the price list, recorded without a price",
                       event.seq, scanner, **fields)


def signal_for(event: Event) -> Signal:
    """What the retailer hears: good for a priced sale, attention for an unknown product, error for a
    misread or a refused scan."""
    if event.kind == "sale":
        return Signal.GOOD if event.body["known"] else Signal.ATTENTION
    return Signal.ERROR
