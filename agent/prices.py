"""Price lists: what each barcode sells for, in the currency's minor unit (fen for CNY), and what it is.

A price list file is CSV with a header row. The first three columns are all
a list needs; the others say what a row is, for stock and margins:

    barcode,name,price,unit,packs,cost,product
    6901028075831,Hongtashan (pack),23.00,pack,1,19.50,
    6901028075848,Hongtashan (carton),230.00,carton,10,195.00,6901028075831

- ``unit``: pack (the default), carton or case. Pack, carton and case have
  distinct barcodes, so each is its own row.
- ``packs``: how many packs the unit holds (1 for a pack; a carton holds 10
  unless it says otherwise; a case must say).
- ``cost``: what the shop pays for one unit, for the gross margin (optional).
- ``product``: the pack barcode of the product a carton or case row belongs
  to (required for them): stock is kept in packs, per product.

Loading one appends a ``price_list`` event to the journal; the counter prices
sales from the latest one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from drivers.barcode import AIM_ID, both_readings, classify, scannable
from provisioning.documents import CONTROL, MAX_PACKS

from . import controls
from .catalog import CARTON_PACKS


class PriceListError(Exception):
    """A price list that cannot be loaded; says which line and why."""


UNITS = ("pack", "carton", "case")


@dataclass(frozen=True)
class Item:
    barcode: str
    name: str
    price: int  # minor units, for one unit
    unit: str = "pack"
    packs: int = 1  # packs in one unit
    cost: int | None = None  # minor units, for one unit
    product: str | None = None  # the product's pack barcode; None: this row is the pack

    def as_json(self) -> dict[str, Any]:
        """The item as a price list document or event carries it (the first three fields alone for a plain pack)."""
        item: dict[str, Any] = {"barcode": self.barcode, "name": self.name, "price": self.price}
        if self.unit != "pack" or self.packs != 1:
            item.update(unit=self.unit, packs=self.packs)
        if self.cost is not None:
            item["cost"] = self.cost
        if self.product is not None:
            item["product"] = self.product
        return item


def to_minor(text: str, what: str = "price") -> int:
    from decimal import Decimal, InvalidOperation  # imported where prices are read, not in the daemon

    # Plain ASCII digits only: Decimal would also take 1_000, 1E+2, and digits of other scripts. A spreadsheet
    # groups thousands with commas ("1,230.00", quoted in its CSV); a comma anywhere else (23,50) is no amount.
    plain = text.strip()
    if re.fullmatch(r"[1-9][0-9]{0,2}(,[0-9]{3}){1,2}(\.[0-9]{0,2})?", plain):  # 0,500 groups nothing
        plain = plain.replace(",", "")
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{0,2})?|\.[0-9]{1,2}", plain):
        raise ValueError(f"{what} {text!r} is not an amount: zero or more in digits 0-9 (thousands grouped by "
                         "commas or not), at most 9 before the point and 2 after")
    try:
        amount = Decimal(plain)
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number") from None
    return int(amount * 100)


def read_csv(path: Path) -> list[Item]:
    """The price list in the CSV file at ``path``: UTF-8 (a byte order mark allowed), as ``parse_csv`` reads it.
    Its errors name the file."""
    try:
        return parse_csv(csv_text(path, PriceListError))
    except PriceListError as error:
        raise PriceListError(f"{path}: {error}") from None


# GBK's two-byte Chinese, where its bytes happen to be UTF-8 too, reads as characters of U+0080 to U+07FF: IPA,
# combining marks, rare Greek, Cyrillic, Hebrew and Arabic letters, mixed at random (泰山 as "̩ɽ", 双喜 as "˫ϲ").
# A real name in those scripts holds their everyday letters, a word in one script (Latin beside Greek: "Ωmega-3"),
# a combining accent after a Latin letter (a decomposed "é"): what it holds beside those is the mark of GBK.
# Beyond these the mark cannot tell (a Chinese character that reads as "é" or as one Cyrillic letter passes):
# the advice to save the file as UTF-8 stands in the documentation either way.
_READ_AS_UTF8 = re.compile("[\u0250-\u07ff]")
_EVERYDAY_LETTERS = (("\u02bb", "\u02bc", "latin"),  # ʻ and ʼ, the okina and the apostrophe of Hawaiʻi, Oʻzbek
                     ("\u0386", "\u03ce", "greek"), ("\u0400", "\u045f", "cyrillic"),
                     # Ukrainian's Ґ, and Kazakh's and Mongolian's Ғ Қ Ң Ү Ұ Һ Ә Ө: not the whole block, whose
                     # rare letters are what GBK's 一, 硬 and 学 read as
                     ("\u0490", "\u0493", "cyrillic"), ("\u049a", "\u049b", "cyrillic"), ("\u04a2", "\u04a3", "cyrillic"),
                     ("\u04ae", "\u04b1", "cyrillic"), ("\u04ba", "\u04bb", "cyrillic"), ("\u04d8", "\u04d9", "cyrillic"),
                     ("\u04e8", "\u04e9", "cyrillic"),
                     # Uzbek's and Tajik's Ҳ Ҷ Ӣ Ӯ
                     ("\u04b2", "\u04b3", "cyrillic"), ("\u04b6", "\u04b7", "cyrillic"), ("\u04e2", "\u04e3", "cyrillic"),
                     ("\u04ee", "\u04ef", "cyrillic"),
                     ("\u05d0", "\u05ea", "hebrew"), ("\u0621", "\u064a", "arabic"),
                     # Persian's and Urdu's پ چ ژ ک گ ی
                     ("\u067e", "\u067e", "arabic"), ("\u0686", "\u0686", "arabic"), ("\u0698", "\u0698", "arabic"),
                     ("\u06a9", "\u06a9", "arabic"), ("\u06af", "\u06af", "arabic"), ("\u06cc", "\u06cc", "arabic"))
_SCRIPTS_SIDE_BY_SIDE = {frozenset({"latin", "greek"})}  # Ωmega-3, βeta-carotene


def _script(char: str) -> str | None:
    """The script of an everyday letter (Latin for all below U+0250), or None."""
    if char < "\u0250":
        return "latin"
    return next((script for first, last, script in _EVERYDAY_LETTERS if first <= char <= last), None)


def _gbk_read_as_utf8(raw: bytes) -> bool:
    """Whether ``raw``, UTF-8, is Chinese in GBK whose bytes happen to be UTF-8 as well: a word of it that, read
    as GBK, is GB2312's characters, and read as UTF-8 holds what no name in any script does."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return False  # a byte order mark is UTF-8's alone
    # Word by word: a file may hold names of both kinds, and GBK's second byte is never below 0x40 (a space, a
    # digit, a comma, a bracket, a line break), nor is any byte of a UTF-8 character but an ASCII one.
    for field in re.split(rb"[\x00-\x3f]+", raw):
        text = field.decode("utf-8")
        if not _READ_AS_UTF8.search(text):
            continue
        try:
            field.decode("gb18030").encode("gb2312")
        except (UnicodeDecodeError, UnicodeEncodeError):
            continue  # "Водка" reads as GBK's rare characters, not GB2312's: GB2312 misread yields GB2312's alone
        if _no_name(text):
            return True
    return False


