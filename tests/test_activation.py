"""Activation: a new box becomes a shop's box by a single-use code that operations signed, and by nothing else."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from central.errors import ActivationRefused
from central.store import CentralStore, Shop
from provisioning import activation, jws
from provisioning.activation import ActivationCode
from provisioning.errors import ProtocolError, SignatureError
from provisioning.identity import broker_password, device_id_for, key_id, load_key, public_key_text
from provisioning.protocol import rfc3339

from .harness import feed, scans, signed_with_header, wait_until


def _qr_codes(path):
    """The QR codes on a slip, read as the counter's 2D scanner reads them (QR, full or Micro): read as any
    symbology, a row of a QR code's modules now and then also passes for a short Codabar."""
    return zxingcpp.read_barcodes(Image.open(path), formats=(zxingcpp.BarcodeFormat.QRCode,
                                                             zxingcpp.BarcodeFormat.MicroQRCode))

NOW = 1_764_000_000.0
SHOP = Shop("530102100123", "Mengzi No. 3", "honghe", monitoring=True)


@pytest.fixture
def ops():
    return Ed25519PrivateKey.generate()


def code(**change) -> ActivationCode:
    fields = dict(code_id="c0de", shop=SHOP.licence, region=SHOP.region, monitoring=True, issued_at=NOW,
                  expires_at=NOW + 3600, device=None)
    return ActivationCode(**{**fields, **change})


def test_a_code_round_trips_and_is_recognised_among_scans(ops):
    kid = key_id(ops)
    token = activation.encode_code(code(), key=ops, kid=kid)
    assert activation.decode_code(token, trusted={kid: ops.public_key()}) == code(kid=kid)
    assert activation.looks_like_code(token) and activation.code_id_of(token) == "c0de"
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")  # a scanner types it
    for scan in ("6901028075831", "a.b.c", "PROMO-$5", token[:-1] + ".", jws.sign(b"{}", ops, kid="x", typ="other")):
        assert not activation.looks_like_code(scan), scan


def test_a_code_shaped_scan_longer_than_any_code_is_not_taken_for_one(ops):
    token = activation._sign({"code": "c0de", "padding": "x" * activation.MAX_CODE_CHARS}, ops, kid="k",
                             typ=activation.CODE_TYPE).decode()
    assert token.count(".") == 2 and not activation.looks_like_code(token)


@pytest.mark.parametrize("forge,reason", [
    (lambda ops: activation.encode_code(code(), key=Ed25519PrivateKey.generate(), kid="someone"),
     "not a trusted operations key"),
    (lambda ops: activation.encode_code(code(), key=Ed25519PrivateKey.generate(), kid=key_id(ops)),
     "signature check failed"),
    (lambda ops: activation.encode_code(code(shop="53 01"), key=ops, kid=key_id(ops)), "lacks its code id, shop"),
    (lambda ops: activation.encode_code(code(device="a/b"), key=ops, kid=key_id(ops)), "lacks its code id, shop"),
], ids=["untrusted", "forged", "licence", "device"])
def test_a_code_not_signed_by_a_trusted_key_or_malformed_is_refused(ops, forge, reason):
    with pytest.raises((ProtocolError, SignatureError), match=re.escape(reason)):
        activation.decode_code(forge(ops), trusted={key_id(ops): ops.public_key()})


def test_a_request_proves_the_box_holds_the_key_it_names(ops):
    box, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    device = device_id_for(box)
    token = activation.encode_code(code(), key=ops, kid=key_id(ops))
    request = activation.encode_request(device, box, token, sent_at=NOW)
    assert activation.decode_request(request, device=device) == activation.Request(
        public_key_text(box), token, broker_password(box))
    # The same request with another box's public key in it: its signature does not verify with that key.
    header, payload, signature = request.decode().split(".")
    body = json.loads(jws.b64url_decode(payload))
    swapped = f"{header}.{jws.b64url(json.dumps({**body, 'public_key': public_key_text(other)}).encode())}.{signature}"
    with pytest.raises(SignatureError):
        activation.decode_request(swapped.encode(), device=device)
    with pytest.raises(ProtocolError, match="is not the topic's device"):
        activation.decode_request(request, device="cb-someone-else")
    # Asking under the id derived from another box's key: refused, so no box can squat on another's id.
    # Asking under a name (central's own client, operations', a box registered by hand): refused too.
    for claimed in (device_id_for(other), "counterbox-central", "counterbox-ops", "shop-0001"):
        squatter = activation.encode_request(claimed, box, token, sent_at=NOW)
        with pytest.raises(ProtocolError, match="not the one derived from the key this box holds"):
            activation.decode_request(squatter, device=claimed)
        hello = activation.encode_hello(claimed, box, agent_version="x", sent_at=NOW)
        with pytest.raises(ProtocolError, match="not the one derived from the key this box holds"):
            activation.decode_hello(hello, device=claimed)
    with pytest.raises(ProtocolError, match="at most 64 printable characters"):
        activation.decode_hello(activation.encode_hello(device, box, agent_version="x" * 65, sent_at=NOW), device=device)


