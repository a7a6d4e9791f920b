"""Each way scanners and decoders fail in the field, fed as the kernel's own event bytes."""

from __future__ import annotations

import asyncio
import time

import pytest
from evdev import InputEvent, ecodes as e

from drivers.decoder import (ALT_CODE, CHARACTER_CUT, CLOCK_BACK, CLOCK_SLACK, CUT_OFF, CUT_OFF_QUIET, CUT_OFF_TAIL, DEAD_KEY, DROPPED,
                             KEY_DOWN_ONLY, NOTHING_BUT_AFFIXES, ONE_KEY, RESYNCED,
                             STARTED_UNSEEN, TAKEN_BACK, TYPED_NOTHING, Decoder,
                             DecoderSettings, NotABarcode, Scan)
from drivers.barcode import MAX_LENGTH, TOO_LONG
from drivers.input_event import pack_all, record
from drivers.keymap import UsTable, XkbKeymap, load_keymap
from drivers.reader import read_events
from drivers.recording import press, type_text

T0 = 1_764_000_000.0


class Keys:
    """Builds a stream of key events at scanner speed (4 ms per key) unless told otherwise."""

    def __init__(self, interval: float = 0.004):
        self.t = T0
        self.interval = interval
        self.events: list[InputEvent] = []

    def down(self, code: int) -> "Keys":
        self.events += press(code, self.t, down=True)
        self.t += self.interval / 2
        return self

    def up(self, code: int) -> "Keys":
        self.events += press(code, self.t, down=False)
        self.t += self.interval / 2
        return self

    def tap(self, *codes: int, shift: bool = False) -> "Keys":
        for code in codes:
            if shift:
                self.down(e.KEY_LEFTSHIFT)
            self.down(code).up(code)
            if shift:
                self.up(e.KEY_LEFTSHIFT)
        return self

    def digits(self, text: str, *, keypad: bool = False) -> "Keys":
        return self.tap(*[getattr(e, f"KEY_{'KP' if keypad else ''}{d}") for d in text])

    def enter(self) -> "Keys":
        return self.tap(e.KEY_ENTER)

    def raw(self, type_: int, code: int, value: int) -> "Keys":
        sec = int(self.t)
        self.events.append(InputEvent(sec, int((self.t - sec) * 1e6), type_, code, value))
        return self

    def pause(self, seconds: float) -> "Keys":
        self.t += seconds
        return self

    def bytes(self) -> bytes:
        return pack_all(self.events)


def decode(data: bytes, tmp_path, settings: DecoderSettings = DecoderSettings(), **kwargs) -> list:
    """Results of the agent's reader and decoder on ``data``, written as a recording file."""
    path = tmp_path / "scanner.events"
    path.write_bytes(data)

    async def run():
        decoder = Decoder(str(path), settings, **kwargs)
        results = []
        async for event in read_events(str(path)):
            result = decoder.feed(event)
            if decoder.resync_pending:
                decoder.resync(frozenset())
            if result is not None:
                results.append(result)
        return results

    return asyncio.run(run())


def texts(results) -> list[str]:
    return [r.text for r in results if isinstance(r, Scan)]


def test_a_repeated_digit_is_kept_when_a_key_up_is_lost(tmp_path):
    """'02422288' read as '024228' by decoders that wait for a key-up between equal keys."""
    keys = Keys().digits("0242")
    keys.down(e.KEY_2).down(e.KEY_2).up(e.KEY_2)  # the key-up of the first 2 never came
    keys.down(e.KEY_8).down(e.KEY_8).up(e.KEY_8).enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["02422288"]


@pytest.mark.parametrize(
    "ending",
    [
        lambda k: k.tap(e.KEY_ENTER).tap(e.KEY_ENTER),  # CR LF sent as two Enters
        lambda k: k.tap(e.KEY_ENTER).down(e.KEY_LEFTCTRL).tap(e.KEY_J).up(e.KEY_LEFTCTRL),  # CR, then Ctrl+J (LF)
        lambda k: k.down(e.KEY_LEFTCTRL).tap(e.KEY_M).tap(e.KEY_J).up(e.KEY_LEFTCTRL),  # Ctrl+M Ctrl+J
    ],
    ids=["enter-enter", "enter-ctrl-j", "ctrl-m-ctrl-j"],
)
def test_a_cr_lf_suffix_books_the_scan_once(tmp_path, ending):
    keys = Keys().digits("6901028075831")
    ending(keys)
    keys.digits("96385074").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["6901028075831", "96385074"]


def test_a_scanner_that_sends_only_key_downs_still_works(tmp_path):
    keys = Keys()
    for code in [e.KEY_6, e.KEY_9, e.KEY_0, e.KEY_1, e.KEY_0, e.KEY_2, e.KEY_8, e.KEY_0, e.KEY_7, e.KEY_5, e.KEY_8,
                 e.KEY_3, e.KEY_1, e.KEY_ENTER]:
        keys.down(code)
    # Shifted characters too: Shift is pressed (never released) before each one that needs it.
    for code, shift in [(e.KEY_A, True), (e.KEY_B, False), (e.KEY_4, True), (e.KEY_4, False), (e.KEY_ENTER, False)]:
        if shift:
            keys.down(e.KEY_LEFTSHIFT)
        keys.down(code)
    assert texts(decode(keys.bytes(), tmp_path)) == ["6901028075831", "Ab$4"]


@pytest.mark.parametrize("strokes, later, first_whole", [
    ([(e.KEY_A, True), (e.KEY_1, False), (e.KEY_B, True), (e.KEY_2, False)], "A1B2", False),  # Shift pressed again
    ([(e.KEY_A, True), (e.KEY_1, False)], "A1", False),  # no key-up by its terminator
    # Learned at its second Shift, before any character took the first one's: read right from the start.
    ([(e.KEY_C, True), (e.KEY_B, True), (e.KEY_SEMICOLON, True), (e.KEY_Q, True), (e.KEY_T, True), (e.KEY_Y, True),
      (e.KEY_3, False)], "CB:QTY3", True),
], ids=["shift-again", "no-key-up-by-the-end", "a-control"])
def test_a_scanner_learned_to_send_only_key_downs_in_a_scan_with_shift_refuses_that_scan(tmp_path, strokes, later,
                                                                                          first_whole):
    """Until the decoder knows a scanner sends no key-ups, a Shift pressed for one character is held for those
    after it: its first scan once read A!B@ for A1B2 (a sale of no product), or CB:QTY# for CB:QTY3. A scan in
    which that is learned is refused if a character in it came with a Shift pressed for an earlier one; the
    scans after it are read right."""
    keys = Keys()
    for _ in range(2):
        for code, shift in strokes + [(e.KEY_ENTER, False)]:
            if shift:
                keys.down(e.KEY_LEFTSHIFT)
            keys.down(code)
        keys.pause(0.5)
    results = decode(keys.bytes(), tmp_path)
    if first_whole:
        assert texts(results) == [later, later]
    else:
        assert [(type(r).__name__, getattr(r, "reason", "")) for r in results][0] == ("NotABarcode", KEY_DOWN_ONLY)
        assert texts(results) == [later]


def test_a_shift_the_device_reported_down_after_a_drop_pressed_later_in_the_read_teaches_nothing():
    """After a drop the device says Shift is down; its key-down, still ahead in the same read, is that press,
    not a second one. Once it taught "no key-ups", and every later scan with a held Shift was misread
    (CB:CARTON as Cb;carton, booked as an unknown product)."""
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).down(e.KEY_LEFTSHIFT).down(e.KEY_A)
    decoder.feed_all(_records(keys), held_keys=lambda: frozenset({e.KEY_LEFTSHIFT, e.KEY_A}))
    assert not decoder.key_down_only
    keys = Keys()
    keys.t = T0 + 1.0
    keys.up(e.KEY_A).up(e.KEY_LEFTSHIFT).enter().pause(1.0).down(e.KEY_LEFTSHIFT)
    for code in (e.KEY_C, e.KEY_B, e.KEY_SEMICOLON, e.KEY_C, e.KEY_A, e.KEY_R, e.KEY_T, e.KEY_O, e.KEY_N):
        keys.down(code).up(code)
    keys.up(e.KEY_LEFTSHIFT).enter()
    assert texts(decoder.feed_all(_records(keys))) == ["CB:CARTON"]


def test_keypad_digits_and_shifted_symbols_are_mapped(tmp_path):
    keys = Keys().digits("690102807583", keypad=True).tap(e.KEY_KP1).tap(e.KEY_KPENTER)
    keys.tap(e.KEY_4, shift=True).tap(e.KEY_5).tap(e.KEY_MINUS, shift=True).tap(e.KEY_A, shift=True).enter()
    keys.down(e.KEY_RIGHTSHIFT).tap(e.KEY_1, e.KEY_2).up(e.KEY_RIGHTSHIFT).enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["6901028075831", "$5_A", "!@"]


def test_the_first_character_is_kept_even_when_shifted(tmp_path):
    keys = Keys().tap(e.KEY_T, shift=True).digits("123").enter()
    keys.tap(e.KEY_6).digits("901028075831").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["T123", "6901028075831"]


def test_a_french_layout_scanner_types_digits_with_shift(tmp_path):
    """On AZERTY the digit row types '&é"...' unshifted: the US table reads '2' where the scanner meant 'é'."""
    keys = Keys()
    for digit in "6901028075831":
        keys.tap(getattr(e, f"KEY_{digit}"), shift=True)
    keys.enter()
    keys.tap(e.KEY_2).enter()  # the same key unshifted is 'é' on AZERTY: not a digit
    assert texts(decode(keys.bytes(), tmp_path, DecoderSettings(layout="fr"))) == ["6901028075831", "é"]
    assert texts(decode(keys.bytes(), tmp_path, DecoderSettings(layout="us")))[0] == "^()!)@*)&%*#!"


def test_a_german_layout_scanner_swaps_y_and_z(tmp_path):
    keys = Keys().tap(e.KEY_Y).tap(e.KEY_Z).tap(e.KEY_MINUS).tap(e.KEY_2, shift=True).enter()
    assert texts(decode(keys.bytes(), tmp_path, DecoderSettings(layout="de"))) == ['zyß"']


def _typed(layout: str, *strokes: tuple[int, bool], terminators: tuple[str, ...] = ("enter",)) -> list:
    """What the decoder makes of ``strokes`` (key, shift) at scanner speed, then Enter, in ``layout``."""
    keys = Keys()
    for code, shift in strokes:
        keys.tap(code, shift=shift)
    if terminators:
        keys.enter()
    else:
        keys.pause(1.0)
    decoder = Decoder("dev", DecoderSettings(layout=layout, terminators=terminators))
    results = decoder.feed_all(_records(keys))
    if not terminators:
        results.append(decoder.idle(keys.t))
    return [(type(r).__name__, r.text, getattr(r, "reason", "")) for r in results if r is not None]


@pytest.mark.parametrize("layout, strokes, code", [
    # German: ^ is a dead key (left of 1), ` the dead acute key shifted; each typed alone with Space.
    ("de", [(e.KEY_A, True), (e.KEY_B, True), (e.KEY_GRAVE, False), (e.KEY_SPACE, False), (e.KEY_1, False)], "AB^1"),
    ("de", [(e.KEY_1, False), (e.KEY_EQUAL, True), (e.KEY_SPACE, False), (e.KEY_2, False)], "1`2"),
    ("de", [(e.KEY_1, False), (e.KEY_GRAVE, False), (e.KEY_GRAVE, False), (e.KEY_2, False)], "1^2"),
    # French: ^ is the dead key right of P; with a letter it makes the letter with the accent.
    ("fr", [(e.KEY_1, True), (e.KEY_LEFTBRACE, False), (e.KEY_SPACE, False), (e.KEY_2, True)], "1^2"),
    ("fr", [(e.KEY_Q, True), (e.KEY_LEFTBRACE, False), (e.KEY_E, False), (e.KEY_1, True)], "A\u00ea1"),
], ids=["de-circumflex", "de-grave", "de-circumflex-twice", "fr-circumflex", "fr-e-circumflex"])
def test_a_dead_key_and_the_key_after_it_type_one_character_as_the_layout_composes_them(layout, strokes, code):
    """German and French scanners type ^ and ` as a dead key and Space: the character is the pair's,
    never dropped (which booked "AB 1" for "AB^1")."""
    assert _typed(layout, *strokes) == [("Scan", code, "")]


