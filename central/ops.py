"""``counterbox-ops``: operations tooling, central's own operations for its staff. Documented in docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import time_zone
from agent.mqtt import Backoff, MqttError, MqttLink, TooLarge
from agent import orders
from agent.prices import PriceListError, read_csv
from provisioning import activation, documents, jws, protocol
from provisioning.activation import ActivationCode
from provisioning.documents import CONTROL, Document, Scope
from provisioning.errors import IdentityError, ProtocolError, ProvisioningError
from provisioning.identity import create_key, key_id, load_key, parse_public_key, public_key_text

from . import broker
from .broker import BrokerAdmin
from .errors import AccessControlSilent, CentralError
from .slip import write_slip
from .store import CentralStore, Shop, database

PUBLISH_TIMEOUT = 10.0  # seconds to reach the broker and have the document's PUBACK


def _register(args) -> int:
    device, public_key = args.device, args.public_key
    if args.identity is not None:
        # What 'counterbox identity show' printed on the device: {"device": ..., "public_key": ...}.
        try:
            # A byte-order mark, as Windows' Notepad writes, is no part of it.
            text = (sys.stdin.read() if str(args.identity) == "-" else args.identity.read_bytes().decode()).lstrip("\ufeff")
            identity = json.loads(text)
            device, public_key = identity["device"], identity["public_key"]
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError too: saved as UTF-16, say
            raise IdentityError(f"{args.identity} is not what 'counterbox identity show' prints") from None
    if args.identity is not None and (args.device or args.public_key):
        raise IdentityError("give --identity FILE, or --device and --public-key, not both: --identity names both")
    if not device or not public_key:
        raise IdentityError("give --identity FILE, or both --device and --public-key")
    if not isinstance(device, str) or not protocol.valid_device_id(device):
        # It is a level of every topic the box uses: a '/' or a space would make it another topic.
        raise IdentityError(f"device id {device!r} must be 1 to {protocol.MAX_DEVICE_ID} ASCII letters, digits, "
                            "'-', '_' or '.'")
    if args.region and not protocol.valid_device_id(args.region):
        raise CentralError(f"region {args.region!r} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    # A malformed key is refused before it reaches the registry; a good one is kept in its one spelling,
    # the one a box's activation request names it by.
    public_key = public_key_text(parse_public_key(public_key))
    store = CentralStore(args.central_db)
    try:
        if args.shop and not activation.valid_licence(args.shop):
            raise CentralError(f"shop {args.shop!r} is not a licence number: 1 to 64 ASCII letters, digits, '.', '_' "
                               "or '-' (the one it was added with, counterbox-ops shop add)")
        region, shop = args.region, store.shop(args.shop) if args.shop else None
        if args.shop and shop is None:
            # A name, or a licence mistyped, would file the box's sales under a shop no report finds.
            raise CentralError(f"shop {args.shop} is not registered: --shop takes the licence number a shop was "
                               "added with (counterbox-ops shop add)")
        if shop is not None:
            if region and region != shop.region:
                raise CentralError(f"shop {shop.licence} is in region {shop.region or '(none)'}, not {region}")
            region = shop.region
        elif region and not args.new_region and store.regions():
            _known_region(store, region, "the device is not registered", "register it")
        store.register(device, public_key, shop=args.shop, region=region, replace=args.replace)
    finally:
        store.close()
    print(f"device {device} registered" + (f" for {shop.licence} ({shop.name})" if shop else ""))
    return 0


def _keygen(args) -> int:
    key = create_key(args.ops_key)
    # The line each box's [operations.keys] table needs: the key id and the public key.
    print(json.dumps({"kid": key_id(key), "public_key": public_key_text(key)}))
    return 0


def _scope(args, store: CentralStore, kind: str) -> Scope:
    try:
        scope = Scope(device=args.device) if args.device else Scope(region=args.region)
    except ValueError as error:
        raise CentralError(str(error)) from None
    if scope.region is not None and not args.new_region:
        # Signed and kept at the broker, a list for a misspelt region reaches no box, and nobody would know.
        _known_region(store, scope.region, "nothing is signed", "push")
    device = store.device(scope.device) if scope.device is not None else None
    if scope.device is not None and device is None:
        raise CentralError(f"device {scope.device} is not registered")
    if device is not None and device.revoked_at is not None and kind != "revocation":
        # It would be signed and kept at the broker for a box that never applies it.
        raise CentralError(f"device {scope.device} was revoked: it applies nothing more (a box given to another "
                           "shop comes back under a new id: counterbox-ops activation waiting)")
    return scope


def _push(args, *, kind: str, name: str, body: dict[str, Any], key: Ed25519PrivateKey | None = None) -> int:
    """Sign the next version of ``name``, keep it in central's database and publish it, retained."""
    key = key or load_key(args.ops_key, made_by="counterbox-ops keygen")
    kid = key_id(key)
    # The way into the broker before anything is signed: what is signed is kept, then published.
    connection = broker.connection(args)
    store = CentralStore(args.central_db, create=False)
    try:
        scope = _scope(args, store, kind)
        now = time.time()
        expires_at = now + args.valid_days * 86400

        def sign(version: int):
            # Settings hold every key set so far for their scope: a box that was away when an earlier
            # version came finds them all in the latest, the one the broker keeps.
            content = _with_earlier(store, name, scope, body) if kind == "settings" else body
            document = Document(kind, name, version, scope, content, now, expires_at)
            try:
                token = documents.encode_document(document, key=key, kid=kid)
            except ValueError as error:
                raise CentralError(str(error)) from None
            return kind, json.dumps(scope.as_json()), kid, now, expires_at, token

        # A revocation is each box's own, and urgent: no box's word about its own holds it up.
        heeding = None if kind == "revocation" else \
            ("device", scope.device) if scope.device is not None else ("region", scope.region)
        new_region = scope.region is not None and scope.region not in store.regions()
        version, token = store.issue_document(sign, name, heeding=heeding, past_boxes=getattr(args, "past_boxes", False))
        topic = documents.topic(args.topic_prefix, scope, name)
        try:
            asyncio.run(_publish_retained(args, connection, topic, token,
                                          None if kind == "revocation" else expires_at))
        except TooLarge as error:
            raise CentralError(f"{name} version {version} is signed and kept, but not published: {error}; neither "
                               f"will central's ingest: set the broker's max_packet_size to {protocol.MAX_PACKET_BYTES}, as "
                               "counterbox's broker configuration does, and push again") from None
        except MqttError as error:
            raise CentralError(f"{name} version {version} is signed and kept, but not published: {error}; central's "
                               "ingest publishes it once it is connected to the broker (within the hour), or push "
                               "again once the broker is back (the next version replaces it)") from None
        store.document_published(name, version)
        if new_region:
            print(f"counterbox-ops: {name} waits at the broker for the first box activated in region {scope.region}",
                  file=sys.stderr)
    finally:
        store.close()
    print(json.dumps({"name": name, "version": version, "scope": scope.as_json(), "topic": topic,
                      "bytes": len(token), "expires_at": protocol.rfc3339(expires_at)}))
    return 0


