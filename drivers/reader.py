"""Read ``struct input_event`` records from a scanner path.

One code path for every kind of source, so tests exercise what the device does:

- a character device (/dev/input/eventN): opened with python-evdev and grabbed
  with EVIOCGRAB, so a scan never leaks keystrokes to a console or login prompt;
  the grab is released however the reading ends;
- a FIFO: a replayed scanner; opened read-write so that a writer closing is not
  an end of file (the source stays open like a plugged-in scanner), and gone
  when its path is removed, as a device is when unplugged; part of a record
  left with nothing after it for PARTIAL_QUIET (a writer that died mid-write)
  is an event lost, said to the decoder as the kernel says one (SYN_DROPPED),
  never the first bytes of the next record, which would put every record
  after it out of step;
- a regular file: a recording, read once to its end.

    async with open_source("/dev/input/event3") as source:
        async for event in source.events():
            ...
        source.held_keys()   # EVIOCGKEY, after the kernel dropped events

The scanner manager reads ``source.batches()``: each read's records as the
kernel's own tuples (``input_event.records``), the way the decoder takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .errors import ScannerError, ScannerGone, ScannerNoAccess
from .input_event import EVENT_SIZE, InputEvent, Record, ecodes, records

logger = logging.getLogger(__name__)

# Events taken in one read: more than a device's kernel buffer holds (64 to a few hundred), few enough
# that decoding them never holds the loop long.
_READ_SIZE = EVENT_SIZE * 256
_READS_PER_TURN = 8  # reads of a source that stays full before the loop turns anyway
GONE_CHECK = 0.5  # seconds between checks that a FIFO's path still exists
PARTIAL_QUIET = 1.0  # seconds a FIFO may hold part of a record with nothing after it before it is dropped


@dataclass
class Source:
    path: str
    kind: str  # "evdev", "fifo" or "file"
    fd: int
    device: object | None = None  # evdev.InputDevice when kind == "evdev"
    name: str = ""
    grabbed: bool = False
    opened_at: float = 0.0  # time.time() when opened: a scan already under way then was not seen whole
    # The keys the device held as it was opened (EVIOCGKEY); None where it cannot say (a FIFO, a recording).
    held_at_open: frozenset[int] | None = None

    def grab(self) -> None:
        """EVIOCGRAB: from now on this program alone receives the device's keys."""
        if self.device is None or self.grabbed:
            return
        try:
            self.device.grab()
        except OSError as error:
            raise ScannerError(f'cannot grab scanner "{self.path}": {error.strerror} (another program holds it)') from None
        self.grabbed = True

    def has_input(self) -> bool:
        """Whether the kernel holds events not yet read: a pause measured now would be the reader's, not the scanner's."""
        if self.kind == "file":
            return False
        return bool(select.select([self.fd], [], [], 0)[0])

    def held_keys(self) -> frozenset[int] | None:
        """The keys down now, from the device itself (EVIOCGKEY); None where the source cannot say:
        not a device, or one that cannot answer (unplugged: its next read says so, and the scans
        already decoded from this read are kept)."""
        if self.device is None:
            return None
        try:
            return frozenset(self.device.active_keys())
        except OSError:
            return None

    async def events(self) -> AsyncIterator[InputEvent]:
        """Yield events until the source ends (a recording) or goes away (ScannerGone)."""
        async for batch in self.batches():
            for record in batch:
                yield InputEvent(*record)

    async def batches(self) -> AsyncIterator[list[Record]]:
        """Yield the records of each read, in order, as the kernel handed them over together."""
        pending = b""
        try:
            if self.kind == "file":
                # A few hundred events at a time: decoding more in one go would hold the loop too long.
                while chunk := await asyncio.to_thread(_read_file, self.fd, self.path):
                    whole, pending = _split(pending + chunk)
                    yield records(whole)
                return
            loop = asyncio.get_running_loop()
            readable = asyncio.Event()

            def ready() -> None:
                # Watched only while waiting to read: left on while the batch is with the consumer
                # (held back by a store that stalls), the keys waiting would wake the loop at
                # every turn, and it would spin.
                loop.remove_reader(self.fd)
                readable.set()

            # A FIFO's path is checked now and then (a device says ENODEV itself); one repeating timer
            # rather than a timeout per read, which would cost a task and a timer per key.
            ticks = _Ticker(loop, GONE_CHECK, readable.set) if self.kind == "fifo" else None
            running = 0  # reads in a row that found input waiting
            partial_since: float | None = None  # when a FIFO's read last left part of a record waiting
            try:
                while True:
                    # Read first, and wait only when the kernel has nothing: in a burst the next read
                    # is there already, and a wait would cost a loop turn and two epoll calls each.
                    # A source that never runs dry still lets the loop turn every few reads.
                    if running == _READS_PER_TURN:
                        running = 0
                        await asyncio.sleep(0)
                    try:
                        chunk = os.read(self.fd, _READ_SIZE)
                    except BlockingIOError:
                        running = 0
                        self._check_present()
                        if partial_since is not None and time.monotonic() - partial_since >= PARTIAL_QUIET:
                            logger.warning("scanner path=%s: %d bytes of a record with nothing after them for %g s "
                                           "(its writer stopped mid-write): dropped as an event lost",
                                           self.path, len(pending), PARTIAL_QUIET)
                            pending, partial_since = b"", None
                            yield _dropped(time.time())
                            continue
                        loop.add_reader(self.fd, ready)
                        await readable.wait()
                        readable.clear()
                        continue
                    except OSError as error:
                        if error.errno == errno.ENODEV:
                            raise ScannerGone(f"scanner {self.path} was unplugged") from None
                        # EIO and its kind: this scanner is lost as if unplugged (its partial scan refused);
                        # the others go on, and it is opened again.
                        raise ScannerGone(f"scanner {self.path}: reading failed: {error.strerror}") from None
                    if not chunk:
                        return
                    running += 1
                    whole, pending = _split(pending + chunk)
                    partial_since = time.monotonic() if pending else None
                    if whole:
                        yield records(whole)
            finally:
                loop.remove_reader(self.fd)
                if ticks is not None:
                    ticks.cancel()
        finally:
            if pending:
                logger.warning("scanner path=%s ended inside a record: %d stray bytes dropped", self.path, len(pending))

    def _check_present(self) -> None:
        if self.kind == "fifo" and os.fstat(self.fd).st_nlink == 0:
            raise ScannerGone(f"scanner {self.path} was removed")

    def close(self) -> None:
        if self.device is not None:
            if self.grabbed:
                with contextlib.suppress(OSError):
                    self.device.ungrab()
            with contextlib.suppress(OSError):
                self.device.close()
        else:
            os.close(self.fd)


