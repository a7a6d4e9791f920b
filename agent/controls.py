"""Control barcodes: what the retailer scans, from a printed sheet, to tell the counter what comes next.

Every control code starts with the reserved prefix ``CB:``, which no product
barcode carries (EAN/UPC codes are digits; the prefix is reserved for
counterbox in any Code 128 a shop may print), so a control code can never be
taken for a product nor a product for a control code.

| code | what it does |
|---|---|
| ``CB:QTY2`` ... ``CB:QTY10`` | the next product scan counts that many |
| ``CB:0`` ... ``CB:9``, ``CB:DOT`` | key a number (or a keypad's digits) |
| ``CB:QTY-KEYED`` | the keyed number is the next scan's quantity |
| ``CB:PRICE`` | the keyed number is the next sale's unit price (the shop's actual price) |
| ``CB:CARTON`` | the next pack barcode counts as a carton of its product |
| ``CB:VOID`` | void the last line sold or returned today |
| ``CB:RETURN`` | the next scan is a return |
| ``CB:RECEIVING`` | receiving: scans are what arrived |
| ``CB:ALL-RECEIVED`` | the open order arrived in full |
| ``CB:COUNT`` | stock count: scan every pack and carton on the shelf |
| ``CB:CLOSE`` | close the receiving or the count |
| ``CB:END-DAY`` | close the day with its totals |
| ``CB:CLEAR`` | forget what was keyed or set for the next scan |
| ``CB:CANCEL`` | the same; with nothing pending, leave receiving or counting without closing it |

No control code is the beginning of another, so a scan cut short is never a
different control (one that is not a whole code is refused).

A numeric keypad (``[[scanner.device]] keypad = true``) keys the same controls:
its digits and point, ``*`` for ``CB:QTY-KEYED``, ``/`` for ``CB:PRICE``, ``-``
for ``CB:RETURN``, ``+`` for ``CB:CARTON``, Backspace, Delete or Esc for
``CB:CLEAR`` (never leaving a mode: that takes the sheet's ``CB:CANCEL``).

    control("CB:QTY3")        # Control(action='quantity', value=3)
    control("6901028075831")  # None: a product
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "CB:"
MAX_QUANTITY = 999  # a keyed quantity; more is a slip of the finger


@dataclass(frozen=True)
class Control:
    action: str  # quantity, digit, keyed-quantity, price, carton, void, return, receive, receive-all, count, close, end-day, clear, cancel
    value: int | str | None = None  # the quantity of "quantity", the character of "digit"


_FIXED = {
    "QTY-KEYED": "keyed-quantity", "PRICE": "price", "CARTON": "carton", "VOID": "void", "RETURN": "return",
    "RECEIVING": "receive", "ALL-RECEIVED": "receive-all", "COUNT": "count", "CLOSE": "close", "END-DAY": "end-day",
    "CLEAR": "clear", "CANCEL": "cancel", "DOT": "digit",
}


# What a scanner types for the sheet's colon when the Shift it was typed with is not seen: a semicolon on
# the US layout, a full stop on the German, Swiss and Nordic ones.
_COLON_UNSHIFTED = ";."


def _action(name: str) -> Control | None:
    """The control a code's ``name`` (after the prefix, in capitals) stands for; None for no control's."""
    if name in _FIXED:
        return Control(_FIXED[name], "." if name == "DOT" else None)
    if len(name) == 1 and name.isdigit():
        return Control("digit", name)
    if name.startswith("QTY") and name[3:].isdigit() and 2 <= int(name[3:]) <= 10 and name[3] != "0":
        return Control("quantity", int(name[3:]))
    return None


# A scanner set to one keyboard layout on a box set to another (EAN digits type alike on the US, German and
# Swiss layouts, so nothing else shows it; French ones type them with Shift): each key the scanner pressed
# for the sheet's characters, read
# with the box's layout. Per (scanner's, box's) layout, what the box reads -> what the scanner typed, for
# the characters of the sheet's codes (its letters in capitals; a scanner typing in small letters too).
_ACROSS = {  # tests/test_counter_modes.py derives them again from xkeyboard-config's layouts
    ("us", "de"): ('ZYÖß', 'YZ:-'),
    ("us", "fr"): ('Q?AZWà&é"\'(-è_çM)', 'AMQWZ0123456789:-'),
    ("us", "ch"): ("ZYé'", 'YZ:-'),
    ("de", "us"): ('ZY>/', 'YZ:-'),
    ("de", "fr"): ('Q?AZWYà&é"\'(-è_ç/!', 'AMQWYZ0123456789:-'),
    ("fr", "us"): ('Q:AZW)!@#$%^&*(.6', 'AMQWZ0123456789:-'),
    ("fr", "de"): ('QÖAYZW=!"§$%&/().6', 'AMQWYZ0123456789:-'),
    ("fr", "ch"): ('QéAYZW=+"*ç%&/().6', 'AMQWYZ0123456789:-'),
    ("ch", "us"): ('ZY>/', 'YZ:-'),
    ("ch", "fr"): ('Q?AZWYà&é"\'(-è_ç/!', 'AMQWYZ0123456789:-'),
}
_ACROSS_TABLES = {pair: str.maketrans({**{r: t for r, t in zip(read, typed)},
                                        **{r.lower(): t for r, t in zip(read, typed) if r.isalpha() and t.isalpha()}})
                  for pair, (read, typed) in _ACROSS.items()}


def _read_across_layouts(text: str) -> list[tuple[str, str]]:
    """The (scanner's, box's) layouts through which ``text`` is one of the sheet's codes."""
    if text[:2].upper() != PREFIX[:2] or len(text) <= len(PREFIX):
        return []
    found = []
    for pair, table in _ACROSS_TABLES.items():
        read, typed = _ACROSS[pair]
        if any(ord(c) not in table and c.upper() in typed for c in text):
            continue  # a character no key of the scanner's makes on the box's layout: not through these two
        meant = text.translate(table).upper()
        if meant[2] == ":" and _action(meant[len(PREFIX):]) is not None:
            found.append(pair)
    return found