@pytest.mark.parametrize("strokes, terminators", [
    ([(e.KEY_1, True), (e.KEY_LEFTBRACE, False), (e.KEY_2, True), (e.KEY_3, True)], ("enter",)),  # ^ and a digit
    ([(e.KEY_1, True), (e.KEY_2, True), (e.KEY_LEFTBRACE, False)], ("enter",)),  # ^, then the end
    ([(e.KEY_1, True), (e.KEY_LEFTBRACE, False), (e.KEY_LEFTBRACE, True), (e.KEY_2, True)], ("enter",)),  # ^ then ¨
    ([(e.KEY_1, True), (e.KEY_2, True), (e.KEY_LEFTBRACE, False)], ()),  # ^ last, a pause ends the scan
], ids=["with-a-digit", "before-enter", "two-dead-keys", "before-a-pause"])
def test_a_dead_key_that_makes_nothing_with_the_key_after_it_refuses_the_scan(strokes, terminators):
    """Where the pair makes no character (X drops both), the scan is refused: a character was lost."""
    [(kind, _, reason)] = _typed("fr", *strokes, terminators=terminators)
    assert (kind, reason) == ("NotABarcode", DEAD_KEY)


def test_a_dead_key_s_character_comes_with_a_key_exactly_max_key_interval_after_it():
    """A key exactly ``max_key_interval`` after the dead key is still the scanner's: "aêa", never "aea"
    (times in sixteenths of a second)."""
    settings = DecoderSettings(layout="fr", max_key_interval=0.0625, idle_timeout=0.125)
    keys = Keys(interval=0.0625).tap(e.KEY_Q, e.KEY_LEFTBRACE, e.KEY_E, e.KEY_Q).enter()  # AZERTY: Q types "a"
    assert texts(Decoder("dev", settings).feed_all(_records(keys))) == ["aêa"]


def _alt_code(keys: Keys, digits: str, alt: int = e.KEY_LEFTALT) -> Keys:
    keys.down(alt)
    keys.digits(digits, keypad=True)
    return keys.up(alt)


@pytest.mark.parametrize("layout", ["us", "de"])
def test_a_character_a_scanner_types_as_alt_and_its_number_on_the_keypad_is_that_character(layout):
    """A scanner's "Alt mode" types what a layout cannot (GS1's group separator) as Alt + its decimal
    code on the keypad: Windows' rule, the character at Alt's release. Never the digits (which
    booked "0109501101530003002910123")."""
    keys = Keys().digits("0109501101530003")
    _alt_code(keys, "0029")
    _alt_code(keys.digits("10"), "65", alt=e.KEY_LEFTALT if layout == "de" else e.KEY_RIGHTALT)  # 437's A (no 0)
    _alt_code(keys.digits("12"), "0216")  # Windows-1252's Ø
    keys.digits("3").enter()
    decoder = Decoder("dev", DecoderSettings(layout=layout))
    assert _said(decoder.feed_all(_records(keys))) == [("Scan", "0109501101530003\x1d10A12\u00d83", "", "dev")]


def test_on_a_layout_whose_right_alt_is_altgr_an_alt_code_is_typed_with_the_left_alt_alone():
    """German AltGr (the right Alt) with the keypad's digits types the digits, as it does on Windows."""
    keys = Keys().digits("12")
    _alt_code(keys, "0029", alt=e.KEY_RIGHTALT)
    keys.digits("3").enter()
    assert _said(Decoder("dev", DecoderSettings(layout="de")).feed_all(_records(keys))) == [
        ("Scan", "1200293", "", "dev")]
    assert load_keymap("de").altgr and load_keymap("us", "intl").altgr and not load_keymap("us").altgr


@pytest.mark.parametrize("digits, end", [("0", "alt"), ("0129", "alt"), ("0029", "enter")],
                         ids=["zero", "undefined-in-1252", "alt-still-down-at-enter"])
def test_an_alt_code_that_makes_no_character_refuses_the_scan(digits, end):
    keys = Keys().digits("0109")
    keys.down(e.KEY_LEFTALT).digits(digits, keypad=True)
    if end == "alt":
        keys.up(e.KEY_LEFTALT).digits("12")
    keys.enter()
    [(kind, _, reason, _)] = _said(Decoder("dev").feed_all(_records(keys)))
    assert (kind, reason) == ("NotABarcode", ALT_CODE)


@pytest.mark.parametrize("digits, char", [("130", "\u00e9"), ("0130", "\u201a"), ("0233", "\u00e9"), ("321", "A")],
                         ids=["437-without-a-leading-0", "1252-with-one", "1252-e-acute", "past-255-wraps"])
def test_an_alt_code_is_code_page_437_s_character_without_a_leading_0_and_windows_1252_s_with_one(digits, char):
    """Windows' rule: Alt+130 is 437's "\u00e9", Alt+0130 is 1252's low quotation mark, and a number past
    255 is taken modulo 256 (Alt+321 is "A")."""
    keys = _alt_code(Keys().digits("12"), digits).digits("3").enter()
    assert _said(Decoder("dev").feed_all(_records(keys))) == [("Scan", f"12{char}3", "", "dev")]


@pytest.mark.parametrize("before", ["a-scan-booked", "a-scan-not-seen-whole", "the-scanner-unplugged"])
def test_an_alt_code_is_its_character_in_a_scan_after_any_end_of_the_one_before(before):
    """Whatever ended the scan before (booked, refused as not seen whole, the device gone), the next
    scan's Alt code starts from nothing and types its character."""
    decoder, keys = Decoder("dev"), Keys()
    if before == "a-scan-not-seen-whole":
        decoder.opened(keys.t)
    keys.digits("96385074").enter()
    first = _said(decoder.feed_all(_records(keys)))
    if before == "the-scanner-unplugged":
        assert decoder.unplugged() is None  # nothing under way: nothing to refuse
    assert first == [("Scan", "96385074", "", "dev") if before != "a-scan-not-seen-whole"
                     else ("NotABarcode", "96385074", STARTED_UNSEEN, "dev")]
    keys = Keys()
    keys.t = T0 + 1.0
    _alt_code(keys.digits("0109501101530003"), "0029").digits("1012").enter()
    assert _said(decoder.feed_all(_records(keys))) == [("Scan", "0109501101530003\x1d1012", "", "dev")]


@pytest.mark.parametrize("layout, keys_that_type_nothing", [
    ("fr", lambda k: k.tap(e.KEY_LEFTBRACE)),  # a dead key, its character still to come
    ("us", lambda k: _alt_code(k, "0")),  # an Alt code that makes no character
], ids=["dead-key", "alt-code"])
def test_keys_that_type_nothing_in_a_scan_not_seen_whole_still_make_it_one_to_refuse(layout, keys_that_type_nothing):
    """A burst under way at the open, of keys that typed no character: a scan went on all the same, and
    the quiet that ends it refuses it out loud, never in silence."""
    decoder, keys = Decoder("dev", DecoderSettings(layout=layout)), Keys()
    decoder.opened(keys.t)
    assert decoder.feed_all(_records(keys_that_type_nothing(keys))) == []
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "", STARTED_UNSEEN, "dev")]


def test_a_dead_key_in_a_scan_not_seen_whole_keeps_it_going_and_its_character_is_in_it():
    """'^' comes 62 ms after the '1' but 30 ms after its dead key: the same burst, refused whole."""
    decoder, keys = Decoder("dev", DecoderSettings(layout="fr")), Keys()
    decoder.opened(keys.t)
    keys.tap(e.KEY_1, shift=True).pause(0.026).tap(e.KEY_LEFTBRACE).pause(0.026).tap(e.KEY_SPACE)
    keys.tap(e.KEY_2, shift=True).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "1^2", STARTED_UNSEEN, "dev")]


def test_a_shift_pressed_again_for_the_key_that_shows_a_scanner_sends_no_key_ups_shifts_that_key():
    """Key-downs only, not yet noticed: Shift, A, Shift, A. The second A, pressed again with no key-up,
    shows the scanner for what it is; the Shift pressed again just before it was for it: "AA", never "Aa"."""
    decoder, keys = Decoder("dev"), Keys()
    for code in (e.KEY_LEFTSHIFT, e.KEY_A, e.KEY_LEFTSHIFT, e.KEY_A, e.KEY_1, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    assert texts(decoder.feed_all(_records(keys))) == ["AA1"] and decoder.key_down_only


def test_a_scanner_without_key_ups_shifts_each_character_it_presses_shift_for(tmp_path):
    """Key-downs only: Shift pressed again (no key-up between) is pressed for the next character all the
    same, so once the device is known to send no key-ups an AIM identifier keeps its case."""
    keys = Keys()
    for code in (e.KEY_1, e.KEY_1, e.KEY_ENTER):  # a repeated key with no key-up: the device is learned
        keys.events += press(code, keys.t, down=True)
        keys.t += 0.004
    keys.pause(1.0)
    for code in (e.KEY_RIGHTBRACE, e.KEY_LEFTSHIFT, e.KEY_C, e.KEY_1, e.KEY_LEFTSHIFT, e.KEY_A, e.KEY_LEFTSHIFT,
                 e.KEY_B, e.KEY_2, e.KEY_3, e.KEY_ENTER):
        keys.events += press(code, keys.t, down=True)
        keys.t += 0.004
    decoder = Decoder("dev")
    results = decoder.feed_all(_records(keys))
    assert decoder.key_down_only
    assert [(r.text, r.aim) for r in results if isinstance(r, Scan)] == [("11", ""), ("AB23", "]C1")]


def test_caps_lock_is_tracked_per_device(tmp_path):
    keys = Keys().tap(e.KEY_CAPSLOCK).tap(e.KEY_A).tap(e.KEY_B, shift=True).tap(e.KEY_1).enter()
    keys.tap(e.KEY_CAPSLOCK).tap(e.KEY_A).enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["Ab1", "a"]


def test_keypad_without_num_lock_types_nothing(tmp_path):
    keys = Keys().digits("123", keypad=True).enter().tap(e.KEY_NUMLOCK).digits("123", keypad=True).enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["123"]  # the first line is arrows and Home on a keypad


def test_the_kernel_dropping_events_refuses_the_whole_scan_up_to_its_terminator(tmp_path):
    keys = Keys().digits("690102")
    keys.raw(e.EV_SYN, e.SYN_DROPPED, 0)
    keys.raw(e.EV_KEY, e.KEY_8, 1).raw(e.EV_KEY, e.KEY_8, 0)  # stale events up to the next SYN_REPORT: ignored
    keys.raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.digits("8075831").enter()  # the tail of the scan the drop cut: never a code of its own
    keys.pause(0.3).digits("96385074").enter()  # the next customer's scan, seen whole
    results = decode(keys.bytes(), tmp_path)
    assert texts(results) == ["96385074"]
    dropped = [r for r in results if isinstance(r, NotABarcode)]
    assert [(d.text, d.reason) for d in dropped] == [("6901028075831", DROPPED)]


def test_after_a_drop_a_pause_ends_the_broken_scan_even_without_its_terminator(tmp_path):
    keys = Keys().digits("690102").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.digits("80758").pause(1.2).digits("96385074").enter()
    results = decode(keys.bytes(), tmp_path)
    assert [(type(r).__name__, r.text) for r in results] == [("NotABarcode", "69010280758"), ("Scan", "96385074")]
    # Within CUT_OFF_QUIET of it, what comes is its tail, as for a scan seen whole that stopped without its
    # terminator: a stall inside a scan cannot be told from a pause after it, and its tail once went as a scan.
    keys = Keys().digits("690102").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.digits("80758").pause(0.3).digits("96385074").enter()
    results = decode(keys.bytes(), tmp_path)
    assert [(type(r).__name__, r.text, r.reason) for r in results] == [
        ("NotABarcode", "69010280758", DROPPED), ("NotABarcode", "96385074", CUT_OFF_TAIL)]


def test_a_scan_under_way_when_the_scanner_is_opened_is_refused():
    """The agent restarted mid-scan: the tail it reads is not a code (the kill tests see this for real)."""
    decoder = Decoder("dev", DecoderSettings())
    decoder.opened(T0 + 0.01)  # the keys below began 10 ms before the open
    keys = Keys().digits("141").enter().pause(0.3).digits("96385074").enter()
    results = [r for r in map(decoder.feed, keys.events) if r is not None]
    assert [(type(r).__name__, r.text) for r in results] == [("NotABarcode", "141"), ("Scan", "96385074")]
    assert results[0].reason == STARTED_UNSEEN


@pytest.mark.parametrize("pause", [0.06, 0.09, 0.3, 0.9])
@pytest.mark.parametrize("cut", ["opened", "dropped"])
def test_a_pause_a_whole_scan_is_refused_for_does_not_end_one_not_seen_whole(cut, pause):
    """A scanner's stall inside a scan seen whole refuses all of it at its terminator (up to idle_after), or its
    head and then its tail (longer); inside one not seen whole it once ended the broken scan, and what followed
    was booked as a scan of its own ("TURN" sold)."""
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys()
    if cut == "opened":
        decoder.opened(T0 - 0.001)
    else:
        keys.tap(e.KEY_C, shift=True).raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.tap(e.KEY_B, shift=True).tap(e.KEY_SEMICOLON, shift=True).tap(e.KEY_R, e.KEY_E, shift=True)
    keys.pause(pause).tap(e.KEY_T, e.KEY_U, e.KEY_R, e.KEY_N, shift=True).enter()
    keys.pause(1.0).digits("96385074").enter()
    results = []
    for event in keys.events:
        result = decoder.feed(event)
        if decoder.resync_pending:
            decoder.resync(frozenset())
        results += [result] if result is not None else []
    head = ("" if cut == "opened" else "C") + "B:RE"
    if pause < DecoderSettings().idle_timeout:
        assert [(type(r).__name__, r.text) for r in results] == [("NotABarcode", head + "TURN"), ("Scan", "96385074")]
    else:
        assert [(type(r).__name__, r.text, getattr(r, "reason", "")) for r in results] == [
            ("NotABarcode", head, STARTED_UNSEEN if cut == "opened" else DROPPED),
            ("NotABarcode", "TURN", CUT_OFF_TAIL), ("Scan", "96385074", "")]


def test_a_scan_under_way_as_the_scanner_is_opened_is_read_with_the_keys_the_device_holds():
    """Opened with Shift down (a scanner that holds it over a run of capitals): what is left of CB:CARTON is
    B:CARTON, which the counter knows for the end of a control; read with no Shift, it was "b;carton", which
    ends none, and the pack scanned next was sold plainly, not as a carton."""
    decoder = Decoder("dev", DecoderSettings())
    decoder.opened(T0 - 0.001, held=frozenset({e.KEY_LEFTSHIFT}))
    keys = Keys()
    for code in (e.KEY_B, e.KEY_SEMICOLON, e.KEY_C, e.KEY_A, e.KEY_R, e.KEY_T, e.KEY_O, e.KEY_N):
        keys.down(code).up(code)
    keys.up(e.KEY_LEFTSHIFT).enter().pause(1.0).digits("96385074").enter()
    results = [r for r in map(decoder.feed, keys.events) if r is not None]
    assert [(type(r).__name__, r.text) for r in results] == [("NotABarcode", "B:CARTON"), ("Scan", "96385074")]


def test_a_scan_begun_after_a_pause_since_the_open_is_whole():
    decoder = Decoder("dev", DecoderSettings())
    decoder.opened(T0 - 0.2)
    results = [r for r in map(decoder.feed, Keys().digits("96385074").enter().events) if r is not None]
    assert texts(results) == ["96385074"]


def test_a_burst_that_stops_without_its_terminator_is_refused_at_idle():
    decoder = Decoder("dev", DecoderSettings())
    for event in Keys().digits("690102807").events:
        assert decoder.feed(event) is None
    assert decoder.pending
    assert decoder.idle(T0 + 0.01) is None  # still within a scanner's pace
    refused = decoder.idle(T0 + 1.0)
    assert (refused.text, refused.reason) == ("690102807", CUT_OFF)
    assert decoder.idle(T0 + 1.5) is None and decoder.pending  # its tail may yet come
    assert decoder.idle(T0 + 2.1) is None and not decoder.pending  # a second of quiet: nothing is held


def test_the_end_of_a_recording_ends_what_it_holds_as_a_long_pause_would_whatever_it_holds():
    """A recording's last event read: what the decoder holds is said as a long pause after that event would say
    it, by the recording's own times, whether or not a key came (and nothing, where nothing was held)."""
    assert Decoder("dev").ended() is None  # an empty recording
    decoder = Decoder("dev")  # nothing but a drop: a scan lost whole, said
    assert decoder.feed_all(_records(Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0))) == []
    decoder.resync(frozenset())
    assert _said([decoder.ended()]) == [("NotABarcode", "", DROPPED, "dev")]
    decoder = Decoder("dev")
    assert decoder.feed_all(_records(Keys().digits("690102"))) == []
    assert _said([decoder.ended()]) == [("NotABarcode", "690102", CUT_OFF, "dev")]
    decoder = Decoder("dev", DecoderSettings(terminators=()))
    assert decoder.feed_all(_records(Keys().digits("96385074"))) == []
    assert _said([decoder.ended()]) == [("Scan", "96385074", "", "dev")]
    decoder = Decoder("dev")  # a live source read to its end: the burst under way at the open, cut
    decoder.opened(T0)
    assert decoder.feed_all(_records(Keys().digits("141"))) == []
    assert _said([decoder.ended()]) == [("NotABarcode", "141", STARTED_UNSEEN, "dev")]


