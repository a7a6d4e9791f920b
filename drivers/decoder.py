"""Turn a scanner's key events into barcode text.

A keyboard-wedge scanner types a barcode as key presses and ends it with Enter.
Characters are taken on key-down (value 1) only; autorepeat (value 2) and
key-up (value 0) add nothing, so a repeated digit is two presses, never one
held key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evdev import InputEvent, ecodes

from .keymap import SHIFT_KEYS, TERMINATORS, US

KEY_DOWN = 1


@dataclass(frozen=True)
class Scan:
    """What the scanner typed between two terminators, with the kernel's timestamps."""

    text: str
    source: str
    started: float  # kernel time of the first key press, seconds
    finished: float  # kernel time of the terminator


@dataclass
class Decoder:
    """Decoder state for one scanner: never shared between devices."""

    source: str
    keymap: dict[int, tuple[str, str]] = field(default_factory=lambda: US)
    _chars: list[str] = field(default_factory=list)
    _shift: set[int] = field(default_factory=set)
    _started: float = 0.0

    def feed(self, event: InputEvent) -> Scan | None:
        if event.type != ecodes.EV_KEY:
            return None
        if event.code in SHIFT_KEYS:
            if event.value == KEY_DOWN:
                self._shift.add(event.code)
            elif event.value == 0:
                self._shift.discard(event.code)
            return None
        if event.value != KEY_DOWN:
            return None
        if event.code in TERMINATORS:
            if not self._chars:
                return None
            scan = Scan("".join(self._chars), self.source, self._started, event.timestamp())
            self._chars.clear()
            return scan
        chars = self.keymap.get(event.code)
        if chars is None:
            return None
        if not self._chars:
            self._started = event.timestamp()
        self._chars.append(chars[1] if self._shift else chars[0])
        return None

    def reset(self) -> str:
        """Drop a partial barcode (the scanner went away mid-scan); return what was dropped."""
        partial = "".join(self._chars)
        self._chars.clear()
        self._shift.clear()
        return partial
