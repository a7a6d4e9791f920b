"""A USB numeric keypad at the counter: each key press is one key, never part of a barcode.

A shop that has a keypad keys quantities and prices on it instead of scanning
digits off the control sheet. It is read like a scanner (the kernel's
input_event records, grabbed), but its keys are taken one by one, by their
key codes, whatever Num Lock says, and a person's pace is its normal pace:

    keypad = Keypad("/dev/input/event5")
    for event in events:
        result = keypad.feed(event)    # None, a Keypress("7"), or NotABarcode after a drop
    keypad.feed_all(records)           # a read's records at once: the scanner manager's way

Keys: ``0``-``9`` and ``.`` (the keypad's, or the main row's), ``*``, ``/``,
``-``, ``+``, ``enter``, and ``cancel`` (Backspace, Delete or Escape). What
each means at the counter is the counter's business (``agent.controls``).
Keys lost to the kernel's SYN_DROPPED are a NotABarcode: the number being
keyed is not what was typed, and the counter refuses it whole.

It offers the decoder's interface (``opened``, ``idle``, ``pending``,
``resync``, ``unplugged``), so the scanner manager reads both alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from evdev import InputEvent, ecodes

from .decoder import DROPPED, KEY_DOWN, NotABarcode
from .input_event import Record, record

KEYS: dict[int, str] = {
    **{getattr(ecodes, f"KEY_KP{n}"): str(n) for n in range(10)},
    **{getattr(ecodes, f"KEY_{n}"): str(n) for n in range(10)},
    ecodes.KEY_KPDOT: ".", ecodes.KEY_DOT: ".", ecodes.KEY_KPCOMMA: ".",
    ecodes.KEY_KPASTERISK: "*", ecodes.KEY_KPSLASH: "/", ecodes.KEY_KPMINUS: "-", ecodes.KEY_KPPLUS: "+",
    ecodes.KEY_KPENTER: "enter", ecodes.KEY_ENTER: "enter",
    ecodes.KEY_BACKSPACE: "cancel", ecodes.KEY_DELETE: "cancel", ecodes.KEY_ESC: "cancel",
}


@dataclass(frozen=True)
class Keypress:
    """One key of a keypad, pressed at ``at`` (kernel time)."""

    key: str
    source: str
    at: float


@dataclass
class Keypad:
    source: str
    resync_pending: bool = False  # never: a key is whole in its one event
    _dropping: bool = False

    idle_after = 1.0
    pending = False

    def opened(self, at: float, held: frozenset[int] | None = None) -> None:
        """Nothing to refuse: a key pressed before the keypad was opened is one key, seen whole or not at all."""

    def feed(self, event: InputEvent) -> Keypress | NotABarcode | None:
        results = self.feed_all([record(event)])
        return results[0] if results else None

    def feed_all(self, records: Iterable[Record], *,
                 held_keys: Callable[[], frozenset[int] | None] | None = None) -> list[Keypress | NotABarcode]:
        """Feed ``records`` in order; the keys they pressed, in order (``held_keys``: unused, a key has no state)."""
        results: list[Keypress | NotABarcode] = []
        for sec, usec, type_, code, value in records:
            if type_ == ecodes.EV_SYN:
                if code == ecodes.SYN_DROPPED:
                    self._dropping = True
                    # A keypad types nothing but the sheet's controls: what the drop lost was one of them.
                    results.append(NotABarcode("", self.source, DROPPED, of_a_control=True))
                elif code == ecodes.SYN_REPORT:
                    self._dropping = False
            elif type_ == ecodes.EV_KEY and value == KEY_DOWN and not self._dropping:
                key = KEYS.get(code)
                if key:
                    results.append(Keypress(key, self.source, sec + usec / 1000000.0))
            # else key-ups, autorepeat, what came with a drop
        return results

    def idle(self, now: float) -> None:
        return None

    def ended(self) -> None:
        return None

    def resync(self, held: frozenset[int]) -> None:
        self.resync_pending = False

    def unplugged(self) -> str:
        return ""
