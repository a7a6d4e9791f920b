"""Keyboard layouts: what a key press types, given the device's modifier and lock state.

A keyboard-wedge scanner types a barcode in the layout it is set to (US by
default, German or French in shops that set it so). libxkbcommon, with the
layouts of xkeyboard-config, knows every layout without X; the plain US
table below is the fallback where it is absent.

    keymap = load_keymap("de")
    state = keymap.new_state(numlock=True)   # one per device, never shared
    state.update(ecodes.KEY_LEFTSHIFT, down=True)
    state.text(ecodes.KEY_2)                 # '"'

Key codes are the kernel's own (``KEY_*``, linux/input-event-codes.h); xkb
numbers keys 8 higher, for historical X11 reasons.
"""

from __future__ import annotations

import logging
from typing import Protocol

from evdev import ecodes as e

from .errors import KeymapError

logger = logging.getLogger(__name__)

_XKB_OFFSET = 8


class KeyState(Protocol):
    def update(self, code: int, *, down: bool) -> None: ...
    def text(self, code: int) -> str: ...
    def is_modifier(self, code: int) -> bool: ...
    def reset(self, *, held: frozenset[int] = frozenset()) -> None: ...


class Keymap(Protocol):
    name: str

    def new_state(self, *, numlock: bool = True) -> KeyState: ...


# -- libxkbcommon -----------------------------------------------------------------

_MODIFIERS = frozenset({
    e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL, e.KEY_LEFTALT, e.KEY_RIGHTALT,
    e.KEY_LEFTMETA, e.KEY_RIGHTMETA, e.KEY_CAPSLOCK, e.KEY_NUMLOCK, e.KEY_SCROLLLOCK,
})
_LOCKS = (e.KEY_CAPSLOCK, e.KEY_NUMLOCK)


class XkbKeymap:
    def __init__(self, layout: str, variant: str = ""):
        from xkbcommon import xkb

        self._xkb = xkb
        self.name = f"{layout}({variant})" if variant else layout
        try:
            self._keymap = xkb.Context().keymap_new_from_names(layout=layout, variant=variant or None)
        except xkb.XKBKeymapCompileError:
            raise KeymapError(f"keyboard layout {self.name!r} is not known to xkeyboard-config") from None

    def new_state(self, *, numlock: bool = True) -> "XkbState":
        return XkbState(self, numlock)


class XkbState:
    """One device's modifier and lock state in its layout.

    Only modifier and lock keys change what a key types, so only they are fed to xkb; the
    text of each key is remembered until a modifier or lock changes (a barcode of digits
    then costs no call into libxkbcommon per key).
    """

    def __init__(self, keymap: XkbKeymap, numlock: bool):
        self._keymap = keymap
        self._numlock = numlock
        self._texts: dict[int, str] = {}
        self.reset()

    def reset(self, *, held: frozenset[int] = frozenset()) -> None:
        """Start from no keys down (Num Lock as configured), then press what ``held`` says is down now."""
        self._texts = {}
        self._state = self._keymap._keymap.state_new()
        if self._numlock:
            self._tap(e.KEY_NUMLOCK)
        for code in held & _MODIFIERS:
            if code not in _LOCKS:
                self.update(code, down=True)

    def _tap(self, code: int) -> None:
        self.update(code, down=True)
        self.update(code, down=False)

    def update(self, code: int, *, down: bool) -> None:
        if code not in _MODIFIERS:
            return  # an ordinary key changes no modifier or lock: nothing for xkb to track
        xkb = self._keymap._xkb
        self._state.update_key(code + _XKB_OFFSET, xkb.XKB_KEY_DOWN if down else xkb.XKB_KEY_UP)
        self._texts = {}

    def text(self, code: int) -> str:
        text = self._texts.get(code)
        if text is None:
            text = self._texts[code] = self._state.key_get_string(code + _XKB_OFFSET)
        return text

    def is_modifier(self, code: int) -> bool:
        return code in _MODIFIERS


# -- the plain US table (fallback) -------------------------------------------------

