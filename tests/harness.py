"""What tests need beside fixtures: scanner bytes as the kernel writes them, and waiting for real processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time

from drivers.input_event import pack, pack_all
from drivers.recording import type_text


def signed_with_header(payload: bytes, key, header: dict) -> bytes:
    """A compact JWS signed with the right Ed25519 key whose protected header is ``header`` as given
    (what jws.sign would never write: a crit parameter, a kid that is not a string)."""
    import json

    from provisioning import jws

    signing_input = f"{jws.b64url(json.dumps(header).encode())}.{jws.b64url(payload)}"
    return f"{signing_input}.{jws.b64url(key.sign(signing_input.encode()))}".encode()


def examples(n: int) -> int:
    """Hypothesis examples for a property: ``n``, or a tenth of it when mutation testing runs the
    tests once per mutant (mutmut sets MUTANT_UNDER_TEST): a mutant that breaks a property
    fails on the first examples, and the full count is what every other run checks."""
    import os

    return max(20, n // 10) if os.environ.get("MUTANT_UNDER_TEST") else n


def scans(codes: list[str], *, start: float | None = None, key_interval: float = 0.004, **how) -> bytes:
    """The kernel's input_event bytes for a scanner typing each code and Enter."""
    t = time.time() if start is None else start
    events = []
    for code in codes:
        events += type_text(code, start=t, key_interval=key_interval, **how)
        t += key_interval * (len(code) + 1) + 0.3
    return pack_all(events)


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    import os

    if os.environ.get("MUTANT_UNDER_TEST"):
        # Mutation testing runs a test per mutant: what works takes well under a second here, and
        # a mutant that stops delivery should fail in seconds, not in the half-minute a loaded CI gets.
        timeout = min(timeout, 8.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def feed(fifo, data: bytes, timeout: float = 30.0, *, restamp: bool = True) -> None:
    """Write scanner bytes into the agent's FIFO, waiting for the agent to open it (as a plugged-in scanner).

    The events are stamped from now on (``restamp``), gaps kept, as a scanner typing now would be:
    a live source's first burst that began before it was opened is refused, as it should be.
    """
    import errno
    import os

    from drivers.input_event import unpack
    from drivers.recording import restamp as restamped

    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        if restamp:
            data = pack_all(restamped(list(unpack(data)), time.time() + 0.1))
        os.set_blocking(fd, True)
        os.write(fd, data)
    finally:
        os.close(fd)


def price_list(count: int) -> tuple[str, dict[str, tuple[str, int]]]:
    """A price list CSV of ``count`` products with valid EAN-13s, and {barcode: (name, price in fen)}."""
    from drivers.barcode import gs1_check_digit

    items = {}
    for i in range(count):
        body = f"69010{i:07d}"
        items[body + str(gs1_check_digit(body))] = (f"Brand {i} (pack)", 1000 + 37 * i)
    rows = [f"{code},{name},{price // 100}.{price % 100:02d}" for code, (name, price) in items.items()]
    return "barcode,name,price\n" + "\n".join(rows) + "\n", items


def run_main(main, args, stdin: str | None = None):
    """A command line's ``main(argv)`` run in this process, with its output captured as a subprocess's would be."""
    import contextlib
    import io
    import subprocess
    import sys

    import logging

    out, err = io.StringIO(), io.StringIO()
    real_stdin, sys.stdin = sys.stdin, io.StringIO(stdin or "")
    # A command sets up its process's logging (a handler on standard error, as it was then): the process
    # here is the test run's, so it is left as it was found, or later tests' lines go to a closed stream.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's own errors
                code = exit.code
    finally:
        sys.stdin = real_stdin
        root.handlers[:], root.level = handlers, level
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


class LiveScanner:
    """A scanner typing in real time into the agent's FIFO, each key stamped when it is written.

    The FIFO is held open read-write, so what is typed while the agent is down waits in
    the pipe for the next agent, as keys wait in a reopened device's buffer.
    """

    def __init__(self, fifo, session):
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.set_blocking(self.fd, True)
        self.session = session
        self.thread = threading.Thread(target=self._type)
        self.done = threading.Event()
        self.started: list[float] = []  # when each scan's first key was typed

    def _type(self):
        for code, how in self.session:
            self.started.append(time.time())
            events = type_text(code, start=time.time(), **how)
            for event in events:  # one key at a time, at the pace its stamps say
                delay = event.timestamp() - time.time()
                if delay > 0:
                    time.sleep(delay)
                os.write(self.fd, pack(event))
            time.sleep(0.12)  # the next customer
        self.done.set()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join()
        os.close(self.fd)


@contextlib.contextmanager
def small_filesystem(mountpoint, size: str):
    """A real filesystem of ``size`` (tmpfs, "160k") at ``mountpoint``, made for it: a disk that fills for real."""
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