def test_a_hello_or_request_naming_a_key_of_small_order_is_refused_though_its_signature_verifies(ops):
    """The identity point as a box's key "verifies" a signature of R = identity, S = 0 on any message: a
    box nobody holds would be activated, and anyone could then sign its batches."""
    identity = bytes([1]) + bytes(31)
    nobody = Ed25519PrivateKey.generate()  # only for the device id's shape; the key named is the identity
    device = device_id_for(nobody)

    def forged(payload: dict, typ: str) -> bytes:
        signing_input = (f"{jws.b64url(json.dumps({'alg': 'Ed25519', 'kid': device, 'typ': typ}).encode())}."
                         f"{jws.b64url(json.dumps({'v': 1, **payload}).encode())}")
        return f"{signing_input}.{jws.b64url(identity + bytes(32))}".encode()

    named = {"device": device, "public_key": jws.b64url(identity), "sent_at": "2025-11-24T16:00:00.000Z"}
    refused = f"{jws.b64url(identity)!r} is not an Ed25519 public key anyone holds: a point of small order"
    with pytest.raises(ProtocolError, match=re.escape(f"not a hello: {refused}")):
        activation.decode_hello(forged({**named, "agent_version": "1.0"}, activation.HELLO_TYPE), device=device)
    token = activation.encode_code(code(), key=ops, kid=key_id(ops))
    with pytest.raises(ProtocolError, match=re.escape(f"not an activation request: {refused}")):
        activation.decode_request(forged({**named, "code": token, "broker_password": "x"}, activation.REQUEST_TYPE),
                                  device=device)


def test_a_key_a_box_names_with_spaces_around_it_is_kept_in_its_one_spelling():
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box)
    spaced = {"device": device, "public_key": f" {public_key_text(box)}\n", "sent_at": "2025-11-24T16:00:00.000Z"}
    hello = activation._sign({**spaced, "agent_version": "1.0"}, box, kid=device, typ=activation.HELLO_TYPE)
    assert activation.decode_hello(hello, device=device)["public_key"] == public_key_text(box)
    request = activation._sign({**spaced, "code": "c", "broker_password": "p"}, box, kid=device,
                               typ=activation.REQUEST_TYPE)
    assert activation.decode_request(request, device=device).public_key == public_key_text(box)


def test_a_result_must_be_centrals_for_this_box():
    central, device = Ed25519PrivateKey.generate(), "cb-box"
    accepted = {"accepted": True, "code": "c0de", "shop": SHOP.licence, "region": "honghe", "monitoring": False}
    result = activation.encode_result(device, accepted, key=central)
    assert activation.decode_result(result, device=device, key=central.public_key())["shop"] == SHOP.licence
    with pytest.raises(SignatureError):
        activation.decode_result(activation.encode_result(device, accepted, key=Ed25519PrivateKey.generate()),
                                 device=device, key=central.public_key())
    with pytest.raises(ProtocolError, match="not central's for 'cb-other'"):
        activation.decode_result(result, device="cb-other", key=central.public_key())


