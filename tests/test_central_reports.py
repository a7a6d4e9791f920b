"""Central's reports per shop and region, folded from the events the boxes sent, on a real central store."""

import time

import pytest

from agent import reports as box_reports
from agent.catalog import product_key
from central import reports
from central.store import CentralStore, Shop

PACK, CARTON = "6901028075831", "6901028075848"
YUNYAN = "6901028001915"
HONGHE = "6901028180559"
DAY = "2026-11-30"


def sale(seq, code, *, unit="pack", packs=1, price=2300, list_price=2300, cost=1950, kind="sale", day=DAY,
         product=PACK, product_name="Hongtashan (pack)", name="Hongtashan"):
    return {"seq": seq, "kind": kind, "body": {
        "code": code, "symbology": "ean13", "aim": None, "scanner": "x", "scanned_at": f"{day}T04:00:00.000Z",
        "day": day, "quantity": 1, "unit": unit, "packs": packs, "product": product_key(product), "known": True,
        "currency": "CNY", "unit_price": price, "list_price": list_price, "cost": cost, "price_source": "list",
        "name": name, "product_name": product_name}}


def count(seq, packs, *, product=PACK, name="Hongtashan (pack)"):
    return {"seq": seq, "kind": "count_closed", "body": {"started": seq, "at": f"{DAY}T09:00:00.000Z", "lines": [
        {"product": product_key(product), "name": name, "expected": 0, "counted": packs, "difference": packs}]}}


def received(seq, packs, *, product=PACK, name=None):
    return {"seq": seq, "kind": "received", "body": {"product": product_key(product), "packs": packs, "name": name,
                                                     "at": f"{DAY}T08:00:00.000Z"}}


@pytest.fixture
def store(tmp_path):
    store = CentralStore(tmp_path / "central.db")
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe", monitoring=True))
    store.add_shop(Shop("530100000002", "Gejiu No. 1", "honghe"))
    for device, shop in (("cb-old", "530100000001"), ("cb-new", "530100000001"), ("cb-other", "530100000002")):
        store.register(device, "k" * 43, shop=shop, region="honghe")
    yield store
    store.close()


def test_a_shops_stock_is_its_serving_boxes_not_the_box_it_replaced(store):
    store.add_events("cb-old", 1, [count(1, 50), sale(2, PACK)])
    store.revoke("cb-old")
    store.add_events("cb-new", 1, [count(1, 49), sale(2, PACK)])  # the same shelf, counted again
    shelves = reports.stock(store, reports.Scope(shop="530100000001"))
    assert [(row["product"], row["packs"]) for row in shelves["530100000001"]["products"]] == [(product_key(PACK), 48)]
    # Sales are a flow: both boxes' count.
    sold = reports.sales(store, [DAY], reports.Scope(shop="530100000001"))
    assert sold["shops"]["530100000001"]["total"]["packs"] == 2


@pytest.mark.parametrize("revoked", [True, False], ids=["old-box-revoked", "old-box-not-revoked"])
def test_a_journal_restored_onto_another_box_is_its_shelf_counted_on_from_its_last_box(store, revoked):
    """The old box received 100 packs and sold 2, and broke; its journal, restored onto a new box, goes on:
    4 sold, on the new box's own id. Both boxes agree with the box's own report, to the pack: once central
    folded the new box from nothing (-4 with the old box revoked, unflagged), or counted the old box's
    shelf beside the new one's, which is the same shelf (184 where the box says 86)."""
    journal = "a" * 32
    history = [received(1, 100), sale(2, PACK), sale(3, PACK)]
    store.add_events("cb-old", 1, history, journal=journal)
    if revoked:
        store.revoke("cb-old")
    own = [count(4, 90), sale(5, PACK), sale(6, PACK), sale(7, PACK), sale(8, PACK)]
    store.add_events("cb-new", 1, own, journal=journal, base_seq=3)
    on_the_box = box_reports.stock(box_reports.fold((e["seq"], e["kind"], e["body"]) for e in history + own))
    assert [(row["product"], row["packs"]) for row in on_the_box["products"]] == [(product_key(PACK), 86)]
    shelf = reports.stock(store, reports.Scope(shop="530100000001"))["530100000001"]
    assert [(row["product"], row["packs"]) for row in shelf["products"]] == [(product_key(PACK), 86)]
    # Without a count on the new box: 100 received, 6 sold.
    store.register("cb-third", "k" * 43, shop="530100000002", region="honghe")
    store.add_events("cb-other", 1, history, journal="b" * 32)
    store.revoke("cb-other")
    store.add_events("cb-third", 1, [sale(4, PACK), sale(5, PACK)], journal="b" * 32, base_seq=3)
    shelf = reports.stock(store, reports.Scope(shop="530100000002"))["530100000002"]
    assert [(row["product"], row["packs"], row["negative_since"]) for row in shelf["products"]] == [
        (product_key(PACK), 96, None)]
    # Sales are each event once, whichever box holds it.
    sold = reports.sales(store, [DAY], reports.Scope(shop="530100000001"))
    assert sold["shops"]["530100000001"]["total"]["packs"] == 6


