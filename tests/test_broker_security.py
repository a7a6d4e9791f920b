"""The production broker (central/mosquitto-production.conf): TLS, and each party reaches only its own topics.

A real Mosquitto with the shipped production configuration, a throwaway CA, and the access control
central keeps (central/broker.py). Denials are checked at QoS 1, where the broker answers them."""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from paho.mqtt.client import MQTTv5

from demo.stack import Stack
from provisioning.identity import broker_password, load_key, public_key_text

from .harness import feed, scans, wait_until

@pytest.fixture
def production(tmp_path):
    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        stack.start_central()
        yield stack


class Client:
    """A plain paho client over TLS, to try what the broker allows."""

    def __init__(self, stack, client_id: str, username: str | None = None, password: str | None = None):
        self.acks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.received: list[str] = []
        self.payloads: list[tuple[str, bytes]] = []
        self.connect_reason: int | None = None
        self.disconnected_at: float | None = None
        self.done = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.tls_set_context(ssl.create_default_context(cafile=str(stack.tls / "ca.crt")))
        self.client.on_connect = self._connected
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append(rcs[0].value)
        self.client.on_message = lambda c, u, m: (self.received.append(m.topic),
                                                  self.payloads.append((m.topic, m.payload)))
        self.client.on_disconnect = lambda c, u, f, rc, p: setattr(self, "disconnected_at", time.monotonic())
        self.client.connect("127.0.0.1", stack.broker_port)
        self.client.loop_start()
        assert self.done.wait(10)

    def _connected(self, client, userdata, flags, reason, properties):
        self.connect_reason = reason.value
        self.done.set()

    def publish(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        wait_until(lambda: info.mid in self.acks, 5, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        count = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.subacks) > count, 5, f"SUBACK for {topic}")
        return self.subacks[-1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


NOT_AUTHORIZED = 135


def _activated(stack, tmp_path, name: str, licence: str, region: str = "honghe") -> tuple:
    fifo = tmp_path / f"{name}.fifo"
    os.mkfifo(fifo)
    device = stack.install(name, scanners=[str(fifo)])
    device.start()
    wait_until(lambda: (device.directory / "device.key").exists(), 20, "the key")
    device_id = device.identity()["device"]
    shop = stack.ops_command("shop", "add", "--central-db", str(stack.central_db), "--licence", licence,
                             "--name", name, "--region", region, "--new-region")
    assert shop.returncode == 0, shop.stderr
    issued = stack.ops_command("activation", "issue", "--central-db", str(stack.central_db), "--ops-key",
                               str(stack.ops_key), "--broker", f"127.0.0.1:{stack.broker_port}",
                               *stack.broker_args("ops"), "--shop", licence, "--device", device_id, "--push")
    assert issued.returncode == 0, issued.stderr
    wait_until(lambda: device.status()["shop"] == licence, 60, f"{name} activated over TLS")
    return device, fifo, device_id


def test_over_tls_a_box_is_activated_and_its_sales_delivered_and_each_box_reaches_only_its_own_topics(production,
                                                                                                   tmp_path):
    a, fifo, a_id = _activated(production, tmp_path, "boxa", "530102100001")
    b, _, b_id = _activated(production, tmp_path, "boxb", "530102100002", region="kunming")
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: len(production.sales()) == 1, 30, "the sale at central")

    # Box A's own credentials, on a connection of its own (the agent keeps its own connection).
    as_a = Client(production, "a-probe", a_id, broker_password(load_key(a.directory / "device.key")))
    try:
        assert as_a.connect_reason == 0
        assert as_a.publish(f"counterbox/v1/devices/{a_id}/status") < 128
        assert as_a.publish(f"counterbox/v1/devices/{b_id}/batch") == NOT_AUTHORIZED  # never as B
        assert as_a.publish(f"counterbox/v1/devices/{b_id}/status") == NOT_AUTHORIZED
        assert as_a.publish(f"counterbox/v1/devices/{a_id}/ack") == NOT_AUTHORIZED  # never as central
        assert as_a.publish("counterbox/v1/regions/honghe/docs/price_list") == NOT_AUTHORIZED  # never as operations
        assert as_a.subscribe(f"counterbox/v1/devices/{b_id}/ack") == NOT_AUTHORIZED  # nor read B's downlink
        assert as_a.subscribe(f"counterbox/v1/devices/{b_id}/docs/#") == NOT_AUTHORIZED
        assert as_a.subscribe("counterbox/v1/regions/kunming/docs/#") == NOT_AUTHORIZED
        assert as_a.subscribe("counterbox/v1/devices/+/batch") == NOT_AUTHORIZED
        assert as_a.subscribe(f"counterbox/v1/devices/{a_id}/ack") == 1
    finally:
        as_a.close()

    wrong = Client(production, "a-wrong", a_id, "not-the-password")
    assert wrong.connect_reason == NOT_AUTHORIZED or wrong.connect_reason == 134  # bad user name or password
    wrong.close()


