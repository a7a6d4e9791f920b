"""The counter: what a scan means for the shop, and what the retailer hears."""

import os
import re

import pytest

from agent.counter import Counter
from agent.orders import OrderError
from agent.orders import parse_csv as parse_order
from agent.prices import PriceListError, parse_csv, read_csv
from drivers.decoder import Scan
from drivers.feedback import Signal
from storage import Journal

from .journals import rot

PRICES = ("barcode,name,price\n036000291452,Imported (pack),35.50\n6901028075831,Hongtashan (pack),23.00\n"
          "042100005264,Chewing gum (UPC-A),5.00\n")


class AtTheCounter:
    """The counter with its journal, as the store's thread runs it."""

    def __init__(self, journal):
        self.journal = journal
        self._counter = Counter()

    def record(self, scan):
        """The last event the scan recorded; what the retailer heard is ``self.signal``."""
        outcome = self._counter.record(self.journal, scan)
        self.signal = outcome.signal
        return outcome.events[-1] if outcome.events else None


@pytest.fixture
def counter(tmp_path):
    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    items = parse_csv(PRICES)
    journal.append("price_list", {"items": [{"barcode": i.barcode, "name": i.name, "price": i.price} for i in items]})
    yield AtTheCounter(journal)
    journal.close()


def scan(text, aim=""):
    return Scan(text, "/dev/input/event3", 1_764_000_000.0, 1_764_000_000.05, aim=aim)


def test_a_priced_product_is_a_sale_at_its_price_and_sounds_good(counter):
    event = counter.record(scan("6901028075831"))
    assert (event.kind, event.body["unit_price"], event.body["known"], event.body["name"]) == ("sale", 2300, True, "Hongtashan (pack)")
    assert event.body["scanned_at"] == "2025-11-24T16:00:00.050Z"
    assert counter.signal is Signal.GOOD


def test_a_upca_read_as_ean13_finds_its_price(counter):
    event = counter.record(scan("0036000291452"))
    assert (event.body["symbology"], event.body["unit_price"]) == ("upca", 3550)


def test_a_small_packs_upce_finds_the_price_of_its_upca(counter):
    """Scanners send a UPC-E as its eight digits; the price list names the product by its UPC-A."""
    event = counter.record(scan("04252614"))
    assert (event.kind, event.body["symbology"], event.body["unit_price"], counter.signal) == (
        "sale", "upce", 500, Signal.GOOD)


def test_an_unknown_product_is_recorded_flagged_and_asks_for_attention(counter):
    event = counter.record(scan("6935750500019"))
    assert (event.kind, event.body["known"], event.body["unit_price"]) == ("sale", False, None)
    assert counter.signal is Signal.ATTENTION


def test_a_misread_is_recorded_as_such_never_a_sale_and_sounds_an_error(counter):
    event = counter.record(scan("6901028075832"))
    assert (event.kind, event.body["reason"]) == ("misread", "check digit")
    assert counter.signal is Signal.ERROR
    assert [e.kind for e in counter.journal.read_after(0)] == ["price_list", "misread"]


@pytest.mark.parametrize("code, aim, reason", [
    ("4006381333932", "]E0", "check digit"), ("96385075", "]E4", "check digit"),
    ("400638133393212", "]E3", "check digit"),  # with an add-on: the product's code misread all the same
    ("12", "]E1", "an EAN add-on read without its product's code"),
])
def test_an_ean_with_its_aim_identifier_and_a_bad_check_digit_is_a_misread_never_a_sale(counter, code, aim, reason):
    event = counter.record(scan(code, aim=aim))
    assert (event.kind, event.body["reason"], event.body["aim"]) == ("misread", reason, aim)
    assert counter.signal is Signal.ERROR


def test_a_code_with_its_aim_identifier_keeps_its_symbology(counter):
    event = counter.record(scan("0106901028075831\x1d10AB12", aim="]C1"))
    assert (event.body["symbology"], event.body["aim"], event.body["code"]) == ("gs1-128", "]C1", "0106901028075831\x1d10AB12")


