"""``counterbox-central``: central's ingest and exports. Documented in docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from agent import reports as shop_reports
from provisioning.errors import ProvisioningError
from provisioning.protocol import rfc3339, topic_prefix
from provisioning.identity import create_key, load_key, public_key_text

from . import broker, reports
from .errors import CentralError
from .ingest import CLOCK_TOLERANCE, Ingest
from .store import CentralStore, database

DEFAULT_DB = Path("/var/lib/counterbox-central/central.db")
DEFAULT_KEY = Path("/var/lib/counterbox-central/central.key")


def _keygen(args) -> int:
    key = create_key(args.key)
    print(json.dumps({"central_key": public_key_text(key)}))
    return 0


def _pubkey(args) -> int:
    print(json.dumps({"central_key": public_key_text(load_key(args.key, made_by="counterbox-central keygen"))}))
    return 0


def _keys(args) -> int:
    """The public keys batches and acknowledgements verify with, as one JWK Set (RFC 7517) for programs:
    each registered device's (``kid`` its device id, as a batch's header names it) and central's own
    (``kid`` "central")."""
    central = public_key_text(load_key(args.key, made_by="counterbox-central keygen"))
    store = CentralStore(args.db, create=False)
    try:
        devices = [store.device(device_id) for device_id in store.device_ids()]
    finally:
        store.close()
    keys = [_jwk(device.device_id, device.public_key) for device in devices if device is not None]
    print(json.dumps({"keys": [*keys, _jwk("central", central)]}, indent=2))
    return 0


def _jwk(kid: str, public_key: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": public_key, "kid": kid, "alg": "Ed25519", "use": "sig"}


async def _serve(ingest: Ingest, args) -> None:
    main = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, main.cancel)
    await ingest.serve(host=args.host, port=args.port, client_id=args.client_id, **broker.connection(args),
                       broker_admin=args.broker_admin, share=args.share)


def _ingest(args) -> int:
    signing_key = load_key(args.key, made_by="counterbox-central keygen")
    store = CentralStore(args.db)
    try:
        asyncio.run(_serve(Ingest(store=store, signing_key=signing_key, topic_prefix=args.topic_prefix), args))
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("central ingest stopped")
    finally:
        store.close()
    return 0


def _broker_init(args) -> int:
    """The production broker's access control file, before the broker's first start."""
    broker.write_initial_config(args.dynsec, args.topic_prefix,
                                central_password=broker.new_password(args.central_password_file),
                                operations_password=broker.new_password(args.ops_password_file),
                                consumer_password=(broker.new_password(args.consumer_password_file)
                                                   if args.consumer_password_file is not None else None))
    print(json.dumps({"dynsec": str(args.dynsec), "central": broker.CENTRAL_USER, "operations": broker.OPERATIONS_USER,
                      "consumer": broker.CONSUMER_USER if args.consumer_password_file is not None else None}))
    return 0


def _export(args) -> int:
    store = CentralStore(args.db, create=False)
    try:
        for event in store.events(args.kind):
            print(json.dumps(event, ensure_ascii=False))
    finally:
        store.close()
    return 0


def _batches(args) -> int:
    """The signed batches central took, as their boxes signed them: a consumer verifies them as live ones."""
    store = CentralStore(args.db, create=False)
    try:
        if args.device is not None and store.device(args.device) is None:
            raise CentralError(f"device {args.device} is not registered")
        for device_id in [args.device] if args.device is not None else store.device_ids():
            for token in store.signed_batches(device_id, args.after):
                sys.stdout.write(token.decode("ascii") + "\n")
    finally:
        store.close()
    return 0


def _report(args) -> int:
    """Per device: its sales, unknown products, misreads and total, folded by the ledger as the box folds
    them (a return or a void counts against the total, as in ``report sales``), and its acknowledged seq."""
    store = CentralStore(args.db, create=False)
    try:
        for device_id in store.device_ids():
            kinds: Counter = Counter()
            currencies: set[str] = set()

            def tallied(events):
                for seq, kind, body in events:
                    kinds[kind] += 1
                    if kind == "sale":
                        kinds["unknown"] += not body.get("known")
                        if isinstance(body.get("currency"), str):
                            currencies.add(body["currency"])
                    yield seq, kind, body

            ledger = shop_reports.fold(tallied(store.device_events(device_id)))
            if not kinds:
                continue
            device = store.device(device_id)
            amount = sum(day.total.amount for day in ledger.days.values())
            # A box sells in its price list's currency; one whose lists changed currency is summed as
            # the box sums it, and says so.
            currency = shop_reports.printable(" ".join(sorted(currencies)) if len(currencies) < 2
                                              else f"(mixed: {', '.join(sorted(currencies))})")
            shop = f" ({device.shop})" if device.shop else ""
            print(
                f"{device_id}{shop}: {_count(kinds['sale'], 'sale')} ({kinds['unknown']} of unknown products), "
                f"{_count(kinds['misread'], 'misread')} refused, total {shop_reports.money(amount)} {currency}".rstrip()
                + f", acknowledged up to seq {device.acked_seq}"
            )
    finally:
        store.close()
    return 0


def _shop_report(args) -> int:
    scope = reports.Scope(device=args.device, shop=args.shop, region=args.region, monitoring=args.monitoring)
    store = CentralStore(args.db, create=False)
    try:
        # A device or shop mistyped would give an empty report, read as "sold nothing".
        if args.device and store.device(args.device) is None:
            raise CentralError(f"device {args.device} is not registered")
        if args.shop and store.shop(args.shop) is None \
                and not any(store.device(d).shop == args.shop for d in store.device_ids()):
            raise CentralError(f"shop {args.shop} is not registered (counterbox-ops shop add)")
        if args.region and not any(store.device(d).region == args.region for d in store.device_ids()):
            raise CentralError(f"region {args.region} has no device registered")
        if args.report == "stock":
            result: Any = reports.stock(store, scope)
            text = "\n\n".join(f"Shop {shop}: {shop_reports.stock_table(report)}" for shop, report in result.items()) \
                or "No box serves the shops asked for now: no shelf is known (counterbox-ops shop list)"
        else:
            day = args.day or args.week or date.today().isoformat()
            # A count or a receiving comes once a week: without a day, the week under way.
            days = shop_reports.week_of(day) if args.week or (args.report in WEEKLY and not args.day) else [day]
            if args.report == "sales":
                result = reports.sales(store, days, scope)
                text = "\n\n".join([*(f"Shop {shop}: {shop_reports.sales_table(report)}"
                                       for shop, report in result["shops"].items()),
                                     *([f"All shops: {shop_reports.sales_table(result['all_shops'])}"]
                                       if len(result["shops"]) != 1 else [])])
            elif args.report == "counts":
                result = reports.counts(store, days, scope)
                text = _counts_text(result)
            elif args.report == "receipts":
                result = reports.receipts(store, days, scope)
                text = _receipts_text(result)
            else:
                result = reports.prices(store, days, scope)
                def price(p: dict) -> str:
                    listed = f" (list {shop_reports.money(p['list_price'])})" if p["list_price"] is not None else ""
                    return f"{shop_reports.money(p['price'])}/{p['unit']}{listed} x{p['lines']}"

                text = shop_reports.table(["shop", "product", "name", "sold at", "stock"],
                                          [[row["shop"], row["product"], row["name"],
                                            ", ".join(map(price, row["actual_prices"])), row["stock"]] for row in result],
                                          text_columns=4)
    finally:
        store.close()
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 0


WEEKLY = ("counts", "receipts")


def _days_said(days: list[str]) -> str:
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def _where(row: dict[str, Any]) -> str:
    """When and on which box a close was made: the box's own words, written out (no escape reaches a terminal)."""
    return shop_reports.printable(f"{row['at']} on {row['device']}")


