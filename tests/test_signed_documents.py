"""Batches and acknowledgements are standard JWS (RFC 7515) with Ed25519 (RFC 9864)."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey

from provisioning import jws
from provisioning.identity import IdentityError, parse_public_key, public_key_text


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_an_off_the_shelf_library_verifies_our_tokens(key):
    token = jws.sign(b'{"sale":1}', key, kid="shop-1", typ="counterbox-batch+jws")
    public = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": public_key_text(key)})
    result = joserfc_jws.deserialize_compact(token, public, algorithms=["Ed25519"])
    assert result.payload == b'{"sale":1}'
    assert result.protected == {"alg": "Ed25519", "kid": "shop-1", "typ": "counterbox-batch+jws"}


def test_we_verify_tokens_made_by_an_off_the_shelf_library():
    other = OKPKey.generate_key("Ed25519")
    token = joserfc_jws.serialize_compact({"alg": "Ed25519", "kid": "central"}, b"ack", other, algorithms=["Ed25519"])
    header, payload = jws.verify(token, parse_public_key(other.as_dict()["x"]))
    assert (header["kid"], payload) == ("central", b"ack")


def test_another_key_does_not_verify(key):
    token = jws.sign(b"x", key, kid="a")
    with pytest.raises(jws.SignatureError, match="does not verify"):
        jws.verify(token, Ed25519PrivateKey.generate().public_key())


def test_one_changed_payload_byte_does_not_verify(key):
    header, payload, signature = jws.sign(b'{"price":2300}', key, kid="a").split(".")
    altered = jws.b64url(b'{"price":2400}')
    with pytest.raises(jws.SignatureError):
        jws.verify(f"{header}.{altered}.{signature}", key.public_key())


@pytest.mark.parametrize("alg", ["none", "EdDSA", "HS256"])
def test_other_algorithms_are_refused(key, alg):
    header = jws.b64url(json.dumps({"alg": alg}).encode())
    with pytest.raises(jws.SignatureError, match=f"algorithm '{alg}' refused"):
        jws.verify(f"{header}.{jws.b64url(b'x')}.", key.public_key())


@pytest.mark.parametrize("token", ["", "a.b", "!!!.b.c", "e30.e30.e30.e30"])
def test_malformed_tokens_are_refused(key, token):
    with pytest.raises(jws.SignatureError):
        jws.verify(token, key.public_key())


@pytest.mark.parametrize("text", ["", "abc", "A" * 44, "A", "A" * 45])  # the last two: not base64 at all
def test_a_malformed_public_key_is_named(text):
    with pytest.raises(IdentityError, match="not an Ed25519 public key"):
        parse_public_key(text)
