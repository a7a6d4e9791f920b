"""The agent as a systemd service (Type=notify): readiness, a status line, and the watchdog.

    service = Service.from_environment()      # does nothing when systemd did not start us
    service.ready("waiting for activation")   # READY=1 and STATUS=...
    service.status("online, 0 events queued")
    await service.watchdog()                  # WATCHDOG=1 from the event loop itself, until cancelled

The watchdog pings come from a task on the agent's own event loop, so a loop that hangs (a
callback that never returns) stops them, and systemd restarts the agent after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Service:
    socket: str | None = None  # $NOTIFY_SOCKET: None when not run by systemd as Type=notify
    watchdog_interval: float | None = None  # seconds between pings: half of WatchdogSec
    _ready: bool = False
    _status: str = field(default="", repr=False)

    @classmethod
    def from_environment(cls) -> "Service":
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watching = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        return cls(os.environ.get("NOTIFY_SOCKET") or None, int(usec) / 2e6 if watching else None)

    def _notify(self, state: str) -> None:
        if self.socket is None:
            return
        from systemd import daemon  # imported only under systemd

        daemon.notify(state)

    def ready(self, status: str) -> None:
        """The store is open and the broker link started: tell systemd, once."""
        if not self._ready:
            self._ready = True
            self._notify(f"READY=1\nSTATUS={status}")
            self._status = status
        else:
            self.status(status)

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._notify(f"STATUS={status}")

    def stopping(self) -> None:
        self._notify("STOPPING=1")

    async def watchdog(self) -> None:
        if self.socket is None or self.watchdog_interval is None:
            return
        while True:
            self._notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
