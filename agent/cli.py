"""``counterbox``: the agent's command line. Every command is documented in docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from drivers.errors import DriverError
from provisioning import documents
from provisioning.errors import ProvisioningError
from provisioning.identity import create_key, device_id_for, load_key, public_key_text
from storage import JournalError, StorageError

from . import config as config_module
from . import daemon, logs
from . import orders, reports
from .orders import OrderError
from .prices import PriceListError, parse_csv

DEFAULT_CONFIG = Path("/etc/counterbox/agent.toml")


def _run(args) -> int:
    _fewer_malloc_arenas()
    try:
        asyncio.run(daemon.run(args.config))
    except asyncio.CancelledError:
        pass  # SIGTERM or SIGINT: the daemon cancelled itself, closed its journal and logged it
    return 0


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; on a small box two are enough (MALLOC_ARENA_MAX=2)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _prices_load(args) -> int:
    items = parse_csv(args.file.read_text(encoding="utf-8-sig"))
    journal = daemon.open_journal(args.config, create=True)
    try:
        body = {"source": args.file.name, "currency": args.config.pricing.currency,
                "items": [item.as_json() for item in items]}
        seq = journal.append("price_list", body)
    finally:
        journal.close()
    print(f"price list {args.file} loaded: {len(items)} items, journal seq {seq}")
    return 0


def _order_load(args) -> int:
    try:
        name = documents.order_name(args.id)
    except ValueError as error:
        raise OrderError(str(error)) from None
    lines = orders.parse_csv(args.file.read_text(encoding="utf-8-sig"))
    journal = daemon.open_journal(args.config, create=True)
    try:
        seq = journal.append("order", {"source": args.file.name, "name": name, "order_id": args.id, "lines": lines})
    finally:
        journal.close()
    print(f"order {args.id} loaded from {args.file}: {len(lines)} lines, journal seq {seq}; "
          "scan CB:ALL-RECEIVED when it arrives in full, or CB:RECEIVING and each item")
    return 0


def _report(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        ledger = reports.fold((event.seq, event.kind, event.body) for event in _every_event(journal))
    finally:
        journal.close()
    if args.report == "sales":
        day = args.day or args.week or daemon.counter_for(args.config).day(time.time())
        result: Any = reports.sales(ledger, reports.week_of(day) if args.week else [day])
        text = reports.sales_table(result) if not args.json else None
    elif args.report == "stock":
        result = reports.stock(ledger)
        text = reports.stock_table(result) if not args.json else None
    elif args.report == "counts":
        result = reports.counts(ledger)
        text = reports.differences_table("Stock counts", result, "expected", "counted") if not args.json else None
    else:
        result = reports.receipts(ledger)
        text = reports.differences_table("Receipts", result, "ordered", "received") if not args.json else None
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 0


def _every_event(journal):
    after = 0
    while batch := journal.read_after(after, limit=1000):
        yield from batch
        after = batch[-1].seq


def _identity_create(args) -> int:
    key = create_key(args.config.device.key_file)
    print(json.dumps({"device": args.config.device.id or device_id_for(key), "public_key": public_key_text(key)}))
    return 0


def _identity_show(args) -> int:
    key = load_key(args.config.device.key_file)
    print(json.dumps({"device": args.config.device.id or device_id_for(key), "public_key": public_key_text(key)}))
    return 0


def _status(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        last, acked, counts = journal.last_seq(), journal.acked_seq(), journal.counts()
        activation = journal.last("activation")
    finally:
        journal.close()
    device = args.config.device.id
    if not device:
        with contextlib.suppress(ProvisioningError):  # not readable by this user: the id stays unsaid
            device = device_id_for(load_key(args.config.device.key_file))
    shop = activation.body["shop"] if activation else args.config.device.shop or None
    print(json.dumps({"device": device or None, "shop": shop, "last_seq": last, "acked_seq": acked,
                      "unacknowledged": last - acked, "events": counts}))
    return 0


def _show(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        if args.seq is not None:
            event = journal.get(args.seq)
            if event is None:
                raise JournalError(f"there is no event {args.seq}: the journal holds 1 to {journal.last_seq()}")
            events = [event]
        else:
            events = journal.read_after(max(0, journal.last_seq() - args.last), limit=args.last)
    finally:
        journal.close()
    for event in events:
        print(json.dumps({"seq": event.seq, "kind": event.kind, "body": event.body}, ensure_ascii=False))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox", description="The counterbox agent: scanner to signed batches.")
    top.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"agent configuration (default {DEFAULT_CONFIG})")
    top.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the agent until stopped").set_defaults(func=_run)
    prices = commands.add_parser("prices", help="price lists").add_subparsers(dest="prices_command", required=True)
    load = prices.add_parser("load", help="load a price list CSV (barcode,name,price) into the journal")
    load.add_argument("file", type=Path)
    load.set_defaults(func=_prices_load)
    identity = commands.add_parser("identity", help="the device's signing key").add_subparsers(dest="identity_command", required=True)
    identity.add_parser("create", help="generate the device key; print the public key to register").set_defaults(func=_identity_create)
    identity.add_parser("show", help="print the device id and public key").set_defaults(func=_identity_show)
    order = commands.add_parser("order", help="orders").add_subparsers(dest="order_command", required=True)
    load_order = order.add_parser("load", help="load an order CSV (barcode,name,quantity) into the journal: "
                                               "the offline way of an order pushed by operations")
    load_order.add_argument("file", type=Path)
    load_order.add_argument("--id", required=True, help="the order's id (letters, digits, '.', '_', '-')")
    load_order.set_defaults(func=_order_load)
    report = commands.add_parser("report", help="sales, stock, counts and receipts, from the journal (needs its data key)")
    report.add_argument("report", choices=["sales", "stock", "counts", "receipts"])
    when = report.add_mutually_exclusive_group()
    when.add_argument("--day", type=reports.day_argument, help="sales of this day (YYYY-MM-DD; default today)")
    when.add_argument("--week", type=reports.day_argument, help="sales of the week (Monday to Sunday) that holds this day")
    report.add_argument("--json", action="store_true", help="JSON for programs")
    report.set_defaults(func=_report)
    commands.add_parser("status", help="print the journal's last and acknowledged sequence numbers").set_defaults(func=_status)
    show = commands.add_parser("show", help="decrypt and print events of the journal (needs its data key)")
    show.add_argument("seq", nargs="?", type=int, help="the event to print")
    show.add_argument("--last", type=int, default=10, help="print the last N events (default 10)")
    show.set_defaults(func=_show)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        args.config = config_module.load(args.config)
        return args.func(args)
    except (config_module.ConfigError, StorageError, ProvisioningError, DriverError, PriceListError, OrderError,
            OSError) as error:
        print(f"counterbox: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
