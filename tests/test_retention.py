"""Retention: events central holds and older than the retention age are folded into a checkpoint and
removed; the reports, the stock, the price list in force and the chain go on as if they were all there."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from zoneinfo import ZoneInfo

import pytest

from agent import reports, retention
from agent.counter import Counter
from agent.prices import parse_csv
from drivers.decoder import Scan
from provisioning.protocol import parse_rfc3339
from storage import Journal, JournalError, verify_journal

PACK, CARTON, GUM = "6901028075831", "6901028075848", "96385074"
PRICES = ("barcode,name,price,unit,packs,cost,product\n"
          f"{PACK},Hongtashan (pack),23.00,pack,1,19.50,\n"
          f"{CARTON},Hongtashan (carton),225.00,carton,10,195.00,{PACK}\n"
          f"{GUM},Gum,1.50,,,1.00,\n")
START = 1_764_547_200.0  # 2025-12-01T00:00Z
DAY = 86_400


class Shop:
    """A year of a shop's counter on one journal: a receiving and a count now and then, sales every day."""

    def __init__(self, path, key):
        self.journal = Journal.open(path, key)
        self.journal.append("price_list", {"currency": "CNY", "items": [i.as_json() for i in parse_csv(PRICES)]})
        self.journal.append("document", {"name": "price_list", "version": 3, "kind": "price_list"})
        self.clock = [0.0]
        self.counter = Counter(timezone=ZoneInfo("Asia/Shanghai"), clock=lambda: self.clock[0], start_guard=0)
        self.rng = random.Random(5)

    def scan(self, code, at):
        self.clock[0] = at
        with self.journal.transaction():
            return self.counter.record(self.journal, Scan(code, "/dev/input/event3", at, at))

    def days(self, first, count):
        for day in range(first, first + count):
            t = START + day * DAY + 9 * 3600
            if day % 7 == 0:
                for code in ("CB:RECEIVING", CARTON, CARTON, "CB:CLOSE"):
                    self.scan(code, t)
            for n in range(12):
                t += 60
                roll = self.rng.random()
                if roll < 0.1:
                    self.scan("CB:VOID", t)
                elif roll < 0.2:
                    self.scan("CB:QTY3", t)
                elif roll < 0.25:
                    self.scan("CB:RETURN", t)
                self.scan(self.rng.choice([PACK, PACK, CARTON, GUM]), t + 1)
            if day % 7 == 6:
                for code in ("CB:COUNT", CARTON, PACK, "CB:CLOSE"):
                    self.scan(code, t + 60)
            self.scan("CB:END-DAY", t + 120)

    def report(self):
        ledger = reports.fold(((e.seq, e.kind, e.body) for e in self.journal.read_after(0, 1_000_000)),
                              start=retention.checkpoint_ledger(self.journal, keep_days=True))
        days = sorted(ledger.days)
        return {"sales": reports.sales(ledger, days), "stock": reports.stock(ledger),
                "counts": reports.counts(ledger), "receipts": reports.receipts(ledger)}


@pytest.fixture
def shop(tmp_path):
    shop = Shop(tmp_path / "journal.db", os.urandom(32))
    yield shop
    shop.journal.close()


def test_folding_old_events_away_changes_no_figure_of_any_day_nor_the_stock(shop):
    shop.days(0, 60)
    shop.journal.acknowledge(shop.journal.last_seq())
    before, last = shop.report(), shop.journal.last_seq()
    now = START + 60 * DAY
    folded = []
    while (upto := retention.fold_old(shop.journal, days=30, now=now)) is not None:
        folded.append(upto)
    assert folded, "old events were folded"
    first_kept = shop.journal.read_after(0, 1)[0]
    assert retention.event_time(first_kept.body) >= now - 31 * DAY  # what is kept is the last month or so
    assert shop.report() == before  # every day's sales, the stock, counts and receipts
    assert shop.journal.last_seq() == last
    assert shop.journal.verify().ok