def _counts_text(result: dict[str, Any]) -> str:
    parts = [f"Shop {shop}: " + shop_reports.differences_table(
        f"{_count(len(found['counts']), 'stock count')} closed", [{**row, "at": _where(row)}
                                                       for row in found["counts"]], "expected", "counted")
             for shop, found in result["shops"].items()]
    if result["not_counted"]:
        parts.append(f"No count closed {_days_said(result['days'])}: " + ", ".join(
            row["shop"] + (" (monitoring point)" if row["monitoring"] else "") for row in result["not_counted"]))
    return "\n\n".join(parts) or f"No shop in scope: no count closed {_days_said(result['days'])}"


def _receipts_text(result: dict[str, Any]) -> str:
    parts = []
    for shop, found in result["shops"].items():
        lines = [f"Shop {shop}: " + shop_reports.differences_table(
            f"{_count(len(found['receipts']), 'receiving')} closed", [{**row, "at": _where(row)}
                                                           for row in found["receipts"]], "ordered", "received")]
        for order in found["open_orders"]:
            name = shop_reports.printable(str(order["order"]))
            issued = shop_reports.printable(str(order["issued_at"] or "-"))
            lines.append(f"open: {name} on {order['device']} (seq {order['seq']}, issued {issued}): "
                         f"{_count(order['lines'], 'line')}, {_count(order['products_received'], 'product')} received so far")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or f"No receiving closed {_days_said(result['days'])} and no order waiting"


