"""The ledger: what the journal's events add up to. Stock, each day's sales, counts and receipts.

It is a view, never a store: folding the events in order, one by one, gives
it, and the box and central fold the same events with this same code, so they
agree to the fen. The counter keeps one up to date as it records (it needs
the stock, today's lines and the open sessions); a report folds the whole
journal with ``keep_days=True``.

    ledger = Ledger(keep_days=True)
    for event in events:
        ledger.apply(event.seq, event.kind, event.body)
    ledger.stock["06901028075831"]          # packs on the shelf
    ledger.days["2026-11-29"].products      # that day's sales, by product

Quantities are packs; amounts are in the currency's minor unit (fen). A
return counts as a negative sale; a void takes its line back out of its day
(or a scan back out of a receiving or a count).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any

from drivers.barcode import classify

from .catalog import CARTON_PACKS


@dataclass(slots=True)
class Totals:
    """Sales of one product on one day (or of all products): returns and voids already netted."""
    lines: int = 0  # lines sold or returned, less those voided
    packs: int = 0
    amount: int = 0
    cost: int = 0  # what the priced-and-costed part cost the shop
    uncosted: int = 0  # the part of ``amount`` whose cost the price list did not give
    unpriced: int = 0  # lines of products sold without a price (not on the list)

    @property
    def margin(self) -> int:
        return self.amount - self.uncosted - self.cost

    def add(self, line: "Line", sign: int) -> None:
        self.lines += sign  # a return is a line too; its packs and amounts are negative
        self.packs += sign * line.packs
        self.amount += sign * line.amount
        if line.cost is None:
            self.uncosted += sign * line.amount
        else:
            self.cost += sign * line.cost
        if line.amount_unknown:
            self.unpriced += sign

    def state(self) -> list[int]:
        """Its fields in order, as ``Totals.from_state`` takes them back: a checkpoint holds one per product a
        day, for every day, so no field's name goes with each."""
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_state(cls, state: list[int] | dict[str, int]) -> "Totals":
        # (a checkpoint written before the fields went in order: by name)
        return cls(**state) if isinstance(state, dict) else cls(*state)

    def as_json(self) -> dict[str, int]:
        return {"lines": self.lines, "packs": self.packs, "amount": self.amount, "cost": self.cost,
                "uncosted": self.uncosted, "margin": self.margin, "unpriced": self.unpriced}


@dataclass(frozen=True, slots=True)
class Line:
    """A sale or a return, as the ledger counts it: signed packs and amounts (a return's are negative)."""
    seq: int
    kind: str  # sale, return
    day: str
    product: str
    packs: int
    amount: int
    cost: int | None
    amount_unknown: bool


@dataclass
class Day:
    products: dict[str, Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)
    closed: dict[str, Any] | None = None  # the day_closed event's body, once closed

    def add(self, line: Line, sign: int) -> None:
        self.products.setdefault(line.product, Totals()).add(line, sign)
        self.total.add(line, sign)

    @property
    def sold_on(self) -> bool:
        """Closed, and sold on (or returned, voided) since: its totals are not those it closed with (by the
        figures its close holds: one recorded by an earlier box version holds fewer)."""
        if self.closed is None:
            return False
        closed = self.closed.get("totals")
        if not isinstance(closed, dict):
            return True
        return any(closed[name] != value for name, value in self.total.as_json().items() if name in closed)


@dataclass
class Session:
    """A receiving or a stock count under way."""
    mode: str  # receiving, counting
    seq: int  # the event that started it
    order: str | None = None  # receiving: the order being received
    packs: dict[str, int] = field(default_factory=dict)  # by product: received or counted so far
    scans: dict[int, tuple[str, int]] = field(default_factory=dict)  # seq -> (product, packs), not voided
    last_at: str = ""  # the time of its latest event


def line_of(seq: int, kind: str, body: dict[str, Any]) -> Line:
    sign = -1 if kind == "return" else 1
    quantity = body.get("quantity", 1)
    price = body.get("unit_price")
    cost = body.get("cost")
    return Line(seq=seq, kind=kind, day=_shared(day_of(body)),
                product=_shared(body.get("product") or classify(body["code"]).key),
                packs=sign * body.get("packs", quantity), amount=sign * quantity * (price or 0),
                cost=None if cost is None or price is None else sign * quantity * cost,
                amount_unknown=price is None)


