"""Activation: how a new box becomes a shop's box (docs/protocol.md, Activation).

Operations issue an activation code for a registered shop: a JWS signed by an
operations key, single-use, expiring, optionally bound to one device (when it
is pushed to a box waiting for a remote install). It travels printed on a
slip, as a QR code the counter's scanner reads, or on the box's activation
topic. Every message of the exchange is signed by whoever sends it:

    code    = encode_code(ActivationCode(...), key=ops_key, kid=ops_kid)       # operations
    request = encode_request(device, device_key, code)                         # the box: proves its key
    result  = encode_result(device, {"accepted": True, "shop": ...}, key=central_key)   # central

    {prefix}/activation/{device}/hello     the box, while it waits: here I am, with my public key
    {prefix}/activation/{device}/code      operations: a code pushed for a remote install
    {prefix}/activation/{device}/request   the box: this code, for this key
    {prefix}/activation/{device}/result    central: accepted (the shop) or refused (why)
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import jws
from .errors import IdentityError, ProtocolError, SignatureError
from .identity import broker_password, device_id_for, parse_public_key, public_key_text
from .protocol import (AGENT_VERSION_RULE, VERSION, is_agent_version, is_version, media_type, parse_rfc3339, payload_json,
                       rfc3339, valid_device_id, verified)

CODE_TYPE = "counterbox-activation+jws"
REQUEST_TYPE = "counterbox-activation-request+jws"
RESULT_TYPE = "counterbox-activation-result+jws"
HELLO_TYPE = "counterbox-hello+jws"
MAX_CODE_CHARS = 1024  # a code is about 450 characters; a scan longer than this is not one
# A request (it carries a code of at most MAX_CODE_CHARS) or a hello, whole: at most about 2 KiB. Anyone may
# send one, so central refuses a bigger one before it reads a byte of its JSON.
MAX_ACTIVATION_BYTES = 4096
_LICENCE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class ActivationCode:
    code_id: str  # unique, random: what makes the code single-use
    shop: str  # the shop's licence number
    region: str
    monitoring: bool  # a monitoring-point shop (reports actual prices and stock)
    issued_at: float
    expires_at: float
    device: str | None = None  # bound to one device (a remote install), or any box (a printed slip)
    kid: str = ""  # the operations key that signed it


_CODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_code_id() -> str:
    """16 characters of base64url, never a leading "-": an operator types the id after ``--code``, where one
    that began with a dash (one in 64) would be read as an option."""
    while (code_id := jws.b64url(secrets.token_bytes(12))).startswith("-"):
        pass
    return code_id


def valid_licence(text: str) -> bool:
    return bool(_LICENCE.fullmatch(text))


def topic(prefix: str, device: str, leaf: str) -> str:
    return f"{prefix}/activation/{device}/{leaf}"


def subscription(prefix: str, leaf: str) -> str:
    """Central's: every box's ``hello`` or ``request``."""
    return f"{prefix}/activation/+/{leaf}"


def device_of_topic(prefix: str, topic_: str, leaf: str) -> str:
    start, end = f"{prefix}/activation/", f"/{leaf}"
    device = topic_[len(start):-len(end)] if topic_.startswith(start) and topic_.endswith(end) else ""
    if not valid_device_id(device):
        raise ProtocolError(f"not an activation {leaf} topic: {topic_}")
    return device


def _sign(payload: dict[str, Any], key: Ed25519PrivateKey, *, kid: str, typ: str) -> bytes:
    body = payload_json({"v": VERSION, **payload})
    return jws.sign(body, key, kid=kid, typ=typ).encode()


def _open(token: bytes | str, key: Ed25519PublicKey, *, typ: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload = verified(token, key, typ=typ)
    if not is_version(payload.get("v")):
        raise ProtocolError(f"payload is not a version {VERSION} object")
    return header, payload


# -- the code ----------------------------------------------------------------------------

def encode_code(code: ActivationCode, *, key: Ed25519PrivateKey, kid: str) -> str:
    payload = {"code": code.code_id, "shop": code.shop, "region": code.region, "monitoring": code.monitoring,
               "issued_at": rfc3339(code.issued_at), "expires_at": rfc3339(code.expires_at)}
    if code.device is not None:
        payload["device"] = code.device
    return _sign(payload, key, kid=kid, typ=CODE_TYPE).decode()


def looks_like_code(text: str) -> bool:
    """Whether a scan is an activation code (before anything is verified): a compact JWS of its type."""
    if len(text) > MAX_CODE_CHARS or text.count(".") != 2:
        return False
    try:
        return media_type(jws.unverified_header(text).get("typ")) == media_type(CODE_TYPE)
    except SignatureError:
        return False


def code_id_of(token: str) -> str:
    """The code id a code names, unverified: central checks the whole code against what it issued."""
    try:
        payload = json.loads(jws.b64url_decode(token.split(".")[1]))
    except (SignatureError, ValueError, IndexError, RecursionError):
        raise ProtocolError("not an activation code") from None
    code_id = payload.get("code") if isinstance(payload, dict) else None
    if not isinstance(code_id, str) or not _CODE_ID.fullmatch(code_id):
        raise ProtocolError("not an activation code: it names no code id (1 to 64 base64url characters)")
    return code_id


def decode_code(token: str, *, trusted: dict[str, Ed25519PublicKey]) -> ActivationCode:
    """The code if a trusted operations key signed it and it is well formed; else ProtocolError."""
    try:
        kid = jws.unverified_header(token).get("kid")
    except SignatureError as error:
        raise ProtocolError(f"not an activation code: {error}") from None
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise SignatureError(f"signed by {jws.shown(kid)}, which is not a trusted operations key")
    _, payload = _open(token, key, typ=CODE_TYPE)
    code_id, shop, region, monitoring = (payload.get(k) for k in ("code", "shop", "region", "monitoring"))
    device = payload.get("device")
    if not (isinstance(code_id, str) and _CODE_ID.fullmatch(code_id) and isinstance(shop, str) and valid_licence(shop)
            and isinstance(region, str) and (not region or valid_device_id(region)) and isinstance(monitoring, bool)
            and (device is None or (isinstance(device, str) and valid_device_id(device)))):
        raise ProtocolError("activation code lacks its code id, shop, region or monitoring flag")
    try:
        issued_at, expires_at = parse_rfc3339(payload.get("issued_at")), parse_rfc3339(payload.get("expires_at"))
    except ValueError as error:
        raise ProtocolError(f"activation code times: {error}") from None
    return ActivationCode(code_id, shop, region, monitoring, issued_at, expires_at, device, kid)


# -- the box's request, central's result, the box's hello -------------------------------------

def encode_request(device: str, key: Ed25519PrivateKey, code: str, *, sent_at: float) -> bytes:
    """The box's request. It carries the box's broker password, which only central may read (the
    broker lets no one else subscribe to requests, and TLS protects it on the way)."""
    return _sign({"device": device, "public_key": public_key_text(key), "code": code, "sent_at": rfc3339(sent_at),
                  "broker_password": broker_password(key)}, key, kid=device, typ=REQUEST_TYPE)


@dataclass(frozen=True)
class Request:
    public_key: str
    code: str
    broker_password: str


def decode_request(token: bytes, *, device: str) -> Request:
    """The request of a box that signed it with the key it names (so it holds that key), under the
    device id derived from that key (``cb-...``): no box can ask under another's id, or a name."""
    public_key = _named_key(token, "an activation request")  # first: it bounds the size before anything is read
    try:
        header = jws.unverified_header(token.decode("ascii", errors="replace"))
    except SignatureError:
        raise ProtocolError("not an activation request: it names no public key") from None
    if header.get("kid") != device:
        raise ProtocolError(f"request kid {jws.shown(header.get('kid'))} is not the topic's device {device!r}")
    _, payload = _open(token, public_key, typ=REQUEST_TYPE)
    if payload.get("device") != device or not isinstance(payload.get("code"), str) \
            or not isinstance(payload.get("broker_password"), str):
        raise ProtocolError("request lacks its device, code or broker password")
    _check_derived(device, public_key)
    return Request(public_key_text(public_key), payload["code"], payload["broker_password"])