def test_a_region_is_the_sum_of_its_shops_to_the_fen(store):
    store.add_events("cb-new", 1, [sale(1, PACK), sale(2, CARTON, unit="carton", packs=10, price=22500,
                                                        list_price=22500, cost=19500)])
    store.add_events("cb-other", 1, [sale(1, PACK, price=2150), sale(2, PACK, kind="return")])
    region = reports.sales(store, [DAY], reports.Scope(region="honghe"))
    shops = region["shops"]
    assert shops["530100000001"]["total"]["amount"] == 2300 + 22500
    assert shops["530100000002"]["total"]["amount"] == 2150 - 2300
    assert region["all_shops"]["total"]["amount"] == 2300 + 22500 + 2150 - 2300
    for shop, report in shops.items():  # each shop's figures are its box's own report's
        device = "cb-new" if shop == "530100000001" else "cb-other"
        own = box_reports.sales(box_reports.fold(store.device_events(device)), [DAY])
        assert report["total"] == own["total"]


def test_market_monitoring_gives_each_units_actual_price_beside_its_list_price_for_monitoring_points(store):
    store.add_events("cb-new", 1, [count(1, 30), sale(2, PACK, price=2200), sale(3, PACK, price=2200), sale(4, PACK),
                                   sale(5, CARTON, unit="carton", packs=10, price=22500, list_price=22500)])
    store.add_events("cb-other", 1, [sale(1, PACK, price=2000)])  # a general shop: not a monitoring point
    [row] = reports.prices(store, [DAY], reports.Scope(monitoring=True))
    assert (row["shop"], row["stock"]) == ("530100000001", 30 - 3 - 10)
    assert row["actual_prices"] == [
        {"unit": "pack", "price": 2200, "list_price": 2300, "lines": 2},
        {"unit": "pack", "price": 2300, "list_price": 2300, "lines": 1},
        {"unit": "carton", "price": 22500, "list_price": 22500, "lines": 1}]


@pytest.fixture
def fleet(store):
    """The fixture's two shops in honghe, a shop in another region, and a box that serves no shop."""
    store.add_shop(Shop("530300000001", "Qujing No. 8", "qujing", monitoring=True))
    store.register("cb-far", "k" * 43, shop="530300000001", region="qujing")
    store.register("cb-loose", "k" * 43)
    for device in ("cb-new", "cb-other", "cb-far", "cb-loose"):
        store.add_events(device, 1, [sale(1, PACK)])
    return store


@pytest.mark.parametrize("scope, shops", [
    (reports.Scope(), ["530100000001", "530100000002", "530300000001", "cb-loose"]),
    (reports.Scope(region="honghe"), ["530100000001", "530100000002"]),
    (reports.Scope(region="qujing"), ["530300000001"]),
    (reports.Scope(shop="530100000002"), ["530100000002"]),
    (reports.Scope(device="cb-far"), ["530300000001"]),
    (reports.Scope(device="cb-loose"), ["cb-loose"]),  # a box with no shop is its own
    (reports.Scope(monitoring=True), ["530100000001", "530300000001"]),
    (reports.Scope(region="qujing", monitoring=True), ["530300000001"]),
    (reports.Scope(shop="530100000002", monitoring=True), []),
    (reports.Scope(region="kunming"), []),
])
def test_a_report_covers_exactly_the_devices_in_its_scope(fleet, scope, shops):
    report = reports.sales(fleet, [DAY], scope)
    assert sorted(report["shops"]) == sorted(shops)
    assert report["all_shops"]["total"]["packs"] == sum(s["total"]["packs"] for s in report["shops"].values())
    assert set(reports.stock(fleet, scope)) == set(shops)