def test_a_consumer_reads_every_boxs_batches_and_verifies_them_with_the_keys_central_lists_and_sends_nothing(
        production, tmp_path):
    """Central's consumers read batches at the broker (docs/protocol.md, Reading batches as a consumer)
    and verify them with a standard JOSE library and the JWK Set ``counterbox-central keys`` prints."""
    consumer = Client(production, "market-info", "counterbox-consumer",
                      (production.tls / "consumer.password").read_text().strip())
    try:
        assert consumer.connect_reason == 0
        assert consumer.subscribe("counterbox/v1/devices/+/batch") == 1
        assert consumer.subscribe("counterbox/v1/devices/+/ack") == 1
        assert consumer.subscribe("$share/market/counterbox/v1/devices/+/status") == 1
        a, fifo, a_id = _activated(production, tmp_path, "boxa", "530102100001")
        feed(fifo, scans(["6901028075831"]))
        wait_until(lambda: any(t.endswith("/batch") and b'"sale"' in jws_payload(p) for t, p in consumer.payloads),
                   30, "the sale's batch at the consumer")

        listed = production.central_command("keys")
        assert listed.returncode == 0, listed.stderr
        keys = KeySet.import_key_set(json.loads(listed.stdout))
        batches = [p for t, p in consumer.payloads if t == f"counterbox/v1/devices/{a_id}/batch"]
        sales = []
        for token in batches:
            verified = jws.deserialize_compact(token, keys, algorithms=["Ed25519"])
            assert verified.headers()["kid"] == a_id
            sales += [e for e in json.loads(verified.payload)["events"] if e["kind"] == "sale"]
        assert [sale["body"]["code"] for sale in sales] == ["6901028075831"]
        wait_until(lambda: any(t == f"counterbox/v1/devices/{a_id}/ack" for t, _ in consumer.payloads), 10, "an ack")
        acks = [p for t, p in consumer.payloads if t == f"counterbox/v1/devices/{a_id}/ack"]
        assert json.loads(jws.deserialize_compact(acks[-1], keys, algorithms=["Ed25519"]).payload)["device"] == a_id
        # A key that is not the box's: its batch does not verify.
        other = json.loads(listed.stdout)
        other["keys"] = [{**k, "x": production.central_public_key()} if k["kid"] == a_id else k for k in other["keys"]]
        with pytest.raises(BadSignatureError):
            jws.deserialize_compact(batches[0], KeySet.import_key_set(other), algorithms=["Ed25519"])

        # Read-only: it cannot act as a box, as central or as operations, nor read what boxes are sent.
        assert consumer.publish(f"counterbox/v1/devices/{a_id}/batch") == NOT_AUTHORIZED
        assert consumer.publish(f"counterbox/v1/devices/{a_id}/ack") == NOT_AUTHORIZED
        assert consumer.publish("counterbox/v1/regions/honghe/docs/price_list") == NOT_AUTHORIZED
        assert consumer.publish(f"counterbox/v1/activation/{a_id}/code") == NOT_AUTHORIZED
        assert consumer.subscribe(f"counterbox/v1/devices/{a_id}/docs/#") == NOT_AUTHORIZED
        assert consumer.subscribe("counterbox/v1/activation/+/request") == NOT_AUTHORIZED
        assert consumer.subscribe("$CONTROL/dynamic-security/v1/response") == NOT_AUTHORIZED
    finally:
        consumer.close()


