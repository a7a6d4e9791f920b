"""Whatever the kernel hands the decoder, it neither crashes nor lets a bad code through as a sale."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from evdev import InputEvent, ecodes as e
from hypothesis import HealthCheck, example, given, settings, strategies as st

from agent.counter import Counter
from drivers.barcode import Symbology, classify, gs1_check_digit
from drivers.decoder import Decoder, DecoderSettings, NotABarcode, Scan
from drivers.recording import type_text
from storage import Journal

from .harness import examples

KEYS = [getattr(e, f"KEY_{d}") for d in "0123456789"] + [getattr(e, f"KEY_KP{d}") for d in "0123456789"] + [
    e.KEY_ENTER, e.KEY_KPENTER, e.KEY_TAB, e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_RIGHTALT,
    e.KEY_CAPSLOCK, e.KEY_NUMLOCK, e.KEY_A, e.KEY_J, e.KEY_M, e.KEY_RIGHTBRACE, e.KEY_MINUS, e.KEY_ESC, e.KEY_F5,
]
MODIFIERS = [e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL, e.KEY_LEFTALT, e.KEY_RIGHTALT]

event = st.one_of(
    st.tuples(st.just(e.EV_KEY), st.sampled_from(KEYS), st.sampled_from([0, 1, 1, 1, 2])),
    st.tuples(st.just(e.EV_KEY), st.integers(0, 767), st.integers(-2, 3)),
    st.tuples(st.just(e.EV_SYN), st.sampled_from([e.SYN_REPORT, e.SYN_DROPPED, 2, 7]), st.integers(0, 1)),
    st.tuples(st.sampled_from([e.EV_MSC, e.EV_LED, e.EV_REL, 0x1F]), st.integers(0, 0xFFFF), st.integers(-(2**31), 2**31 - 1)),
)
streams = st.lists(st.tuples(event, st.floats(0, 0.3)), max_size=300)
layouts = st.sampled_from(["us", "de", "fr"])


def _feed(decoder: Decoder, stream, t: float = 1_764_000_000.0) -> list:
    out = []
    for (type_, code, value), gap in stream:
        t += gap
        result = decoder.feed(InputEvent(int(t), int((t % 1) * 1e6), type_, code, value))
        if decoder.resync_pending:
            decoder.resync(frozenset())
        if result is not None:
            out.append(result)
    return out


@settings(max_examples=examples(300), deadline=None)
@given(streams, layouts)
def test_random_streams_never_crash_and_yield_only_clean_text(stream, layout):
    for result in _feed(Decoder("dev", DecoderSettings(layout=layout)), stream):
        assert isinstance(result, (Scan, NotABarcode))
        if isinstance(result, Scan):
            assert result.text
            assert not set(result.text) & set("\r\n\t")
            assert all(c.isprintable() or c == "\x1d" for c in result.text)
            assert result.slowest_key <= 0.05


@settings(max_examples=examples(300), deadline=None)
@given(streams, layouts, st.lists(st.integers(1, 40), min_size=1, max_size=8), st.sampled_from([
    frozenset(), frozenset({e.KEY_LEFTSHIFT}), frozenset({e.KEY_RIGHTALT, e.KEY_5}), None]))
def test_a_read_at_a_time_decodes_as_one_event_at_a_time(stream, layout, reads, held):
    """The scanner manager hands the decoder each read's records together, as the kernel returned
    them: however the stream is cut into reads, the results are those of one event at a time,
    the key state after a drop taken from the device at the same point. After a drop, read together
    refuses more: the device, asked once the read was taken, answers for the read's end (a scan of that
    read a key it says is down could change is refused, and so is one begun in it, whose keys the kernel
    took back); it never books a scan one event at a time did not."""
    t, records = 1_764_000_000.0, []
    for (type_, code, value), gap in stream:
        t += gap
        records.append((int(t), int((t % 1) * 1e6), type_, code, value))
    single = Decoder("dev", DecoderSettings(layout=layout))
    one_by_one = []
    for record in records:
        result = single.feed(InputEvent(*record))
        if single.resync_pending:
            single.resync(held if held is not None else frozenset())
        if result is not None:
            one_by_one.append(result)
    batched, decoder, at = [], Decoder("dev", DecoderSettings(layout=layout)), 0
    for read in range(len(records)):
        if at >= len(records):
            break
        size = reads[read % len(reads)]
        batched += decoder.feed_all(records[at:at + size], held_keys=lambda: held)
        at += size
    assert not decoder.resync_pending
    if not any(type_ == e.EV_SYN and code == e.SYN_DROPPED for _, _, type_, code, _ in records):
        assert batched == one_by_one
        return
    booked = iter([(r.text, r.finished) for r in one_by_one if isinstance(r, Scan)])
    assert all(scan in booked for scan in [(r.text, r.finished) for r in batched if isinstance(r, Scan)])


def _ean(body: str, *, valid: bool = True) -> str:
    check = gs1_check_digit(body)
    return body + str(check if valid else (check + 1) % 10)


bodies = st.text("0123456789", min_size=12, max_size=12)
# Junk, then EAN-13s after a pause (some with a wrong check digit), then junk again.
mixed = st.tuples(streams, st.lists(st.tuples(bodies, st.booleans()), min_size=1, max_size=4), streams)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed)
def test_no_sale_from_random_streams_fails_its_check_digit(parts):
    junk, codes, tail = parts
    release = [((e.EV_KEY, m, 0), 0.0) for m in MODIFIERS] + [((e.EV_SYN, e.SYN_REPORT, 0), 0.0)]
    stream = junk + release + [((e.EV_KEY, e.KEY_ENTER, 1), 0.3), ((e.EV_KEY, e.KEY_ENTER, 0), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.open(Path(tmp) / "j.db", os.urandom(32))
        counter = Counter()
        decoder = Decoder("dev")
        results = _feed(decoder, stream)
        t = 1_800_000_000.0
        for body, valid in codes:
            results += [r for r in map(decoder.feed, type_text(_ean(body, valid=valid), start=t)) if r is not None]
            t += 1.0
        results += _feed(decoder, tail, t)
        for result in results:
            if isinstance(result, Scan):
                counter.record(journal, result)
        recorded = journal.read_after(0, limit=10_000)
        journal.close()
    ean_length = [r for r in recorded if r.kind in ("sale", "misread") and len(r.body["code"]) == 13]
    assert len(ean_length) >= len(codes)  # the property is exercised: every typed code was recorded
    for event in recorded:
        barcode = classify(event.body["code"])
        if event.kind == "sale" and barcode.symbology is not Symbology.RAW:
            assert gs1_check_digit(barcode.data[:-1]) == int(barcode.data[-1])
        if event.kind == "misread":
            assert not barcode.valid


# -- a scan not seen whole is never a code --------------------------------------------

def _alt_mode_first(code: str, start: float) -> list[InputEvent]:
    """``code`` with its first character typed in a scanner's Alt mode (Alt, its Windows-1252 number on the
    keypad with a leading 0, Alt released), the rest as type_text types it."""
    events, t = [], start
    digits = [getattr(e, f"KEY_KP{d}") for d in f"0{code[0].encode('cp1252')[0]:03d}"]
    for code_, value in [(e.KEY_LEFTALT, 1)] + [(d, v) for d in digits for v in (1, 0)] + [(e.KEY_LEFTALT, 0)]:
        events.append(InputEvent(int(t), int(round((t % 1) * 1e6)) % 1_000_000, e.EV_KEY, code_, value))
        events.append(InputEvent(int(t), int(round((t % 1) * 1e6)) % 1_000_000, e.EV_SYN, e.SYN_REPORT, 0))
        t += 0.002
    return events + (type_text(code[1:], start=t) if code[1:] else type_text("", start=t))


def _session(codes: list[str], start: float, *, alt_mode: bool = False) -> tuple[list, list[tuple[str, float, int, int]]]:
    """The events of a scanner typing ``codes`` a customer apart, and for each code: its text, the time
    of its first key, and the indices of its first event and of its terminator's key-down. ``alt_mode``:
    each code's first character is typed in Alt mode, several keys for one character."""
    events, spans, t = [], [], start
    for code in codes:
        typed = _alt_mode_first(code, t) if alt_mode else type_text(code, start=t)
        downs = [i for i, ev in enumerate(typed) if ev.type == e.EV_KEY and ev.value == 1]
        # (A scan is stamped with its first character: in Alt mode, at Alt's release.)
        first = next(ev for ev in typed if ev.value == 0 and ev.code == e.KEY_LEFTALT) if alt_mode else typed[downs[0]]
        spans.append((code, first.timestamp(), len(events), len(events) + downs[-1]))
        events += typed
        t = typed[-1].timestamp() + 0.3
    return events, spans


