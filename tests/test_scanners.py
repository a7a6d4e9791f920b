"""Discovery, hotplug, several scanners, feedback: the agent's scanner manager with kernel-shaped devices."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pickle
import tempfile
import time
import traceback
from pathlib import Path

import pytest
from evdev import ecodes as e

from agent.config import DeviceOverride, FeedbackConfig, ScannerConfig
from agent.scanners import READ_FAILED, UDEV_SETTLE, UNPLUGGED
from drivers.hidpos import BROKE_OFF
from drivers.decoder import CUT_OFF, DecoderSettings, NotABarcode, Scan
from drivers.discovery import Rules, classify, list_devices
from drivers.feedback import PATTERNS, Output, Signal
from drivers.input_event import pack_all, unpack
from drivers.recording import restamp

from .harness import scans
from .kernel_sysfs import Machine, bitmask

SCANNER = dict(name="Honeywell Imaging & Mobility 1900", manufacturer="Honeywell Imaging & Mobility",
               usb_product="1900G Area-Imaging Scanner", serial="19283746")


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


class Counter:
    """Stands in for the agent's counter: records what it is handed and answers with a signal."""

    def __init__(self):
        self.scans: list[Scan] = []
        self.refused: list[NotABarcode] = []

    async def __call__(self, scan: Scan | NotABarcode) -> Signal:
        if isinstance(scan, NotABarcode):
            self.refused.append(scan)
            return Signal.ERROR
        self.scans.append(scan)
        return Signal.GOOD if scan.text.isdigit() else Signal.ATTENTION


