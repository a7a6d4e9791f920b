"""``counterbox``: the agent's command line. Every command is documented in docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from drivers.errors import DriverError
from provisioning import documents
from provisioning.errors import ProvisioningError
from provisioning.identity import create_key, device_id_for, load_key, public_key_text
from storage import JournalError, StorageError, agent_lock, backup, destroy_secret, restore, verify_journal
from storage.keys import new_outer_key, read_key_file

from . import config as config_module
from . import daemon, logs
from . import orders, reports, retention
from .activation import current as activation_held
from .orders import OrderError
from .prices import PriceListError, read_csv

DEFAULT_CONFIG = Path("/etc/counterbox/agent.toml")


def _run(args) -> int:
    _fewer_malloc_arenas()
    try:
        asyncio.run(daemon.run(args.config))
    except asyncio.CancelledError:
        pass  # SIGTERM or SIGINT: the daemon cancelled itself, closed its journal and logged it
    except ExceptionGroup as group:
        # One of the daemon's tasks failed and ended the rest: its own error, named as any command's
        # (a full disk, a journal that cannot be read); systemd starts the agent again.
        while isinstance(group, ExceptionGroup):
            group = group.exceptions[0]
        raise group
    return 0


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; on a small box two are enough (MALLOC_ARENA_MAX=2)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def counting(least: int):
    """An argparse type: a whole number from ``least`` up to what a journal's seq can hold (2^63 - 1)."""
    def parse(text: str) -> int:
        try:
            if not text.isascii():  # int() reads any script's digits: "١" was seq 1
                raise ValueError
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not least <= value < 2 ** 63:
            raise argparse.ArgumentTypeError(f"{text} is not a number from {least} to 2^63 - 1")
        return value
    return parse


def _file_name(path: Path) -> str:
    """A loaded file's name as the event records it: a name that is not UTF-8 (bytes Linux allows) keeps
    its readable part, the rest replaced, so that the event can travel."""
    return os.fsencode(path.name).decode("utf-8", errors="replace")


