"""Turn one scanner's key events into barcodes, and refuse what is not one.

A keyboard-wedge scanner types a barcode as key presses in its layout and
ends it with a terminator (Enter, by default). What goes wrong in the field,
and what this decoder does about it:

- characters are taken on key-down (value 1) only; autorepeat (2) and key-up
  (0) add nothing, and a key pressed again without its key-up in between is a
  second character, so "02422288" keeps its repeated digits;
- a device that sends only key-downs is noticed (a key pressed again with no
  key-up) and its modifiers then apply to one character each;
- CR+LF, or any empty line, ends nothing: a scan is booked once;
- a scan the decoder did not see whole is refused, never a barcode: after the
  kernel's SYN_DROPPED, everything up to and including the next terminator
  (or up to a pause) belongs to the broken scan; and when a live source is
  opened (``opened``), the burst already in progress (keys before the first
  pause longer than ``max_key_interval``) is one whose start was not seen.
  Events up to the SYN_REPORT after a drop are ignored and the key state is
  taken from the device (EVIOCGKEY), which takes back the key events waiting
  unread: a scan begun in that read, and the keys after it up to a quiet,
  are refused too;
- timing, from the kernel's own timestamps, tells a scanner's burst (a few ms
  per key) from a person typing (tens to hundreds of ms): a slow or broken
  burst is refused, never a barcode; a burst that stops without its
  terminator is refused at ``idle``;
- a dead key (an accent: German and French type ^ and ` as one, then Space)
  makes one character with the key after it, as X's Compose rules say, or
  the scan is refused; a scanner's "Alt mode" character (Alt held, its
  decimal code on the keypad) is that character at Alt's release, never its
  digits; a pause inside such a character, the first of a scan too, is a
  pause inside the scan: refused, and the rest of it with it;
- a scanner set to send the AIM symbology identifier (ISO/IEC 15424) types it
  before the code: "]E0" and the rest are the identifier and the code, as a
  HID POS scanner hands them over, so an EAN's check digit is still checked.

    decoder = Decoder("/dev/input/event3", DecoderSettings(layout="fr"))
    decoder.opened(time.time())        # a live device: its first burst may have begun before
    for event in events:
        result = decoder.feed(event)   # None, a Scan, or NotABarcode with the reason
    decoder.idle(time.time())          # when no event came for ``idle_after`` seconds

A reader hands over what one read of the device returned, as the kernel's own
records, and gets back what they ended; after a drop the decoder asks the
device which keys are down (EVIOCGKEY) itself:

    results = decoder.feed_all(records(data), held_keys=source.held_keys)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evdev import InputEvent, ecodes

from .barcode import AIM_ID, MAX_LENGTH, TOO_LONG
from .input_event import Record, record
from .keymap import Keymap, compose, load_keymap

logger = logging.getLogger(__name__)

KEY_UP, KEY_DOWN = 0, 1
_EV_SYN, _EV_KEY, _SYN_REPORT = ecodes.EV_SYN, ecodes.EV_KEY, ecodes.SYN_REPORT

DROPPED = "the kernel dropped events (SYN_DROPPED) inside this scan"
STARTED_UNSEEN = "the scan had begun before the scanner was opened"
CUT_OFF = "the scan stopped without its terminator"
CUT_OFF_TAIL = "the rest of a scan that had stopped without its terminator"
CLOCK_BACK = "the clock went back inside this scan: its keys' timing cannot be told"
TAKEN_BACK = "keys that came as the key state was read after a drop, which the kernel took back unread"
RESYNCED = ("a scan read with the key state the device gave after a drop, which is that of the read's end: a "
            "modifier it said was down (a Shift) may have been pressed after this scan")
ONE_KEY = "one key alone, with no terminator: a person's key press cannot be told from a scanner's"
NOTHING_BUT_AFFIXES = "nothing but the scanner's prefix or suffix"
TYPED_NOTHING = "keypad digits that typed nothing (Num Lock off)"
DEAD_KEY = "a dead key (an accent) with a key it makes nothing with: a character lost"
ALT_CODE = "an Alt and keypad code that makes no character"
CHARACTER_CUT = "the scan stopped inside a character: a dead key (an accent) or an Alt code, then nothing"
KEY_DOWN_ONLY = ("the scanner sends no key-ups, learned in this scan: a Shift pressed for one of its characters was "
                 "taken as held for those after it")
# After a scan stopped without its terminator, whatever follows up to the next terminator is its
# tail, however long the scanner paused, unless nothing at all comes for this long.
CUT_OFF_QUIET = 1.0  # seconds
# How far behind the last key's time stamp the clock ``idle`` is given may be (events stamped ahead of
# it, as a recording written at once) before the clock is taken to have been stepped back.
CLOCK_SLACK = 1.0  # seconds

# Control characters a barcode carries: GS1's group separator, and ISO/IEC 15434's record separator and
# end of transmission; every other one a key types is not part of a code.
_SEPARATORS = "\x1d\x1e\x04"
_KEYPAD_DIGITS = frozenset({*(getattr(ecodes, f"KEY_KP{digit}") for digit in range(10)), ecodes.KEY_KPDOT})
# A scanner's "Alt mode" types a character by its number: Alt held, its decimal code on the keypad, Alt
# released (Windows' rule: with a leading 0 the code is Windows-1252's, else the PC's code page 437).
_ALT_DIGITS = {getattr(ecodes, f"KEY_KP{digit}"): str(digit) for digit in range(10)}
_ALTS = frozenset({ecodes.KEY_LEFTALT, ecodes.KEY_RIGHTALT})
_CTRLS = frozenset({ecodes.KEY_LEFTCTRL, ecodes.KEY_RIGHTCTRL})

TERMINATOR_KEYS = {"enter": ecodes.KEY_ENTER, "kp_enter": ecodes.KEY_KPENTER, "tab": ecodes.KEY_TAB}
# Characters that end a barcode when their terminator is configured, however typed (Ctrl+M, Ctrl+J).
TERMINATOR_CHARS = {"enter": "\r\n", "kp_enter": "", "tab": "\t"}


@dataclass(frozen=True)
class DecoderSettings:
    """How one scanner types; every field is an `[scanner]` configuration key."""

    layout: str = "us"
    variant: str = ""
    numlock: bool = True  # keypad keys type digits: the box has no console to toggle Num Lock
    terminators: tuple[str, ...] = ("enter", "kp_enter")  # empty: a pause of idle_timeout ends a barcode
    idle_timeout: float = 0.1  # seconds
    prefix: str = ""  # stripped from the start of a barcode when present
    suffix: str = ""  # stripped from its end when present
    max_key_interval: float = 0.05  # seconds between key presses; slower is a person typing
    keypad: bool = False  # a numeric keypad, not a scanner: each key is taken alone (drivers.keypad)

    def __post_init__(self) -> None:
        unknown = set(self.terminators) - set(TERMINATOR_KEYS)
        if unknown:
            raise ValueError(f"unknown terminators {sorted(unknown)}; known: {', '.join(TERMINATOR_KEYS)}")
        if not (self.idle_timeout > 0 and self.max_key_interval > 0):  # NaN fails too
            raise ValueError("idle_timeout and max_key_interval must be more than 0 seconds")
        if not self.terminators and self.idle_timeout <= self.max_key_interval:
            # A pause a scanner makes between two keys of one barcode would end it: two codes, each part of one.
            raise ValueError(f"with no terminator a pause of idle_timeout ends a barcode: it must be longer than "
                             f"max_key_interval ({self.idle_timeout:g} s is not longer than {self.max_key_interval:g} s)")


@dataclass(frozen=True)
class Scan:
    """A barcode as the scanner typed it, with the kernel's timestamps."""

    text: str
    source: str
    started: float  # first key press, seconds (kernel time)
    finished: float  # terminator (or last key, when ended by a pause)
    slowest_key: float = 0.0  # longest gap between two key presses, seconds
    aim: str = ""  # AIM symbology identifier ("]E0", "]C1", ...) when the driver knows it


