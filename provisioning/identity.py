"""A device's identity: its id and its Ed25519 signing key.

The private key is made on the device and never leaves it; operations
register only the public key (``public_key_text``) against the device id.
Keys are stored as PKCS#8 PEM files with mode 0600 (what ``openssl genpkey
-algorithm ed25519`` writes); public keys travel as base64url of the raw 32
bytes, the form a JWK's ``x`` member also uses.

An Ed25519 PKCS#8 key is one fixed DER prefix and the 32-byte seed (RFC 8410,
section 7), so it is read and written here directly: cryptography's
``serialization`` package would bring every other key type with it, 2.6 MiB of
the box's memory for a file read once at start.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.keys import write_secret

from .errors import IdentityError, SignatureError
from .jws import b64url, b64url_decode


# PrivateKeyInfo { version 0, AlgorithmIdentifier { id-Ed25519 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"


def key_pem(key: Ed25519PrivateKey) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM file."""
    der = base64.b64encode(_PKCS8_ED25519 + key.private_bytes_raw()).decode()
    return f"{_PEM_BEGIN}\n{der}\n{_PEM_END}\n".encode()


def key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 key; ValueError names what the file holds instead."""
    text = pem.decode("ascii", errors="replace").strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        raise ValueError("not an unencrypted PKCS#8 PEM private key")
    try:
        der = base64.b64decode("".join(text[len(_PEM_BEGIN):-len(_PEM_END)].split()), validate=True)
    except binascii.Error:
        raise ValueError("its base64 is damaged") from None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        raise ValueError("a private key, but not an Ed25519 one")
    return Ed25519PrivateKey.from_private_bytes(der[len(_PKCS8_ED25519):])


def create_key(path: Path) -> Ed25519PrivateKey:
    """Generate a signing key and write it to ``path`` (mode 0600); refuses to overwrite one."""
    key = Ed25519PrivateKey.generate()
    try:
        write_secret(path, key_pem(key))
    except FileExistsError:
        if path.is_dir():
            raise IdentityError(f"{path} is a directory; give the key file's path") from None
        raise IdentityError(f"{path} already holds a key; remove it first if you really mean to replace this identity") from None
    return key


def load_key(path: Path, *, made_by: str = "counterbox identity create") -> Ed25519PrivateKey:
    try:
        return key_from_pem(path.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"signing key {path} does not exist (create it with '{made_by}')") from None
    except ValueError as error:
        raise IdentityError(f"{path} is not an Ed25519 signing key: {error}") from None
    except OSError as error:
        raise IdentityError(f"cannot read the signing key {path}: {error.strerror}") from None


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url(public.public_bytes_raw())


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The key's JWK thumbprint (RFC 7638): the ``kid`` of documents it signs, derived from the key itself."""
    import hashlib

    jwk = f'{{"crv":"Ed25519","kty":"OKP","x":"{public_key_text(key)}"}}'
    return b64url(hashlib.sha256(jwk.encode()).digest())


def device_id_for(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The device id of a box that was given none: derived from its key, so stable for as long as
    the key is kept, and new after a crypto-erase (a new key is a new box)."""
    return "cb-" + key_id(key)[:16]


def broker_password(key: Ed25519PrivateKey) -> str:
    """The box's password at the broker, derived from its signing key: nothing more to store, and gone
    with the key at a crypto-erase. The box hands it to central once, in its signed activation request."""
    import hashlib
    import hmac

    return b64url(hmac.new(key.private_bytes_raw(), b"counterbox/v1 broker password", hashlib.sha256).digest())


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key ``text`` names: base64url of its 32 bytes, as ``public_key_text`` writes it (spaces around
    it aside, for a key pasted into a file). A key that is no point of the curve, or one of its few
    points of small order, is refused: a small-order key "verifies" signatures nobody made (the identity
    point verifies any message with a signature of zeros), so it proves no one holds it."""
    shown = repr(text)[:60]  # what anyone sent (a hello is anonymous): named, never at any length
    if not isinstance(text, str):  # a JSON document's value may be anything
        raise IdentityError(f"{shown} is not an Ed25519 public key (base64url of 32 bytes)")
    try:
        raw = b64url_decode(text.strip())
    except SignatureError:
        raw = b""
    if len(raw) != 32:
        raise IdentityError(f"{shown} is not an Ed25519 public key (base64url of 32 bytes)")
    point = _point(raw)
    if point is None:
        raise IdentityError(f"{shown} is not an Ed25519 public key: not a point of the curve in its one encoding")
    if _small_order(point):
        raise IdentityError(f"{shown} is not an Ed25519 public key anyone holds: a point of small order, "
                            "which verifies signatures no private key made")
    return Ed25519PublicKey.from_public_bytes(raw)


# edwards25519 (RFC 8032, section 5.1): -x^2 + y^2 = 1 + d x^2 y^2 over the field of P elements.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _point(raw: bytes) -> tuple[int, int] | None:
    """The affine point 32 bytes encode (RFC 8032, 5.1.3), or None: a y at or above P (a second
    encoding of a point), or no x that solves the curve's equation."""
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P or (x == 0 and sign):
        return None
    return (_P - x if x & 1 != sign else x), y


def _small_order(point: tuple[int, int]) -> bool:
    """Whether eight times ``point`` is the identity (0, 1): the curve's cofactor is 8, so the points of
    small order are exactly those."""
    x, y = point
    for _ in range(3):  # doubled three times; the curve's addition law is complete, so no case is special
        xx, yy = x * x % _P, y * y % _P
        dxxyy = _D * xx * yy % _P
        x, y = 2 * x * y * pow(1 + dxxyy, _P - 2, _P) % _P, (yy + xx) * pow(1 - dxxyy, _P - 2, _P) % _P
    return (x, y) == (0, 1)
