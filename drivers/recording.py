"""Scanner sessions as the kernel's own event bytes: compose, write and replay them.

A keyboard-wedge scanner typing "A1" then Enter produces, per key, what a USB
HID keyboard does: EV_MSC/MSC_SCAN, EV_KEY down, EV_SYN; EV_MSC/MSC_SCAN,
EV_KEY up, EV_SYN; Shift pressed around shifted characters.

    events = type_text("6901028075831", start=time.time())
    Path("session.events").write_bytes(input_event.pack_all(events))
    await replay(Path("session.events").read_bytes(), "/run/counterbox/scanner.fifo")
"""

from __future__ import annotations

import asyncio
import os

from evdev import InputEvent, ecodes

from .input_event import EVENT_SIZE, unpack
from .keymap import keystrokes

# HID usage of each key, for MSC_SCAN; only its presence matters to decoders.
_HID_BASE = 0x70000


def _at(t: float, type_: int, code: int, value: int) -> InputEvent:
    sec = int(t)
    return InputEvent(sec, int(round((t - sec) * 1_000_000)) % 1_000_000, type_, code, value)


def press(code: int, t: float, *, down: bool) -> list[InputEvent]:
    return [
        _at(t, ecodes.EV_MSC, ecodes.MSC_SCAN, _HID_BASE + code),
        _at(t, ecodes.EV_KEY, code, 1 if down else 0),
        _at(t, ecodes.EV_SYN, ecodes.SYN_REPORT, 0),
    ]


def type_text(
    text: str, *, start: float, key_interval: float = 0.004, keypad_digits: bool = False,
    terminator: int | None = ecodes.KEY_ENTER,
) -> list[InputEvent]:
    """The events a US-layout scanner sends for ``text`` followed by ``terminator`` (None: no terminator)."""
    events: list[InputEvent] = []
    t = start
    ending = [(terminator, False)] if terminator is not None else []
    for code, shifted in keystrokes(text, keypad_digits=keypad_digits) + ending:
        if shifted:
            events += press(ecodes.KEY_LEFTSHIFT, t, down=True)
        events += press(code, t, down=True)
        events += press(code, t + key_interval / 2, down=False)
        if shifted:
            events += press(ecodes.KEY_LEFTSHIFT, t + key_interval / 2, down=False)
        t += key_interval
    return events


async def replay(data: bytes, path: str, *, speed: float = 1.0) -> int:
    """Write recorded event bytes to ``path`` (a FIFO the agent reads), paced by their timestamps / ``speed``.

    Return the number of events written. ``speed=0`` writes as fast as the reader takes them.
    """
    events = list(unpack(data))
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
    try:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        first = events[0].timestamp() if events else 0.0
        for i, event in enumerate(events):
            if speed:
                delay = origin + (event.timestamp() - first) / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.to_thread(os.write, fd, data[i * EVENT_SIZE : (i + 1) * EVENT_SIZE])
    finally:
        os.close(fd)
    return len(events)


__all__ = ["press", "replay", "type_text"]