def _devices(args) -> int:
    """Each registered device's presence and health, from its latest signed status."""
    store = CentralStore(args.db, create=False)
    now = time.time()
    try:
        rows = []
        for device_id in store.device_ids():
            device, status = store.device(device_id), store.status(device_id)
            row = {"device": device_id, "shop": device.shop, "region": device.region, "acked_seq": device.acked_seq,
                   "documents": store.documents_held(device_id), "documents_issued": store.documents_issued(device_id, now),
                   "prices_loaded_on_the_box": store.prices_loaded_on_the_box(device_id), "state": "never seen",
                   "last_seen": None, "backlog": None, "scanners": None, "agent_version": None, "free_bytes": None,
                   "clock_offset": None, "clock_ok": None}
            if status is not None:
                row.update({k: status.health.get(k) for k in ("backlog", "scanners", "agent_version", "free_bytes")})
                last, said = status.health.get("last_seq"), status.health.get("acked_seq")
                if type(last) is int and type(said) is int and type(row["backlog"]) is int and said <= device.acked_seq:
                    # What it held then, less what central has acknowledged of it since (a box that reconnected
                    # and sent its backlog showed it for up to a status interval after central held it all).
                    # Only of the same count: a journal made anew under the box's id counts from 1 again, below
                    # what central held before the status, and central refuses all of it: its backlog stands.
                    if device.acked_seq <= last:
                        row["backlog"] = min(row["backlog"], last - device.acked_seq)
                    elif (store.received_at(device_id, last) or 0.0) > status.received_at:
                        row["backlog"] = 0
                row.update(state=status.state, last_seen=rfc3339(status.received_at), clock_offset=status.clock_offset,
                           clock_ok=None if status.clock_offset is None else abs(status.clock_offset) <= CLOCK_TOLERANCE)
                row["_age"] = now - status.received_at
            if device.revoked_at is not None:
                # Handed in once central holds its revocation and all before it; retired once the box also said
                # (signed) that it erases itself: collect it. Erased, when it said so before central held all
                # (its grace ran out): what it held undelivered is lost.
                delivered = store.revocation_delivered(device_id)
                successor = store.journal_holder(device_id)
                if device.erasing_at is None and not delivered and successor not in (None, device_id):
                    # A box that failed, its journal restored onto another: that box delivers what it held.
                    row["state"], row["replaced_by"] = "replaced", successor
                elif device.erasing_at is None:
                    row["state"] = "handed in" if delivered else "revoked"
                else:  # all it held, up to the last seq it said it held as it erased itself (events after the
                    # revocation too: a scan refused, a count timed out)
                    whole = delivered and device.acked_seq >= (device.erasing_seq or 0)
                    row["state"] = "retired" if whole else "erased"
            row["revoked_at"] = rfc3339(device.revoked_at) if device.revoked_at else None
            rows.append(row)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False))
        return 0
    print(f"{'device':24} {'shop':20} {'state':10} {'seen':>8} {'backlog':>7} {'scanners':>8} {'clock':>9} "
          f"{'prices':>6}  version")
    for row in rows:
        seen = _age(row["_age"]) if "_age" in row else "-"
        clock = "-" if row["clock_offset"] is None else f"{row['clock_offset']:+.0f}s" + ("" if row["clock_ok"] else " !")
        print(f"{row['device']:24} {row['shop'][:20]:20} {row['state']:10} {seen:>8} {_or_dash(row['backlog']):>7} "
              f"{_or_dash(row['scanners']):>8} {clock:>9} {_prices(row):>6}  {row['agent_version'] or '-'}")
    return 0