@pytest.mark.parametrize("change,reason", [
    ({"accepted": "yes"}, "result lacks accepted or code"),
    ({"code": None}, "result lacks accepted or code"),
    ({"shop": None}, "an accepted result lacks the shop, region or monitoring flag"),
    ({"region": 5}, "an accepted result lacks"),
    ({"monitoring": "no"}, "an accepted result lacks"),
], ids=["accepted", "code", "shop", "region", "monitoring"])
def test_a_result_lacking_any_one_of_its_fields_is_refused(change, reason):
    central, device = Ed25519PrivateKey.generate(), "cb-box"
    result = {"accepted": True, "code": "c0de", "shop": SHOP.licence, "region": "honghe", "monitoring": False, **change}
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        activation.decode_result(activation.encode_result(device, result, key=central), device=device,
                                 key=central.public_key())


def test_a_refusal_needs_no_shop():
    central, device = Ed25519PrivateKey.generate(), "cb-box"
    refused = {"accepted": False, "code": "c0de", "reason": "the code was used"}
    result = activation.encode_result(device, refused, key=central)
    assert activation.decode_result(result, device=device, key=central.public_key()) == {"v": 1, "device": device, **refused}


def test_a_hello_or_request_over_the_activation_limit_is_refused_before_its_json_is_read():
    """Anyone may say hello: a signed one padded to megabytes once held central's one store thread for seconds."""
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box)
    longest = "x" * activation.MAX_CODE_CHARS  # the request of the longest code a box takes fits
    request = activation.encode_request(device, box, longest, sent_at=NOW)
    assert len(request) <= activation.MAX_ACTIVATION_BYTES
    assert activation.decode_request(request, device=device).code == longest
    body = {"device": device, "public_key": public_key_text(box), "agent_version": "1.0", "sent_at": rfc3339(NOW)}
    for typ, decode in ((activation.HELLO_TYPE, activation.decode_hello), (activation.REQUEST_TYPE, activation.decode_request)):
        padded = activation._sign({**body, "code": "c", "broker_password": "p", "pad": [{}] * 2000}, box, kid=device,
                                  typ=typ)
        assert len(padded) > activation.MAX_ACTIVATION_BYTES
        with pytest.raises(ProtocolError, match=f"{len(padded)} bytes, over the limit of 4096 for one"):
            decode(padded, device=device)
    # Nor its header: megabytes of one are not read to find that they are not JSON.
    header = jws.b64url(b"[" * 100_000).encode()
    for decode in (activation.decode_hello, activation.decode_request):
        with pytest.raises(ProtocolError, match="over the limit of 4096 for one"):
            decode(header + b"." + request.split(b".", 1)[1], device=device)


def test_a_hello_round_trips_with_its_version_of_up_to_64_characters():
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box)
    hello = activation.decode_hello(activation.encode_hello(device, box, agent_version="v" * 64, sent_at=NOW), device=device)
    assert (hello["device"], hello["public_key"], hello["agent_version"]) == (device, public_key_text(box), "v" * 64)


@pytest.mark.parametrize("header_kid,payload_device", [("other", None), (None, "other")], ids=["kid", "payload"])
def test_a_hello_or_request_naming_another_device_anywhere_is_refused(header_kid, payload_device):
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box)
    hello = {"device": payload_device or device, "public_key": public_key_text(box), "agent_version": "1",
             "sent_at": "2025-11-24T16:00:00.000Z"}
    token = activation._sign(hello, box, kid=header_kid or device, typ=activation.HELLO_TYPE)
    with pytest.raises(ProtocolError, match="on .*'s topic"):
        activation.decode_hello(token, device=device)
    request = {"device": payload_device or device, "public_key": public_key_text(box), "code": "x",
               "broker_password": "p", "sent_at": "2025-11-24T16:00:00.000Z"}
    token = activation._sign(request, box, kid=header_kid or device, typ=activation.REQUEST_TYPE)
    with pytest.raises(ProtocolError, match="is not the topic's device|lacks its device"):
        activation.decode_request(token, device=device)


@pytest.mark.parametrize("change", [{"code": 5}, {"broker_password": None}], ids=["code", "password"])
def test_a_request_lacking_its_code_or_broker_password_is_refused(change):
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box)
    request = {"device": device, "public_key": public_key_text(box), "code": "x", "broker_password": "p",
               "sent_at": "2025-11-24T16:00:00.000Z", **change}
    with pytest.raises(ProtocolError, match="request lacks its device, code or broker password"):
        activation.decode_request(activation._sign(request, box, kid=device, typ=activation.REQUEST_TYPE), device=device)