def test_operations_add_a_consumer_to_the_running_broker_and_remove_it_and_touch_no_other_client(tmp_path):
    """`counterbox-ops consumer add` and `remove`, in this process: a consumer made after the broker's
    first start reads what consumers read and nothing more; removed, it is disconnected at once. The
    clients of boxes, central and operations are not this command's to make or remove."""
    import asyncio

    from central import broker
    from central.ops import main as ops_main
    from provisioning.protocol import DEFAULT_PREFIX as PREFIX

    from .harness import run_main

    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        port, tls = stack.broker_port, stack.tls

        def ops(*args):
            return run_main(ops_main, ["consumer", *args, "--broker", f"127.0.0.1:{port}", *stack.broker_args("ops")])

        async def as_central(commands):
            async with broker.BrokerAdmin(broker.BrokerAdmin.link(
                    host="127.0.0.1", port=port, username=broker.CENTRAL_USER,
                    password=(tls / "central.password").read_text().strip(), ca_file=tls / "ca.crt",
                    client_id="central-admin-test")) as admin:
                await admin.execute(commands)

        # A broker whose file predates the consumer role: adding a consumer makes the role too.
        asyncio.run(as_central([{"command": "deleteRole", "rolename": "consumer"}]))
        secret = tmp_path / "market.password"
        added = ops("add", "market-info", "--secret-file", str(secret))
        assert (added.returncode, added.stderr) == (0, "")
        assert json.loads(added.stdout) == {"consumer": "market-info", "secret_file": str(secret)}
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 12
        market = Client(stack, "market-1", "market-info", secret.read_text().strip())
        assert market.connect_reason == 0
        assert market.subscribe("counterbox/v1/devices/+/batch") == 1
        assert market.subscribe("$share/market/counterbox/v1/devices/+/status") == 1
        assert market.subscribe("counterbox/v1/devices/+/docs/#") == NOT_AUTHORIZED
        assert market.publish("counterbox/v1/devices/cb-x/batch") == NOT_AUTHORIZED

        again = ops("add", "market-info", "--secret-file", str(secret))
        assert again.returncode == 2 and again.stderr == (
            "counterbox-ops: error: the broker has a client market-info already: remove it first "
            "(counterbox-ops consumer remove), or choose another name\n")
        refused = ops("add", "market-info", "--secret-file", str(tmp_path / "other.password"))
        assert refused.returncode == 2 and "has a client market-info already" in refused.stderr
        assert not (tmp_path / "other.password").exists()  # made for the refused client, and gone with it
        for name in ("counterbox-central", "counterbox-ops", "cb-1a2b3c4d5e6f7a8b"):
            refused = ops("add", name, "--secret-file", str(tmp_path / "x.password"))
            assert refused.returncode == 2 and "is the broker's name for central, operations or a box" in refused.stderr
            refused = ops("remove", name)
            assert refused.returncode == 2 and "is the broker's name for central, operations or a box" in refused.stderr
        assert not (tmp_path / "x.password").exists()

        # A box admitted by central under a name that is not cb-...: not a consumer, so left alone.
        asyncio.run(as_central(broker.admit_commands(PREFIX, "shop-a", "honghe", "password-of-a")))
        kept = ops("remove", "shop-a")
        assert kept.returncode == 2 and kept.stderr == ("counterbox-ops: error: the broker's client shop-a is not a "
                                                        "consumer (its roles: device-shop-a); it is left as it is\n")
        as_a = Client(stack, "a-probe", "shop-a", "password-of-a")
        assert as_a.connect_reason == 0
        as_a.close()

        # A box registered by hand under the consumer's name, revoked at once: the consumer's client is
        # not the box's, and stays.
        from central.store import CentralStore
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        db, ops_key = tmp_path / "central.db", tmp_path / "ops.key"
        assert run_main(ops_main, ["keygen", "--ops-key", str(ops_key)]).returncode == 0
        store = CentralStore(db)
        store.register("market-info", public_key_text(Ed25519PrivateKey.generate()), shop="530100000001",
                       region="honghe")
        store.close()
        revoked = run_main(ops_main, ["revoke", "--central-db", str(db), "--ops-key", str(ops_key), "--broker",
                                      f"127.0.0.1:{port}", *stack.broker_args("ops"), "--device", "market-info", "--now"])
        assert revoked.returncode == 2 and revoked.stderr == (
            "counterbox-ops: error: device market-info is revoked and its revocation pushed, but it is NOT cut off at "
            "the broker: the broker's client market-info is not that box's (its roles: consumer); it is left as it "
            "is\n")  # no word of a development broker: this one answered
        assert market.subscribe("counterbox/v1/devices/+/ack") == 1 and market.disconnected_at is None

        removed = ops("remove", "market-info")
        returned = time.monotonic()
        assert (removed.returncode, json.loads(removed.stdout)) == (0, {"removed": "market-info"})
        wait_until(lambda: market.disconnected_at is not None, 5, "the consumer disconnected")
        assert market.disconnected_at < returned + 1.0
        market.close()
        gone = Client(stack, "market-2", "market-info", secret.read_text().strip())
        assert gone.connect_reason in (NOT_AUTHORIZED, 134)
        gone.close()
        missing = ops("remove", "market-info")
        assert missing.returncode == 2 and missing.stderr == "counterbox-ops: error: the broker has no client market-info\n"


def jws_payload(token: bytes) -> bytes:
    return base64.urlsafe_b64decode(token.split(b".")[1] + b"==")


def test_a_box_not_activated_reaches_only_the_activation_topics(production):
    anonymous = Client(production, "cb-nobody")
    try:
        assert anonymous.publish("counterbox/v1/activation/cb-nobody/hello") < 128
        assert anonymous.publish("counterbox/v1/devices/cb-nobody/batch") == NOT_AUTHORIZED
        assert anonymous.publish("counterbox/v1/devices/cb-nobody/status") == NOT_AUTHORIZED
        # Requests carry boxes' broker passwords: only central reads them.
        assert anonymous.subscribe("counterbox/v1/activation/+/request") == NOT_AUTHORIZED
        assert anonymous.subscribe("counterbox/v1/devices/+/batch") == NOT_AUTHORIZED
        assert anonymous.subscribe("counterbox/v1/activation/cb-nobody/result") == 1
    finally:
        anonymous.close()


