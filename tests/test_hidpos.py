"""The HID POS driver, through pyusb with a backend that serves a scanner's real descriptors and report bytes."""

from __future__ import annotations

import pytest

from drivers.hidpos import (BROKE_OFF, BROKE_OFF_TAIL, HOLDS_NUL, MALFORMED, STARTED_UNSEEN, HidPosScanner, ReportAssembler, find,
                           hid_pos_interface)
from drivers.barcode import MAX_LENGTH, TOO_LONG
from drivers.errors import ScannerError, ScannerGone
from drivers.decoder import NotABarcode, Scan

from .usb_backend import (
    KEYBOARD_REPORT_DESCRIPTOR, FakeBackend, FakeUsbDevice, scanned_data_reports,
)


@pytest.fixture
def sysfs(tmp_path):
    """/sys/bus/usb/devices, where the kernel publishes the report descriptor of each interface usbhid drives."""
    root = tmp_path / "usb-devices"
    root.mkdir()
    return root


def publish(sysfs, device: FakeUsbDevice) -> FakeUsbDevice:
    hid = sysfs / f"{device.bus}-{device.address}:1.0" / f"0003:{device.vendor:04X}:{device.product:04X}.0001"
    hid.mkdir(parents=True)
    (hid / "report_descriptor").write_bytes(device.report_descriptor)
    return device


def scanner_found(sysfs, device: FakeUsbDevice):
    (usb_device,) = find(FakeBackend(publish(sysfs, device)), sysfs)
    return usb_device


def test_only_devices_with_a_bar_code_scanner_usage_page_are_found(sysfs):
    scanner = publish(sysfs, FakeUsbDevice())
    keyboard = publish(sysfs, FakeUsbDevice(address=6, report_descriptor=KEYBOARD_REPORT_DESCRIPTOR))
    found = find(FakeBackend(scanner, keyboard), sysfs)
    assert [(d.bus, d.address) for d in found] == [(1, 5)]
    assert hid_pos_interface(found[0], sysfs) == 0
    assert scanner.calls == keyboard.calls == []  # looked at through sysfs: nothing detached or claimed


def test_without_a_kernel_driver_the_descriptor_is_asked_of_the_device(sysfs):
    device = FakeUsbDevice(kernel_driver=False)
    (found,) = find(FakeBackend(device), sysfs)
    assert found.address == 5
    assert "get_descriptor 0x22" in device.requests  # the report descriptor came from the device itself
    other = FakeUsbDevice(kernel_driver=False, report_descriptor=bytes([0x05, 0x01, 0x09, 0x06]))  # a keyboard
    assert find(FakeBackend(other), sysfs) == []


def test_a_device_the_kernel_drives_with_no_descriptor_in_sysfs_is_not_disturbed(sysfs):
    device = FakeUsbDevice()
    assert find(FakeBackend(device), sysfs) == []
    assert device.calls == [] and device.requests == [] and device.kernel_driver


def test_claiming_detaches_the_kernel_driver_and_closing_gives_it_back(sysfs):
    device = FakeUsbDevice()
    usb_device = scanner_found(sysfs, device)
    with HidPosScanner(usb_device, sysfs) as scanner:
        assert device.claimed and not device.kernel_driver
        assert scanner.name == "usb 1-5 0c2e:0b6a 'Honeywell Imaging & Mobility' '1900G HID POS' serial '19283746'"
    assert device.calls == ["detach 0", "claim 0", "release 0", "attach 0"]
    assert device.kernel_driver and not device.claimed


def test_an_error_inside_still_gives_the_device_back(sysfs):
    device = FakeUsbDevice()
    usb_device = scanner_found(sysfs, device)
    with pytest.raises(RuntimeError):
        with HidPosScanner(usb_device, sysfs):
            raise RuntimeError("boom")
    assert device.calls[-2:] == ["release 0", "attach 0"]


def _read_all(scanner: HidPosScanner, count: int):
    assembler = ReportAssembler(scanner.source)
    scans = []
    while len(scans) < count:
        report = scanner.read_report(timeout_ms=500)
        assert report is not None, "the scanner sent nothing"
        if scan := assembler.feed(report, now=0.0):
            scans.append(scan)
    return scans


