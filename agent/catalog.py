"""The catalog: what a barcode is, from the price list in force.

A price list's items are sellable units, each with its own barcode: a pack, a
carton of (usually) 10 packs, a case. The catalog keys them by GTIN-14 (a
UPC-A and its 13-digit EAN reading are one code), knows which product each
belongs to, and how many packs it holds. Stock is kept in packs, per product;
a product is known by its pack's key.

    catalog = Catalog.from_price_list(event.body)
    unit = catalog.unit("6901028075848")    # Unit(name='Hongtashan (carton)', packs=10, price=23000, ...)
    catalog.carton_of(unit.product)         # the product's carton, for a pack scanned as a carton
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.barcode import Barcode, classify, other_reading

CARTON_PACKS = 10  # a carton's packs where the list does not say


@dataclass(frozen=True)
class Unit:
    """One sellable unit: a pack, a carton or a case of a product."""
    barcode: str
    name: str
    price: int  # minor units, for one unit
    unit: str  # pack, carton, case
    packs: int
    cost: int | None  # minor units, for one unit
    product: str  # the product's key (its pack's GTIN-14): what stock is kept by


def product_key(code: str) -> str:
    """What stock is kept by: the pack barcode's GTIN-14 for EAN/UPC codes, else the code itself."""
    return classify(code).key


@dataclass(frozen=True)
class Catalog:
    units: dict[str, Unit]  # by the unit barcode's key
    currency: str | None = None
    cartons: dict[str, Unit] = field(default_factory=dict)  # by product
    names: dict[str, str] = field(default_factory=dict)  # by product: its pack's name, else its first unit's

    @classmethod
    def from_price_list(cls, body: dict[str, Any] | None) -> "Catalog":
        if body is None:
            return cls({})
        units = {}
        for item in body.get("items", []):
            key = classify(item["barcode"]).key
            unit = item.get("unit", "pack")
            units[key] = Unit(barcode=item["barcode"], name=item["name"], price=item["price"], unit=unit,
                              packs=item.get("packs", CARTON_PACKS if unit == "carton" else 1),
                              cost=item.get("cost"), product=product_key(item.get("product") or item["barcode"]))
        cartons = {u.product: u for u in reversed(list(units.values())) if u.unit == "carton"}
        names = {u.product: u.name for u in reversed(list(units.values()))}
        names.update({u.product: u.name for u in units.values() if u.unit == "pack"})
        return cls(units, body.get("currency"), cartons, names)

    def unit(self, key: str) -> Unit | None:
        """The unit whose barcode has GTIN-14 (or code) ``key``."""
        return self.units.get(key)

    def key_of(self, barcode: Barcode, *, named: bool = False) -> str:
        """The key the list knows ``barcode`` by: its own; or, not listed, that of the other reading of its eight
        digits (an EAN-8 that is a UPC-E too), when that one is listed and either the scanner did not name the
        symbology (``named``: an AIM identifier) or the list wrote the eight digits alone, which read either way.
        A scanner that named a UPC-E read another label than an EAN-8 the list wrote as its GTIN-14."""
        if barcode.key in self.units:
            return barcode.key
        other = other_reading(barcode)
        if other is None or other.key not in self.units:
            return barcode.key
        if named and other_reading(classify(self.units[other.key].barcode)) is None:
            return barcode.key
        return other.key

    def carton_of(self, product: str) -> Unit | None:
        """The product's carton row, if the list has one."""
        return self.cartons.get(product)