def test_a_device_registered_to_a_shop_central_does_not_know_is_no_monitoring_point(store):
    store.register("cb-stray", "k" * 43, shop="999999999999", region="honghe")
    store.add_events("cb-stray", 1, [sale(1, PACK)])
    assert "999999999999" not in reports.sales(store, [DAY], reports.Scope(monitoring=True))["shops"]
    assert "999999999999" in reports.sales(store, [DAY], reports.Scope(region="honghe"))["shops"]


def test_a_sales_report_names_its_days_and_counts_only_them(store):
    store.add_events("cb-new", 1, [sale(1, PACK), sale(2, PACK, day="2026-11-29"), sale(3, PACK, day="2026-11-28")])
    one = reports.sales(store, [DAY], reports.Scope(shop="530100000001"))
    assert one["days"] == one["all_shops"]["days"] == [DAY]
    assert one["all_shops"]["total"]["packs"] == 1
    two = reports.sales(store, ["2026-11-29", DAY], reports.Scope(shop="530100000001"))
    assert two["days"] == ["2026-11-29", DAY]
    assert two["all_shops"]["total"]["packs"] == 2


def test_a_shop_with_two_counters_sums_their_shelves_and_names_the_one_below_zero(store):
    """Both serving boxes' stock of a product together: its packs summed, its name and whether it was
    counted from either. Each box counts its own shelf, so a product is below zero where one box's own
    report says so, named with that box and its event, whatever the other box holds."""
    store.register("cb-second", "k" * 43, shop="530100000002", region="honghe")
    store.add_events("cb-other", 1, [count(1, 2), sale(2, PACK), sale(3, PACK), sale(4, PACK),  # this box: -1
                                     sale(5, YUNYAN, product=YUNYAN, product_name=None, name=None),  # never counted
                                     count(6, 1, product=CARTON, name=None),
                                     sale(7, CARTON, product=CARTON, product_name=None, name=None, packs=2),  # -1
                                     count(8, 3, product=HONGHE), sale(9, HONGHE, product=HONGHE, packs=3)])  # 0
    store.add_events("cb-second", 1, [received(1, 10, name="Hongtashan (pack)"),  # this box: +10
                                      received(2, 3, product=YUNYAN, name="Yunyan (pack)"),
                                      sale(3, CARTON, product=CARTON, product_name="Hongtashan (carton)", packs=3,
                                           unit="carton"),  # sold here, never counted here: no shortage of its own
                                      sale(4, HONGHE, product=HONGHE, packs=2)])
    shelf = reports.stock(store, reports.Scope(shop="530100000002"))["530100000002"]
    rows = {row["product"]: row for row in shelf["products"]}
    assert list(rows) == sorted(rows)
    below = {p: (rows[p]["packs"], rows[p]["negative_since"], rows[p]["negative_device"]) for p in rows}
    assert below == {product_key(PACK): (9, 4, "cb-other"),  # the first counter sold more than it held
                     product_key(YUNYAN): (2, None, None),  # sold before it was ever counted there: not short
                     product_key(CARTON): (-4, 7, "cb-other"),
                     product_key(HONGHE): (-2, None, None)}  # empty on the box that counted it, sold on one that did not
    assert rows[product_key(YUNYAN)]["name"] == "Yunyan (pack)"  # the second box's name where the first has none
    assert rows[product_key(YUNYAN)]["tracked"] is True  # the second box received it
    assert rows[product_key(CARTON)]["name"] == "Hongtashan (carton)"
    assert [row["product"] for row in shelf["negative"]] == [product_key(PACK), product_key(CARTON)]
    table = box_reports.stock_table(shelf).splitlines()
    assert [line.split("  ")[-1].strip() for line in table if line.startswith(product_key(CARTON))] == [
        "since seq 7 on cb-other"]


def test_a_shop_below_zero_on_its_one_counter_says_since_which_event(store):
    store.add_events("cb-other", 1, [count(1, 1), sale(2, PACK), sale(3, PACK), sale(4, PACK)])
    [row] = reports.stock(store, reports.Scope(shop="530100000002"))["530100000002"]["negative"]
    assert (row["product"], row["packs"], row["tracked"], row["negative_since"]) == (product_key(PACK), -2, True, 3)


