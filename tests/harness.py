"""What tests need beside fixtures: scanner bytes as the kernel writes them, and waiting for real processes."""

from __future__ import annotations

import time

from drivers.input_event import pack_all
from drivers.recording import type_text


def scans(codes: list[str], *, start: float | None = None, key_interval: float = 0.004, **how) -> bytes:
    """The kernel's input_event bytes for a scanner typing each code and Enter."""
    t = time.time() if start is None else start
    events = []
    for code in codes:
        events += type_text(code, start=t, key_interval=key_interval, **how)
        t += key_interval * (len(code) + 1) + 0.3
    return pack_all(events)


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
