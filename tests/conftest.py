"""Fixtures: real parts only. A Mosquitto per test on a free port, real SQLite files, real keys."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from demo.stack import Stack


@pytest.fixture
def stack(tmp_path: Path):
    """A running broker and central ingest, stopped after the test."""
    with Stack(tmp_path / "stack") as running:
        running.start_broker()
        running.start_central()
        yield running


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "scanner.fifo"
    os.mkfifo(path)
    return path


BLOCKED = 1.0  # seconds a callback may hold the event loop in a test


class _SlowCallbacks(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Executing "):
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_blocking_call_in_the_event_loop(monkeypatch):
    """Every asyncio.run in a test runs in debug mode; a callback that holds the loop a second fails the test.

    SQLite, fsync and USB reads belong in a thread; a loop that blocks is a scanner whose keys wait.
    The guard is for the gross mistakes (a blocking read, a lock wait, a sleep). asyncio measures
    wall time, which a loaded machine stretches (seen: 0.22 s with both cores busy, more while
    gcc builds packages beside the tests), so the threshold sits well above that.
    """
    real_run = asyncio.run
    handler = _SlowCallbacks()
    logging.getLogger("asyncio").addHandler(handler)

    def run(main, *, debug=None):
        with asyncio.Runner(debug=True) as runner:
            runner.get_loop().slow_callback_duration = BLOCKED
            return runner.run(main)

    monkeypatch.setattr(asyncio, "run", run)
    try:
        yield
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
        monkeypatch.setattr(asyncio, "run", real_run)
    if handler.seen:
        pytest.fail("the event loop was blocked: " + "; ".join(handler.seen))


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
