"""Fixtures: real parts only. A Mosquitto per test on a free port, real SQLite files, real keys."""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from demo.stack import Stack

from . import contract
from .guards import LoopGuard


class Tap:
    """Every message published on a broker, as a subscriber to '#' receives it."""

    def __init__(self, port: int):
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="contract-tap", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda client, userdata, message: self.messages.append((message.topic, message.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the tap did not subscribe"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def stack(tmp_path: Path, request):
    """A running broker and central ingest, stopped after the test. Every message published on the
    broker meanwhile must match the contract (docs/asyncapi.yaml), unless the test marks itself
    ``foreign_messages`` (it publishes malformed ones on purpose)."""
    with Stack(tmp_path / "stack") as running:
        running.start_broker()
        tap = Tap(running.broker_port)
        try:
            running.start_central()
            yield running
        finally:
            tap.close()
    if request.node.get_closest_marker("foreign_messages") is None:
        problems = sorted({problem for topic, payload in tap.messages if (problem := contract.check(topic, payload))})
        if problems:
            pytest.fail("messages that break the contract (docs/asyncapi.yaml):\n" + "\n".join(problems[:10]))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "scanner.fifo"
    os.mkfifo(path)
    return path


@pytest.fixture(autouse=True)
def no_blocking_call_in_the_event_loop(request):
    """A callback that holds the event loop for 100 ms of its own CPU time, or makes a blocking call
    (sleep, fsync, opening SQLite, a name lookup) on the loop's thread, fails the test.

    SQLite, fsync and USB transfers belong in a thread; a loop that blocks is a scanner whose
    keys wait. CPU time is the loop thread's own, so a loaded machine cannot trip the guard;
    blocking calls are caught by name, since waiting costs no CPU. See tests/guards.py.
    """
    if request.node.get_closest_marker("blocks_the_loop_on_purpose"):
        yield
        return
    with LoopGuard() as guard:
        yield
    if guard.problems:
        pytest.fail("the event loop was blocked: " + "; ".join(guard.problems))


@pytest.fixture(autouse=True)
def a_mutant_that_hangs_a_test_fails_it():
    """Under mutation testing, with a mutant in place (mutmut names it in MUTANT_UNDER_TEST), a test
    still running after MUTATION_TEST_TIMEOUT seconds (60) ends the run as failed: the mutant that
    hangs it is caught then, not at mutmut's own limit of fifteen times the tests' expected time
    (minutes for a module whose tests take seconds). Not armed for mutmut's runs of the unmutated
    code, which a slow test must not end. The run ends at once: what the test started is left to
    the machine's teardown."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        yield
        return
    faulthandler.dump_traceback_later(float(os.environ.get("MUTATION_TEST_TIMEOUT", "60")), exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def logging_left_as_it_was_found():
    """A command's main() run in this process sets up the process's logging (a handler on standard error as
    it was then, a test's captured stream): put back after the test, or a later test's log lines go to a
    stream since closed, and logging's complaint about it lands in that test's standard error."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    pytest.fail(f"threads outlived the test: {extra}")


# Property tests explore new examples on every developer run; CI runs a fixed, reproducible set.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def postgresql_server():
    """A real PostgreSQL server (tests/postgres.py), started on first use and stopped after the session.
    One that cannot start fails the tests that need it, with its log: they are never skipped."""
    from .postgres import PostgreSQL, PostgreSQLError

    try:
        server = PostgreSQL().__enter__()
    except PostgreSQLError as error:
        pytest.fail(f"PostgreSQL did not start: {error}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgresql_url(postgresql_server):
    """A fresh, empty PostgreSQL database for this test: its SQLAlchemy URL (postgresql+psycopg://...)."""
    url = postgresql_server.create_database()
    yield url
    postgresql_server.drop_database(url)