class _Ticker:
    """Calls ``callback`` every ``interval`` seconds until cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, callback) -> None:
        self._loop, self._interval, self._callback = loop, interval, callback
        self._handle = loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        self._callback()
        self._handle = self._loop.call_later(self._interval, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


def _read_file(fd: int, path: str) -> bytes:
    try:
        return os.read(fd, _READ_SIZE)
    except OSError as error:
        raise ScannerError(f"recording {path}: reading failed: {error.strerror}") from None


def _dropped(t: float) -> list[Record]:
    """What the kernel hands over when it lost events: SYN_DROPPED, then the report that ends the drop."""
    sec, usec = int(t), int(t % 1 * 1_000_000)
    return [(sec, usec, ecodes.EV_SYN, ecodes.SYN_DROPPED, 0), (sec, usec, ecodes.EV_SYN, ecodes.SYN_REPORT, 0)]


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Whole records, and the partial one that the next read completes."""
    whole = len(data) - len(data) % EVENT_SIZE
    return data[:whole], data[whole:]


def _open(path: str, grab: bool, device_only: bool = False) -> Source:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ScannerError(f"scanner path {path!r} does not exist") from None
    except OSError as error:  # a loop of links, a file where a directory should be
        raise ScannerError(f"scanner path {path!r}: {error.strerror}") from None
    if device_only and stat.S_ISREG(mode):
        # A node the kernel listed is read live; a regular file there (written to the path while the
        # device was away) would be read as a recording, and read again at every rescan.
        raise ScannerError(f"{path} is a regular file, not a device node")
    try:
        return _open_node(path, mode, grab)
    except PermissionError:
        raise ScannerNoAccess(f'no read access to scanner "{path}" (run as root or add the input group)') from None
    except OSError as error:  # a FIFO or recording the agent may not read
        raise ScannerError(f'cannot open scanner "{path}": {error.strerror}') from None


def _open_node(path: str, mode: int, grab: bool) -> Source:
    if stat.S_ISCHR(mode):
        import evdev

        try:
            device = evdev.InputDevice(path)
        except PermissionError:
            raise ScannerNoAccess(f'no read access to scanner "{path}" (run as root or add the input group)') from None
        except OSError as error:
            raise ScannerError(f'cannot open scanner "{path}": {error.strerror}') from None
        source = Source(path, "evdev", device.fd, device, device.name)
        if grab:
            try:
                source.grab()
            except ScannerError:
                device.close()
                raise
        # Asked here, then the time taken: EVIOCGKEY takes back the key events not yet read, so those are
        # before ``opened_at``, with the rest of a scan under way then (refused as begun unseen).
        source.held_at_open = source.held_keys()
        source.opened_at = time.time()
        os.set_blocking(device.fd, False)
        return source
    if stat.S_ISFIFO(mode):
        return Source(path, "fifo", os.open(path, os.O_RDWR | os.O_NONBLOCK), opened_at=time.time())
    if stat.S_ISREG(mode):
        return Source(path, "file", os.open(path, os.O_RDONLY))
    raise ScannerError(f"scanner path {path!r} is neither an input device, a FIFO nor a recording file")


@contextlib.asynccontextmanager
async def open_source(path: str, *, grab: bool = True, device_only: bool = False) -> AsyncIterator[Source]:
    """Open (and grab) a scanner; released and closed however the block ends.

    Opening reads sysfs and issues ioctls: it runs in a thread, never on the loop.
    """
    source = await asyncio.to_thread(_open, path, grab, device_only)
    logger.info("scanner opened path=%s kind=%s name=%r grabbed=%s", path, source.kind, source.name, source.grabbed)
    try:
        yield source
    finally:
        source.close()


async def read_events(path: str) -> AsyncIterator[InputEvent]:
    """Every event of the scanner at ``path``: ``open_source`` for callers that need only the events."""
    async with open_source(path) as source:
        async for event in source.events():
            yield event