@pytest.mark.parametrize("change", [{"region": ""}, {"device": "cb-" + "a" * 61}, {"code_id": "c"}],
                         ids=["no-region", "bound-to-a-box", "one-character-id"])
def test_a_code_at_the_edge_of_the_rules_round_trips(ops, change):
    kid = key_id(ops)
    token = activation.encode_code(code(**change), key=ops, kid=kid)
    assert activation.decode_code(token, trusted={kid: ops.public_key()}) == code(kid=kid, **change)


@pytest.mark.parametrize("kid", [5, ["k"], None])
def test_a_code_whose_key_id_is_not_a_string_is_untrusted_not_a_crash(ops, kid):
    token = signed_with_header(b"{}", ops, {"alg": "Ed25519", "kid": kid, "typ": activation.CODE_TYPE}).decode()
    with pytest.raises(SignatureError, match="which is not a trusted operations key"):
        activation.decode_code(token, trusted={key_id(ops): ops.public_key()})


# -- central: each code once ------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = CentralStore(tmp_path / "central.db")
    s.add_shop(SHOP)
    yield s
    s.close()


def test_a_code_is_used_once_and_only_by_the_box_it_was_first_used_by(store):
    store.add_code("c1", shop=SHOP.licence, token="T1", device=None, issued_at=NOW, expires_at=NOW + 60)
    assert store.activate("c1", "T1", device_id="cb-a", public_key="KA", now=NOW + 1) == SHOP
    device = store.device("cb-a")
    assert (device.public_key, device.shop, device.region) == ("KA", SHOP.licence, "honghe")
    # Its answer was lost and it asks again, even after the expiry: the same answer.
    assert store.activate("c1", "T1", device_id="cb-a", public_key="KA", now=NOW + 120) == SHOP
    for device_id, key, reason in [("cb-b", "KB", "already used by another box"),
                                   ("cb-a", "KX", "already used by another box")]:
        with pytest.raises(ActivationRefused, match=reason):
            store.activate("c1", "T1", device_id=device_id, public_key=key, now=NOW + 2)
    assert store.device("cb-b") is None
    # An active box cannot be moved to another shop by a second code; a revoked one is not let back.
    store.add_code("c3", shop=SHOP.licence, token="T3", device=None, issued_at=NOW, expires_at=NOW + 60)
    with pytest.raises(ActivationRefused, match="already active for shop"):
        store.activate("c3", "T3", device_id="cb-a", public_key="KA", now=NOW + 3)
    store.revoke("cb-a")
    with pytest.raises(ActivationRefused, match="was revoked"):
        store.activate("c1", "T1", device_id="cb-a", public_key="KA", now=NOW + 4)


@pytest.mark.parametrize("token,device,now,reason", [
    ("T2", "cb-a", NOW + 61, "the code has expired"),
    ("T-other", "cb-a", NOW + 1, "central never issued this code"),
    ("T2", "cb-z", NOW + 1, "issued for device cb-bound"),
])
def test_an_expired_unknown_or_other_boxs_code_is_refused_and_changes_nothing(store, token, device, now, reason):
    store.add_code("c2", shop=SHOP.licence, token="T2", device="cb-bound" if device == "cb-z" else None,
                   issued_at=NOW, expires_at=NOW + 60)
    with pytest.raises(ActivationRefused, match=reason):
        store.activate("c2", token, device_id=device, public_key="K", now=now)
    assert store.device(device) is None


# -- end to end: a box out of the image, operations, the broker, central ---------------------------------

def _shop(stack, licence="530102100123", region="honghe", *extra):
    result = stack.ops_command("shop", "add", "--central-db", str(stack.central_db), "--licence", licence,
                               "--name", "Mengzi No. 3", "--region", region, *extra)
    assert result.returncode == 0, result.stderr