US: dict[int, tuple[str, str]] = {
    e.KEY_1: ("1", "!"), e.KEY_2: ("2", "@"), e.KEY_3: ("3", "#"), e.KEY_4: ("4", "$"),
    e.KEY_5: ("5", "%"), e.KEY_6: ("6", "^"), e.KEY_7: ("7", "&"), e.KEY_8: ("8", "*"),
    e.KEY_9: ("9", "("), e.KEY_0: ("0", ")"),
    e.KEY_MINUS: ("-", "_"), e.KEY_EQUAL: ("=", "+"),
    e.KEY_LEFTBRACE: ("[", "{"), e.KEY_RIGHTBRACE: ("]", "}"), e.KEY_BACKSLASH: ("\\", "|"),
    e.KEY_SEMICOLON: (";", ":"), e.KEY_APOSTROPHE: ("'", '"'), e.KEY_GRAVE: ("`", "~"),
    e.KEY_COMMA: (",", "<"), e.KEY_DOT: (".", ">"), e.KEY_SLASH: ("/", "?"),
    e.KEY_SPACE: (" ", " "), e.KEY_ENTER: ("\r", "\r"), e.KEY_KPENTER: ("\r", "\r"), e.KEY_TAB: ("\t", "\t"),
    e.KEY_KPMINUS: ("-", "-"), e.KEY_KPPLUS: ("+", "+"), e.KEY_KPASTERISK: ("*", "*"), e.KEY_KPSLASH: ("/", "/"),
}
for _letter in "abcdefghijklmnopqrstuvwxyz":
    US[getattr(e, f"KEY_{_letter.upper()}")] = (_letter, _letter.upper())
_KEYPAD_DIGITS = {getattr(e, f"KEY_KP{d}"): str(d) for d in range(10)}
_KEYPAD_DIGITS[e.KEY_KPDOT] = "."
# What Ctrl with these keys types: the control characters GS1 element strings use (GS is Ctrl+]).
_CONTROL = {e.KEY_RIGHTBRACE: "\x1d", e.KEY_LEFTBRACE: "\x1b", e.KEY_BACKSLASH: "\x1c", e.KEY_J: "\n", e.KEY_M: "\r"}
_SHIFTS = frozenset({e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT})
_CTRLS = frozenset({e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL})


class UsTable:
    name = "us (built-in table)"

    def new_state(self, *, numlock: bool = True) -> "UsTableState":
        return UsTableState(numlock)


class UsTableState:
    def __init__(self, numlock: bool):
        self._initial_numlock = numlock
        self.reset()

    def reset(self, *, held: frozenset[int] = frozenset()) -> None:
        self._down = set(held & (_SHIFTS | _CTRLS))
        self._capslock = False
        self._numlock = self._initial_numlock

    def update(self, code: int, *, down: bool) -> None:
        if code in _SHIFTS or code in _CTRLS:
            (self._down.add if down else self._down.discard)(code)
        elif down and code == e.KEY_CAPSLOCK:
            self._capslock = not self._capslock
        elif down and code == e.KEY_NUMLOCK:
            self._numlock = not self._numlock

    def text(self, code: int) -> str:
        if self._down & _CTRLS:
            return _CONTROL.get(code, "")
        if code in _KEYPAD_DIGITS:
            return _KEYPAD_DIGITS[code] if self._numlock else ""
        chars = US.get(code)
        if chars is None:
            return ""
        shifted = bool(self._down & _SHIFTS)
        if chars[0].isalpha() and self._capslock:
            shifted = not shifted
        return chars[1] if shifted else chars[0]

    def is_modifier(self, code: int) -> bool:
        return code in _MODIFIERS


def load_keymap(layout: str = "us", variant: str = "") -> Keymap:
    """The layout from libxkbcommon, or the built-in US table where libxkbcommon is absent."""
    try:
        return XkbKeymap(layout, variant)
    except ImportError:
        if layout == "us" and not variant:
            logger.warning("libxkbcommon is not available; decoding with the built-in US table")
            return UsTable()
        raise KeymapError(f"keyboard layout {layout!r} needs libxkbcommon (Debian: libxkbcommon0, xkb-data)") from None


def keystrokes(text: str, *, keypad_digits: bool = False) -> list[tuple[int, bool]]:
    """The (key code, shift) presses that type ``text`` on the US layout: what a US-mode scanner sends."""
    strokes = []
    for char in text:
        if keypad_digits and char.isdigit():
            strokes.append((getattr(e, f"KEY_KP{char}"), False))
            continue
        for code, (plain, shifted) in US.items():
            if plain == char:
                strokes.append((code, False))
                break
            if shifted == char:
                strokes.append((code, True))
                break
        else:
            raise ValueError(f"character {char!r} cannot be typed on the US layout")
    return strokes