def test_a_hello_central_refuses_is_not_kept_at_the_broker_for_anyone_to_fill_it_with(production):
    """Anyone may say hello, retained: one padded past the activation limit, or junk, is refused without being
    read, and cleared, so the broker keeps none of it in memory or on disk, nor hands it to central at each start."""
    anonymous = Client(production, "cb-junk")
    topics = {"counterbox/v1/activation/cb-junk/hello": b"x" * 200_000, "counterbox/v1/activation/cb-junk2/request": b"{}"}
    try:
        for topic, junk in topics.items():
            info = anonymous.client.publish(topic, junk, qos=1, retain=True)
            wait_until(lambda: info.mid in anonymous.acks, 5, f"PUBACK for {topic}")
            assert anonymous.acks[info.mid] < 128
    finally:
        anonymous.close()
    for topic in topics:
        wait_until(lambda: f"rejected topic={topic}" in production.central_log.read_text(), 20, f"{topic} refused")
    assert "over the limit of 4096" in production.central_log.read_text()
    password = (production.tls / "central.password").read_text().strip()
    probe = Client(production, "probe", username="counterbox-central", password=password)
    try:
        for topic in topics:
            assert probe.subscribe(topic) < 128
        time.sleep(1.0)  # a retained message comes at once on subscribing
        assert [(topic, payload) for topic, payload in probe.payloads if payload] == []
    finally:
        probe.close()


def test_a_box_revoked_at_once_is_cut_off_within_a_second(production, tmp_path):
    a, _, a_id = _activated(production, tmp_path, "boxc", "530102100003")
    password = broker_password(load_key(a.directory / "device.key"))
    as_a = Client(production, "c-probe", a_id, password)
    assert as_a.connect_reason == 0
    revoked = production.ops_command("revoke", "--central-db", str(production.central_db), "--ops-key",
                                     str(production.ops_key), "--broker", f"127.0.0.1:{production.broker_port}",
                                     *production.broker_args("ops"), "--device", a_id, "--now")
    assert revoked.returncode == 0, revoked.stderr
    returned = time.monotonic()
    wait_until(lambda: as_a.disconnected_at is not None, 5, "the box disconnected")
    # The command returns once the broker has confirmed; the box was disconnected by then, or within a second.
    assert as_a.disconnected_at < returned + 1.0
    as_a.close()
    again = Client(production, "c-again", a_id, password)
    assert again.connect_reason in (NOT_AUTHORIZED, 134)  # refused from then on
    again.close()


def test_a_revoked_box_keeps_its_access_until_it_has_handed_in_its_sales_and_loses_it_then(production, tmp_path):
    a, fifo, a_id = _activated(production, tmp_path, "boxd", "530102100004")
    password = broker_password(load_key(a.directory / "device.key"))
    feed(fifo, scans(["6901028075831", "96385074"]))
    revoked = production.ops_command("revoke", "--central-db", str(production.central_db), "--ops-key",
                                     str(production.ops_key), "--broker", f"127.0.0.1:{production.broker_port}",
                                     *production.broker_args("ops"), "--device", a_id)
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: "crypto-erased" in a.log.read_text(), 30, "the box erased")
    assert len(production.sales()) == 2  # handed in before its access went
    wait_until(lambda: f"device {a_id} revoked: removed from the broker" in production.central_log.read_text(), 20,
               "central removing it from the broker")
    again = Client(production, "d-again", a_id, password)
    assert again.connect_reason in (NOT_AUTHORIZED, 134)
    again.close()


def test_a_revoked_box_that_lost_power_before_it_took_centrals_acknowledgement_erases_on_its_return(
        production, tmp_path):
    """Central held its revocation and everything before it, and heard its will: cut off then, the box came back
    unable to read the acknowledgement, waited out its grace and logged events central held as NOT delivered."""
    a, _, a_id = _activated(production, tmp_path, "boxk", "530102100077")
    wait_until(lambda: a.status()["acked_seq"] == a.status()["last_seq"], 20, "the activation delivered")
    production.stop_central()  # the revocation's batch waits for central at the broker
    revoked = production.ops_command("revoke", "--central-db", str(production.central_db), "--ops-key",
                                     str(production.ops_key), "--broker", f"127.0.0.1:{production.broker_port}",
                                     *production.broker_args("ops"), "--device", a_id, "--grace-minutes", "10")
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: f"revoked device={a_id}" in a.log.read_text(), 20, "the revocation recorded")
    last = a.status()["last_seq"]
    time.sleep(1.5)  # its batch published (the first after a quiet spell goes at once): it waits for central
    a.kill()  # the power cut: the broker publishes its will
    production.start_central()

    def held() -> int:
        rows = map(json.loads, production.central_command("devices", "--json").stdout.splitlines())
        return next(row["acked_seq"] for row in rows if row["device"] == a_id)
    wait_until(lambda: held() == last, 30, "central holding every event")
    time.sleep(1.0)  # the will is in
    assert f"device {a_id} revoked: removed from the broker" not in production.central_log.read_text()
    a.start()
    wait_until(lambda: "crypto-erased" in a.log.read_text(), 60, "the box erased, well within its grace")
    assert "NOT delivered" not in a.log.read_text()
    wait_until(lambda: f"device {a_id} revoked: removed from the broker" in production.central_log.read_text(), 20,
               "central removing it from the broker once the box said it holds the acknowledgement")


