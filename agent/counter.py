"""The counter: what a scanned code means for the shop, and what the retailer hears.

The retailer has a scanner and a printed sheet of control codes
(``agent.controls``), and hears a beep. The counter is in one of three modes:

- **selling** (always, unless another mode is on): a product barcode is a
  sale at the price list's price, of one unit, or of what the controls
  before it said: a quantity, a carton, a return, a keyed price (the shop's
  actual price);
- **receiving** (``CB:RECEIVING``): scans are what the company's delivery
  brought; ``CB:CLOSE`` records the differences against the open order;
  ``CB:ALL-RECEIVED`` receives the whole order in one go;
- **counting** (``CB:COUNT``): scans are what is on the shelf; ``CB:CLOSE``
  records counted against expected, and the stock becomes what was counted.

A mode ends unclosed after ``mode_timeout`` without a scan, and what was keyed
or set for the next scan is forgotten after ``pending_timeout``: both with the
attention signal. Every change is an event in the journal, never an edit of
an earlier one: a void names the line it takes back.

A code that fails its check digit is a misread, recorded but never a sale; a
scan the decoder refused (not seen whole, typed rather than scanned) is
recorded as refused, with the reason, never a sale.

The counter runs in the store's thread, inside the transaction that records
the scan, so what it reads (prices, stock, the open order) and what it writes
are one durable step. It keeps a ``Ledger`` of the journal, caught up at every
scan with whatever else was written (a price list or an order from the fleet
link, a command run beside the agent).

Its log lines name the event (seq, kind, scanner), never the code, product or
amount: `counterbox show SEQ` decrypts those for whoever holds the key.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from drivers.barcode import classify
from drivers.decoder import DROPPED, TAKEN_BACK, NotABarcode, Scan
from drivers.feedback import Signal
from drivers.keypad import Keypress
from provisioning.documents import holds_for_box, settings_in_force
from provisioning.protocol import parse_rfc3339, rfc3339
from storage import DAMAGED, Event, EventTooLarge, Journal, JournalError

from . import controls
from .catalog import CARTON_PACKS, Catalog, Unit
from .config import time_zone
from .ledger import Ledger
from .logs import event_fields
from .retention import checkpoint_ledger

logger = logging.getLogger(__name__)

JOINED = "two codes read as one, the second a control's (the first one's end was lost): neither is taken"
REFUSED_TEXT = 256  # characters of a refused scan kept: enough to see what it was, never a flood
MAX_KEYED = 9  # characters of a keyed number: 999999.99 is more than any price at a counter
START_GUARD = 10.0  # seconds after the box starts in which a keyed number may have lost its first digits
FOLD_BATCH = 1000  # events read at a time while the ledger catches up
FOLD_BYTES = 1024 * 1024  # and no more than this of them (one larger event alone): price lists are large
PENDING_FIELDS = ("keyed", "quantity", "price", "carton", "returning", "spoiled", "cut", "cut_control")
# How long after a scan cut short, with nothing set before it, a product scan is refused: the cut one is most
# often a product's, scanned again at once; and a box started again mid-scan cuts one.
CUT_HOLD = 1.0  # seconds
# A scan cut by events the kernel lost: whatever they were (a control whole, the middle of one) cannot be told.
LOST_UNSEEN = frozenset({DROPPED, TAKEN_BACK})
# The controls that set something for the next scan (or spoil it), and so start its time anew.
SETS_PENDING = frozenset({"digit", "quantity", "keyed-quantity", "price", "carton"})  # and a return taken


@dataclass(frozen=True)
class Outcome:
    """What one scan did: the events it recorded (none for most controls) and what the retailer hears."""
    signal: Signal
    events: tuple[Event, ...] = ()
    note: str = ""  # for the log, about a control: never a code, product or amount


@dataclass
class Pending:
    """What the controls scanned so far say about the next product scan."""
    keyed: str = ""
    quantity: int | None = None
    price: int | None = None
    carton: bool = False
    returning: bool = False
    spoiled: bool = False  # a keyed number was refused: digits after it are refused too, until cancelled
    # A scan that may have been a control or a digit was cut short with nothing set before it: a control or
    # digit next may be the rest of what it began (a number without its first digit) and is refused.
    cut: bool = False
    # ... and it was surely a control (the sheet's prefix seen in it, a keypad's keys lost): no product's own
    # scan, so the product after it waits for CB:CLEAR too, not CUT_HOLD alone.
    cut_control: bool = False
    since: float = 0.0  # clock time of the latest control (or of the cut)

    def __bool__(self) -> bool:
        return bool(self.keyed or self.quantity or self.price is not None or self.carton or self.returning
                    or self.spoiled or self.cut or self.cut_control)

    @property
    def only_cut(self) -> bool:
        """Nothing set but a cut scan's hold on the controls after it."""
        return self.cut and dataclasses.replace(self, cut=False, cut_control=False, since=0.0) == Pending()

    def as_json(self) -> dict[str, Any]:
        """What a ``pending`` event records: the box started again finds what the next scan was told. Of a
        number being keyed, only that there is one (restored, it is refused whole): one event per digit
        would be an fsync each, for nothing."""
        return {"keyed": bool(self.keyed), "quantity": self.quantity, "price": self.price, "carton": self.carton,
                "returning": self.returning, "spoiled": self.spoiled, "cut": self.cut, "cut_control": self.cut_control}


