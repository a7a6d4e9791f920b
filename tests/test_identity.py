"""A device's signing key on disk: PKCS#8 PEM, as the standard tools write and read it."""

from __future__ import annotations

import re
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from provisioning import jws
from provisioning.identity import IdentityError, create_key, key_pem, load_key, parse_public_key, public_key_text


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


P = 2**255 - 19  # the field of edwards25519


def _encoded(y: int, *, x_odd: bool = False) -> str:
    return jws.b64url((y | (x_odd << 255)).to_bytes(32, "little"))


# Every point of order 1, 2, 4 or 8 (the curve's cofactor is 8), in each sign of x it has: the keys
# libsodium refuses as of small order. None has a private key; the first "verifies" any message.
SMALL_ORDER = {
    "identity (order 1)": _encoded(1),
    "(0, -1) (order 2)": _encoded(P - 1),
    "(sqrt(-1), 0) (order 4)": _encoded(0),
    "(-sqrt(-1), 0) (order 4)": _encoded(0, x_odd=True),
    "order 8": "JuiVj8KyJ7BFw_SJ8u-Y8NXfrAXTxjM5sTgCiG1T_AU",
    "order 8, x negated": "JuiVj8KyJ7BFw_SJ8u-Y8NXfrAXTxjM5sTgCiG1T_IU",
    "order 8, the other": "xxdqcD1N2E-6PAt2DRBnDyogU_osOczGTsf9d5KsA3o",
    "order 8, the other, x negated": "xxdqcD1N2E-6PAt2DRBnDyogU_osOczGTsf9d5KsA_o",
}


@pytest.mark.parametrize("text", SMALL_ORDER.values(), ids=SMALL_ORDER.keys())
def test_a_public_key_of_small_order_is_refused_since_it_verifies_signatures_nobody_made(text):
    with pytest.raises(IdentityError, match=re.escape(f"{text!r} is not an Ed25519 public key anyone holds: a point "
                                                      "of small order")):
        parse_public_key(text)


@pytest.mark.parametrize("text, why", [
    (_encoded(P), "y = P: the point (sqrt(-1), 0) spelt a second way"),
    (_encoded(P + 1), "y = P + 1: the identity spelt a second way"),
    (_encoded(1, x_odd=True), "x = 0 cannot be negative"),
    (_encoded(2), "y = 2: no x solves the curve's equation"),
])
def test_a_public_key_that_is_no_point_in_its_one_encoding_is_refused(text, why):
    with pytest.raises(IdentityError, match="not a point of the curve in its one encoding"):
        parse_public_key(text)


def test_a_public_key_is_read_only_in_base64url_without_padding_or_stray_bits():
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    text = public_key_text(key)
    assert parse_public_key(f"  {text}\n").public_bytes_raw() == key.public_bytes_raw()  # pasted into a file
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    stray = text[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]  # a spare bit set
    standard = text.replace("-", "+").replace("_", "/")
    for spelt in (text + "=", stray, text[:20] + " " + text[20:]) + ((standard,) if standard != text else ()):
        with pytest.raises(IdentityError, match="base64url of 32 bytes"):
            parse_public_key(spelt)


def test_every_key_a_box_makes_is_taken():
    for _ in range(200):
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        assert parse_public_key(public_key_text(key)).public_bytes_raw() == key.public_bytes_raw()


def test_a_refused_key_is_named_in_a_few_characters_however_long_it_was():
    """A hello is anonymous: what it names as its key reaches central's log only this far."""
    with pytest.raises(IdentityError) as refused:
        parse_public_key("A" * 1_000_000)
    assert len(str(refused.value)) < 120 and str(refused.value).startswith("'AAAA")


def test_a_box_whose_signing_key_is_gone_beside_its_journal_says_it_is_a_new_device_now(tmp_path, caplog):
    """A box activated by code makes its key at its first start. Made again beside the journal it used (the
    key file lost), it was logged as a first start; the box then refused every sale, waiting for a code, and
    nothing said why."""
    import logging

    from agent.config import Config, DeviceConfig, StorageConfig
    from agent.daemon import device_key

    config = Config(device=DeviceConfig(key_file=tmp_path / "device.key"),
                    storage=StorageConfig(path=tmp_path / "journal.db", key_file=tmp_path / "data.key"))
    with caplog.at_level(logging.INFO, logger="agent.daemon"):
        first = device_key(config)  # the first start: no journal yet
        assert device_key(config).public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
        (tmp_path / "journal.db").touch()
        (tmp_path / "device.key").unlink()
        again = device_key(config)
    assert again.public_key().public_bytes_raw() != first.public_key().public_bytes_raw()
    said = [record.getMessage() for record in caplog.records]
    assert said == [f"device key created: {tmp_path / 'device.key'}",
                    f"device key created: {tmp_path / 'device.key'}, beside a journal this box used under another "
                    "key: this box is a new device now, and waits for its own activation code"]