def _prices(row: dict) -> str:
    """The price list version the box applied last; ``!`` when a newer one issued for it is in force (not taken
    yet: the box away, or refusing it, a key it does not trust; its log says why)."""
    if row["prices_loaded_on_the_box"]:
        return "local"
    held, issued = row["documents"].get("price_list"), row["documents_issued"].get("price_list")
    return _or_dash(held) + (" !" if issued is not None and (held or 0) < issued else "")


# The company's targets for upload success (docs/commands.md): monitoring points report for it.
TARGET = {True: 0.90, False: 0.85}


def _uploads(args) -> int:
    """Upload success per device and per region over a period of days, in the company's terms."""
    last_day = args.until or time.strftime("%Y-%m-%d")
    first_day = time.strftime("%Y-%m-%d", time.localtime(time.mktime(time.strptime(last_day, "%Y-%m-%d"))
                                                          - (args.days - 1) * 86400 + 43200))
    today = time.strftime("%Y-%m-%d")
    store = CentralStore(args.db, create=False)
    try:
        rows = []
        for device_id in store.device_ids():
            device = store.device(device_id)
            shop = store.shop(device.shop)
            days = store.upload_days(device_id, first_day, last_day, deadline=args.deadline_minutes * 60)
            # Today is still under way: it counts once it is decided (the box has reported and nothing came
            # late, or a sale already came late), and until then it is left out, not failed: a box that
            # has not reported yet this morning would otherwise lose a day every morning.
            days = [day for day in days if day.day != today or day.uploaded or day.late or day.held_back]
            if not days:
                continue
            monitoring = bool(shop and shop.monitoring)
            uploaded = sum(day.uploaded for day in days)
            rate = uploaded / len(days)
            rows.append({"device": device_id, "shop": device.shop, "region": device.region, "monitoring": monitoring,
                         "days": len(days), "uploaded": uploaded, "rate": round(rate, 4), "target": TARGET[monitoring],
                         "meets_target": rate >= TARGET[monitoring],
                         "failed_days": [{"day": d.day, "reported": d.reports > 0, "late_sales": d.late,
                                          "held_back": d.held_back}
                                         for d in days if not d.uploaded]})
    finally:
        store.close()
    regions: dict[str, dict] = {}
    for row in rows:
        region = regions.setdefault(row["region"] or "-", {"region": row["region"] or "-", "devices": 0, "days": 0,
                                                            "uploaded": 0, "below_target": 0})
        region["devices"] += 1
        region["days"] += row["days"]
        region["uploaded"] += row["uploaded"]
        region["below_target"] += not row["meets_target"]
    for region in regions.values():
        region["rate"] = round(region["uploaded"] / region["days"], 4)
    if args.json:
        print(json.dumps({"from": first_day, "to": last_day, "devices": rows, "regions": sorted(regions.values(),
                                                                                              key=lambda r: r["region"])}))
        return 0
    print(f"upload success {first_day} to {last_day}: a day counts when the box reported that day, none of "
          f"its sales left the box more than {args.deadline_minutes:g} minutes after the scan, and nothing "
          f"it held waited longer unacknowledged")
    print(f"{'device':24} {'shop':16} {'region':10} {'kind':10} {'days':>4} {'ok':>4} {'rate':>7} {'target':>7}")
    for row in rows:
        kind = "monitoring" if row["monitoring"] else "general"
        flag = "" if row["meets_target"] else "  BELOW TARGET"
        print(f"{row['device']:24} {row['shop'][:16]:16} {(row['region'] or '-')[:10]:10} {kind:10} {row['days']:>4} "
              f"{row['uploaded']:>4} {row['rate']:>7.1%} {row['target']:>7.0%}{flag}")
        if row["failed_days"]:
            print("  failed: " + "; ".join(f"{d['day']} {_why_failed(d)}" for d in row["failed_days"]))
    for region in sorted(regions.values(), key=lambda r: r["region"]):
        print(f"region {region['region']}: {region['devices']} devices, {region['rate']:.1%} of device-days uploaded, "
              f"{region['below_target']} below target")
    return 0


