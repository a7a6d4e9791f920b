"""Barcode symbologies and their check digits.

EAN-13, EAN-8, UPC-A and the GTIN-14 of a case (fourteen digits, the code an
ITF-14 or a case's label carries, with its symbology identifier ``]I`` or
none) carry a GS1 mod-10 check digit; a code of one of their lengths that fails it
is a misread, never a product. A UPC-A and the
same code read as a 13-digit EAN-13 with a leading zero are one product: both
have the same GTIN-14, the key prices are looked up by. A UPC-E (the short
code of small packs: eight digits, number system 0 or 1) is its UPC-A with
the zeros left out; its check digit is the UPC-A's, and its key the UPC-A's
GTIN-14. Eight digits of number system 0 or 1 that pass UPC-E's check are a
UPC-E, though most also pass EAN-8's (an EAN-8 beginning 0 or 1 is a shop's
own number, not a product's), unless the scanner names them EAN-8 (AIM
``]E4``): a price list's row and the scan of it are then keyed alike. What a
scanner names an EAN or UPC (``]E0``, ``]E4``; ``]E3`` with an add-on) and is
not one whole is a misread too, as is an add-on sent alone (``]E1``, ``]E2``).
Codes whose
symbology the driver knows (HID POS scanners send the AIM identifier, ISO/IEC
15424) are passed on with it: Code 128, GS1-128, QR, Data Matrix, ...;
anything else is a raw code for the counter to decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# No code a product or a control sheet carries is longer (a GS1 Digital Link in a QR code runs to a few
# hundred): a longer one is a scanner's fault, refused whole, and what it sends past this is never held.
MAX_LENGTH = 2048
TOO_LONG = f"longer than any code a product carries (more than {MAX_LENGTH} characters)"
# An AIM symbology identifier (ISO/IEC 15424): "]", the symbology's code character, a modifier character.
AIM_ID = re.compile(r"\][A-Za-z][0-9A-Za-z]")


class Symbology(str, Enum):
    EAN13 = "ean13"
    EAN8 = "ean8"
    UPCA = "upca"
    UPCE = "upce"
    GTIN14 = "gtin14"
    CODE128 = "code128"
    GS1_128 = "gs1-128"
    CODE39 = "code39"
    QR = "qr"
    DATAMATRIX = "datamatrix"
    PDF417 = "pdf417"
    RAW = "raw"


_BY_LENGTH = {13: Symbology.EAN13, 8: Symbology.EAN8, 12: Symbology.UPCA, 14: Symbology.GTIN14}
# AIM symbology identifiers: "]" + code character + modifier. The EAN/UPC family ("]E") is told apart by length.
_AIM = {"E": None, "C": Symbology.CODE128, "A": Symbology.CODE39, "Q": Symbology.QR, "d": Symbology.DATAMATRIX,
        "L": Symbology.PDF417}


CHECK_DIGIT = "check digit"
NOT_EAN = "not an EAN or UPC, as its symbology identifier says it is"
ADD_ON_ALONE = "an EAN add-on read without its product's code"


@dataclass(frozen=True)
class Barcode:
    data: str
    symbology: Symbology
    reason: str = ""  # why it is a misread (an EAN's check digit wrong, or not an EAN's form at all); "" if whole

    @property
    def valid(self) -> bool:
        return not self.reason

    @property
    def key(self) -> str:
        """What a price list knows this code by: the GTIN-14 for EAN/UPC codes, else the code itself."""
        if self.symbology in (Symbology.EAN13, Symbology.EAN8, Symbology.UPCA, Symbology.GTIN14):
            return self.data.zfill(14)
        if self.symbology is Symbology.UPCE:
            return upce_to_upca(self.data).zfill(14)
        return self.data


def scannable(code: str) -> bool:
    """A code as a scan hands it on, and as a signed price list or order carries it (docs/protocol.md):
    printable ASCII, 1 to 48 characters (a GS1-128's most), with no space at either end (a stray one, from a
    spreadsheet or an editor, and the code would never match a scan) and no AIM identifier at its start (the
    decoder takes it off every scan)."""
    return 0 < len(code) <= 48 and code.isascii() and code.isprintable() and code.strip() == code \
        and not AIM_ID.match(code)


def gs1_check_digit(body: str) -> int:
    """The GS1 mod-10 check digit for ``body`` (all digits but the check digit)."""
    # Weights 3, 1, 3, ... from the right: every scan is checked, so no per-digit generator.
    backwards = body[::-1]
    total = 3 * sum(map(int, backwards[0::2])) + sum(map(int, backwards[1::2]))
    return (10 - total % 10) % 10


def _checked(code: str) -> str:
    """"" when the GS1 code's last digit is its check digit; else why it is a misread."""
    return "" if gs1_check_digit(code[:-1]) == int(code[-1]) else CHECK_DIGIT


def upce_to_upca(code: str) -> str:
    """The UPC-A a UPC-E stands for (GS1 General Specifications, the zero-suppression rules), its check
    digit the UPC-E's own: ``upce_to_upca("04252614")`` is ``"042100005264"``."""
    system, d, check = code[0], code[1:7], code[7]
    last = d[5]
    if last in "012":
        body = d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        body = d[0:3] + "00000" + d[3:5]
    elif last == "4":
        body = d[0:4] + "00000" + d[4]
    else:
        body = d[0:5] + "0000" + last
    return system + body + check