def _issue(stack, *args) -> dict:
    result = stack.ops_command("activation", "issue", "--central-db", str(stack.central_db),
                               "--ops-key", str(stack.ops_key), "--broker", f"127.0.0.1:{stack.broker_port}", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _waiting(stack) -> list[str]:
    result = stack.ops_command("activation", "waiting", "--central-db", str(stack.central_db), "--json")
    return [json.loads(line)["device"] for line in result.stdout.splitlines()]


def _started(stack, device) -> str:
    device.start()
    wait_until(lambda: (device.directory / "device.key").exists(), 20, "the box to make its key")
    identity = device.identity()
    wait_until(lambda: identity["device"] in _waiting(stack), 20, "central to see the box waiting")
    return identity["device"]


def test_a_box_activated_by_scanning_its_printed_slip_records_and_delivers_sales(stack, tmp_path):
    fifo = tmp_path / "scanner.fifo"

    os.mkfifo(fifo)
    device = stack.install("new-box", scanners=[str(fifo)], uplink={"snapshot_interval": 0.5})
    device_id = _started(stack, device)
    assert device_id == device_id_for(load_key(device.directory / "device.key"))

    feed(fifo, scans(["6901028075831"]))  # not activated: the scan is no sale
    wait_until(lambda: "scan NOT recorded" in device.log.read_text(), 10, "the scan refused")
    assert "sale" not in device.status()["events"]

    _shop(stack, "530102100123", "honghe", "--monitoring")
    issued = _issue(stack, "--shop", "530102100123", "--slip", str(tmp_path / "slip.png"))
    read = _qr_codes(tmp_path / "slip.png")
    assert [r.format.name for r in read] == ["QRCode"]
    token = read[0].text
    assert activation.code_id_of(token) == issued["code"]

    started = time.monotonic()
    feed(fifo, scans([token]))  # the 2D scanner types the QR code's text
    wait_until(lambda: device.status()["shop"] == "530102100123", 60, "the box active")
    assert time.monotonic() - started < 60
    log = device.log.read_text()
    assert "activation code scanned" in log and "activated seq=" in log and token not in log

    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: len(stack.sales()) == 1, 20, "the first sale at central")
    devices = {row["device"]: row for row in map(json.loads, stack.central_command("devices", "--json").stdout.splitlines())}
    assert (devices[device_id]["shop"], devices[device_id]["region"]) == ("530102100123", "honghe")
    assert device_id not in _waiting(stack)

    # A monitoring point: its snapshots of stock and actual prices reach central with its events.
    def snapshot_after_the_sale():
        found = [json.loads(line) for line in stack.central_command("export", "--kind", "snapshot").stdout.splitlines()]
        return [s for s in found if s["stock"]]
    [*_, snapshot] = wait_until(snapshot_after_the_sale, 20, "a snapshot holding the sale at central")
    assert [(row["product"], row["packs"], row["known"]) for row in snapshot["stock"]] == [("06901028075831", -1, False)]
    assert snapshot["prices"] == []  # sold without a price: no price list on this box

    feed(fifo, scans([token]))  # the slip again, on the box it activated: it did what it was for
    wait_until(lambda: "the one this box was activated with; nothing changed" in device.log.read_text(), 10,
               "the slip taken for what it was")
    other = _issue(stack, "--shop", "530102100123", "--slip", str(tmp_path / "other.png"))
    other_token = _qr_codes(tmp_path / "other.png")[0].text
    assert activation.code_id_of(other_token) == other["code"]
    feed(fifo, scans([other_token]))  # another code, on a box already active
    wait_until(lambda: "this box is already active; nothing changed" in device.log.read_text(), 10, "the refusal")
    assert len(stack.sales()) == 1


def test_a_code_pushed_to_a_waiting_box_activates_it(stack, tmp_path):
    device = stack.install("remote-box", scanners=[])
    device_id = _started(stack, device)
    _shop(stack)
    _issue(stack, "--shop", "530102100123", "--device", device_id, "--push")
    wait_until(lambda: device.status()["shop"] == "530102100123", 60, "the box active")
    assert "activation code pushed by operations" in device.log.read_text()