def test_market_monitoring_lists_what_is_on_the_shelf_even_unsold_and_only_the_days_asked(store):
    store.add_events("cb-new", 1, [count(1, 5), count(2, 4, product=YUNYAN, name="Yunyan (pack)"),
                                   count(3, 0, product=CARTON, name="Hongtashan (carton)"),
                                   sale(4, PACK, price=2100, day="2026-11-29")])
    rows = reports.prices(store, [DAY], reports.Scope(monitoring=True))
    # Nothing sold on DAY; the carton is neither sold nor on the shelf: not listed.
    assert [(r["product"], r["name"], r["stock"], r["actual_prices"]) for r in rows] == [
        (product_key(YUNYAN), "Yunyan (pack)", 4, []), (product_key(PACK), "Hongtashan (pack)", 4, [])]
    [pack] = [r for r in reports.prices(store, ["2026-11-29"], reports.Scope(monitoring=True))
              if r["product"] == product_key(PACK)]
    assert pack["actual_prices"] == [{"unit": "pack", "price": 2100, "list_price": 2300, "lines": 1}]
    assert pack["shop"] == "530100000001"


def test_a_box_taken_out_of_service_keeps_its_sales_but_not_its_shelf(store):
    """Revoked boxes are left out of stock (their successor counted the shelf again) wherever they come in
    the shop's devices; what they sold still counts, at a stock of 0 where no serving box holds the product."""
    store.register("cb-a-first", "k" * 43, shop="530100000002", region="honghe")
    store.add_events("cb-a-first", 1, [count(1, 20), sale(2, YUNYAN, product=YUNYAN, price=1500, list_price=1600)])
    store.revoke("cb-a-first")
    store.add_events("cb-other", 1, [count(1, 12)])
    shelf = reports.stock(store, reports.Scope(shop="530100000002"))["530100000002"]
    assert [(row["product"], row["packs"]) for row in shelf["products"]] == [(product_key(PACK), 12)]
    store.add_shop(Shop("530100000009", "Jianshui No. 2", "honghe", monitoring=True))
    store.register("cb-gone", "k" * 43, shop="530100000009", region="honghe")
    store.add_events("cb-gone", 1, [count(1, 5), sale(2, PACK, price=2250)])
    store.revoke("cb-gone")
    [row] = reports.prices(store, [DAY], reports.Scope(shop="530100000009"))
    assert (row["stock"], row["actual_prices"]) == (0, [{"unit": "pack", "price": 2250, "list_price": 2300,
                                                         "lines": 1}])
    assert reports.stock(store, reports.Scope(shop="530100000009")) == {}


def closed(seq, day):
    """The day closed with the totals of one pack sold at 23.00 (cost 19.50): a close whose totals differ from
    the day's was sold on since."""
    totals = {"lines": 1, "packs": 1, "amount": 2300, "cost": 1950, "uncosted": 0, "margin": 350, "unpriced": 0}
    return {"seq": seq, "kind": "day_closed", "body": {"day": day, "currency": "CNY", "at": f"{day}T13:00:00.000Z",
                                                       "totals": totals}}


