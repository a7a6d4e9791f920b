"""Central's reports: the boxes' own figures, from the events central holds, per shop and per region.

Each device's events are folded by ``agent.ledger`` exactly as the box folds
its journal, so a shop's sales here and on its box agree to the fen. A shop
is every device registered to it (a box that was replaced, and its
successor); a region is every shop in it.

    store = CentralStore(path)
    report = sales(store, days=["2026-11-29"], region="honghe")
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent import reports
from agent.ledger import Ledger
from provisioning.protocol import parse_rfc3339

from .store import CentralStore


@dataclass(frozen=True)
class Scope:
    """Which devices a report covers: one device, one shop's, one region's, or all."""
    device: str | None = None
    shop: str | None = None
    region: str | None = None
    monitoring: bool = False  # monitoring points only

    def devices(self, store: CentralStore) -> list[tuple[str, str]]:
        """(device id, shop) of every device in scope, in order."""
        chosen = []
        for device_id in store.device_ids():
            device = store.device(device_id)
            if device is None or (self.device and device_id != self.device) or (self.shop and device.shop != self.shop):
                continue
            if self.region and device.region != self.region:
                continue
            if self.monitoring:
                shop = store.shop(device.shop) if device.shop else None
                if shop is None or not shop.monitoring:
                    continue
            chosen.append((device_id, device.shop or device_id))
        return chosen


def ledgers(store: CentralStore, scope: Scope, *, serving: bool = False) -> dict[str, dict[str, Ledger]]:
    """Each shop's devices' ledgers, by shop (a device with no shop is its own) and device: each device's own
    events, each once (sales). ``serving``: a shelf each, as its box keeps it: only the devices that serve it
    now, not one revoked (a box replaced counted the same shelf before) nor one whose journal goes on at
    another device (restored onto it), each folded with the events of its journal delivered before it."""
    by_shop: dict[str, dict[str, Ledger]] = {}
    for device_id, shop in scope.devices(store):
        if not serving:
            by_shop.setdefault(shop, {})[device_id] = reports.fold(store.device_events(device_id))
            continue
        device = store.device(device_id)
        if device is None or device.revoked_at is not None or not store.holds_journal(device_id):
            continue
        by_shop.setdefault(shop, {})[device_id] = reports.fold(store.journal_events(device_id))
    return by_shop


def sales(store: CentralStore, days: list[str], scope: Scope) -> dict[str, Any]:
    """Sales over ``days``: per shop, and all of them together."""
    shops = {shop: reports.merge_sales([reports.sales(ledger, days) for ledger in found.values()])
             for shop, found in ledgers(store, scope).items()}
    everything = reports.merge_sales(list(shops.values()))
    everything["days"] = days
    return {"days": days, "shops": shops, "all_shops": everything}


def stock(store: CentralStore, scope: Scope) -> dict[str, Any]:
    """Each shop's stock by product, its serving devices' packs together (a shop may have two counters),
    and its products below zero. Each box keeps its own shelf's stock (a count on one box is that box's),
    so a product is below zero where a box's own ledger says so, as that box's report does: the row names
    the box and its event since which (a seq is one box's)."""
    result = {}
    for shop, found in ledgers(store, scope, serving=True).items():
        rows: dict[str, dict[str, Any]] = {}
        for device_id, ledger in found.items():
            for row in reports.stock(ledger)["products"]:
                merged = rows.setdefault(row["product"], {**row, "packs": 0, "negative_since": None,
                                                          "negative_device": None})
                merged["packs"] += row["packs"]
                merged["name"] = merged["name"] or row["name"]
                merged["tracked"] = merged["tracked"] or row["tracked"]
                if row["negative_since"] is not None and merged["negative_device"] is None:
                    merged["negative_since"], merged["negative_device"] = row["negative_since"], device_id
        products = [rows[p] for p in sorted(rows)]
        result[shop] = {"products": products, "negative": [r for r in products if r["negative_since"] is not None]}
    return result


def prices(store: CentralStore, days: list[str], scope: Scope) -> list[dict[str, Any]]:
    """Market monitoring: per shop and product, the prices the shop actually sold at over ``days`` (the
    most frequent first, each beside the list price it was sold under), and its stock now."""
    rows = []
    shelves = stock(store, scope)
    for shop, found in ledgers(store, scope).items():
        # By product: lines by unit, price and the list price each was sold under (a carton's is not a pack's,
        # and a list price changed within the days asked leaves the lines before it under the old one).
        actual: dict[str, Tally] = {}
        names: dict[str, str | None] = {}
        for ledger in found.values():
            for day in days:
                for product, unit, price, list_price in ledger.sale_prices.get(day, {}).values():
                    actual.setdefault(product, Tally())[(unit, price, list_price)] += 1
            names.update({p: n for p, n in ledger.names.items() if n})
        on_shelf = {row["product"]: row["packs"] for row in shelves.get(shop, {"products": []})["products"]}
        for product in sorted(set(actual) | {p for p, n in on_shelf.items() if n}):
            seen = actual.get(product, Tally())
            rows.append({"shop": shop, "product": product, "name": names.get(product),
                         "actual_prices": [{"unit": unit, "price": price, "list_price": list_price, "lines": n}
                                           for (unit, price, list_price), n in seen.most_common()],
                         "stock": on_shelf.get(product, 0)})
    return rows


def close_day(close: dict[str, Any]) -> str:
    """The day a close belongs to: the shop's, as its box wrote it (``day``, in the shop's time zone), for a
    Monday-morning count in Shanghai is Monday's whatever central's calendar says; from boxes of earlier
    versions, the day of central's calendar its ``at`` fell on."""
    day = close.get("day")
    return day if isinstance(day, str) and len(day) == 10 else local_day(close.get("at"))


def local_day(at: Any) -> str:
    """The day of central's calendar a close's ``at`` (RFC 3339, UTC) fell on: a shop's evening count is
    on its evening's day, not on the UTC date. One not readable as a time (a tool's) keeps its first ten
    characters."""
    try:
        return datetime.fromtimestamp(parse_rfc3339(at)).date().isoformat()
    except (ValueError, OverflowError, OSError):
        return str(at or "")[:10]


def _closed_in(store: CentralStore, days: list[str], scope: Scope, closes) -> dict[str, list[dict[str, Any]]]:
    """Per shop, ``closes(ledger)`` of each of its boxes closed on ``days``, each naming its box, oldest first."""
    wanted = set(days)
    result: dict[str, list[dict[str, Any]]] = {}
    for shop, found in ledgers(store, scope).items():
        rows = [{"device": device_id, **close, "day": close_day(close)}
                for device_id, ledger in found.items() for close in closes(ledger) if close_day(close) in wanted]
        result[shop] = sorted(rows, key=lambda row: (str(row["at"]), row["device"], row["seq"]))
    return result


def _serving_shops(store: CentralStore, scope: Scope) -> dict[str, bool]:
    """The shops in scope that a box serves now, and whether each is a monitoring point."""
    shops = {}
    for device_id, shop in scope.devices(store):
        device = store.device(device_id)
        if device is not None and device.revoked_at is None:
            known = store.shop(shop)
            shops[shop] = bool(known and known.monitoring)
    return shops


def counts(store: CentralStore, days: list[str], scope: Scope) -> dict[str, Any]:
    """The stock counts closed on ``days``, per shop, each with the products counted other than the box
    expected; and the shops a box serves that closed none (a monitoring point counts the day before its
    delivery, every week)."""
    closed = _closed_in(store, days, scope, reports.counts)
    serving = _serving_shops(store, scope)
    return {"days": days, "shops": {shop: {"counts": rows} for shop, rows in closed.items() if rows},
            "not_counted": [{"shop": shop, "monitoring": monitoring} for shop, monitoring in sorted(serving.items())
                            if not closed.get(shop)]}


def receipts(store: CentralStore, days: list[str], scope: Scope) -> dict[str, Any]:
    """The receivings closed on ``days``, per shop, each with the lines received other than ordered; and the
    orders each box holds and has not closed a receiving for yet, whenever they came."""
    closed = _closed_in(store, days, scope, reports.receipts)
    waiting: dict[str, list[dict[str, Any]]] = {}
    for shop, found in ledgers(store, scope, serving=True).items():
        for device_id, ledger in found.items():
            for order in sorted(ledger.orders.values(), key=lambda order: order["_seq"]):
                received = order.get("received") or {}
                waiting.setdefault(shop, []).append({
                    "device": device_id, "order": order.get("name"), "seq": order["_seq"],
                    "issued_at": order.get("issued_at"), "lines": len(order.get("lines") or []),
                    "products_received": len([p for p, packs in received.items() if packs])})
    shops = sorted(set(closed) | set(waiting))
    return {"days": days, "shops": {shop: {"receipts": closed.get(shop, []), "open_orders": waiting.get(shop, [])}
                                    for shop in shops if closed.get(shop) or waiting.get(shop)}}