def _prices_load(args) -> int:
    items = read_csv(args.file)
    journal = daemon.open_journal(args.config, create=True)
    try:
        body = {"source": _file_name(args.file), "currency": args.config.pricing.currency,
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
    lines = orders.read_csv(args.file)
    journal = daemon.open_journal(args.config, create=True)
    try:
        seq = journal.append("order", {"source": _file_name(args.file), "name": name, "order_id": args.id,
                                       "lines": lines})
    finally:
        journal.close()
    print(f"order {args.id} loaded from {args.file}: {len(lines)} lines, journal seq {seq}; "
          "scan CB:ALL-RECEIVED when it arrives in full, or CB:RECEIVING and each item")
    return 0


def _report(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        with journal.snapshot():  # the checkpoint and the events after it as of one moment, retention folding beside
            ledger = reports.fold(((event.seq, event.kind, event.body) for event in _every_event(journal)),
                                  start=retention.checkpoint_ledger(journal, keep_days=True))
            # Today is the shop's, in the time zone the counter dates sales in: operations' settings over the file's.
            counter = daemon.counter_for(args.config)
            pushed = documents.settings_in_force(event.body for event in journal.of_kind("settings"))
            counter.settle(pushed.get("counter", {}))
    finally:
        journal.close()
    if args.report == "sales":
        day = args.day or args.week or counter.day(time.time())
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
    while batch := journal.read_after(after, limit=1000, damaged=True):
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
    device = args.config.device.id
    if not device:
        with contextlib.suppress(ProvisioningError):  # not readable by this user: the id stays unsaid
            device = device_id_for(load_key(args.config.device.key_file))
    try:
        with journal.snapshot():
            last, acked, counts = journal.last_seq(), journal.acked_seq(), journal.counts()
            activation, journal_id = activation_held(journal, device), journal.journal_id()
    finally:
        journal.close()
    shop = activation["shop"] if activation else args.config.device.shop or None
    print(json.dumps({"device": device or None, "shop": shop, "journal": journal_id, "last_seq": last,
                      "acked_seq": acked, "unacknowledged": last - acked, "events": counts}))
    return 0


def _show(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        with journal.snapshot():
            if args.seq is not None:
                event = journal.get(args.seq)
                if event is None:
                    raise JournalError(f"there is no event {args.seq}: the journal holds 1 to {journal.last_seq()}")
                events = [event]
            else:
                events = journal.read_after(max(0, journal.last_seq() - args.last), limit=args.last, damaged=True)
    finally:
        journal.close()
    for event in events:
        print(json.dumps({"seq": event.seq, "kind": event.kind, "body": event.body}, ensure_ascii=False))
    return 0


def _verify(args) -> int:
    storage = args.config.storage
    # No journal: verify_journal says so, rather than the key file's absence saying something else.
    key = None if args.chain_only or not storage.path.exists() else daemon.data_key(storage, create=False)
    result = verify_journal(storage.path, key)
    print(json.dumps(result.as_dict()))
    if not result.ok:
        print(f"counterbox: the journal is broken at event {result.broken.seq}: {result.broken.reason}", file=sys.stderr)
        return 1
    return 0


def _keys_rotate(args) -> int:
    journal = daemon.open_journal(args.config)
    try:
        key_id = journal.rotate_key()
        count = len(journal.data_keys())
    finally:
        journal.close()
    print(json.dumps({"data_key": key_id, "data_keys": count}))
    return 0


def _keys_rewrap(args) -> int:
    storage = args.config.storage
    new = new_outer_key(key_file=storage.key_file, credential=storage.credential,
                        new=read_key_file(args.new_key_file))
    with agent_lock(args.config.storage.path, leave=False):  # the agent stopped, as the recipe says
        journal = daemon.open_journal(args.config)
        try:
            journal.rewrap(new)
            count = len(journal.data_keys())
        finally:
            journal.close()
    print(json.dumps({"rewrapped": count, "outer_key": str(args.new_key_file)}))
    return 0


def _passphrase(path: Path) -> bytes:
    text = path.read_bytes()
    return text.removesuffix(b"\n").removesuffix(b"\r")  # the line end an editor or echo adds


def _backup(args) -> int:
    storage = args.config.storage
    daemon.open_journal(args.config).close()  # says so when there is none, or its key is missing or wrong
    result = backup(storage.path, daemon.data_key(storage, create=False), args.file, _passphrase(args.passphrase_file))
    print(json.dumps({"backup": str(args.file), **result.as_dict()}))
    return 0


def _restore(args) -> int:
    storage = args.config.storage
    passphrase = _passphrase(args.passphrase_file)
    # A box with no journal and no credential gets its key file here, as the agent's first start would;
    # a restore that fails leaves the box as it was, without it.
    had_key = storage.key_file.exists()
    key = daemon.data_key(storage, create=True)
    try:
        result = restore(args.file, passphrase, storage.path, key)
    except BaseException:
        if not had_key and not storage.path.exists():
            destroy_secret(storage.key_file)
        raise
    print(json.dumps({"restored": str(storage.path), **result.as_dict()}))
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
    show.add_argument("seq", nargs="?", type=counting(0), help="the event to print")
    show.add_argument("--last", type=counting(1), default=10, help="print the last N events (default 10)")
    show.set_defaults(func=_show)
    verify = commands.add_parser("verify", help="check the journal's hash chain and every seal; name the first broken event")
    verify.add_argument("--chain-only", action="store_true", help="check the chain without the data key")
    verify.set_defaults(func=_verify)
    keys = commands.add_parser("keys", help="the journal's keys").add_subparsers(dest="keys_command", required=True)
    keys.add_parser("rotate", help="add a new data key for the events recorded from now on").set_defaults(func=_keys_rotate)
    rewrap = keys.add_parser("rewrap", help="wrap the data keys under a new outer key (key file or credential)")
    rewrap.add_argument("--new-key-file", type=Path, required=True, help="the new 32-byte outer key")
    rewrap.set_defaults(func=_keys_rewrap)
    for name, func, text in (("backup", _backup, "write the journal to FILE, encrypted under a passphrase"),
                             ("restore", _restore, "restore a backup onto this box, which has no journal, and verify it")):
        command = commands.add_parser(name, help=text)
        command.add_argument("file", type=Path)
        command.add_argument("--passphrase-file", type=Path, required=True, help="the file holding the backup's passphrase (its content, less one final line end)")
        command.set_defaults(func=func)
    return top


class _Stopped(KeyboardInterrupt):
    """Ended by a signal (its session hung up, a stop): the command's cleanup runs, as after Ctrl+C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupted(signum, frame) -> None:
    raise _Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if getattr(args, "report", "sales") != "sales" and (args.day or args.week):
        # Stock, counts and receipts are as of now: a day asked of them was ignored, and today's printed as its.
        top.error(f"--day and --week are for the sales report; the {args.report} report is as of now")
    logs.setup(args.log_level)
    if args.command != "run":  # (the daemon answers its signals itself)
        # A command ended by its ssh session hanging up, or by a stop: its cleanup runs (a backup's copy of the
        # journal is removed), as after Ctrl+C, where the default would end it at once.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's: the command outlives the session, as asked
                signal.signal(sig, _interrupted)
    try:
        args.config = config_module.load(args.config)
        return args.func(args)
    except BrokenPipeError as error:
        if args.command == "run":  # the daemon writes nothing to standard output: a pipe of its own broke
            print(f"counterbox: error: {error}", file=sys.stderr)
            return 2
        # Read into `| head`, which stopped reading: nothing more to say to it, nor an error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (config_module.ConfigError, StorageError, ProvisioningError, DriverError, PriceListError, OrderError,
            OSError) as error:
        print(f"counterbox: error: {error}", file=sys.stderr)
        return 2
    except _Stopped as stopped:
        print(f"counterbox: stopped by {stopped}; a backup's file, or a journal restored, is in place whole or "
              "not at all", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