def test_a_price_list_loaded_later_prices_the_next_scan(counter):
    assert counter.record(scan("96385074")).body["known"] is False
    counter.journal.append("price_list", {"items": [{"barcode": "96385074", "name": "Gum", "price": 150}]})
    assert counter.record(scan("96385074")).body["unit_price"] == 150


@pytest.mark.parametrize(
    "text,message",
    [
        ("code,price\n1,2\n", "header naming at least the columns barcode and price"),
        ("barcode,price\n6901028075832,1\n", "line 2: barcode '6901028075832' fails its check digit"),
        # A product no scan could ever sell: each would be taken as the sheet's control.
        ("barcode,price\nCB:QTY2,1\n", "line 2: barcode 'CB:QTY2' reads as the counter's control sheet"),
        ("barcode,price\ncb;void,1\n", "line 2: barcode 'cb;void' reads as the counter's control sheet"),
        ("barcode,price\nLOT7CB:RETURN,1\n", "line 2: barcode 'LOT7CB:RETURN' reads as the counter's control sheet"),
        ("barcode,price\n036000291452,1\n0036000291452,2\n", "line 3: barcode 0036000291452 is listed twice (as 036000291452)"),
        # One 8-digit label that is a whole EAN-8 and a whole UPC-E, listed both ways: two prices by the scanner.
        ("barcode,price\n00100007,1\n00000000100007,2\n", "lines 2 and 3 list one 8-digit label twice"),
        ("barcode,price\n96385074,1.234\n", "line 2: price '1.234' is not an amount: zero or more in digits 0-9 "
                                            "(thousands grouped by commas or not), at most 9 before the point and 2 after"),
        ('barcode,price\n96385074,"23,50"\n', "price '23,50' is not an amount"),  # a decimal comma: never 2350
        ('barcode,price\n96385074,"1,23,000"\n', "price '1,23,000' is not an amount"),
        ('barcode,price\n96385074,"1,000,000,000"\n', "price '1,000,000,000' is not an amount"),
        ('barcode,price\n96385074,"0,500"\n', "price '0,500' is not an amount"),  # a decimal comma again, not 500
        ('barcode,price\n96385074,"001,000"\n', "price '001,000' is not an amount"),
        ("barcode,price\n96385074,-1\n", "price '-1' is not an amount"),
        ("barcode,price\n96385074,abc\n", "line 2: price 'abc' is not an amount"),
        ("barcode,price\n96385074,1_000\n", "price '1_000' is not an amount"),
        ("barcode,price\n96385074,1E+2\n", "price '1E+2' is not an amount"),
        ("barcode,price\n96385074,\u0662\u0663\n", "price '\u0662\u0663' is not an amount"),  # Arabic-Indic digits
        ("barcode,price\n96385074,\uff11\n", "price '\uff11' is not an amount"),  # a full-width 1
        ("barcode,price\n96385074,1e30\n", "price '1e30' is not an amount"),
        ("barcode,price\n96385074,1000000000\n", "price '1000000000' is not an amount"),
        ("barcode,price,cost\n96385074,1,nan\n", "cost 'nan' is not an amount"),
        ("barcode,price\n" + "A" * 49 + ",1\n", "is not what a scanner types: 1 to 48 printable ASCII characters"),
        ("barcode,price\n6.90103E+12,23\n", "line 2: barcode '6.90103E+12' is a spreadsheet's number, not the code"),
        ("barcode,price\n6.901028E+012,23\n", "barcode '6.901028E+012' is a spreadsheet's number"),
        ("barcode,price\n6901028075831.0,23\n", "barcode '6901028075831.0' is a spreadsheet's number"),
        ("barcode,price\n123E45,23\n6.90103E+12,1\n", "line 3: barcode '6.90103E+12'"),  # 123E45 may be a Code 39 label
        # Where the decimal mark is a comma; grouped by thousands; marked as text the spreadsheet's way.
        ('barcode,price\n"6,90103E+12",23\n', "barcode '6,90103E+12' is a spreadsheet's number"),
        ('barcode,price\n"6,901,028,075,831",23\n', "barcode '6,901,028,075,831' is a spreadsheet's number"),
        ("barcode,price\n'6901028075831,23\n", "barcode \"'6901028075831\" holds the mark a spreadsheet puts on text"),
        ('barcode,price\n="6901028075831",23\n', "barcode '=\"6901028075831\"' holds the mark a spreadsheet puts"),
        ("barcode,price,unit,product\n6901028075848,225,carton,6.90103E+12\n",
         "line 2: product '6.90103E+12' is a spreadsheet's number, not the code"),
        ("barcode,price\n\uff19\uff16\uff13\uff18\uff15\uff10\uff17\uff14,1\n", "is not what a scanner types"),
        ("barcode,price\n]E06901028075832,1\n", "barcode ']E06901028075832' begins with a symbology identifier (]E0)"),
        ("barcode,price\n]C1ABC123,1\n", "which the box takes off every scan: list the code without it"),
        ("barcode,name,price\n6901028075831,Hong\u202etashan,1\n", "line 2: the name holds a control character"),
        ("barcode,price,unit,packs,product\n6901028075848,1,case,\u00b2,6901028075831\n",
         "packs '\u00b2' must be a whole number from 1 to 10000"),
        ("barcode,price\n", "the price list has no items"),
        ("barcode,price,unit,packs,product\n6901028075831,23,pack,,\n6901028075848,230,carton,10,6901028075831\n"
         "16901028075838,11500,case,500,6901028075848\n",
         "line 4: product 6901028075848 is a carton's barcode (line 3), not a pack's: a case names the pack it holds"),
        # The file's own line: past blank lines, and a note over three lines in a row before.
        ("barcode,name,price\n6901028075831,x,23.00\n\n\n96385074,y,2x\n", "line 5: price '2x' is not an amount"),
        ('barcode,name,price,notes\n6901028075831,x,23.00,"a\nb\nc"\n96385074,y,2x,\n', "line 5: price '2x'"),
        ('barcode,name,price,notes\n6901028075831,x,2x,"a\r\nb"\n', "line 2: price '2x'"),
    ],
)
def test_a_bad_price_list_is_refused_with_its_line(text, message):
    with pytest.raises(PriceListError) as error:
        parse_csv(text)
    assert message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("barcode,name,quantity\n6901028075831,Hongtashan,2\n", None),
    ("barcode,name,quantity\n6901028075831,Hongtashan,\u00b2\n", "line 2: quantity '\u00b2' must be a whole number"),
    ("barcode,name,quantity\n6901028075831,Hongtashan,0\n", "line 2: quantity '0' must be a whole number"),
    ("barcode,name,quantity\n6901028075832,Hongtashan,2\n", "line 2: barcode '6901028075832' fails its check digit"),
    ("barcode,name,quantity\n" + "A" * 49 + ",Long,2\n", "is not what a scanner types: 1 to 48 printable ASCII characters"),
    # A spreadsheet that took the code column for numbers: the code itself is gone from the file.
    ("barcode,name,quantity\n6.90103E+12,Hongtashan,2\n", "line 2: barcode '6.90103E+12' is a spreadsheet's number, "
                                                          "not the code: format the column as text and save the file again"),
    ("barcode,name\n6901028075831,Hongtashan\n", "header naming at least the columns barcode and quantity"),
    ("barcode,name,quantity\n", "the order has no lines"),
])
def test_an_orders_lines_are_whole_numbers_of_codes_a_scanner_types(text, message):
    from agent.orders import OrderError
    from agent.orders import parse_csv as parse_order

    if message is None:
        assert parse_order(text) == [{"barcode": "6901028075831", "name": "Hongtashan", "quantity": 2}]
        return
    with pytest.raises(OrderError, match=re.escape(message)):
        parse_order(text)


