"""Retention: a small box keeps a small journal, and loses no figure.

Events that central has acknowledged and that are older than ``[storage]
retention_days`` are folded into the journal's checkpoint (the ledger as of
the last of them: stock, every day's totals, open orders, counts and
receipts) and removed. The checkpoint is sealed like an event; the hash
chain goes on from the last event removed (its anchor), so ``counterbox
verify`` still checks every event kept. The counter and the reports start
from the checkpoint and fold only what follows it, so today's report, last
year's, and the stock, are what they would have been with every event kept.
Central holds every event for good.

A step folds at most ``FOLD_STEP`` events (a fraction of a second in the
store's thread), so a journal that has grown for a year is brought down a
step at a time, never holding up a scan for long. On a disk too full for a
step, the daemon halves it (down to ``FOLD_STEP_LEAST``) and tries again
within a minute. The checkpoint grows by the days folded (each product's
totals of each day), not by their sales: the actual prices sold at are kept
for the recent days alone, which the counter reads.

    upto = fold_old(journal, days=90, now=time.time())   # the seq folded up to, or None
"""

from __future__ import annotations

from typing import Any

from provisioning.protocol import parse_rfc3339
from storage import Event, Journal

from .ledger import LISTS_FOLDED, Ledger

FOLD_STEP = 5000  # events folded and removed in one step at most
# The fewest a step folds: on a disk too full for a step (its removed events and new checkpoint pass through
# the write-ahead log), steps are halved down to this, and tried again soon.
FOLD_STEP_LEAST = 50
KEPT_LATEST = ("price_list", "activation", "revocation")
# Where an event says when it happened, by kind; the first found is taken. Not a document's issued_at (when
# operations signed it): its content event takes the time of its document event, recorded after it.
_TIME_FIELDS = ("scanned_at", "at", "refused_at", "activated_at", "applied_at")


def checkpoint_ledger(journal: Journal, *, keep_days: bool) -> Ledger:
    """The ledger as of the journal's checkpoint (empty without one): where a fold of the journal starts."""
    held = journal.checkpoint()
    if not held:
        return Ledger(keep_days=keep_days)
    ledger = Ledger.from_state(held[1], keep_days=keep_days)
    if held[1].get("v", 1) < LISTS_FOLDED:
        # Folded by a box before price lists folded: the list in force then (kept with the checkpoint) moves the
        # stock kept under a carton's own code into its product, as central's fold of every event did.
        prices = journal.last("price_list", upto=ledger.last_seq)
        if prices is not None:
            ledger.apply(prices.seq, prices.kind, prices.body)
            ledger.last_seq = held[1]["last_seq"]
    return ledger


def fold_old(journal: Journal, *, days: float, now: float, step: int | None = None) -> int | None:
    """Fold the events acknowledged by central and older than ``days`` (at most ``step`` of them, FOLD_STEP
    unless said) into the checkpoint and remove them; the seq folded up to, or None when none is due."""
    if days <= 0:
        return None
    step = FOLD_STEP if step is None else step
    ledger = checkpoint_ledger(journal, keep_days=True)
    start = max(ledger.last_seq, journal.anchor_seq())
    limit = min(journal.acked_seq(), start + step)
    upto = _last_before(journal, start, limit, now - days * 86_400)
    if upto <= start:
        return None
    after = start
    while after < upto:
        for event in journal.read_after(after, min(1000, upto - after), damaged=True):
            ledger.apply(event.seq, event.kind, event.body)
            after = event.seq
    journal.fold_prefix(upto, ledger.state(), kept(journal, upto))
    return upto


def kept(journal: Journal, upto: int) -> list[Event]:
    """The events up to ``upto`` that the box reads by kind, not through the ledger: they stay with the
    checkpoint (the price list in force, the activation, a revocation, every setting pushed, the
    latest version of each document)."""
    events: list[Event] = []
    for kind in KEPT_LATEST:
        found = [event for event in journal.of_kind(kind) if event.seq <= upto]
        events += found[-1:]
    events += [event for event in journal.of_kind("settings") if event.seq <= upto]
    documents: dict[str, Event] = {}
    for event in journal.of_kind("document"):
        if event.seq <= upto:
            documents[event.body["name"]] = event
    events += documents.values()
    return sorted(events, key=lambda event: event.seq)


def _last_before(journal: Journal, low: int, high: int, cutoff: float) -> int:
    """The last seq in (low, high] whose event happened before ``cutoff``, taking events in seq order
    as in time order (a binary search: a few events decrypted, whatever the journal's size)."""
    while low < high:
        middle = (low + high + 1) // 2
        at = _time_at(journal, middle, high)
        if at is not None and at < cutoff:
            low = middle
        else:
            high = middle - 1
    return low


def _time_at(journal: Journal, seq: int, high: int) -> float | None:
    """When the event at ``seq`` happened: its own time, or that of the next event that says one."""
    for event in journal.read_after(seq - 1, min(50, high - seq + 1), damaged=True):
        at = event_time(event.body)
        if at is not None:
            return at
    return None


def event_time(body: dict[str, Any]) -> float | None:
    for name in _TIME_FIELDS:
        value = body.get(name)
        if isinstance(value, str):
            try:
                return parse_rfc3339(value)
            except ValueError:
                continue
    return None
