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
    if not isinstance(text, str):  # a JSON document's value may be anything
        raise IdentityError(f"{text!r} is not an Ed25519 public key (base64url of 32 bytes)")
    try:
        raw = b64url_decode(text.strip())
    except SignatureError:
        raw = b""
    if len(raw) != 32:
        raise IdentityError(f"{text!r} is not an Ed25519 public key (base64url of 32 bytes)")
    return Ed25519PublicKey.from_public_bytes(raw)
