"""The MQTT link (agent/mqtt.py): its backoff, against the test's broker."""

from __future__ import annotations

import asyncio

import pytest

from agent.mqtt import Backoff, MqttLink


def test_the_backoff_doubles_up_to_its_most_each_delay_drawn_from_the_upper_half():
    backoff = Backoff(first=0.1, most=2.0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.6), (5, 2.0), (10_000, 2.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling / 10, "no jitter"


def test_two_links_with_one_client_id_back_off_rather_than_take_it_from_each_other_without_end(stack):
    """The broker ends a client id's older connection at each new one. A connection lost that soon after its
    CONNACK is a failed attempt, so the backoff grows (0.1, 0.2, 0.4 ... s), rather than starting again at
    0.1 s and costing both a connection ten times a second (some 40 each in 4 s)."""
    async def main() -> list[int]:
        links = [MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-twin") for _ in range(2)]
        async with links[0], links[1]:
            await asyncio.sleep(4.0)
            return [link.generation for link in links]

    generations = asyncio.run(main())
    assert all(generations), generations
    assert sum(generations) <= 16, generations


def test_next_connection_answers_at_a_new_connection_and_not_before(stack):
    """What a box says on each connection (its status, its hello) goes out as the connection comes
    back, not at its next look."""
    async def main() -> tuple[bool, bool, int, int]:
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-next",
                            backoff=Backoff(first=0.1, most=0.5)) as link:
            await link.connected.wait()
            first = link.generation
            quiet = await link.next_connection(first, within=0.3)  # nobody reconnects: it says so
            waiting = asyncio.create_task(link.next_connection(first, within=60.0))
            await asyncio.to_thread(stack.stop_broker)
            await asyncio.to_thread(stack.start_broker)
            came_back = await waiting
            return quiet, came_back, link.generation - first, len(link.on_connect)

    quiet, came_back, new_connections, listeners = asyncio.run(main())
    assert (quiet, came_back) == (False, True)
    assert new_connections >= 1
    assert listeners == 0  # the waits leave nothing behind


def test_a_ca_file_that_is_missing_or_no_ca_is_said_once_and_the_link_keeps_trying(stack, tmp_path, caplog):
    """Its reconnecting task once ended silently on it: the box sat offline for good, even once the file
    was put right."""
    import logging

    caplog.set_level(logging.DEBUG, logger="agent.mqtt")

    async def attempt(ca_file):
        link = MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-ca", ca_file=ca_file,
                        backoff=Backoff(first=0.05, most=0.1))
        async with link:
            await asyncio.sleep(0.5)  # several attempts
            return link.connected.is_set(), link._runner.done()

    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "garbage.pem"):
        caplog.clear()
        assert asyncio.run(attempt(ca_file)) == (False, False)  # not connected, and still trying
        said = [r for r in caplog.records if "cannot be set up" in r.getMessage()]
        assert said[0].levelname == "ERROR" and len(said) > 1 and all(r.levelname == "DEBUG" for r in said[1:])


