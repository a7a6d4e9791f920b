"""A device's signing key on disk: PKCS#8 PEM, as the standard tools write and read it."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from provisioning.identity import IdentityError, create_key, key_pem, load_key, public_key_text


def _library_pem(key, encryption=serialization.NoEncryption()) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def test_a_created_key_is_the_pkcs8_pem_that_the_standard_library_writes_and_reads(tmp_path):
    key = create_key(tmp_path / "device.key")
    written = (tmp_path / "device.key").read_bytes()
    assert written == _library_pem(key)
    read_back = serialization.load_pem_private_key(written, password=None)
    assert public_key_text(read_back) == public_key_text(key)
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600


def test_a_key_written_by_the_standard_library_loads(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(_library_pem(key).replace(b"\n", b"\r\n"))  # edited on another system
    assert public_key_text(load_key(tmp_path / "k.pem")) == public_key_text(key)
    assert key_pem(load_key(tmp_path / "k.pem")) == _library_pem(key)


@pytest.mark.parametrize("other, named", [
    (lambda: _library_pem(rsa.generate_private_key(65537, 2048)), "not an Ed25519 one"),
    (lambda: _library_pem(ec.generate_private_key(ec.SECP256R1())), "not an Ed25519 one"),
    (lambda: _library_pem(ed25519.Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pw")),
     "not an unencrypted PKCS#8 PEM private key"),
    (lambda: b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI!!!\n-----END PRIVATE KEY-----\n", "base64 is damaged"),
    (lambda: _library_pem(ed25519.Ed25519PrivateKey.generate())[:-40] + b"\n-----END PRIVATE KEY-----\n",
     "base64 is damaged"),
    (lambda: b"\x00" * 64, "not an unencrypted PKCS#8 PEM private key"),
])
def test_anything_else_in_the_key_file_is_named(tmp_path, other, named):
    (tmp_path / "k.pem").write_bytes(other())
    with pytest.raises(IdentityError, match=named):
        load_key(tmp_path / "k.pem")
