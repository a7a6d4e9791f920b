"""A device's identity: its id and its Ed25519 signing key.

The private key is made on the device and never leaves it; operations
register only the public key (``public_key_text``) against the device id.
Keys are stored as PKCS#8 PEM files with mode 0600; public keys travel as
base64url of the raw 32 bytes, the form a JWK's ``x`` member also uses.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.keys import write_secret

from .errors import IdentityError, SignatureError
from .jws import b64url, b64url_decode


def create_key(path: Path) -> Ed25519PrivateKey:
    """Generate a signing key and write it to ``path`` (mode 0600); refuses to overwrite one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        write_secret(path, pem)
    except FileExistsError:
        raise IdentityError(f"{path} already holds a key; remove it first if you really mean to replace this identity") from None
    return key


def load_key(path: Path, *, made_by: str = "counterbox identity create") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise IdentityError(f"signing key {path} does not exist (create it with '{made_by}')") from None
    except ValueError:
        raise IdentityError(f"{path} is not a PEM private key") from None
    except OSError as error:
        raise IdentityError(f"cannot read the signing key {path}: {error.strerror}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = b64url_decode(text.strip())
    except SignatureError:
        raw = b""
    if len(raw) != 32:
        raise IdentityError(f"{text!r} is not an Ed25519 public key (base64url of 32 bytes)")
    return Ed25519PublicKey.from_public_bytes(raw)
