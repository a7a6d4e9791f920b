"""The kernel's ``struct input_event``, as read from /dev/input/eventN.

    struct input_event {
        struct timeval time;    /* long tv_sec; long tv_usec (64-bit: 8 + 8 bytes) */
        __u16 type;
        __u16 code;
        __s32 value;
    };

Events are represented by python-evdev's own ``InputEvent`` so that a recorded
stream, a FIFO and a real device all yield the same objects; the scanner's read
path takes them as plain records, the struct's own fields in its order,
without an object apiece:

    records(data)   # [(sec, usec, type, code, value), ...]
    record(event)   # one InputEvent as such a record
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from evdev import InputEvent, ecodes

__all__ = ["EVENT_SIZE", "InputEvent", "Record", "ecodes", "pack", "pack_all", "record", "records", "unpack"]

# Native layout: the same as the running kernel writes (24 bytes on 64-bit).
_STRUCT = struct.Struct("@llHHi")
EVENT_SIZE = _STRUCT.size

Record = tuple[int, int, int, int, int]  # (sec, usec, type, code, value)


def record(event: InputEvent) -> Record:
    return event.sec, event.usec, event.type, event.code, event.value


def pack(event: InputEvent) -> bytes:
    return _STRUCT.pack(*record(event))


def pack_all(events: Iterable[InputEvent]) -> bytes:
    return b"".join(pack(e) for e in events)


def records(buffer: bytes | bytearray | memoryview) -> list[Record]:
    """The whole records in ``buffer``; a trailing partial record is the caller's to keep."""
    return list(_STRUCT.iter_unpack(memoryview(buffer)[: len(buffer) - len(buffer) % EVENT_SIZE]))


def unpack(buffer: bytes | bytearray | memoryview) -> Iterator[InputEvent]:
    """The whole records in ``buffer`` as events; a trailing partial record is the caller's to keep."""
    for sec, usec, type_, code, value in records(buffer):
        yield InputEvent(sec, usec, type_, code, value)