def test_a_barcode_in_one_report_with_its_aim_identifier(sysfs):
    device = FakeUsbDevice()
    device.send(*scanned_data_reports(b"6901028075831", aim=b"]E0"))
    usb_device = scanner_found(sysfs, device)
    with HidPosScanner(usb_device, sysfs) as scanner:
        (scan,) = _read_all(scanner, 1)
    assert (scan.text, scan.aim, scan.source) == ("6901028075831", "]E0", "usb:1-5")


def test_a_long_2d_code_continued_over_several_reports_is_reassembled(sysfs):
    payload = ("https://example.invalid/cert?id=" + "9" * 120 + "&shop=蒙自").encode()
    device = FakeUsbDevice()
    reports = scanned_data_reports(payload, aim=b"]Q1")
    assert len(reports) == 3 and [r[63] for r in reports] == [1, 1, 0]
    device.send(*reports, *scanned_data_reports(b"96385074", aim=b"]E4"))
    usb_device = scanner_found(sysfs, device)
    with HidPosScanner(usb_device, sysfs) as scanner:
        scans = _read_all(scanner, 2)
    assert [(s.text, s.aim) for s in scans] == [(payload.decode(), "]Q1"), ("96385074", "]E4")]


def test_gs1_128_keeps_its_group_separators(sysfs):
    device = FakeUsbDevice()
    device.send(*scanned_data_reports(b"0106901028075831\x1d10AB12", aim=b"]C1"))
    usb_device = scanner_found(sysfs, device)
    with HidPosScanner(usb_device, sysfs) as scanner:
        (scan,) = _read_all(scanner, 1)
    assert (scan.text, scan.aim) == ("0106901028075831\x1d10AB12", "]C1")


def test_no_report_within_the_timeout_is_none(sysfs):
    usb_device = scanner_found(sysfs, FakeUsbDevice())
    with HidPosScanner(usb_device, sysfs) as scanner:
        assert scanner.read_report(timeout_ms=20) is None


def test_unplugged_mid_barcode_the_partial_is_dropped_and_release_survives(sysfs):
    device = FakeUsbDevice()
    first, _second = scanned_data_reports(b"X" * 80, aim=b"]C0")
    device.send(first)
    usb_device = scanner_found(sysfs, device)
    with HidPosScanner(usb_device, sysfs) as scanner:
        assembler = ReportAssembler(scanner.source)
        assert assembler.feed(scanner.read_report(500), now=0.0) is None
        device.present = False
        with pytest.raises(ScannerGone, match="was unplugged"):
            scanner.read_report(500)
        assert assembler.unplugged() == "X" * 56
    assert "release 0" not in device.calls  # a device that is gone has nothing to release, and no error


def test_a_scan_of_one_report_cut_short_as_the_scanner_goes_is_still_refused():
    """Cut short, its one report kept nothing: the unplug refused nothing, and no error was heard for what may
    have been CB:RETURN (the pack after the scanner came back sold plainly)."""
    assembler = ReportAssembler("usb:1-5")
    assert assembler.unplugged() is None  # nothing under way: nothing to refuse
    [report] = scanned_data_reports(b"CB:RETURN", aim=b"]C0")
    assert assembler.feed(report[:30], now=1.0) is None
    assert assembler.unplugged() == ""
    assert assembler.unplugged() is None


def _whole(result) -> str:
    """The text of a barcode taken whole (a refusal has a text too)."""
    assert isinstance(result, Scan), result
    return result.text


def test_reports_that_carry_no_barcode_are_ignored():
    assembler = ReportAssembler("usb:1-5")
    assert assembler.feed(bytes([0x04]) + bytes(63), now=0.0) is None  # another report id
    assert assembler.feed(bytes(10), now=0.0) is None  # short
    (report,) = scanned_data_reports(b"96385074")
    assert _whole(assembler.feed(report, now=1.0)) == "96385074"


