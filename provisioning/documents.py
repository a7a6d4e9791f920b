"""Documents that operations sign and push down to the boxes: price lists, orders, settings, revocations.

Each is a JWS (like batches) signed by an operations key, and names its
stream, a version that only grows within the stream, when it was issued, when
it expires, and whom it is for (one device, or every device of a region):

    token = encode_document(Document(kind="price_list", name="price_list", version=12,
                                     scope=Scope(region="honghe"), body={...},
                                     issued_at=now, expires_at=now + 30 * 86400), key=ops_key, kid="ops-2026")
    document = decode_document(token, trusted={"ops-2026": ops_public_key})   # or ProtocolError

``decode_document`` checks what the token alone can prove (the signature of
a trusted key, the shape); whether a document is for this box, in time and
newer than what it holds is the box's check (agent/downlink.py), against its
own state. docs/protocol.md is the contract.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.barcode import both_readings, classify, scannable

from . import jws
from .errors import ProtocolError, SignatureError
from .protocol import (MAX_EVENT_BYTES, MAX_TOKEN_BYTES, VERSION, is_version, natural, parse_rfc3339, payload_json,
                       rfc3339, valid_device_id, verified)

DOCUMENT_TYPE = "counterbox-doc+jws"
KINDS = ("price_list", "order", "settings", "revocation")
# What a settings document may change on a box, by section: each a number of seconds above 0,
# except the time zone (an IANA name). Anything else in it refuses the whole document.
MIN_REPORT_INTERVAL = 0.5  # seconds between a box's statuses, or its snapshots, at least
SETTINGS = {"counter": {"timezone", "mode_timeout", "pending_timeout"},
            "uplink": {"status_interval", "snapshot_interval"}}
# Settings for one box are a stream of their own ("settings" is its region's): each version of either
# holds every key set so far for its scope, and a box's own outrank its region's.
DEVICE_SETTINGS = "settings/device"
MAX_ORDER_LINES = 10_000
# The bounds a row loaded from a file on the box keeps too (agent/prices.py, agent/orders.py).
MAX_QUANTITY = 100_000  # packs or cartons of one order line
MAX_PACKS = 10_000  # packs in one carton or case
MAX_AMOUNT = 99_999_999_999  # a price or cost in the minor unit: 9 digits before the point, 2 after
MAX_GRACE = 30 * 86400  # seconds a revoked box goes on delivering before it erases itself
# An IANA time zone name ("Asia/Shanghai", "America/Argentina/Buenos_Aires"): at most four levels.
TIME_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]{1,32}(/[A-Za-z0-9_+\-]{1,32}){0,3}")
_ORDER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# C0 and C1 controls: no name or code holds one (an escape sequence would reach a terminal's report); nor the
# characters that turn the direction text is shown in (bidirectional embeddings, overrides, isolates), with which
# a name could show an operator's table other than what it holds. Any other text, a full-width space included,
# may be a name's. A file loaded on the box keeps it too.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
PRICE_ITEM_KEYS = frozenset({"barcode", "name", "price", "unit", "packs", "cost", "product"})
ORDER_LINE_KEYS = frozenset({"barcode", "name", "quantity"})
_REGION = _ORDER_ID


@dataclass(frozen=True)
class Scope:
    """Whom a document is for: one device, or every device of a region."""

    device: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if (self.device is None) == (self.region is None):
            raise ValueError("a document is for one device or for one region")
        if self.device is not None and not valid_device_id(self.device):
            raise ValueError(f"device id {self.device!r} is not valid")
        if self.region is not None and not _REGION.fullmatch(self.region):
            raise ValueError(f"region {self.region!r} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")

    def as_json(self) -> dict[str, str]:
        return {"device": self.device} if self.device is not None else {"region": self.region}

    def includes(self, device: str, region: str) -> bool:
        return self.device == device if self.device is not None else bool(region) and self.region == region


def meant_for(recorded: Any, device: str, region: str | None) -> bool:
    """Whether a ``document`` event's recorded scope (its JSON, as the box wrote it) is ``device``'s or its
    region's, as Scope.includes says: what the box holds of that stream. None recorded (a box of an earlier
    version left it out) is as if meant for it; ``region`` None is a region not known (central's word for a
    box registered without one), which takes the box's word."""
    if not isinstance(recorded, dict):
        return True
    if "device" in recorded:
        return recorded.get("device") == device
    return region is None or bool(region) and recorded.get("region") == region


@dataclass(frozen=True)
class Document:
    kind: str  # price_list, order
    name: str  # its stream: "price_list", or "order/<id>" for each order
    version: int  # grows within the stream
    scope: Scope
    body: dict[str, Any]
    issued_at: float
    expires_at: float  # the box refuses it after this (by its own clock)
    kid: str = field(default="", compare=False)  # the operations key that signed it