def test_the_checkpoint_grows_by_the_days_folded_not_by_every_sale_they_made(shop):
    """It once kept every sale's actual price, of every day (the counter reads today's alone; central holds
    them all), and every product's day by field name: at 300 sales a day, 5 MB after 300 days, written whole
    at every step."""
    shop.days(0, 60)
    shop.journal.acknowledge(shop.journal.last_seq())
    while retention.fold_old(shop.journal, days=30, now=START + 60 * DAY) is not None:
        pass
    _, state = shop.journal.checkpoint()
    assert 0 < len(state["sale_prices"]) <= 3  # the recent days of the events folded
    assert all(type(totals) is list for day in state["days"].values() for totals in day["products"].values())
    assert len(json.dumps(state["days"])) < 30 * 500  # a few products a day, their totals in order


def test_the_box_reads_what_it_reads_by_kind_after_its_events_were_folded_away(shop):
    shop.days(0, 40)
    shop.journal.acknowledge(shop.journal.last_seq())
    while retention.fold_old(shop.journal, days=1, now=START + 400 * DAY) is not None:
        pass
    assert shop.journal.read_after(0, 10) == []  # every event folded away
    assert shop.journal.last("price_list").body["items"][0]["price"] == 2300
    assert [e.body["version"] for e in shop.journal.of_kind("document")] == [3]
    last = shop.journal.last_seq()
    assert last > 0 and shop.journal.anchor_seq() == last
    # A new counter (the agent started again) starts from the checkpoint: the stock goes on.
    stock = shop.counter.ledger.stock["06901028075831"]
    shop.counter = Counter(timezone=ZoneInfo("Asia/Shanghai"), clock=lambda: shop.clock[0], start_guard=0)
    sale = shop.scan(PACK, START + 401 * DAY).events[-1]
    assert sale.seq == last + 1 and sale.body["unit_price"] == 2300
    assert shop.counter.ledger.stock["06901028075831"] == stock - 1
    assert shop.journal.verify().ok
    assert shop.journal.acknowledge(sale.seq).moved


def test_only_what_central_holds_is_folded_away(shop):
    shop.days(0, 20)
    held = shop.journal.last_seq() // 2
    shop.journal.acknowledge(held)
    while (upto := retention.fold_old(shop.journal, days=1, now=START + 400 * DAY)) is not None:
        assert upto <= held
    assert shop.journal.anchor_seq() == held
    with pytest.raises(JournalError, match="not acknowledged"):
        shop.journal.fold_prefix(held + 5, {}, [])


def test_a_step_folds_a_bounded_number_of_events(shop, monkeypatch):
    monkeypatch.setattr(retention, "FOLD_STEP", 100)
    shop.days(0, 30)
    shop.journal.acknowledge(shop.journal.last_seq())
    anchor = 0
    while (upto := retention.fold_old(shop.journal, days=1, now=START + 400 * DAY)) is not None:
        assert upto - anchor <= 100
        anchor = upto


def test_the_counter_running_beside_retention_goes_on_as_if_nothing_was_removed(shop):
    shop.days(0, 20)
    shop.journal.acknowledge(shop.journal.last_seq())
    with shop.journal.transaction():
        retention.fold_old(shop.journal, days=5, now=START + 20 * DAY)
    shop.days(20, 10)  # the same counter, on
    after = shop.report()
    assert after["stock"]["products"] == reports.stock(shop.counter.ledger)["products"]


