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
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError

ALG = "Ed25519"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# The value of the last character's bits that encode nothing, by the text's length modulo 4: zero in
# the one encoding of the bytes (RFC 4648, section 3.5), so no two texts decode to the same bytes.
_SPARE_BITS = {2: 0x0F, 3: 0x03}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url_decode(text: str) -> bytes:
    """Base64url without padding, as JWS writes it (RFC 7515, section 2), and only that: padding, the
    ``+/`` alphabet, spaces and spare bits that are not zero are refused, not read past."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise SignatureError("not base64url")
    if text and _ALPHABET.index(text[-1]) & _SPARE_BITS.get(len(text) % 4, 0):
        raise SignatureError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("not base64url") from None


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
        header = json.loads(b64url_decode(parts[0]), object_pairs_hook=_unique)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise SignatureError("the protected header is not JSON with each name once") from None
    if not isinstance(header, dict):
        raise SignatureError("the protected header is not a JSON object")
    return header


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
        raise SignatureError(f"algorithm {header.get('alg')!r} refused: only {ALG} is accepted")
    if "crit" in header:  # no extension is understood here: any named critical is refused (RFC 7515, 4.1.11)
        raise SignatureError(f"unsupported critical header parameters {header['crit']!r}")
    if header.get("b64", True) is not True:  # an unencoded payload (RFC 7797) is no payload of this protocol
        raise SignatureError("an unencoded payload (b64) is refused")
    signing_input, _, signature = token.rpartition(".")
    try:
        key.verify(b64url_decode(signature), signing_input.encode())
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the expected key") from None
    return header, b64url_decode(signing_input.partition(".")[2])