@pytest.mark.parametrize("stall", [0.15, 0.6])
def test_the_tail_of_a_scan_that_stalled_is_refused_never_a_code(stall):
    """A scanner (or the reader) stalls mid-scan past the idle timeout: head and tail are both refused."""
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().digits("6901028")
    results = [decoder.feed(event) for event in keys.events]
    results.append(decoder.idle(keys.t + 0.12))
    fed = len(keys.events)
    keys.pause(stall).digits("075831").enter().pause(0.3).digits("96385074").enter()
    results += [decoder.feed(event) for event in keys.events[fed:]]
    assert [(type(r).__name__, r.text, r.reason if isinstance(r, NotABarcode) else "")
            for r in results if r is not None] == [
        ("NotABarcode", "6901028", CUT_OFF), ("NotABarcode", "075831", CUT_OFF_TAIL), ("Scan", "96385074", "")]


def test_a_key_exactly_cut_off_quiet_after_a_scan_was_cut_is_its_tail_read_late_as_on_time():
    """Quiet of exactly CUT_OFF_QUIET after the cut is not yet the quiet that ends its tail: ``idle`` says so at
    that moment, and a key read then (late, or from a recording, with no ``idle`` between) is the tail's too."""
    keys = Keys().digits("9638")
    cut_at = T0 + 1.0
    on_time, late = Decoder("dev"), Decoder("dev")
    for decoder in (on_time, late):
        assert decoder.feed_all(_records(keys)) == []
        assert _said([decoder.idle(cut_at)]) == [("NotABarcode", "9638", CUT_OFF, "dev")]
    assert on_time.idle(cut_at + CUT_OFF_QUIET) is None and on_time.pending
    tail = Keys()
    tail.t = cut_at + CUT_OFF_QUIET
    tail.digits("5074").enter()
    assert _said(on_time.feed_all(_records(tail))) == _said(late.feed_all(_records(tail))) == [
        ("NotABarcode", "5074", CUT_OFF_TAIL, "dev")]


def test_a_drop_that_lost_a_whole_scan_is_said_even_though_nothing_of_it_was_seen():
    """The kernel's buffer overflowed while a scan was typed and every event of it is gone: no key comes
    after the drop, only quiet. Something was scanned and lost (a digit of a keyed number, maybe): said."""
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset())
    assert decoder.pending
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "", DROPPED, "dev")]
    assert not decoder.pending
    fed = len(keys.events)
    results = decoder.feed_all(_records(keys.pause(2.0).digits("96385074").enter())[fed:])
    assert texts(results) == ["96385074"]  # what follows the quiet is seen whole


def test_after_syn_dropped_the_shift_state_comes_from_the_device():
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().down(e.KEY_LEFTSHIFT).raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    for event in keys.events:
        decoder.feed(event)
    assert decoder.resync_pending
    decoder.resync(frozenset())  # EVIOCGKEY says: nothing is held now (the Shift key-up was among the dropped)
    later = Keys().enter().pause(0.3)  # the end of the scan the drop broke, then a pause
    results = [decoder.feed(ev) for ev in later.tap(e.KEY_A).enter().events]
    assert texts([r for r in results if r]) == ["a"]

    decoder.resync(frozenset({e.KEY_RIGHTSHIFT}))  # the device says Shift is down
    again = Keys()
    again.t = later.t + 0.3
    results = [decoder.feed(ev) for ev in again.tap(e.KEY_A).enter().events]
    assert texts([r for r in results if r]) == ["A"]


@pytest.mark.parametrize("held, typed", [(frozenset(), ("Scan", "1")),
                                         (frozenset({e.KEY_LEFTSHIFT}), ("NotABarcode", "!"))])
def test_a_read_that_holds_a_drop_takes_the_key_state_from_the_device_and_refuses_a_scan_it_could_change(held, typed):
    """The scanner manager hands over a whole read at once: the decoder asks the device which keys
    are down as the drop ends, and decodes the rest of the read with that state. The device answers for
    the read's end: a Shift it says is down may have been held through the drop (a "!") or pressed after
    the read, for the next scan's capital (a "1"); a scan of the read that a held key could change is refused."""
    # Shift's key-up, as far as the decoder saw; then a drop (the Enter after it ends the broken scan).
    keys = (Keys().down(e.KEY_LEFTSHIFT).up(e.KEY_LEFTSHIFT).raw(e.EV_SYN, e.SYN_DROPPED, 0)
            .raw(e.EV_SYN, e.SYN_REPORT, 0).enter().pause(0.3).tap(e.KEY_1).enter())
    asked = []
    results = Decoder("dev").feed_all([record(ev) for ev in keys.events],
                                      held_keys=lambda: asked.append(True) or held)
    assert asked == [True]
    assert [(type(r).__name__, r.text) for r in results] == [("NotABarcode", ""), typed]
    if held:
        assert results[1].reason == RESYNCED


def test_a_whole_scan_after_a_drop_in_one_read_is_booked_when_the_device_says_only_a_digit_is_down():
    """The next scan under way as the read ends: a digit held changes no other key's character, so the whole
    scan between the drop and the read's end stands (refused, every drop mid-scan cost a good scan too)."""
    keys = (Keys().digits("690").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
            .digits("75831").enter().pause(0.3).digits("6901028075831").enter().pause(0.3)
            .digits("400").down(e.KEY_6))
    results = Decoder("dev").feed_all([record(ev) for ev in keys.events], held_keys=lambda: frozenset({e.KEY_6}))
    assert [(type(r).__name__, r.text) for r in results][:2] == [("NotABarcode", "69075831"), ("Scan", "6901028075831")]


def test_a_whole_scan_after_a_drop_in_one_read_is_never_shifted_by_a_key_pressed_after_the_read():
    """The device, asked after the read, says Shift is down: pressed for the next scan's capital, beyond this
    read. The whole scan after the broken one, read with it, would be ^()!)@*)&%*#! and a sale."""
    keys = (Keys().digits("690").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
            .digits("75831").enter().pause(0.3).digits("6901028075831").enter())
    results = Decoder("dev").feed_all([record(ev) for ev in keys.events], held_keys=lambda: frozenset({e.KEY_LEFTSHIFT}))
    assert [type(r).__name__ for r in results] == ["NotABarcode", "NotABarcode"]
    assert results[1].reason == RESYNCED


def test_a_person_typing_is_not_a_barcode(tmp_path):
    keys = Keys(interval=0.180).digits("6901028075831").enter()
    results = decode(keys.bytes(), tmp_path)
    assert texts(results) == []
    assert len(results) == 1 and results[0].text == "6901028075831"
    assert "typed, not scanned: 180 ms per key" in results[0].reason


def test_a_burst_broken_by_a_long_pause_is_not_a_barcode(tmp_path):
    keys = Keys().digits("690102").pause(0.4).digits("8075831").enter()
    keys.digits("96385074").enter()
    results = decode(keys.bytes(), tmp_path)
    assert texts(results) == ["96385074"]
    assert "a pause of 404 ms" in results[0].reason  # 400 ms plus one key interval


def test_a_slow_bluetooth_scanner_passes_with_its_own_threshold(tmp_path):
    keys = Keys(interval=0.030).digits("96385074").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["96385074"]
    slow = Keys(interval=0.070).digits("96385074").enter()
    assert texts(decode(slow.bytes(), tmp_path)) == []
    assert texts(decode(slow.bytes(), tmp_path, DecoderSettings(max_key_interval=0.1))) == ["96385074"]


def test_prefix_and_suffix_are_stripped_where_they_are_and_a_scan_without_them_is_kept_whole(tmp_path):
    keys = Keys().tap(e.KEY_RIGHTBRACE).tap(e.KEY_E).digits("06901028075831").tap(e.KEY_X, shift=True).enter()
    keys.pause(0.5).digits("96385074").enter()
    settings = DecoderSettings(prefix="]e0", suffix="X")
    assert texts(decode(keys.bytes(), tmp_path, settings)) == ["6901028075831", "96385074"]