def _no_name(text: str) -> bool:
    """Whether ``text`` holds what no name in any script does (see _EVERYDAY_LETTERS)."""
    import unicodedata

    before = ""
    for char in text:
        letter = unicodedata.category(char).startswith("L")
        if "\u0250" <= char <= "\u07ff" and unicodedata.category(char) != "Nd":  # ١ ۱: a script's own digits
            if unicodedata.combining(char):
                if not (before and _script(before) == "latin" and unicodedata.category(before).startswith("L")):
                    return True  # an accent on nothing, or on a letter no font would put it on
            elif _script(char) is None:
                return True
        if letter and before and unicodedata.category(before).startswith("L") and not unicodedata.combining(before) \
                and _script(char) != _script(before) \
                and frozenset({_script(char), _script(before)}) not in _SCRIPTS_SIDE_BY_SIDE:
            return True  # one word, two scripts
        before = char
    return False


def csv_text(path: Path, error: type[Exception]) -> str:
    """The text of a CSV file as a spreadsheet saves it: UTF-8, a byte order mark allowed. A file a Chinese
    spreadsheet saved as GBK is refused, also where its bytes happen to be UTF-8 too (泰山 reads as "̩ɽ")."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as failed:
        line = raw[:failed.start].count(b"\n") + 1
        raise error(f"the file is not UTF-8 text ({failed.reason} at byte {failed.start}, line {line}); save it as "
                    "UTF-8 (a spreadsheet's \"CSV UTF-8\")") from None
    if _gbk_read_as_utf8(raw):
        raise error("the file reads as GBK (the Chinese a spreadsheet saves by default), though its bytes happen "
                    "to be UTF-8 too: its names would read as letters no product has; save it as UTF-8 (a "
                    "spreadsheet's \"CSV UTF-8\")")
    return text


# A code column a spreadsheet took for a number and wrote back as one: 6.90103E+12, 6901028075831.0.
# E+ (123E45 may be a code), a decimal comma (6,90103E+12), digits grouped by thousands (6,901,028,075,831).
_SPREADSHEET_NUMBER = re.compile(r"[0-9]+([.,][0-9]+)?[eE]\+[0-9]+|[0-9]{6,}\.0+|[0-9]{1,3}(,[0-9]{3}){2,}")
# A code marked as text the way a spreadsheet marks it, the mark kept in its export: '6901028075831, ="6901028075831".
_SPREADSHEET_TEXT = re.compile(r"'[0-9]+|=\"[^\"]*\"")


def check_code(code: str, column: str = "barcode") -> None:
    """ValueError, saying why, unless ``code`` is a code a scanner types and its check digit (if any) holds."""
    if _SPREADSHEET_NUMBER.fullmatch(code):
        raise ValueError(f"{column} {code!r} is a spreadsheet's number, not the code: format the column as text "
                         "and save the file again")
    if _SPREADSHEET_TEXT.fullmatch(code):
        raise ValueError(f"{column} {code!r} holds the mark a spreadsheet puts on text, not the code alone: format "
                         "the column as text and save the file again")
    if AIM_ID.match(code):
        raise ValueError(f"{column} {code!r} begins with a symbology identifier ({code[:3]}), which the box takes off "
                         "every scan: list the code without it")
    if not scannable(code):
        raise ValueError(f"{column} {code!r} is not what a scanner types: 1 to 48 printable ASCII characters, "
                         "no space at either end")
    if controls.is_control(code) or controls.joined_at_end(code):
        raise ValueError(f"{column} {code!r} reads as the counter's control sheet (its codes bear the reserved "
                         f"prefix {controls.PREFIX}): every scan of it would be taken as the control, never sold")
    if not classify(code).valid:
        raise ValueError(f"{column} {code!r} fails its check digit")




def csv_rows(text: str, required: set[str], error: type[Exception], *,
             read: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header naming at least ``required``, each field stripped;
    ``error`` for a header that does not, a line the csv module cannot read (a field over its limit),
    or a field of the columns ``read`` holding a control character (a NUL, an escape: no name or code
    holds one; other columns, a spreadsheet's notes, may hold line breaks)."""
    import csv
    import io

    # strict: a quote never closed is an error, not the rest of the file; newline=None: line ends of \r alone too.
    reader = csv.reader(io.StringIO(text, newline=None), strict=True)
    line = 1
    try:
        header = next(reader, None)
        # As a spreadsheet writes it: "barcode, name, price" names barcode and name; its empty columns
        # past the last (",,") name nothing.
        fieldnames = [name.strip().lower() for name in header] if header else []  # "Barcode, Price" as written
        named = [name for name in fieldnames if name]
        if len(set(named)) != len(named):
            raise error("the header names a column twice: " + ",".join(fieldnames))
        if not required <= set(named):
            for separator, what in ((";", "semicolons"), ("\t", "tabs")):
                if len(named) == 1 and required <= {name.strip() for name in named[0].split(separator)}:
                    # As a spreadsheet saves "CSV" where the decimal mark is a comma, or as "text".
                    raise error(f"the file's columns are separated by {what}, not commas: save it as CSV with "
                                "commas (a spreadsheet's \"CSV UTF-8\")")
            raise error(f"the first line must be a header naming at least the columns {' and '.join(sorted(required))}")
        while True:
            line = reader.line_num + 1  # the row's first line: a quoted field (a spreadsheet's note) may hold breaks
            values = next(reader, None)
            if values is None:
                return
            if not values:
                continue  # a blank line
            if len(values) > len(fieldnames) and any(value.strip() for value in values[len(fieldnames):]):
                # An unquoted comma (a price of 1,200.00, or 23,50) splits a field in two: never read in part.
                raise error(f"line {line}: {len(values)} fields where the header names "
                            f"{len(fieldnames)} columns (a comma in a price or a name is quoted: \"1,200.00\")")
            unnamed = [column for column, (name, value) in enumerate(zip(fieldnames, values), 1)
                       if not name and value.strip()]
            if unnamed:
                # The same split, into a column the header left empty: "1,230.00" would read as a price of 1.
                raise error(f"line {line}: a value in column {unnamed[0]}, which the header names nothing "
                            "(a comma in a price or a name is quoted: \"1,200.00\")")
            fields = {name: value.strip() for name, value in zip(fieldnames, values) if name}
            if not any(fields.values()):
                continue  # a line of commas alone, as a spreadsheet writes an empty row: a blank line
            held = next(((name, found.group()) for name, value in fields.items()
                         if name in read and (found := CONTROL.search(value))), None)
            if held is not None:
                typed = " (a line break typed in the cell)" if held[1] in "\r\n" else ""
                raise error(f"line {line}: the {held[0]} holds a control character{typed}")
            yield line, fields
    except csv.Error as failed:
        raise error(f"line {line}: {failed} (a quote inside a quoted field is written twice, and "
                    "nothing comes after a closing quote but the comma)") from None  # the line it could not finish


