"""Keyboard layouts: what a key press types, given the device's modifier and lock state.

A keyboard-wedge scanner types a barcode in the layout it is set to (US by
default, German or French in shops that set it so). libxkbcommon, with the
layouts of xkeyboard-config, knows every layout without X. The US layout,
the scanners' default, is built in (the same text for every key, proven
against libxkbcommon's in the tests) and costs no library.

    keymap = load_keymap("de")
    state = keymap.new_state(numlock=True)   # one per device, never shared
    state.update(ecodes.KEY_LEFTSHIFT, down=True)
    state.text(ecodes.KEY_2)                 # '"'

Key codes are the kernel's own (``KEY_*``, linux/input-event-codes.h); xkb
numbers keys 8 higher, for historical X11 reasons.
"""

from __future__ import annotations

from typing import Protocol

from evdev import ecodes as e

from .errors import KeymapError

_XKB_OFFSET = 8


class KeyState(Protocol):
    def update(self, code: int, *, down: bool) -> None: ...
    def text(self, code: int) -> str: ...
    def dead(self, code: int) -> str: ...
    def is_modifier(self, code: int) -> bool: ...
    def reset(self, *, held: frozenset[int] = frozenset(), keep_locks: bool = False) -> None: ...


class Keymap(Protocol):
    name: str
    dead_keys: bool  # some key may be a dead key (KeyState.dead says which, in the state it is in)
    altgr: bool  # the right Alt key is AltGr (the third level: German @ and {), not an Alt

    def new_state(self, *, numlock: bool = True) -> KeyState: ...


# -- libxkbcommon -----------------------------------------------------------------

_MODIFIERS = frozenset({
    e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL, e.KEY_LEFTALT, e.KEY_RIGHTALT,
    e.KEY_LEFTMETA, e.KEY_RIGHTMETA, e.KEY_CAPSLOCK, e.KEY_NUMLOCK, e.KEY_SCROLLLOCK,
})
_LOCKS = (e.KEY_CAPSLOCK, e.KEY_NUMLOCK)


class XkbKeymap:
    dead_keys = True

    def __init__(self, layout: str, variant: str = ""):
        from xkbcommon import xkb

        self._xkb = xkb
        self.name = f"{layout}({variant})" if variant else layout
        try:
            self._keymap = xkb.Context().keymap_new_from_names(layout=layout, variant=variant or None)
        except xkb.XKBError:  # XKBKeymapCreationFailure, and whatever else this binding raises for a layout it cannot build
            raise KeymapError(f"keyboard layout {self.name!r} is not known to xkeyboard-config") from None
        right_alt = self._keymap.state_new().key_get_one_sym(e.KEY_RIGHTALT + _XKB_OFFSET)
        self.altgr = xkb.keysym_get_name(right_alt) == "ISO_Level3_Shift"

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

    def reset(self, *, held: frozenset[int] = frozenset(), keep_locks: bool = False) -> None:
        """Start from no keys down (Num Lock as configured, or the locks as they were with ``keep_locks``),
        then press what ``held`` says is down now."""
        xkb = self._keymap._xkb
        locked = self._state.serialize_mods(xkb.XKB_STATE_MODS_LOCKED) if keep_locks else None
        self._texts = {}
        self._state = self._keymap._keymap.state_new()
        if locked is not None:
            self._state.update_mask(0, 0, locked, 0, 0, 0)
        elif self._numlock:
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

    def dead(self, code: int) -> str:
        """The dead key's keysym name (``dead_circumflex``) when the key is one now; else ""."""
        if self.text(code):
            return ""  # (a dead key types no text of its own: most keys are answered here, from the cache)
        name = self._keymap._xkb.keysym_get_name(self._state.key_get_one_sym(code + _XKB_OFFSET))
        return name if name in DEAD_KEYS else ""

    def is_modifier(self, code: int) -> bool:
        return code in _MODIFIERS