def test_gs1_element_strings_keep_the_group_separator(tmp_path):
    keys = Keys().digits("0106901028075831").down(e.KEY_LEFTCTRL).tap(e.KEY_RIGHTBRACE).up(e.KEY_LEFTCTRL)
    keys.digits("10").tap(e.KEY_A, shift=True).tap(e.KEY_B, shift=True).digits("12").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["0106901028075831\x1d10AB12"]


def test_tab_as_the_only_terminator(tmp_path):
    keys = Keys().digits("96385074").tap(e.KEY_TAB).digits("40063812").enter().digits("1").tap(e.KEY_TAB)
    assert texts(decode(keys.bytes(), tmp_path, DecoderSettings(terminators=("tab",)))) == ["96385074", "400638121"]


def test_no_terminator_and_an_idle_pause():
    decoder = Decoder("dev", DecoderSettings(terminators=()))
    for event in Keys().digits("96385074").events:
        assert decoder.feed(event) is None
    scan = decoder.idle(T0 + 1.0)
    assert isinstance(scan, Scan) and scan.text == "96385074"
    assert decoder.idle(T0 + 1.0) is None


def test_autorepeat_adds_nothing(tmp_path):
    keys = Keys().down(e.KEY_4).raw(e.EV_KEY, e.KEY_4, 2).raw(e.EV_KEY, e.KEY_4, 2).up(e.KEY_4).digits("2").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["42"]


def test_the_built_in_us_layout_decodes_what_libxkbcommon_decodes(tmp_path):
    keys = Keys().digits("690102807583").tap(e.KEY_KP1).tap(e.KEY_4, shift=True).tap(e.KEY_CAPSLOCK).tap(e.KEY_Q)
    keys.down(e.KEY_LEFTCTRL).tap(e.KEY_RIGHTBRACE).up(e.KEY_LEFTCTRL).enter()
    data = keys.bytes()
    assert texts(decode(data, tmp_path, keymap=UsTable())) == texts(decode(data, tmp_path, keymap=XkbKeymap("us"))) \
        == ["6901028075831$Q\x1d"]


def test_a_real_session_of_type_text_round_trips(tmp_path):
    data = pack_all(type_text("Ab$9-x", start=time.time()) + type_text("6901028075831", start=time.time() + 1,
                                                                       keypad_digits=True))
    assert texts(decode(data, tmp_path)) == ["Ab$9-x", "6901028075831"]


def test_a_modifier_pressed_twice_is_released_by_one_key_up(tmp_path):
    """Found by hypothesis: Ctrl down, Ctrl down, Ctrl up left Ctrl held, and '7' became a control character."""
    keys = Keys().down(e.KEY_LEFTCTRL).down(e.KEY_LEFTCTRL).up(e.KEY_LEFTCTRL).enter()
    keys.digits("0000000000017").enter()
    assert texts(decode(keys.bytes(), tmp_path)) == ["0000000000017"]


def test_unplugging_mid_scan_hands_back_all_of_it_and_the_device_starts_clean():
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().digits("6901").raw(e.EV_SYN, e.SYN_DROPPED, 0).digits("028")  # dropped, still mid-scan
    for event in keys.events:
        decoder.feed(event)
    # "0" came before the kernel's next SYN_REPORT and was ignored with the drop; the rest was kept.
    assert decoder.unplugged() == "690128"
    assert not decoder.pending and not decoder.resync_pending
    again = Keys()
    again.t = keys.t + 1.0
    results = [r for r in map(decoder.feed, again.digits("96385074").enter().events) if r is not None]
    assert texts(results) == ["96385074"]  # plugged back in: nothing of before, and no events ignored


def test_unplugging_inside_a_broken_scan_hands_back_what_it_typed():
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys().digits("69").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("0102")
    for event in keys.events:
        decoder.feed(event)
    assert decoder.unplugged() == "690102"
    assert not decoder.pending


def test_a_burst_under_way_at_the_open_that_just_stops_is_refused_at_idle():
    decoder = Decoder("dev", DecoderSettings())
    decoder.opened(T0 + 0.01)
    for event in Keys().digits("141").events:  # the tail of a scan begun before the open, then nothing
        assert decoder.feed(event) is None
    assert decoder.idle(T0 + 0.03) is None  # still within a scanner's pace of its last key
    refused = decoder.idle(T0 + 0.2)
    assert (refused.text, refused.reason) == ("141", STARTED_UNSEEN)
    assert decoder.pending  # what comes within CUT_OFF_QUIET is its tail
    assert decoder.idle(T0 + 1.3) is None and not decoder.pending


def test_a_key_down_only_scanner_s_shift_applies_to_one_character():
    """It sends no key-ups: once that is noticed, a Shift pressed before one character is not held for the next."""
    decoder = Decoder("dev", DecoderSettings())
    keys = Keys()
    for code in (e.KEY_LEFTSHIFT, e.KEY_A, e.KEY_A, e.KEY_B, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    results = [r for r in map(decoder.feed, keys.events) if r is not None]
    assert texts(results) == ["Aab"] and decoder.key_down_only


@pytest.mark.parametrize("before", ["a-scan-under-way-at-the-open", "a-quantity-of-one-digit"])
def test_a_scanner_that_sends_no_key_ups_learned_in_the_scan_after_another_has_that_scan_booked(before):
    """Key-downs only, learned at the second scan's Enter (pressed again, never released): the scan before it,
    refused as begun before the open or booked as a quantity "2", held no Shift for any character of this one,
    so this one is read right and booked."""
    decoder, keys = Decoder("dev"), Keys()
    if before == "a-scan-under-way-at-the-open":
        decoder.opened(keys.t)
    for code in ((e.KEY_1, e.KEY_2) if before == "a-scan-under-way-at-the-open" else (e.KEY_2,)) + (e.KEY_ENTER,):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    keys.pause(1.0)
    for code in (e.KEY_9, e.KEY_6, e.KEY_3, e.KEY_8, e.KEY_5, e.KEY_0, e.KEY_7, e.KEY_4, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    said = _said(decoder.feed_all(_records(keys)))
    assert said == [("NotABarcode", "12", STARTED_UNSEEN, "dev") if before == "a-scan-under-way-at-the-open"
                    else ("Scan", "2", "", "dev"), ("Scan", "96385074", "", "dev")]
    assert decoder.key_down_only


@pytest.mark.parametrize("lock, typed", [(e.KEY_CAPSLOCK, (e.KEY_A, e.KEY_B, e.KEY_CAPSLOCK, e.KEY_C, e.KEY_D)),
                                         (e.KEY_NUMLOCK, (e.KEY_KP1, e.KEY_KP2, e.KEY_NUMLOCK, e.KEY_KP3, e.KEY_KP4))],
                         ids=["caps-lock", "num-lock"])
def test_a_key_down_only_scanner_s_lock_keys_decode_the_same_with_the_built_in_us_layout_and_libxkbcommon(lock, typed):
    """A lock locks when pressed and unlocks only when released, in both keymaps; the decoder releases a
    key-down-only scanner's modifiers after the character that follows them."""
    keys = Keys()
    for code in (e.KEY_1, e.KEY_1, lock, *typed, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    decoded = []
    for keymap in (UsTable(), XkbKeymap("us")):
        decoder = Decoder("dev", DecoderSettings(numlock=False), keymap=keymap)
        decoded.append(_said([r for r in map(decoder.feed, keys.events) if r is not None]))
    # With Num Lock unlocked again, the last keypad digit types nothing: a digit lost, so no code.
    assert decoded[0] == decoded[1] == [{e.KEY_CAPSLOCK: ("Scan", "11ABCd", "", "dev"),
                                         e.KEY_NUMLOCK: ("NotABarcode", "11123", TYPED_NOTHING, "dev")}[lock]]


def _records(keys: Keys) -> list[tuple[int, int, int, int, int]]:
    return [record(ev) for ev in keys.events]


def _said(results) -> list[tuple[str, str, str, str]]:
    return [(type(r).__name__, r.text, getattr(r, "reason", ""), r.source) for r in results]


def test_quiet_after_a_drop_ends_the_broken_scan_counted_from_the_drop():
    for opened in (False, True):  # a scan seen from its start, and one already broken when opened
        decoder, keys = Decoder("dev"), Keys()
        keys.t = T0 + 0.5  # the drop's half second is in its usec
        if opened:
            decoder.opened(keys.t)
            keys.pause(0.04)
        keys.digits("6901")
        dropped_at = keys.t
        keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
        assert decoder.feed_all(_records(keys)) == []
        assert decoder.idle(dropped_at + 0.03) is None  # the next key, if it comes now, is still part of it
        assert _said([decoder.idle(dropped_at + 0.06)]) == [("NotABarcode", "6901", DROPPED, "dev")]


def test_what_a_scanner_types_within_a_second_of_the_quiet_that_ended_a_scan_a_drop_broke_is_its_tail():
    """The drop took the middle of "6901028075831" and the scanner stalled after it: the quiet refuses "6901", and
    what it types on within CUT_OFF_QUIET is the rest of that scan, refused too, never a code ("028075831" sold)."""
    decoder, keys = Decoder("dev"), Keys().digits("6901")
    dropped_at = keys.t
    keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset())
    assert _said([decoder.idle(dropped_at + 0.1)]) == [("NotABarcode", "6901", DROPPED, "dev")]
    fed = len(keys.events)
    keys.pause(0.15).digits("028075831").enter()
    assert _said(decoder.feed_all(_records(keys)[fed:])) == [("NotABarcode", "028075831", CUT_OFF_TAIL, "dev")]
    fed = len(keys.events)
    keys.pause(1.5).digits("96385074").enter()  # after a second's quiet: seen whole
    assert _said(decoder.feed_all(_records(keys)[fed:])) == [("Scan", "96385074", "", "dev")]


@pytest.mark.parametrize("broken_scan_ended", [True, False], ids=["its-end-read", "its-end-taken-back-too"])
def test_keys_the_kernel_takes_back_when_the_key_state_is_read_after_a_drop_never_leave_a_code_cut_short(
        broken_scan_ended):
    """Reading the keys down (EVIOCGKEY) after a drop makes the kernel take back the key events waiting
    unread: a scan's first keys, arrived as the state was read, are never seen. The next key after it,
    however long the pause, is part of a scan not seen whole: "901028075831" is never booked."""
    decoder, keys = Decoder("dev"), Keys()
    keys.digits("6901").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("0280")
    if broken_scan_ended:
        keys.digits("75831").enter()
    asked = []
    first = _said(decoder.feed_all(_records(keys), held_keys=lambda: asked.append(1) or frozenset()))
    assert asked == [1]
    assert first == ([("NotABarcode", "6901028075831", DROPPED, "dev")] if broken_scan_ended else [])
    # Taken back: (the broken scan's end and) the next scan's "6", after a pause longer than a scanner's.
    keys = Keys()
    keys.t = T0 + 0.5
    keys.digits("901028075831").enter()
    [(kind, text, reason, _)] = _said(decoder.feed_all(_records(keys)))
    assert kind == "NotABarcode" and text.endswith("901028075831")
    assert reason == (TAKEN_BACK if broken_scan_ended else DROPPED)
    # Quiet since: the next scan is seen from its start.
    assert decoder.idle(keys.t + 1.0) is None
    keys = Keys()
    keys.t = T0 + 3.0
    assert _said(decoder.feed_all(_records(keys.digits("6901028075831").enter()))) == [
        ("Scan", "6901028075831", "", "dev")]


def test_what_the_kernel_took_back_at_the_asking_ends_with_a_scanner_s_pause_counted_from_the_end_of_that_read():
    """Taken back at the asking, only a scan's first keys can be lost, the rest following at a scanner's
    pace: quiet of exactly ``max_key_interval`` after the read's last record is not yet quiet; past it,
    nothing came, nothing is said, and the next scan is seen whole (times in sixteenths of a second)."""
    settings = DecoderSettings(max_key_interval=0.0625, idle_timeout=0.125)
    decoder, keys = Decoder("dev", settings), Keys(interval=0.0625)
    keys.t = T0 + 0.5  # the read's last record has most of a second in its usec
    keys.digits("69").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("01").enter()
    last = keys.t - 0.03125  # the Enter's key-up
    assert _said(decoder.feed_all(_records(keys), held_keys=frozenset)) == [("NotABarcode", "6901", DROPPED, "dev")]
    assert decoder.idle(last + 0.0625) is None and decoder.pending
    assert decoder.idle(last + 0.125) is None and not decoder.pending
    keys = Keys()
    keys.t = last + 0.25
    assert _said(decoder.feed_all(_records(keys.digits("96385074").enter()))) == [("Scan", "96385074", "", "dev")]


@pytest.mark.parametrize("terminators", [(), ("enter",)], ids=["ended-by-a-pause", "ended-by-enter"])
def test_a_scan_begun_in_the_read_the_device_was_asked_in_is_refused_whole_never_its_head(terminators):
    """The drop's scan ends in the read, the next begins in it ("4006"), the kernel takes back its middle
    ("381") at the asking and the rest comes later: neither its head nor its tail is ever a code."""
    decoder = Decoder("dev", DecoderSettings(terminators=terminators))
    keys = Keys().digits("6901").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("0280")
    if terminators:
        keys.enter()
    keys.pause(0.3).digits("4006")
    said = _said(decoder.feed_all(_records(keys), held_keys=frozenset))
    later = Keys()
    later.t = keys.t + 3 * 0.004
    later.digits("333931")
    if terminators:
        later.enter()
    said += _said(decoder.feed_all(_records(later)))
    said += _said(r for r in (decoder.idle(later.t + 0.2 * n) for n in (1, 2, 3)) if r is not None)
    assert [kind for kind, *_ in said if kind == "Scan"] == []
    assert "4006" in "".join(text for _, text, *_ in said)  # said as refused, with the rest it came with


def test_a_scan_begun_in_the_read_the_device_was_asked_in_whose_rest_never_comes_is_refused_out_loud():
    """The kernel took back the rest of "4006..." at the asking, and nothing more of it comes: the quiet refuses
    what was seen of it with the error signal, never in silence (the cashier, hearing nothing, would not scan
    it again)."""
    decoder = Decoder("dev")
    keys = Keys().digits("69").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("01").enter()
    keys.pause(0.3).digits("4006")
    assert _said(decoder.feed_all(_records(keys), held_keys=frozenset)) == [("NotABarcode", "6901", DROPPED, "dev")]
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "4006", TAKEN_BACK, "dev")]