def test_a_code_holding_a_nul_byte_is_refused_and_shown_with_the_symbol_for_one():
    """No event carries a NUL: the journal refused to record the code, so its refusal was never recorded
    and the cut control it may have been spoiled nothing."""
    assembler = ReportAssembler("usb:1-5")
    (report,) = scanned_data_reports(b"AB\x00CD", aim=b"]d1")
    refused = assembler.feed(report, now=1.0)
    assert (type(refused), refused.text, refused.reason) == (NotABarcode, "AB\u2400CD", HOLDS_NUL)
    first, _ = scanned_data_reports(b"CB:QTY:\x00" + b"Y" * 60, aim=b"]Q1")
    assembler.feed(first, now=2.0)
    assert assembler.idle(now=2.05).text == "CB:QTY:\u2400" + "Y" * 48
    assembler.feed(first, now=3.0)
    assert assembler.unplugged() == "CB:QTY:\u2400" + "Y" * 48


def test_a_report_sequence_that_breaks_off_is_refused_head_and_tail():
    assembler = ReportAssembler("usb:1-5")
    first, second = scanned_data_reports(b"Y" * 70, aim=b"]Q1")
    assert assembler.feed(first, now=1.0) is None
    head = assembler.idle(now=1.05)  # a read waited its whole timeout: the scanner stopped mid-code
    assert (head.text, head.reason) == ("Y" * 56, BROKE_OFF)
    tail = assembler.feed(second, now=1.3)  # it goes on after all: the rest is no code of its own
    assert (tail.text, tail.reason) == ("Y" * 14, BROKE_OFF_TAIL)
    [whole] = scanned_data_reports(b"96385074", aim=b"]E4")
    assert _whole(assembler.feed(whole, now=2.0)) == "96385074"


def test_a_report_that_names_another_symbology_than_its_sequence_is_another_barcode_s_and_both_are_refused():
    """The QR code's sequence broke off (its last report lost) and an EAN's report came at once, no quiet read
    between: joined, it was booked as one code ending in the EAN's digits. A continued report that names no
    symbology is taken as its sequence's."""
    assembler = ReportAssembler("usb:1-5")
    head, _ = scanned_data_reports(b"https://example.cn/p?id=" + b"X" * 60, aim=b"]Q1")
    [ean] = scanned_data_reports(b"6901028075831", aim=b"]E0")
    assert assembler.feed(head, now=1.0) is None
    refused = assembler.feed(ean, now=1.02)
    assert isinstance(refused, NotABarcode) and refused.reason == BROKE_OFF and refused.text.endswith("6901028075831")
    [whole] = scanned_data_reports(b"96385074", aim=b"]E4")
    assert _whole(assembler.feed(whole, now=2.0)) == "96385074"
    first, second = scanned_data_reports(b"Z" * 70, aim=b"]Q1")
    second = second[:2] + bytes(3) + second[5:]  # the continuation with no identifier of its own
    assert assembler.feed(first, now=3.0) is None
    scan = assembler.feed(second, now=3.01)
    assert (_whole(scan), scan.aim) == ("Z" * 70, "]Q1")


@pytest.mark.parametrize("cut", [
    lambda report: report[:40],  # a read cut short
    lambda report: report[:2],
    lambda report: report + b"\0",  # longer than a report
    lambda report: report[:1] + bytes([57]) + report[2:],  # says it holds more than a report can
    lambda report: report[:1] + bytes([255]) + report[2:],
], ids=["40-bytes", "2-bytes", "65-bytes", "length-57", "length-255"])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_report_cut_short_or_over_long_breaks_its_barcode_which_is_refused_whole(cut, where):
    """Whichever report of a three-report code it is: what it held, and whether more followed, is lost."""
    assembler = ReportAssembler("usb:1-5")
    reports = scanned_data_reports(b"Q" * 150, aim=b"]Q1")
    reports[where] = cut(reports[where])
    results = [assembler.feed(report, now=1.0 + i / 100) for i, report in enumerate(reports)]
    results.append(assembler.idle(now=1.2))
    said = [r for r in results if r is not None]
    assert [type(r) for r in said] == [NotABarcode] and said[0].reason == MALFORMED
    assert len(said[0].text) < 150
    assert assembler.idle(now=2.5) is None  # a second of quiet reads
    [whole] = scanned_data_reports(b"96385074", aim=b"]E4")
    scan = assembler.feed(whole, now=3.0)
    assert isinstance(scan, Scan) and scan.text == "96385074"  # after the quiet: seen whole


