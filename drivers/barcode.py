"""Barcode symbologies and their check digits.

EAN-13, EAN-8 and UPC-A carry a GS1 mod-10 check digit; a code of one of
their lengths that fails it is a misread, never a product. A UPC-A and the
same code read as a 13-digit EAN-13 with a leading zero are one product: both
have the same GTIN-14, the key prices are looked up by. Codes whose
symbology the driver knows (HID POS scanners send the AIM identifier, ISO/IEC
15424) are passed on with it: Code 128, GS1-128, QR, Data Matrix, ...;
anything else is a raw code for the counter to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Symbology(str, Enum):
    EAN13 = "ean13"
    EAN8 = "ean8"
    UPCA = "upca"
    CODE128 = "code128"
    GS1_128 = "gs1-128"
    CODE39 = "code39"
    QR = "qr"
    DATAMATRIX = "datamatrix"
    PDF417 = "pdf417"
    RAW = "raw"


_BY_LENGTH = {13: Symbology.EAN13, 8: Symbology.EAN8, 12: Symbology.UPCA}
# AIM symbology identifiers: "]" + code character + modifier. The EAN/UPC family ("]E") is told apart by length.
_AIM = {"E": None, "C": Symbology.CODE128, "A": Symbology.CODE39, "Q": Symbology.QR, "d": Symbology.DATAMATRIX,
        "L": Symbology.PDF417}


@dataclass(frozen=True)
class Barcode:
    data: str
    symbology: Symbology
    valid: bool  # False only for a GS1 code whose check digit is wrong

    @property
    def key(self) -> str:
        """What a price list knows this code by: the GTIN-14 for EAN/UPC codes, else the code itself."""
        if self.symbology in (Symbology.EAN13, Symbology.EAN8, Symbology.UPCA):
            return self.data.zfill(14)
        return self.data


def scannable(code: str) -> bool:
    """A code as a scanner types it, and as a signed price list or order carries it (docs/protocol.md):
    printable ASCII, 1 to 48 characters (a GS1-128's most)."""
    return 0 < len(code) <= 48 and code.isascii() and code.isprintable()


def gs1_check_digit(body: str) -> int:
    """The GS1 mod-10 check digit for ``body`` (all digits but the check digit)."""
    # Weights 3, 1, 3, ... from the right: every scan is checked, so no per-digit generator.
    backwards = body[::-1]
    total = 3 * sum(map(int, backwards[0::2])) + sum(map(int, backwards[1::2]))
    return (10 - total % 10) % 10


def _gs1(text: str) -> Barcode | None:
    symbology = _BY_LENGTH.get(len(text)) if text.isascii() and text.isdigit() else None
    if symbology is None:
        return None
    if symbology is Symbology.EAN13 and text.startswith("0"):
        symbology = Symbology.UPCA  # a UPC-A read as EAN-13: the same product
    return Barcode(text, symbology, gs1_check_digit(text[:-1]) == int(text[-1]))


def classify(text: str, aim: str = "") -> Barcode:
    """>>> classify("6901028075831")
    Barcode(data='6901028075831', symbology=<Symbology.EAN13: 'ean13'>, valid=True)
    """
    if aim[:1] == "]" and len(aim) >= 2 and aim[1] != "E":
        symbology = _AIM.get(aim[1], Symbology.RAW)
        if symbology is Symbology.CODE128 and aim[2:] == "1":
            symbology = Symbology.GS1_128
        return Barcode(text, symbology, True)
    return _gs1(text) or Barcode(text, Symbology.RAW, True)