def _upce(text: str) -> Barcode | None:
    """``text`` as a UPC-E, if it has a UPC-E's form: eight digits, number system 0 or 1, and digits that
    no other UPC-E stands for as well (a last digit of 3 after a 0 to 2, of 4 after a 0, of 5 to 9 after a
    0: the UPC-A it would stand for has a UPC-E of its own; or a UPC-A beginning 0000, whose GTIN-14 is
    an EAN-8's), so that two codes are never one product."""
    if len(text) != 8 or text[0] not in "01" or not (text.isascii() and text.isdigit()):
        return None
    last = text[6]
    if (last == "3" and text[3] in "012") or (last == "4" and text[4] == "0") or (last >= "5" and text[5] == "0"):
        return None
    upca = upce_to_upca(text)
    if upca.startswith("0000"):  # GS1 gives no UPC-A this prefix: its GTIN-14 is an EAN-8's
        return None
    return Barcode(text, Symbology.UPCE, _checked(upca))


def _gs1(text: str, *, aim: str = "") -> Barcode | None:
    symbology = _BY_LENGTH.get(len(text)) if text.isascii() and text.isdigit() else None
    if symbology is None:
        return None
    if symbology is Symbology.EAN13 and text.startswith("0"):
        symbology = Symbology.UPCA  # a UPC-A read as EAN-13: the same product
    reason = _checked(text)
    if symbology is Symbology.EAN8 and aim != "]E4":
        # A UPC-E that passes its own check is one; named one by the scanner ("]E0"), a failed check is its misread.
        as_upce = _upce(text)
        if as_upce is not None and (as_upce.valid or aim == "]E0"):
            return as_upce
    return Barcode(text, symbology, reason)


def other_reading(barcode: Barcode) -> Barcode | None:
    """Eight digits read as an EAN-8 that are a whole UPC-E too, or the reverse: the other valid reading of the
    same label (one scanner names it, ]E4, another types the digits alone), else None."""
    if barcode.symbology is Symbology.UPCE:
        other = Barcode(barcode.data, Symbology.EAN8, _checked(barcode.data))
    elif barcode.symbology is Symbology.EAN8:
        other = _upce(barcode.data)
    else:
        return None
    return other if other is not None and barcode.valid and other.valid else None


def both_readings(keys: dict[str, int]) -> tuple[int, int] | None:
    """Of ``keys`` (a price list's product keys, each with its item's number), two that are the two readings of
    one 8-digit label, an EAN-8 and a UPC-E: their item numbers; else None. Listed both ways, one label would sell
    at one row's price or the other's by the scanner that read it (one that names the symbology, one that types
    the digits alone)."""
    for key, number in keys.items():
        if len(key) == 14 and key.startswith("000000"):  # an EAN-8's key: its eight digits padded
            label = classify(key[6:])
            other = other_reading(label)
            if other is not None and label.key in keys and other.key in keys:
                return tuple(sorted((keys[label.key], keys[other.key])))
    return None


def classify(text: str, aim: str = "") -> Barcode:
    """The code's symbology, and whether it is whole (an EAN's check digit right), by its text and the
    AIM identifier the scanner sent with it (``aim``), if any.

    >>> classify("6901028075831")
    Barcode(data='6901028075831', symbology=<Symbology.EAN13: 'ean13'>, reason='')
    >>> classify("690102807583012", "]E3").reason  # with an add-on, the EAN misread
    'check digit'
    """
    if aim[:2] == "]I" and len(text) == 14:
        # An ITF-14: a case's GTIN-14, and its check digit is the only check Interleaved 2 of 5 has.
        return _gs1(text) or Barcode(text, Symbology.RAW)
    if aim[:1] == "]" and len(aim) >= 2 and aim[1] != "E":
        symbology = _AIM.get(aim[1], Symbology.RAW)
        if symbology is Symbology.CODE128 and aim[2:] == "1":
            symbology = Symbology.GS1_128
        return Barcode(text, symbology)
    # "]E0" is EAN-13, UPC-A or UPC-E, told apart by length; an EAN-8 is "]E4".
    if aim in ("]E1", "]E2"):  # a 2- or 5-digit add-on sent alone: the product's own code was not read
        return Barcode(text, Symbology.RAW, ADD_ON_ALONE)
    if aim == "]E3":
        return _with_add_on(text)
    found = _gs1(text, aim=aim)
    if (found is None or found.symbology is Symbology.GTIN14) and aim in ("]E0", "]E4"):
        return Barcode(text, Symbology.RAW, NOT_EAN)  # the scanner read an EAN, and this is none
    return found or Barcode(text, Symbology.RAW)


def _with_add_on(text: str) -> Barcode:
    """An EAN-13, UPC-A (12 digits or 13), EAN-8 or UPC-E with its 2- or 5-digit add-on (a periodical's issue), one code
    (AIM ``]E3``): valid when the product's own code is; the code is the whole, raw."""
    for main in (13, 12, 8):
        if len(text) - main in (2, 5):
            found = _gs1(text[:main], aim="]E0" if main == 13 else "")
            if found is not None:
                return Barcode(text, Symbology.RAW, found.reason)
    return Barcode(text, Symbology.RAW, NOT_EAN)