@pytest.mark.parametrize("char, terminator", [("0009", False), ("0127", False), ("0013", True)],
                         ids=["tab", "del", "cr-the-terminator"])
def test_an_alt_code_for_a_control_character_a_code_does_not_carry_refuses_the_scan_or_ends_it(char, terminator):
    """Alt+0013 is a CR as much as Enter is: it ends the scan where CR is the terminator; any other control
    character a code does not carry (Tab, DEL), typed as a number, is a character lost, never dropped unsaid."""
    keys = _alt_code(Keys().digits("12"), char).digits("34").enter()
    said = _said(Decoder("dev").feed_all(_records(keys)))
    if terminator:  # (the default terminator, Enter, is CR: the Alt code ends "12", Enter "34")
        assert said == [("Scan", "12", "", "dev"), ("Scan", "34", "", "dev")]
    else:
        assert [(kind, reason) for kind, _, reason, _ in said] == [("NotABarcode", ALT_CODE)]


def test_a_dead_key_pressed_alone_is_refused_and_a_scan_a_minute_later_is_its_own():
    """A dead key alone, then nothing: a scan stopped inside its first character (the accent's character never
    came), refused out loud, live at the quiet after it or, read late, at the next key. The scan a minute later
    is 'E123', never 'Ê123'."""
    for idle in (True, False):
        decoder, keys = Decoder("dev", DecoderSettings(layout="fr")), Keys()
        keys.tap(e.KEY_LEFTBRACE)
        assert decoder.feed_all(_records(keys)) == [] and decoder.pending
        said = []
        if idle:
            said = _said([decoder.idle(keys.t + 1.0)])
            assert not decoder.feed_all([]) and decoder.pending  # what the scanner types on is its tail
        keys = Keys()
        keys.t = T0 + 60
        keys.tap(e.KEY_E, shift=True).tap(e.KEY_1, shift=True).tap(e.KEY_2, shift=True).tap(e.KEY_3, shift=True).enter()
        said += _said(decoder.feed_all(_records(keys)))
        assert said == [("NotABarcode", "", CHARACTER_CUT, "dev"), ("Scan", "E123", "", "dev")]


def test_a_source_that_cannot_be_asked_for_its_keys_loses_none_to_the_asking():
    """A recording or a FIFO is not asked (nothing is taken back): after the drop's scan, the next is its own."""
    decoder = Decoder("dev")
    keys = Keys().digits("69").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("01").enter()
    assert _said(decoder.feed_all(_records(keys), held_keys=lambda: None)) == [("NotABarcode", "6901", DROPPED, "dev")]
    keys = Keys()
    keys.t = T0 + 0.5
    assert _said(decoder.feed_all(_records(keys.digits("96385074").enter()))) == [("Scan", "96385074", "", "dev")]


def test_a_drop_in_a_scan_already_broken_refuses_it_to_its_end():
    decoder, keys = Decoder("dev"), Keys()
    decoder.opened(keys.t)
    keys.digits("12").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).digits("34").enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "1234", DROPPED, "dev")]


def test_only_a_syn_report_ends_what_a_drop_discards():
    """The kernel's rule: after SYN_DROPPED, every event up to and including the next SYN_REPORT is
    discarded; another SYN (SYN_MT_REPORT, SYN_CONFIG) ends nothing."""
    keys = Keys().digits("69").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, 2, 0).raw(e.EV_SYN, 1, 0).digits("1")
    keys.raw(e.EV_SYN, e.SYN_REPORT, 0).digits("02").enter()
    assert _said(Decoder("dev").feed_all(_records(keys))) == [("NotABarcode", "6902", DROPPED, "dev")]


def test_a_modifier_in_a_scan_not_seen_whole_keeps_it_going_and_a_pause_after_it_ends_it():
    decoder, keys = Decoder("dev"), Keys()
    decoder.opened(keys.t)
    # 'A' comes 60 ms after the '1' but 30 ms after its Shift: the same burst.
    keys.tap(e.KEY_1).pause(0.026).down(e.KEY_LEFTSHIFT).pause(0.028).tap(e.KEY_A).up(e.KEY_LEFTSHIFT).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "1A", STARTED_UNSEEN, "dev")]

    decoder, keys = Decoder("dev"), Keys()
    decoder.opened(keys.t)
    keys.tap(e.KEY_1).down(e.KEY_LEFTSHIFT).up(e.KEY_LEFTSHIFT).pause(1.2).digits("96385074").enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "1", STARTED_UNSEEN, "dev"),
                                                      ("Scan", "96385074", "", "dev")]


def test_a_shift_the_scanner_presses_in_the_burst_under_way_at_the_open_keeps_it_going_before_any_character():
    """Opened between two characters of a scan: its Shift 30 ms after the open, its capitals 30 ms after that.
    No pause a scanner does not make: "ABC" is the end of a scan begun before, never a code of its own."""
    decoder, keys = Decoder("dev"), Keys()
    decoder.opened(keys.t)
    keys.pause(0.03).down(e.KEY_LEFTSHIFT).pause(0.028).tap(e.KEY_A, e.KEY_B, e.KEY_C).up(e.KEY_LEFTSHIFT).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "ABC", STARTED_UNSEEN, "dev")]


def test_only_the_configured_terminator_ends_a_scan():
    decoder = Decoder("dev", DecoderSettings(terminators=("kp_enter",)))
    results = decoder.feed_all(_records(Keys().digits("96385074").tap(e.KEY_KPENTER)))
    assert texts(results) == ["96385074"]


def test_a_scan_ended_by_a_pause_is_stamped_with_its_first_and_last_key():
    decoder, keys = Decoder("dev", DecoderSettings(terminators=())), Keys()
    keys.digits("96385074")
    downs = [ev.timestamp() for ev in keys.events if ev.type == e.EV_KEY and ev.value == 1]
    assert decoder.feed_all(_records(keys)) == []
    [scan] = [decoder.idle(downs[-1] + 0.2)]
    assert (scan.text, scan.started, scan.finished) == ("96385074", downs[0], downs[-1])


def test_a_gap_of_exactly_max_key_interval_is_no_pause():
    """"Slower is a person typing": a key exactly ``max_key_interval`` after the last is still the
    scanner's (times in sixteenths of a second, so that the sums are exact)."""
    settings = DecoderSettings(max_key_interval=0.0625, idle_timeout=0.125)
    sixteenth = Keys(interval=0.0625)  # a key-down every 1/16 s

    assert texts(Decoder("dev", settings).feed_all(_records(sixteenth.digits("96385074").enter()))) == ["96385074"]

    decoder = Decoder("dev", settings)  # held without a terminator: cut off only past idle_timeout
    keys = Keys(interval=0.0625).digits("9638")
    assert decoder.feed_all(_records(keys)) == []
    last = keys.t - 0.0625
    assert decoder.idle(last + 0.125) is None
    assert _said([decoder.idle(last + 0.1875)]) == [("NotABarcode", "9638", CUT_OFF, "dev")]

    decoder = Decoder("dev", settings)  # a scan not seen whole goes on, as a whole one, up to idle_timeout
    decoder.opened(T0 - 0.0625)
    keys = Keys(interval=0.0625).digits("12")
    assert decoder.feed_all(_records(keys)) == []
    last = keys.t - 0.0625
    assert decoder.idle(last + 0.125) is None
    assert _said([decoder.idle(last + 0.1875)]) == [("NotABarcode", "12", STARTED_UNSEEN, "dev")]

    decoder = Decoder("dev", settings)  # and after a drop, quiet of exactly the interval is not yet quiet
    keys = Keys(interval=0.0625).digits("12")
    dropped_at = keys.t
    assert decoder.feed_all(_records(keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0))) == []
    assert decoder.idle(dropped_at + 0.0625) is None
    assert _said([decoder.idle(dropped_at + 0.125)]) == [("NotABarcode", "12", DROPPED, "dev")]


def test_typed_keys_are_refused_with_their_median_and_longest_gap():
    keys = Keys()
    for gap in (0.0, 0.010, 0.020, 0.030, 0.200):  # gaps 10, 20, 30 and 200 ms, and 40 to the Enter: median 30
        keys.pause(gap).tap(e.KEY_1)
        keys.t -= keys.interval
    [refused] = Decoder("dev").feed_all(_records(keys.pause(0.040).enter()))
    assert (refused.source, refused.reason) == ("dev", "typed, not scanned: 30 ms per key (median), a pause of 200 ms; "
                                                       "a scanner types faster than 50 ms per key")


def test_keys_a_person_hunts_for_are_refused_with_their_times_in_milliseconds():
    keys = Keys(interval=0.8).digits("9638").pause(0.4).digits("5074").enter()  # one pause of 1.2 s
    [refused] = Decoder("dev").feed_all(_records(keys))
    assert refused.reason == ("typed, not scanned: 800 ms per key (median), a pause of 1200 ms; "
                              "a scanner types faster than 50 ms per key")


def test_a_shift_the_device_says_is_down_is_released_by_its_one_key_up():
    decoder = Decoder("dev")
    decoder.resync(frozenset({e.KEY_LEFTSHIFT}))  # after a drop: Shift is held
    keys = Keys().down(e.KEY_LEFTSHIFT).tap(e.KEY_A).up(e.KEY_LEFTSHIFT).tap(e.KEY_A).enter()  # pressed "again"
    assert texts(decoder.feed_all(_records(keys))) == ["Aa"]


def test_a_key_down_only_scanner_s_shift_pressed_since_the_last_character_is_for_the_next():
    """Noticed at a key pressed again: a Shift pressed after the character before it was meant for this one."""
    decoder, keys = Decoder("dev"), Keys()
    for code in (e.KEY_A, e.KEY_LEFTSHIFT, e.KEY_A, e.KEY_LEFTSHIFT, e.KEY_B, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    assert texts(decoder.feed_all(_records(keys))) == ["aAB"] and decoder.key_down_only


def test_a_layout_s_variant_is_the_one_decoded():
    decoder = Decoder("dev", DecoderSettings(layout="us", variant="dvorak"))  # Q and W type ' and , in Dvorak
    assert texts(decoder.feed_all(_records(Keys().tap(e.KEY_Q, e.KEY_W).enter()))) == ["',"]


def test_an_unknown_terminator_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"^unknown terminators \['return'\]; known: enter, kp_enter, tab$"):
        DecoderSettings(terminators=("enter", "return"))


def test_a_drop_in_the_tail_of_a_cut_off_scan_ends_with_a_scan_s_pause_not_the_tail_s_long_quiet():
    decoder, keys = Decoder("dev"), Keys()
    keys.digits("1234")
    assert decoder.feed_all(_records(keys)) == []
    assert _said([decoder.idle(keys.t + 0.2)]) == [("NotABarcode", "1234", CUT_OFF, "dev")]
    tail = Keys()
    tail.t = keys.t + 0.3
    tail.digits("56")
    dropped_at = tail.t
    tail.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(tail)) == []
    assert _said([decoder.idle(dropped_at + 0.1)]) == [("NotABarcode", "56", DROPPED, "dev")]
    assert decoder.idle(dropped_at + 1.15) is None  # the quiet its own tail is given (no terminator came)
    scan = Keys()
    scan.t = dropped_at + 1.2
    assert _said(decoder.feed_all(_records(scan.digits("96385074").enter()))) == [("Scan", "96385074", "", "dev")]