def test_a_reused_forged_expired_or_other_boxs_code_is_refused_and_the_box_stays_waiting(stack, tmp_path):

    boxes = []
    for name in ("first", "second"):
        fifo = tmp_path / f"{name}.fifo"
        os.mkfifo(fifo)
        device = stack.install(name, scanners=[str(fifo)])
        boxes.append((device, fifo, _started(stack, device)))
    (first, first_fifo, _), (second, fifo, second_id) = boxes
    _shop(stack)
    used = _issue(stack, "--shop", "530102100123", "--slip", str(tmp_path / "used.png"))
    token = _qr_codes(tmp_path / "used.png")[0].text
    feed(first_fifo, scans([token]))
    wait_until(lambda: first.status()["shop"], 60, "the first box active")

    ops = load_key(stack.ops_key)
    now = time.time()
    forged = activation.encode_code(ActivationCode("f1", "530102100123", "honghe", False, now, now + 3600),
                                    key=Ed25519PrivateKey.generate(), kid=key_id(ops))
    expired = activation.encode_code(ActivationCode("e1", "530102100123", "honghe", False, now - 7200, now - 3600),
                                     key=ops, kid=key_id(ops))
    bound = _issue(stack, "--shop", "530102100123", "--device", "cb-another-box", "--slip", str(tmp_path / "b.png"))
    others = _qr_codes(tmp_path / "b.png")[0].text
    assert activation.code_id_of(others) == bound["code"]
    attempts = [(token, "activation refused by central: the code was already used by another box"),
                (forged, "activation code refused: signature check failed"),
                (expired, "activation code refused: it expired at"),
                (others, "activation code refused: it was issued for device cb-another-box")]
    for scanned, reason in attempts:
        feed(fifo, scans([scanned]))
        wait_until(lambda: reason in second.log.read_text(), 30, reason)
    assert second.status()["shop"] is None and "activation" not in second.status()["events"]
    assert second_id in _waiting(stack)
    assert used["code"] != bound["code"]


def test_a_revoked_box_delivers_what_it_holds_erases_itself_and_waits_as_a_new_box(stack, tmp_path):

    fifo = tmp_path / "scanner.fifo"
    os.mkfifo(fifo)
    device = stack.install("leaving-box", scanners=[str(fifo)], uplink={"ack_timeout": 1.0})
    old_id = _started(stack, device)
    _shop(stack)
    _issue(stack, "--shop", "530102100123", "--device", old_id, "--push")
    wait_until(lambda: device.status()["shop"] == "530102100123", 60, "the box active")
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: len(stack.sales()) == 1, 20, "a first sale at central")
    old_data_key = (device.directory / "data.key").read_bytes()

    stack.stop_central()  # the last sales wait on the box
    feed(fifo, scans(["96385074", "40063812"]))
    wait_until(lambda: device.status()["events"].get("sale") == 3, 20, "three durable sales")
    revoked = stack.ops_command("revoke", "--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key),
                                "--broker", f"127.0.0.1:{stack.broker_port}", "--device", old_id,
                                "--reason", "shop closed", "--grace-minutes", "5")
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: f"revoked device={old_id}" in device.log.read_text(), 20, "the revocation applied")
    feed(fifo, scans(["6901028075848"]))  # after the revocation: refused, never a sale
    wait_until(lambda: "this box is revoked" in device.log.read_text(), 20, "the scan refused")

    stack.start_central()
    wait_until(lambda: "crypto-erased" in device.log.read_text(), 30, "the box erased")
    assert sorted(s["code"] for s in stack.sales()) == ["40063812", "6901028075831", "96385074"]
    new_id = wait_until(lambda: (d := device.identity()["device"]) != old_id and d, 20, "a new identity")
    wait_until(lambda: new_id in _waiting(stack), 20, "the new box waiting for activation")
    status = device.status()
    assert (status["shop"], status["events"].get("sale"), status["acked_seq"]) == (None, None, 0)
    # The journal now on the box is a new one, under a new data key: the old key, were it kept, opens nothing.
    assert (device.directory / "data.key").read_bytes() != old_data_key
    from storage import DataKeyError, Journal

    with pytest.raises(DataKeyError):
        Journal.open(device.directory / "journal.db", old_data_key, create=False)
    def state():
        devices = stack.central_command("devices", "--json").stdout.splitlines()
        return {row["device"]: row for row in map(json.loads, devices)}[old_id]["state"]

    # It handed in all it held and said it erases itself: the box can be collected.
    wait_until(lambda: state() == "retired", 20, "the box shown retired")