class _Unanswering:
    """A broker no Mosquitto can be made into: it accepts the connection and answers pings, but never
    a publish (a broker stuck on its storage, a PUBACK lost). MQTT v5 packets, read and written here."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.publishes = 0
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self):
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.threads.append(threading.Thread(target=self._client, args=(conn,), daemon=True))
            self.threads[-1].start()

    def _client(self, conn):
        def packet():
            head = conn.recv(1)
            length, shift = 0, 0
            while True:
                byte = conn.recv(1)[0]
                length, shift = length + ((byte & 127) << shift), shift + 7
                if not byte & 128:
                    break
            body = b""
            while len(body) < length:
                body += conn.recv(length - len(body))
            return head[0] >> 4

        with conn:
            try:
                while True:
                    kind = packet()
                    if kind == 1:
                        conn.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: accepted, no properties
                    elif kind == 12:
                        conn.sendall(bytes([0xD0, 0]))  # PINGRESP
                    elif kind == 3:
                        self.publishes += 1  # PUBLISH: no PUBACK, ever
            except (OSError, IndexError):
                return

    def close(self):
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


def test_a_publish_the_broker_never_answers_ends_in_time_and_the_link_stays(caplog):
    """It once waited for as long as the connection lived: with pings answered, for ever; the uplink's
    resend after ack_timeout never ran."""
    from agent.mqtt import NoReceipt

    broker = _Unanswering()

    async def publish():
        async with MqttLink(host="127.0.0.1", port=broker.port, client_id="shop-np", keepalive=1,
                            publish_timeout=1.5) as link:
            await asyncio.wait_for(link.connected.wait(), 5)
            started = asyncio.get_running_loop().time()
            try:
                await link.publish("counterbox/v1/devices/shop-np/batch", b"payload")
            except NoReceipt as error:
                return str(error), asyncio.get_running_loop().time() - started, link.connected.is_set()

    try:
        message, waited, connected = asyncio.run(publish())
    finally:
        broker.close()
    assert message == f"no answer from 127.0.0.1:{broker.port} to a publish within 1.5s"
    assert 1.4 < waited < 5 and connected and broker.publishes == 1


def test_a_link_cancelled_again_while_it_closes_still_closes(stack):
    """Two SIGTERMs, or a task group cancelling a task already unwinding: close() was cut short after
    marking itself done, leaving the connection open, watched and pinged, with nobody to close it."""

    async def scenario():
        link = MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-twice", keepalive=1)

        async def user():
            async with link:
                await link.connected.wait()
                await asyncio.sleep(3600)

        task = asyncio.create_task(user())
        await asyncio.wait_for(asyncio.shield(_connected(link)), 5)
        task.cancel()
        await asyncio.sleep(0)  # unwinding: __aexit__, close(), waiting for the runner's end
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.2)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return link.connected.is_set(), link._client, others

    connected, client, others = asyncio.run(scenario())
    assert (connected, client, others) == (False, None, [])


async def _connected(link):
    while not hasattr(link, "connected") or not link.connected.is_set():
        await asyncio.sleep(0.01)


@pytest.mark.foreign_messages  # the flood is no message of the contract
def test_a_flood_at_qos_0_holds_no_more_than_the_inbox_takes(stack, caplog):
    """At QoS 1 the broker's in-flight window holds a flood back; at QoS 0 nothing did: a sender allowed
    on a topic central reads could fill central's memory while it was busy."""
    import paho.mqtt.client as mqtt

    from agent.mqtt import INBOX_AT_MOST_QOS0

    async def flood():
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="central-flooded",
                            subscriptions=["flood/#"]) as link:
            await asyncio.wait_for(_connected(link), 5)
            await asyncio.sleep(0.3)  # subscribed

            def send():
                sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
                sender.connect("127.0.0.1", stack.broker_port)
                sender.loop_start()
                for n in range(3 * INBOX_AT_MOST_QOS0):
                    sender.publish("flood/x", b"%d" % n, qos=0)
                sender.disconnect()
                sender.loop_stop()

            await asyncio.to_thread(send)
            for _ in range(100):
                await asyncio.sleep(0.05)
            held = link._inbox.qsize()
            first = await anext(link.messages())
            return held, first.payload

    held, first = asyncio.run(flood())
    assert held == INBOX_AT_MOST_QOS0 and first == b"0"  # the first kept, in order
    assert "inbox full:" in caplog.text


def test_a_last_will_that_cannot_be_made_is_said_and_the_link_connects_without_it(stack, caplog):
    """A box whose clock is past what a time on the wire can say (year 10000): its will cannot be signed.
    Once that ended the link's task in silence, and the box never connected again."""
    def will():
        raise ValueError("year 10000 is out of range")

    async def main() -> bool:
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="shop-no-will", will=will) as link:
            await asyncio.wait_for(link.connected.wait(), 20)
            return link.connected.is_set()

    assert asyncio.run(main())
    assert f"MQTT link to 127.0.0.1:{stack.broker_port}: no last will this time (year 10000 is out of range)" \
        in caplog.text


def test_a_broker_ca_file_that_is_missing_or_holds_no_certificate_is_named_in_the_links_error(tmp_path, caplog):
    import asyncio
    import logging

    from agent.mqtt import MqttLink

    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    for ca_file, reason in ((tmp_path / "missing.pem", ": No such file or directory"),
                            (tmp_path / "not-a-ca.pem", " holds no certificate it can use (NO_CERTIFICATE_OR_CRL_FOUND)")):
        caplog.clear()

        async def main():
            async with MqttLink(host="127.0.0.1", port=1, client_id="shop-1", subscriptions=[], ca_file=ca_file):
                await asyncio.sleep(0.3)

        with caplog.at_level(logging.ERROR, logger="agent.mqtt"):
            asyncio.run(main())
        assert f"MQTT link to 127.0.0.1:1 cannot be set up: the broker's CA file {ca_file}{reason}\n" in caplog.text
