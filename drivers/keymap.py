"""The US keyboard layout, as a keyboard-wedge scanner types it: key code -> (plain, shifted).

Key codes are the kernel's own (``KEY_*`` from linux/input-event-codes.h).
Keypad keys type digits whatever the Shift state: scanners that send keypad
digits assume Num Lock, which the box has no console to toggle.
"""

from __future__ import annotations

from evdev import ecodes as e

US: dict[int, tuple[str, str]] = {
    e.KEY_1: ("1", "!"), e.KEY_2: ("2", "@"), e.KEY_3: ("3", "#"), e.KEY_4: ("4", "$"),
    e.KEY_5: ("5", "%"), e.KEY_6: ("6", "^"), e.KEY_7: ("7", "&"), e.KEY_8: ("8", "*"),
    e.KEY_9: ("9", "("), e.KEY_0: ("0", ")"),
    e.KEY_MINUS: ("-", "_"), e.KEY_EQUAL: ("=", "+"),
    e.KEY_LEFTBRACE: ("[", "{"), e.KEY_RIGHTBRACE: ("]", "}"), e.KEY_BACKSLASH: ("\\", "|"),
    e.KEY_SEMICOLON: (";", ":"), e.KEY_APOSTROPHE: ("'", '"'), e.KEY_GRAVE: ("`", "~"),
    e.KEY_COMMA: (",", "<"), e.KEY_DOT: (".", ">"), e.KEY_SLASH: ("/", "?"),
    e.KEY_SPACE: (" ", " "),
    e.KEY_KP0: ("0", "0"), e.KEY_KP1: ("1", "1"), e.KEY_KP2: ("2", "2"), e.KEY_KP3: ("3", "3"),
    e.KEY_KP4: ("4", "4"), e.KEY_KP5: ("5", "5"), e.KEY_KP6: ("6", "6"), e.KEY_KP7: ("7", "7"),
    e.KEY_KP8: ("8", "8"), e.KEY_KP9: ("9", "9"),
    e.KEY_KPMINUS: ("-", "-"), e.KEY_KPPLUS: ("+", "+"), e.KEY_KPASTERISK: ("*", "*"),
    e.KEY_KPSLASH: ("/", "/"), e.KEY_KPDOT: (".", "."),
}
for _letter in "abcdefghijklmnopqrstuvwxyz":
    US[getattr(e, f"KEY_{_letter.upper()}")] = (_letter, _letter.upper())
del _letter

SHIFT_KEYS = frozenset({e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT})
TERMINATORS = frozenset({e.KEY_ENTER, e.KEY_KPENTER})


def keystrokes(text: str, *, keypad_digits: bool = False) -> list[tuple[int, bool]]:
    """The (key code, shift) presses that type ``text`` on this layout: the inverse of ``US``."""
    strokes = []
    for char in text:
        if keypad_digits and char.isdigit():
            strokes.append((getattr(e, f"KEY_KP{char}"), False))
            continue
        for code, (plain, shifted) in US.items():
            if plain == char and code not in _KEYPAD:
                strokes.append((code, False))
                break
            if shifted == char and plain != shifted:
                strokes.append((code, True))
                break
        else:
            raise ValueError(f"character {char!r} cannot be typed on the US layout")
    return strokes


_KEYPAD = frozenset(
    code for code in US if e.KEY[code].startswith("KEY_KP")  # type: ignore[union-attr]
)
