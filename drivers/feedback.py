"""Feedback on a box with no screen: a tone or a light, written as input events.

The kernel drives the PC speaker or a buzzer through EV_SND (SND_TONE, value in
Hz, 0 for silence) and keyboard LEDs through EV_LED: both are ``struct
input_event`` writes to /dev/input/eventN, so feedback is tested like the input.

| signal | meaning | tone | light |
|---|---|---|---|
| good | the sale is recorded | one short high beep | one blink |
| attention | recorded, but look (a product not on the price list) | two mid beeps | two blinks |
| error | NOT recorded: scan again (misread, typed not scanned, disk full) | three low beeps | five fast blinks |

    speaker = Feedback("/dev/input/by-path/platform-pcspkr-event-spkr", Output.TONE)
    await speaker.play(Signal.GOOD)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from enum import Enum

from evdev import InputEvent, ecodes

from .input_event import pack

logger = logging.getLogger(__name__)


class Signal(str, Enum):
    GOOD = "good"
    ATTENTION = "attention"
    ERROR = "error"


class Output(str, Enum):
    TONE = "tone"  # EV_SND / SND_TONE: a speaker or buzzer
    LED = "led"  # EV_LED: the scanner's (keyboard) LEDs


# (value, seconds): a tone's frequency in Hz, or an LED's 1/0; each step ends after its duration.
PATTERNS: dict[Output, dict[Signal, list[tuple[int, float]]]] = {
    Output.TONE: {
        Signal.GOOD: [(2700, 0.06), (0, 0.0)],
        Signal.ATTENTION: [(1400, 0.10), (0, 0.08), (1400, 0.10), (0, 0.0)],
        Signal.ERROR: [(440, 0.15), (0, 0.06), (440, 0.15), (0, 0.06), (440, 0.15), (0, 0.0)],
    },
    Output.LED: {
        Signal.GOOD: [(1, 0.20), (0, 0.0)],
        Signal.ATTENTION: [(1, 0.20), (0, 0.15), (1, 0.20), (0, 0.0)],
        Signal.ERROR: [(1, 0.06), (0, 0.06)] * 4 + [(1, 0.06), (0, 0.0)],
    },
}


def _event(type_: int, code: int, value: int) -> bytes:
    now = time.time()
    return pack(InputEvent(int(now), int(now % 1 * 1_000_000), type_, code, value))


class Feedback:
    """Plays signals on one output device, one at a time, without ever holding up a scan."""

    def __init__(self, path: str, output: Output, *, led: int = ecodes.LED_SCROLLL):
        self.path = path
        self.output = output
        self._type, self._code = (ecodes.EV_SND, ecodes.SND_TONE) if output is Output.TONE else (ecodes.EV_LED, led)
        self._lock = asyncio.Lock()
        self._warned = False

    async def play(self, signal: Signal) -> None:
        """Play ``signal``. Opening the device runs in a thread; the writes themselves are
        non-blocking (O_NONBLOCK on an input device: the kernel takes an event or refuses it)."""
        async with self._lock:
            try:
                fd = await asyncio.to_thread(os.open, self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
            except OSError as error:
                self._fault(error)
                return
            on = False
            try:
                for value, seconds in PATTERNS[self.output][signal]:
                    os.write(fd, _event(self._type, self._code, value) + _event(ecodes.EV_SYN, ecodes.SYN_REPORT, 0))
                    on = value != 0
                    if seconds:
                        await asyncio.sleep(seconds)
                self._warned = False
            except OSError as error:
                self._fault(error)
            finally:
                if on:  # cut short (the agent stopping, a write failing): never leave a tone sounding
                    with contextlib.suppress(OSError):
                        os.write(fd, _event(self._type, self._code, 0) + _event(ecodes.EV_SYN, ecodes.SYN_REPORT, 0))
                os.close(fd)

    def _fault(self, error: OSError) -> None:
        # A speaker that is missing is worth one warning, not one per scan.
        (logger.debug if self._warned else logger.warning)("feedback device %s unavailable: %s", self.path, error)
        self._warned = True