def _whole(scan: Scan, spans, delivered_from: float, lost: range = range(0)) -> bool:
    """Was ``scan`` a code typed whole, every event of it up to its terminator delivered?"""
    for code, first, first_index, terminator in spans:
        if scan.text == code and abs(scan.started - first) < 1e-5:
            cut_by_open = first < delivered_from
            cut_by_drop = bool(lost) and lost.start <= terminator and lost.stop > first_index
            return not cut_by_open and not cut_by_drop
    return False


codes_strategy = st.lists(st.one_of(bodies.map(_ean), st.text("0123456789", min_size=1, max_size=14),
                                    st.text("ABCXYZ0123-$%", min_size=1, max_size=10)), min_size=1, max_size=6)


@settings(max_examples=examples(300), deadline=None)
@given(codes_strategy, st.floats(0, 1), st.floats(0, 0.06))
def test_a_source_opened_mid_scan_books_nothing_but_whole_scans(codes, where, lag):
    """The agent restarted or the scanner was reopened at any moment: the tail it reads is never a code."""
    events, spans = _session(codes, 1_800_000_000.0)
    opened = events[0].timestamp() + where * (events[-1].timestamp() - events[0].timestamp())
    decoder = Decoder("dev")
    decoder.opened(opened)
    # Events the old reader had not taken were waiting; the kernel hands them over up to ``lag`` late.
    delivered = [ev for ev in events if ev.timestamp() >= opened - lag]
    results = [r for r in map(decoder.feed, delivered) if r is not None]
    final = decoder.idle(events[-1].timestamp() + 1.0)
    for scan in [r for r in results + [final] if isinstance(r, Scan)]:
        assert _whole(scan, spans, opened - lag), f"{scan.text!r} booked from a scan not seen whole"
    # Every code begun after the open (and a pause) is booked.
    after = [code for code, first, _, _ in spans if first - opened > 0.05]
    assert [r.text for r in results if isinstance(r, Scan)][-len(after):] == after if after else True