# Whatever layout a scanner types the sheet with, its names keep their shape: letters that some layouts
# swap (Y and Z on German ones, A and Q, Z and W on French ones), a hyphen read as whatever that layout's
# key makes, a digit as what the digit's key makes on the US, German, Swiss or French layout (with or
# without Shift), and any character but a letter or digit in the colon's place.
_LOOKALIKE = {"Y": "YZ", "Z": "ZYW", "A": "AQ", "Q": "QA", "W": "WZ"}
_DIGIT_KEYS = ("!@#$%^&*()", '!"§$%&/()=', '+"*Ç%&/()=', '&É"\'(-È_ÇÀ')  # each layout's keys 1 to 0


def _shape(name: str) -> str:
    def char(c: str) -> str:
        if c == "-":
            return "[^A-Z0-9]"
        if c.isdigit():
            keys = "".join(row[(int(c) - 1) % 10] for row in _DIGIT_KEYS)
            return "[" + re.escape(c + keys) + "]"
        return "[" + _LOOKALIKE.get(c, c) + "]"
    return "".join(char(c) for c in name)


_NAMES = [*_FIXED, *(str(d) for d in range(10)), *(f"QTY{n}" for n in range(2, 11))]
_SHAPED = re.compile("|".join(_shape(name) for name in sorted(_NAMES, key=len, reverse=True)))
# Characters a shop's own label puts after CB (CB-1, CB 2, CB/3): there, only a control's name in letters
# makes the code the sheet's.
_LABEL_SEPARATORS = "-_ /#*+&"


def _shaped_like_one(text: str) -> bool:
    """Whether ``text`` (beginning CB) has a control's shape through some other layout (see _LOOKALIKE)."""
    sign, name = text[2], text[3:].replace("ß", "-").upper()
    if (sign.isascii() and sign.isalnum()) or not _SHAPED.fullmatch(name):
        return False
    return sign not in _LABEL_SEPARATORS or any(c.isalpha() for c in name)


def is_control(text: str) -> bool:
    """Whether ``text`` is a code of the sheet, read right or wrong: its prefix in either case, its colon read
    as a semicolon too; a control's name after a full stop in the colon's place (a Shift lost on a German
    layout); or a control typed by a scanner set to another keyboard layout than the box reads it with (by
    the tables of the layouts it knows, or by a control's shape). A sheet's code read wrong is never a
    product's."""
    head = text[:len(PREFIX)].upper()
    if head[:2] != PREFIX[:2] or len(head) < len(PREFIX):
        return False
    if head[2] in ":;" or (head[2] == "." and _action(text[len(PREFIX):].upper()) is not None):
        return True
    return bool(_read_across_layouts(text)) or _shaped_like_one(text)


def control(text: str) -> Control | None:
    """The control a scanned code stands for; None for anything without the prefix. A scanner that types as if
    Caps Lock were on reads the sheet in small letters: the same control. A code with the prefix that names no
    control, or whose colon was read as something else, raises ValueError: never a sale."""
    if not is_control(text):
        return None
    if text[len(PREFIX) - 1] in ";." and _action(text[len(PREFIX):].upper()) is not None or text[2] == ";":
        raise ValueError(f"a {PREFIX} code whose colon was read as {text[len(PREFIX) - 1]!r} (the Shift it was typed "
                         "with was not seen): read wrong")
    if text[len(PREFIX) - 1] != ":":
        pairs = _read_across_layouts(text)
        scanners, boxes = (" or ".join(dict.fromkeys(pair[i] for pair in pairs)) for i in (0, 1))
        which = f" (the scanner's {scanners}, the box's {boxes}?)" if pairs else ""
        raise ValueError(f"a {PREFIX} code read with another keyboard layout than the scanner types{which}: set "
                         "[scanner.decoder] layout to the scanner's")
    found = _action(text[len(PREFIX):].upper())
    if found is None:
        raise ValueError(f"a {PREFIX} code that is no control this counter knows (cut short, or from another sheet)")
    return found