def _shared(text: Any) -> Any:
    """One copy of each day's and product's name: a ledger holds a line per sale of its recent days,
    most of them on one day and one of the shop's few hundred products."""
    return sys.intern(text) if type(text) is str else text


def day_of(body: dict[str, Any]) -> str:
    """The shop's day an event belongs to: the counter writes it; older events fall back to their UTC date."""
    return body.get("day") or (body.get("scanned_at") or body.get("at") or "")[:10]


# The numbers events carry, each an integer when present: a ledger folds nothing of an event whose
# numbers are not (a tool's, or damaged), rather than part of it.
_NUMBERS = ("quantity", "packs", "unit_price", "list_price", "cost", "amount", "voids", "counted")
# And its names, each text when present: a product that was a number would fold, then stop every report
# that sorts the shop's products.
_TEXTS = ("product", "day", "name", "product_name", "code", "unit")
_TYPED = tuple((name, int) for name in _NUMBERS) + tuple((name, str) for name in _TEXTS)

# 2: price lists fold (a carton's stock kept under its own code moves into its product), CB:CARTON scans noted.
# 3: a code's adoptions kept, each list's (``units``); a carton's first delivery begins its stock without what
# was sold of it after CB:CARTON before; "stock began with its receipt" (``opened``) stays with the carton's code.
# A checkpoint of 2 reads as one of 3: what it may hold otherwise of a carton sold before its first delivery is
# put right by the shop's next count.
CHECKPOINT_VERSION = 3
LISTS_FOLDED = 2  # the first version whose checkpoints folded price lists
RECENT_DAYS = 3  # days whose lines a void can reach (and the counter's rows per product): today, and a clock that jumped