def parse_csv(text: str) -> list[Item]:
    items: dict[str, Item] = {}
    lines: dict[str, int] = {}  # by product key: the line that listed it
    for line, row in csv_rows(text, {"barcode", "price"}, PriceListError,
                              read={"barcode", "name", "price", "unit", "packs", "cost", "product"}):
        try:
            _check_not_split(row)
            item = _item(row)
        except ValueError as error:
            raise PriceListError(f"line {line}: {error}") from None
        key = classify(item.barcode).key
        if key in items:
            raise PriceListError(f"line {line}: barcode {item.barcode} is listed twice (as {items[key].barcode})")
        items[key] = item
        lines[key] = line
    if not items:
        raise PriceListError("the price list has no items")
    both = both_readings(lines)
    if both is not None:
        raise PriceListError(f"lines {both[0]} and {both[1]} list one 8-digit label twice, read as an EAN-8 and as "
                             "a UPC-E: its price would be one or the other by the scanner")
    for key, item in items.items():
        product = classify(item.product).key if item.product else None
        if product in items and items[product].unit != "pack":
            # Its stock and sales would go to a product of its own, apart from the pack's.
            raise PriceListError(f"line {lines[key]}: product {item.product} is a {items[product].unit}'s barcode "
                                 f"(line {lines[product]}), not a pack's: a {item.unit} names the pack it holds")
    return list(items.values())