@pytest.mark.parametrize("setting", [{"idle_timeout": 0}, {"max_key_interval": 0}, {"idle_timeout": -0.1},
                                     {"max_key_interval": float("nan")}])
def test_each_timing_setting_must_be_more_than_nothing(setting):
    with pytest.raises(ValueError, match="^idle_timeout and max_key_interval must be more than 0 seconds$"):
        DecoderSettings(**setting)


def test_a_key_down_only_scanner_s_keys_the_device_says_are_held_after_a_drop_are_pressed_again_not_held():
    """A scanner that sends no key-ups leaves each key it pressed down in the kernel's state, Shift among
    them: after a drop, the device says so (EVIOCGKEY). The next press of such a key shows the scanner for
    what it is, and its Shift, never released, was for the character it went with, not for this scan."""
    decoder = Decoder("dev")
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset({e.KEY_1, e.KEY_LEFTSHIFT}))
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "", DROPPED, "dev")]
    fed = len(keys.events)
    keys.pause(1.0)
    for code in (e.KEY_1, e.KEY_A, e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    assert texts(decoder.feed_all(_records(keys)[fed:])) == ["1a"] and decoder.key_down_only


def test_a_source_reopened_in_quiet_says_nothing_whatever_broke_before_it():
    """Opened anew (the scanner plugged in again, the agent restarted) with no burst going on: the quiet
    that follows ends nothing, and no refusal is signalled, after a scan cut off by the unplugging as
    after a drop already said."""
    decoder, keys = Decoder("dev"), Keys().digits("690102")
    assert decoder.feed_all(_records(keys)) == []
    assert decoder.unplugged() == "690102"  # the agent refuses it, signalled once
    decoder.opened(keys.t + 1.0)
    assert decoder.idle(keys.t + 2.0) is None and not decoder.pending

    decoder = Decoder("dev")
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset())
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "", DROPPED, "dev")]
    decoder.opened(keys.t + 2.0)
    assert decoder.idle(keys.t + 3.0) is None and not decoder.pending
    fed = len(keys.events)
    assert texts(decoder.feed_all(_records(keys.pause(4.0).digits("96385074").enter())[fed:])) == ["96385074"]


def test_one_character_and_its_enter_typed_at_a_persons_pace_are_refused_as_typed():
    """The last key to the terminator is a gap like any other: a person's "7" and Enter are two keys."""
    for gap in (0.060, 0.080, 0.099):
        keys = Keys().tap(e.KEY_7).pause(gap - Keys().interval).enter()
        [refused] = Decoder("dev").feed_all(_records(keys))
        assert isinstance(refused, NotABarcode) and refused.reason.startswith(
            f"typed, not scanned: {gap * 1000:.0f} ms per key (median), a pause of {gap * 1000:.0f} ms")
    [scan] = Decoder("dev").feed_all(_records(Keys().tap(e.KEY_7).pause(0.046).enter()))  # a scanner's pace
    assert (scan.text, round(scan.slowest_key, 3)) == ("7", 0.050)  # the slowest gap: the one to the Enter


def test_one_key_alone_with_no_terminator_is_refused_since_a_person_types_it_too():
    decoder = Decoder("dev", DecoderSettings(terminators=()))
    keys = Keys().tap(e.KEY_7)
    assert decoder.feed_all(_records(keys)) == []
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "7", ONE_KEY, "dev")]
    # Read late, together: the pause after each key ends it as it would have on time, never "42".
    assert _said(decoder.feed_all(_records(Keys(interval=0.2).pause(2.0).tap(e.KEY_4, e.KEY_2)))) == [
        ("NotABarcode", "4", ONE_KEY, "dev")]
    assert _said([decoder.idle(T0 + 4.0)]) == [("NotABarcode", "2", ONE_KEY, "dev")]
    slow = Decoder("dev", DecoderSettings(terminators=(), idle_timeout=0.5))  # a pause of 0.2 s ends nothing here
    slow.feed_all(_records(Keys(interval=0.2).pause(2.0).tap(e.KEY_4, e.KEY_2)))
    assert _said([slow.idle(T0 + 4.0)])[0][:3] == ("NotABarcode", "42", "typed, not scanned: 200 ms per key "
                                                                       "(median), a pause of 200 ms; a scanner types "
                                                                       "faster than 50 ms per key")


@pytest.mark.parametrize("gap", [0.15, 0.5, 3.0])
def test_with_no_terminator_two_scans_read_together_are_two_never_one(gap):
    """Read late (the loop or the store held up while the scanner typed both), the keys of two scans come in one
    read: the pause between them, in the kernel's times, ends the first as idle would have. Joined, a slow
    Bluetooth scanner's two scans were booked as one code, "963850745012345678900"."""
    decoder = Decoder("dev", DecoderSettings(terminators=(), max_key_interval=0.1, idle_timeout=0.12))
    keys = Keys(interval=0.02).digits("96385074").pause(gap).digits("5012345678900")
    assert _said(decoder.feed_all(_records(keys))) == [("Scan", "96385074", "", "dev")]
    assert _said([decoder.idle(keys.t + 0.2)]) == [("Scan", "5012345678900", "", "dev")]


def test_with_no_terminator_a_pause_a_scanner_makes_inside_a_barcode_cannot_be_the_pause_that_ends_one():
    with pytest.raises(ValueError, match=r"^with no terminator a pause of idle_timeout ends a barcode: it must be "
                                         r"longer than max_key_interval \(0.1 s is not longer than 0.2 s\)$"):
        DecoderSettings(terminators=(), max_key_interval=0.2)
    with pytest.raises(ValueError, match=r"\(0.05 s is not longer than 0.05 s\)$"):  # as long is not longer
        DecoderSettings(terminators=(), idle_timeout=0.05, max_key_interval=0.05)
    assert DecoderSettings(terminators=("enter",), max_key_interval=0.2).idle_timeout == 0.1  # Enter ends it


def test_a_scan_of_nothing_but_the_prefix_is_refused_not_lost_without_a_word():
    keys = Keys().tap(e.KEY_RIGHTBRACE).tap(e.KEY_E, shift=True).tap(e.KEY_0).enter()
    [said] = Decoder("dev", DecoderSettings(prefix="]E0")).feed_all(_records(keys))
    assert _said([said]) == [("NotABarcode", "]E0", NOTHING_BUT_AFFIXES, "dev")]


def _shifted_run(keys: Keys, text: str) -> Keys:
    """Keys as a scanner types ``text`` holding Shift over each run of capitals, not per character."""
    shifted = False
    for char in text:
        capital = char.isupper() or char == ":"
        if capital != shifted:
            (keys.down if capital else keys.up)(e.KEY_LEFTSHIFT)
            shifted = capital
        keys.tap({":": e.KEY_SEMICOLON}.get(char) or getattr(e, f"KEY_{char.upper()}"))
    if shifted:
        keys.up(e.KEY_LEFTSHIFT)
    return keys


def test_a_key_the_device_says_is_down_after_a_drop_with_its_press_still_in_the_same_read_is_pressed_once():
    """The device is asked at the end of the drop, after all of the read was taken from the kernel: the
    key-down of a key it says is down may still follow in that read. Never a second press, so a scanner
    that sends key-ups is not taken for one that does not, and Shift held over "CB:QTY" still holds."""
    decoder = Decoder("dev")
    keys = Keys().digits("9638").raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).down(e.KEY_5)
    first = _records(keys)
    fed = len(keys.events)
    keys.up(e.KEY_5).digits("074").enter().pause(1.0)
    _shifted_run(keys, "CB:QTY3").enter()
    said = decoder.feed_all(first, held_keys=lambda: frozenset({e.KEY_5}))
    said += decoder.feed_all(_records(keys)[fed:], held_keys=lambda: frozenset())
    assert not decoder.key_down_only
    assert [(type(r).__name__, r.text) for r in said] == [("NotABarcode", "96385074"), ("Scan", "CB:QTY3")]


@pytest.mark.parametrize("lost_up, typed", [
    (lambda k: k.down(e.KEY_2).down(e.KEY_2).up(e.KEY_2), "0242222288"),
    (lambda k: k.down(e.KEY_LEFTSHIFT).down(e.KEY_LEFTSHIFT).tap(e.KEY_A).up(e.KEY_LEFTSHIFT), "0242A2288"),
], ids=["a-digit-s", "a-shift-s"])
def test_one_key_up_lost_by_a_scanner_that_sends_key_ups_never_makes_it_key_down_only(lost_up, typed):
    """A key or a Shift pressed again while down, by a scanner that has released keys before: one key-up lost,
    not a scanner that sends none (taken for one, its Shift held over "CB:QTY" shifted the C alone)."""
    keys = lost_up(Keys().digits("0242")).digits("2288").enter().pause(1.0)
    _shifted_run(keys, "CB:QTY3").enter()
    decoder = Decoder("dev")
    assert texts(decoder.feed_all(_records(keys))) == [typed, "CB:QTY3"]
    assert not decoder.key_down_only


def test_a_one_character_scan_whose_key_is_released_after_its_enter_says_nothing_of_key_ups():
    """Only a scan of two characters or more with no key released by its end shows a scanner that sends no
    key-ups: one that rolls over (presses Enter before releasing the key before it) types a quantity "2" so.
    Taken for one that sends none, it shifted one character per Shift: "CB:QTY3" read as "Cb;qty3"."""
    keys = Keys().down(e.KEY_2).down(e.KEY_ENTER).up(e.KEY_2).up(e.KEY_ENTER).pause(1.0)
    _shifted_run(keys, "CB:QTY3").enter()
    decoder = Decoder("dev")
    assert texts(decoder.feed_all(_records(keys))) == ["2", "CB:QTY3"]
    assert not decoder.key_down_only


@pytest.mark.parametrize("keymap", [UsTable(), XkbKeymap("us")], ids=["built-in", "xkb"])
def test_caps_lock_set_before_a_drop_is_still_set_after_it(keymap):
    """The device says which keys are down, not what the locks are: a scanner that types its capitals
    with Caps Lock on keeps them after a scan broken by a drop."""
    decoder = Decoder("dev", keymap=keymap)
    keys = Keys().tap(e.KEY_CAPSLOCK).tap(e.KEY_C, e.KEY_B).raw(e.EV_SYN, e.SYN_DROPPED, 0)
    keys.raw(e.EV_SYN, e.SYN_REPORT, 0).tap(e.KEY_A).enter().pause(1.0).tap(e.KEY_V, e.KEY_O, e.KEY_I, e.KEY_D).enter()
    said = decoder.feed_all(_records(keys), held_keys=lambda: frozenset())
    assert [(type(r).__name__, r.text) for r in said] == [("NotABarcode", "CBA"), ("Scan", "VOID")]


def test_a_clock_stepped_back_never_joins_a_cut_scan_to_the_next_one():
    """The head of a scan waits for its terminator while the clock steps back two seconds: the head is
    refused at the next look, not held until the next scan's keys are taken for its tail's."""
    decoder = Decoder("dev")
    keys = Keys().digits("9638")
    assert decoder.feed_all(_records(keys)) == []
    assert _said([decoder.idle(keys.t - 2.0)]) == [("NotABarcode", "9638", CUT_OFF, "dev")]
    # A scan whose keys themselves run back in time cannot be timed: refused, never booked.
    keys = Keys().pause(10.0).digits("9638").pause(-0.5).digits("5074").enter()
    [refused] = Decoder("dev").feed_all(_records(keys))
    assert _said([refused]) == [("NotABarcode", "96385074", CLOCK_BACK, "dev")]
    # Back between the last character and its Enter (by less than a key's time): as untimed.
    keys = Keys().pause(20.0).digits("96385074").pause(-0.006).enter()
    [refused] = Decoder("dev").feed_all(_records(keys))
    assert _said([refused]) == [("NotABarcode", "96385074", CLOCK_BACK, "dev")]