@dataclass
class Ledger:
    keep_days: bool = False  # every day's sales, counts and receipts (reports), or only recent days' (the counter)
    stock: dict[str, int] = field(default_factory=dict)  # packs, by product
    names: dict[str, str] = field(default_factory=dict)  # by product, as last seen
    # Products whose stock is known: received or counted at least once. Before that a product's stock
    # is only what was sold of it (a box starts with no idea of the shelf), so it is never "negative".
    tracked: set[str] = field(default_factory=set)
    negative: dict[str, int] = field(default_factory=dict)  # tracked product -> the seq that took it below zero
    # Products first received after selling more than was known, by that receipt's seq: what was sold before
    # came from a shelf the box never knew, so their stock began with the receipt, not below zero.
    opened: dict[str, int] = field(default_factory=dict)
    counted_seq: int = 0  # the latest count's close: the stock it found is the shelf's, whatever was sold before
    days: dict[str, Day] = field(default_factory=dict)
    # The lines of the days used most recently, those a void may take back: the counter's only use for them.
    lines: dict[int, Line] = field(default_factory=dict)
    voided: set[int] = field(default_factory=set)  # of ``lines``
    # The prices products actually sold at, by day: seq -> (product, unit, unit price, list price).
    sale_prices: dict[str, dict[int, tuple[str, str, int, int | None]]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # open orders by name: latest body, "received"
    closed_orders: set[str] = field(default_factory=set)  # received and closed: a copy pushed again reopens none
    # Packs received by product in receivings begun before an order came and not closed yet (cancelled,
    # timed out, or on now): they arrived, and count for the order that is closed next.
    unordered: dict[str, int] = field(default_factory=dict)
    session: Session | None = None
    # Cartons and cases a price list named, by their own code's key: (the product, its packs in one, the list's
    # seq), each time one did so while the code had a past (a list may leave it out and a later one name it
    # again, re-packed). What was kept under such a code before (received from an order, sold, while no list
    # said what it was) moved into its product then, in packs; a void of a line sold before moves the product
    # too, in the packs of the list that moved that line.
    units: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    # A code no list named, scanned after CB:CARTON: ten of its packs a scan. Should a list name it a carton after
    # all, each such scan was one carton: the packs of stock they moved, by code, and the seqs of those lines.
    cartoned: dict[str, int] = field(default_factory=dict)
    cartoned_lines: set[int] = field(default_factory=set)
    # And of what arrived so: by order (its name; "" for none yet), by code, the packs.
    cartoned_arrived: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: list[dict[str, Any]] = field(default_factory=list)  # closed counts' bodies (with their seq)
    receipts: list[dict[str, Any]] = field(default_factory=list)  # closed receivings' bodies (with their seq)
    last_seq: int = 0
    unreadable: list[int] = field(default_factory=list)  # seqs of events of known kinds the ledger could not read
    _recent: list[str] = field(default_factory=list)  # the days used, least recently first

    def apply(self, seq: int, kind: str, body: dict[str, Any]) -> None:
        """Fold one event in; events come in sequence order, each once. One whose body the ledger
        cannot read (a tool's, or damaged) counts for nothing here, and is counted as such: a fold
        that stopped there would stop every scan after it."""
        self.last_seq = seq
        handler = _HANDLERS.get(kind)
        if handler is not None:
            # Its numbers are checked before anything is folded: one that fails half way would leave
            # a product's figures changed by an event the totals never counted.
            get = body.get
            for name, wanted in _TYPED:
                value = get(name)
                if value is not None and type(value) is not wanted:
                    self.unreadable.append(seq)
                    return
            try:
                handler(self, seq, body)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.unreadable.append(seq)

    def day(self, name: str) -> Day:
        """The day ``name``'s figures. The days used most recently keep their lines (a clock that jumps
        forward and back again loses nothing); the counter keeps only their totals."""
        if name in self._recent:
            self._recent.remove(name)
        self._recent.append(name)
        while len(self._recent) > RECENT_DAYS:
            old = self._recent.pop(0)
            gone = {seq for seq, line in self.lines.items() if line.day == old}
            self.lines = {seq: line for seq, line in self.lines.items() if seq not in gone}
            self.voided -= gone
            self.cartoned_lines -= gone  # a void reaches the lines of recent days only
            if not self.keep_days:
                # The counter keeps an old day's totals and its close, never its rows per product: a clock put
                # back days closes that day again with all its sales, not with what was sold since.
                if old in self.days:
                    self.days[old] = Day(total=self.days[old].total, closed=self.days[old].closed)
                self.sale_prices.pop(old, None)
        if name not in self.days:
            self.days[name] = Day()
        return self.days[name]

    def voidable(self, day: str) -> Line | None:
        """The latest line sold or returned that is not voided yet, when it is of ``day``: a void never
        reaches past a newer line to an older one (after a box's clock was put right, the scan just made
        may be dated another day than an earlier customer's sale of today)."""
        for seq in sorted(self.lines, reverse=True):
            if seq not in self.voided:
                line = self.lines[seq]
                return line if line.day == day else None
        return None

    def open_order(self) -> dict[str, Any] | None:
        """The latest order not yet received, if any."""
        return max(self.orders.values(), key=lambda order: order["_seq"]) if self.orders else None

    def _move(self, seq: int, product: str, packs: int, body: dict[str, Any] | None = None) -> None:
        after = self.stock.get(product, 0) + packs
        self.stock[product] = after
        self._name(product, body)
        if after < 0 and product in self.tracked:
            self.negative.setdefault(product, seq)
        else:
            self.negative.pop(product, None)

    def _name(self, product: str, body: dict[str, Any] | None) -> None:
        """A product is called by its pack's name (``product_name``); by the unit's where no pack was listed."""
        if body is None:
            return
        if body.get("product_name"):
            self.names[product] = body["product_name"]
        elif body.get("name") and product not in self.names:
            self.names[product] = body["name"]

    # -- a checkpoint: what the events folded so far add up to, kept when retention removes them --

    def state(self) -> dict[str, Any]:
        """All of the ledger as JSON (retention's checkpoint); ``Ledger.from_state`` reads it back."""
        return {
            "v": CHECKPOINT_VERSION, "last_seq": self.last_seq, "stock": self.stock, "names": self.names,
            "tracked": sorted(self.tracked), "negative": self.negative, "opened": self.opened,
            "counted_seq": self.counted_seq,
            "days": {name: {"products": {p: t.state() for p, t in day.products.items()}, "total": day.total.state(),
                            "closed": day.closed} for name, day in self.days.items()},
            "lines": [[line.seq, line.kind, line.day, line.product, line.packs, line.amount, line.cost,
                       line.amount_unknown] for line in self.lines.values()],
            "voided": sorted(self.voided),
            # Only the recent days' actual prices: the counter's monitoring snapshot reads today's, and central
            # holds every sale; kept for every day, they made the checkpoint grow by each sale ever made.
            "sale_prices": {day: [[seq, *row] for seq, row in prices.items()] for day, prices in self.sale_prices.items()
                            if day in self._recent},
            "orders": self.orders, "closed_orders": sorted(self.closed_orders), "unordered": self.unordered,
            "units": {code: [list(unit) for unit in units] for code, units in self.units.items()},
            "cartoned": self.cartoned, "cartoned_lines": sorted(self.cartoned_lines),
            "cartoned_arrived": self.cartoned_arrived,
            "session": None if self.session is None else {
                "mode": self.session.mode, "seq": self.session.seq, "order": self.session.order,
                "packs": self.session.packs, "scans": [[seq, *scan] for seq, scan in self.session.scans.items()],
                "last_at": self.session.last_at},
            "counts": self.counts, "receipts": self.receipts, "recent": self._recent, "unreadable": self.unreadable,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, keep_days: bool) -> "Ledger":
        state = copy.deepcopy(state)  # a ledger changes what it holds: never its checkpoint's copy
        ledger = cls(keep_days=keep_days, stock=dict(state["stock"]), names=dict(state["names"]),
                     tracked=set(state["tracked"]), negative=dict(state["negative"]),
                     opened=dict(state.get("opened", {})),  # (a checkpoint written before it was kept: none)
                     counted_seq=state.get("counted_seq", 0),  # (a checkpoint written before it was kept: none)
                     days={name: Day(products={p: Totals.from_state(t) for p, t in day["products"].items()},
                                     total=Totals.from_state(day["total"]), closed=day["closed"])
                           for name, day in state["days"].items()},
                     lines={row[0]: Line(row[0], row[1], _shared(row[2]), _shared(row[3]), *row[4:])
                            for row in state["lines"]},
                     voided=set(state["voided"]),
                     sale_prices={day: {row[0]: tuple(row[1:]) for row in rows}
                                  for day, rows in state["sale_prices"].items()},
                     orders=state["orders"], closed_orders=set(state["closed_orders"]),
                     unordered=dict(state.get("unordered", {})),  # (a checkpoint written before it was kept: none)
                     units={code: _adoptions(units) for code, units in state.get("units", {}).items()},
                     cartoned=dict(state.get("cartoned", {})), cartoned_lines=set(state.get("cartoned_lines", [])),
                     cartoned_arrived={name: dict(codes) for name, codes in state.get("cartoned_arrived", {}).items()},
                     counts=state["counts"] if keep_days else [], receipts=state["receipts"] if keep_days else [],
                     last_seq=state["last_seq"], unreadable=list(state["unreadable"]), _recent=list(state["recent"]))
        session = state["session"]
        if session is not None:
            ledger.session = Session(mode=session["mode"], seq=session["seq"], order=session["order"],
                                     packs=dict(session["packs"]),
                                     scans={row[0]: (row[1], row[2]) for row in session["scans"]},
                                     last_at=session["last_at"])
        if not keep_days:  # the counter: the days it uses, and of the others their totals and close
            ledger.days = {name: day if name in ledger._recent else Day(total=day.total, closed=day.closed)
                           for name, day in ledger.days.items()}
            ledger.sale_prices = {name: p for name, p in ledger.sale_prices.items() if name in ledger._recent}
        return ledger

    # -- one handler per kind ------------------------------------------------------------

    def _line(self, seq: int, body: dict[str, Any], kind: str) -> None:
        line = line_of(seq, kind, body)
        self.day(line.day).add(line, 1)
        self.lines[seq] = line
        if kind == "sale" and body.get("unit_price") is not None:
            self.sale_prices.setdefault(line.day, {})[seq] = (
                line.product, body.get("unit", "pack"), body["unit_price"], body.get("list_price"))
        self._move(seq, line.product, -line.packs, body)
        self._note_cartoned(seq, line.product, -line.packs, body)

    def _note_cartoned(self, seq: int, product: str, moved: int, body: dict[str, Any]) -> None:
        """Note a scan of a code no list names taken after CB:CARTON (ten packs of it, the counter can say no
        more), which moved ``moved`` packs of its stock."""
        if _cartoned(body):
            self.cartoned[product] = self.cartoned.get(product, 0) + moved
            self.cartoned_lines.add(seq)

    def _void(self, seq: int, body: dict[str, Any]) -> None:
        """A void says what it takes back, so it is folded from its own body: the same everywhere,
        whatever lines a ledger still holds."""
        voided, kind = body["voids"], body["voided_kind"]
        if kind in ("sale", "return"):
            self.voided.add(voided)
            line = Line(seq=voided, kind=kind, day=body["day"], product=body["product"], packs=body["packs"],
                        amount=body["amount"], cost=body.get("cost"), amount_unknown=bool(body.get("unpriced")))
            self.day(line.day).add(line, -1)
            self.sale_prices.get(line.day, {}).pop(voided, None)
            product, packs, cartoned = line.product, line.packs, voided in self.cartoned_lines
            self.cartoned_lines.discard(voided)
            if voided <= self.counted_seq or voided <= self.opened.get(product, 0):
                # Sold before a count, which found the whole shelf as it is (a product it did not list, none):
                # the stock stays what was counted; or before the receipt the stock of what it was sold as
                # began with (a carton's own code, too, moved into its product since).
                return
            for into, per, at in self.units.get(product, ()):
                if voided < at:  # sold as a product of its own, moved into its product since
                    # (ten packs a scan after CB:CARTON: one carton, each)
                    product, packs, cartoned = into, (packs // CARTON_PACKS if cartoned else packs) * per, False
                    break
            self._move(seq, product, packs)
            if cartoned:
                self.cartoned[product] = self.cartoned.get(product, 0) + packs
            return
        # A scan of a receiving or a count taken back: the session's latest event, as a scan is.
        if self.session is not None:
            self.session.scans.pop(voided, None)
            self.session.packs[body["product"]] = self.session.packs.get(body["product"], 0) - body["packs"]
            self.session.last_at = body.get("at") or self.session.last_at
        cartoned = voided in self.cartoned_lines
        self.cartoned_lines.discard(voided)
        if kind == "received":
            self._move(seq, body["product"], -body["packs"])
            self._arrived(body, -body["packs"], cartoned=cartoned)
            if cartoned:
                self.cartoned[body["product"]] = self.cartoned.get(body["product"], 0) - body["packs"]

    def _scanned(self, seq: int, body: dict[str, Any], mode: str) -> None:
        if self.session is not None and self.session.mode == mode:
            self.session.packs[body["product"]] = self.session.packs.get(body["product"], 0) + body["packs"]
            self.session.scans[seq] = (body["product"], body["packs"])
            self.session.last_at = body.get("at", "")
            if _cartoned(body):
                self.cartoned_lines.add(seq)
        self._name(body["product"], body)

    def _received(self, seq: int, body: dict[str, Any]) -> None:
        if body["product"] not in self.tracked and self.stock.get(body["product"], 0) < 0:
            self.stock[body["product"]] = 0
            self.opened[body["product"]] = seq
            # Cartons sold after CB:CARTON before it are no part of the stock that begins here.
            self.cartoned.pop(body["product"], None)
        self.tracked.add(body["product"])
        self._move(seq, body["product"], body["packs"], body)
        self._note_cartoned(seq, body["product"], body["packs"], body)
        self._scanned(seq, body, "receiving")
        self._arrived(body, body["packs"], cartoned=_cartoned(body))

    def _arrived(self, body: dict[str, Any], packs: int, *, cartoned: bool = False) -> None:
        """What arrived against an order, whichever receiving brought it; or against none yet."""
        if cartoned:
            codes = self.cartoned_arrived.setdefault(body.get("order") or "", {})
            codes[body["product"]] = codes.get(body["product"], 0) + packs
        if not body.get("order"):
            left = self.unordered.get(body["product"], 0) + packs
            if left:
                self.unordered[body["product"]] = left
            else:
                self.unordered.pop(body["product"], None)
            return
        order = self.orders.get(body["order"])
        if order is not None:
            order["received"][body["product"]] = order["received"].get(body["product"], 0) + packs

    def _count_closed(self, seq: int, body: dict[str, Any]) -> None:
        if not all(type(line["counted"]) is int for line in body["lines"]):
            raise ValueError("a count's line without a whole number counted")
        scans = self.session.scans if self.session is not None else {}
        for line in body["lines"]:  # a count is the truth about the shelf: stock is what was counted
            self.tracked.add(line["product"])
            self._move(seq, line["product"], line["counted"] - self.stock.get(line["product"], 0), line)
            # Counted after CB:CARTON, of a code no list named: each of those scans was one carton.
            part = sum(n for at, (code, n) in scans.items() if code == line["product"] and at in self.cartoned_lines)
            if part and line["counted"]:
                self.cartoned[line["product"]] = min(part, line["counted"])
            else:
                self.cartoned.pop(line["product"], None)
        self._session_over()
        self.counted_seq = seq
        if self.keep_days:
            self.counts.append({"seq": seq, **body})
        self.session = None

    def _receiving_closed(self, seq: int, body: dict[str, Any]) -> None:
        self._session_over()
        self.unordered = {}  # counted in this close: for its order, or as a receipt of its own
        self.cartoned_arrived.pop("", None)
        if body.get("order"):
            closed = self.orders.pop(body["order"], None)
            self.closed_orders.add(body["order"])
            self.cartoned_arrived.pop(body["order"], None)
            # An order that came before it and is still open was never received here: a later delivery
            # is never taken for it. (By when each first came: a version pushed again amends, comes no later.)
            for name, order in list(self.orders.items()):
                if closed is not None and order.get("_first", order["_seq"]) < closed.get("_first", closed["_seq"]):
                    del self.orders[name]
                    self.closed_orders.add(name)
                    self.cartoned_arrived.pop(name, None)
        if self.keep_days:
            self.receipts.append({"seq": seq, **body})
        self.session = None

    def _started(self, seq: int, body: dict[str, Any], mode: str) -> None:
        self.session = Session(mode=mode, seq=seq, order=body.get("order"), last_at=body.get("at", ""))

    def _ended(self, seq: int, body: dict[str, Any]) -> None:
        self._session_over()
        self.session = None

    def _session_over(self) -> None:
        """A receiving's scans can no longer be voided once it is over: what was noted of them goes."""
        if self.session is not None and self.cartoned_lines:
            self.cartoned_lines.difference_update(self.session.scans)

    def _order(self, seq: int, body: dict[str, Any]) -> None:
        if body["name"] in self.closed_orders:
            return  # received and closed: a copy pushed or loaded again is no new delivery
        held = self.orders.get(body["name"], {})
        self.orders[body["name"]] = {**body, "_seq": seq, "_first": held.get("_first", held.get("_seq", seq)),
                                     "received": held.get("received", {})}

    def _day_closed(self, seq: int, body: dict[str, Any]) -> None:
        self.day(body["day"]).closed = body

    def _price_list(self, seq: int, body: dict[str, Any]) -> None:
        """A list that names a carton or case takes what was kept under its code into its product, in packs:
        an order's carton received while no list named it, 5 of a product of its own, is 50 packs of its pack's
        product once one does. (A code is never another product's later: the rule of the trade.) Every item is
        read before anything moves: a list the ledger cannot read counts for nothing."""
        past = self._with_a_past()
        found: list[tuple[str, str, int, dict[str, Any]]] = []
        for item in body["items"]:
            unit = item.get("unit", "pack")
            if unit == "pack" or type(item.get("product")) is not str:
                continue  # a pack is its own product; a carton no list said the product of stays one
            code, packs = item["barcode"], item.get("packs", CARTON_PACKS if unit == "carton" else 1)
            if type(code) is not str or type(packs) is not int or packs < 1:
                raise ValueError("a price list's carton without a code or its packs")
            # Most of a list's thousands of cartons have no past here: a GTIN's key is its digits padded to 14,
            # so they are passed over without classifying each (an 8-digit code may be a UPC-E: classified).
            if not past or (code.isdigit() and len(code) != 8 and code.zfill(14) not in past and code not in past):
                continue
            own, product = classify(code).key, classify(item["product"]).key
            if own != product and own in past:
                found.append((own, product, packs, item))
        for own, product, packs, item in found:
            self.units.setdefault(own, []).append((product, packs, seq))
            self._adopt(seq, own, product, packs)
            if product not in self.names:
                self._name_adopted(product, item, body["items"])

    def _with_a_past(self) -> set[str]:
        """The codes whose stock was kept as a product of their own here: in stock (even back at 0), received,
        counted, arrived for an order or for none, or scanned in the receiving or count under way."""
        past = set(self.stock) | self.tracked | set(self.unordered)
        for order in self.orders.values():
            past.update(order.get("received", {}))
        if self.session is not None:
            past.update(self.session.packs)
        return past

    def _name_adopted(self, product: str, carton: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Call a product that took a carton's stock as the list calls its pack (as a sale of it would name
        it), else as the carton."""
        for item in items:
            if item.get("unit", "pack") == "pack" and type(item.get("barcode")) is str \
                    and classify(item["barcode"]).key == product and type(item.get("name")) is str:
                self.names[product] = item["name"]
                return
        if type(carton.get("name")) is str:
            self.names[product] = carton["name"]

    def _adopt(self, seq: int, own: str, product: str, packs: int) -> None:
        """Take what was kept under the unit code ``own`` into ``product``, ``packs`` a unit."""
        held = self.stock.pop(own, 0)
        units = _units(held, self.cartoned.pop(own, 0))
        # (``opened`` keeps the code's own: a carton sold before its first receipt, voided, puts nothing back;
        # a pack of the product sold then counted against the product's own stock, and goes back.)
        if own in self.tracked:
            self.tracked.discard(own)
            self.tracked.add(product)
        self.negative.pop(own, None)
        self._move(seq, product, units * packs)
        moved = self.unordered.pop(own, 0)
        if moved:
            cartoned = self.cartoned_arrived.get("", {}).pop(own, 0)
            self.unordered[product] = self.unordered.get(product, 0) + _units(moved, cartoned) * packs
        for name, order in self.orders.items():
            received = order.get("received", {})
            if own in received:
                cartoned = self.cartoned_arrived.get(name, {}).pop(own, 0)
                received[product] = received.get(product, 0) + _units(received.pop(own), cartoned) * packs
        if self.session is not None and own in self.session.packs:
            self.session.packs.pop(own)
            for at, (code, n) in list(self.session.scans.items()):
                if code == own:
                    n = (n // CARTON_PACKS if at in self.cartoned_lines else n) * packs
                    self.cartoned_lines.discard(at)  # its packs are the product's, whole, from here
                    self.session.scans[at] = (product, n)
                    self.session.packs[product] = self.session.packs.get(product, 0) + n


def _cartoned(body: dict[str, Any]) -> bool:
    """Whether ``body`` is a scan of a code no list named, taken after CB:CARTON: ten packs of it for one."""
    quantity = body.get("quantity")
    return body.get("known") is False and type(quantity) is int and quantity != 0 \
        and body.get("packs") == quantity * CARTON_PACKS


def _adoptions(held: list[Any]) -> list[tuple[str, int, int]]:
    """A checkpoint's adoptions of one code: a list of them (a checkpoint of version 2 written before a code
    could hold more than one: that one alone)."""
    return [tuple(held)] if held and type(held[0]) is str else [tuple(unit) for unit in held]


def _units(packs: int, cartoned: int) -> int:
    """How many units of a code ``packs`` of it were, ``cartoned`` of them ten a scan after CB:CARTON."""
    return packs - cartoned + cartoned // CARTON_PACKS


_HANDLERS = {
    "sale": lambda ledger, seq, body: ledger._line(seq, body, "sale"),
    "return": lambda ledger, seq, body: ledger._line(seq, body, "return"),
    "void": Ledger._void,
    "received": Ledger._received,
    "counted": lambda ledger, seq, body: ledger._scanned(seq, body, "counting"),
    "count_started": lambda ledger, seq, body: ledger._started(seq, body, "counting"),
    "receiving_started": lambda ledger, seq, body: ledger._started(seq, body, "receiving"),
    "count_closed": Ledger._count_closed,
    "receiving_closed": Ledger._receiving_closed,
    "mode_ended": Ledger._ended,
    "order": Ledger._order,
    "day_closed": Ledger._day_closed,
    "price_list": Ledger._price_list,
}