def test_a_backup_restored_onto_a_replacement_box_waits_for_its_own_code_then_delivers_the_old_boxs_backlog(
        stack, tmp_path):
    """The journal holds the old box's activation: it is no admission of this box, which central never saw.
    Taken for one, the new box sold with the good signal and central rejected every batch of it. It holds the
    old box's revocation too (operations revoked the failing box before it was replaced): that was the old
    box's, and the new one, taking it for its own, erased itself once it had delivered the backlog."""
    fifo = tmp_path / "scanner.fifo"

    os.mkfifo(fifo)
    old = stack.install("old-box", scanners=[str(fifo)])
    old_id = _started(stack, old)
    _shop(stack)
    _issue(stack, "--shop", "530102100123", "--device", old_id, "--push")
    wait_until(lambda: old.status()["shop"] == "530102100123", 60, "the old box active")
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: len(stack.sales()) == 1, 20, "the old box's sale at central")
    stack.stop_central()
    feed(fifo, scans(["6901028075831"]))  # not delivered: the old box fails with it
    wait_until(lambda: old.status()["events"].get("sale") == 2, 20, "the second sale recorded")
    revoked = stack.ops_command("revoke", "--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key),
                                "--broker", f"127.0.0.1:{stack.broker_port}", "--device", old_id,
                                "--reason", "failing, replaced", "--grace-minutes", "30")
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: f"revoked device={old_id}" in old.log.read_text(), 20, "the old box's revocation recorded")
    old.stop()
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    made = old.command("backup", str(tmp_path / "old.cbbackup"), "--passphrase-file", str(passphrase))
    assert made.returncode == 0, made.stderr
    stack.start_central()

    counter = tmp_path / "new-scanner.fifo"
    os.mkfifo(counter)
    new = stack.install("new-box", scanners=[str(counter)])
    restored = new.command("restore", str(tmp_path / "old.cbbackup"), "--passphrase-file", str(passphrase))
    assert restored.returncode == 0, restored.stderr
    new_id = _started(stack, new)  # waiting for activation as itself, seen so by central
    assert new.status()["shop"] is None
    assert "the journal holds the activation of device=" + old_id in new.log.read_text()
    _issue(stack, "--shop", "530102100123", "--device", new_id, "--push")
    wait_until(lambda: new.status()["shop"] == "530102100123", 60, "the new box active")
    wait_until(lambda: len(stack.sales()) == 2, 30, "the old box's undelivered sale, delivered by the new box")
    feed(counter, scans(["96385074"]))  # the new box sells: it is not revoked
    wait_until(lambda: len(stack.sales()) == 3, 30, "the new box's own sale at central")
    log = new.log.read_text()
    assert "revoked device=" not in log and "crypto-erased" not in log and "this box is revoked" not in log
    assert new.identity()["device"] == new_id


def _accepted_while_off(stack):
    """A box that asked while central was away and lost power; central then answered the request waiting for it
    at the broker, used the code and cleared it from the box's code topic. The box, and its id."""
    device = stack.install("remote-box", scanners=[])
    device_id = _started(stack, device)
    _shop(stack)
    stack.stop_central()
    _issue(stack, "--shop", "530102100123", "--device", device_id, "--push")
    wait_until(lambda: "activation code pushed by operations" in device.log.read_text(), 20, "the code at the box")
    time.sleep(0.5)  # its request sent, waiting for central at the broker
    device.kill()
    stack.start_central()
    wait_until(lambda: device_id in stack.central_command("devices", "--json").stdout, 20, "central to accept it")
    return device, device_id


def test_a_box_off_when_central_accepts_its_pushed_code_is_active_when_it_starts_again(stack, tmp_path):
    """The box asked while central was away, and lost power; central answered the request waiting for it at the
    broker, used the code and cleared it from the box's code topic. Without the acceptance kept for it, the
    box waited for ever, and central refused every new code for it (already active)."""
    device, device_id = _accepted_while_off(stack)
    assert _retained_result(stack, device_id)  # kept for the box while it is off
    device.start()
    wait_until(lambda: device.status()["shop"] == "530102100123", 30, "the box active")
    assert "activation answered by central after the box stopped waiting for it; taken" in device.log.read_text()
    # Heard from as active, the box has it: it goes from the broker, where any box waiting for activation may
    # read it (it names the shop).
    wait_until(lambda: _retained_result(stack, device_id) is None, 20, "the acceptance cleared")


