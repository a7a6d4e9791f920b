"""The loop guard itself: it notices what it promises to, and only that."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from .guards import CPU_LIMIT, WALL_LIMIT, LoopGuard

pytestmark = pytest.mark.blocks_the_loop_on_purpose


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_callback_burning_150_ms_of_cpu_is_caught():
    async def main():
        burn(0.15)

    with LoopGuard() as guard:
        asyncio.run(main())
    assert len(guard.problems) == 1 and "ms of CPU" in guard.problems[0]


def test_a_blocking_call_on_the_loop_is_caught_however_short(tmp_path):
    async def main():
        time.sleep(0.001)
        fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT)
        os.fsync(fd)
        os.close(fd)

    with LoopGuard() as guard:
        asyncio.run(main())
    assert guard.problems == ["time.sleep on the event loop", "os.fsync on the event loop"]


def test_the_same_calls_in_a_thread_and_short_callbacks_are_fine():
    async def main():
        burn(0.02)
        await asyncio.to_thread(time.sleep, 0.01)
        await asyncio.sleep(0.01)

    with LoopGuard() as guard:
        asyncio.run(main())
    assert guard.problems == []


def test_a_garbage_collection_inside_a_callback_is_the_interpreters_time_not_the_callbacks():
    heap = [[[] for _ in range(10)] for _ in range(300_000)]  # a long test session's worth of containers
    timings = {}

    async def main():
        started = time.thread_time()
        import gc

        gc.collect()  # as the collector may, in whichever callback it happens to fall
        timings["collect"] = time.thread_time() - started

    with LoopGuard() as guard:
        asyncio.run(main())
    assert timings["collect"] > CPU_LIMIT, "the heap is large enough to take the collector past the limit"
    assert guard.problems == []
    del heap


def test_a_garbage_collection_that_takes_seconds_of_wall_time_inside_a_callback_is_not_the_callbacks():
    """On a loaded machine a full collection can take more than the wall-time backstop: not the callback's."""
    import gc

    real_sleep, armed = time.sleep, []

    def slow(phase, info):
        if phase == "start" and armed:
            armed.clear()
            real_sleep(WALL_LIMIT + 0.1)  # the machine's other work, while this thread collects

    async def main():
        armed.append(True)
        gc.collect()

    with LoopGuard() as guard:
        gc.callbacks.append(slow)  # after the guard's own: it runs inside the collection the guard times
        try:
            asyncio.run(main())
        finally:
            gc.callbacks.remove(slow)
    assert guard.problems == []

