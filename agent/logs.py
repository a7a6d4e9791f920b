"""Operator logging: to journald when systemd runs us, else to standard error; one line per event."""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if os.environ.get("JOURNAL_STREAM"):
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="counterbox")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