def _folded(text: str) -> str:
    """``text`` as the sheet prints it, were it a control read with a Shift not seen: capitals, and a colon for
    what a lost Shift makes of one."""
    text = text.upper()
    for unshifted in _COLON_UNSHIFTED:
        text = text.replace(unshifted, ":")
    return text


def could_be_part_of_one(text: str) -> bool:
    """Whether ``text`` (a scan refused as cut short) may be the beginning or the end of a control code.
    Nothing seen of it (a drop lost it whole) may have been any of them. In either case: a Shift pressed
    before the cut and not seen makes the capitals of what is left small, and its colon a semicolon or a
    full stop."""
    text = _folded(text)
    return not text or any(code.startswith(text) or code.endswith(text) for code, _, _ in SHEET)


def surely_of_one(text: str) -> bool:
    """Whether ``text`` (a scan refused as not seen whole) surely held a control: the sheet's prefix anywhere
    in it (after the tail of a scanner's AIM identifier or prefix whose head went unseen, or after the head
    of a code whose reports broke off), a control's code whole but for its colon, or the end of a control's
    code that no product's ends in (``:RETURN``, ``TY3``, ``TURN``; a lone ``5``, or ``ED``, may end a
    product's)."""
    if _prefix_within(text.upper()):
        return True
    text = _folded(text)
    if text.startswith(PREFIX[:2]) and _action(text[2:]) is not None:
        return True  # whole but for its colon (a key the kernel dropped): CBRETURN
    # The end of a control's code, when no product's ends so: a colon, a hyphen or a digit beside letters in
    # it, or four letters or more (a product's label ends in "ED", "ICE", "ON" as often as a control does).
    surely_a_tail = ":" in text or "-" in text or (any(c.isdigit() for c in text) and not text.isdigit()) \
        or (len(text) >= 4 and text.isalpha())
    return surely_a_tail and any(code.endswith(text) for code, _, _ in SHEET)


def _prefix_within(upper: str) -> bool:
    """Whether the sheet's prefix is somewhere in ``upper``: ``CB:`` or ``CB;``, or ``CB.`` before a control's
    name or the start of one (a URL's ``www.cb.cn`` is no control's)."""
    at = upper.find(PREFIX[:2])
    while at != -1:
        sign, rest = upper[at + 2:at + 3], upper[at + 3:]
        if sign in (":", ";"):
            return True
        if sign == "." and rest and any(name.startswith(rest) or (rest.startswith(name) and not name.isdigit())
                                        or rest == name for name in _NAMES):
            return True
        at = upper.find(PREFIX[:2], at + 1)
    return False


def joined_at_end(text: str) -> bool:
    """Whether a code read whole ends in one of the sheet's codes after something else: two scans read as one
    (a HID POS scanner's reports carry no number, and a code whose last report was lost joins the next code
    of the same symbology)."""
    at = text.rfind(PREFIX)  # as the sheet prints it: a HID POS scanner sends a code's own bytes
    return at > 0 and _action(text[at + len(PREFIX):]) is not None


# A numeric keypad's keys (drivers.keypad), as the sheet's codes: the same controls, keyed.
KEYPAD: dict[str, str] = {
    **{str(n): f"{PREFIX}{n}" for n in range(10)}, ".": f"{PREFIX}DOT", "*": f"{PREFIX}QTY-KEYED",
    "/": f"{PREFIX}PRICE", "-": f"{PREFIX}RETURN", "+": f"{PREFIX}CARTON", "cancel": f"{PREFIX}CLEAR",
}

# The printed sheet: each control's code and its label in Chinese and English, in the order printed.
SHEET: list[tuple[str, str, str]] = [
    *[(f"{PREFIX}QTY{n}", f"数量 ×{n}", f"Quantity ×{n}") for n in range(2, 11)],
    *[(f"{PREFIX}{d}", f"数字 {d}", f"Digit {d}") for d in "0123456789"],
    (f"{PREFIX}DOT", "小数点", "Decimal point"),
    (f"{PREFIX}QTY-KEYED", "输入数量", "Keyed quantity"),
    (f"{PREFIX}PRICE", "实际售价", "Price override (keyed price, then the product)"),
    (f"{PREFIX}CARTON", "整条", "Carton"),
    (f"{PREFIX}VOID", "删除上一笔", "Void last line"),
    (f"{PREFIX}RETURN", "退货", "Return"),
    (f"{PREFIX}RECEIVING", "收货", "Receiving"),
    (f"{PREFIX}ALL-RECEIVED", "整单收货", "The whole order received"),
    (f"{PREFIX}COUNT", "盘点", "Stock count"),
    (f"{PREFIX}CLOSE", "完成收货/盘点", "Close receiving or count"),
    (f"{PREFIX}END-DAY", "日结", "End of day"),
    (f"{PREFIX}CLEAR", "清除", "Clear what was keyed"),
    (f"{PREFIX}CANCEL", "取消", "Cancel"),
]