def test_a_shops_day_is_closed_when_every_box_that_sold_on_it_closed_it_and_a_box_with_nothing_that_day_holds_none_open(
        store):
    """The old box sold and closed Monday to Wednesday and was replaced on Thursday; the new box sold and closed
    Thursday to Saturday. Once, every box of the shop had to have closed a day: the old box, which has nothing on
    Thursday, held every day of the week open ("closed": []), and the new one every day before it came. A box
    that sold on a day and never closed it holds that day open (two counters: Saturday's second one); so does a
    shop across all shops, where a shop with nothing on a day holds it open no more than a box does."""
    week = ["2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29"]
    mon, tue, wed, thu, fri, sat, sun = week
    store.add_events("cb-old", 1, [sale(1, PACK, day=mon), closed(2, mon), sale(3, PACK, day=tue), closed(4, tue),
                                   sale(5, PACK, day=wed), closed(6, wed)])
    store.revoke("cb-old")
    store.add_events("cb-new", 1, [sale(1, PACK, day=thu), closed(2, thu), sale(3, PACK, day=fri), closed(4, fri),
                                   sale(5, PACK, day=sat), closed(6, sat)])
    shop = reports.sales(store, week, reports.Scope(shop="530100000001"))["shops"]["530100000001"]
    assert shop["closed"] == [mon, tue, wed, thu, fri, sat]
    assert shop["open"] == []
    for device in ("cb-old", "cb-new"):  # each box's own days, as its own report says them
        own = box_reports.sales(box_reports.fold(store.device_events(device)), week)
        assert reports.sales(store, week, reports.Scope(device=device))["shops"]["530100000001"]["closed"] == own["closed"]

    # A second counter of the same shop sells on Saturday and is not closed: the shop's Saturday is open.
    store.register("cb-second", "k" * 43, shop="530100000001", region="honghe")
    store.add_events("cb-second", 1, [sale(1, PACK, day=fri), closed(2, fri), sale(3, PACK, day=sat)])
    shop = reports.sales(store, week, reports.Scope(shop="530100000001"))["shops"]["530100000001"]
    assert (shop["closed"], shop["open"]) == ([mon, tue, wed, thu, fri], [sat])

    # All shops: the other shop closed Sunday alone, and sold on Monday without closing it.
    store.add_events("cb-other", 1, [sale(1, PACK, day=sun), closed(2, sun), sale(3, PACK, day=mon)])
    everything = reports.sales(store, week, reports.Scope(region="honghe"))["all_shops"]
    assert (everything["closed"], everything["open"]) == ([tue, wed, thu, fri, sun], [mon, sat])
    assert everything["sold_on_since_closed"] == []
    # The other shop sells on Sunday after closing it: open again, and named as sold on since its close.
    store.add_events("cb-other", 4, [sale(4, PACK, day=sun)])
    everything = reports.sales(store, week, reports.Scope(region="honghe"))["all_shops"]
    assert (everything["closed"], everything["open"], everything["sold_on_since_closed"]) == (
        [tue, wed, thu, fri], [mon, sat, sun], [sun])


def test_market_monitoring_puts_each_price_beside_the_list_price_it_was_sold_under(store):
    """The list price rose from 23.00 to 24.00 on Thursday and every line was sold at list. Once, every price
    was put beside the last list price folded: "23.00/pack (list 24.00)", a line at list read as under it."""
    week = box_reports.week_of(DAY)
    lines = [sale(seq, PACK, day=day, price=2300, list_price=2300) for seq, day in enumerate(week[:3], start=1)]
    lines += [sale(seq, PACK, day=day, price=2400, list_price=2400) for seq, day in enumerate(week[3:] + week[4:6],
                                                                                              start=4)]
    lines += [sale(10, PACK, day=week[5], price=2300, list_price=2400)]  # one sold under the new list price
    store.add_events("cb-new", 1, lines)
    [row] = reports.prices(store, week, reports.Scope(shop="530100000001"))
    assert row["actual_prices"] == [{"unit": "pack", "price": 2400, "list_price": 2400, "lines": 6},
                                    {"unit": "pack", "price": 2300, "list_price": 2300, "lines": 3},
                                    {"unit": "pack", "price": 2300, "list_price": 2400, "lines": 1}]


def order(seq, order_id, *lines):
    return {"seq": seq, "kind": "order", "body": {
        "name": f"order/{order_id}", "order_id": order_id, "version": 1, "issued_at": f"{DAY}T01:00:00.000Z",
        "lines": [{"barcode": code, "name": "Hongtashan", "quantity": quantity} for code, quantity in lines]}}


def received_for(seq, order_id, packs):
    return {"seq": seq, "kind": "received", "body": {"product": product_key(PACK), "packs": packs, "name": None,
                                                     "order": f"order/{order_id}", "at": f"{DAY}T08:00:00.000Z"}}


def receiving_closed(seq, order_id, *, ordered, received, at=f"{DAY}T08:30:00.000Z"):
    return {"seq": seq, "kind": "receiving_closed", "body": {"started": seq - 1, "order": f"order/{order_id}", "at": at,
                                                             "lines": [{"product": product_key(PACK), "name": "Hongtashan",
                                                                        "ordered": ordered, "received": received,
                                                                        "difference": received - ordered}]}}


def test_the_weeks_counts_name_each_box_and_its_differences_and_the_shops_that_counted_none(store):
    week = box_reports.week_of(DAY)
    store.add_events("cb-new", 1, [count(1, 50), sale(2, PACK), count(3, 48)])  # one short after a sale
    report = reports.counts(store, week, reports.Scope(region="honghe"))
    counted = report["shops"]["530100000001"]["counts"]
    assert [(c["device"], c["seq"], c["day"]) for c in counted] == [("cb-new", 1, DAY), ("cb-new", 3, DAY)]
    assert [(d["product"], d["difference"]) for d in counted[0]["differences"]] == [(product_key(PACK), 50)]
    # The general shop's box closed none this week: named, and as no monitoring point.
    assert report["not_counted"] == [{"shop": "530100000002", "monitoring": False}]
    # The week before holds none of them, and the monitoring point is then named as not counted.
    before = box_reports.week_of("2026-11-23")
    earlier = reports.counts(store, before, reports.Scope(region="honghe"))
    assert earlier["shops"] == {}
    assert {"shop": "530100000001", "monitoring": True} in earlier["not_counted"]