@settings(max_examples=examples(300), deadline=None)
@given(codes_strategy, st.floats(0, 1), st.integers(1, 400), st.booleans())
def test_events_dropped_anywhere_book_nothing_but_whole_scans(codes, where, length, with_report):
    """The kernel's buffer overflowed (SYN_DROPPED) at any point, for any number of events."""
    events, spans = _session(codes, 1_800_000_000.0)
    start = int(where * len(events))
    lost = events[start:start + length]
    if not lost:
        return
    marker = InputEvent(lost[0].sec, lost[0].usec, e.EV_SYN, e.SYN_DROPPED, 0)
    after = events[start + length:]
    if with_report and after:  # the kernel's stale events up to the next SYN_REPORT
        after = after[:1] + after
    decoder = Decoder("dev")
    results = []
    for ev in events[:start] + [marker] + after:
        result = decoder.feed(ev)
        if decoder.resync_pending:
            decoder.resync(frozenset())
        if result is not None:
            results.append(result)
    results.append(decoder.idle(events[-1].timestamp() + 1.0))
    for scan in [r for r in results if isinstance(r, Scan)]:
        assert _whole(scan, spans, 0.0, range(start, start + length)), f"{scan.text!r} booked from a scan the kernel cut"


@settings(max_examples=examples(200), deadline=None)
@given(streams, st.text("0123456789", min_size=12, max_size=12))
def test_a_clean_scan_after_any_junk_decodes_exactly(junk, body):
    code = body + str(gs1_check_digit(body))
    decoder = Decoder("dev")
    _feed(decoder, junk)
    # The junk may have left modifiers down: the next real scan starts after they are released.
    release = [((e.EV_KEY, m, 0), 0.0) for m in MODIFIERS] + [((e.EV_SYN, e.SYN_REPORT, 0), 0.0)]
    _feed(decoder, release + [((e.EV_KEY, e.KEY_ENTER, 1), 0.2), ((e.EV_KEY, e.KEY_ENTER, 0), 0.0)])
    typed = type_text(code, start=1_800_000_000.0)
    results = [decoder.feed(ev) for ev in typed]
    scans = [r for r in results if isinstance(r, Scan)]
    assert [s.text for s in scans] == [code]