def _with_earlier(store: CentralStore, name: str, scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    """``body``'s settings over those of the latest version of ``name`` issued for ``scope``."""
    token = store.latest_document(name, json.dumps(scope.as_json()))
    earlier = json.loads(jws.b64url_decode(token.decode().split(".")[1])).get("body", {}) if token else {}
    return {section: {**earlier.get(section, {}), **body.get(section, {})} for section in {**earlier, **body}}


def span(most: float, *, zero: bool = False):
    """An argparse type: a length of time above 0 (or 0, with ``zero``) and at most ``most``. A document
    valid for no time is refused by every box; one valid past the clock's range cannot be signed."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 <= value if zero else 0 < value) or not value <= most:  # NaN fails both
            raise argparse.ArgumentTypeError(f"{text} must be {'0 or more' if zero else 'above 0'} and at most {most:g}")
        return value
    return parse


def text(value: str) -> str:
    """An argparse type: text that can be written as UTF-8 (an argument's bytes that are not UTF-8 cannot)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not UTF-8 text") from None
    return value


# Names people write for a currency that are no ISO 4217 code: a list signed under one is summed apart from
# every list in the code's name (a report then says "mixed: CNY, RMB").
_NOT_ISO_4217 = {"RMB": "CNY", "YUAN": "CNY", "NTD": "TWD", "HKD$": "HKD"}
# ISO 4217's codes in use (list one, 2025) whose minor unit is the hundredth, as prices are read ("23.00"): a
# typo (CYN) reached every box of a region, and its reports read "mixed" currencies.
_ISO_4217_HUNDREDTHS = frozenset("""
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF
    CHW COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF
    IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL
    SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW
    ZWG ZWL CNY""".split())
# Its codes whose minor unit is another (the yen's is the yen, the dinar's a thousandth), and funds and metals.
_ISO_4217_OTHER = frozenset("""
    BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF BHD IQD JOD KWD LYD OMR TND CLF UYW
    XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS XUA XXX""".split())


def _currency(value: str) -> str:
    """An argparse type: an ISO 4217 code, as the price list carries it."""
    if value.upper() in _NOT_ISO_4217:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 4217 code: write {_NOT_ISO_4217[value.upper()]}")
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 4217 code: three capital letters, like CNY")
    if value in _ISO_4217_OTHER:
        raise argparse.ArgumentTypeError(f"{value}'s minor unit is not the hundredth, and prices are read in "
                                         "hundredths (23.00): this price list cannot be in it")
    if value not in _ISO_4217_HUNDREDTHS:
        raise argparse.ArgumentTypeError(f"{value!r} is no ISO 4217 currency in use (a typo? CNY is the yuan)")
    return value


def shop_name(value: str) -> str:
    """An argparse type: a name people read in central's tables (a shop's): UTF-8, not empty, and without
    control characters (an escape sequence reached the operator's terminal; a line end split a table's row)."""
    value = text(value)
    if not value.strip() or CONTROL.search(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a name: empty, or holding a control character")
    return value


def broker_address(text: str) -> tuple[str, int]:
    """--broker HOST:PORT, checked when the command line is read: a document is signed and kept before it
    is published, so a broker given wrongly must stop the command before that, not after."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _publish_retained(args, connection: dict[str, Any], topic: str, token: bytes,
                            expires_at: float | None) -> None:
    """Publish ``token`` retained; the broker drops it at ``expires_at`` (None: it keeps it for good), when no box
    would take it any more: every order ever pushed no longer comes to a box at each of its connections."""
    host, port = args.broker
    link = MqttLink(host=host, port=port, client_id=f"counterbox-ops-{os.getpid()}",
                    backoff=Backoff(first=0.1, most=1.0), **connection)
    async with link:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):  # not wait_for: it may swallow a cancellation
                await link.connected.wait()
        except TimeoutError:
            raise MqttError(f"broker {host}:{port} unreachable for {PUBLISH_TIMEOUT:.0f} s") from None
        await link.publish(topic, token, retain=True, expires_at=expires_at)


def _prices_push(args) -> int:
    try:
        items = read_csv(args.file)
    except PriceListError as error:  # it names the file
        raise CentralError(str(error)) from None
    body = {"source": CONTROL.sub("?", args.file.name), "currency": args.currency,
            "items": [item.as_json() for item in items]}
    return _push(args, kind="price_list", name="price_list", body=body)


def _settings_push(args) -> int:
    """Settings for the boxes of a region or one box, over their configuration files' for the keys given."""
    body: dict[str, dict[str, Any]] = {}
    for section, key in (("counter", "timezone"), ("counter", "mode_timeout"), ("counter", "pending_timeout"),
                         ("uplink", "status_interval"), ("uplink", "snapshot_interval")):
        value = getattr(args, key)
        if value is not None:
            body.setdefault(section, {})[key] = value
    if not body:
        raise CentralError("name at least one setting to push")
    try:
        documents.check_settings(body)
    except ProtocolError as error:
        raise CentralError(str(error)) from None
    if args.timezone is not None and time_zone(args.timezone) is None:
        # Every box would refuse the version (docs/protocol.md): not signed, no version taken.
        raise CentralError(f"time zone {args.timezone!r} is not in the time zone database")
    return _push(args, kind="settings", name=documents.DEVICE_SETTINGS if args.device else "settings", body=body)


def _order_push(args) -> int:
    """An order's lines from CSV: barcode,name,quantity."""
    try:
        lines = orders.read_csv(args.file)
    except orders.OrderError as error:  # it names the file
        raise CentralError(str(error)) from None
    try:
        name = documents.order_name(args.order_id)
    except ValueError as error:
        raise CentralError(str(error)) from None
    store = CentralStore(args.central_db, create=False)
    try:
        closed = store.order_closed(args.device, name) if store.device(args.device) is not None else None
    finally:
        store.close()
    if closed is not None:
        # The box closed it (CB:ALL-RECEIVED, or its receiving ended): a copy changes nothing there, and next
        # week's order pushed under this id by mistake would never be received.
        raise CentralError(f"order {args.order_id} was received and closed on device {args.device} (seq {closed}): "
                           "the box takes no copy of it again; a new order takes a new id")
    return _push(args, kind="order", name=name, body={"order_id": args.order_id, "lines": lines})


def _known_region(store: CentralStore, region: str, refused: str, verb: str) -> None:
    """Refuse a region central does not know (no shop, box or document in it), naming the nearest it knows."""
    known = store.regions()
    if region in known:
        return
    near = difflib.get_close_matches(region, sorted(known), n=1, cutoff=0.6)
    raise CentralError(f"no shop or box is registered in region {region}"
                       + (f" (did you mean {near[0]}?)" if near else "")
                       + f": {refused} (`counterbox-ops shop list` names the shops and their regions); for a region "
                       f"new to central, {verb} with --new-region")


def _shop_add(args) -> int:
    if not activation.valid_licence(args.licence):
        raise CentralError(f"licence {args.licence!r} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    if args.region and not protocol.valid_device_id(args.region):
        raise CentralError(f"region {args.region!r} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    store = CentralStore(args.central_db)
    try:
        if args.region and not args.new_region and store.regions():
            # A misspelt region strands the shop's box: no price list ever reaches it, and it sells at 0.00.
            # (The first region of a database is new by nature.)
            _known_region(store, args.region, "the shop is not registered", "register it")
        unreached = store.add_shop(Shop(args.licence, args.name, args.region, args.monitoring), replace=args.replace)
    finally:
        store.close()
    print(f"shop {args.licence} ({args.name}) registered in region {args.region or '-'}"
          + (", a monitoring point" if args.monitoring else ""))
    if len(unreached) == 1:
        print(f"counterbox-ops: warning: the box {unreached[0]} of this shop keeps the region and monitoring of its "
              "activation: revoke it and activate it again for the change to reach it", file=sys.stderr)
    elif unreached:
        print(f"counterbox-ops: warning: the boxes {', '.join(unreached)} of this shop keep the region and monitoring "
              "of their activation: revoke each and activate it again for the change to reach it", file=sys.stderr)
    return 0


def _activation_issue(args) -> int:
    """Issue a code for a registered shop: printed on a slip, and/or pushed to a waiting box."""
    if args.push and not args.device:
        raise CentralError("--push sends the code to one waiting box: name it with --device")
    if args.device is not None and not protocol.valid_device_id(args.device):
        raise CentralError(f"device id {args.device!r} must be 1 to {protocol.MAX_DEVICE_ID} ASCII letters, digits, "
                           "'-', '_' or '.'")
    key = load_key(args.ops_key, made_by="counterbox-ops keygen")
    kid = key_id(key)
    connection = broker.connection(args) if args.push else {}  # before a code is issued that could not be pushed
    store = CentralStore(args.central_db, create=False)
    try:
        shop = store.shop(args.shop)
        if shop is None:
            raise CentralError(f"shop {args.shop} is not registered (counterbox-ops shop add)")
        if shop.left_at is not None:
            raise CentralError(f"shop {args.shop} has left: no code is issued for it (`counterbox-ops shop add "
                               "--replace` registers it again)")
        registered = store.device(args.device) if args.device is not None else None
        if registered is not None:
            # Central would refuse the box's request: a code issued, and pushed, that can never work.
            raise CentralError(
                f"device {args.device} was revoked: the box waits under a new id once it has erased itself "
                "(counterbox-ops activation waiting)" if registered.revoked_at is not None else
                f"device {args.device} is already active for shop {registered.shop or '(none)'}: revoke it first "
                "(it comes back under a new id, to activate for another shop)")
        unheard = args.device is not None and args.device not in {box["device"] for box in store.waiting_devices()}
        now = time.time()
        # Each open code activates a box for the shop: one more is often a slip printed again, the first lost.
        still_open = [c["code"] for c in store.codes(shop.licence)
                      if c["used_by"] is None and c["withdrawn_at"] is None and c["expires_at"] > now]
        code = ActivationCode(activation.new_code_id(), shop.licence, shop.region, shop.monitoring, now,
                              now + args.valid_hours * 3600, args.device, kid)
        token = activation.encode_code(code, key=key, kid=kid)
        if args.slip:
            # The slip first: one that cannot be made (its file, its font) leaves no code issued that
            # nobody was shown; and a code central could not keep leaves no slip.
            write_slip(args.slip, token, shop, code, font=args.font)
        try:
            store.add_code(code.code_id, shop=shop.licence, token=token, device=args.device, issued_at=now,
                           expires_at=code.expires_at)
        except BaseException:
            if args.slip:
                args.slip.unlink(missing_ok=True)
            raise
    finally:
        store.close()
    if still_open:
        print(f"counterbox-ops: warning: shop {shop.licence} already has {len(still_open)} open "
              f"code{'s' if len(still_open) > 1 else ''} ({', '.join(still_open)}), each of which activates a box for "
              "it until it expires: withdraw one lost or no longer wanted (counterbox-ops activation withdraw)",
              file=sys.stderr)
    if unheard:
        # A typo in the id, as a rule: the code would wait, retained, for a box that never comes.
        print(f"counterbox-ops: warning: no box {args.device} has said it waits for activation ('counterbox-ops "
              "activation waiting' lists those that have): the code is bound to it and waits for it until it expires",
              file=sys.stderr)
    if args.push:
        try:
            asyncio.run(_publish_retained(args, connection, activation.topic(args.topic_prefix, args.device, "code"),
                                          token.encode(), code.expires_at))
        except MqttError as error:
            raise CentralError(f"code {code.code_id} issued, but not pushed: {error}") from None
    print(json.dumps({"code": code.code_id, "shop": shop.licence, "device": args.device,
                      "expires_at": protocol.rfc3339(code.expires_at), "slip": str(args.slip) if args.slip else None,
                      "pushed": bool(args.push)}))
    return 0


def _activation_waiting(args) -> int:
    store = CentralStore(args.central_db, create=False)
    try:
        waiting = store.waiting_devices()
    finally:
        store.close()
    for box in waiting:
        box["seen_at"] = protocol.rfc3339(box["seen_at"])
        print(json.dumps(box) if args.json else f"{box['device']:24} seen {box['seen_at']}  agent {box['agent_version']}")
    return 0


def _activation_codes(args) -> int:
    """The codes issued and what became of each: used (when, by which box), open (until when), expired."""
    store = CentralStore(args.central_db, create=False)
    try:
        if args.shop is not None and store.shop(args.shop) is None:
            raise CentralError(f"shop {args.shop} is not registered (counterbox-ops shop add)")
        codes = store.codes(args.shop)
    finally:
        store.close()
    now = time.time()
    for code in codes:
        code["state"] = ("used" if code["used_by"] is not None else "withdrawn" if code["withdrawn_at"] is not None
                         else "expired" if now > code["expires_at"] else "open")
        for name in ("issued_at", "expires_at", "used_at", "withdrawn_at"):
            code[name] = protocol.rfc3339(code[name]) if code[name] is not None else None
        if args.json:
            print(json.dumps(code))
            continue
        meant_for = f"device {code['device']}" if code["device"] else "any new box"
        said = {"used": f"used {code['used_at']} by {code['used_by']}",
                "open": f"open until {code['expires_at']}, for {meant_for}",
                "expired": f"expired {code['expires_at']}, unused (was for {meant_for})",
                "withdrawn": f"withdrawn {code['withdrawn_at']}, unused (was for {meant_for})"}[code["state"]]
        print(f"{code['code']:24} shop {code['shop']:16} {said}")
    return 0


def _shop_list(args) -> int:
    """The shops registered, each with the boxes serving it: a shop with none (a monitoring point whose box left
    must be replaced at once) is marked."""
    store = CentralStore(args.central_db, create=False)
    try:
        listed = store.shops(args.region)
    finally:
        store.close()
    for shop, boxes in listed:
        left = None if shop.left_at is None else protocol.rfc3339(shop.left_at)
        if args.json:
            print(json.dumps({"licence": shop.licence, "name": shop.name, "region": shop.region,
                              "monitoring": shop.monitoring, "devices": boxes, "left_at": left}, ensure_ascii=False))
            continue
        kind = "monitoring point" if shop.monitoring else "general"
        serving = f"left {time.strftime('%Y-%m-%d', time.localtime(shop.left_at))}" if shop.left_at is not None else \
            ", ".join(boxes) if boxes else "NO BOX" + (": replace it at once" if shop.monitoring else "")
        print(f"{shop.licence:16} {kind:16} {shop.region or '-':10} {shop.name}: {serving}")
    return 0


def _shop_leave(args) -> int:
    """The shop left: listed as gone (a monitoring point's replacement is another shop), and no code issued."""
    store = CentralStore(args.central_db, create=False)
    try:
        store.shop_left(args.licence, at=time.time())
    finally:
        store.close()
    print(f"shop {args.licence} has left: its history stays; `shop add --replace` registers it again")
    return 0


def _activation_withdraw(args) -> int:
    """A code no box has used, refused by central from now on: a slip lost, an install called off."""
    store = CentralStore(args.central_db, create=False)
    try:
        store.withdraw_code(args.code, at=time.time())  # ActivationRefused, a CentralError, says why not
    finally:
        store.close()
    print(f"code {args.code} withdrawn: central refuses it from now on")
    return 0


def _revoke(args) -> int:
    """Take a box out of service: it delivers what it holds, then erases itself (docs/protocol.md)."""
    # Everything that can fail before the revocation is signed is checked before the box is marked
    # revoked, which cannot be undone: the key, the way into the broker, and a reason that is text.
    key = load_key(args.ops_key, made_by="counterbox-ops keygen")
    broker.connection(args)
    store = CentralStore(args.central_db, create=False)
    try:
        device = store.device(args.device)
        if device is None:
            raise CentralError(f"device {args.device} is not registered")
        store.revoke(args.device)
    finally:
        store.close()
    if device.revoked_at is not None:
        # Said, never done unseen: a revocation pushed again (to cut the box off now, or with another grace)
        # is a new version of its stream, which the box, if it still listens, takes over the first.
        erased = " and has said it erases itself" if device.erasing_at is not None else ""
        print(f"counterbox-ops: note: device {args.device} was revoked on "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(device.revoked_at))}{erased}: its revocation is "
              "signed and pushed again, as a new version, with this reason and grace", file=sys.stderr)
    body = {"reason": args.reason, "grace_seconds": int(args.grace_minutes * 60)}
    pushed = _push(args, kind="revocation", name="revocation", body=body, key=key)
    if args.now:
        try:
            asyncio.run(_cut_off(args))
        except CentralError as error:
            # A broker without the dynamic security plugin answers nothing: said, since the development one is such.
            why = " (if this is the development broker: it has no access control to cut a box off with)" \
                if isinstance(error, AccessControlSilent) else ""
            raise CentralError(f"device {args.device} is revoked and its revocation pushed, but it is NOT cut off at "
                               f"the broker: {error}{why}") from None
    return pushed


async def _cut_off(args) -> None:
    """At once (a box stolen): the broker disconnects it and refuses it; what it holds stays on it."""
    async with _admin(args) as admin:
        await admin.cut_off(args.device)


def _admin(args) -> BrokerAdmin:
    host, port = args.broker
    return BrokerAdmin(BrokerAdmin.link(host=host, port=port, client_id=f"counterbox-ops-{os.getpid()}-admin",
                                        **broker.connection(args)))


def _consumer_add(args) -> int:
    """A read-only consumer of central's (docs/protocol.md, Reading batches as a consumer) added to the
    running production broker; its password is the one in --secret-file, or one made there."""
    name = broker.consumer_name(args.name)
    broker.connection(args)
    made = not args.secret_file.exists()
    password = broker.new_password(args.secret_file)

    async def add() -> None:
        async with _admin(args) as admin:
            if await admin.roles_of(name) is not None:
                raise CentralError(f"the broker has a client {name} already: remove it first "
                                   "(counterbox-ops consumer remove), or choose another name")
            await admin.execute(broker.add_consumer_commands(args.topic_prefix, name, password),
                                fine=("Role already exists",))

    try:
        asyncio.run(add())
    except BaseException:
        if made:  # a password for a client the broker never made: nobody is to hold it
            args.secret_file.unlink(missing_ok=True)
        raise
    print(json.dumps({"consumer": name, "secret_file": str(args.secret_file)}))
    return 0


def _consumer_remove(args) -> int:
    """A consumer taken off the broker: disconnected at once and refused from then on. Only a consumer:
    the client of a box, of central or of operations is not this command's to remove."""
    name = broker.consumer_name(args.name)
    broker.connection(args)

    async def remove() -> None:
        async with _admin(args) as admin:
            roles = await admin.roles_of(name)
            if roles is None:
                raise CentralError(f"the broker has no client {name}")
            if roles != [broker.CONSUMER_ROLE]:
                raise CentralError(f"the broker's client {name} is not a consumer (its roles: "
                                   f"{', '.join(roles) or 'none'}); it is left as it is")
            await admin.execute([{"command": "deleteClient", "username": name}])

    asyncio.run(remove())
    print(json.dumps({"removed": name}))
    return 0


def _central_db_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--central-db", type=database, required=True,
                         help="central's database: a SQLite file or a PostgreSQL URL")


def _push_options(command: argparse.ArgumentParser, *, region: bool, file: bool = True, past_boxes: bool = True) -> None:
    _central_db_option(command)
    command.add_argument("--ops-key", type=Path, required=True, help="the operations signing key (counterbox-ops keygen)")
    command.add_argument("--broker", type=broker_address, default="127.0.0.1:1883",
                         help="the broker, HOST:PORT (default 127.0.0.1:1883)")
    command.add_argument("--topic-prefix", type=protocol.topic_prefix, default=protocol.DEFAULT_PREFIX, help=f"default {protocol.DEFAULT_PREFIX}")
    broker.add_connection_options(command)
    if past_boxes:
        command.add_argument("--past-boxes", action="store_true",
                             help="number the new version past the highest a box it is for says it applied, where "
                                  "this database issued less: central's database was restored from an older backup")
    whom = command.add_mutually_exclusive_group(required=True)
    whom.add_argument("--device", help="for one device")
    if region:
        whom.add_argument("--region", help="for every device of a region")
        command.add_argument("--new-region", action="store_true",
                             help="push to a region no shop or box is registered in yet (without it, such a region "
                                  "is taken for a misspelling and nothing is signed)")
    else:
        command.set_defaults(new_region=False)
    if file:
        command.add_argument("file", type=Path)


def _controls_sheet(args) -> int:
    from .sheet import write_sheet

    pages = write_sheet(args.file, font=args.font)
    print(f"control sheet written to {args.file}: {pages} page{'s' if pages > 1 else ''}; print it at 100% scale")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox-ops", description="Operations tooling for counterbox devices.")
    commands = top.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a device's public key with central")
    _central_db_option(register)
    register.add_argument("--identity", type=Path, help="the JSON 'counterbox identity show' printed on the device ('-': stdin)")
    register.add_argument("--device", help="the device id (its [device] id), without --identity")
    # A base64url key may begin with '-': pass it as --public-key=KEY.
    register.add_argument("--public-key", help="the device's public key, as --public-key=KEY, without --identity")
    register.add_argument("--shop", default="", help="the licence number of the shop the device serves (counterbox-ops "
                                                     "shop add); its region comes with it")
    register.add_argument("--region", default="", help="the sales region (price lists are pushed per region), for a "
                                                       "device registered without a shop")
    register.add_argument("--replace", action="store_true", help="replace the key of a device already registered")
    register.add_argument("--new-region", action="store_true",
                          help="a region no shop, box or document is in yet (without it, such a region is taken for "
                               "a misspelling and the device is not registered)")
    register.set_defaults(func=_register)

    keygen = commands.add_parser("keygen", help="create an operations signing key; print its key id and public key")
    keygen.add_argument("--ops-key", type=Path, required=True, help="where to write the key (mode 0600)")
    keygen.set_defaults(func=_keygen)

    shop = commands.add_parser("shop", help="shops").add_subparsers(dest="action", required=True)
    add = shop.add_parser("add", help="register a shop: the company's retail client, by licence number")
    _central_db_option(add)
    add.add_argument("--licence", required=True, help="the tobacco retail licence number")
    add.add_argument("--name", type=shop_name, required=True, help="the shop's name")
    add.add_argument("--region", default="", help="its sales region (price lists are pushed per region)")
    add.add_argument("--monitoring", action="store_true", help="a monitoring point (reports actual prices and stock)")
    add.add_argument("--replace", action="store_true", help="change a shop already registered")
    add.add_argument("--new-region", action="store_true",
                     help="a region no shop, box or document is in yet (without it, such a region is taken for a "
                          "misspelling and the shop is not registered)")
    add.set_defaults(func=_shop_add)
    leave = shop.add_parser("leave", help="a shop that left (its boxes revoked first): listed as gone, and no code "
                                          "is issued for it")
    _central_db_option(leave)
    leave.add_argument("--licence", required=True, help="the tobacco retail licence number")
    leave.set_defaults(func=_shop_leave)
    listing = shop.add_parser("list", help="the shops registered and the boxes serving each; a shop with none marked")
    _central_db_option(listing)
    listing.add_argument("--region", help="only this region's shops")
    listing.add_argument("--json", action="store_true", help="one JSON object per shop, for programs")
    listing.set_defaults(func=_shop_list)

    activation_ = commands.add_parser("activation", help="activation codes").add_subparsers(dest="action", required=True)
    issue = activation_.add_parser("issue", help="issue a single-use activation code for a shop: a slip, or a push")
    _central_db_option(issue)
    issue.add_argument("--ops-key", type=Path, required=True, help="the operations signing key")
    issue.add_argument("--shop", required=True, help="the shop's licence number")
    issue.add_argument("--valid-hours", type=span(24 * 365), default=72.0, help="hours the code can be used (default 72)")
    issue.add_argument("--device", help="bind the code to this box (one waiting for a remote install)")
    issue.add_argument("--slip", type=Path, help="write the printable slip here (.png or .pdf)")
    issue.add_argument("--font", type=Path, help="a TrueType/OpenType font for the slip's text (one with the "
                                                  "shop name's script, e.g. Noto Sans CJK)")
    issue.add_argument("--push", action="store_true", help="push the code to the box (--device) through the broker")
    issue.add_argument("--broker", type=broker_address, default="127.0.0.1:1883",
                         help="the broker, HOST:PORT (default 127.0.0.1:1883)")
    issue.add_argument("--topic-prefix", type=protocol.topic_prefix, default=protocol.DEFAULT_PREFIX, help=f"default {protocol.DEFAULT_PREFIX}")
    broker.add_connection_options(issue)
    issue.set_defaults(func=_activation_issue)
    waiting = activation_.add_parser("waiting", help="boxes waiting for activation (they said hello), newest first")
    _central_db_option(waiting)
    waiting.add_argument("--json", action="store_true", help="one JSON object per box, for programs")
    waiting.set_defaults(func=_activation_waiting)

    codes = activation_.add_parser("codes", help="the codes issued, newest first: used (when, by which box), open "
                                                 "(until when) or expired; never the codes themselves")
    _central_db_option(codes)
    codes.add_argument("--shop", metavar="LICENCE", help="only this shop's codes")
    codes.add_argument("--json", action="store_true", help="one JSON object per code, for programs")
    codes.set_defaults(func=_activation_codes)

    withdraw = activation_.add_parser("withdraw", help="withdraw a code no box has used (a slip lost): central "
                                                       "refuses it from now on")
    _central_db_option(withdraw)
    withdraw.add_argument("--code", required=True, help="the code id (activation codes lists them)")
    withdraw.set_defaults(func=_activation_withdraw)

    prices = commands.add_parser("prices", help="price lists").add_subparsers(dest="action", required=True)
    push = prices.add_parser("push", help="sign a price list (CSV: barcode,name,price) and push it to a region or device")
    _push_options(push, region=True)
    push.add_argument("--currency", type=_currency, default="CNY",
                      help="ISO 4217 code; prices are in its minor unit (default CNY)")
    push.add_argument("--valid-days", type=span(3650), default=30.0, help="days a box may still apply it (default 30)")
    push.set_defaults(func=_prices_push)

    settings = commands.add_parser("settings", help="settings pushed to the boxes").add_subparsers(dest="action", required=True)
    push = settings.add_parser("push", help="sign settings and push them to a region or device: each box takes them "
                                            "over its configuration file's, for the keys given")
    _push_options(push, region=True, file=False)
    push.add_argument("--timezone", help="[counter] timezone: the shops' time zone (an IANA name, e.g. Asia/Shanghai)")
    push.add_argument("--mode-timeout", type=float, help="[counter] mode_timeout, seconds")
    push.add_argument("--pending-timeout", type=float, help="[counter] pending_timeout, seconds")
    push.add_argument("--status-interval", type=float, help="[uplink] status_interval, seconds")
    push.add_argument("--snapshot-interval", type=float, help="[uplink] snapshot_interval, seconds")
    push.add_argument("--valid-days", type=span(3650), default=365.0, help="days a box may still apply them (default 365)")
    push.set_defaults(func=_settings_push)

    revoke = commands.add_parser("revoke", help="revoke a box that leaves its shop: it delivers what it holds, "
                                                 "erases itself and waits for a new activation")
    _push_options(revoke, region=False, file=False, past_boxes=False)
    revoke.add_argument("--reason", type=text, default="", help="why (kept with the revocation)")
    revoke.add_argument("--grace-minutes", type=span(30 * 24 * 60, zero=True), default=60.0,
                        help="minutes the box may take to deliver what it holds before it erases anyway (default 60)")
    # A revocation never lapses (a box takes it whenever it comes back); its document says the longest span.
    revoke.set_defaults(valid_days=3650.0)
    revoke.add_argument("--now", action="store_true", help="cut the box off at the broker at once (a box stolen: "
                                                           "what it has not delivered stays on it)")
    revoke.set_defaults(func=_revoke)

    consumer = commands.add_parser("consumer", help="central's read-only consumers at the production broker"
                                   ).add_subparsers(dest="action", required=True)
    for action, func, what in (("add", _consumer_add, "add a read-only consumer client to the running broker"),
                               ("remove", _consumer_remove, "remove a consumer client: disconnected at once")):
        command = consumer.add_parser(action, help=what)
        command.add_argument("name", help="the consumer's client name at the broker")
        if action == "add":
            command.add_argument("--secret-file", type=Path, required=True,
                                 help="the consumer's password: the one in this file, or one made there (mode 0600)")
        command.add_argument("--broker", type=broker_address, default="127.0.0.1:1883",
                             help="the broker, HOST:PORT (default 127.0.0.1:1883)")
        if action == "add":
            command.add_argument("--topic-prefix", type=protocol.topic_prefix, default=protocol.DEFAULT_PREFIX,
                                 help=f"default {protocol.DEFAULT_PREFIX}")
        broker.add_connection_options(command)
        command.set_defaults(func=func)

    order = commands.add_parser("order", help="orders").add_subparsers(dest="action", required=True)
    push = order.add_parser("push", help="sign an order (CSV: barcode,name,quantity) and push it to a device")
    _push_options(push, region=False)
    push.add_argument("--order-id", required=True, help="the order's id (letters, digits, '.', '_', '-')")
    push.add_argument("--valid-days", type=span(3650), default=14.0, help="days the box may still apply it (default 14)")
    push.set_defaults(func=_order_push)
    controls = commands.add_parser("controls", help="the counter's control codes").add_subparsers(dest="action", required=True)
    sheet = controls.add_parser("sheet", help="write the printable sheet of control codes (Code 128, labelled in "
                                              "Chinese and English) to scan at the counter")
    sheet.add_argument("file", type=Path, help="the PDF to write")
    sheet.add_argument("--font", type=Path, help="a TrueType font with Chinese to embed (e.g. WenQuanYi, Noto Sans "
                                                 "CJK .ttc); default: the viewer's standard Song face")
    sheet.set_defaults(func=_controls_sheet)
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
