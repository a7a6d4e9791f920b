"""Barcode symbologies and their check digits.

EAN-13, EAN-8 and UPC-A carry a GS1 mod-10 check digit; a code of one of
their lengths that fails it is a misread, never a product. Anything else is
passed on as a raw code for the counter to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Symbology(str, Enum):
    EAN13 = "ean13"
    EAN8 = "ean8"
    UPCA = "upca"
    RAW = "raw"


_BY_LENGTH = {13: Symbology.EAN13, 8: Symbology.EAN8, 12: Symbology.UPCA}


@dataclass(frozen=True)
class Barcode:
    data: str
    symbology: Symbology
    valid: bool  # False only for a GS1 code whose check digit is wrong


def gs1_check_digit(body: str) -> int:
    """The GS1 mod-10 check digit for ``body`` (all digits but the check digit)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def classify(text: str) -> Barcode:
    """>>> classify("6901028075831")
    Barcode(data='6901028075831', symbology=<Symbology.EAN13: 'ean13'>, valid=True)
    """
    symbology = _BY_LENGTH.get(len(text)) if text.isascii() and text.isdigit() else None
    if symbology is None:
        return Barcode(text, Symbology.RAW, True)
    return Barcode(text, symbology, gs1_check_digit(text[:-1]) == int(text[-1]))