def _why_failed(day: dict[str, Any]) -> str:
    """Why a day did not count as uploaded, as the information manager chases it."""
    reasons = [] if day["reported"] else ["no status (the box was off or cut off)"]
    if day["late_sales"]:
        reasons.append(_count(day["late_sales"], "sale") + " late")
    if day["held_back"]:
        reasons.append("events held back unacknowledged")
    return ", ".join(reasons) or "not uploaded"


def _host(text: str) -> str:
    """--host: a name or an address; none would be tried for ever ("Invalid host")."""
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _client_id(text: str) -> str:
    """--client-id: MQTT's 1 to 65,535 bytes of UTF-8; paho failed on a longer one in its own thread, unsaid."""
    try:
        size = len(text.encode("utf-8"))  # an argument's bytes that are not UTF-8 cannot be: paho failed on them
    except UnicodeEncodeError:
        size = 0
    if not 0 < size <= 65535 or "\0" in text:
        raise argparse.ArgumentTypeError("the client id must be 1 to 65535 bytes of UTF-8, without NUL")
    return text


def _share_group(text: str) -> str:
    """--share: a group name is one topic level: a '/' made the rest part of the topic (subscribed to nothing,
    silently), a wildcard a filter the broker refuses."""
    if not text or any(c in text for c in "/+#\0"):
        raise argparse.ArgumentTypeError(f"share group {text!r} must be a name without '/', '+' or '#'")
    return text


