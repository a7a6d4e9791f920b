"""Signed documents: JWS Compact Serialization (RFC 7515) with the Ed25519 algorithm (RFC 9864).

    token = sign(b'{"hello":1}', private_key, kid="shop-0001")
    header, payload = verify(token, public_key)

Every batch a device publishes, and every acknowledgement or command that comes
back, is one of these. A consumer in any language verifies it with an
off-the-shelf JOSE library; see docs/protocol.md. The algorithm is pinned:
a token that names any other ``alg`` (``none`` included) is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError

ALG = "Ed25519"
PARAMETERS = ("alg", "kid", "typ")  # the protected header's, as ``sign`` writes it


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Base64url without padding, as JWS writes it (RFC 7515, section 2), and only that: a text that is not
    the one encoding of its bytes (padding, the ``+/`` alphabet, spaces, spare bits set) is refused, not
    read past, so no two texts decode to the same bytes."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError("not base64url") from None
    if b64url(data) != text:
        raise SignatureError("not base64url")
    return data


def sign(payload: bytes, key: Ed25519PrivateKey, *, kid: str, typ: str | None = None) -> str:
    header = {"alg": ALG, "kid": kid}
    if typ:
        header["typ"] = typ
    signing_input = f"{b64url(json.dumps(header, separators=(',', ':')).encode())}.{b64url(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def unverified_header(token: str) -> dict[str, Any]:
    """The protected header, to pick the key (``kid``) before verifying; trust nothing in it yet."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError(f"not a JWS compact token: {len(parts)} parts instead of 3")
    try:
        # UTF-8 and nothing else (RFC 7515: BASE64URL(UTF8(header))): json.loads would take bytes in
        # UTF-16 or 32, or behind a BOM, too, and a token has one spelling.
        header = json.loads(b64url_decode(parts[0]).decode("utf-8"), object_pairs_hook=_unique,
                            parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise SignatureError("the protected header is not UTF-8 JSON with each name once") from None
    if not isinstance(header, dict):
        raise SignatureError("the protected header is not a JSON object")
    return header


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json reads them, JSON has none


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is beyond a JSON number's range")
    return number


def shown(value: Any) -> str:
    """A value a message brought, as an error names it: its repr, at most 40 characters of it. Most are
    named before any signature is checked (a kid, an alg), and a message may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A header naming a parameter twice is refused (RFC 7515, section 4): which of the two a reader
    takes would decide what it checks."""
    header = dict(pairs)
    if len(header) != len(pairs):
        raise ValueError("a header parameter named twice")
    return header


def verify(token: str, key: Ed25519PublicKey) -> tuple[dict[str, Any], bytes]:
    """Return (header, payload) if ``token`` is signed by ``key`` with Ed25519; else raise SignatureError."""
    header = unverified_header(token)
    if header.get("alg") != ALG:
        raise SignatureError(f"algorithm {shown(header.get('alg'))} refused: only {ALG} is accepted")
    if "crit" in header:  # no extension is understood here: any named critical is refused (RFC 7515, 4.1.11)
        raise SignatureError(f"unsupported critical header parameters {shown(header['crit'])}")
    if header.get("b64", True) is not True:  # an unencoded payload (RFC 7797) is no payload of this protocol
        raise SignatureError("an unencoded payload (b64) is refused")
    # What this protocol writes, and nothing else: a parameter a reader may take or refuse (``cty``, one of
    # no standard) would let central and a consumer's JOSE library disagree on whether a token holds.
    others = sorted(set(header) - set(PARAMETERS))
    if others:
        raise SignatureError(f"the protected header holds a parameter this protocol has none of: "
                             f"{', '.join(repr(name[:40]) for name in others[:5])}")
    for name in PARAMETERS:
        if name in header and not isinstance(header[name], str):
            raise SignatureError(f"the protected header's {name} is not text")
    signing_input, _, signature = token.rpartition(".")
    try:
        key.verify(b64url_decode(signature), signing_input.encode())
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the expected key") from None
    return header, b64url_decode(signing_input.partition(".")[2])