def test_a_close_is_on_the_shops_day_its_box_says_whatever_centrals_calendar(store, monkeypatch):
    """A monitoring point in Shanghai counts at 07:30 on Tuesday, the day before its delivery: 23:30 UTC on Monday,
    and Monday on a central that keeps UTC. Its box says the shop's day, and the count is Tuesday's, in Tuesday's
    week when Tuesday is a Monday; a receiving likewise."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        early = count(1, 5)
        early["body"].update(at="2026-11-29T23:30:00.000Z", day="2026-11-30")  # Monday 07:30 in Shanghai
        receipt = {"seq": 2, "kind": "receiving_closed", "body": {
            "started": 2, "order": None, "at": "2026-11-29T23:45:00.000Z", "day": "2026-11-30", "lines": []}}
        store.add_events("cb-new", 1, [early, receipt])
        scope = reports.Scope(device="cb-new")
        assert reports.counts(store, box_reports.week_of("2026-11-29"), scope)["shops"] == {}
        [found] = reports.counts(store, box_reports.week_of("2026-11-30"), scope)["shops"]["530100000001"]["counts"]
        assert (found["seq"], found["day"]) == (1, "2026-11-30")
        assert reports.receipts(store, ["2026-11-29"], scope)["shops"] == {}
        [closed] = reports.receipts(store, ["2026-11-30"], scope)["shops"]["530100000001"]["receipts"]
        assert (closed["seq"], closed["day"]) == (2, "2026-11-30")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_count_is_on_the_day_of_centrals_calendar_it_was_closed_on_not_its_utc_date(store, monkeypatch):
    """A shop in UTC+8 counting at 07:30 on Tuesday closes at 23:30 UTC on Monday."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        late = count(1, 5)
        late["body"]["at"] = "2026-11-30T23:30:00.000Z"
        store.add_events("cb-new", 1, [late])
        assert reports.local_day(late["body"]["at"]) == "2026-12-01"
        assert reports.counts(store, ["2026-11-30"], reports.Scope(device="cb-new"))["shops"] == {}
        [found] = reports.counts(store, ["2026-12-01"], reports.Scope(device="cb-new"))["shops"]["530100000001"]["counts"]
        assert found["seq"] == 1
    finally:
        monkeypatch.undo()
        time.tzset()


def test_receipts_show_what_arrived_against_each_order_and_the_orders_still_waiting(store):
    week = box_reports.week_of(DAY)
    store.add_events("cb-new", 1, [order(1, "W48", (PACK, 20)), received_for(2, "W48", 18),
                                   receiving_closed(3, "W48", ordered=20, received=18),
                                   order(4, "W49", (PACK, 10)), received_for(5, "W49", 4)])
    report = reports.receipts(store, week, reports.Scope(shop="530100000001"))
    shop = report["shops"]["530100000001"]
    [closed] = shop["receipts"]
    assert (closed["device"], closed["order"], closed["day"]) == ("cb-new", "order/W48", DAY)
    assert [(d["ordered"], d["received"], d["difference"]) for d in closed["differences"]] == [(20, 18, -2)]
    # W49 came and four packs of it were scanned in, and no receiving of it was closed: it waits.
    assert [(o["device"], o["order"], o["seq"], o["lines"], o["products_received"]) for o in shop["open_orders"]] == [
        ("cb-new", "order/W49", 4, 1, 1)]
    # A week with no receiving closed still shows the order waiting; a shop with neither is left out.
    later = reports.receipts(store, box_reports.week_of("2026-12-07"), reports.Scope(region="honghe"))
    assert list(later["shops"]) == ["530100000001"]
    assert later["shops"]["530100000001"]["receipts"] == []
    # The box revoked: its shelf and its orders are no shop's now.
    store.revoke("cb-new")
    assert reports.receipts(store, week, reports.Scope(shop="530100000001"))["shops"]["530100000001"]["open_orders"] == []