@dataclass(frozen=True)
class NotABarcode:
    """Key input that is not a barcode, and why; never a sale."""

    text: str
    source: str
    reason: str
    # What is left of ``text`` without the scanner's prefix, AIM identifier and suffix (those of it that are
    # there; none left of a text that is nothing but part of them): what the code itself may have been.
    bare: str | None = None
    of_a_control: bool = False  # what it lost can have been nothing but a control (a keypad types no product)

    @property
    def code_seen(self) -> str:
        return self.text if self.bare is None else self.bare


@dataclass
class Decoder:
    """Decoder state for one scanner: never shared between devices."""

    source: str
    settings: DecoderSettings = field(default_factory=DecoderSettings)
    keymap: Keymap | None = None
    key_down_only: bool = field(default=False, init=False)  # learned: the device sends no key-ups
    resync_pending: bool = field(default=False, init=False)  # the kernel dropped events: read the key state

    def __post_init__(self) -> None:
        self.keymap = self.keymap or load_keymap(self.settings.layout, self.settings.variant)
        self._state = self.keymap.new_state(numlock=self.settings.numlock)
        self._dead_keys = self.keymap.dead_keys  # (the US layout has none: no call per key to ask)
        # An Alt code is typed with Alt; where the right Alt key is AltGr, with the left one alone (Windows' rule).
        self._alts = frozenset({ecodes.KEY_LEFTALT}) if self.keymap.altgr else _ALTS
        self._terminator_codes = {TERMINATOR_KEYS[name] for name in self.settings.terminators}
        self._terminator_chars = "".join(TERMINATOR_CHARS[name] for name in self.settings.terminators)
        self._chars: list[str] = []
        self._times: list[float] = []
        # The longest time between two key presses (any key: a Shift, an Alt code's digits) up to each
        # character since the one before it, and since the last: a scanner's pace is per key, not per character.
        self._spans: list[float] = []
        self._span = 0.0
        self._last_press: float | None = None
        self._last_key = 0.0  # the last key event's time, pressed or released
        self._held: set[int] = set()  # non-modifier keys down
        self._reported: set[int] = set()  # of those, the ones the device said were down (resync), not yet seen
        self._sends_key_ups = False  # a key other than a modifier has been released: never key-down-only
        # The last key that typed nothing a barcode holds, since the last end: when, what it was, and whether it
        # is what is left of a scan refused already (an Alt released whose digits went with a drop or a cut).
        self._lost_key: tuple[float, str, bool] | None = None
        self._dead = ""  # a dead key typed, waiting for the key it makes a character with
        self._dead_at = 0.0
        self._alt_code = ""  # keypad digits typed while Alt is held: a character by its number
        self._alt_unseen = False  # Alt held through a drop: the digits before it are lost, and so its character
        self._mods_since_char: set[int] = set()
        # A character of the scan came with a modifier held from an earlier one: right only if the scanner
        # sends key-ups, so the scan is refused should it turn out to send none.
        self._held_over = False
        self._mods_held: set[int] = set()
        self._dropping = False
        # A scan not seen whole: why (None: none), what it typed, the last key-down in it.
        self._broken: str | None = None
        self._broken_text: list[str] = []
        self._broken_typed = False  # a key was pressed in it: refused as a scan (else nothing to say)
        self._broken_last: float | None = None  # None: the next key belongs to it, whenever it comes
        self._broken_since = 0.0
        self._broken_quiet = 0.0  # with no key in it yet: the quiet (seconds) that ends it

    # -- the event stream ---------------------------------------------------------

    @property
    def idle_after(self) -> float:
        """Seconds without an event after which ``idle`` should be called, while ``pending``."""
        if self.settings.terminators:
            return max(self.settings.idle_timeout, self.settings.max_key_interval)
        return self.settings.idle_timeout

    @property
    def pending(self) -> bool:
        """Part of a scan is held: ``idle`` will end it if nothing more comes."""
        return (bool(self._chars) or self._broken is not None or bool(self._dead or self._alt_code)
                or self._lost_key is not None)

    def opened(self, at: float, held: frozenset[int] | None = None) -> None:
        """A live source was opened at ``at``: keys before the first pause belong to a scan begun earlier.
        ``held``: the keys the device says are down (EVIOCGKEY), so that what is seen of that scan reads as
        it was typed (a Shift held over a run of capitals); None where the source cannot say."""
        if held is not None:
            self._reset_keys(held, keep_locks=True)
        self._broken_start(STARTED_UNSEEN, at, last=at)

    def feed(self, event: InputEvent) -> Scan | NotABarcode | None:
        """One event; after a drop, ``resync_pending`` says the caller is to ``resync`` before the next."""
        results = self.feed_all([record(event)])
        return results[0] if results else None

    def feed_all(self, records: Iterable[Record], *,
                 held_keys: Callable[[], frozenset[int] | None] | None = None) -> list[Scan | NotABarcode]:
        """Feed ``records`` in order; what they ended, in order.

        ``held_keys`` asks the device which keys are down (EVIOCGKEY; None where it cannot say):
        the decoder takes its key state from it as soon as a drop is over. Without it,
        ``resync_pending`` is left for the caller (one event at a time, as ``feed``).
        """
        results = []
        asked = False  # the device was asked for its keys during this read
        held: frozenset[int] = frozenset()
        # The device said a modifier was down: that of the read's end, applied from the drop on. A scan that ends
        # in the rest of the read was read with it (a Shift for the next scan's capital would shift it); a
        # digit held changes no other key's character.
        doubtful = False
        sec = usec = 0
        # The scan path: a scan is some 80 records, most of them SYN_REPORTs and scan codes that say
        # nothing a key event does not; they are passed over here without a call.
        for sec, usec, type_, code, value in records:
            if type_ == _EV_KEY:
                if self._dropping or (value != KEY_DOWN and value != KEY_UP):
                    continue
                t = sec + usec / 1000000.0
                if value == KEY_DOWN and (self._broken is not None or (self._chars and not self._terminator_codes)
                                          or self._dead or self._alt_code or self._lost_key is not None):
                    # A pause ends what came before: a broken scan, or (keys read late, together) one idle
                    # would have ended had the reader been on time. (Asked only then: most keys are neither.)
                    ended = self._pause(t)
                    if ended is not None:
                        results.append(_resynced(ended) if doubtful else ended)
                result = self._key(code, value == KEY_DOWN, t)
            elif type_ == _EV_SYN:
                if code == _SYN_REPORT and not self._dropping:
                    continue
                result = self._syn(code, sec + usec / 1000000.0)
                if self.resync_pending and held_keys is not None:
                    told = held_keys()
                    asked = asked or told is not None
                    held = told if told is not None else frozenset()
                    doubtful = doubtful or any(self._state.is_modifier(code) for code in held)
                    self.resync(held)
                    # The device was asked now, after all of this read was taken from the kernel: a key it
                    # says is down may have its key-down still ahead here. That press is the one the device
                    # reported, not a second one (which would teach key-down-only).
                    self._reported = self._held | self._mods_held
                    logger.warning("scanner %s: the kernel dropped events; key state %s", self.source,
                                   "read from the device" if held is not None else "reset (the source cannot be asked)")
            else:
                continue  # EV_MSC scan codes, LEDs, ...: the key events say it all
            if result is not None:
                results.append(_resynced(result) if doubtful else result)
        if self._reported:
            self._reported.clear()  # a later read's key-down of a key held since is pressed again
        if asked:
            # The device's answer is newer than the rest of this read: a modifier pressed there whose
            # release the kernel took back is up, not held over the next scan (which it would shift).
            self._reset_keys(held, keep_locks=True)
            self._taken_back(sec + usec / 1000000.0)  # as of the read's last record
        return results

    def _taken_back(self, t: float) -> None:
        """The device was asked for its keys (EVIOCGKEY) after a drop: the kernel then takes back the key
        events that came after this read and were waiting to be read. Unseen, they may hold a scan's
        first keys, the middle of one begun in this read, or a whole one's end: that scan, and the next
        key whenever it comes before a quiet, belong to a scan not seen whole."""
        if self._broken is not None:
            self._broken_last = None
        else:
            partial = self._take()  # a scan begun in this read: its later keys may be among those taken back
            self._broken_start(TAKEN_BACK, t, last=None)
            self._broken_text, self._broken_typed = list(partial), bool(partial)

    def _key(self, code: int, down: bool, t: float) -> Scan | NotABarcode | None:
        self._last_key = t
        if down:
            last = self._last_press
            if last is not None and t - last > self._span and (
                    self._chars or self._first_character_cut or (self._mods_held and t - last <= self.idle_after)):
                # Before the first character, only a pause inside a character under way (an accent, an Alt code,
                # a Shift held for it) or after one lost is the scan's; one after a key that typed nothing a code
                # holds (a Tab or an arrow a scanner sends after its Enter) is between two scans.
                self._span = t - last
            self._last_press = t
        if self._state.is_modifier(code):
            self._modifier(code, down)
            if down and self._broken is not None:
                self._broken_last = t
            if not down and code in self._alts and self._alt_unseen:
                # Its first digits went with a drop: the rest make another character (a CR that would
                # end the broken scan early, the rest of it then booked as a code of its own).
                self._alt_unseen, self._alt_code = False, ""
                if self._broken is not None:
                    self._broken_last, self._broken_typed = t, True
                self._lost(t, ALT_CODE, left_over=True)
                return None
            if not down and code in self._alts and self._alt_code:
                char = _alt_character(self._alt_code)
                self._alt_code = ""
                terminator = bool(char) and char in self._terminator_chars
                if not char or not (terminator or char.isprintable() or char in _SEPARATORS):
                    self._lost(t, ALT_CODE)  # a control character a code does not carry, typed as a number
                    return None
                return self._typed(code, char, t, terminator)
            return None
        if not down:  # (only modifiers and locks change the key state: nothing to tell it)
            self._held.discard(code)
            self._sends_key_ups = True
            return None
        if code in self._held and not self.key_down_only:
            if code in self._reported:  # the press the device said was down: pressed once
                self._reported.discard(code)
            elif not self._sends_key_ups:
                # Pressed again while down: a scanner that sends no key-ups (one that has sent some lost
                # one, and its Shift held over several characters stays held).
                self._learn_key_down_only()
        self._held.add(code)
        if self._broken is not None:
            self._broken_last, self._broken_typed = t, True
        terminator = code in self._terminator_codes
        char = ""
        if not terminator:
            if code in _ALT_DIGITS and not self._mods_held.isdisjoint(self._alts) and self._mods_held.isdisjoint(_CTRLS):
                self._alt_code += _ALT_DIGITS[code]  # the character comes at Alt's release
                if self.key_down_only:
                    self._mods_since_char.clear()
                return None
            dead = self._state.dead(code) if self._dead_keys else ""
            char = "" if dead else self._state.text(code)
            if self.key_down_only:
                self._release_modifiers()
            elif (char or not dead) and not self._mods_held <= self._mods_since_char:
                # (A key that typed nothing too: a digit read as Ctrl+2 is lost should the Ctrl not be held.)
                self._held_over = True
            self._mods_since_char.clear()
            if self._dead and t - self._dead_at > self.settings.max_key_interval:
                # A scanner's pause inside the character: the accent never made its character. (One long
                # enough for ``idle`` was refused by it, or by ``_pause`` in a read behind.)
                self._dead = ""
                self._lost(t, DEAD_KEY)
            if self._dead:
                char = compose(self._dead, char, again=dead == self._dead)
                self._dead = ""
                if not char:
                    self._lost(t, DEAD_KEY)
                    return None
            elif dead:
                self._dead, self._dead_at = dead, t  # its character comes with the next key
                return None
            terminator = bool(char) and char in self._terminator_chars
        return self._typed(code, char, t, terminator)

    def _lost(self, t: float, reason: str, *, left_over: bool = False) -> None:
        """A key that was to type a character of the code typed none: the scan it is in is refused
        (a broken scan is refused already)."""
        if self._broken is None:
            self._lost_key = (t, reason, left_over)

    def _typed(self, code: int, char: str, t: float, terminator: bool) -> Scan | NotABarcode | None:
        printable = bool(char) and (char.isprintable() or char in _SEPARATORS)
        if self._broken is not None:
            self._broken_last = t
            self._broken_typed = True
            if terminator:
                return self._end_broken()
            if printable and len(self._broken_text) < MAX_LENGTH:
                self._broken_text.append(char)
            return None
        if terminator:
            return self._finish(t)
        if printable:
            if len(self._chars) == MAX_LENGTH:  # (what comes past it is not held: a stuck scanner's is endless)
                self._lost(t, TOO_LONG)
                return None
            self._chars.append(char)
            self._times.append(t)
            self._spans.append(self._span)
            self._span = 0.0
        elif code in _KEYPAD_DIGITS:  # a digit lost (Num Lock off): unlike an arrow or an F-key, part of the code
            self._lost(t, TYPED_NOTHING)
        return None

    def _syn(self, code: int, t: float) -> NotABarcode | None:
        if code == ecodes.SYN_DROPPED:
            self._dropping = True
            if self._broken is not None:
                # Quiet from now on ends it (a scan's pause, also in the tail of one cut off: what the
                # drop broke follows at once); until then the next key belongs to it.
                self._broken, self._broken_since, self._broken_last = DROPPED, t, None
                self._broken_quiet = self.settings.max_key_interval
                return None
            partial = self._take()
            self._broken_start(DROPPED, t, last=None)
            self._broken_text = list(partial)
            self._broken_typed = bool(partial)
            return None
        if code == ecodes.SYN_REPORT and self._dropping:
            self._dropping = False
            self.resync_pending = True  # the reader answers with resync(the device's held keys)
        return None

    def _modifier(self, code: int, down: bool) -> None:
        if down and code in self._mods_held:
            # Pressed again with no key-up: xkb would count it twice and hold it after one release. On a
            # device that sends no key-ups it is pressed for the next character all the same; one that has
            # sent none yet is such a device (unless this is the press the device reported after a drop).
            self._mods_since_char.add(code)
            if code in self._reported:
                self._reported.discard(code)
            elif not self._sends_key_ups and not self.key_down_only:
                self._learn_key_down_only()
            return
        self._state.update(code, down=down)
        if down:
            self._mods_held.add(code)
            self._mods_since_char.add(code)
        else:
            self._mods_held.discard(code)

    def _learn_key_down_only(self) -> None:
        # Modifiers pressed before the previous character were meant for it alone.
        self.key_down_only = True
        for code in self._mods_held - self._mods_since_char:
            self._state.update(code, down=False)
            self._mods_held.discard(code)
        if self._held_over and self._times:
            self._lost(self._times[0], KEY_DOWN_ONLY)  # a character of it already read with such a modifier

    def _release_modifiers(self) -> None:
        for code in self._mods_held:
            self._state.update(code, down=False)
        self._mods_held.clear()

    # -- ends of a barcode --------------------------------------------------------

    def idle(self, now: float) -> Scan | NotABarcode | None:
        """Called when no event has arrived for ``idle_after`` seconds (``now``: the kernel's clock).

        With no terminator configured, a pause ends the barcode; with one, a burst that
        stopped without it is refused; and a pause ends a broken scan, refused.
        """
        # A clock stepped back since the last key (``now`` well before it) is a pause of unknown length:
        # never a reason to hold part of a scan, to which the next scan would then be joined.
        if self._dropping:
            return None  # the drop's report is still to come (a pipe that split the records): the scan goes on
        if self._broken is not None:
            if self._broken_last is not None:
                quiet = not -CLOCK_SLACK <= now - self._broken_last <= self._broken_pause
            else:
                quiet = not -CLOCK_SLACK <= now - self._broken_since <= self._broken_quiet
            return self._end_broken(cut_at=now) if quiet else None
        if not self._chars:
            if not -CLOCK_SLACK <= now - self._last_key <= self.idle_after:
                if self._first_character_cut:
                    return self._cut_in_first_character(now)
                self._lost_key = None  # what was left of a refused scan: the next, after this pause, is its own
            return None
        if not self.settings.terminators:
            return self._finish(self._times[-1])
        if not -CLOCK_SLACK <= now - self._times[-1] <= self.idle_after:
            # Refused now (the retailer hears it at once); its tail, should the scanner go on,
            # is refused too, up to the terminator: never booked as a code of its own.
            head = self._refused(self._take(), CUT_OFF)
            self._broken_start(CUT_OFF_TAIL, now, last=None, quiet=CUT_OFF_QUIET)
            return head
        return None

    def ended(self) -> Scan | NotABarcode | None:
        """The source ended (a recording's last event read): what it holds ends as a long pause after its
        last event would end it, by the recording's own times (a scan without a terminator configured is
        finished; one that stopped without its terminator, or a broken one, is refused)."""
        last = max([self._last_key, self._broken_since, self._broken_last or 0.0, *self._times[-1:]])
        self._dropping = False  # its report never comes
        return self.idle(last + max(self.idle_after, CUT_OFF_QUIET) + 1.0)

    @property
    def _first_character_cut(self) -> bool:
        """No character yet, and one under way (an accent, an Alt code) or lost: a pause now cuts a scan."""
        return bool(self._dead or self._alt_code) or (self._lost_key is not None and not self._lost_key[2])

    def _cut_in_first_character(self, at: float) -> NotABarcode:
        """A dead key or Alt code began a scan's first character, or a key typed none, then a pause as long as
        ends a scan: refused (the character never came), and, with a terminator, what the scanner types on is
        its tail (else the rest of the code, its first character lost, would be booked: "e96385074" for
        "ê96385074")."""
        reason = self._lost_key[1] if self._lost_key is not None else CHARACTER_CUT
        self._take()
        if self._terminator_codes:
            self._broken_start(CUT_OFF_TAIL, at, last=None, quiet=CUT_OFF_QUIET)
        return self._refused("", reason)

    def _broken_start(self, reason: str, t: float, *, last: float | None, quiet: float | None = None) -> None:
        self._broken, self._broken_since, self._broken_last = reason, t, last
        self._broken_quiet = self.settings.max_key_interval if quiet is None else quiet
        self._broken_text, self._broken_typed = [], False

    def _pause(self, t: float) -> Scan | NotABarcode | None:
        """A key pressed at ``t``: a pause before it ends a broken scan (what follows is a new burst, seen
        from its start). With no terminator, a pause ends a barcode, and the keys of one read (the reader
        behind) carry their own times: a pause among them ends it as ``idle`` would have, never joined to
        the next. (With a terminator, a burst joined so holds a pause no scanner makes: refused.)"""
        if self._broken is None:
            # From the last key event, not the last character: a character may take several keys.
            if not self._chars and t - self._last_key > self.idle_after and self._first_character_cut:
                ended = self._cut_in_first_character(self._last_key)
                self._tail_over(t)
                return ended
            if not self.settings.terminators and self._chars and t - self._last_key > self.idle_after:
                return self._finish(self._times[-1])
            return None
        if self._broken_last is not None and t - self._broken_last > self._broken_pause:
            ended = self._end_broken(cut_at=self._broken_last)
            self._tail_over(t)
            return ended
        self._tail_over(t)
        return None

    def _tail_over(self, t: float) -> None:
        """A tail that never came, its quiet over before the key at ``t`` (read late, or from a recording,
        where no idle was asked between): the key begins a scan of its own."""
        if self._broken == CUT_OFF_TAIL and self._broken_last is None and t - self._broken_since > self._broken_quiet:
            self._end_broken()  # nothing of it was typed: nothing to say

    @property
    def _broken_pause(self) -> float:
        """The pause that ends a broken scan: once it has typed keys, one a whole scan is refused for (up to
        idle_after) goes on with it to its terminator (ended sooner, its tail would be read as a scan of its
        own); before any, a scanner's pace (a scan begun after the open, seen from its start, is whole)."""
        return self.idle_after if self._broken_typed else self.settings.max_key_interval

    def _end_broken(self, *, cut_at: float | None = None) -> NotABarcode | None:
        """End the broken scan: at its terminator, or (``cut_at``) by a pause without it. Then, as for a scan
        seen whole that stopped without its terminator, what the scanner types on within CUT_OFF_QUIET is its
        tail, refused too: a pause inside a scan cannot be told from one after it, and a tail booked is a
        wrong sale, a real scan refused only one to scan again."""
        reason, typed, text = self._broken, self._broken_typed, "".join(self._broken_text)
        self._broken, self._broken_text, self._broken_typed, self._broken_last = None, [], False, None
        self._held_over = False  # of the broken scan's characters: none of the next scan's
        self._forget_character()  # a key of the broken scan's waits for nothing of the next
        self._span, self._last_press = 0.0, None
        if typed and cut_at is not None and self._terminator_codes:
            self._broken_start(CUT_OFF_TAIL, cut_at, last=None, quiet=CUT_OFF_QUIET)
        # A drop lost events the scanner sent, though nothing of them was seen: a whole scan, maybe, or
        # a digit of a number being keyed. Said, so the counter refuses what it could have been part of.
        return self._refused(text, reason) if typed or reason == DROPPED else None

    def _finish(self, t: float) -> Scan | NotABarcode | None:
        if self._dead or self._alt_code:  # a dead key or an Alt code, then the end: its character never came
            self._lost(t, DEAD_KEY if self._dead else ALT_CODE)
        if len(self._chars) > 1 and not self._sends_key_ups and not self.key_down_only:
            # Two characters or more and no key released by the end: a scanner that sends no key-ups (one that
            # sends them has let go of the first character's key before the terminator).
            self._learn_key_down_only()
        lost, self._lost_key = self._lost_key, None
        first = self._times[0] if self._times else t
        # (After the last character, too: a pause that ends a scan comes after its last key.)
        if lost is not None and first - self.settings.max_key_interval <= lost[0]:
            # Keys that typed nothing, in this scan or all of it (keypad digits with Num Lock off, a dead
            # key's character never made): a code with characters lost is no code, and a scan of nothing
            # but them is said as such, never silence.
            return self._refused(self._take(), lost[1])
        if not self._chars:
            self._span, self._last_press = 0.0, None
            return None  # an empty line: the LF of CR+LF, or a stray Enter
        times = self._times[:]
        # From key press to key press, from the scan's first key (a dead key, Alt, a Shift) to the terminator's
        # (``t``; none after the last character when a pause ended the scan): one character and Enter typed by
        # a person are two keys at a person's pace; a character typed in Alt mode is five keys at a scanner's.
        gaps = self._spans + [self._span if t > times[-1] else 0.0]
        text = self._take()
        slowest = max(gaps)
        if min(b - a for a, b in zip(times, times[1:] + [t])) < 0:
            return self._refused(text, CLOCK_BACK)
        if slowest > self.settings.max_key_interval:
            between = sorted(gaps[1:] or gaps)  # (the pace: from character to character)
            median = between[len(between) // 2]
            return self._refused(
                text,
                f"typed, not scanned: {median * 1000:.0f} ms per key (median), a pause of {slowest * 1000:.0f} ms; "
                f"a scanner types faster than {self.settings.max_key_interval * 1000:.0f} ms per key",
            )
        if len(times) == 1 and not self.settings.terminators:
            return self._refused(text, ONE_KEY)
        whole = text
        if self.settings.prefix and text.startswith(self.settings.prefix):
            text = text[len(self.settings.prefix):]
        if self.settings.suffix and text.endswith(self.settings.suffix):
            text = text[: -len(self.settings.suffix)]
        aim = text[:3] if AIM_ID.match(text) else ""
        if not text[len(aim):]:
            return NotABarcode(whole, self.source, NOTHING_BUT_AFFIXES)
        return Scan(text[len(aim):], self.source, times[0], t, slowest, aim)

    def _take(self) -> str:
        text = "".join(self._chars)
        self._chars.clear()
        self._times.clear()
        self._spans.clear()
        self._span, self._last_press = 0.0, None  # the next scan's first key: no pause before it is the scan's
        self._lost_key = None
        self._forget_character()
        self._held_over = False
        return text

    def _forget_character(self) -> None:
        """Drop a character under way. An Alt code's digits dropped while Alt is still held: the digits typed
        after them make no character of their own (a CR of "13", the rest of "0113", would end a scan)."""
        if self._alt_code and not self._mods_held.isdisjoint(self._alts):
            self._alt_unseen = True
        self._dead = self._alt_code = ""

    # -- the device ---------------------------------------------------------------

    def resync(self, held: frozenset[int]) -> None:
        """Take the key state from the device (EVIOCGKEY) after SYN_DROPPED, rather than guess it.

        Caps Lock and Num Lock stay as they were: the device says which keys are down, not what the
        locks are (the host keeps them, and a grabbed scanner's LEDs say nothing)."""
        self.resync_pending = False
        self._reset_keys(held, keep_locks=True)

    def _reset_keys(self, held: frozenset[int], *, keep_locks: bool) -> None:
        self._state.reset(held=held, keep_locks=keep_locks)
        self._held = {code for code in held if not self._state.is_modifier(code)}
        self._mods_held = {code for code in held if self._state.is_modifier(code)}
        self._mods_since_char.clear()
        self._dead = self._alt_code = ""
        self._alt_unseen = not self._mods_held.isdisjoint(self._alts)

    def _refused(self, text: str, reason: str) -> NotABarcode:
        return NotABarcode(text, self.source, reason, bare=self.bare(text))

    def bare(self, text: str) -> str:
        """``text`` (a scan refused, perhaps cut short at either end) without the prefix, AIM identifier and
        suffix the scanner types around a code, those of them it holds; "" when it holds nothing but (a part
        of) them. A control cut short is then seen as one with them as without."""
        prefix, suffix = self.settings.prefix, self.settings.suffix
        if prefix:
            if text.startswith(prefix):
                text = text[len(prefix):]
            elif prefix.startswith(text):
                return ""
        if AIM_ID.match(text):
            text = text[3:]
        elif text == "]" or AIM_ID.match(text + "0"):
            return ""
        if suffix:
            if text.endswith(suffix):
                text = text[:-len(suffix)]
            elif suffix.endswith(text):
                return ""
        return text

    def unplugged(self) -> str | None:
        """The device went away: drop the partial barcode (returned, to be refused: empty when the kernel's
        drop lost all of it) and all key state; None when no scan was under way."""
        partial = "".join(self._broken_text) + self._take()
        # As the scan's own end would say (_end_broken): what it typed, or a drop, which may have lost a
        # whole scan; a cut scan's tail that never came is nothing.
        under_way = bool(partial) or self._broken_typed or self._broken == DROPPED or self._dropping
        self._broken, self._broken_text, self._broken_typed, self._broken_last = None, [], False, None
        self._dropping = False
        self.resync_pending = False
        self._reset_keys(frozenset(), keep_locks=False)
        return partial if under_way else None


def _resynced(result: Scan | NotABarcode) -> Scan | NotABarcode:
    return NotABarcode(result.text, result.source, RESYNCED) if isinstance(result, Scan) else result


def _alt_character(digits: str) -> str:
    """The character an Alt and keypad code types, by Windows' rule; "" for none (0, or a byte
    Windows-1252 leaves undefined)."""
    number = int(digits) % 256
    if not number:
        return ""
    try:
        return bytes([number]).decode("cp1252" if digits.startswith("0") else "cp437")
    except UnicodeDecodeError:
        return ""