# An amount of a thousand or more written unquoted, 1,230.00, splits into "1" and "230.00": where the column after
# the amount's takes the second half, the line has as many fields as the header. Told where the two halves cannot
# be what they say: a number written with a leading 0 (no spreadsheet writes 050), a cost above ten times the
# price, cents in a column the list does not read.
_AMOUNT_HEAD = re.compile(r"[1-9][0-9]{0,2}")
_AMOUNT_TAIL = re.compile(r"[0-9]{3}(\.[0-9]{0,2})?")


def _check_not_split(row: dict[str, str]) -> None:
    """ValueError where an amount column and the column after it (in the header's order) read as one amount
    split by an unquoted comma: a price of 1 and a cost of 230.00, a cost of 1 and a price of 050, a price of 1
    and a note of 230.00."""
    columns = list(row)
    for column, after in zip(columns, columns[1:]):
        head, tail = row[column], row[after]
        if column not in ("price", "cost") or not (_AMOUNT_HEAD.fullmatch(head) and _AMOUNT_TAIL.fullmatch(tail)):
            continue
        if after not in ("price", "cost", "packs", "unit", "product", "name", "barcode"):
            split = re.fullmatch(r"[0-9]{3}\.[0-9]{2}", tail) is not None  # a column not read: its cents tell
        else:  # (a shop sells below cost at times; never at a tenth of it)
            split = tail.startswith("0") or (column, after) == ("price", "cost") and float(tail) > 10 * int(head)
        if split:
            raise ValueError(f"{column} {head!r} and {after} {tail!r} read as one amount split by an unquoted "
                             f"comma, {head},{tail}: a comma in a price is quoted (\"1,230.00\")")


def _item(row: dict[str, str]) -> Item:
    code = row.get("barcode", "")
    check_code(code)
    price = to_minor(row.get("price", ""))
    unit = row.get("unit") or "pack"
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
    packs_text = row.get("packs", "")
    if packs_text:
        if not re.fullmatch(r"[0-9]{1,5}", packs_text) or not 1 <= int(packs_text) <= MAX_PACKS:
            raise ValueError(f"packs {packs_text!r} must be a whole number from 1 to {MAX_PACKS}")
        packs = int(packs_text)
    elif unit == "case":
        raise ValueError("a case must say how many packs it holds (the packs column)")
    else:
        packs = CARTON_PACKS if unit == "carton" else 1
    if unit == "pack" and packs != 1:
        raise ValueError("a pack holds 1 pack; a row of several packs is a carton or a case")
    cost = to_minor(row["cost"], "cost") if row.get("cost") else None
    product = row.get("product") or None
    if unit != "pack":
        if product is None:
            raise ValueError(f"a {unit} must name its product's pack barcode (the product column)")
        check_code(product, "product")
        if classify(product).key == classify(code).key:
            raise ValueError(f"a {unit} has its own barcode, not its pack's")
    elif product is not None and classify(product).key != classify(code).key:
        raise ValueError("a pack row is its own product; only carton and case rows name another")
    else:
        product = None
    return Item(code, row.get("name", ""), price, unit, packs, cost, product)