def test_a_revocation_the_broker_lost_to_a_power_cut_is_published_again_by_central_and_reaches_its_box(
        production, tmp_path):
    """Mosquitto writes its retained messages to disk every 30 s and at a clean stop: killed just after a push,
    it came back without the revocation, and the box, off meanwhile, came back selling for ever."""
    a, fifo, a_id = _activated(production, tmp_path, "boxe", "530102100005")
    feed(fifo, scans(["6901028075831"]))
    wait_until(lambda: len(production.sales()) == 1, 30, "the sale at central")
    a.stop()
    revoked = production.ops_command("revoke", "--central-db", str(production.central_db), "--ops-key",
                                     str(production.ops_key), "--broker", f"127.0.0.1:{production.broker_port}",
                                     *production.broker_args("ops"), "--device", a_id)
    assert revoked.returncode == 0, revoked.stderr
    production.broker.kill()  # central's machine loses power before the broker saved the revocation
    production.broker.wait()
    for saved in (production.directory / "broker").iterdir():
        saved.unlink()
    production.start_broker()
    topic = f"counterbox/v1/devices/{a_id}/docs/revocation"
    wait_until(lambda: f"published again on {topic}: the broker had lost it" in production.central_log.read_text(), 30,
               "central publishing the revocation again")
    a.start()
    wait_until(lambda: "crypto-erased" in a.log.read_text(), 30, "the box revoked and erased")
    assert production.central_log.read_text().count("published again") == 1  # what the broker held is left as it is
    assert "documents at the broker not checked" not in production.central_log.read_text()


def test_central_brings_its_role_up_to_date_on_a_broker_an_earlier_central_set_up(tmp_path):
    """`broker init` writes the access control once, and refuses to again: a broker set up before central
    read and published the documents' topics would have left it unable to, at every look, for ever."""
    from central.broker import central_acls
    from provisioning.protocol import DEFAULT_PREFIX

    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        stack.stop_broker()
        plugin = stack.tls / "dynamic-security.json"
        config = json.loads(plugin.read_text())
        [central] = [role for role in config["roles"] if role["rolename"] == "central"]
        central["acls"] = [acl for acl in central["acls"] if "/docs/" not in acl["topic"]]  # as an earlier init made it
        plugin.write_text(json.dumps(config))
        stack.start_broker()
        for _ in range(2):  # and again, once it holds them all
            stack.start_central()
            wait_until(lambda: "central ingest for" in stack.central_log.read_text(), 20, "central up")
            stack.stop_central()
        assert "not brought up to date" not in stack.central_log.read_text()
        stack.stop_broker()  # the plugin's file as it saved it
        [central] = [role for role in json.loads(plugin.read_text())["roles"] if role["rolename"] == "central"]
        assert {(acl["acltype"], acl["topic"]) for acl in central["acls"]} == {
            (acl["acltype"], acl["topic"]) for acl in central_acls(DEFAULT_PREFIX)}


def test_central_admits_a_box_to_its_own_topics_and_cuts_it_off_through_the_plugin_in_this_process(tmp_path,
                                                                                                   monkeypatch):
    """``BrokerAdmin`` in this process against the production broker: a box admitted (twice, as when it
    asks again) reaches its own topics and its region's documents and nothing else; a command the plugin
    refuses is named; a box cut off is disconnected at once and refused after; a broker that is gone is
    said to be so within the answer timeout."""
    import asyncio

    from central import broker
    from central.errors import CentralError
    from provisioning.protocol import DEFAULT_PREFIX as PREFIX

    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        port, tls = stack.broker_port, stack.tls

        def link():
            return broker.BrokerAdmin.link(host="127.0.0.1", port=port, username=broker.CENTRAL_USER,
                                           password=(tls / "central.password").read_text().strip(),
                                           ca_file=tls / "ca.crt", client_id="central-admin-test")

        def probe(as_a: Client) -> dict:
            own = f"{PREFIX}/devices/shop-a"
            return {"own batch": as_a.publish(f"{own}/batch"), "own status": as_a.publish(f"{own}/status"),
                    "b's batch": as_a.publish(f"{PREFIX}/devices/shop-b/batch"), "own ack": as_a.publish(f"{own}/ack"),
                    "own documents": as_a.subscribe(f"{own}/docs/#"),
                    "region's documents": as_a.subscribe(f"{PREFIX}/regions/honghe/docs/#"),
                    "other region's documents": as_a.subscribe(f"{PREFIX}/regions/kunming/docs/#"),
                    "b's acks": as_a.subscribe(f"{PREFIX}/devices/shop-b/ack")}

        async def admit_then_cut_off() -> tuple[dict, str]:
            async with broker.BrokerAdmin(link()) as admin:
                for _ in range(2):
                    await admin.execute(broker.admit_commands(PREFIX, "shop-a", "honghe", "password-of-a"))
                await admin.execute(broker.admit_commands(PREFIX, "shop-b", "kunming", "password-of-b"))
                as_a = await asyncio.to_thread(Client, stack, "a-probe", "shop-a", "password-of-a")
                reached = await asyncio.to_thread(probe, as_a)
                with pytest.raises(CentralError, match="the broker refused createRole: Role already exists"):
                    await admin.execute([{"command": "createRole", "rolename": "device-shop-b", "acls": []}])
                await admin.execute(broker.cut_off_commands("shop-a"))
                cut_off = time.monotonic()
                await asyncio.to_thread(wait_until, lambda: as_a.disconnected_at is not None, 5, "shop-a cut off")
                reached["cut off within"] = as_a.disconnected_at - cut_off
                await asyncio.to_thread(as_a.close)  # paho's loop_stop joins its thread: not on the loop
                again = await asyncio.to_thread(Client, stack, "a-again", "shop-a", "password-of-a")
                reached["again"] = again.connect_reason
                await asyncio.to_thread(again.close)
                monkeypatch.setattr(broker, "ANSWER_TIMEOUT", 0.5)
                await asyncio.to_thread(stack.stop_broker)
                with pytest.raises(CentralError) as gone:
                    await admin.execute(broker.cut_off_commands("shop-b"))
                return reached, str(gone.value)

        reached, gone = asyncio.run(admit_then_cut_off())
    # Allowed: PUBACK 0 or 16 (no subscribers yet), SUBACK 1 (granted at QoS 1).
    assert reached["own batch"] in (0, 16) and reached["own status"] in (0, 16)
    assert (reached["own documents"], reached["region's documents"]) == (1, 1)
    assert {what: reached[what] for what in ("b's batch", "own ack", "other region's documents", "b's acks")} == {
        "b's batch": NOT_AUTHORIZED, "own ack": NOT_AUTHORIZED, "other region's documents": NOT_AUTHORIZED,
        "b's acks": NOT_AUTHORIZED}
    assert reached["cut off within"] < 1.0 and reached["again"] in (NOT_AUTHORIZED, 134)
    assert gone in ("the broker's access control is unreachable for 0 s",
                    "the broker's access control did not answer: timed out") or gone.startswith(
        "the broker's access control did not answer: not connected"), gone


