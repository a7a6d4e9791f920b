"""Central's reports per shop and region, folded from the events the boxes sent, on a real central store."""

import pytest

from agent import reports as box_reports
from agent.catalog import product_key
from central import reports
from central.store import CentralStore, Shop

PACK, CARTON = "6901028075831", "6901028075848"
DAY = "2026-11-30"


def sale(seq, code, *, unit="pack", packs=1, price=2300, list_price=2300, cost=1950, kind="sale"):
    return {"seq": seq, "kind": kind, "body": {
        "code": code, "symbology": "ean13", "aim": None, "scanner": "x", "scanned_at": f"{DAY}T04:00:00.000Z",
        "day": DAY, "quantity": 1, "unit": unit, "packs": packs, "product": product_key(PACK), "known": True,
        "currency": "CNY", "unit_price": price, "list_price": list_price, "cost": cost, "price_source": "list",
        "name": "Hongtashan", "product_name": "Hongtashan (pack)"}}


def count(seq, packs):
    return {"seq": seq, "kind": "count_closed", "body": {"started": seq, "at": f"{DAY}T09:00:00.000Z", "lines": [
        {"product": product_key(PACK), "name": "Hongtashan (pack)", "expected": 0, "counted": packs,
         "difference": packs}]}}


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
