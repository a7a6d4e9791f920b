"""``counterbox-ops``: operations tooling, central's own operations for its staff. Documented in docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent.mqtt import Backoff, MqttError, MqttLink
from agent.prices import PriceListError, parse_csv
from provisioning import documents, protocol
from provisioning.documents import Document, Scope
from provisioning.errors import IdentityError, ProvisioningError
from provisioning.identity import create_key, key_id, load_key, parse_public_key, public_key_text

from .errors import CentralError
from .store import CentralStore

PUBLISH_TIMEOUT = 10.0  # seconds to reach the broker and have the document's PUBACK


def _register(args) -> int:
    device, public_key = args.device, args.public_key
    if args.identity is not None:
        # What 'counterbox identity show' printed on the device: {"device": ..., "public_key": ...}.
        text = sys.stdin.read() if str(args.identity) == "-" else args.identity.read_text()
        try:
            identity = json.loads(text)
            device, public_key = identity["device"], identity["public_key"]
        except (ValueError, KeyError, TypeError):
            raise IdentityError(f"{args.identity} is not what 'counterbox identity show' prints") from None
    if not device or not public_key:
        raise IdentityError("give --identity FILE, or both --device and --public-key")
    parse_public_key(public_key)  # refuse a malformed key before it reaches the registry
    store = CentralStore(args.central_db)
    try:
        store.register(device, public_key, shop=args.shop, region=args.region, replace=args.replace)
    finally:
        store.close()
    print(f"device {device} registered{' for ' + args.shop if args.shop else ''}")
    return 0


def _keygen(args) -> int:
    key = create_key(args.ops_key)
    # The line each box's [operations.keys] table needs: the key id and the public key.
    print(json.dumps({"kid": key_id(key), "public_key": public_key_text(key)}))
    return 0


def _scope(args, store: CentralStore) -> Scope:
    try:
        scope = Scope(device=args.device) if args.device else Scope(region=args.region)
    except ValueError as error:
        raise CentralError(str(error)) from None
    if scope.device is not None and store.device(scope.device) is None:
        raise CentralError(f"device {scope.device} is not registered")
    return scope


def _push(args, *, kind: str, name: str, body: dict[str, Any]) -> int:
    """Sign the next version of ``name``, keep it in central's database and publish it, retained."""
    key = load_key(args.ops_key, made_by="counterbox-ops keygen")
    kid = key_id(key)
    store = CentralStore(args.central_db)
    try:
        scope = _scope(args, store)
        now = time.time()
        expires_at = now + args.valid_days * 86400

        def sign(version: int):
            document = Document(kind, name, version, scope, body, now, expires_at)
            try:
                token = documents.encode_document(document, key=key, kid=kid)
            except ValueError as error:
                raise CentralError(str(error)) from None
            return kind, json.dumps(scope.as_json()), kid, now, expires_at, token

        version, token = store.issue_document(sign, name)
        topic = documents.topic(args.topic_prefix, scope, name)
        try:
            asyncio.run(_publish_retained(args.broker, topic, token))
        except MqttError as error:
            raise CentralError(f"{name} version {version} is signed and kept, but not published: {error}; "
                               "push again once the broker is back (the next version replaces it)") from None
        store.document_published(name, version)
    finally:
        store.close()
    print(json.dumps({"name": name, "version": version, "scope": scope.as_json(), "topic": topic,
                      "bytes": len(token), "expires_at": protocol.rfc3339(expires_at)}))
    return 0


async def _publish_retained(broker: str, topic: str, token: bytes) -> None:
    host, _, port = broker.rpartition(":")
    link = MqttLink(host=host or "127.0.0.1", port=int(port), client_id=f"counterbox-ops-{os.getpid()}",
                    backoff=Backoff(first=0.1, most=1.0))
    async with link:
        try:
            await asyncio.wait_for(link.connected.wait(), PUBLISH_TIMEOUT)
        except TimeoutError:
            raise MqttError(f"broker {broker} unreachable for {PUBLISH_TIMEOUT:.0f} s") from None
        await link.publish(topic, token, retain=True)