@pytest.mark.parametrize("held", ["a-scan-seen-whole", "a-scan-under-way-at-the-open", "a-scan-a-drop-broke"])
def test_a_clock_up_to_clock_slack_behind_the_last_event_is_no_step_back(held):
    """Events may be stamped ahead of the clock ``idle`` is given (a recording written at once) by up to
    CLOCK_SLACK: a look exactly that far behind the last key (or the drop) is no pause and no step back, and
    the scan goes on to its Enter."""
    decoder, keys = Decoder("dev"), Keys()
    if held == "a-scan-under-way-at-the-open":
        decoder.opened(keys.t)
    keys.digits("9638")
    if held == "a-scan-a-drop-broke":
        keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    if decoder.resync_pending:
        decoder.resync(frozenset())
    last = keys.events[-1].timestamp() if held == "a-scan-a-drop-broke" else max(
        ev.timestamp() for ev in keys.events if ev.type == e.EV_KEY and ev.value == 1)
    assert decoder.idle(last - CLOCK_SLACK) is None and decoder.pending
    fed = len(keys.events)
    [said] = _said(decoder.feed_all(_records(keys.digits("5074").enter())[fed:]))
    assert said == {"a-scan-seen-whole": ("Scan", "96385074", "", "dev"),
                    "a-scan-under-way-at-the-open": ("NotABarcode", "96385074", STARTED_UNSEEN, "dev"),
                    "a-scan-a-drop-broke": ("NotABarcode", "96385074", DROPPED, "dev")}[held]


@pytest.mark.parametrize("typed, text, aim", [
    ("]E06901028075831", "6901028075831", "]E0"),   # EAN-13
    ("]E496385074", "96385074", "]E4"),             # EAN-8
    ("]E04006381333932", "4006381333932", "]E0"),   # a bad check digit: the counter's misread to find
    ("]C1010690102807583110AB12", "010690102807583110AB12", "]C1"),  # GS1-128
    ("]Q1https://example.cn/p?x=1", "https://example.cn/p?x=1", "]Q1"),
])
def test_a_wedge_scanner_that_types_the_aim_identifier_hands_it_over_apart_from_the_code(tmp_path, typed, text, aim):
    [scan] = decode(pack_all(type_text(typed, start=T0)), tmp_path)
    assert (scan.text, scan.aim) == (text, aim)


@pytest.mark.parametrize("settings, text, bare", [
    (DecoderSettings(), "]C0CB:RET", "CB:RET"),
    (DecoderSettings(), "]C", ""),  # cut inside the identifier: the code itself unseen
    (DecoderSettings(), "CB:RET", "CB:RET"),
    (DecoderSettings(prefix="#", suffix="$"), "#]C0CB:RET", "CB:RET"),
    (DecoderSettings(prefix="#", suffix="$"), "TURN$", "TURN"),
    (DecoderSettings(prefix="##"), "#", ""),
    (DecoderSettings(suffix="$$"), "$", ""),
    (DecoderSettings(prefix="#"), "6901028", "6901028"),  # the prefix not seen: kept whole
])
def test_a_refused_scan_says_what_the_code_in_it_may_have_been_without_the_scanners_affixes(settings, text, bare):
    """A control cut short from a scanner typing its AIM identifier (or a prefix) was not seen as a control:
    the product after it sold without what it was told."""
    decoder = Decoder("dev", settings)
    assert decoder.bare(text) == bare


def test_a_cut_scan_from_a_scanner_typing_the_aim_identifier_names_the_code_in_it():
    decoder = Decoder("dev", DecoderSettings(prefix="#"))
    assert decoder.feed_all([record(event) for event in type_text("#]C0CB:RET", start=T0, terminator=None)]) == []
    cut = decoder.ended()
    assert (cut.text, cut.reason, cut.code_seen) == ("#]C0CB:RET", CUT_OFF, "CB:RET")


def test_a_code_that_merely_begins_with_a_bracket_is_no_aim_identifier(tmp_path):
    [scan] = decode(pack_all(type_text("]-12345", start=T0)), tmp_path)
    assert (scan.text, scan.aim) == ("]-12345", "")


def test_an_iso_15434_code_keeps_its_record_separators_and_end_of_transmission():
    """RS (Ctrl+^), GS (Ctrl+]) and EOT (Ctrl+D), as a scanner in US mode types them."""
    keys = Keys().tap(e.KEY_LEFTBRACE).tap(e.KEY_0, e.KEY_DOT, shift=True)  # "[)>"

    def ctrl(code, shift=False):
        keys.down(e.KEY_LEFTCTRL).tap(code, shift=shift).up(e.KEY_LEFTCTRL)

    ctrl(e.KEY_6, shift=True)
    keys.tap(e.KEY_0, e.KEY_6)
    ctrl(e.KEY_RIGHTBRACE)
    keys.tap(e.KEY_P, shift=True).tap(e.KEY_1, e.KEY_2, e.KEY_3)
    ctrl(e.KEY_6, shift=True)
    ctrl(e.KEY_D)
    assert texts(Decoder("dev").feed_all(_records(keys.enter()))) == ["[)>\x1e06\x1dP123\x1e\x04"]


def test_keypad_digits_that_type_nothing_are_refused_with_their_scan_never_lost_in_silence():
    """Keypad digits with Num Lock off (a scanner's, in a state the box did not see set) type nothing: a scan
    of them alone is said, and one with some of its characters typed is no code with digits left out."""
    decoder = Decoder("dev", DecoderSettings(numlock=False))
    keys = Keys().tap(e.KEY_KP6, e.KEY_KP9, e.KEY_KP0).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "", TYPED_NOTHING, "dev")]
    keys = Keys().pause(2.0).tap(e.KEY_A, e.KEY_B, e.KEY_KP1, e.KEY_KP2).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "ab", TYPED_NOTHING, "dev")]
    # An F-key or an arrow in a scan types nothing a code holds: passed over, as ever.
    keys = Keys().pause(4.0).tap(e.KEY_F12, e.KEY_1, e.KEY_2, e.KEY_3).enter()
    assert texts(decoder.feed_all(_records(keys))) == ["123"]
    # A keypad key that typed nothing alone may have been a scan's first digit: refused at the pause after it
    # (read late, at the next key), never forgotten; a stray Enter long after it is an empty line.
    keys = Keys().pause(5.0).tap(e.KEY_KP5).pause(2.0).enter()
    assert _said(decoder.feed_all(_records(keys))) == [("NotABarcode", "", TYPED_NOTHING, "dev")]


def test_a_keypad_digit_that_typed_nothing_before_a_scan_s_first_character_refuses_the_scan_however_long():
    """Num Lock off, the first digit of a long code typed nothing: the scan is refused, though its Enter comes
    more than a scanner's pace after that key. A key that typed nothing is the scan's if it came at a scanner's
    pace before its first character, exactly max_key_interval included (times in sixteenths of a second)."""
    keys = Keys().tap(e.KEY_KP6).digits("901028075831").enter()
    assert _said(Decoder("dev", DecoderSettings(numlock=False)).feed_all(_records(keys))) == [
        ("NotABarcode", "901028075831", TYPED_NOTHING, "dev")]
    settings = DecoderSettings(numlock=False, max_key_interval=0.0625, idle_timeout=0.125)
    keys = Keys(interval=0.0625).tap(e.KEY_KP9).digits("6385074").enter()
    assert _said(Decoder("dev", settings).feed_all(_records(keys))) == [("NotABarcode", "6385074", TYPED_NOTHING, "dev")]


def test_a_scanner_unplugged_and_plugged_in_again_starts_with_the_locks_as_configured():
    """Unlike a drop, an unplugging ends the device's state: Caps Lock it had set is set no more."""
    decoder = Decoder("dev")
    assert decoder.feed_all(_records(Keys().tap(e.KEY_CAPSLOCK).tap(e.KEY_A, e.KEY_B))) == []
    assert decoder.unplugged() == "AB"
    assert texts(decoder.feed_all(_records(Keys().pause(5.0).tap(e.KEY_A, e.KEY_B).enter()))) == ["ab"]


@pytest.mark.parametrize("key", [e.KEY_5, e.KEY_LEFTSHIFT], ids=["a-key", "a-shift"])
def test_a_key_the_device_says_is_down_pressed_twice_after_it_in_the_same_read_is_pressed_again(key):
    """The device's report stands for one key-down: a second in the same read, with no key-up between,
    is a key (or a Shift) pressed again, which shows a scanner that sends no key-ups."""
    decoder = Decoder("dev")
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.raw(e.EV_KEY, key, 1).raw(e.EV_SYN, e.SYN_REPORT, 0).pause(0.004)
    keys.raw(e.EV_KEY, key, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
    decoder.feed_all(_records(keys), held_keys=lambda: frozenset({key}))
    assert decoder.key_down_only


@pytest.mark.parametrize("digits, end, settings", [
    ("0110", e.KEY_ENTER, DecoderSettings()),  # "n": what is left after the drop, "10", is a line feed
    ("0113", e.KEY_ENTER, DecoderSettings()),  # "q": "13" is a carriage return
    ("0029", e.KEY_TAB, DecoderSettings(terminators=("tab",))),  # GS1's group separator: "9" is a tab
], ids=["lf", "cr", "tab"])
def test_an_alt_code_cut_by_a_drop_makes_no_character_so_never_an_early_end_of_the_broken_scan(digits, end, settings):
    """The drop took the code's first digits; Alt is still down (the device says so) and the digits after
    it make a character of their own: an Enter or a Tab that ended the broken scan there, and the rest of
    the scan ("5012345") was booked as a code."""
    keys = Keys().tap(e.KEY_X, shift=True).down(e.KEY_LEFTALT).digits(digits[:1], keypad=True)
    keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)  # the next digit's press lost
    keys.digits(digits[2:], keypad=True).up(e.KEY_LEFTALT).digits("5012345").tap(end)
    results = Decoder("dev", settings).feed_all(_records(keys), held_keys=lambda: frozenset({e.KEY_LEFTALT}))
    assert _said(results) == [("NotABarcode", "X5012345", DROPPED, "dev")]


def test_an_alt_code_whose_digits_all_went_with_a_drop_is_a_key_of_the_broken_scan_at_alt_s_release():
    """A scan begins with an Alt code; the drop takes its digits and the device says Alt is down. Alt's release
    is a character the scanner typed, lost: the broken scan went on to there, and a scanner's pause after it
    (idle_after, as the agent's timer asks) ends nothing. Ended there, the rest was a code of its own
    (times in sixteenths of a second)."""
    decoder = Decoder("dev", DecoderSettings(max_key_interval=0.0625, idle_timeout=0.125))
    keys = Keys(interval=0.0625).down(e.KEY_LEFTALT).digits("0", keypad=True)
    keys.raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0).pause(0.0625)  # "029" and Alt's release lost
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset({e.KEY_LEFTALT}))
    fed = len(keys.events)
    released = keys.t
    keys.up(e.KEY_LEFTALT)
    assert decoder.feed_all(_records(keys)[fed:]) == []
    assert decoder.idle(released + 0.125) is None
    fed = len(keys.events)
    keys.t = released + 0.1875
    keys.digits("0106901028075831").enter()
    said = _said(decoder.feed_all(_records(keys)[fed:]))
    assert [kind for kind, *_ in said] == ["NotABarcode"] * len(said) and "".join(t for _, t, *_ in said) == (
        "0106901028075831")


@pytest.mark.parametrize("then", ["a-scan-later", "a-scan-at-once"])
def test_an_alt_held_through_a_drop_and_released_after_the_broken_scan_makes_no_character_of_the_next_scan(then):
    """Alt was down through a drop (the device says so) and comes up after the quiet that ended the broken scan:
    its code's digits went with the drop, so its release types nothing. A scan begun with it, at a scanner's
    pace, is refused for that lost character; one begun later is read as typed, its own Alt codes and all."""
    decoder, keys = Decoder("dev"), Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    assert decoder.feed_all(_records(keys)) == []
    decoder.resync(frozenset({e.KEY_LEFTALT}))
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "", DROPPED, "dev")]
    fed = len(keys.events)
    keys.pause(1.5).up(e.KEY_LEFTALT).pause(0.5 if then == "a-scan-later" else 0.0)
    _alt_code(keys.digits("0109501101530003"), "0029").digits("1012").enter()
    said = _said(decoder.feed_all(_records(keys)[fed:]))
    if then == "a-scan-later":
        assert said == [("Scan", "0109501101530003\x1d1012", "", "dev")]
    else:
        assert said == [("NotABarcode", "0109501101530003\x1d1012", ALT_CODE, "dev")]


def test_a_modifier_pressed_in_the_read_the_device_was_asked_in_is_up_once_the_device_says_so():
    """After a drop, the key state comes from the device, asked after all of the read was taken: a Shift
    pressed later in that read, whose release was waiting unread (and so taken back), is up. Held, it shifted
    the next scan, typed whole: "96385074" was booked as "(^#*%)&$"."""
    keys = Keys().tap(e.KEY_A, shift=True).raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    keys.down(e.KEY_LEFTSHIFT)  # the read's last record; "C", Shift's release and the Enter are taken back
    decoder = Decoder("dev")
    assert _said(decoder.feed_all(_records(keys), held_keys=frozenset)) == []
    assert _said([decoder.idle(keys.t + 1.0)]) == [("NotABarcode", "A", DROPPED, "dev")]
    assert decoder.idle(keys.t + 2.1) is None  # the quiet its tail is given (it stopped without its terminator)
    later = Keys()
    later.t = keys.t + 2.5
    assert _said(decoder.feed_all(_records(later.digits("96385074").enter()))) == [("Scan", "96385074", "", "dev")]