def _seq(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a seq: a whole number from 0")
    return int(text)


def _period(text: str) -> int:
    """--days: 1 to 3660 (ten years of days)."""
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= 3660:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to 3660")
    return int(text)


def _minutes(text: str) -> float:
    """--deadline-minutes: above 0, at most a week."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 7 * 24 * 60:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes above 0 and at most 10080")
    return value


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox-central", description="Central ingest for counterbox devices.")
    top.add_argument("--db", type=database, default=DEFAULT_DB,
                     help=f"central database: a SQLite file or a PostgreSQL URL, postgresql+psycopg://... (default {DEFAULT_DB})")
    top.add_argument("--key", type=Path, default=DEFAULT_KEY, help=f"central's Ed25519 signing key (default {DEFAULT_KEY})")
    top.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("keygen", help="create central's signing key; print its public key").set_defaults(func=_keygen)
    commands.add_parser("pubkey", help="print central's public key (the agents' uplink.central_key)").set_defaults(func=_pubkey)
    commands.add_parser("keys", help="print the public keys of every registered device and of central, as a JWK "
                                     "Set (the keys a consumer verifies batches and acknowledgements with)"
                        ).set_defaults(func=_keys)
    ingest = commands.add_parser("ingest", help="consume, verify, store and acknowledge batches until interrupted")
    ingest.add_argument("--host", type=_host, default="127.0.0.1", help="broker host (default 127.0.0.1)")
    ingest.add_argument("--port", type=_port, default=1883, help="broker port (default 1883)")
    ingest.add_argument("--client-id", type=_client_id, default="counterbox-central",
                        help="MQTT client id of the persistent session (default counterbox-central)")
    ingest.add_argument("--topic-prefix", type=topic_prefix, default="counterbox/v1", help="topic prefix (default counterbox/v1)")
    broker.add_connection_options(ingest)
    ingest.add_argument("--share", metavar="GROUP", type=_share_group,
                        help="one of several ingest instances sharing the load: "
                                                         "subscribe as $share/GROUP/... on a clean session")
    ingest.add_argument("--broker-admin", action="store_true",
                        help="keep the production broker's access control: admit activated boxes, remove revoked ones")
    ingest.set_defaults(func=_ingest)
    setup = commands.add_parser("broker", help="the production broker").add_subparsers(dest="action", required=True)
    init = setup.add_parser("init", help="write the broker's access control file (dynamic security) before its "
                                         "first start, with passwords for central and operations")
    init.add_argument("--dynsec", type=Path, required=True, help="the plugin's file to write (plugin_opt_config_file)")
    init.add_argument("--central-password-file", type=Path, required=True, help="central's password (made if missing)")
    init.add_argument("--ops-password-file", type=Path, required=True, help="operations' password (made if missing)")
    init.add_argument("--consumer-password-file", type=Path,
                      help=f"the password (made if missing) of {broker.CONSUMER_USER}, the client central's consumers "
                           "read batches, acknowledgements and status with; none without it")
    init.add_argument("--topic-prefix", type=topic_prefix, default="counterbox/v1", help="topic prefix (default counterbox/v1)")
    init.set_defaults(func=_broker_init)
    export = commands.add_parser("export", help="print stored events as JSON lines")
    export.add_argument("--kind", default="sale", help="event kind to export, or '' for all (default sale)")
    export.set_defaults(func=_export)
    signed = commands.add_parser("batches", help="the signed batches that brought central each device's events, as "
                                                 "the boxes signed them, one per line: a consumer that missed some "
                                                 "fetches and verifies them as live ones")
    signed.add_argument("--device", help="one device (default: every device)")
    signed.add_argument("--after", type=_seq, default=0, help="only batches holding events after this seq (default 0)")
    signed.set_defaults(func=_batches)
    report = commands.add_parser("report", help="without a kind: sales, totals and acknowledged position per device; "
                                                "with one: the shops' own figures, folded from their events")
    report.set_defaults(func=_report)
    kinds = report.add_subparsers(dest="report", required=False)
    for kind, about in (("sales", "sales by product, with gross margin, per shop and in all"),
                        ("stock", "each shop's stock by product and its products below zero"),
                        ("prices", "market monitoring: list and actual prices, and stock, per shop and product"),
                        ("counts", "the stock counts closed (default: this week), their differences, and the shops "
                                   "that closed none"),
                        ("receipts", "the receivings closed (default: this week) against their orders, and the "
                                     "orders waiting to be received")):
        one = kinds.add_parser(kind, help=about)
        when = one.add_mutually_exclusive_group()
        if kind != "stock":
            when.add_argument("--day", type=shop_reports.day_argument,
                              help="the day (YYYY-MM-DD, central's local calendar; default " +
                                   ("this week)" if kind in WEEKLY else "today)"))
            when.add_argument("--week", type=shop_reports.day_argument, help="the week (Monday to Sunday) that holds this day")
        where = one.add_mutually_exclusive_group()
        where.add_argument("--device", help="one device")
        where.add_argument("--shop", help="one shop (licence number)")
        where.add_argument("--region", help="one sales region")
        one.add_argument("--monitoring", action="store_true", help="monitoring points only")
        one.add_argument("--json", action="store_true", help="one JSON document, for programs")
        one.set_defaults(func=_shop_report)
    devices = commands.add_parser("devices", help="each device's presence and health: state, last seen, backlog, "
                                                  "scanners, clock, price list; '!' flags a clock off by more "
                                                  "than a minute, or a newer price list issued and not taken")
    devices.add_argument("--json", action="store_true", help="one JSON object per device, for programs")
    devices.set_defaults(func=_devices)
    uploads = commands.add_parser("uploads", help="upload success per device and region over a period, against the "
                                                  "company's targets (85%% general shops, 90%% monitoring points)")
    uploads.add_argument("--days", type=_period, default=7, help="days in the period, ending with --until (default 7)")
    uploads.add_argument("--until", type=shop_reports.day_argument,
                         help="the period's last day, YYYY-MM-DD (default today, central's local time)")
    uploads.add_argument("--deadline-minutes", type=_minutes, default=60.0,
                         help="a sale received later than this after its scan makes its day a failure (default 60)")
    uploads.add_argument("--json", action="store_true", help="one JSON document, for programs")
    uploads.set_defaults(func=_uploads)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:
        # Read into `| head`, which stopped reading: nothing more to say to it, nor an error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (CentralError, ProvisioningError, OSError) as error:
        print(f"counterbox-central: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
