"""Whatever the kernel hands the decoder, it neither crashes nor lets a bad code through as a sale."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from evdev import InputEvent, ecodes as e
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.counter import Counter
from drivers.barcode import Symbology, classify, gs1_check_digit
from drivers.decoder import Decoder, DecoderSettings, NotABarcode, Scan
from drivers.recording import type_text
from storage import Journal

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


@settings(max_examples=300, deadline=None)
@given(streams, layouts)
def test_random_streams_never_crash_and_yield_only_clean_text(stream, layout):
    for result in _feed(Decoder("dev", DecoderSettings(layout=layout)), stream):
        assert isinstance(result, (Scan, NotABarcode))
        if isinstance(result, Scan):
            assert result.text
            assert not set(result.text) & set("\r\n\t")
            assert all(c.isprintable() or c == "\x1d" for c in result.text)
            assert result.slowest_key <= 0.05


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_no_sale_from_random_streams_fails_its_check_digit(stream):
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.open(Path(tmp) / "j.db", os.urandom(32))
        counter = Counter()
        for result in _feed(Decoder("dev"), stream):
            if isinstance(result, Scan):
                counter.record(journal, result)
        for recorded in journal.read_after(0, limit=10_000):
            barcode = classify(recorded.body["code"])
            if recorded.kind == "sale" and barcode.symbology is not Symbology.RAW:
                assert gs1_check_digit(barcode.data[:-1]) == int(barcode.data[-1])
            if recorded.kind == "misread":
                assert not barcode.valid
        journal.close()


@settings(max_examples=200, deadline=None)
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