def test_operations_revoking_a_box_now_in_this_process_disconnects_it_at_the_broker_and_refuses_it_after(tmp_path):
    """`counterbox-ops revoke --now`, in this process, as operations' own client over TLS: the revocation is
    signed and kept, and the box is disconnected at once and refused from then on."""
    import asyncio

    from central import broker
    from central.ops import main as ops_main
    from central.store import CentralStore
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from provisioning.identity import public_key_text
    from provisioning.protocol import DEFAULT_PREFIX as PREFIX

    from .harness import run_main

    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert run_main(ops_main, ["keygen", "--ops-key", str(key)]).returncode == 0
    store = CentralStore(db)
    store.register("shop-a", public_key_text(Ed25519PrivateKey.generate()), shop="530100000001", region="honghe")
    store.close()
    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        port, tls = stack.broker_port, stack.tls

        async def admit() -> None:
            async with broker.BrokerAdmin(broker.BrokerAdmin.link(
                    host="127.0.0.1", port=port, username=broker.CENTRAL_USER,
                    password=(tls / "central.password").read_text().strip(), ca_file=tls / "ca.crt",
                    client_id="central-admin-test")) as admin:
                await admin.execute(broker.admit_commands(PREFIX, "shop-a", "honghe", "password-of-a"))

        asyncio.run(admit())
        as_a = Client(stack, "a-probe", "shop-a", "password-of-a")
        assert as_a.connect_reason == 0
        result = run_main(ops_main, ["revoke", "--central-db", str(db), "--ops-key", str(key),
                                     "--broker", f"127.0.0.1:{port}", *stack.broker_args("ops"),
                                     "--device", "shop-a", "--reason", "stolen", "--now"])
        returned = time.monotonic()
        assert result.returncode == 0, result.stderr
        wait_until(lambda: as_a.disconnected_at is not None, 5, "the box disconnected")
        assert as_a.disconnected_at < returned + 1.0
        as_a.close()
        again = Client(stack, "a-again", "shop-a", "password-of-a")
        assert again.connect_reason in (NOT_AUTHORIZED, 134)
        again.close()
        # Revoked again: signed and pushed as a new version, and said (it was done without a word).
        twice = run_main(ops_main, ["revoke", "--central-db", str(db), "--ops-key", str(key),
                                    "--broker", f"127.0.0.1:{port}", *stack.broker_args("ops"),
                                    "--device", "shop-a", "--reason", "stolen"])
        assert twice.returncode == 0 and twice.stderr.startswith("counterbox-ops: note: device shop-a was revoked on "), \
            twice.stderr
        assert "its revocation is signed and pushed again, as a new version" in twice.stderr
    store = CentralStore(db)
    try:
        assert store.device("shop-a").revoked_at is not None
        assert store.conn.execute("SELECT name, version, published_at IS NOT NULL FROM documents "
                                  "ORDER BY version").fetchall() == [("revocation", 1, True), ("revocation", 2, True)]
    finally:
        store.close()