def order_name(order_id: str) -> str:
    if not _ORDER_ID.fullmatch(order_id):
        raise ValueError(f"order id {order_id!r} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    return f"order/{order_id}"


def _check_name(kind: str, name: str) -> None:
    if kind in ("price_list", "settings", "revocation") and name == kind:
        return
    if kind == "settings" and name == DEVICE_SETTINGS:
        return
    if kind == "order" and name.startswith("order/") and _ORDER_ID.fullmatch(name[len("order/"):]):
        return
    raise ProtocolError(f"document name {jws.shown(name)} does not fit its kind {kind!r}")


def _check_body(kind: str, name: str, body: dict[str, Any]) -> None:
    """A body the box can use as it is, by the same rules as a file loaded on the box: anything else
    would fail later, at a scan or a delivery, or record what nobody meant."""
    if kind == "price_list":
        _only("price list", body, {"source", "currency", "items"})
        items, currency, source = body.get("items"), body.get("currency"), body.get("source", "")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise ProtocolError(f"a price list's currency {jws.shown(currency)} is not an ISO 4217 code: three "
                                "capital letters, like CNY")
        if not isinstance(items, list) or not items:
            raise ProtocolError("a price list needs a list of one item or more")
        if not _text(source):
            raise ProtocolError("a price list's source is text without control characters")
        keys: dict[str, int] = {}  # product key -> the item that listed it
        for number, item in enumerate(items, 1):
            if not (isinstance(item, dict) and _code(item.get("barcode")) and _text(item.get("name"))
                    and natural(item.get("price"), 0, MAX_AMOUNT)):
                raise ProtocolError(f"price list item {number} needs a barcode with its check digit right, a name "
                                    "(text without control characters), and a price in the currency's minor unit "
                                    f"(an integer from 0 to {MAX_AMOUNT})")
            if set(item) - PRICE_ITEM_KEYS:
                raise ProtocolError(f"price list item {number} holds {', '.join(sorted(PRICE_ITEM_KEYS))} only")
            # What a row is, for stock and margins (optional; a plain row is a pack): as a CSV row must be.
            unit, packs, product = item.get("unit", "pack"), item.get("packs", 1), item.get("product")
            own = classify(item["barcode"]).key
            if not (unit in ("pack", "carton", "case") and natural(packs, 1, MAX_PACKS)
                    and (packs == 1 if unit == "pack" else True)
                    and (unit != "case" or "packs" in item)
                    and ("cost" not in item or natural(item["cost"], 0, MAX_AMOUNT))  # absent, never null
                    and ("product" not in item or _code(product))
                    and (unit == "pack" or (product is not None and classify(product).key != own))
                    and (unit != "pack" or product is None or classify(product).key == own)):
                raise ProtocolError(f"price list item {number}: unit must be pack (of 1 pack), carton or case "
                                    f"(a case saying its packs, at most {MAX_PACKS}), cost an integer from 0 to "
                                    f"{MAX_AMOUNT}, and a carton or case must name its product, a pack barcode "
                                    "not its own")
            if own in keys:  # the item numbers, never the code: this goes to the box's log
                raise ProtocolError(f"price list items {keys[own]} and {number} list the same product")
            keys[own] = number
        both = both_readings(keys)
        if both is not None:
            raise ProtocolError(f"price list items {both[0]} and {both[1]} list one 8-digit label twice, read as an "
                                "EAN-8 and as a UPC-E: its price would be one or the other by the scanner")
        for number, item in enumerate(items, 1):
            named = keys.get(classify(item["product"]).key) if item.get("product") else None
            if named is not None and items[named - 1].get("unit", "pack") != "pack":
                # Its stock and sales would go to a product of its own, apart from the pack's.
                raise ProtocolError(f"price list item {number} names item {named} as its product, which is not a pack")
    elif kind == "settings":
        check_settings(body)
    elif kind == "revocation":
        _only(kind, body, {"reason", "grace_seconds"})
        if not isinstance(body.get("reason"), str) or not natural(body.get("grace_seconds"), 0, MAX_GRACE):
            raise ProtocolError(f"a revocation needs a reason and grace_seconds (0 to {MAX_GRACE})")
    elif kind == "order":
        _only(kind, body, {"order_id", "lines"})
        if body.get("order_id") != name[len("order/"):]:
            raise ProtocolError(f"an order needs its order_id, the one its name {jws.shown(name)} gives")
        lines = body.get("lines")
        if not isinstance(lines, list) or not lines:
            raise ProtocolError("an order needs its lines")
        if len(lines) > MAX_ORDER_LINES:
            # Its receiving's close lists every line with what arrived: it must fit an event too.
            raise ProtocolError(f"an order of {len(lines)} lines is more than the {MAX_ORDER_LINES} a box receives")
        for number, line in enumerate(lines, 1):
            if not (isinstance(line, dict) and _code(line.get("barcode")) and _text(line.get("name"))
                    and natural(line.get("quantity"), 1, MAX_QUANTITY)):
                raise ProtocolError(f"order line {number} needs a barcode with its check digit right, a name (text "
                                    f"without control characters) and a quantity from 1 to {MAX_QUANTITY}")
            if set(line) - ORDER_LINE_KEYS:
                raise ProtocolError(f"order line {number} holds {', '.join(sorted(ORDER_LINE_KEYS))} only")


# What a box records beside a document's body in its content event: the stream's name, the version, the
# time it was issued, the source. Far less than this.
CONTENT_MARGIN = 1024


def _check_content_size(body: dict[str, Any], *, bound: int) -> None:
    """The box records the body as an event, which one batch must carry (MAX_EVENT_BYTES): a document
    whose body it could not record is refused here, not signed and then refused by every box. ``bound``:
    the token's length, which bounds the body's (0: unknown)."""
    if bound and bound * 3 // 4 + CONTENT_MARGIN <= MAX_EVENT_BYTES:
        return  # base64 of the whole payload: the body inside it is shorter still
    size = len(payload_json(body))
    if size + CONTENT_MARGIN > MAX_EVENT_BYTES:
        raise ProtocolError(f"its body of {size} bytes is more than a box records as one event "
                            f"({MAX_EVENT_BYTES - CONTENT_MARGIN} bytes with what goes beside it)")


def _text(value: Any) -> bool:
    return isinstance(value, str) and not CONTROL.search(value)


def _only(kind: str, body: dict[str, Any], names: set[str]) -> None:
    """The body's content goes into the box's event beside the document's name and version: it holds
    what its kind says, and nothing that could stand for those."""
    if set(body) - names:
        raise ProtocolError(f"{'an' if kind == 'order' else 'a'} {kind} holds {', '.join(sorted(names))} only, not "
                            f"{', '.join(sorted(map(str, set(body) - names)))[:200]}")


def check_settings(body: dict[str, Any]) -> None:
    """A settings document's body: sections and keys of SETTINGS only, each a value a box can take."""
    if not body or not all(isinstance(body.get(section), dict) for section in body):
        raise ProtocolError("settings need at least one section (counter, uplink), each a table of keys")
    for section, values in body.items():
        known = SETTINGS.get(section)
        if known is None:
            raise ProtocolError(f"settings section {jws.shown(section)} is not one a box takes ({', '.join(SETTINGS)})")
        if not values or set(values) - known:
            raise ProtocolError(f"settings [{section}] may set {', '.join(sorted(known))} only")
        for name, value in values.items():
            if name == "timezone":
                if not isinstance(value, str) or not TIME_ZONE_NAME.fullmatch(value):
                    raise ProtocolError(f"settings [counter] timezone {value!r:.70} is not an IANA time zone name")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 30 * 86400:
                raise ProtocolError(f"settings [{section}] {name} must be a number of seconds above 0")
            elif section == "uplink" and value < MIN_REPORT_INTERVAL:
                raise ProtocolError(f"settings [uplink] {name} must be at least {MIN_REPORT_INTERVAL} seconds (a box "
                                    "reporting in a tight loop floods the broker and central)")


# The streams of documents for one device: what an earlier box recorded of them was for that box.
DEVICE_STREAMS = frozenset({DEVICE_SETTINGS, "revocation"})


def holds_for_box(name: str, seq: int, identity_since: int) -> bool:
    """Whether the document of stream ``name`` a journal recorded at ``seq`` holds for the box the
    journal delivers for now, which took it over after event ``identity_since`` (0: the journal was
    always its own): a region's does, whoever recorded it; one for a device (its settings, its
    revocation) only if recorded since, not for the box whose backup was restored onto this one.

    >>> holds_for_box("revocation", 40, identity_since=57), holds_for_box("settings", 40, identity_since=57)
    (False, True)
    """
    return name not in DEVICE_STREAMS or seq > identity_since


def settings_in_force(bodies: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the settings a box recorded add up to, from their bodies in the order recorded: its region's
    ("settings"), then its own (DEVICE_SETTINGS) over them; within each, later keys over earlier ones.

    >>> settings_in_force([{"name": "settings/device", "counter": {"mode_timeout": 300}},
    ...                    {"name": "settings", "counter": {"mode_timeout": 900, "pending_timeout": 30}}])
    {'counter': {'mode_timeout': 300, 'pending_timeout': 30}}
    """
    layers: tuple[dict, dict] = ({}, {})
    for body in bodies:
        layer = layers[body.get("name") == DEVICE_SETTINGS]
        for section in SETTINGS:
            if isinstance(body.get(section), dict):
                layer.setdefault(section, {}).update(body[section])
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def _code(value: Any) -> bool:
    """A barcode's data as a scanner types it (printable ASCII, at most 48 characters), whose check digit,
    where its symbology has one, is right: a code no scan could match is no product."""
    return isinstance(value, str) and scannable(value) and classify(value).valid


def topic(prefix: str, scope: Scope, name: str) -> str:
    """Where a document waits, retained, for the boxes it is for."""
    if scope.device is not None:
        return f"{prefix}/devices/{scope.device}/docs/{name}"
    return f"{prefix}/regions/{scope.region}/docs/{name}"


def subscriptions(prefix: str, device: str, region: str) -> list[str]:
    """The topics a box reads its documents from: its own, and its region's when it has one."""
    topics = [f"{prefix}/devices/{device}/docs/#"]
    if region:
        topics.append(f"{prefix}/regions/{region}/docs/#")
    return topics


def _check_scope(kind: str, name: str, scope: Scope) -> None:
    """A revocation, an order and a box's own settings are for one device, never a region; a region's
    settings are for a region (a box's own go as settings/device, a stream of their own that outranks
    its region's: one sent under the region's name would take the region's place on that box)."""
    if scope.device is None and (kind in ("revocation", "order") or name == DEVICE_SETTINGS):
        raise ValueError(f"{'an' if kind == 'order' else 'a'} {name if name == DEVICE_SETTINGS else kind} is for "
                         "one device, never a region")
    if scope.device is not None and kind == "settings" and name != DEVICE_SETTINGS:
        raise ValueError(f"a region's settings are for a region; a device's own are {DEVICE_SETTINGS}")


def encode_document(document: Document, *, key: Ed25519PrivateKey, kid: str) -> bytes:
    if document.kind not in KINDS:
        raise ValueError(f"unknown document kind {document.kind!r}")
    _check_name(document.kind, document.name)
    _check_body(document.kind, document.name, document.body)
    _check_scope(document.kind, document.name, document.scope)
    payload = {
        "v": VERSION, "kind": document.kind, "name": document.name, "version": document.version,
        "scope": document.scope.as_json(), "issued_at": rfc3339(document.issued_at),
        "expires_at": rfc3339(document.expires_at), "body": document.body,
    }
    _check_content_size(document.body, bound=0)
    body = payload_json(payload)
    token = jws.sign(body, key, kid=kid, typ=DOCUMENT_TYPE).encode()
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"the signed document is {len(token)} bytes, over the protocol's limit of {MAX_TOKEN_BYTES}")
    return token


def decode_document(token: bytes, *, trusted: Mapping[str, Ed25519PublicKey]) -> Document:
    """The document in ``token`` if a trusted operations key signed it and it is well formed; else ProtocolError."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ProtocolError(f"document of {len(token)} bytes is over the protocol's limit of {MAX_TOKEN_BYTES}")
    try:
        text = token.decode("ascii")
        header = jws.unverified_header(text)
    except (UnicodeDecodeError, SignatureError):
        raise SignatureError("not a JWS compact token") from None
    kid = header.get("kid")
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise SignatureError(f"signed by {jws.shown(kid)}, which is not a trusted operations key")
    _, payload = verified(text, key, typ=DOCUMENT_TYPE)
    if not is_version(payload.get("v")):
        raise ProtocolError(f"payload is not a version {VERSION} document")
    kind, name, version, body = (payload.get(k) for k in ("kind", "name", "version", "body"))
    if kind not in KINDS or not isinstance(name, str) or not natural(version) or not isinstance(body, dict):
        raise ProtocolError("document lacks a known kind, a name, a version of 1 or more, or a body")
    _check_name(kind, name)
    _check_body(kind, name, body)
    _check_content_size(body, bound=len(token))
    scope = payload.get("scope")
    try:
        if not isinstance(scope, dict) or set(scope) - {"device", "region"}:
            raise ValueError("a scope is {\"device\": ...} or {\"region\": ...}")
        if len(scope) != 1:  # the other named too, even as null: the schema's oneOf holds neither
            raise ValueError("a scope is for one device or for one region, naming that one alone")
        scope = Scope(**scope)
        _check_scope(kind, name, scope)
        issued_at, expires_at = parse_rfc3339(payload.get("issued_at")), parse_rfc3339(payload.get("expires_at"))
    except (ValueError, TypeError) as error:
        raise ProtocolError(f"document scope or times: {error}") from None
    return Document(kind, name, version, scope, body, issued_at, expires_at, kid)