def test_a_single_report_cut_short_is_said_at_the_next_quiet_read():
    """It may have been a whole barcode of one report: the retailer hears that it was not taken."""
    assembler = ReportAssembler("usb:1-5")
    [report] = scanned_data_reports(b"6901028075831", aim=b"]E0")
    assert assembler.feed(report[:30], now=1.0) is None
    refused = assembler.idle(now=1.2)
    assert (refused.text, refused.reason) == ("", MALFORMED)
    assert assembler.idle(now=3.0) is None


def test_reports_before_the_first_quiet_read_after_claiming_are_refused():
    assembler = ReportAssembler("usb:1-5")
    assembler.opened(10.0)
    [waiting] = scanned_data_reports(b"0118", aim=b"]E0")  # the end of a code begun before the claim
    refused = assembler.feed(waiting, now=10.01)
    assert (refused.text, refused.reason) == ("0118", STARTED_UNSEEN)
    assert assembler.idle(now=10.06) is None  # a read came back empty: the scanner is quiet
    [code] = scanned_data_reports(b"96385074", aim=b"]E4")
    assert _whole(assembler.feed(code, now=11.0)) == "96385074"


def test_a_failure_after_claiming_gives_the_interface_back(sysfs):
    device = FakeUsbDevice(endpoint_type=0x02)  # bulk: no interrupt IN endpoint to read
    usb_device = scanner_found(sysfs, device)
    scanner = HidPosScanner(usb_device, sysfs)
    with pytest.raises(ScannerError, match="has no interrupt IN endpoint"):
        scanner.claim()
    assert device.calls == ["detach 0", "claim 0", "release 0", "attach 0"]
    assert device.kernel_driver and not device.claimed


def test_a_control_that_follows_a_broken_off_code_holds_the_product_after_it(tmp_path):
    """The sheet's CB:RETURN (Code 128) came after a QR code whose last report was lost: both refused together,
    and the pack scanned at once after them was sold plainly, not returned."""
    import os

    from agent.counter import Counter
    from agent.prices import parse_csv
    from drivers.feedback import Signal
    from storage import Journal

    journal = Journal.open(tmp_path / "journal.db", os.urandom(32))
    journal.append("price_list", {"currency": "CNY", "items": [
        item.as_json() for item in parse_csv("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")]})
    counter, assembler = Counter(), ReportAssembler("usb:1-5")
    head, _lost = scanned_data_reports(b"https://example.cn/p?id=" + b"X" * 60, aim=b"]Q1")
    [control] = scanned_data_reports(b"CB:RETURN", aim=b"]C0")
    [pack] = scanned_data_reports(b"6901028075831", aim=b"]E0")
    heard = []
    for at, report in enumerate((head, control, pack)):
        result = assembler.feed(report, now=1.0 + at / 100)
        if result is not None:
            with journal.transaction():
                outcome = counter.record(journal, result)
            heard.append((type(result).__name__, outcome.signal, [event.kind for event in outcome.events]))
    journal.close()
    assert heard == [("NotABarcode", Signal.ERROR, ["refused"]), ("Scan", Signal.ERROR, [])]


def test_a_report_sequence_longer_than_any_code_is_refused_and_never_held_past_it():
    assembler = ReportAssembler("usb:1-5")
    reports = scanned_data_reports(b"Y" * (MAX_LENGTH + 100), aim=b"]Q1")
    said = [assembler.feed(report, now=1.0) for report in reports]
    assert said[:-1] == [None] * (len(reports) - 1)
    assert said[-1].reason == TOO_LONG and MAX_LENGTH - 56 < len(said[-1].text) <= MAX_LENGTH  # (whole reports)
    [whole] = scanned_data_reports(b"96385074", aim=b"]E4")
    assert _whole(assembler.feed(whole, now=2.0)) == "96385074"