@pytest.mark.parametrize("command", [
    ["activation", "issue", "--shop", "530100000001", "--device", "shop-7", "--push"],
    ["prices", "push", "--region", "honghe", "{csv}"],
    ["revoke", "--device", "shop-7"],
])
def test_a_broker_password_file_that_cannot_be_read_stops_a_push_before_anything_is_signed(tmp_path, command):
    """As a broker address given wrongly: what is signed is kept before it is published, so the way into the
    broker is checked first. Not a code issued that was never pushed, nor a box marked revoked for nothing."""
    from central.ops import main as ops_main
    from central.store import CentralStore, Shop
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from provisioning.identity import public_key_text

    from .harness import run_main

    db, key, csv = tmp_path / "central.db", tmp_path / "ops.key", tmp_path / "prices.csv"
    csv.write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    assert run_main(ops_main, ["keygen", "--ops-key", str(key)]).returncode == 0
    store = CentralStore(db)
    store.add_shop(Shop("530100000001", "Mengzi No. 3", "honghe"))
    store.register("shop-7", public_key_text(Ed25519PrivateKey.generate()), shop="530100000001", region="honghe")
    store.close()
    result = run_main(ops_main, [*(arg.format(csv=csv) for arg in command), "--central-db", str(db), "--ops-key",
                                 str(key), "--username", "counterbox-ops", "--password-file",
                                 str(tmp_path / "missing.password")])
    assert result.returncode == 2
    assert result.stderr == (f"counterbox-ops: error: cannot read the broker password {tmp_path / 'missing.password'}: "
                             "No such file or directory\n")
    store = CentralStore(db)
    try:
        assert store.conn.execute("SELECT count(*) FROM activation_codes").fetchone() == (0,)
        assert store.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
        assert store.device("shop-7").revoked_at is None
    finally:
        store.close()


def test_central_keeping_the_broker_admits_a_box_it_activates_and_cuts_off_a_revoked_one_once_it_is_done(tmp_path):
    """``Ingest.serve`` with ``broker_admin``, in this process, against the production broker: a waiting box that
    asks with a good code is answered and admitted as its own client; another box asking with the same code is
    refused and not admitted; the first, revoked, hands in its revocation, says it erases itself, and is refused from
    then on."""
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.mqtt import MqttLink
    from central import broker
    from central.ingest import Ingest
    from central.store import CentralStore, Shop
    from provisioning import activation, protocol
    from provisioning.activation import ActivationCode
    from provisioning.identity import device_id_for
    from provisioning.protocol import DEFAULT_PREFIX as PREFIX
    from storage import Event

    store = CentralStore(tmp_path / "central.db")
    central_key, ops_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first_id, second_id = device_id_for(first), device_id_for(second)
    now = time.time()
    store.add_shop(Shop("530100000009", "Jianshui No. 2", "honghe"))
    code = activation.encode_code(ActivationCode(activation.new_code_id(), "530100000009", "honghe", False, now,
                                                 now + 3600, None), key=ops_key, kid="ops-1")
    store.add_code(activation.code_id_of(code), shop="530100000009", token=code, device=None, issued_at=now,
                   expires_at=now + 3600)
    ingest = Ingest(store=store, signing_key=central_key)

    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()
        port, tls = stack.broker_port, stack.tls

        async def ask(key, device_id) -> dict:
            """A waiting box, anonymous over TLS, asking until it is answered (as a box does)."""
            async with MqttLink(host="127.0.0.1", port=port, client_id=device_id, ca_file=tls / "ca.crt",
                                subscriptions=[activation.topic(PREFIX, device_id, "result")]) as link:
                await link.connected.wait()
                while True:
                    await link.publish(activation.topic(PREFIX, device_id, "request"),
                                       activation.encode_request(device_id, key, code, sent_at=time.time()))
                    try:
                        async with asyncio.timeout(0.5):
                            answer = await anext(link.messages())
                    except TimeoutError:
                        continue
                    return activation.decode_result(answer.payload, device=device_id, key=central_key.public_key())

        async def hand_in_and_say_done() -> None:
            async with MqttLink(host="127.0.0.1", port=port, client_id=f"{first_id}-box", username=first_id,
                                password=broker_password(first), ca_file=tls / "ca.crt") as link:
                await link.connected.wait()
                revoked = {"name": "revocation", "issued_at": protocol.rfc3339(time.time())}
                batch = protocol.encode_batch([Event(1, "revocation", revoked)], device=first_id,
                                              session=1, key=first, sent_at=time.time())
                await link.publish(protocol.batch_topic(PREFIX, first_id), batch)
                await asyncio.to_thread(wait_until, lambda: store.revocation_delivered(first_id), 10,
                                        "the revocation handed in")
                status = protocol.encode_status({"state": "online", "session": 1, "connection": 1, "last_seq": 1,
                                                 "acked_seq": 1, "backlog": 0, "erasing": True,
                                                 "sent_at": time.time()}, device=first_id, key=first)
                await link.publish(protocol.status_topic(PREFIX, first_id), status)

        async def main() -> dict:
            serving = asyncio.create_task(ingest.serve(
                host="127.0.0.1", port=port, client_id="central-test", username=broker.CENTRAL_USER,
                password=(tls / "central.password").read_text().strip(), ca_file=tls / "ca.crt", broker_admin=True))
            seen = {}
            async with asyncio.timeout(30):
                seen["first answer"] = await ask(first, first_id)
                admitted = await asyncio.to_thread(Client, stack, "first-probe", first_id, broker_password(first))
                seen["first admitted"] = admitted.connect_reason
                seen["first noted admitted"] = await asyncio.to_thread(  # its acceptance may be sent again
                    store.activation_held, first_id, public_key_text(first.public_key()), admitted=True)
                seen["first's region"] = await asyncio.to_thread(admitted.subscribe, f"{PREFIX}/regions/honghe/docs/#")
                seen["second answer"] = await ask(second, second_id)
                other = await asyncio.to_thread(Client, stack, "second-probe", second_id, broker_password(second))
                seen["second admitted"] = other.connect_reason
                await asyncio.to_thread(other.close)
                await asyncio.to_thread(store.revoke, first_id)
                await hand_in_and_say_done()
                await asyncio.to_thread(wait_until, lambda: admitted.disconnected_at is not None, 10,
                                        "the revoked box cut off")
                await asyncio.to_thread(admitted.close)
                again = await asyncio.to_thread(Client, stack, "first-again", first_id, broker_password(first))
                seen["first again"] = again.connect_reason
                await asyncio.to_thread(again.close)
            serving.cancel()
            async with asyncio.timeout(10):
                await asyncio.gather(serving, return_exceptions=True)
            return seen

        seen = asyncio.run(main())
    store.close()
    assert (seen["first answer"]["accepted"], seen["first answer"]["shop"]) == (True, "530100000009")
    assert seen["first admitted"] == 0 and seen["first's region"] == 1  # its shop's region's documents: granted
    assert seen["first noted admitted"] is not None
    assert seen["second answer"]["accepted"] is False and "used" in seen["second answer"]["reason"]
    assert seen["second admitted"] in (NOT_AUTHORIZED, 134)
    assert seen["first again"] in (NOT_AUTHORIZED, 134)