@settings(max_examples=examples(200), deadline=None)
@given(st.floats(1_700_000_000.0, 1_900_000_000.0), codes_strategy)
def test_composed_sessions_never_go_back_in_time(start, codes):
    """A key at x.9999999 s is stamped in the next second, never at the start of its own."""
    events, _ = _session(codes, start)
    stamps = [ev.timestamp() for ev in events]
    assert stamps == sorted(stamps)


@settings(max_examples=examples(300), deadline=None)
@given(codes_strategy, st.floats(0, 1), st.floats(0.06, 0.95), st.booleans())
@example(["00000000", "00000000", "0000000000000"], 0.0, 0.6679913735500916, False)  # two scans start together
@example(["96385074"], 0.1, 0.15, True)  # inside the first character: Alt 02 ... 33 once booked "!96385074"
def test_a_scan_that_stalls_mid_way_books_neither_head_nor_tail(codes, where, stall, alt_mode):
    """The scanner (or the reader) stops mid-scan for up to most of a second, the idle timer firing
    all through the pause as it does in the agent: no part of that scan is booked. Also inside a
    character typed in several keys (Alt mode)."""
    events, spans = _session(codes, 1_800_000_000.0, alt_mode=alt_mode)
    cut = max(1, int(where * len(events)))
    before, after = events[:cut], [InputEvent(*_shifted(ev, stall)) for ev in events[cut:]]
    decoder = Decoder("dev")
    results = [decoder.feed(ev) for ev in before]
    t = before[-1].timestamp()
    resume = after[0].timestamp() if after else t + 2.0
    while t + decoder.idle_after < resume:
        t += decoder.idle_after
        results.append(decoder.idle(t))
    results += [decoder.feed(ev) for ev in after]
    results.append(decoder.idle((after or before)[-1].timestamp() + 2.0))
    for scan in [r for r in results if isinstance(r, Scan)]:
        # The codes typed from the moment this scan started (as typed, or shifted by the stall): a
        # tail starts mid-code, when none starts. Two can start then, a shifted one on an unshifted one.
        whole = [code for code, first, _, _ in spans if abs(scan.started - first) < 1e-5 or
                 abs(scan.started - first - stall) < 1e-5]
        assert scan.text in whole, f"{scan.text!r} booked from a scan that stalled"


def _shifted(event, seconds: float) -> tuple:
    sec, usec = divmod(int(round((event.timestamp() + seconds) * 1_000_000)), 1_000_000)
    return sec, usec, event.type, event.code, event.value