def test_events_after_the_anchor_cannot_be_deleted_and_those_before_are_gone(shop):
    shop.days(0, 10)
    shop.journal.acknowledge(shop.journal.last_seq())
    retention.fold_old(shop.journal, days=1, now=START + 5 * DAY)
    anchor = shop.journal.anchor_seq()
    conn = sqlite3.connect(shop.journal.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = ?", [anchor + 1])
        assert conn.execute("SELECT count(*) FROM events WHERE seq <= ?", [anchor]).fetchone()[0] == 0
    finally:
        conn.close()


def test_no_retention_with_zero_days(shop):
    shop.days(0, 3)
    shop.journal.acknowledge(shop.journal.last_seq())
    assert retention.fold_old(shop.journal, days=0, now=START + 400 * DAY) is None
    assert shop.journal.anchor_seq() == 0


def test_a_counter_and_retention_sharing_a_journal_never_count_an_open_orders_receipts_twice(shop):
    shop.days(0, 10)
    shop.journal.acknowledge(shop.journal.last_seq())
    retention.fold_old(shop.journal, days=1, now=START + 400 * DAY)  # a checkpoint to start from
    shop.journal.append("order", {"name": "order/w9", "order_id": "w9", "lines": [
        {"barcode": CARTON, "name": "", "quantity": 3}]})
    at = START + 401 * DAY
    for code in ("CB:RECEIVING", CARTON, "CB:CANCEL"):  # one carton of three in, the order still open
        shop.scan(code, at)
    shop.counter = Counter(timezone=ZoneInfo("Asia/Shanghai"), clock=lambda: shop.clock[0], start_guard=0)
    shop.scan("CB:CLEAR", at)  # the new counter starts from the checkpoint and folds the order in
    shop.journal.acknowledge(shop.journal.last_seq())
    retention.fold_old(shop.journal, days=1, now=START + 800 * DAY)  # the same journal object, its cached checkpoint
    [*_, closed] = shop.scan("CB:ALL-RECEIVED", at).events
    assert [(line["ordered"], line["received"]) for line in closed.body["lines"]] == [(30, 30)]


def test_settings_pushed_before_the_checkpoint_hold_for_a_counter_started_after_it(shop):
    shop.journal.append("settings", {"name": "settings", "version": 1, "counter": {"timezone": "Pacific/Pago_Pago",
                                                                                  "mode_timeout": 42}})
    shop.days(0, 3)
    shop.journal.acknowledge(shop.journal.last_seq())
    while retention.fold_old(shop.journal, days=1, now=START + 400 * DAY) is not None:
        pass
    counter = Counter(clock=lambda: shop.clock[0], start_guard=0)
    shop.counter = counter
    sale = shop.scan(PACK, START + 401 * DAY + 3600).events[-1]  # 01:00Z: the day before, in Pago Pago
    assert (str(counter.timezone), counter.mode_timeout) == ("Pacific/Pago_Pago", 42)
    assert sale.body["day"] == "2027-01-05"


def test_a_document_signed_long_ago_and_applied_today_folds_nothing_of_today(shop):
    """Retention took a document's issued_at (when operations signed it) for when its events happened: settings
    signed 120 days ago and applied today by a box long away folded today's sales away with a 90-day age."""
    import time

    from agent.downlink import apply
    from provisioning.documents import Document, Scope
    from provisioning.protocol import rfc3339

    now = time.time()
    for minute in range(20):
        shop.journal.append("sale", {"code": PACK, "quantity": 1, "scanned_at": rfc3339(now - 3600 + 60 * minute)})
    settings = Document("settings", "settings", 1, Scope(region="honghe"), {"counter": {"mode_timeout": 300}},
                        issued_at=now - 120 * DAY, expires_at=now + 245 * DAY, kid="ops-1")
    applied = apply(shop.journal, settings, b"the signed document")
    assert now <= parse_rfc3339(shop.journal.get(applied).body["applied_at"]) <= time.time()
    shop.journal.append("sale", {"code": PACK, "quantity": 1, "scanned_at": rfc3339(time.time())})
    shop.journal.acknowledge(shop.journal.last_seq())
    assert retention.fold_old(shop.journal, days=90, now=time.time()) is None
    assert retention.fold_old(shop.journal, days=90, now=time.time() + 91 * DAY) == shop.journal.last_seq()


def test_a_counter_behind_a_journal_folded_to_its_end_catches_up_from_the_checkpoint(shop):
    shop.days(0, 3)
    shop.journal.append("scanner", {"state": "taken", "scanner": "x", "driver": "evdev", "at": "2025-12-05T00:00:00.000Z"})
    shop.journal.acknowledge(shop.journal.last_seq())
    while retention.fold_old(shop.journal, days=1, now=START + 400 * DAY) is not None:
        pass
    sale = shop.scan(PACK, START + 401 * DAY).events[-1]  # the counter never saw the last event: no spin
    assert sale.seq == shop.journal.anchor_seq() + 1


def test_an_anchor_moved_without_a_checkpoint_is_named_by_verify(shop):
    shop.days(0, 2)
    conn = sqlite3.connect(shop.journal.path)
    try:
        seq, link = conn.execute("SELECT seq, chain FROM events WHERE seq = 6").fetchone()
        conn.execute("UPDATE meta SET value = ? WHERE name = 'chain_anchor_seq'", [str(seq)])
        conn.execute("UPDATE meta SET value = ? WHERE name = 'chain_anchor'", [link.hex()])
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # no checkpoint: nothing may go
            conn.execute("DELETE FROM events WHERE seq <= 6")
        conn.execute("DROP TRIGGER events_append_only_delete")  # whoever holds the file can, though
        conn.execute("DELETE FROM events WHERE seq <= 6")
        conn.commit()
    finally:
        conn.close()
    verification = shop.journal.verify()
    assert not verification.ok and "no checkpoint" in verification.broken.reason


def test_a_checkpoint_copied_to_an_anchor_moved_further_is_named_by_the_agents_own_verify_and_the_command(shop):
    """Whoever holds the file can move the anchor further, cut the events before it and copy the
    sealed checkpoint there; only its seal, bound to the event it was made at, tells."""
    shop.days(0, 10)
    shop.journal.acknowledge(shop.journal.last_seq())
    retention.fold_old(shop.journal, days=1, now=START + 5 * DAY)
    anchor = shop.journal.anchor_seq()
    assert anchor > 0 and shop.journal.verify().ok
    key = shop.journal._outer
    for outer in (key, None):  # `counterbox verify`, with the key and without, from the checkpoint on
        result = verify_journal(shop.journal.path, outer)
        assert result.ok and (result.anchor_seq, result.last_seq) == (anchor, shop.journal.last_seq())
    conn = sqlite3.connect(shop.journal.path)
    try:
        further = anchor + 10
        link = conn.execute("SELECT chain FROM events WHERE seq = ?", [further]).fetchone()[0]
        key_id, sealed = conn.execute("SELECT key_id, sealed FROM folds WHERE seq = ?", [anchor]).fetchone()
        conn.execute("INSERT INTO folds (seq, key_id, sealed) VALUES (?, ?, ?)", [further, key_id, sealed])
        conn.execute("UPDATE meta SET value = ? WHERE name = 'chain_anchor_seq'", [str(further)])
        conn.execute("UPDATE meta SET value = ? WHERE name = 'chain_anchor'", [link.hex()])
        conn.execute("DROP TRIGGER events_append_only_delete")
        conn.execute("DELETE FROM events WHERE seq <= ?", [further])
        conn.commit()
    finally:
        conn.close()
    assert shop.journal.verify(seals=False).ok  # the chain alone from the new anchor holds
    verification = shop.journal.verify()
    assert not verification.ok and verification.broken.seq == further
    assert f"the checkpoint at event {further} does not open or does not seal this anchor" in verification.broken.reason
    assert verify_journal(shop.journal.path, None).ok  # without the key, the command cannot tell either
    by_command = verify_journal(shop.journal.path, key)
    assert (by_command.broken.seq, by_command.broken.reason) == (further, verification.broken.reason)


def folded_years(shop) -> None:
    """A year of the shop, all of it held by central: retention can fold it away."""
    shop.days(0, 60)
    shop.journal.acknowledge(shop.journal.last_seq())


def test_verify_beside_retention_folding_reads_the_journal_at_one_moment(shop, monkeypatch):
    """The agent folds while `counterbox verify` reads: a chain read from its old anchor on into events
    folded meanwhile was once named broken ("event N is missing")."""
    from storage import chain

    folded_years(shop)
    anchor = chain.anchor

    folded = []

    def fold_after_the_anchor_is_read(conn):
        found = anchor(conn)
        if not folded:  # once, on the command's read (the fold reads the anchor too)
            folded.append(True)
            while retention.fold_old(shop.journal, days=1, now=START + 400 * DAY) is not None:
                pass  # the agent's connection, committing beside the command's
        return found

    monkeypatch.setattr(chain, "anchor", fold_after_the_anchor_is_read)
    verified = verify_journal(shop.journal.path, shop.journal._outer)
    assert verified.ok, verified.broken
    assert verified.anchor_seq == 0 and verified.last_seq == shop.journal.last_seq()  # the moment before the fold
    monkeypatch.setattr(chain, "anchor", anchor)
    assert verify_journal(shop.journal.path, shop.journal._outer).anchor_seq > 0  # and after it


def test_a_report_beside_retention_folding_counts_every_sale_once(shop, monkeypatch, tmp_path):
    """`counterbox report` reads the checkpoint, then the events after it: a fold committed between the two
    once left the folded sales out of both."""
    from agent import cli

    from .harness import run_main

    folded_years(shop)
    key_file = tmp_path / "data.key"
    key_file.write_bytes(shop.journal._outer)
    os.chmod(key_file, 0o600)
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "shop-1"\n[storage]\npath = "{shop.journal.path}"\nkey_file = "{key_file}"\n'
                      '[counter]\ntimezone = "Asia/Shanghai"\n')
    expected = shop.report()["stock"]
    checkpoint_ledger = retention.checkpoint_ledger

    folded = []

    def fold_after_the_checkpoint_is_read(journal, **how):
        ledger = checkpoint_ledger(journal, **how)
        if journal is not shop.journal and not folded:  # the command's read, not the fold's own
            folded.append(True)
            while retention.fold_old(shop.journal, days=1, now=START + 400 * DAY) is not None:
                pass
        return ledger

    monkeypatch.setattr(cli.retention, "checkpoint_ledger", fold_after_the_checkpoint_is_read)
    result = run_main(cli.main, ["-c", str(config), "report", "stock", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert shop.journal.anchor_seq() > 0  # the fold did happen meanwhile


def test_a_checkpoint_folded_before_price_lists_folded_takes_the_list_in_force_as_central_does(tmp_path):
    """A box upgraded with its checkpoint written by a ledger that passed over price lists: five cartons of an
    unlisted code received, then a list naming the code a carton of 10, both folded away. Central, folding every
    event, holds 50 packs of the product; the box, from its checkpoint, kept 5 of the code apart."""
    from agent.ledger import Ledger

    pack, carton = "6901028077002", "6901028077019"
    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    received = {"order": None, "code": carton, "product": "0" + carton, "packs": 5, "quantity": None,
                "known": False, "name": "Yuxi (carton)", "at": "2025-12-01T08:00:00.000Z", "scanner": None}
    prices = {"currency": "CNY", "items": [{"barcode": pack, "name": "Yuxi (pack)", "price": 2500},
                                           {"barcode": carton, "name": "Yuxi (carton)", "price": 24500,
                                            "unit": "carton", "packs": 10, "product": pack}]}
    journal.append("received", received)
    last = journal.append("price_list", prices)
    journal.acknowledge(last)
    before = Ledger(keep_days=True)
    before.apply(1, "received", received)
    old = {**before.state(), "v": 1, "last_seq": last}
    for name in ("units", "cartoned", "cartoned_lines", "cartoned_arrived"):
        del old[name]
    journal.fold_prefix(last, old, retention.kept(journal, last))
    central = reports.fold([(1, "received", received), (2, "price_list", prices)])
    ledger = retention.checkpoint_ledger(journal, keep_days=True)
    assert ledger.stock == central.stock == {"0" + pack: 50}
    assert ledger.last_seq == last
    journal.close()