@pytest.mark.parametrize("change", [{"cost": "2000"}, {"packs": "2"}, {"quantity": True}, {"unit_price": 23.0},
                                    {"product": 6901028075831}, {"day": ["2026-11-29"]}, {"name": 7},
                                    {"product_name": {"zh": "x"}}],
                         ids=["cost-text", "packs-text", "quantity-bool", "price-float", "product-number", "day-list",
                              "name-number", "product-name-object"])
def test_an_event_whose_numbers_or_names_the_ledger_cannot_read_counts_for_nothing_not_half(change):
    """A tool's event, or a damaged one, stored at central: folded half way, a product's row would count it
    while the day's total did not."""
    from agent.ledger import Ledger

    body = {"code": "6901028075831", "product": "06901028075831", "day": "2026-11-29", "quantity": 1, "packs": 1,
            "unit_price": 2300, "cost": 2000, "known": True}
    ledger = Ledger(keep_days=True)
    ledger.apply(1, "sale", body)
    before = (ledger.day("2026-11-29").total.as_json(), dict(ledger.stock))
    ledger.apply(2, "sale", {**body, **change})
    assert ledger.unreadable == [2] and ledger.last_seq == 2
    assert (ledger.day("2026-11-29").total.as_json(), dict(ledger.stock)) == before
    assert ledger.day("2026-11-29").products["06901028075831"].as_json() == before[0]
    # What reads the ledger (the box's and central's reports, which sort its products) goes on.
    from agent import reports

    assert [row["product"] for row in reports.sales(ledger, ["2026-11-29"])["products"]] == ["06901028075831"]