def test_the_commands_that_admit_and_cut_off_a_box_are_spelled_as_the_plugin_documents_them():
    """Mosquitto 2.0 reads the plugin's command names and keys regardless of case, so a broker test
    cannot see one misspelt: they are held here to the plugin's documented spelling. A box reads its own
    acknowledgements and documents, and its region's when it has one, by exactly those filters
    (subscribeLiteral: nothing wider, nothing narrower)."""
    from central import broker

    def allow(acltype: str, topic: str) -> dict:
        return {"acltype": acltype, "topic": topic, "allow": True}

    own = "cb/devices/shop-a"
    sends = [allow("publishClientSend", f"{own}/batch"), allow("publishClientSend", f"{own}/status")]
    reads = [acl for topic in (f"{own}/ack", f"{own}/docs/#")
             for acl in (allow("subscribeLiteral", topic), allow("publishClientReceive", topic))]
    region = [allow("subscribeLiteral", "cb/regions/honghe/docs/#"),
              allow("publishClientReceive", "cb/regions/honghe/docs/#")]
    assert broker.device_acls("cb", "shop-a", "") == sends + reads
    assert broker.device_acls("cb", "shop-a", "honghe") == sends + reads + region
    assert broker.admit_commands("cb", "shop-a", "honghe", "password-of-a") == [
        {"command": "deleteClient", "username": "shop-a"},
        {"command": "deleteRole", "rolename": "device-shop-a"},
        {"command": "createRole", "rolename": "device-shop-a", "acls": sends + reads + region},
        {"command": "createClient", "username": "shop-a", "password": "password-of-a",
         "roles": [{"rolename": "device-shop-a"}]},
    ]
    assert broker.cut_off_commands("shop-a") == [{"command": "deleteClient", "username": "shop-a"},
                                                 {"command": "deleteRole", "rolename": "device-shop-a"}]


def test_central_and_operations_at_the_plugin_at_once_each_take_their_own_answers(tmp_path):
    """The plugin answers on one topic that both central's and an operations command's clients read: each
    takes the answers to its own commands and passes over the other's, and leaves nothing running when done."""
    import asyncio

    from central import broker
    from provisioning.protocol import DEFAULT_PREFIX as PREFIX

    with Stack(tmp_path / "stack", production=True) as stack:
        stack.start_broker()

        def link(who: str):
            return broker.BrokerAdmin.link(host="127.0.0.1", port=stack.broker_port, username=f"counterbox-{who}",
                                           password=(stack.tls / f"{who}.password").read_text().strip(),
                                           ca_file=stack.tls / "ca.crt", client_id=f"{who}-admin-test")

        async def both() -> tuple[int, set]:
            async with broker.BrokerAdmin(link("central")) as central, broker.BrokerAdmin(link("ops")) as ops:
                await central.execute(broker.admit_commands(PREFIX, "shop-a", "honghe", "password-of-a"))
                await ops.execute(broker.cut_off_commands("shop-b"))  # central hears these answers too
                await central.execute(broker.cut_off_commands("shop-a"))
                await ops.execute(broker.admit_commands(PREFIX, "shop-b", "kunming", "password-of-b"))
                as_b = await asyncio.to_thread(Client, stack, "b-probe", "shop-b", "password-of-b")
                await asyncio.to_thread(as_b.close)
            return as_b.connect_reason, asyncio.all_tasks() - {asyncio.current_task()}

        reason, left = asyncio.run(both())
    assert (reason, left) == (0, set())