def test_a_box_whose_acceptance_the_broker_lost_is_answered_again_when_it_says_it_waits(stack, tmp_path):
    """As above, and then the broker lost power before it saved its retained messages: the acceptance was gone,
    the box waited for ever, and central refused any new code for it (already active)."""
    device, device_id = _accepted_while_off(stack)
    wait_until(lambda: _retained_result(stack, device_id) is not None, 20, "the acceptance retained")
    stack.broker.kill()  # before its autosave (30 s as shipped): its retained messages are gone
    stack.broker.wait()
    for saved in (stack.directory / "broker").iterdir():
        saved.unlink()
    stack.start_broker()
    device.start()
    wait_until(lambda: device.status()["shop"] == "530102100123", 40, "the box active, answered again")
    assert f"device {device_id} waits for activation though central holds it active" in stack.central_log.read_text()
    wait_until(lambda: _retained_result(stack, device_id) is None, 20, "the acceptance cleared once it is heard from")


def _retained_result(stack, device_id: str) -> bytes | None:
    """What the broker holds retained on the box's activation result topic (None: nothing)."""
    import asyncio

    from agent.mqtt import MqttLink

    async def read() -> bytes | None:
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="a-curious-client",
                            subscriptions=[activation.topic("counterbox/v1", device_id, "result")]) as link:
            try:
                async with asyncio.timeout(1):
                    async for message in link.messages():
                        return message.payload
            except TimeoutError:
                return None

    return asyncio.run(read())


def test_an_activation_recorded_before_events_named_their_device_is_the_boxs_own_unless_another_box_recorded_it(
        tmp_path):
    """A backup made before activation events named their device, restored onto a replacement box."""
    from agent.activation import current
    from storage import Journal

    legacy = {"shop": "530102100123", "name": "Mengzi No. 3", "region": "honghe", "monitoring": False,
              "code": "0fwupRcgORloVAz6", "kid": "ops-1", "activated_at": "2026-11-01T09:00:00Z"}
    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    try:
        journal.take_identity("cb-old")
        journal.append("activation", legacy)
        assert current(journal, "cb-old") == legacy  # the box that recorded it, started again
        journal.take_identity("cb-new")  # the backup restored onto another box
        assert current(journal, "cb-new") is None
        journal.append("activation", {**legacy, "device": "cb-new", "code": "1ZmQ"})
        assert current(journal, "cb-new")["code"] == "1ZmQ"
    finally:
        journal.close()


def test_a_code_id_never_begins_with_a_dash_which_an_operator_types_after_code():
    """One in 64 did: `counterbox-ops activation withdraw --code -arhtn6UZItxTPvR` was read as an option."""
    from provisioning import activation as activation_module

    ids = [activation_module.new_code_id() for _ in range(2000)]
    assert all(not code_id.startswith("-") and len(code_id) == 16 for code_id in ids)
    assert len(set(ids)) == len(ids)


def _publish_qos0(port: int, topic: str, payload: bytes, *, retain: bool) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anyone", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=0, retain=retain).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _central_kicked(stack) -> int:
    return (stack.directory / "mosquitto.log").read_text().count("counterbox-central disconnected due to protocol error")


@pytest.mark.foreign_messages
@pytest.mark.parametrize("retain", [False, True], ids=["live", "retained"])
def test_a_message_at_qos_0_on_a_topic_central_reads_is_never_acknowledged_and_never_costs_central_its_link(
        stack, retain):
    """Anyone may say hello: central once answered a QoS 0 message with a PUBACK (of packet id 0), which the
    broker takes for a protocol error and ends central's connection; a hello kept retained at QoS 0 came again
    at each subscription, and central never stayed on the broker. It is handled, and nothing is answered."""
    box = Ed25519PrivateKey.generate()
    device = device_id_for(box.public_key())
    hello = activation.encode_hello(device, box, agent_version="1.0", sent_at=time.time())
    _publish_qos0(stack.broker_port, activation.topic("counterbox/v1", device, "hello"), hello, retain=retain)
    _publish_qos0(stack.broker_port, "counterbox/v1/activation/cb-x/hello", b"not a token", retain=False)
    wait_until(lambda: device in _waiting(stack), 20, "central to see the box waiting")
    time.sleep(1.0)  # (a broker's protocol error is logged at once)
    assert _central_kicked(stack) == 0