@contextlib.asynccontextmanager
async def running(machine: Machine, *, feedback=FeedbackConfig(output="none"), usb: dict | None = None, **scanner):
    """The scanner manager over ``machine``'s input devices; HID POS scanners only through ``usb`` (a test
    backend, its sysfs, on_device), never this machine's own USB devices."""
    counter = Counter()
    scanner.setdefault("hid_pos", usb is not None)
    scanner.setdefault("rescan_interval", 0.1)
    config = ScannerConfig(dev_input=machine.dev_input, sys_class=machine.sys_class, **scanner)
    from agent.scanners import Scanners

    task = asyncio.create_task(Scanners(config=config, feedback=feedback, on_scan=counter, **(usb or {})).run())
    try:
        yield counter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _open_writer(path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


async def write(path, data: bytes, timeout: float = 5.0, *, stamp: bool = True) -> float:
    """Write to a device node once the agent has opened it, the events stamped from now on as a
    device stamps its keys (``stamp``); return how long the opening took."""
    started = time.monotonic()
    fd = await asyncio.to_thread(_open_writer, path, timeout)
    waited = time.monotonic() - started
    if stamp:
        data = pack_all(restamp(list(unpack(data)), time.time() + 0.06))
    try:
        os.set_blocking(fd, True)
        await asyncio.to_thread(os.write, fd, data)
    finally:
        os.close(fd)
    return waited


async def until(condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_sysfs_bitmasks_are_read_as_the_kernel_writes_them(machine):
    machine.plug(3, "Scanner", keys={e.KEY_1, e.KEY_0, e.KEY_ENTER, e.KEY_KPENTER})
    (device,) = list_devices(machine.dev_input, machine.sys_class)
    assert device.is_keyboard and device.has("key", e.KEY_KPENTER) and not device.has("key", e.KEY_A)
    assert bitmask({0, 64, 129}) == "2 1 1"


@pytest.mark.parametrize(
    "plugged,rules,expected",
    [
        (SCANNER, Rules(), "USB strings say scanner"),
        (dict(name="USB Keyboard", usb_product="Barcode Reader"), Rules(), "USB strings say scanner"),
        (dict(name="Dell KB216 Wired Keyboard", vendor=0x413C, product=0x2113), Rules(), "watch"),
        (dict(name="Dell KB216 Wired Keyboard", vendor=0x413C, product=0x2113), Rules(auto=False), None),
        (dict(name="AT Translated Set 2 keyboard", bustype=0x11), Rules(), None),
        (dict(name="Logitech USB Optical Mouse", keys={e.BTN_LEFT, e.BTN_RIGHT}), Rules(), None),
        (dict(name="Generic HID", vendor=0x05E0, product=0x1200), Rules(usb_ids=("05e0:1200",), auto=False),
         "configured USB id 05e0:1200"),
        (dict(name="Newland NLS-HR22 Barcode"), Rules(names=("Newland*",), auto=False), "name matches 'Newland*'"),
        (dict(name="MagTek USB Swipe Reader", usb_product="Magnetic Card Reader"), Rules(), None),
        (dict(name="ACS ACR122U PICC Interface", usb_product="RFID reader"), Rules(), None),
        (dict(name="Yubico YubiKey OTP+FIDO+CCID"), Rules(), None),
        (dict(name="MagTek USB Swipe Reader", vendor=0x0801, product=0x0001), Rules(usb_ids=("0801:0001",)),
         "configured USB id 0801:0001"),
    ],
    ids=["honeywell", "usb-strings", "plain-keyboard", "plain-keyboard-auto-off", "ps2-keyboard", "mouse",
         "usb-id", "name-glob", "card-swipe", "rfid", "yubikey", "card-swipe-configured"],
)
def test_what_makes_a_device_a_scanner(machine, plugged, rules, expected):
    machine.plug(4, **plugged)
    (device,) = list_devices(machine.dev_input, machine.sys_class)
    assert classify(device, rules) == expected


def test_a_scanner_plugged_in_is_taken_within_a_second_and_named_in_the_log(machine, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        async with running(machine) as counter:
            await asyncio.sleep(0.3)
            node = machine.plug(5, **SCANNER)
            waited = await write(node, scans(["6901028075831"]))
            await until(lambda: counter.scans)
            return waited, counter.scans

    waited, taken = asyncio.run(scenario())
    assert waited < 1.0
    assert [s.text for s in taken] == ["6901028075831"]
    assert ("scanner taken " + str(machine.node(5)) + " 'Honeywell Imaging & Mobility 1900' 0c2e:0b61 "
            "'Honeywell Imaging & Mobility' '1900G Area-Imaging Scanner' serial '19283746': USB strings say scanner") in caplog.text


def test_with_the_default_configuration_a_scanner_plugged_in_is_taken_within_a_second(machine):
    """As README.md promises; the default look for new scanners is what keeps it."""
    default = ScannerConfig().rescan_interval

    async def scenario():
        async with running(machine, rescan_interval=default):
            await asyncio.sleep(default * 1.5)  # plugged in between two looks, at the worst moment
            started = time.monotonic()
            node = machine.plug(5, **SCANNER)
            await asyncio.to_thread(_open_writer, node, 5.0)  # the agent opened it
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_scanner_unplugged_mid_scan_loses_only_that_barcode_and_resumes_when_replugged(machine, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        async with running(machine) as counter:
            node = machine.plug(6, **SCANNER)
            other = machine.plug(16, **{**SCANNER, "serial": "other"})
            await write(node, scans(["96385074"]))
            await until(lambda: len(counter.scans) == 1)
            await write(node, scans(["6901028075831"])[: 24 * 3 * 8])  # eight key presses, then the cable is pulled
            await asyncio.sleep(0.2)
            machine.unplug(6)
            await until(lambda: counter.refused and "was removed" in caplog.text)
            await write(other, scans(["6901028075831"]))  # the other scanner at the counter goes on
            await until(lambda: len(counter.scans) == 2)
            node = machine.plug(6, **SCANNER)
            await write(node, scans(["40063812"]))
            await until(lambda: len(counter.scans) == 3)
            return counter

    counter = asyncio.run(scenario())
    assert [(s.source, s.text) for s in counter.scans] == [
        (str(machine.node(6)), "96385074"), (str(machine.node(16)), "6901028075831"), (str(machine.node(6)), "40063812")]
    # Refused whole, whichever came first: the cut-off burst's pause, or the unplug itself.
    assert [(r.source, r.text) for r in counter.refused] == [(str(machine.node(6)), "6901")]
    assert counter.refused[0].reason in (CUT_OFF, UNPLUGGED)
    assert "6901" not in caplog.text  # logs name events, never what was scanned


def test_two_scanners_interleaved_never_mix(machine):
    async def scenario():
        async with running(machine) as counter:
            a = machine.plug(7, **SCANNER)
            b = machine.plug(8, **{**SCANNER, "serial": "555"})
            await asyncio.sleep(0.3)  # both taken and open
            # Stamped as typed, both at once: the halves reach the agent interleaved.
            code_a, code_b = scans(["6901028075831"], start=time.time()), scans(["96385074"], start=time.time())
            half_a, half_b = len(code_a) // 2 // 24 * 24, len(code_b) // 2 // 24 * 24
            await write(a, code_a[:half_a], stamp=False)
            await write(b, code_b[:half_b], stamp=False)
            await write(a, code_a[half_a:], stamp=False)
            await write(b, code_b[half_b:], stamp=False)
            await until(lambda: len(counter.scans) == 2)
            return counter.scans

    assert sorted((s.source, s.text) for s in asyncio.run(scenario())) == [
        (str(machine.node(7)), "6901028075831"), (str(machine.node(8)), "96385074")]


def test_the_shops_keyboard_is_watched_not_taken_until_it_types_like_a_scanner(machine, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        async with running(machine) as counter:
            node = machine.plug(9, "Dell KB216 Wired Keyboard", vendor=0x413C, product=0x2113)
            await write(node, scans(["6901028075831"], key_interval=0.15))  # a person typing
            await asyncio.sleep(0.3)
            typed = list(counter.scans)
            await write(node, scans(["96385074"]))  # a scanner that calls itself a keyboard
            await until(lambda: counter.scans)
            return typed, counter.scans

    typed, taken = asyncio.run(scenario())
    assert typed == []
    assert [s.text for s in taken] == ["96385074"]
    assert f"watching {machine.node(9)} 'Dell KB216 Wired Keyboard'" in caplog.text
    assert f"scanner taken {machine.node(9)}: typed a barcode at 4.0 ms per key" in caplog.text


def test_the_shops_keyboard_is_not_taken_by_a_key_or_two_a_person_hits_quickly(machine, caplog):
    """A person may hit a key or two and Enter at a scanner's pace; never a barcode's length."""
    caplog.set_level(logging.INFO)

    async def scenario():
        async with running(machine) as counter:
            node = machine.plug(9, "Dell KB216 Wired Keyboard", vendor=0x413C, product=0x2113)
            await write(node, scans(["7", "42", "CB:"]))  # each with its Enter, 4 ms per key
            await asyncio.sleep(1.5)
            quick = list(counter.scans)
            await write(node, scans(["CB:0"]))  # the control sheet's shortest code
            await until(lambda: counter.scans)
            return quick, counter.scans

    quick, taken = asyncio.run(scenario())
    assert quick == [] and [s.text for s in taken] == ["CB:0"]
    assert caplog.text.count(f"scanner taken {machine.node(9)}") == 1


def test_devices_that_are_not_scanners_are_never_opened(machine):
    async def scenario():
        async with running(machine, auto=True):
            node = machine.plug(10, "AT Translated Set 2 keyboard", bustype=0x11)
            await asyncio.sleep(0.5)
            with pytest.raises(OSError) as error:
                os.open(node, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: nobody reads it
            return error.value.errno

    assert asyncio.run(scenario()) == errno.ENXIO


def test_configured_ids_take_only_their_scanner_and_its_own_layout(machine):
    from tests.test_decoding import Keys  # (imported here, off the loop: importing a test module compiles it)

    azerty = DeviceOverride("0c2e:0b61", DecoderSettings(layout="fr"))

    async def scenario():
        async with running(machine, auto=False, usb_ids=("0c2e:0b61",), devices=(azerty,)) as counter:
            other = machine.plug(11, "Some Barcode Scanner", vendor=0x1234, product=0x5678)
            node = machine.plug(12, **SCANNER)
            keys = Keys()
            for digit in "96385074":
                keys.tap(getattr(e, f"KEY_{digit}"), shift=True)  # AZERTY digits are shifted
            await write(node, keys.enter().bytes())
            await until(lambda: counter.scans)
            with pytest.raises(OSError):
                os.open(other, os.O_WRONLY | os.O_NONBLOCK)
            return counter.scans

    assert [s.text for s in asyncio.run(scenario())] == ["96385074"]


def test_a_scanner_named_by_its_by_id_link_is_read_once_with_its_own_settings_through_replugs(machine):
    """docs/configuration.md names a scanner by its /dev/input/by-id link. Discovery, comparing names, took
    the node the link leads to as well, with the default layout: two readers of one scanner, and an AZERTY
    scanner's digits sold as the US layout's punctuation."""
    from tests.test_decoding import Keys  # (imported here, off the loop: importing a test module compiles it)

    by_id = machine.dev_input / "by-id"
    by_id.mkdir()
    link = by_id / "usb-Honeywell_1900-event-kbd"

    def azerty(code: str) -> bytes:
        keys = Keys()
        for digit in code:
            keys.tap(getattr(e, f"KEY_{digit}"), shift=True)  # AZERTY digits are shifted
        return keys.enter().bytes()

    async def scenario():
        link.symlink_to(machine.plug(6, **SCANNER))
        async with running(machine, auto=True, paths=(str(link),),
                           devices=(DeviceOverride(str(link), DecoderSettings(layout="fr")),)) as counter:
            await asyncio.sleep(0.5)  # five looks for scanners
            await write(link, azerty("96385074"))
            await until(lambda: counter.scans)
            machine.unplug(6)  # the cable knocked: the scanner comes back as another node, and its link follows
            link.unlink()
            await asyncio.sleep(0.3)
            link.symlink_to(machine.plug(7, **SCANNER))
            await asyncio.sleep(1.5)  # its path tried again (every second), and looks for scanners meanwhile
            await write(link, azerty("40063812"))
            await until(lambda: len(counter.scans) == 2)
            return counter

    counter = asyncio.run(scenario())
    assert [(s.text, s.source) for s in counter.scans] == [("96385074", str(link)), ("40063812", str(link))]
    assert not counter.refused


def test_a_scanner_set_to_a_layout_no_one_knows_is_not_taken_and_the_others_go_on(machine, caplog):
    """A layout xkeyboard-config does not know stopped the whole agent when its scanner was plugged in (and
    under systemd, again at every restart): every other scanner at the counter went down with it."""
    caplog.set_level(logging.INFO)

    async def scenario():
        unknown = DeviceOverride(str(machine.node(7)), DecoderSettings(layout="zz"))
        async with running(machine, devices=(unknown,)) as counter:
            machine.plug(7, **SCANNER)
            good = machine.plug(8, **{**SCANNER, "serial": "other"})
            await until(lambda: "its layout cannot be used" in caplog.text)
            await asyncio.sleep(0.5)  # looked at again, and said no more
            await write(good, scans(["96385074"]))
            await until(lambda: counter.scans)
            return counter

    assert [s.text for s in asyncio.run(scenario()).scans] == ["96385074"]
    assert caplog.text.count("its layout cannot be used") == 1
    assert "keyboard layout 'zz'" in caplog.text


def test_good_attention_and_error_are_distinct_tones_on_the_speaker(machine):
    speaker = machine.plug(20, "PC Speaker", bustype=0x10, keys=(), ev=(e.EV_SYN, e.EV_SND),
                           snd=(e.SND_BELL, e.SND_TONE), node_is_file=True)

    async def scenario():
        async with running(machine, feedback=FeedbackConfig(output="auto")) as counter:
            node = machine.plug(21, **SCANNER)
            await write(node, scans(["96385074"]))  # good
            await until(lambda: len(counter.scans) == 1)
            await asyncio.sleep(0.3)
            await write(node, scans(["PROMO-$5"]))  # attention
            await until(lambda: len(counter.scans) == 2)
            await asyncio.sleep(0.5)
            await write(node, scans(["96385074"], key_interval=0.2))  # typed, not scanned: error
            await asyncio.sleep(1.2)

    asyncio.run(scenario())
    tones = [ev.value for ev in unpack(speaker.read_bytes()) if ev.type == e.EV_SND and ev.code == e.SND_TONE]
    expected = [value for signal in (Signal.GOOD, Signal.ATTENTION, Signal.ERROR)
                for value, _ in PATTERNS[Output.TONE][signal]]
    assert tones == expected
    syns = [ev for ev in unpack(speaker.read_bytes()) if ev.type == e.EV_SYN]
    assert len(syns) == len(tones)  # each tone change is its own report


def test_a_hid_pos_scanner_is_taken_read_and_given_back_when_unplugged(machine, tmp_path, caplog):
    from .usb_backend import FakeBackend, FakeUsbDevice, scanned_data_reports
    from .test_hidpos import publish

    caplog.set_level(logging.INFO)
    sysfs = tmp_path / "usb-devices"
    sysfs.mkdir()
    backend = FakeBackend()

    async def scenario():
        counter = Counter()
        config = ScannerConfig(dev_input=machine.dev_input, sys_class=machine.sys_class, rescan_interval=0.1, auto=False)
        from agent.scanners import Scanners

        task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"), on_scan=counter,
                                            usb_backend=backend, usb_sysfs=sysfs).run())
        try:
            device = publish(sysfs, FakeUsbDevice())
            backend.devices.append(device)
            await until(lambda: "scanner taken usb 1-5" in caplog.text)
            await asyncio.sleep(0.1)  # a pause after the claim: what comes next is seen from its start
            device.send(*scanned_data_reports(b"6901028075831", aim=b"]E0"))
            device.send(*scanned_data_reports(b"0106901028075831\x1d10AB12", aim=b"]C1"))
            await until(lambda: len(counter.scans) == 2)
            device.send(scanned_data_reports(b"Y" * 70, aim=b"]Q1")[0])  # the first half of a long code...
            await asyncio.sleep(0.3)
            device.present = False  # ...and the cable is pulled
            await until(lambda: "was unplugged" in caplog.text)
            replugged = publish(sysfs, FakeUsbDevice(address=9))
            backend.devices.append(replugged)
            await until(lambda: "scanner taken usb 1-9" in caplog.text)
            await asyncio.sleep(0.1)
            replugged.send(*scanned_data_reports(b"96385074", aim=b"]E4"))
            await until(lambda: len(counter.scans) == 3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return counter, device, replugged

    counter, device, replugged = asyncio.run(scenario())
    taken = counter.scans
    assert [(s.text, s.aim, s.source) for s in taken] == [
        ("6901028075831", "]E0", "usb:1-5"), ("0106901028075831\x1d10AB12", "]C1", "usb:1-5"), ("96385074", "]E4", "usb:1-9")]
    assert "HID POS scanner usb 1-5 0c2e:0b6a" in caplog.text
    # The long code's first report alone is refused, whichever came first: the pause or the unplug.
    assert [(r.text, r.source) for r in counter.refused] == [("Y" * 56, "usb:1-5")]
    assert counter.refused[0].reason in (BROKE_OFF, UNPLUGGED)
    assert "YYY" not in caplog.text
    assert device.calls == ["detach 0", "claim 0"]  # unplugged: nothing to give back
    assert replugged.calls == ["detach 0", "claim 0", "release 0", "attach 0"]  # the agent stopped: given back


def _hid_pos_running(machine, tmp_path, **scanner):
    """A HID POS scanner's USB device (pyusb through tests/usb_backend.py) beside ``machine``'s input devices."""
    from .test_hidpos import publish
    from .usb_backend import FakeBackend, FakeUsbDevice

    sysfs = tmp_path / "usb-devices"
    sysfs.mkdir()
    device = publish(sysfs, FakeUsbDevice())
    backend = FakeBackend(device)
    reports = []

    async def on_device(report):
        reports.append((report["state"], report["scanner"]))

    def run():
        return running(machine, usb=dict(on_device=on_device, usb_backend=backend, usb_sysfs=sysfs), **scanner)

    return run, device, reports


def test_a_hid_pos_scanner_is_claimed_once_while_input_devices_are_looked_for_beside_it(machine, tmp_path, caplog):
    """Each look for input devices once dropped the HID POS scanner from those being read, and the next look
    for HID POS scanners claimed it again: twice a second, refused by the kernel (or, where a second claim
    went through, two readers splitting one scanner's reports into refused halves)."""
    from .usb_backend import scanned_data_reports

    caplog.set_level(logging.INFO)
    run, device, reports = _hid_pos_running(machine, tmp_path, auto=True)

    async def scenario():
        async with run() as counter:
            await until(lambda: reports)
            await asyncio.sleep(1.0)  # ten looks of each kind
            for code in (b"6901028075831", b"96385074"):
                device.send(*scanned_data_reports(b"Y" * 60 + code, aim=b"]Q1"))
            await until(lambda: len(counter.scans) == 2)
            return counter

    counter = asyncio.run(scenario())
    assert [s.text[60:] for s in counter.scans] == ["6901028075831", "96385074"] and not counter.refused
    assert device.calls == ["detach 0", "claim 0", "release 0", "attach 0"] and reports == [("taken", "usb:1-5")]
    assert "cannot claim" not in caplog.text


@pytest.mark.parametrize("error", [errno.EIO, errno.EPIPE, errno.EOVERFLOW], ids=errno.errorcode.get)
def test_a_hid_pos_read_that_fails_refuses_the_scan_under_way_and_takes_the_scanner_again(machine, tmp_path, caplog,
                                                                                          error):
    """An I/O error (libusb's word for a cable pulled, often), a stalled endpoint, a report longer than asked
    for: what the scanner sent may be lost. The scan under way was thrown away unheard, the scanner still
    counted as taken."""
    from .usb_backend import scanned_data_reports

    caplog.set_level(logging.INFO)
    run, device, reports = _hid_pos_running(machine, tmp_path, auto=False)

    async def scenario():
        async with run() as counter:
            await until(lambda: reports)
            await asyncio.sleep(0.2)
            # The first of two reports, and the read of the second fails:
            device.send(scanned_data_reports(b"CB:QTY:" + b"Y" * 60, aim=b"]Q1")[0], error)
            await until(lambda: counter.refused and reports[-1] == ("taken", "usb:1-5") and len(reports) == 3)
            await asyncio.sleep(0.2)
            device.send(*scanned_data_reports(b"96385074", aim=b"]E4"))
            await until(lambda: counter.scans)
            return counter

    counter = asyncio.run(scenario())
    assert [(r.text, r.reason) for r in counter.refused] == [("CB:QTY:" + "Y" * 49, READ_FAILED)]
    assert [s.text for s in counter.scans] == ["96385074"]
    assert reports == [("taken", "usb:1-5"), ("removed", "usb:1-5"), ("taken", "usb:1-5")]
    assert f"HID POS scanner usb 1-5 0c2e:0b6a" in caplog.text and f"{errno.errorcode[error]}; taken again in" in caplog.text
    assert "YYY" not in caplog.text


def test_a_hid_pos_scanner_that_keeps_failing_is_taken_again_ever_less_often(machine, tmp_path, caplog):
    """Every read failing (a stalled endpoint that never clears): taken again after 0.1 s, 0.2, 0.4, ... not
    at every look (two claims a second, each recorded taken and removed in the journal, for ever)."""
    caplog.set_level(logging.INFO)
    run, device, reports = _hid_pos_running(machine, tmp_path, auto=False)

    async def scenario():
        async with run() as counter:
            await until(lambda: reports)
            device.send(*[errno.EPIPE] * 1000)
            await asyncio.sleep(2.0)
            return counter

    counter = asyncio.run(scenario())
    claims = device.calls.count("claim 0")
    assert 3 <= claims <= 6, device.calls  # at 0, then after 0.1, 0.3, 0.7, 1.5 s: not twenty
    assert len(counter.refused) == claims  # each read failed may have lost a scan: the retailer hears so
    assert caplog.text.count("EPIPE; taken again in") == 1  # said once, then quietly
    assert caplog.text.count("answers with its own beep alone") == 1


def test_a_hid_pos_scanner_whose_every_report_fails_is_said_once_and_taken_again_ever_less_often(machine, tmp_path,
                                                                                                  caplog):
    """Each scan failing (a report longer than asked for), quiet in between: the quiet reads between counted
    as reading, so each failure was the first again, warned, and the scanner taken again at once."""
    caplog.set_level(logging.INFO)
    run, device, reports = _hid_pos_running(machine, tmp_path, auto=False)

    async def scenario():
        async with run() as counter:
            for attempt in range(1, 4):
                await until(lambda: device.calls.count("claim 0") == attempt)
                await asyncio.sleep(0.15)  # quiet reads
                device.send(errno.EOVERFLOW)
                await until(lambda: len(counter.refused) == attempt)
            return counter

    assert len(asyncio.run(scenario()).refused) == 3
    assert caplog.text.count("EOVERFLOW; taken again in 0.1 s") == 1  # the first said; the pauses after grow, quietly


def test_taking_and_losing_a_scanner_is_reported_with_its_usb_identity(machine):
    reports = []

    async def on_device(report):
        reports.append(report)

    async def scenario():
        from agent.scanners import Scanners

        config = ScannerConfig(dev_input=machine.dev_input, sys_class=machine.sys_class, rescan_interval=0.1, hid_pos=False)
        task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"), on_scan=Counter(),
                                            on_device=on_device).run())
        try:
            machine.plug(30, **SCANNER)
            await until(lambda: len(reports) == 1)
            machine.unplug(30)
            await until(lambda: len(reports) == 2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    identity = {"scanner": str(machine.node(30)), "driver": "fifo", "name": SCANNER["name"], "usb_id": "0c2e:0b61",
                "manufacturer": "Honeywell Imaging & Mobility", "product": "1900G Area-Imaging Scanner",
                "serial": "19283746", "reason": "USB strings say scanner"}
    assert reports == [{"state": "taken", **identity}, {"state": "removed", **identity}]


def test_a_scanner_without_terminator_ends_each_barcode_with_a_pause(machine):
    no_enter = DeviceOverride("0c2e:0b61", DecoderSettings(terminators=(), idle_timeout=0.1))

    async def scenario():
        async with running(machine, devices=(no_enter,)) as counter:
            node = machine.plug(31, **SCANNER)
            await write(node, scans(["96385074"], terminator=None))  # the digits, and no Enter
            await until(lambda: counter.scans)
            await write(node, scans(["40063812"], terminator=None))
            await until(lambda: len(counter.scans) == 2)
            return counter.scans

    assert [s.text for s in asyncio.run(scenario())] == ["96385074", "40063812"]


def test_a_store_that_stalls_holds_reading_back_and_loses_no_scan(machine):
    """However many scans arrive at once, at most MAX_UNANSWERED wait for the counter (the rest
    wait, unread, in the kernel), and every one is recorded once the store catches up."""
    from agent.scanners import MAX_UNANSWERED, Scanners

    from drivers.barcode import gs1_check_digit

    codes = [f"{n:07d}{gs1_check_digit(f'{n:07d}')}" for n in range(3 * MAX_UNANSWERED)]  # EAN-8s
    recorded: list[str] = []
    waiting = 0
    most_waiting = 0
    store_back = asyncio.Event()

    async def stalled_counter(scan):
        nonlocal waiting, most_waiting
        waiting += 1
        most_waiting = max(most_waiting, waiting)
        await store_back.wait()
        waiting -= 1
        recorded.append(scan.text)
        return Signal.GOOD

    async def scenario():
        node = machine.plug(40, **SCANNER)
        config = ScannerConfig(paths=(str(node),), auto=False, hid_pos=False)
        task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"),
                                            on_scan=stalled_counter).run())
        try:
            await asyncio.sleep(0.3)  # the agent has opened its scanner
            # Hundreds of scans' events, built and stamped from now in a thread: not the loop's work.
            data = await asyncio.to_thread(lambda: pack_all(restamp(list(unpack(scans(codes))), time.time() + 0.06)))
            writing = asyncio.create_task(write(node, data, stamp=False))
            await until(lambda: waiting >= MAX_UNANSWERED)
            cpu = time.thread_time()
            await asyncio.sleep(0.3)  # the agent would take more now, if it read on
            held_at, waiting_cpu = most_waiting, time.thread_time() - cpu
            store_back.set()
            await writing
            await until(lambda: len(recorded) == len(codes))
            return held_at, waiting_cpu
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    held_at, waiting_cpu = asyncio.run(scenario())
    # One batch read from the kernel (1,024 events) may finish decoding past the bound.
    assert MAX_UNANSWERED <= held_at < MAX_UNANSWERED + 1024 // 40
    assert recorded == codes
    # Held back, the agent waits: the keys waiting unread do not keep the event loop turning (which
    # would take the processor, and the interpreter lock, from the store it waits for).
    assert waiting_cpu < 0.1, f"the event loop spun for {waiting_cpu:.2f} s of processor time in a 0.3 s wait"


def test_a_regular_file_where_a_listed_scanner_node_should_be_is_never_read_and_said_once(machine, caplog):
    """Written to the path while the device was away: read as a recording, its scan was sold again at
    every rescan (ten times in five seconds). A scanner beside it is taken as always."""
    caplog.set_level(logging.DEBUG)

    async def scenario():
        async with running(machine) as counter:
            stale = machine.plug(4, **SCANNER, node_is_file=True)
            stale.write_bytes(scans(["6901028075831"]))
            node = machine.plug(5, **SCANNER)
            await asyncio.sleep(0.3)
            await write(node, scans(["96385074"]))
            await until(lambda: counter.scans)
            await asyncio.sleep(0.5)  # five rescans more
            return [s.text for s in counter.scans]

    assert asyncio.run(scenario()) == ["96385074"]
    said = [r for r in caplog.records if r.name == "agent.scanners" and "is a regular file, not a device node" in r.message]
    assert [r.levelname for r in said][:1] == ["WARNING"] and all(r.levelname == "DEBUG" for r in said[1:])


def _where_modes_hold(scenario):
    """``scenario(machine)`` run where a node's mode bits keep the agent out, as they keep the box's agent out
    until udev has given a new node the input group: for root, in a child process that became nobody."""
    if os.geteuid() != 0:
        with tempfile.TemporaryDirectory() as root:
            return scenario(Machine(Path(root)))
    answer, told = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's outcome is what the parent asserts)
        try:
            os.setgid(65534)
            os.setuid(65534)
            with tempfile.TemporaryDirectory() as root:
                outcome = ("returned", scenario(Machine(Path(root))))
        except BaseException as error:
            outcome = ("raised", "".join(traceback.format_exception(error)))
        with os.fdopen(told, "wb") as pipe:
            pickle.dump(outcome, pipe)
        os._exit(0)
    os.close(told)
    with os.fdopen(answer, "rb") as pipe:
        kind, value = pickle.load(pipe)
    os.waitpid(child, 0)
    assert kind == "returned", value
    return value


def _unreadable_at_first(readable_after: float | None):
    """A scanner listed with a node the agent may not read, made readable ``readable_after`` seconds later
    (udev done with it) or never; then scanned. The scans taken, and the agent's warnings about it."""
    def scenario(machine):
        said = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = lambda record: said.append((record.levelname, record.getMessage()))
        logger = logging.getLogger("agent.scanners")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

        async def run():
            node = machine.plug(5, **SCANNER)
            node.chmod(0)
            async with running(machine) as counter:
                if readable_after is None:
                    await asyncio.sleep(UDEV_SETTLE + 0.5)
                    return [], said
                await asyncio.sleep(readable_after)
                node.chmod(0o600)
                await write(node, scans(["96385074"]))
                await until(lambda: counter.scans)
                return [s.text for s in counter.scans], said

        try:
            return asyncio.run(run())
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return _where_modes_hold(scenario)


def test_a_new_node_udev_has_not_given_its_group_yet_is_taken_once_it_has_without_a_warning():
    """On a loaded box the agent looked before udev was done, warned "not taken", and took it a look later."""
    taken, said = _unreadable_at_first(readable_after=1.0)
    assert taken == ["96385074"]
    assert [message for level, message in said if level == "WARNING"] == []
    assert any("not readable yet" in message for level, message in said if level == "DEBUG")


def test_a_node_still_unreadable_once_udev_would_be_done_is_said_once():
    taken, said = _unreadable_at_first(readable_after=None)
    warned = [message for level, message in said if level == "WARNING"]
    assert len(warned) == 1 and "not taken: no read access" in warned[0], said


@pytest.mark.parametrize("bad", ["loop", "file/event3", "denied.fifo"])
def test_a_configured_path_the_agent_cannot_open_is_said_and_the_other_scanners_go_on(machine, tmp_path, caplog, bad):
    """A loop of links, a file where a directory should be, a FIFO it may not read: each once ended
    every scanner, and the agent with them, at every start."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "denied.fifo", 0o000)
    os.mkfifo(tmp_path / "good.fifo")
    unreadable = os.geteuid() != 0 or bad != "denied.fifo"  # root reads any FIFO: nothing to refuse then

    async def scenario():
        async with running(machine, paths=(str(tmp_path / bad), str(tmp_path / "good.fifo")), auto=False) as counter:
            await write(tmp_path / "good.fifo", scans(["96385074"]))
            await until(lambda: counter.scans)
            return [s.text for s in counter.scans]

    assert asyncio.run(scenario()) == ["96385074"]
    if unreadable:
        assert f"scanner {tmp_path / bad} unavailable" in caplog.text


# -- a recording: a whole session from its start, by its own times -------------------------------------------------

def _replayed(path, settings: DecoderSettings, *, stall: float = 0.0, expect: int = 0) -> Counter:
    """The recording at ``path`` read by the scanner manager, its counter stalling ``stall`` seconds at first
    (a slow disk) while the reader runs ahead to its bound; until ``expect`` answers, or the recording's end."""
    counter = Counter()
    back = asyncio.Event()

    async def slow(scan):
        await back.wait()
        return await counter(scan)

    async def scenario():
        from agent.scanners import Scanners
        config = ScannerConfig(paths=(str(path),), auto=False, hid_pos=False, decoder=settings)
        task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"), on_scan=slow).run())
        try:
            await asyncio.sleep(stall)
            back.set()
            deadline = time.monotonic() + 30
            while len(counter.scans) + len(counter.refused) < expect and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # nothing more comes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    return counter


@pytest.mark.parametrize("terminators", [(), ("enter", "kp_enter")])
@pytest.mark.parametrize("recorded_ago", [86400.0, -86400.0])  # yesterday; stamped ahead of this box's clock
def test_a_recording_read_while_the_counter_is_slow_books_exactly_its_scans(tmp_path, terminators, recorded_ago):
    """The reader waits for the counter between reads of the file, and a read ends mid-scan: the agent's clock
    took that wait for a pause (a head and a tail booked as two codes, or a whole scan refused)."""
    from agent.scanners import MAX_UNANSWERED
    from drivers.barcode import gs1_check_digit

    codes = ["6901028075831"] + [f"{n:07d}{gs1_check_digit(f'{n:07d}')}" for n in range(2 * MAX_UNANSWERED)]
    path = tmp_path / "session.events"
    path.write_bytes(scans(codes, start=time.time() - recorded_ago, **({} if terminators else {"terminator": None})))
    counter = _replayed(path, DecoderSettings(terminators=terminators, idle_timeout=0.1), stall=0.5,
                        expect=len(codes))
    assert [scan.text for scan in counter.scans] == codes and counter.refused == []


def test_the_last_code_of_a_recording_without_a_terminator_is_ended_by_the_recordings_end(tmp_path):
    path = tmp_path / "session.events"
    path.write_bytes(scans(["96385074", "40063812"], start=time.time() - 3600, terminator=None))
    counter = _replayed(path, DecoderSettings(terminators=(), idle_timeout=0.1), expect=2)
    assert [scan.text for scan in counter.scans] == ["96385074", "40063812"]


def test_a_recording_that_ends_mid_scan_refuses_that_scan(tmp_path):
    path = tmp_path / "session.events"
    cut = scans(["40063812"], start=time.time() - 3590)
    path.write_bytes(scans(["96385074"], start=time.time() - 3600) + cut[:len(cut) // 2])
    counter = _replayed(path, DecoderSettings(), expect=2)
    assert [scan.text for scan in counter.scans] == ["96385074"]
    assert [(r.text, r.reason) for r in counter.refused] == [("40063", CUT_OFF)]