def _named_key(token: bytes, what: str) -> Ed25519PublicKey:
    """The public key a box's message names, to verify the message with (it signs with that key)."""
    if len(token) > MAX_ACTIVATION_BYTES:
        raise ProtocolError(f"not {what}: {len(token)} bytes, over the limit of {MAX_ACTIVATION_BYTES} for one")
    try:
        named = json.loads(jws.b64url_decode(token.decode("ascii", errors="replace").split(".")[1]))["public_key"]
    except (SignatureError, ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise ProtocolError(f"not {what}: it names no public key") from None
    try:
        return parse_public_key(named)
    except IdentityError as error:
        raise ProtocolError(f"not {what}: {error}") from None


def _check_derived(device: str, public_key: Ed25519PublicKey) -> None:
    """Only a box's own derived id may be activated: no one can claim a name (central's, operations',
    a box registered by hand) or another box's id."""
    if device != device_id_for(public_key):
        raise ProtocolError(f"device id {device} is not the one derived from the key this box holds")


def encode_result(device: str, result: dict[str, Any], *, key: Ed25519PrivateKey) -> bytes:
    return _sign({"device": device, **result}, key, kid="central", typ=RESULT_TYPE)


def decode_result(token: bytes, *, device: str, key: Ed25519PublicKey) -> dict[str, Any]:
    """Central's answer for this device: {"accepted": True, "shop", "region", "monitoring", "code"}
    or {"accepted": False, "code", "reason"}."""
    header, payload = _open(token, key, typ=RESULT_TYPE)
    if header.get("kid") != "central" or payload.get("device") != device:
        raise ProtocolError(f"result is from {jws.shown(header.get('kid'))} for {jws.shown(payload.get('device'))}, "
                            f"not central's for {device!r}")
    if not isinstance(payload.get("accepted"), bool) or not isinstance(payload.get("code"), str):
        raise ProtocolError("result lacks accepted or code")
    if payload["accepted"] and not (isinstance(payload.get("shop"), str) and isinstance(payload.get("region"), str)
                                    and isinstance(payload.get("monitoring"), bool)):
        raise ProtocolError("an accepted result lacks the shop, region or monitoring flag")
    return payload


def encode_hello(device: str, key: Ed25519PrivateKey, *, agent_version: str, sent_at: float) -> bytes:
    return _sign({"device": device, "public_key": public_key_text(key), "agent_version": agent_version,
                  "sent_at": rfc3339(sent_at)}, key, kid=device, typ=HELLO_TYPE)


def decode_hello(token: bytes, *, device: str) -> dict[str, Any]:
    public_key = _named_key(token, "a hello")
    header, payload = _open(token, public_key, typ=HELLO_TYPE)
    if header.get("kid") != device or payload.get("device") != device:
        raise ProtocolError(f"hello from {jws.shown(payload.get('device'))} on {device!r}'s topic")
    _check_derived(device, public_key)
    if not is_agent_version(payload.get("agent_version")):  # anyone may say hello: never a terminal's control
        raise ProtocolError(f"hello lacks an agent version of {AGENT_VERSION_RULE}")
    return {**payload, "public_key": public_key_text(public_key)}  # the key in its one spelling

