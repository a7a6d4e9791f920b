"""A fleet: 200 boxes activated by code against one Mosquitto in the production configuration, two
central ingest instances sharing the subscriptions on PostgreSQL, one killed halfway. Every sale of
every box is stored once, and the upload report says 100%."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTv5

from central.store import CentralStore, Shop
from demo.stack import ROOT, Stack
from drivers.barcode import gs1_check_digit
from provisioning import activation
from provisioning.activation import ActivationCode
from provisioning.identity import key_id, load_key

from .harness import feed, scans, wait_until

BOXES = 200


def _query(stack: Stack, sql: str, *args):
    store = CentralStore(stack.central_db)
    try:
        return store.conn.execute(sql, args).fetchall()
    finally:
        store.close()


def _codes(box: int, start: int, n: int) -> list[str]:
    return [(body := f"69{box:03d}{k:07d}") + str(gs1_check_digit(body)) for k in range(start, start + n)]


def _ops_client(stack: Stack) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-ops", protocol=MQTTv5)
    client.username_pw_set("counterbox-ops", (stack.tls / "ops.password").read_text().strip())
    client.tls_set_context(ssl.create_default_context(cafile=str(stack.tls / "ca.crt")))
    client.connect("127.0.0.1", stack.broker_port)
    client.loop_start()
    return client


def test_200_boxes_are_activated_deliver_every_sale_once_through_a_killed_ingest_and_upload_fully(tmp_path,
                                                                                                 postgresql_url):
    with Stack(tmp_path / "stack", production=True, uplink={"ack_timeout": 3.0}, database=postgresql_url) as stack:
        stack.start_broker()
        first = stack.start_ingest("ingest-a", share="fleet")
        stack.start_ingest("ingest-b", share="fleet")
        fifos, configs = [], []
        for n in range(BOXES):
            fifo = tmp_path / f"box{n}.fifo"
            os.mkfifo(fifo)
            configs.append(str(stack.install(f"box{n}", scanners=[str(fifo)]).config))
            fifos.append(fifo)
        with (tmp_path / "fleet.log").open("ab") as log:
            fleet = subprocess.Popen([sys.executable, "-m", "tests.fleet", *configs], cwd=ROOT, stdout=log, stderr=log)
        try:
            wait_until(lambda: _query(stack, "SELECT count(*) FROM waiting")[0][0] == BOXES, 120, "every box waiting")

            # Operations: a shop per box, and a code bound to each waiting box, pushed (what
            # 'counterbox-ops shop add' and 'activation issue --push' do, without 400 processes).
            store = CentralStore(stack.central_db)
            ops = load_key(stack.ops_key)
            kid, now = key_id(ops), time.time()
            publisher = _ops_client(stack)
            waiting = [row[0] for row in _query(stack, "SELECT device_id FROM waiting ORDER BY device_id")]
            for n, device in enumerate(waiting):
                shop = Shop(f"5301{n:06d}", f"shop {n}", "honghe" if n % 2 else "kunming", monitoring=n % 10 == 0)
                store.add_shop(shop)
                code = ActivationCode(activation.new_code_id(), shop.licence, shop.region, shop.monitoring, now,
                                      now + 3600, device, kid)
                token = activation.encode_code(code, key=ops, kid=kid)
                store.add_code(code.code_id, shop=shop.licence, token=token, device=device, issued_at=now,
                               expires_at=code.expires_at)
                publisher.publish(activation.topic("counterbox/v1", device, "code"), token, qos=1, retain=True)
            store.close()
            wait_until(lambda: _query(stack, "SELECT count(*) FROM device_status WHERE state = 'online'")[0][0]
                       == BOXES, 120, "every box activated and online")
            publisher.loop_stop()
            publisher.disconnect()

            for n, fifo in enumerate(fifos):
                feed(fifo, scans(_codes(n, 0, 5)))
            wait_until(lambda: _query(stack, "SELECT count(*) FROM events WHERE kind = 'sale'")[0][0] == 5 * BOXES,
                       120, "the first round at central")
            shares = [(stack.directory / f"{name}.log").read_text().count("batch accepted")
                      for name in ("ingest-a", "ingest-b")]
            assert all(shares), f"both instances took a share: {shares}"

            first.send_signal(signal.SIGSTOP)  # it keeps its turn of the next batches, and handles none
            for n, fifo in enumerate(fifos):
                feed(fifo, scans(_codes(n, 5, 5)))
            time.sleep(1.0)
            first.send_signal(signal.SIGKILL)
            first.wait()
            wait_until(lambda: _query(stack, "SELECT count(*) FROM events WHERE kind = 'sale'")[0][0] == 10 * BOXES,
                       180, "every sale at central, through the instance left")
            store = CentralStore(stack.central_db)
            held = [(sale["device"], sale["code"]) for sale in store.events("sale")]
            store.close()
            assert len(held) == len(set(held)) == 10 * BOXES  # each once
            assert fleet.poll() is None, "the boxes run on"
            wait_until(lambda: _query(stack, "SELECT count(*) FROM devices WHERE acked_seq > 0")[0][0] == BOXES, 60,
                       "every box acknowledged")
            report = json.loads(stack.central_command("uploads", "--days", "1", "--json").stdout)
            assert len(report["devices"]) == BOXES
            assert {row["rate"] for row in report["devices"]} == {1.0}
            assert {r["region"]: r["rate"] for r in report["regions"]} == {"honghe": 1.0, "kunming": 1.0}
        finally:
            fleet.kill()
            fleet.wait()