@pytest.mark.parametrize("interval", [0.004, 0.012, 0.016])
def test_a_scanner_in_alt_mode_at_a_scanner_s_pace_per_key_is_a_scanner_though_each_character_takes_five_keys(
        interval):
    """Scanners type at 1 to 16 ms per key press; in Alt mode a character is five presses (Alt and four digits),
    50 to 80 ms. Timed per character, every scan of such a scanner was refused as typed by a person."""
    keys = Keys(interval=interval)
    for char in "6901028075831":
        _alt_code(keys, f"{ord(char):04d}")
    keys.enter()
    assert _said(Decoder("dev").feed_all(_records(keys))) == [("Scan", "6901028075831", "", "dev")]
    slow = Keys(interval=interval).digits("69010")  # a pause a person's length between two of a character's digits
    slow.down(e.KEY_LEFTALT).digits("00", keypad=True).pause(0.2).digits("50", keypad=True).up(e.KEY_LEFTALT)
    slow.digits("8075831").enter()
    [refused] = Decoder("dev").feed_all(_records(slow))
    assert isinstance(refused, NotABarcode) and refused.reason.startswith("typed, not scanned")


def test_with_no_terminator_a_character_of_several_keys_is_no_pause_that_ends_a_barcode():
    """Timed from the last key, not the last character: an Alt code's five keys put more than idle_timeout between
    two characters at a scanner's pace. Timed per character, a GS1 code with its separator typed so was booked
    as two codes, each part of one."""
    settings = DecoderSettings(terminators=(), idle_timeout=0.06, max_key_interval=0.05)
    alt = Keys(interval=0.03).digits("0109")
    _alt_code(alt, "0029")
    alt.digits("21")
    decoder = Decoder("dev", settings)
    results = [result for event in alt.events for result in decoder.feed_all([record(event)])]  # each read alone
    results.append(decoder.idle(alt.t + 1.0))
    assert _said(results) == [("Scan", "0109\x1d21", "", "dev")]


def test_a_scanner_that_sends_no_key_ups_never_has_a_digit_typed_as_ctrl_and_lost_booked():
    """GS typed as Ctrl+]; until the decoder learns the scanner sends no key-ups, the Ctrl is taken as held, and
    the next 2 types Ctrl+2, nothing: booked as \x1d212345678, a digit short."""
    keys = Keys()
    for code in (e.KEY_LEFTCTRL, e.KEY_RIGHTBRACE, *[getattr(e, f"KEY_{d}") for d in "2212345678"], e.KEY_ENTER):
        keys.raw(e.EV_KEY, code, 1).raw(e.EV_SYN, e.SYN_REPORT, 0)
        keys.t += 0.004
    decoder = Decoder("dev")
    results = [r for r in map(decoder.feed, keys.events) if r is not None]
    assert [(type(r).__name__, r.reason) for r in results] == [("NotABarcode", KEY_DOWN_ONLY)]
    assert decoder.key_down_only


def test_a_scan_the_kernel_dropped_whole_is_still_refused_when_the_scanner_goes_before_the_quiet_that_ends_it():
    """The drop's refusal waits for a quiet spell; the scanner unplugged first left nothing refused and nothing
    held (the whole of CB:RETURN may have been in the drop)."""
    from evdev import ecodes as e

    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0).raw(e.EV_SYN, e.SYN_REPORT, 0)
    decoder = Decoder("/dev/input/event3")
    for event in keys.events:
        assert decoder.feed(event) is None
        if decoder.resync_pending:
            decoder.resync(frozenset())
    assert decoder.unplugged() == ""  # a scan under way, of which nothing was seen: refused as such
    assert decoder.unplugged() is None


def _first_character(kind: str, keys: Keys, stall: float) -> Keys:
    """The first character of a scan typed in several keys, the scanner stalling between them: on the German
    layout ê is the dead key ^ then e; in Alt mode é is Alt + 0233 on the keypad."""
    if kind == "dead-key":
        return keys.tap(e.KEY_GRAVE).pause(stall).tap(e.KEY_E)
    keys.down(e.KEY_LEFTALT).digits("02", keypad=True).pause(stall)
    return keys.digits("33", keypad=True).up(e.KEY_LEFTALT)


@pytest.mark.parametrize("kind", ["dead-key", "alt-code"])
@pytest.mark.parametrize("stall, live", [(0.08, True), (0.15, True), (0.15, False), (0.6, True), (0.6, False)],
                         ids=["under-idle", "past-idle-live", "past-idle-recorded", "long-live", "long-recorded"])
def test_a_stall_inside_a_scan_s_first_character_never_books_the_rest_of_it(kind, stall, live):
    """A scanner that stalls between the keys of the first character ('^' ... 'e', or Alt 02 ... 33) once booked
    'e96385074' or '!96385074': the character lost (a dead key forgotten, an Alt code begun again) and the pause
    inside it never counted. The scan is refused whether the pause is shorter than a scanner's idle, longer (a
    live reader asks ``idle``; a recording is read without), or long enough to end a scan."""
    decoder = Decoder("dev", DecoderSettings(layout="de"))
    keys = _first_character(kind, Keys(), stall).digits("96385074").enter()
    stalled_at = next(i for i, ev in enumerate(keys.events[1:], 1)
                      if ev.timestamp() - keys.events[i - 1].timestamp() >= stall - 0.001)
    head, tail = keys.events[:stalled_at], keys.events[stalled_at:]
    results = decoder.feed_all([record(ev) for ev in head])
    if live and stall > decoder.idle_after:
        results.append(decoder.idle(head[-1].timestamp() + decoder.idle_after + 0.001))
    results += decoder.feed_all([record(ev) for ev in tail])
    results.append(decoder.ended())
    said = _said(result for result in results if result is not None)
    assert said and all(kind == "NotABarcode" for kind, *_ in said), said


@pytest.mark.parametrize("kind", ["dead-key", "alt-code"])
def test_the_first_character_typed_at_a_scanner_s_pace_is_booked(kind):
    decoder = Decoder("dev", DecoderSettings(layout="de"))
    keys = _first_character(kind, Keys(), 0.004).digits("96385074").enter()
    assert texts(decoder.feed_all(_records(keys))) == [("ê" if kind == "dead-key" else "é") + "96385074"]


def test_a_drop_whose_report_comes_in_a_later_read_keeps_its_scan_broken_through_an_idle():
    """SYN_DROPPED read alone (a replayed scanner's pipe split the records), then an idle before the rest:
    what the drop's report ends is discarded, and what follows up to the terminator is the broken scan's."""
    decoder = Decoder("dev")
    keys = Keys().raw(e.EV_SYN, e.SYN_DROPPED, 0)  # the scan's first keys went with the drop
    said = _said(decoder.feed_all(_records(keys)))
    said += _said(r for r in [decoder.idle(keys.t + 0.3)] if r is not None)
    rest = Keys()
    rest.t = keys.t + 0.3
    rest.digits("0").raw(e.EV_SYN, e.SYN_REPORT, 0).digits("28075831").enter()
    said += _said(decoder.feed_all(_records(rest)))
    said += _said(r for r in [decoder.ended()] if r is not None)
    assert said == [("NotABarcode", "28075831", DROPPED, "dev")]


@pytest.mark.parametrize("terminators", [("enter",), ()], ids=["enter", "no-terminator"])
def test_a_code_longer_than_any_a_product_carries_is_refused_and_what_came_past_it_never_held(terminators):
    """A stuck or broken scanner typing on at its pace: 200,000 characters were once booked as one sale."""
    decoder = Decoder("dev", DecoderSettings(terminators=terminators, idle_timeout=0.1))
    keys = Keys().digits("1234567890" * (MAX_LENGTH // 10 + 50))
    if terminators:
        keys.enter()
    said = decoder.feed_all(_records(keys)) + [decoder.ended()]
    [refused] = [r for r in said if r is not None]
    assert (type(refused), refused.reason, len(refused.text)) == (NotABarcode, TOO_LONG, MAX_LENGTH)
    keys = Keys()
    keys.t = T0 + 60
    assert texts(decoder.feed_all(_records(keys.digits("96385074").enter() if terminators else
                                          keys.digits("96385074"))) + [decoder.ended()]) == ["96385074"]


def test_a_code_of_the_longest_length_is_booked():
    decoder = Decoder("dev")
    code = ("1234567890" * MAX_LENGTH)[:MAX_LENGTH]
    assert texts(decoder.feed_all(_records(Keys().digits(code).enter()))) == [code]


@pytest.mark.parametrize("first", [True, False], ids=["first-character", "mid-scan"])
@pytest.mark.parametrize("live", [True, False], ids=["live-idle", "read-late"])
@pytest.mark.parametrize("code", ["0113", "0110"], ids=["q-its-rest-13-a-CR", "n-its-rest-10-a-LF"])
def test_a_stall_inside_an_alt_code_whose_rest_would_make_a_terminator_never_books_the_rest_of_the_scan(
        first, live, code):
    """'q' is Alt+0113: stalled after "01", the Alt still held, its "13" once made a CR of its own at Alt's release,
    which ended the refused rest early and booked "96385074" after it."""
    decoder, keys = Decoder("dev"), Keys()
    if not first:
        keys.digits("12")
    keys.down(e.KEY_LEFTALT).digits(code[:2], keypad=True)
    head, stalled = _records(keys), keys.t
    rest = Keys()
    rest.t = stalled + 0.3
    rest.digits(code[2:], keypad=True).up(e.KEY_LEFTALT).digits("96385074").enter()
    results = decoder.feed_all(head)
    if live:
        results.append(decoder.idle(stalled + decoder.idle_after + 0.01))
    results += decoder.feed_all(_records(rest)) + [decoder.ended()]
    assert texts(r for r in results if r is not None) == []


def _lost_first(kind: str, keys: Keys) -> Keys:
    """A first character that types nothing: on the German layout ^ then q make nothing together; Windows-1252
    has no character 129; a keypad digit with Num Lock off types nothing."""
    if kind == "dead-key":
        return keys.tap(e.KEY_GRAVE).tap(e.KEY_Q)
    if kind == "keypad-num-lock-off":
        return keys.tap(e.KEY_KP9)
    return _alt_code(keys, "0129")


@pytest.mark.parametrize("kind", ["dead-key", "alt-code", "keypad-num-lock-off"])
@pytest.mark.parametrize("stall, live", [(0.0, False), (0.07, True), (0.07, False), (0.3, True), (0.3, False)],
                         ids=["no-stall", "past-a-scanners-pace-live", "past-a-scanners-pace-read-late",
                              "past-idle-live", "past-idle-read-late"])
def test_a_first_character_that_typed_nothing_refuses_its_scan_whatever_pause_follows_it(kind, stall, live):
    decoder = Decoder("dev", DecoderSettings(layout="de", numlock=kind != "keypad-num-lock-off"))
    keys = _lost_first(kind, Keys())
    head, stalled = _records(keys), keys.t
    results = decoder.feed_all(head)
    if live:  # (asked when a pause of idle_after is over, if it is before the rest comes)
        results.append(decoder.idle(min(stalled + decoder.idle_after + 0.01, stalled + stall - 0.005)))
    rest = Keys()
    rest.t = stalled + stall
    results += decoder.feed_all(_records(rest.digits("96385074").enter())) + [decoder.ended()]
    said = [r for r in results if r is not None]
    assert said and texts(said) == []


@pytest.mark.parametrize("extra", [e.KEY_TAB, e.KEY_NUMLOCK, e.KEY_DOWN, e.KEY_LEFTSHIFT],
                         ids=["tab", "numlock", "arrow", "shift"])
def test_a_key_a_scanner_sends_after_its_terminator_is_no_part_of_the_next_scan_s_pace(extra):
    """A Tab or an arrow behind Enter (or a Num Lock toggled back, a Shift let go), the next code of the same
    trigger pull 70 ms later: the pause since that key is between two scans, never inside the second."""
    keys = Keys().digits("96385074").enter().tap(extra).pause(0.07).digits("6901028075831").enter()
    assert _said(Decoder("dev").feed_all(_records(keys))) == [("Scan", "96385074", "", "dev"),
                                                              ("Scan", "6901028075831", "", "dev")]
