"""Read ``struct input_event`` records from a scanner path.

One code path for every kind of source, so tests exercise what the device does:

- a character device (/dev/input/eventN): opened with python-evdev and grabbed
  with EVIOCGRAB, so a scan never leaks keystrokes to a console or login prompt;
- a FIFO: a replayed scanner; opened read-write so that a writer closing is not
  an end of file (the source stays open like a plugged-in scanner);
- a regular file: a recording, read once to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .input_event import EVENT_SIZE, InputEvent, unpack

logger = logging.getLogger(__name__)

_READ_SIZE = EVENT_SIZE * 64


class ScannerError(Exception):
    """A scanner path that cannot be read as an input-event source."""


@dataclass(frozen=True)
class SourceInfo:
    path: str
    kind: str  # "evdev", "fifo" or "file"
    name: str = ""


def _open(path: str) -> tuple[int, SourceInfo, object | None]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ScannerError(f"scanner path {path!r} does not exist") from None
    if stat.S_ISCHR(mode):
        import evdev

        try:
            device = evdev.InputDevice(path)
        except PermissionError:
            raise ScannerError(f'no read access to scanner "{path}" (run as root or add the input group)') from None
        try:
            device.grab()
        except OSError as error:
            device.close()
            raise ScannerError(f'cannot grab scanner "{path}": {error.strerror} (another program holds it)') from None
        os.set_blocking(device.fd, False)
        return device.fd, SourceInfo(path, "evdev", device.name), device
    if stat.S_ISFIFO(mode):
        return os.open(path, os.O_RDWR | os.O_NONBLOCK), SourceInfo(path, "fifo"), None
    if stat.S_ISREG(mode):
        return os.open(path, os.O_RDONLY), SourceInfo(path, "file"), None
    raise ScannerError(f"scanner path {path!r} is neither an input device, a FIFO nor a recording file")


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Whole records, and the partial one that the next read completes."""
    whole = len(data) - len(data) % EVENT_SIZE
    return data[:whole], data[whole:]


async def read_events(path: str) -> AsyncIterator[InputEvent]:
    """Yield input events from ``path`` until the source ends or the task is cancelled."""
    fd, info, device = _open(path)
    logger.info("scanner opened path=%s kind=%s name=%r grabbed=%s", path, info.kind, info.name, device is not None)
    pending = b""
    try:
        if info.kind == "file":
            while chunk := await asyncio.to_thread(os.read, fd, _READ_SIZE * 16):
                records, pending = _split(pending + chunk)
                for event in unpack(records):
                    yield event
            return
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                records, pending = _split(pending + chunk)
                for event in unpack(records):
                    yield event
        finally:
            loop.remove_reader(fd)
    finally:
        if pending:
            logger.warning("scanner path=%s ended inside a record: %d stray bytes dropped", path, len(pending))
        if device is not None:
            with contextlib.suppress(OSError):
                device.ungrab()
            device.close()
        else:
            os.close(fd)
