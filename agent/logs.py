"""Operator logging: to journald when systemd runs us, else to standard error; one line per event.

In the journal each line also carries fields a program can select on: the box's ``DEVICE_ID``,
and, for a line about an event, ``EVENT_SEQ``, ``EVENT_KIND`` and ``SCANNER``
(``journalctl -u counterbox-agent EVENT_KIND=refused``). Never its code, product or amount.
"""

from __future__ import annotations

import logging
import os
import sys


def journal_handler(sender=None) -> logging.Handler:
    """The journald handler; ``sender`` replaces systemd's (tests)."""
    from systemd.journal import JournalHandler, send

    handler = JournalHandler(SYSLOG_IDENTIFIER="counterbox", sender_function=sender or send)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if os.environ.get("JOURNAL_STREAM"):
        handler = journal_handler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]


class _Device(logging.Filter):
    def __init__(self, device_id: str):
        super().__init__()
        self.device_id = device_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.DEVICE_ID = self.device_id
        return True


def identify(handler: logging.Handler, device_id: str) -> None:
    """Every line through ``handler`` from now on names the box (its journal field DEVICE_ID)."""
    for existing in [f for f in handler.filters if isinstance(f, _Device)]:
        handler.removeFilter(existing)
    handler.addFilter(_Device(device_id))


def identify_all(device_id: str) -> None:
    for handler in logging.getLogger().handlers:
        identify(handler, device_id)


def event_fields(seq: int | None, kind: str, scanner: str | None) -> dict:
    """``extra=`` for a line about one event (or a control that recorded none, no seq): journal
    fields, never its content."""
    fields = {"EVENT_KIND": kind, "SCANNER": scanner}
    if seq is not None:
        fields["EVENT_SEQ"] = seq
    return fields
