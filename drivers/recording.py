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
import time

from evdev import InputEvent, ecodes

from .input_event import pack, unpack
from .keymap import keystrokes

# HID usage of each key, for MSC_SCAN; only its presence matters to decoders.
_HID_BASE = 0x70000


def _at(t: float, type_: int, code: int, value: int) -> InputEvent:
    # Rounded as a whole, so 0.9999999 s becomes the next second, not the start of this one.
    sec, usec = divmod(int(round(t * 1_000_000)), 1_000_000)
    return InputEvent(sec, usec, type_, code, value)


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


def restamp(events: list[InputEvent], start: float) -> list[InputEvent]:
    """The same events moved in time so the first is at ``start``, gaps kept: as a device would stamp them now."""
    if not events:
        return []
    shift = start - events[0].timestamp()
    return [_at(e.timestamp() + shift, e.type, e.code, e.value) for e in events]


async def replay(data: bytes, path: str, *, speed: float = 1.0, lead_in: float = 0.0) -> int:
    """Write recorded event bytes to ``path`` (a FIFO the agent reads), paced by their timestamps / ``speed``.

    Each event is stamped with the time it is written, as the kernel stamps a key
    when it happens, so a session recorded yesterday replays as a scanner typing now.
    ``lead_in`` seconds pass between opening ``path`` and the first event, as between plugging a
    scanner in and the first scan (a burst right at the open would be one begun before it).
    Return the number of events written. ``speed=0`` writes as fast as the reader takes them.
    """
    events = list(unpack(data))
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
    try:
        await asyncio.sleep(lead_in)
        loop = asyncio.get_running_loop()
        origin, wall = loop.time(), time.time()
        first = events[0].timestamp() if events else 0.0
        for event in events:
            offset = (event.timestamp() - first) / speed if speed else 0.0
            if speed:
                delay = origin + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            stamped = _at(max(wall + offset, time.time()) if speed else time.time(), event.type, event.code, event.value)
            await asyncio.to_thread(os.write, fd, pack(stamped))
    finally:
        os.close(fd)
    return len(events)


__all__ = ["press", "replay", "restamp", "type_text"]