def _prices_push(args) -> int:
    try:
        items = parse_csv(args.file.read_text(encoding="utf-8-sig"))
    except PriceListError as error:
        raise CentralError(f"{args.file}: {error}") from None
    body = {"source": args.file.name, "currency": args.currency,
            "items": [{"barcode": i.barcode, "name": i.name, "price": i.price} for i in items]}
    return _push(args, kind="price_list", name="price_list", body=body)


def _order_push(args) -> int:
    """An order's lines from CSV: barcode,name,quantity."""
    lines = []
    reader = csv.DictReader(io.StringIO(args.file.read_text(encoding="utf-8-sig")))
    if reader.fieldnames is None or not {"barcode", "quantity"} <= set(reader.fieldnames):
        raise CentralError(f"{args.file}: the first line must be a header naming at least barcode and quantity")
    for number, row in enumerate(reader, start=2):
        barcode, quantity = (row.get("barcode") or "").strip(), (row.get("quantity") or "").strip()
        if not barcode or not quantity.isdigit() or int(quantity) < 1:
            raise CentralError(f"{args.file}: line {number}: needs a barcode and a quantity of 1 or more")
        lines.append({"barcode": barcode, "name": (row.get("name") or "").strip(), "quantity": int(quantity)})
    if not lines:
        raise CentralError(f"{args.file}: the order has no lines")
    try:
        name = documents.order_name(args.order_id)
    except ValueError as error:
        raise CentralError(str(error)) from None
    return _push(args, kind="order", name=name, body={"order_id": args.order_id, "lines": lines})


def _push_options(command: argparse.ArgumentParser, *, region: bool) -> None:
    command.add_argument("--central-db", type=Path, required=True, help="central's database")
    command.add_argument("--ops-key", type=Path, required=True, help="the operations signing key (counterbox-ops keygen)")
    command.add_argument("--broker", default="127.0.0.1:1883", help="the broker, HOST:PORT (default 127.0.0.1:1883)")
    command.add_argument("--topic-prefix", default=protocol.DEFAULT_PREFIX, help=f"default {protocol.DEFAULT_PREFIX}")
    whom = command.add_mutually_exclusive_group(required=True)
    whom.add_argument("--device", help="for one device")
    if region:
        whom.add_argument("--region", help="for every device of a region")
    command.add_argument("file", type=Path)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox-ops", description="Operations tooling for counterbox devices.")
    commands = top.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a device's public key with central")
    register.add_argument("--central-db", type=Path, required=True, help="central's database")
    register.add_argument("--identity", type=Path, help="the JSON 'counterbox identity show' printed on the device ('-': stdin)")
    register.add_argument("--device", help="the device id (its [device] id), without --identity")
    # A base64url key may begin with '-': pass it as --public-key=KEY.
    register.add_argument("--public-key", help="the device's public key, as --public-key=KEY, without --identity")
    register.add_argument("--shop", default="", help="the shop the device serves")
    register.add_argument("--region", default="", help="the sales region of the shop (price lists are pushed per region)")
    register.add_argument("--replace", action="store_true", help="replace the key of a device already registered")
    register.set_defaults(func=_register)

    keygen = commands.add_parser("keygen", help="create an operations signing key; print its key id and public key")
    keygen.add_argument("--ops-key", type=Path, required=True, help="where to write the key (mode 0600)")
    keygen.set_defaults(func=_keygen)

    prices = commands.add_parser("prices", help="price lists").add_subparsers(dest="action", required=True)
    push = prices.add_parser("push", help="sign a price list (CSV: barcode,name,price) and push it to a region or device")
    _push_options(push, region=True)
    push.add_argument("--currency", default="CNY", help="ISO 4217 code; prices are in its minor unit (default CNY)")
    push.add_argument("--valid-days", type=float, default=30.0, help="days a box may still apply it (default 30)")
    push.set_defaults(func=_prices_push)

    order = commands.add_parser("order", help="orders").add_subparsers(dest="action", required=True)
    push = order.add_parser("push", help="sign an order (CSV: barcode,name,quantity) and push it to a device")
    _push_options(push, region=False)
    push.add_argument("--order-id", required=True, help="the order's id (letters, digits, '.', '_', '-')")
    push.add_argument("--valid-days", type=float, default=14.0, help="days the box may still apply it (default 14)")
    push.set_defaults(func=_order_push)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ProvisioningError, CentralError, OSError) as error:
        print(f"counterbox-ops: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