def test_a_sale_the_journal_cannot_read_back_counts_for_nothing_and_selling_goes_on(tmp_path, caplog):
    """Bit rot in one row of the file: a counter starting again once refused every scan after it."""
    key = os.urandom(32)
    journal = Journal.open(tmp_path / "journal.db", key)
    journal.append("price_list", {"items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2300}]})
    first = AtTheCounter(journal)
    for _ in range(3):
        first.record(scan("6901028075831"))
    rot(journal, 3)

    journal = Journal.open(tmp_path / "journal.db", key)
    again = AtTheCounter(journal)  # the agent started again: it folds the journal from the start
    event = again.record(scan("6901028075831"))
    assert (event.seq, event.kind, again.signal) == (5, "sale", Signal.GOOD)
    ledger = again._counter.ledger
    assert ledger.stock["06901028075831"] == -3  # the sales at seqs 2, 4 and 5; not the one at 3
    assert "journal event seq=3 (sale) cannot be read: its sealed body fails authentication" in caplog.text
    assert "6901028075831" not in caplog.text
    journal.close()


def test_a_column_the_price_list_does_not_read_may_hold_a_line_break():
    """A spreadsheet's notes column with Alt+Enter in a cell: the list loads; a name with one would not."""
    items = parse_csv('barcode,name,price,notes\n6901028075831,Hongtashan,23.00,"first line\nsecond\tline"\n')
    assert [(i.barcode, i.name, i.price) for i in items] == [("6901028075831", "Hongtashan", 2300)]
    with pytest.raises(PriceListError, match=re.escape("line 2: the name holds a control character (a line break typed in the cell)")):
        parse_csv('barcode,name,price\n6901028075831,"Hong\ntashan",23.00\n')


@pytest.mark.parametrize("name", ["泰山(硬)", "双喜(细支)", "石狮", "茅台(硬)"])
def test_a_list_a_spreadsheet_saved_as_gbk_is_refused_though_its_bytes_are_utf8_too(tmp_path, name):
    """The CSV a Chinese spreadsheet saves by default is GBK: where its bytes happen to be UTF-8 as well, the
    list loaded, and every box sold 泰山 as "̩ɽ(Ӳ)" in its reports and central's."""
    path = tmp_path / "prices.csv"
    path.write_bytes(f"barcode,name,price\n6901028075831,{name},23.00\n".encode("gbk"))
    with pytest.raises(PriceListError, match="the file reads as GBK"):
        read_csv(path)
    path.write_text(f"barcode,name,price\n6901028075831,{name},23.00\n96385074,Café crème,1.50\n", encoding="utf-8")
    assert [item.name for item in read_csv(path)] == [name, "Café crème"]
    # Names in other scripts, in UTF-8, are what they say, though their bytes read as GBK too.
    names = ["водка", "Пиво Балтика", "β-carotene", "Cafe\u0301 cre\u0300me", "Ελληνικό", "שלום", "مرحبا", "Ukraїna",
             "өндөг", "Hawaiʻi Coffee", "Ωmega-3", "كوكا كولا ١ لتر", "پپسی ۱ لیتر", "کباب", "چای", "ҳалол", "ҷой"]
    path.write_text("barcode,name,price\n" + "".join(f"SKU{n},{name},1.50\n" for n, name in enumerate(names)),
                    encoding="utf-8")
    assert [item.name for item in read_csv(path)] == names
    # A traditional character beside them (GBK's, not GB2312's) hides nothing of the rest.
    for names in (["泰山 蓮"], ["泰山", "貨車"]):
        path.write_bytes(("barcode,name,price\n" + "".join(f"SKU{n},{name},1.50\n" for n, name in enumerate(names)))
                         .encode("gbk"))
        with pytest.raises(PriceListError, match="the file reads as GBK"):
            read_csv(path)
    path.write_bytes("barcode,name,price\n6901028075831,红塔山,23.00\n".encode("gbk"))  # GBK that is no UTF-8
    with pytest.raises(PriceListError, match="not UTF-8 text .* line 2\\); save it as UTF-8"):
        read_csv(path)


@pytest.mark.parametrize("line", ["6901028075848,Zhonghua (carton),1,200.00", "6901028075831,Hongtashan,23,50"],
                         ids=["thousands-separator", "decimal-comma"])
def test_a_line_with_more_fields_than_the_header_names_is_refused_with_its_line(line):
    """An unquoted 1,200.00 or 23,50 splits the price in two: once the list loaded 1.00 and 23.00, the rest of
    the line dropped without a word, and a push would have set that price in every box of the region."""
    with pytest.raises(PriceListError, match=re.escape("line 3: 4 fields where the header names 3 columns (a "
                                                       "comma in a price or a name is quoted: \"1,200.00\")")):
        parse_csv(f'barcode,name,price\n6901028075831,Hongtashan,23.00\n{line}\n')
    with pytest.raises(OrderError, match="line 2: 3 fields where the header names 2 columns"):
        parse_order("barcode,quantity\n6901028075848,1,200\n")
    # Empty fields past the header's (a spreadsheet's trailing commas) hold nothing: the list loads.
    items = parse_csv("barcode,name,price\n6901028075831,Hongtashan,23.00,,\n")
    assert [(i.barcode, i.price) for i in items] == [("6901028075831", 2300)]
    # As a spreadsheet saves a sheet: spaces after the header's commas, empty columns past the last, empty rows.
    items = parse_csv("barcode, name, price,,\r\n6901028075831,Hongtashan,23.00,,\r\n,,,,\r\n96385074,Gum,1.50,,\r\n")
    assert [(i.barcode, i.name, i.price) for i in items] == [("6901028075831", "Hongtashan", 2300), ("96385074", "Gum", 150)]
    # A sheet saved with semicolons or tabs between its columns (where the decimal mark is a comma): said so.
    for separator, what in ((";", "semicolons"), ("\t", "tabs")):
        with pytest.raises(PriceListError, match=f"the file's columns are separated by {what}, not commas"):
            parse_csv(f"barcode{separator}name{separator}price\n6901028075831{separator}Hongtashan{separator}23,00\n")
        with pytest.raises(OrderError, match=f"the file's columns are separated by {what}, not commas"):
            parse_order(f"barcode{separator}quantity\n6901028075831{separator}10\n")
    # Nor a read column after the price's, where the halves cannot be what they say: a cost of 230.00 above a price
    # of 1.00; a number written with a leading 0, as no spreadsheet writes one.
    for header, line in (("barcode,name,price,cost", "6901028075848,Zhonghua,1,230.00"),
                         ("barcode,name,price,packs,unit,product", "6901028075848,Zhonghua,12,030,case,6901028075831"),
                         ("barcode,name,cost,price,unit", "6901028075848,Zhonghua,1,050,carton"),
                         ("barcode,name,price,备注", "6901028075848,Zhonghua,1,230.00")):
        with pytest.raises(PriceListError, match="line 2: (price|cost) '1.?' and (cost|packs|price|备注) '[0-9.]+' read as "
                                                 "one amount split by an unquoted comma"):
            parse_csv(f"{header}\n{line}\n")
    # A spreadsheet's carton row (a cost below its price, no decimals), a column not read after the price: as written.
    items = parse_csv("barcode,name,price,cost,库存\n6901028075848,Zhonghua,230,195,120\n96385074,Gum,1,0.80,200\n"
                      "6901028075855,Zhonghua (case),950,900,\n")
    assert [(i.price, i.cost) for i in items] == [(23000, 19500), (100, 80), (95000, 90000)]
    items = parse_csv("barcode,name,price,规格\n96385074,Gum,8,200\n")
    assert [i.price for i in items] == [800]
    # Sold below cost (a clearance): as written.
    items = parse_csv("barcode,name,price,cost\n96385074,Gum,100,120\n6901028075848,Zhonghua,225,230\n")
    assert [(i.price, i.cost) for i in items] == [(10000, 12000), (22500, 23000)]
    # Nor does an unquoted comma fill a column the header left empty: 1,230.00 read as 1.00, 1,000 packs as 1.
    with pytest.raises(PriceListError, match=re.escape("line 3: a value in column 4, which the header names nothing")):
        parse_csv("barcode,name,price,,\n6901028075831,Hongtashan,23.00,,\n6901028075848,Zhonghua,1,230.00,\n")
    with pytest.raises(OrderError, match=re.escape("line 2: a value in column 3, which the header names nothing")):
        parse_order("barcode,quantity,,\n6901028075848,1,000,\n")
    with pytest.raises(PriceListError, match="line 2: a value in column 2, which the header names nothing"):
        parse_csv("barcode,,price\n6901028075831,Hongtashan,23.00\n")
    # Quoted as the advice says (and as a spreadsheet writes a grouped amount), it is the amount.
    items = parse_csv('barcode,name,price,cost\n6901028075848,Zhonghua (carton),"1,200.00","1,050"\n')
    assert [(i.price, i.cost) for i in items] == [(120000, 105000)]


def test_a_price_list_the_journal_cannot_read_back_gives_way_to_the_one_before(tmp_path):
    """The largest sealed rows, so the likeliest to rot: the box once refused every scan after a restart."""
    key = os.urandom(32)
    journal = Journal.open(tmp_path / "journal.db", key)
    journal.append("price_list", {"items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2300}]})
    journal.append("price_list", {"items": [{"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2500}]})
    rot(journal, 2)

    journal = Journal.open(tmp_path / "journal.db", key)
    assert journal.last("price_list").seq == 1 and [e.seq for e in journal.of_kind("price_list")] == [1]
    event = AtTheCounter(journal).record(scan("6901028075831"))
    assert (event.kind, event.body["unit_price"]) == ("sale", 2300)
    journal.close()


def test_a_counter_catching_up_reads_large_events_a_bounded_amount_at_a_time(tmp_path, monkeypatch):
    """A journal of many large price lists (a convenience shop's catalogue, weekly): a box starting again
    reads them a few at a time, never a thousand events' worth of them at once."""
    from agent.counter import FOLD_BYTES

    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    items = [{"barcode": f"P{n:05d}", "name": f"Product {n:05d} " + "x" * 60, "price": 100 + n} for n in range(3000)]
    for week in range(8):
        journal.append("price_list", {"items": items, "source": f"week {week}"})
    reads = []
    read_batch = journal.read_batch

    def counted(after, **limits):
        events = read_batch(after, **limits)
        reads.append([len(journal._conn.execute("SELECT sealed FROM events WHERE seq = ?", [e.seq]).fetchone()[0])
                      for e in events])
        return events

    monkeypatch.setattr(journal, "read_batch", counted)
    catching_up = AtTheCounter(journal)
    assert catching_up.record(scan("P00042")).body["unit_price"] == 142
    assert len(reads) > 1 and all(len(sizes) == 1 or sum(sizes) <= FOLD_BYTES for sizes in reads)
    journal.close()


@pytest.mark.parametrize("listed, priced", [
    ("01234565", {"": True, "]E4": True, "]E0": True}),  # eight digits alone: they read either way
    ("00000001234565", {"": True, "]E4": True, "]E0": False}),  # an EAN-8's GTIN-14: a UPC-E named is another label
])
def test_a_shops_own_ean8_label_is_one_product_whichever_scanner_reads_it(tmp_path, listed, priced):
    """Eight digits beginning 0 that are an EAN-8 and a whole UPC-E too: listed as typed, a keyboard-wedge scanner
    (digits alone: a UPC-E) was priced and a HID POS scanner (]E4: an EAN-8) sold it unpriced; listed as its
    GTIN-14, the reverse."""
    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    journal.append("price_list", {"currency": "CNY", "items": [
        item.as_json() for item in parse_csv(f"barcode,name,price\n{listed},Lighter (shop label),2.00\n")]})
    counter = Counter()
    sold = {}
    for aim in priced:
        with journal.transaction():
            outcome = counter.record(journal, Scan("01234565", "scanner", 1_796_011_200.0, 1_796_011_200.05, aim=aim))
        sold[aim] = outcome.events[-1].body["unit_price"] == 200
    journal.close()
    assert sold == priced


def test_a_sheet_as_a_clerk_saves_it_loads_as_written():
    """Headers in capitals, line ends of \\r alone, thousands grouped in an order's quantity: read as meant."""
    items = parse_csv("Barcode, Name ,PRICE\r6901028075831,Hongtashan,23.00\r96385074,Gum,1.50\r")
    assert [(i.barcode, i.name, i.price) for i in items] == [("6901028075831", "Hongtashan", 2300), ("96385074", "Gum", 150)]
    assert parse_order('barcode,quantity\n6901028075831,"1,000"\n96385074,12\n') == [
        {"barcode": "6901028075831", "name": "", "quantity": 1000}, {"barcode": "96385074", "name": "", "quantity": 12}]
    with pytest.raises(OrderError, match="quantity '0,100' must be a whole number"):
        parse_order('barcode,quantity\n6901028075831,"0,100"\n')


@pytest.mark.parametrize("column", ["unit", "packs"])
def test_an_order_naming_a_unit_or_packs_is_refused_for_its_quantity_is_in_the_barcodes_units(column):
    """5 with a unit of carton (50 packs) was received as 5 packs with the good signal."""
    with pytest.raises(OrderError, match=f"the order names a column {column}, which an order does not have: a line's "
                                         "quantity is in the units its barcode stands for"):
        parse_order(f"barcode,name,quantity,{column}\n6901028075831,Hongtashan,5,{'carton' if column == 'unit' else 10}\n")
