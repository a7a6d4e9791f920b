"""The test suite's guard on the event loop: what holds it, measured so that machine load cannot trip it.

    with LoopGuard() as guard:
        asyncio.run(main())
    guard.problems   # ["<Handle ...> held the loop for 152 ms of CPU", "time.sleep on the event loop", ...]
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sqlite3
import threading
import time

CPU_LIMIT = 0.100  # seconds of the loop thread's own CPU one callback may take
WALL_LIMIT = 1.0  # seconds of wall time: a backstop for blocking calls the list below does not name

# Calls that wait (on the disk, the clock, the network): never on a running loop's thread.
# (Thread.join is not among them: asyncio's own shutdown joins its executor's thread on the loop.)
BLOCKING = [(time, "sleep"), (os, "fsync"), (os, "fdatasync"), (sqlite3, "connect"), (socket, "getaddrinfo")]


class LoopGuard:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> "LoopGuard":
        guard = self
        real_run = asyncio.events.Handle._run
        # The interpreter's garbage collector may run inside any callback; a full collection of the
        # whole test session's heap takes the test's time, not the callback's: neither its CPU nor its
        # wall time (seconds on a loaded machine) is counted.
        collected: dict[int, tuple[float, float]] = {}  # by thread: CPU and wall seconds spent collecting
        began: dict[int, tuple[float, float]] = {}

        def on_gc(phase, info):
            thread = threading.get_ident()
            if phase == "start":
                began[thread] = (time.thread_time(), time.perf_counter())
            elif thread in began:
                cpu, wall = began.pop(thread)
                total_cpu, total_wall = collected.get(thread, (0.0, 0.0))
                collected[thread] = (total_cpu + time.thread_time() - cpu, total_wall + time.perf_counter() - wall)

        self._gc_callback = on_gc
        gc.callbacks.append(on_gc)

        def run(handle):
            thread = threading.get_ident()
            before_cpu, before_wall = collected.get(thread, (0.0, 0.0))
            cpu, wall = time.thread_time(), time.perf_counter()
            real_run(handle)
            after_cpu, after_wall = collected.get(thread, (0.0, 0.0))
            cpu = time.thread_time() - cpu - (after_cpu - before_cpu)
            wall = time.perf_counter() - wall - (after_wall - before_wall)
            if cpu >= CPU_LIMIT or wall >= WALL_LIMIT:
                guard.problems.append(f"{handle!r} held the loop for {cpu * 1000:.0f} ms of CPU "
                                      f"({wall * 1000:.0f} ms of wall time)")

        self._patch(asyncio.events.Handle, "_run", run)
        for owner, name in BLOCKING:
            self._patch(owner, name, self._refusing(owner, name, getattr(owner, name)))
        return self

    def _refusing(self, owner, name, real):
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        def call(*args, **kwargs):
            if asyncio.events._get_running_loop() is not None:
                self.problems.append(f"{label} on the event loop")
            return real(*args, **kwargs)

        return call

    def _patch(self, owner, name, value) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._gc_callback)
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