# -- dead keys ---------------------------------------------------------------------
# A German or French layout types ^ and ` as a dead key and Space, and an accented letter as a dead key
# and the letter. What the pair makes, as X's Compose file for UTF-8 locales says (libx11-data's
# en_US.UTF-8/Compose; tests/test_keymap.py holds this table to it): Space or the dead key again makes
# the accent's own character, a letter the letter with the accent where Unicode has it as one
# character. Anything else makes nothing: the character is lost.
DEAD_KEYS: dict[str, tuple[str, str, str]] = {  # keysym: (with Space, with itself, combining mark)
    "dead_grave": ("`", "`", "\u0300"), "dead_acute": ("'", "\u00b4", "\u0301"),
    "dead_circumflex": ("^", "^", "\u0302"), "dead_tilde": ("~", "~", "\u0303"),
    "dead_macron": ("\u00af", "\u00af", "\u0304"), "dead_breve": ("\u02d8", "\u02d8", "\u0306"),
    "dead_abovedot": ("\u02d9", "\u02d9", "\u0307"), "dead_diaeresis": ('"', "\u00a8", "\u0308"),
    "dead_abovering": ("\u00b0", "\u00b0", "\u030a"), "dead_doubleacute": ("\u02dd", "\u02dd", "\u030b"),
    "dead_caron": ("\u02c7", "\u02c7", "\u030c"), "dead_cedilla": ("\u00b8", "\u00b8", "\u0327"),
    "dead_ogonek": ("\u02db", "\u02db", "\u0328"),
}


def compose(dead: str, text: str, *, again: bool = False) -> str:
    """What dead key ``dead`` and the key after it, which types ``text`` (``again``: the same dead key),
    make together; "" for nothing."""
    import unicodedata

    space, twice, mark = DEAD_KEYS[dead]
    if again:
        return twice
    if text == " ":
        return space
    if len(text) != 1 or not text.isalpha():
        return ""
    composed = unicodedata.normalize("NFC", text + mark)
    return composed if len(composed) == 1 else ""


# -- the US layout, built in -------------------------------------------------------
# What xkeyboard-config's "us" layout types, written out so that the most common layout needs no
# library and no compiled keymap (libxkbcommon's costs the box half a MiB). tests/test_keymap.py
# compares it with libxkbcommon's for every key in every modifier and lock state.

# (plain, shifted): Caps Lock shifts the letters alone; Ctrl makes a control character (_control).
US: dict[int, tuple[str, str]] = {
    e.KEY_1: ("1", "!"), e.KEY_2: ("2", "@"), e.KEY_3: ("3", "#"), e.KEY_4: ("4", "$"),
    e.KEY_5: ("5", "%"), e.KEY_6: ("6", "^"), e.KEY_7: ("7", "&"), e.KEY_8: ("8", "*"),
    e.KEY_9: ("9", "("), e.KEY_0: ("0", ")"),
    e.KEY_MINUS: ("-", "_"), e.KEY_EQUAL: ("=", "+"),
    e.KEY_LEFTBRACE: ("[", "{"), e.KEY_RIGHTBRACE: ("]", "}"), e.KEY_BACKSLASH: ("\\", "|"),
    e.KEY_SEMICOLON: (";", ":"), e.KEY_APOSTROPHE: ("'", '"'), e.KEY_GRAVE: ("`", "~"),
    e.KEY_COMMA: (",", "<"), e.KEY_DOT: (".", ">"), e.KEY_SLASH: ("/", "?"), e.KEY_102ND: ("<", ">"),
    e.KEY_SPACE: (" ", " "), e.KEY_TAB: ("\t", ""),  # Shift+Tab is ISO_Left_Tab, which types nothing
}
for _letter in "abcdefghijklmnopqrstuvwxyz":
    US[getattr(e, f"KEY_{_letter.upper()}")] = (_letter, _letter.upper())
# Keys that type the same whatever the modifiers.
_FIXED = {
    e.KEY_ENTER: "\r", e.KEY_KPENTER: "\r", e.KEY_ESC: "\x1b", e.KEY_BACKSPACE: "\b", e.KEY_DELETE: "\x7f",
    e.KEY_LINEFEED: "\n", e.KEY_KPMINUS: "-", e.KEY_KPPLUS: "+", e.KEY_KPASTERISK: "*", e.KEY_KPSLASH: "/",
    e.KEY_KPEQUAL: "=", e.KEY_KPPLUSMINUS: "\u00b1", e.KEY_KPCOMMA: ".", e.KEY_KPLEFTPAREN: "(",
    e.KEY_KPRIGHTPAREN: ")",
}
# The keypad's digits, with Num Lock on and Shift up (otherwise they move the cursor: no text).
_KEYPAD_DIGITS = {getattr(e, f"KEY_KP{d}"): str(d) for d in range(10)}
_KEYPAD_DIGITS[e.KEY_KPDOT] = "."
# With Ctrl and Alt held (and Shift not) these are the X server's actions (grab, video mode): no text.
_ACTIONS = frozenset({e.KEY_KPASTERISK, e.KEY_KPMINUS, e.KEY_KPPLUS, e.KEY_KPSLASH})
_SHIFTS = frozenset({e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT})
_CTRLS = frozenset({e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL})
_ALTS = frozenset({e.KEY_LEFTALT, e.KEY_RIGHTALT})
_TRACKED = _SHIFTS | _CTRLS | _ALTS