@dataclass
class Counter:
    currency: str = "CNY"
    timezone: tzinfo | None = None  # the shop's; None: the box's own
    mode_timeout: float = 600.0
    pending_timeout: float = 60.0
    clock: Callable[[], float] = time.monotonic
    start_guard: float = START_GUARD  # seconds after start in which a keyed number may have lost its first digits
    ledger: Ledger = field(default_factory=Ledger)
    _catalog: Catalog = field(default_factory=lambda: Catalog({}))
    _loaded: bool = False
    _pending: Pending = field(default_factory=Pending)
    _mode_active_at: float | None = None  # clock time of the open mode's latest scan
    _started_at: float | None = None  # clock time of the first look at the journal
    _configured: tuple = ()  # the settings given at start, under what operations pushed since
    _rollbacks: int = 0  # the journal's count of rollbacks when the ledger last caught up
    _last_folded: Event | None = None
    _last_pending: Event | None = None  # the latest ``pending`` event folded
    _noted_since: float = 0.0  # the time what is pending was set, as the latest pending event recorded says
    _pushed: list[dict[str, Any]] = field(default_factory=list)  # the bodies of the ``settings`` events folded
    _identity_since: int = 0  # the journal's: device settings recorded up to it were another box's
    _restored: bool = False  # what was pending before a start looked at, once
    _ended_unheard: bool = False  # a mode timed out while the box was off: the next scan was meant for it

    # -- keeping up with the journal -------------------------------------------------

    def _catch_up(self, journal: Journal) -> None:
        """Fold in what was written since the ledger last looked (by this counter or anyone else)."""
        if journal.rollbacks != self._rollbacks:
            self._rollbacks = journal.rollbacks
            if not self._holds(journal, self._last_folded):
                # The rollback took events the ledger had counted (a group whose commit failed): fold the
                # journal anew. A rollback takes the latest writes, so the latest event folded tells.
                # What is pending is what the journal says, as after a start: a scan whose sale did not
                # commit is to be made again as it was meant, a control that did not commit set nothing.
                self._pending, self._restored = Pending(), False
                self._last_pending = None  # folded anew below
                self.ledger, self._loaded, self._last_folded, self._pushed = Ledger(), False, None, []
                self.timezone, self.mode_timeout, self.pending_timeout = self._configured
        if not self._loaded:
            if self._started_at is None:
                self._started_at = self.clock()
                self._configured = (self.timezone, self.mode_timeout, self.pending_timeout)
            self._loaded = True
            self._identity_since = journal.identity_since()
            if self.ledger.last_seq == 0:  # from retention's checkpoint, when it has folded events away
                self._from_checkpoint(journal)
            else:
                event = journal.last("price_list")
                self._catalog = Catalog.from_price_list(event.body if event else None)
        last = journal.last_seq()
        while self.ledger.last_seq < last:
            events = journal.read_batch(self.ledger.last_seq, max_events=FOLD_BATCH, max_bytes=FOLD_BYTES,
                                        damaged=True)
            if not events or events[0].seq != self.ledger.last_seq + 1:
                # Folded away by retention before this ledger saw them: start again from the checkpoint.
                behind = self.ledger.last_seq
                self._from_checkpoint(journal)
                if self.ledger.last_seq <= behind:
                    raise JournalError(f"{journal.path}: events {behind + 1} to {last} are neither in the journal "
                                       "nor in its checkpoint")
                continue
            for event in events:
                self._fold(event)
        if not self._restored:
            self._restored = True
            self._restore_pending()
        if self._mode_active_at is None and self.ledger.session is not None:
            # A receiving or count left open by a restart goes on for what is left of its time, measured
            # from its latest scan: one left for longer has ended, and the next scan is refused, not sold.
            try:
                idle = time.time() - parse_rfc3339(self.ledger.session.last_at)
            except ValueError:
                idle = self.mode_timeout
            if idle < 0:  # a clock behind the mode's latest scan: how long ago cannot be told; ended, as time out
                idle = self.mode_timeout
            self._mode_active_at = self.clock() - idle
            # Ended while the box was off, nobody heard it end: the next scan, whatever ends the mode
            # first (that scan, or the daemon's look at the time-outs as it starts), is refused.
            self._ended_unheard = idle >= self.mode_timeout

    def _restore_pending(self) -> None:
        """What the controls scanned before the box started again said of the next scan (a return, a quantity,
        a carton, a keyed price), still pending and not timed out: it holds for the next scan as it would have.
        Digits of a number still being keyed may have been lost with the restart: the number is refused."""
        event = self._last_pending
        if event is None or not _holds_pending(event.body):
            return
        try:
            age = time.time() - parse_rfc3339(event.body.get("at"))
        except ValueError:
            age = -1.0
        if age >= self.pending_timeout:  # timed out while the box was off
            return
        if age < 0:
            # A clock behind the one that wrote it (a box started before its time was set): how long ago
            # cannot be told. Neither kept (a return meant hours ago) nor dropped in silence (a return sold):
            # the next product scan is refused until CB:CLEAR, as after a control that was lost.
            self._pending = Pending(spoiled=True, since=self.clock())
            logger.warning("pending seq=%d: what the controls said before the start is of a time the clock is "
                           "behind; the next scan is refused until cleared", event.seq,
                           extra=event_fields(event.seq, "pending", None))
            return
        body = event.body
        self._pending = Pending(quantity=body.get("quantity"), price=body.get("price"), carton=bool(body.get("carton")),
                                returning=bool(body.get("returning")),
                                spoiled=bool(body.get("spoiled") or body.get("keyed")), cut=bool(body.get("cut")),
                                cut_control=bool(body.get("cut_control")), since=self.clock() - age)
        self._noted_since = self._pending.since
        logger.warning("pending seq=%d: what the controls said before the start holds for the next scan", event.seq,
                       extra=event_fields(event.seq, "pending", None))

    def _note_pending(self, journal: Journal) -> Event | None:
        """Record what is pending when it is not what the journal last says (set by a control, used by a scan,
        cleared, timed out): a box started again picks it up. Nothing on a plain scan with nothing pending."""
        journaled = self._last_pending.body if self._last_pending is not None else None
        if not self._pending and not (journaled and _holds_pending(journaled)):
            return None
        snapshot = self._pending.as_json()
        pending = self._pending
        # Set anew (a control scanned again), where a start would use it: its time goes on record, else the start
        # would find it timed out. Not digits being keyed, nor what a start refuses anyway (a number or control
        # refused, a cut scan's hold): none for each digit or refused scan.
        renewed = pending.since != self._noted_since and not (pending.keyed or pending.spoiled or pending.cut)
        if journaled is not None and all(journaled.get(name) == value for name, value in snapshot.items()) \
                and not renewed:
            return None
        self._noted_since = self._pending.since
        return self._append(journal, "pending", {**snapshot, "at": rfc3339(time.time())})

    def _from_checkpoint(self, journal: Journal) -> None:
        """The ledger, price list and settings as of retention's checkpoint (nothing: the journal's start)."""
        self.ledger = checkpoint_ledger(journal, keep_days=False)
        upto = self.ledger.last_seq
        prices = journal.last("price_list", upto=upto)  # the one in force then, not every one before it
        self._catalog = Catalog.from_price_list(prices.body if prices else None)
        # Kept with the checkpoint: the events after it fold on.
        self._pushed = [event.body for event in journal.of_kind("settings")
                        if event.seq <= upto and holds_for_box(event.body.get("name"), event.seq, self._identity_since)]
        self._settle_pushed()

    @staticmethod
    def _holds(journal: Journal, event: Event | None) -> bool:
        if event is None:
            return True
        found = journal.read_after(event.seq - 1, 1, damaged=True)
        return bool(found) and found[0] == event

    def _fold(self, event: Event) -> None:
        if event.kind == DAMAGED:
            logger.error("journal event seq=%d (%s) cannot be read: %s; it counts for nothing here",
                         event.seq, event.body["kind"], event.body["reason"],
                         extra=event_fields(event.seq, event.body["kind"], None))
        self.ledger.apply(event.seq, event.kind, event.body)
        self._last_folded = event
        if event.kind == "pending":
            self._last_pending = event
        elif event.kind == "price_list":
            self._catalog = Catalog.from_price_list(event.body)
        elif event.kind == "settings" and holds_for_box(event.body.get("name"), event.seq, self._identity_since):
            # Pushed by operations: over the configuration file's.
            self._pushed.append(event.body)
            self._settle_pushed()

    def _settle_pushed(self) -> None:
        """The configuration's [counter] keys, under what the settings pushed so far add up to."""
        if self._configured:
            self.timezone, self.mode_timeout, self.pending_timeout = self._configured
        self.settle(settings_in_force(self._pushed).get("counter", {}))

    def settle(self, settings: dict[str, Any]) -> None:
        """Take a settings document's [counter] keys (those it names) over the configuration's."""
        if "timezone" in settings:
            zone = time_zone(settings["timezone"])
            if zone is not None:
                self.timezone = zone
            else:
                logger.warning("settings: time zone %r unknown on this box; the day stays in %s",
                               settings["timezone"], self.timezone or "the box's own zone")
        self.mode_timeout = settings.get("mode_timeout", self.mode_timeout)
        self.pending_timeout = settings.get("pending_timeout", self.pending_timeout)

    def _append(self, journal: Journal, kind: str, body: dict[str, Any]) -> Event:
        event = Event(journal.append(kind, body), kind, body)
        self._fold(event)
        return event

    @property
    def mode(self) -> str:
        session = self.ledger.session
        return session.mode if session is not None else "selling"

    # -- a scan ----------------------------------------------------------------------

    def record(self, journal: Journal, scan: Scan | NotABarcode | Keypress) -> Outcome:
        """Record ``scan`` in ``journal``; blocking (SQLite and fsync), so it runs in the store's thread."""
        self._catch_up(journal)
        # Not recorded (the retailer hears the error signal), whether the scan fails or the commit it went in
        # (a group's, maybe, which fails after this returned): what was pending, and the mode's time, stay as
        # they were. A digit keyed records nothing, so nothing in the journal would tell.
        journal.on_rollback(self._keep())
        pending = dataclasses.replace(self._pending)
        try:
            outcome = self._record(journal, scan)
            self._note_pending(journal)  # in the same transaction; the box's own bookkeeping, not the scan's outcome
        except BaseException:
            self._pending = pending
            raise
        return outcome

    def _keep(self) -> Callable[[], None]:
        """What puts back the counter's own memory (beside the ledger, which the journal tells) as it is now."""
        pending, active_at, unheard = dataclasses.replace(self._pending), self._mode_active_at, self._ended_unheard

        def put_back() -> None:
            self._pending, self._mode_active_at, self._ended_unheard = dataclasses.replace(pending), active_at, unheard
        return put_back

    def _record(self, journal: Journal, scan: Scan | NotABarcode | Keypress) -> Outcome:
        if isinstance(scan, Keypress):
            code = controls.KEYPAD.get(scan.key)
            if code is None:
                return Outcome(Signal.GOOD, note=f"keypad {scan.key}: nothing to do")
            scan = Scan(code, scan.source, scan.at, scan.at)  # a key is the sheet's control, keyed
        if isinstance(scan, NotABarcode):
            seen = scan.code_seen
            surely = scan.of_a_control or controls.is_control(seen) or controls.surely_of_one(scan.text) \
                or controls.surely_of_one(seen)
            if self._pending.keyed or scan.reason in LOST_UNSEEN or surely or controls.could_be_part_of_one(seen):
                # The cut scan may have been a digit of a number being keyed, or a control meant for the
                # next scan: never use half a number, nor sell the next scan without what it was told.
                if self._pending and not self._pending.only_cut:
                    self._pending.keyed, self._pending.spoiled = "", True
                else:
                    # Nothing was set before it: it may have been the first digit of a number, or a control
                    # (a return) for the next scan. A control or digit next is refused until CB:CLEAR; a
                    # product scan, after CUT_HOLD, is taken (the cut one was most often a product's).
                    self._pending = Pending(cut=True, since=self.clock(), cut_control=self._pending.cut_control or surely)
            body = {"text": scan.text[:REFUSED_TEXT], "reason": scan.reason, "scanner": scan.source,
                    "refused_at": rfc3339(time.time())}
            return Outcome(Signal.ERROR, (self._append(journal, "refused", body),))
        if self.mode != "selling" and self.clock() - (self._mode_active_at or 0.0) >= self.mode_timeout:
            # Ended while nobody looked (a box that was off): this scan was meant for the mode, not for selling;
            # and what was set for a scan in it goes with it.
            self._pending, self._ended_unheard = Pending(), False
            ended = self._end_mode(journal, "timeout")
            return Outcome(Signal.ERROR, ended.events, note="the receiving or count had timed out; scan again")
        if self._ended_unheard:
            # Ended as the box started, by its first look at the time-outs: likewise meant for the mode.
            self._pending, self._ended_unheard = Pending(), False
            return Outcome(Signal.ERROR, note="the receiving or count had timed out while the box was off; scan again")
        if controls.is_control(scan.text):
            try:
                control = controls.control(scan.text)
            except ValueError as error:
                return self._read_wrong(journal, scan, str(error))
            return self._control(journal, control, scan)
        if controls.joined_at_end(scan.text):
            return self._read_wrong(journal, scan, JOINED)
        barcode = classify(scan.text, scan.aim)
        common = {"code": barcode.data, "symbology": barcode.symbology.value, "aim": scan.aim or None,
                  "scanner": scan.source, "scanned_at": rfc3339(scan.finished)}
        if not barcode.valid:
            return Outcome(Signal.ERROR, (self._append(journal, "misread", {**common, "reason": barcode.reason}),))
        if self._pending.keyed:
            # A number keyed and not yet said to be a quantity or a price: never guess which, nor drop it.
            return Outcome(Signal.ERROR, note="a keyed number waits for its quantity or price control (or clear); "
                                              "the scan was not recorded")
        if self._pending.spoiled or (self._pending.cut and (self._pending.cut_control
                                                           or self.clock() - self._pending.since < CUT_HOLD)):
            return Outcome(Signal.ERROR, note="a number or control before this scan was refused or lost: scan "
                                              "CB:CLEAR and key it again; the scan was not recorded")
        pending, self._pending = self._pending, Pending()
        key = self._catalog.key_of(barcode, named=bool(scan.aim))
        if self.mode != "selling":
            self._mode_active_at = self.clock()
            return self._stock_scan(journal, key, common, pending)
        return self._sale(journal, key, common, pending, scan.finished)

    def _sale(self, journal: Journal, key: str, common: dict, pending: Pending, at: float) -> Outcome:
        unit, product, packs = self._unit(key, carton=pending.carton)
        quantity = pending.quantity or 1
        price = pending.price if pending.price is not None else (unit.price if unit else None)
        kind = "return" if pending.returning else "sale"
        body = {**common, "day": self.day(at), "quantity": quantity, "unit": unit.unit if unit else (
                    "carton" if pending.carton else "pack"),
                "packs": quantity * packs, "product": product, "known": unit is not None,
                "currency": self._catalog.currency or self.currency, "unit_price": price,
                "list_price": unit.price if unit else None, "cost": unit.cost if unit else None,
                "price_source": "keyed" if pending.price is not None else ("list" if unit else None),
                "name": unit.name if unit else None, "product_name": self._catalog.names.get(product)}
        event = self._append(journal, kind, body)
        signal = Signal.GOOD if unit is not None or pending.price is not None else Signal.ATTENTION
        if self.ledger.negative.get(product) == event.seq:
            # This sale took the product's stock below zero: recorded as sold (it was), and said, never
            # clamped. Said once, as it happens, not at every later sale: the reports list it until a
            # count or a receipt puts it right.
            signal = Signal.ATTENTION
        return Outcome(signal, (event,))

    def _stock_scan(self, journal: Journal, key: str, common: dict, pending: Pending) -> Outcome:
        unit, product, packs = self._unit(key, carton=pending.carton)
        quantity = pending.quantity or 1
        session = self.ledger.session
        assert session is not None
        body = {**common, "at": common["scanned_at"], "quantity": quantity, "packs": quantity * packs,
                "product": product, "known": unit is not None, "name": unit.name if unit else None,
                "product_name": self._catalog.names.get(product)}
        if session.mode == "receiving":
            body["order"] = session.order
            event = self._append(journal, "received", body)
        else:
            event = self._append(journal, "counted", body)
        return Outcome(Signal.GOOD if unit is not None else Signal.ATTENTION, (event,))

    def _unit(self, key: str, *, carton: bool) -> tuple[Unit | None, str, int]:
        """The unit scanned (the product's carton when a pack was scanned after CB:CARTON), its product
        and the packs one of it holds."""
        unit = self._catalog.unit(key)
        if unit is None:
            return None, key, CARTON_PACKS if carton else 1
        if carton and unit.unit == "pack":
            carton_unit = self._catalog.carton_of(unit.product)
            if carton_unit is not None:
                return carton_unit, unit.product, carton_unit.packs
            # No carton row: ten packs at ten times the pack's price.
            return (Unit(barcode=unit.barcode, name=unit.name, price=unit.price * CARTON_PACKS, unit="carton",
                         packs=CARTON_PACKS, cost=None if unit.cost is None else unit.cost * CARTON_PACKS,
                         product=unit.product), unit.product, CARTON_PACKS)
        return unit, unit.product, unit.packs

    def day(self, timestamp: float) -> str:
        """The shop's date at ``timestamp``: the day a sale belongs to."""
        return datetime.fromtimestamp(timestamp, self.timezone).date().isoformat() if self.timezone else \
            datetime.fromtimestamp(timestamp).date().isoformat()

    # -- controls --------------------------------------------------------------------

    def _control(self, journal: Journal, control: controls.Control, scan: Scan) -> Outcome:
        pending, now = self._pending, self.clock()
        action = control.action
        if pending.cut and (action in SETS_PENDING or action == "return"):
            # The scan cut short before it may have been this control's first digit, or a control this one was
            # to go with (a return, then its quantity): never half of what was keyed.
            pending.cut, pending.cut_control, pending.spoiled, pending.since = False, False, True, now
            return Outcome(Signal.ERROR, note="a scan just before was cut short, and may have been a control or "
                                              "digit: scan CB:CLEAR, then key or scan it again")
        if pending.spoiled and action in ("quantity", "carton", "return"):
            # The product after it would be refused: the control is too, so that the retailer hears at once that
            # CB:CLEAR is wanted (taken with the good signal, then every product refused, looked stuck).
            return Outcome(Signal.ERROR, note="a number or control before this one was refused or lost: scan "
                                              "CB:CLEAR, then scan it again")
        if action in SETS_PENDING:
            # What is set for the next scan times out counted from the last control that set it: a void or a
            # control refused leaves it, and its time, as they were (as after a restart, where the journal's
            # pending event says when).
            pending.since = now
        if self.mode != "selling":
            self._mode_active_at = now
        if action == "digit":
            if not pending.keyed and now - (self._started_at or 0.0) < self.start_guard:
                # The box has just started: digits keyed before it was reading may be lost.
                pending.spoiled = True
            if pending.spoiled or len(pending.keyed) >= MAX_KEYED or (control.value == "." and "." in pending.keyed):
                # Never half a number: the whole of it is refused, and so is what is keyed after it,
                # until CB:CANCEL (or the quantity or price it was for, which is refused too).
                pending.keyed, pending.spoiled = "", True
                return Outcome(Signal.ERROR, note="keyed number refused (too long, a second point, a digit "
                                                  "cut short or keyed as the box started): clear and key it again")
            pending.keyed += str(control.value)
            return Outcome(Signal.GOOD, note="digit keyed")
        if action == "quantity":
            pending.quantity = int(control.value)  # type: ignore[arg-type]
            return Outcome(Signal.GOOD, note=f"quantity {control.value} for the next scan")
        # A quantity or price that fails leaves the next product scan refused too, until CB:CLEAR: the
        # retailer meant it for that scan, which must not go through without it.
        if action == "keyed-quantity":
            keyed, pending.keyed = ("" if pending.spoiled else pending.keyed), ""
            if not keyed.isdigit() or not 1 <= int(keyed) <= controls.MAX_QUANTITY:
                pending.spoiled = True
                return Outcome(Signal.ERROR, note=f"keyed quantity refused: clear, key 1 to {controls.MAX_QUANTITY}, "
                                                  "and scan it again")
            pending.quantity = int(keyed)
            return Outcome(Signal.GOOD, note="keyed quantity for the next scan")
        if action == "price":
            keyed, pending.keyed = ("" if pending.spoiled else pending.keyed), ""
            price = _minor(keyed)
            if price is None or self.mode != "selling":
                pending.spoiled = True
                return Outcome(Signal.ERROR, note="price override refused: clear, key the price, scan it again "
                                                  "(when selling)")
            pending.price = price
            return Outcome(Signal.GOOD, note="keyed price for the next sale")
        if action in ("carton", "return"):
            if action == "return" and self.mode != "selling":
                return Outcome(Signal.ERROR, note="return refused: only when selling")
            pending.since = now
            setattr(pending, "carton" if action == "carton" else "returning", True)
            return Outcome(Signal.GOOD, note=f"{action} for the next scan")
        if action in ("cancel", "clear"):
            # (A cut scan's hold is nothing set: CB:CANCEL after it still leaves the mode, as the retailer meant.)
            if (pending and not pending.only_cut) or action == "clear" or self.mode == "selling":
                self._pending = Pending()
                return Outcome(Signal.GOOD, note="pending cleared")
            self._pending = Pending()
            return self._end_mode(journal, "cancelled")  # CB:CANCEL with nothing pending leaves the mode
        if action == "void":  # takes back the last line: what is set for the next scan still is
            return self._void(journal, scan)
        # The actions below stand alone: nothing keyed carries past them. One refused (nothing done) leaves what
        # is set for the next scan as it was, as a refused control does.
        kept, self._pending = self._pending, Pending()
        outcome = self._stand_alone(journal, action, scan)
        if outcome.signal is Signal.ERROR and not outcome.events:
            self._pending = kept
        return outcome

    def _stand_alone(self, journal: Journal, action: str, scan: Scan) -> Outcome:
        if action == "receive":
            return self._start(journal, "receiving_started", {"order": (self.ledger.open_order() or {}).get("name")})
        if action == "count":
            return self._start(journal, "count_started", {})
        if action == "receive-all":
            return self._receive_all(journal)
        if action == "close":
            return self._close(journal)
        if action == "end-day":
            return self._end_day(journal, scan)
        raise AssertionError(f"unhandled control {action}")

    def _start(self, journal: Journal, kind: str, body: dict) -> Outcome:
        if self.mode != "selling":
            return Outcome(Signal.ERROR, note=f"{kind.split('_')[0]} refused: {self.mode} is on; close or cancel it first")
        self._mode_active_at = self.clock()
        return Outcome(Signal.GOOD, (self._append(journal, kind, {**body, "at": rfc3339(time.time())}),))

    def _end_mode(self, journal: Journal, reason: str) -> Outcome:
        """Leave receiving or counting unclosed: the attention signal, since what was scanned is not closed."""
        mode = self.mode
        event = self._append(journal, "mode_ended", {"mode": mode, "reason": reason, "at": rfc3339(time.time())})
        self._mode_active_at = None
        return Outcome(Signal.ATTENTION, (event,))

    def _void(self, journal: Journal, scan: Scan) -> Outcome:
        """Take back the last line sold or returned today; in a receiving or a count, its last scan."""
        session = self.ledger.session
        if session is not None:
            if not session.scans:
                return Outcome(Signal.ERROR, note=f"void refused: nothing scanned in this {session.mode} is left to void")
            seq = max(session.scans)
            product, packs = session.scans[seq]
            body = {"voids": seq, "voided_kind": "received" if session.mode == "receiving" else "counted",
                    "product": product, "packs": packs, "order": session.order, "scanner": scan.source,
                    "at": rfc3339(scan.finished)}
            return Outcome(Signal.GOOD, (self._append(journal, "void", body),))
        line = self.ledger.voidable(self.day(scan.finished))
        if line is None:
            return Outcome(Signal.ERROR, note="void refused: the last line sold or returned (not voided) is not "
                                              "today's, or there is none")
        body = {"voids": line.seq, "voided_kind": line.kind, "day": line.day, "product": line.product,
                "packs": line.packs, "amount": line.amount, "cost": line.cost, "unpriced": line.amount_unknown,
                "scanner": scan.source, "at": rfc3339(scan.finished)}
        return Outcome(Signal.GOOD, (self._append(journal, "void", body),))

    def _receive_all(self, journal: Journal) -> Outcome:
        """The order arrived in full: receive what of it has not arrived yet, and close it."""
        session = self.ledger.session
        # The order being received, when a receiving of one is on; else the latest one not yet received.
        order = self.ledger.orders.get(session.order) if session is not None and session.order else \
            self.ledger.open_order()
        if order is None or self.mode == "counting":
            return Outcome(Signal.ERROR, note="receive-all refused: no open order, or a count is on")
        at = rfc3339(time.time())
        events = []
        if self.mode == "selling":
            events.append(self._append(journal, "receiving_started", {"order": order["name"], "at": at}))
            self._mode_active_at = self.clock()
        arrived = dict(order["received"])
        # Receivings begun before the order came (this one, or earlier ones left unclosed): they count.
        for product, packs in self.ledger.unordered.items():
            arrived[product] = arrived.get(product, 0) + packs
        for line in _order_lines(order, self._catalog):
            missing = line["ordered"] - arrived.get(line["product"], 0)
            if missing > 0:
                events.append(self._append(journal, "received", {
                    "order": order["name"], "code": line["barcode"], "product": line["product"], "packs": missing,
                    "quantity": None, "known": line["known"], "name": line["name"], "at": at, "scanner": None,
                    "product_name": self._catalog.names.get(line["product"])}))
        closed = self._close(journal, order=order)
        unknown = any(event.kind == "received" and not event.body["known"] for event in events)
        # A product not on the price list received asks for a look, as scanning it in would.
        signal = Signal.ATTENTION if unknown and closed.signal is Signal.GOOD else closed.signal
        return Outcome(signal, (*events, *closed.events))

    def _close(self, journal: Journal, order: dict[str, Any] | None = None) -> Outcome:
        session = self.ledger.session
        now = time.time()
        # The shop's day it closed on, which central reports it by (its own calendar may be another time zone's);
        # none where the shop's time zone is not set (the box's own is UTC on the image): central's calendar then.
        at, said = rfc3339(now), {"day": self.day(now)} if self.timezone else {}
        if session is None:
            return Outcome(Signal.ERROR, note="close refused: neither receiving nor counting is on")
        self._mode_active_at = None
        if session.mode == "counting":
            products = set(session.packs) | {p for p, packs in self.ledger.stock.items() if packs != 0}
            lines = [{"product": p, "name": self._catalog.names.get(p) or self.ledger.names.get(p),
                      "expected": self.ledger.stock.get(p, 0), "counted": max(0, session.packs.get(p, 0)),
                      "difference": max(0, session.packs.get(p, 0)) - self.ledger.stock.get(p, 0)}
                     for p in sorted(products)]
            event = self._append_close(journal, "count_closed", {"started": session.seq, "at": at, **said}, lines)
            differs = any(line["difference"] for line in lines)
            return Outcome(Signal.ATTENTION if differs else Signal.GOOD, (event,))
        if order is None:
            # The order being received; for a receiving begun before any order came, the one that came
            # since (as receive-all takes it): closed with it, never left open to be received again.
            order = self.ledger.orders.get(session.order) if session.order else self.ledger.open_order()
        # Against the order: all that arrived for it, in this receiving or an earlier one left unclosed.
        received = dict(order["received"]) if order else {}
        for product, packs in self.ledger.unordered.items():  # scanned in before the order was known
            received[product] = received.get(product, 0) + packs
        lines = self._receipt(order, received, session.packs)
        # An order that came before it, still open, with something of it received (a receiving of it left
        # unclosed): closed first with a receipt of its own, so what it lacks is said, never dropped with it.
        earlier = [(self._append_close(journal, "receiving_closed", {"started": session.seq, "order": before["name"],
                                                                     "at": at, **said}, before_lines), before_lines)
                   for before, before_lines in [(before, self._receipt(before, dict(before["received"]), {}))
                                                for before in self._partly_received_before(order)]]
        event = self._append_close(journal, "receiving_closed", {"started": session.seq, "order": order["name"] if order
                                                                 else None, "at": at, **said}, lines)
        differs = (order is not None and any(line["difference"] for line in lines)) or any(
            line["difference"] for _, before_lines in earlier for line in before_lines)
        return Outcome(Signal.ATTENTION if differs else Signal.GOOD, (*(e for e, _ in earlier), event))

    def _receipt(self, order: dict[str, Any] | None, received: dict[str, int],
                 scanned: dict[str, int]) -> list[dict[str, Any]]:
        """A receiving close's lines: per product, ordered against received."""
        ordered = {line["product"]: line for line in _order_lines(order, self._catalog)} if order else {}
        return [{"product": p, "name": self._catalog.names.get(p) or (ordered.get(p) or {}).get("name")
                 or self.ledger.names.get(p), "ordered": (ordered.get(p) or {}).get("ordered", 0),
                 "received": received.get(p, 0), "difference": received.get(p, 0) - (ordered.get(p) or {}).get("ordered", 0)}
                for p in sorted(set(ordered) | set(received) | set(scanned))]

    def _partly_received_before(self, order: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The open orders that came before ``order`` with something of them received, oldest first."""
        if order is None:
            return []
        first = order.get("_first", order["_seq"])
        return sorted((other for name, other in self.ledger.orders.items() if name != order["name"]
                       and other.get("received") and other.get("_first", other["_seq"]) < first),
                      key=lambda other: other["_seq"])

    def _read_wrong(self, journal: Journal, scan: Scan, reason: str) -> Outcome:
        """A sheet's code read wrong was meant for something: refused, and the next scan must not go without it,
        until CB:CLEAR or ``pending_timeout`` from now."""
        self._pending.keyed, self._pending.spoiled, self._pending.since = "", True, self.clock()
        body = {"text": scan.text[:REFUSED_TEXT], "reason": reason, "scanner": scan.source,
                "refused_at": rfc3339(time.time())}
        return Outcome(Signal.ERROR, (self._append(journal, "refused", body),))

    def _append_close(self, journal: Journal, kind: str, body: dict[str, Any], lines: list[dict[str, Any]]) -> Event:
        """A close lists a line per product. Too long for one event (an order of thousands of lines with
        long names), it goes without the names, which the price list and the ledger hold anyway: never a
        receiving or a count that cannot be closed."""
        try:
            return self._append(journal, kind, {**body, "lines": lines})
        except EventTooLarge:
            return self._append(journal, kind, {**body, "lines": [{**line, "name": None} for line in lines]})

    def _end_day(self, journal: Journal, scan: Scan) -> Outcome:
        if self.mode != "selling":
            return Outcome(Signal.ERROR, note=f"end of day refused: {self.mode} is on; close or cancel it first")
        # The day in progress: that of the latest line standing (a mis-scan voided after midnight is none),
        # when it is today or yesterday (a shop that closes after midnight closes the evening's day), else today.
        today = self.day(scan.finished)
        # The calendar's day before, not the day 24 hours ago: after a 23-hour day (clocks put forward)
        # that is still today, and the evening's day was left open while an empty one was closed.
        yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
        ledger = self.ledger
        standing = [seq for seq in ledger.lines if seq not in ledger.voided]
        latest = ledger.lines[max(standing)].day if standing else today
        names = [latest if latest in (today, yesterday) else today]
        evening = ledger.days.get(yesterday)
        if names == [today] and evening is not None and (
                (evening.closed is None and evening.total.lines) or evening.sold_on):
            # Sold on past midnight, or left open, or sold on since it was closed (closed early, after
            # midnight the night before): the evening's day goes first, with all its sales.
            names.insert(0, yesterday)
        return Outcome(Signal.GOOD, tuple(self._append(journal, "day_closed", self._day_closed(name, scan))
                                          for name in names))

    def _day_closed(self, name: str, scan: Scan) -> dict[str, Any]:
        day = self.ledger.days.get(name)
        totals = day.total.as_json() if day else {"lines": 0, "packs": 0, "amount": 0, "cost": 0, "uncosted": 0,
                                                   "margin": 0, "unpriced": 0}
        return {"day": name, "totals": totals, "currency": self._catalog.currency or self.currency,
                "at": rfc3339(scan.finished)}

    # -- monitoring --------------------------------------------------------------------

    def snapshot(self, journal: Journal, at: float) -> Event:
        """Record what a monitoring point reports to the company: its stock by product, and the prices
        it actually sold at today (the latest of each product and unit, with the lines sold at it)."""
        self._catch_up(journal)
        ledger, today = self.ledger, self.day(at)
        stock = [{"product": p, "name": ledger.names.get(p) or self._catalog.names.get(p), "packs": packs,
                  "known": p in ledger.tracked} for p, packs in sorted(ledger.stock.items())]
        sold: dict[tuple[str, str], dict[str, Any]] = {}
        for seq in sorted(ledger.sale_prices.get(today, {})):
            product, unit, price, list_price = ledger.sale_prices[today][seq]
            row = sold.setdefault((product, unit), {"product": product, "name": ledger.names.get(product),
                                                    "unit": unit, "lines": 0})
            row.update(price=price, list_price=list_price)
            row["lines"] += 1
        body = {"at": rfc3339(at), "day": today, "currency": self._catalog.currency or self.currency,
                "stock": stock, "prices": [sold[key] for key in sorted(sold)]}
        return self._append(journal, "snapshot", body)

    # -- time ------------------------------------------------------------------------

    def expire(self, journal: Journal) -> Outcome | None:
        """End a mode left without a scan for ``mode_timeout``, forget what was pending past
        ``pending_timeout``; None when nothing expired. Called now and then from the daemon."""
        self._catch_up(journal)
        journal.on_rollback(self._keep())
        now = self.clock()
        if self.mode != "selling" and now - (self._mode_active_at or 0.0) >= self.mode_timeout:
            self._pending = Pending()
            outcome = self._end_mode(journal, "timeout")
            self._note_pending(journal)
            return outcome
        if self._pending and now - self._pending.since >= self.pending_timeout:
            only_cut = self._pending.only_cut
            self._pending = Pending()
            self._note_pending(journal)
            # A cut scan's hold on the controls after it ends as quietly as it began (its error was heard).
            return None if only_cut else Outcome(Signal.ATTENTION, note="what was keyed or set for the next scan "
                                                                        "timed out")
        return None


def _holds_pending(body: dict[str, Any]) -> bool:
    """Whether a ``pending`` event says something is pending, by Pending's own rule (a keyed price of 0.00 is)."""
    return bool(Pending(**{name: body[name] for name in PENDING_FIELDS if body.get(name) is not None}))


def _minor(keyed: str) -> int | None:
    """A keyed amount in minor units: digits with at most one point and two decimals; None if it is not one."""
    whole, _, fraction = keyed.partition(".")
    if not keyed or not (whole or fraction) or not (whole.isdigit() or whole == "") or len(fraction) > 2 \
            or not (fraction.isdigit() or fraction == ""):
        return None
    return int(whole or "0") * 100 + int(fraction.ljust(2, "0") or "0")


def _order_lines(order: dict[str, Any], catalog: Catalog) -> list[dict[str, Any]]:
    """An order's lines in packs, per product (a line may name a carton barcode)."""
    lines: dict[str, dict[str, Any]] = {}
    for line in order["lines"]:
        key = catalog.key_of(classify(line["barcode"]))  # as a scan of its label is (an 8-digit one read either way)
        unit = catalog.unit(key)
        product = unit.product if unit else key
        packs = line["quantity"] * (unit.packs if unit else 1)
        if product in lines:
            lines[product]["ordered"] += packs
        else:
            lines[product] = {"product": product, "barcode": line["barcode"], "name": line["name"],
                              "ordered": packs, "known": unit is not None}
    return list(lines.values())


def log_recorded(outcome: Outcome, scanner: str) -> None:
    """One line per event once durable (never before: its seq could yet be rolled back), one for a
    control that recorded nothing; each names the event, never its code, product or amount."""
    if not outcome.events and outcome.note:
        (logger.info if outcome.signal is not Signal.ERROR else logger.warning)(
            "control scanner=%s: %s", scanner, outcome.note, extra=event_fields(None, "control", scanner))
    for event in outcome.events:
        fields = {"extra": event_fields(event.seq, event.kind, scanner)}
        if event.kind == "refused":
            logger.warning("refused seq=%d scanner=%s: %s; not a sale", event.seq, scanner, event.body["reason"], **fields)
        elif event.kind == "misread":
            logger.warning("misread seq=%d scanner=%s: the check digit fails; not a sale", event.seq, scanner, **fields)
        elif event.kind in ("sale", "return") and not event.body.get("known") and event.body.get("unit_price") is None:
            logger.warning("%s seq=%d scanner=%s: product not on the price list, recorded without a price",
                           event.kind, event.seq, scanner, **fields)
        elif outcome.signal is Signal.ATTENTION and event.kind in ("sale", "return"):
            logger.warning("%s seq=%d scanner=%s: stock of the product is below zero", event.kind, event.seq,
                           scanner, **fields)
        elif outcome.signal is Signal.ATTENTION and event.kind in ("count_closed", "receiving_closed"):
            logger.warning("%s seq=%d: differences recorded", event.kind, event.seq, **fields)
        else:
            logger.info("%s seq=%d scanner=%s", event.kind, event.seq, scanner, **fields)
