"""The scanners at the counter: found, taken, decoded each on its own, plugged and unplugged at will.

- Configured paths are read for as long as the agent runs, reopened when they
  come back.
- Discovery looks at /dev/input every ``rescan_interval`` and takes scanners
  by USB id, by name, or by what they say of themselves; a keyboard that says
  nothing is watched, not grabbed, and taken once it types a barcode at
  scanner speed, so the shop's own keyboard is never taken.
- Every scanner has its own decoder: events from two scanners never mix.
- A scanner unplugged mid-scan loses that partial barcode, with a warning;
  the others go on.

Each result is handed to ``on_scan`` (the counter) and answered with a
feedback signal: a tone on the box's speaker, or a blink of the scanner's LED.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from evdev import ecodes

from drivers.decoder import Decoder, DecoderSettings, NotABarcode, Scan
from drivers.discovery import InputDeviceInfo, Rules, classify, feedback_devices, list_devices
from drivers.feedback import Feedback, Output, Signal
from drivers.keymap import Keymap, load_keymap
from drivers.keypad import Keypad, Keypress
from drivers.errors import KeymapError, ScannerError, ScannerGone, ScannerNoAccess
from drivers.reader import open_source

from .config import FeedbackConfig, ScannerConfig

logger = logging.getLogger(__name__)

# Records a scan (or a refused one) and says how it went; raises nothing for a scan it could
# not record (that is Signal.ERROR). Called in the reader's turn of the loop: what it hands on before
# it returns (the daemon's store takes the scan then) is not held up by the loop's other work.
OnScan = Callable[[Scan | NotABarcode | Keypress], Awaitable[Signal]]

# A keyboard only watched (the shop's own, as far as anyone knows) is taken by a barcode of at least
# this many characters typed at a scanner's pace: a person may hit a key or two and Enter that fast,
# hardly four (a product's barcode has 8 or more, the control sheet's codes 4 or more).
TAKEN_AT = 4
# Records that a scanner was taken or went away: {"state", "scanner", "driver", "name", "usb_id", ...}.
OnDevice = Callable[[dict], Awaitable[None]]

# Scans handed to the counter and not yet answered. Past this many the agent reads no more until
# the store catches up (a disk that stalls), so memory stays bounded whatever arrives at once;
# keys not read wait in the kernel's buffer, and a buffer that overflows is a SYN_DROPPED,
# which refuses the scans it cut. A person scanning never comes near it; a burst from a recording
# or a backlog does, and one full group commit's worth (storage.store.MAX_GROUP) keeps the store
# committing in large groups meanwhile.
MAX_UNANSWERED = 256
HID_POS_READ_TIMEOUT = 50  # ms a read waits in its thread; bounds how long stopping and idle checks take
UNPLUGGED = "the scanner was unplugged mid-scan"
READ_FAILED = "a read from the scanner failed: what it sent may be lost"
# udev gives a new node its group a moment after the kernel lists it (0.5 s seen on a loaded box): until
# then the node is tried again at each look without a word, and only one still unreadable is said.
UDEV_SETTLE = 3.0  # seconds
HID_POS_RETRY_MOST = 30.0  # seconds, at most, between attempts to take a HID POS scanner that keeps failing

_LEDS = {"num": ecodes.LED_NUML, "caps": ecodes.LED_CAPSL, "scroll": ecodes.LED_SCROLLL}


@dataclass(kw_only=True)
class Scanners:
    config: ScannerConfig
    feedback: FeedbackConfig
    on_scan: OnScan
    on_device: OnDevice | None = None
    usb_backend: object = None  # pyusb's backend; None: libusb, as on the box
    usb_sysfs: Path = Path("/sys/bus/usb/devices")
    _active: dict[str, asyncio.Task] = field(default_factory=dict)  # discovered evdev nodes being read
    _failing: set[str] = field(default_factory=set)  # discovered nodes whose last attempt failed
    _listed_at: dict[str, float] = field(default_factory=dict)  # when each listed node was first seen (monotonic)
    _hid_active: dict[str, asyncio.Task] = field(default_factory=dict)  # HID POS scanners ("usb:BUS-ADDRESS")
    _hid_failures: dict[str, int] = field(default_factory=dict)  # USB errors in a row, per HID POS scanner
    _said_unheard: bool = False  # that a HID POS scanner's refusals go unsignalled on a box with no speaker
    _speaker: Feedback | None = None
    _last_output: Feedback | None = None
    _background: set[asyncio.Task] = field(default_factory=set)
    _keymaps: dict[tuple[str, str], Keymap | KeymapError] = field(default_factory=dict)
    _unanswered: int = 0
    _answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        self._speaker = await asyncio.to_thread(self._find_speaker)
        try:
            async with asyncio.TaskGroup() as group:
                for path in self.config.paths:
                    group.create_task(self._configured(path))
                if self.config.usb_ids or self.config.names or self.config.auto:
                    group.create_task(self._discover(group))
                if self.config.hid_pos:
                    group.create_task(self._discover_hid_pos(group))
        finally:
            # A signal cut short must not leave a tone sounding: play() silences the output as it ends.
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- feedback ---------------------------------------------------------------------

    def _find_speaker(self) -> Feedback | None:
        cfg = self.feedback
        if cfg.output in ("none", "led"):
            return None
        if cfg.path:
            return Feedback(cfg.path, Output.TONE)
        speakers = feedback_devices(list_devices(self.config.dev_input, self.config.sys_class))
        if speakers:
            logger.info("feedback: tones on %s", speakers[0].describe())
            return Feedback(speakers[0].node, Output.TONE)
        logger.info("feedback: no device can sound a tone; %s", "scanner LEDs" if cfg.output == "auto" else "none")
        return None

    def _feedback_for(self, path: str, kind: str) -> Feedback | None:
        if self._speaker is not None:
            return self._speaker
        if self.feedback.output in ("led", "auto") and kind == "evdev":
            return Feedback(path, Output.LED, led=_LEDS[self.feedback.led])
        return None

    def _signal(self, output: Feedback | None, signal: Signal) -> None:
        if output is not None:
            self._last_output = output
            self._spawn(output.play(signal))  # never holds up the next scan

    def announce(self, signal: Signal) -> None:
        """A signal that answers no scan (a mode that timed out): on the speaker, or the LEDs of the
        scanner used last."""
        self._signal(self._speaker or self._last_output, signal)

    def _record(self, output: Feedback | None, result: Scan | NotABarcode) -> None:
        """Hand a scan to the counter and answer it once durable, without holding up the next one:
        scans that arrive together are recorded together (one commit), in the order they came."""
        answer = self.on_scan(result)  # the counter has it now: the awaitable only answers it

        async def record() -> None:
            try:
                self._signal(output, await answer)
            finally:
                self._unanswered -= 1
                self._answered.set()

        self._unanswered += 1
        self._spawn(record())

    async def _caught_up(self) -> None:
        """Wait while MAX_UNANSWERED scans wait for the counter (see there)."""
        while self._unanswered >= MAX_UNANSWERED:
            self._answered.clear()
            await self._answered.wait()

    # -- sources ----------------------------------------------------------------------

    async def _configured(self, path: str) -> None:
        warned = False
        while True:
            try:
                await self._read(path, await asyncio.to_thread(self.config.settings_for, path))
                warned = False
                if _is_recording(path):
                    logger.info("scanner recording %s fully read", path)
                    return
            except ScannerError as error:
                if _is_recording(path):  # read once, from its start: again would book its scans twice
                    logger.warning("scanner recording %s not read to its end: %s", path, error)
                    return
                if not warned:
                    logger.warning("scanner %s unavailable: %s; retrying every %.1fs", path, error, self.config.retry_interval)
                    warned = True
            await asyncio.sleep(self.config.retry_interval)

    async def _discover(self, group: asyncio.TaskGroup) -> None:
        rules = Rules(self.config.usb_ids, self.config.names, self.config.auto)
        ignored: set[str] = set()
        while True:
            devices, configured = await asyncio.to_thread(self._list_devices)
            present = {device.node for device in devices}
            now = time.monotonic()
            self._listed_at = {node: self._listed_at.get(node, now) for node in present}
            for node in [n for n, task in self._active.items() if task.done() or n not in present]:
                self._active.pop(node)
            self._failing &= present
            ignored &= present
            for device in devices:
                if device.node in self._active or device.node in ignored or device.node in configured:
                    continue
                reason = classify(device, rules)
                if reason is None:
                    ignored.add(device.node)
                    logger.debug("input device left alone: %s", device.describe())
                    continue
                self._active[device.node] = group.create_task(self._discovered(device, reason))
            await asyncio.sleep(self.config.rescan_interval)

    def _list_devices(self) -> tuple[list[InputDeviceInfo], set[str]]:
        """The input devices, and the nodes the configured paths lead to now: a path is read by its own
        reader, with its own settings, and a /dev/input/by-id link names a node that changes on each plug."""
        configured = {os.path.realpath(path) for path in self.config.paths}
        return list_devices(self.config.dev_input, self.config.sys_class), configured

    async def _discovered(self, device: InputDeviceInfo, reason: str) -> None:
        watch = reason == "watch"
        announce = "%s %s: %s" % ("watching" if watch else "scanner taken", device.describe(),
                                  "a USB keyboard; taken if it types at scanner speed" if watch else reason)
        settings = await asyncio.to_thread(self.config.settings_for, device.node, device.usb_id, device.name)
        identity = {"name": device.name, "usb_id": device.usb_id, "reason": reason}
        if device.usb:
            identity.update(manufacturer=device.usb.manufacturer, product=device.usb.product_name, serial=device.usb.serial)
        try:
            await self._read(device.node, settings, watch=watch, identity=identity, announce=announce)
            self._failing.discard(device.node)
        except ScannerGone as error:
            self._failing.discard(device.node)
            self._listed_at.pop(device.node, None)  # the same name may come back as a new device: udev's again
            logger.warning("scanner %s lost: %s", device.node, error)
        except ScannerNoAccess as error:
            if time.monotonic() - self._listed_at.get(device.node, 0.0) < UDEV_SETTLE:
                logger.debug("scanner %s not readable yet (udev may not be done with it): %s", device.node, error)
            else:
                self._failed(device.node, error)
        except ScannerError as error:
            self._failed(device.node, error)

    def _failed(self, node: str, error: ScannerError) -> None:
        # Just after an unplug, sysfs may still list a node whose device is gone: never taken, not lost.
        # One that cannot be taken is tried again at each rescan, and said once until it works.
        gone = not os.path.exists(node)
        quiet = gone or node in self._failing
        self._failing.add(node)
        (logger.debug if quiet else logger.warning)("scanner %s %s: %s", node,
                                                     "gone before it was opened" if gone else "not taken", error)

    async def _report(self, state: str, scanner: str, driver: str, identity: dict) -> None:
        if self.on_device is not None:
            await self.on_device({"state": state, "scanner": scanner, "driver": driver, **identity})

    async def _keymap(self, settings: DecoderSettings) -> Keymap:
        """The compiled layout, shared by the scanners that type in it; compiled in a thread. A layout that
        cannot be compiled (not known to xkeyboard-config) is that scanner's fault, not the agent's: the
        scanner is not taken (ScannerError), and the others go on; the failure is kept, not tried again."""
        name = (settings.layout, settings.variant)
        if name not in self._keymaps:
            try:
                self._keymaps[name] = await asyncio.to_thread(load_keymap, *name)
            except KeymapError as error:
                self._keymaps[name] = error
        keymap = self._keymaps[name]
        if isinstance(keymap, KeymapError):
            raise ScannerError(f"its layout cannot be used: {keymap}")
        return keymap

    async def _read(self, path: str, settings: DecoderSettings, *, watch: bool = False,
                    identity: dict | None = None, announce: str = "") -> None:
        """Read one source until it ends; raises ScannerError when it cannot be read or goes away.
        ``announce`` is logged once the source is open (a device that vanished first is not announced)."""
        discovered = identity is not None  # a node the kernel listed, not a configured path
        decoder = Keypad(path) if settings.keypad else Decoder(path, settings, await self._keymap(settings))
        loop = asyncio.get_running_loop()
        identity = identity or {}
        async with open_source(path, grab=not watch, device_only=discovered) as source:
            if announce:
                logger.info("%s", announce)
            if source.kind != "file":  # a recording is a whole session from its start; a live source is not
                decoder.opened(source.opened_at, held=source.held_at_open)
            output = self._feedback_for(path, source.kind)
            idle: asyncio.TimerHandle | None = None
            if not watch:
                await self._report("taken", path, source.kind, identity)

            async def handle(result: Scan | NotABarcode | Keypress | None) -> None:
                nonlocal watch
                if result is None:
                    return
                if isinstance(result, Keypress):
                    if not watch:  # a keyboard only watched is the shop's own: its keys are none of ours
                        self._record(output, result)
                    return
                if isinstance(result, NotABarcode):
                    if not watch:  # else a person typing on the shop's keyboard: none of our business
                        self._record(output, result)
                    return
                if watch:
                    if len(result.text) < TAKEN_AT:  # a key or two a person hit quickly: none of our business
                        return
                    source.grab()
                    watch = False
                    logger.info("scanner taken %s: typed a barcode at %.1f ms per key", path, result.slowest_key * 1000)
                    await self._report("taken", path, source.kind, {**identity, "reason": "typed at scanner speed"})
                self._record(output, result)

            # One timer per quiet spell, not one per key: it looks at when the last event came.
            last_event = loop.time()

            def on_idle() -> None:
                nonlocal idle
                remaining = last_event + decoder.idle_after - loop.time()
                if remaining > 0 or source.has_input():  # keys waiting to be read are no pause
                    idle = loop.call_later(max(remaining, 0.01), on_idle)
                    return
                result = decoder.idle(time.time())
                idle = loop.call_later(decoder.idle_after, on_idle) if decoder.pending else None
                if result is not None:
                    self._spawn(handle(result))

            try:
                async for batch in source.batches():
                    last_event = loop.time()
                    for result in decoder.feed_all(batch, held_keys=source.held_keys):
                        await handle(result)
                    # A recording's pauses are in its own times, which the decoder reads; the agent's clock
                    # says nothing of them (a read of it cut mid-scan while the counter was slow is no pause).
                    if idle is None and decoder.pending and source.kind != "file":
                        idle = loop.call_later(decoder.idle_after, on_idle)
                    # Between batches, never inside one: events taken from the kernel and not yet
                    # decoded would look to the idle timer like a pause.
                    await self._caught_up()
                if source.kind == "file":  # the recording's end: what it holds ends there, said like any other
                    await handle(decoder.ended())
            except ScannerGone as gone:
                partial = decoder.unplugged()
                logger.warning("%s%s", gone, "" if partial is None or watch else
                               f" mid-scan: the partial scan ({len(partial)} characters) is refused")
                if not watch:
                    if partial is not None:
                        await handle(NotABarcode(partial, path, UNPLUGGED, bare=decoder.bare(partial)))
                    await self._report("removed", path, source.kind, identity)
                raise
            finally:
                if idle is not None:
                    idle.cancel()

    # -- HID POS scanners (pyusb) ----------------------------------------------------------

    async def _discover_hid_pos(self, group: asyncio.TaskGroup) -> None:
        # pyusb is imported only where HID POS scanners are looked for.
        import usb.core

        from drivers import hidpos

        warned = False
        while True:
            try:
                devices = await asyncio.to_thread(hidpos.find, self.usb_backend, self.usb_sysfs)
                warned = False
            except usb.core.NoBackendError:
                reason = await asyncio.to_thread(hidpos.no_backend_reason)
                logger.warning("HID POS scanners are not looked for: %s", reason)
                return
            except usb.core.USBError as error:
                (logger.debug if warned else logger.warning)("looking for HID POS scanners failed: %s", error)
                warned = True
                await asyncio.sleep(self.config.rescan_interval)
                continue
            present = {f"usb:{d.bus}-{d.address}" for d in devices}
            for key in [k for k, task in self._hid_active.items() if task.done() or k not in present]:
                self._hid_active.pop(key)
            for key in [k for k in self._hid_failures if k not in present]:
                self._hid_failures.pop(key)
            for device in devices:
                key = f"usb:{device.bus}-{device.address}"
                if key not in self._hid_active:
                    self._hid_active[key] = group.create_task(self._hid_pos(device))
            await asyncio.sleep(self.config.rescan_interval)

    async def _hid_pos(self, device) -> None:
        from drivers import hidpos

        loop = asyncio.get_running_loop()
        # Reading its strings and claiming it are USB control transfers: in threads, never on the loop.
        scanner = await asyncio.to_thread(hidpos.HidPosScanner, device, self.usb_sysfs)
        assembler = hidpos.ReportAssembler(scanner.source)
        # Its reads wait in a thread of their own, so they never queue behind other blocking work
        # and a read that times out really means the scanner sent nothing for that long.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hid-pos {scanner.source}")
        read: asyncio.Future | None = None
        claimed = False
        try:
            await asyncio.to_thread(scanner.claim)
            claimed = True
            try:
                logger.info("scanner taken %s: HID POS (usage page 0x8C)", scanner.name)
                if self._speaker is None and not self._said_unheard:
                    self._said_unheard = True
                    logger.warning("scanner %s answers with its own beep alone: the box has no speaker, and a HID "
                                   "POS scanner no LED the box can blink, so a scan refused is not signalled",
                                   scanner.source)
                await self._report("taken", scanner.source, "hid-pos", scanner.identity)
                assembler.opened(time.time())
                while True:
                    read = loop.run_in_executor(reader, scanner.read_report, HID_POS_READ_TIMEOUT)
                    report = await asyncio.shield(read)
                    if report is not None:  # it reads a report: the errors before are over (a quiet read says not)
                        self._hid_failures.pop(scanner.source, None)
                    now = time.time()
                    result = assembler.feed(report, now) if report is not None else assembler.idle(now)
                    if result is not None:
                        self._record(self._speaker, result)
                        await self._caught_up()
            finally:
                # Stopping: let the read in its thread end (within its timeout) before the interface is released.
                if read is not None and not read.done():
                    await asyncio.wait([read])
                await asyncio.to_thread(scanner.release)
        except ScannerGone as gone:
            partial = assembler.unplugged()
            logger.warning("%s%s", gone, "" if partial is None else
                           f" mid-scan: the partial scan ({len(partial)} characters) is refused")
            if partial is not None:
                self._record(self._speaker, NotABarcode(partial, scanner.source, UNPLUGGED))
            await self._report("removed", scanner.source, "hid-pos", scanner.identity)
        except ScannerError as error:
            failures = self._hid_failures[scanner.source] = self._hid_failures.get(scanner.source, 0) + 1
            if claimed:
                # A read that failed (an endpoint stalled, a report longer than asked for, a cable pulled as
                # libusb's I/O error) may have lost a report: the scan under way, or one whole, is refused
                # (the retailer hears the error and scans again), and the scanner is taken again.
                self._record(self._speaker, NotABarcode(assembler.unplugged() or "", scanner.source, READ_FAILED))
                await self._report("removed", scanner.source, "hid-pos", scanner.identity)
            # Taken again after a pause that doubles while it fails (its place kept meanwhile): a scanner that
            # fails at every read is neither claimed twice a second nor recorded taken and removed for ever.
            pause = min(self.config.rescan_interval * 2 ** (failures - 1), HID_POS_RETRY_MOST)
            (logger.warning if failures == 1 else logger.debug)("%s; taken again in %.1f s", error, pause)
            await asyncio.sleep(pause)
        finally:
            await asyncio.to_thread(reader.shutdown)

    def _spawn(self, coroutine) -> None:
        """Run ``coroutine`` beside the scanners; cancelled with them when the agent stops."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _is_recording(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