def _control(char: str) -> str:
    """What Ctrl makes of a character: X11's rule, as libxkbcommon keeps it (GS1's GS is Ctrl+])."""
    c = ord(char)
    if 0x40 <= c < 0x7F or char == " ":
        c &= 0x1F
    elif char == "2":
        c = 0
    elif "3" <= char <= "7":
        c -= ord("3") - 0x1B
    elif char == "8":
        c = 0x7F
    elif char == "/":
        c = 0x1F
    return chr(c) if c else ""  # NUL types nothing


class UsTable:
    name = "us (built-in table)"
    dead_keys = False
    altgr = False

    def new_state(self, *, numlock: bool = True) -> "UsTableState":
        return UsTableState(numlock)


class UsTableState:
    """One device's modifier and lock state in the US layout, kept as libxkbcommon keeps it; like
    XkbState, each key's text is remembered until a modifier or lock changes (a barcode of digits
    then costs one dictionary lookup a key)."""

    def __init__(self, numlock: bool):
        self._initial_numlock = numlock
        self.reset()

    def reset(self, *, held: frozenset[int] = frozenset(), keep_locks: bool = False) -> None:
        self._presses = {code: 1 for code in held & _TRACKED}  # modifier and lock keys down, and how often
        if not keep_locks:
            self._locked = {e.KEY_CAPSLOCK: False, e.KEY_NUMLOCK: self._initial_numlock}
        self._unlock_on_release: dict[int, bool] = {}  # a lock key down: it was locked before this press
        self._texts: dict[int, str] = {}

    def update(self, code: int, *, down: bool) -> None:
        # As libxkbcommon counts: a key pressed again while down changes nothing, and is down until
        # released as often; a lock locks when pressed and unlocks when released if it was locked before.
        if code not in _TRACKED and code not in _LOCKS:
            return
        presses = self._presses.get(code, 0)
        if down:
            self._presses[code] = presses + 1
            if presses:
                return
            if code in _LOCKS:
                self._unlock_on_release[code] = self._locked[code]
                self._locked[code] = True
        elif presses > 1:
            self._presses[code] = presses - 1
            return
        elif presses == 1:
            del self._presses[code]
            if code in _LOCKS and self._unlock_on_release.pop(code):
                self._locked[code] = False
        else:
            return  # a key that was not down
        self._texts = {}

    def text(self, code: int) -> str:
        text = self._texts.get(code)
        if text is None:
            text = self._texts[code] = self._text(code)
        return text

    def _text(self, code: int) -> str:
        down = self._presses.keys()
        shifted, ctrl = not down.isdisjoint(_SHIFTS), not down.isdisjoint(_CTRLS)
        fixed = _FIXED.get(code)
        if fixed is not None:
            return "" if code in _ACTIONS and ctrl and not shifted and not down.isdisjoint(_ALTS) else fixed
        digit = _KEYPAD_DIGITS.get(code)
        if digit is not None:
            text = digit if self._locked[e.KEY_NUMLOCK] and not shifted else ""
        else:
            chars = US.get(code)
            if chars is None:
                return ""
            if self._locked[e.KEY_CAPSLOCK] and chars[0].isalpha():
                shifted = not shifted
            text = chars[1] if shifted else chars[0]
        return _control(text) if text and ctrl else text

    def dead(self, code: int) -> str:
        return ""  # the US layout has no dead keys

    def is_modifier(self, code: int) -> bool:
        return code in _MODIFIERS


def load_keymap(layout: str = "us", variant: str = "") -> Keymap:
    """The US layout from the built-in table; every other layout from libxkbcommon."""
    if layout == "us" and not variant:
        return UsTable()
    try:
        return XkbKeymap(layout, variant)
    except ImportError:
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
            code = next((code for code, fixed in _FIXED.items() if fixed == char), None)
            if code is None:
                raise ValueError(f"character {char!r} cannot be typed on the US layout")
            strokes.append((code, False))
    return strokes
