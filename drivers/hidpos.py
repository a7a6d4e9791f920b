"""USB HID POS scanners (HID usage page 0x8C, "Bar Code Scanner"), read through pyusb.

A scanner set to HID POS mode does not type: it sends each decoded barcode in
input reports on an interrupt endpoint. The layout, as HID POS scanners
(Honeywell, Zebra, Access-IS, ...) send it in report 2, 64 bytes:

    byte 0       report ID (2)
    byte 1       length of the data in this report (up to 56)
    bytes 2-4    AIM symbology identifier ("]E0", "]C1", "]Q1", ...)
    bytes 5-60   the data
    byte 61      the maker's own symbology identifier
    byte 62      reserved
    byte 63      bit 0: decode data continued: more reports follow for this barcode

The driver detaches the kernel's HID driver from the interface, claims it,
reads the interrupt IN endpoint, reassembles barcodes that continue over
several reports, and releases the interface and reattaches the kernel driver
on exit or unplug, so the device is left as it was found.

    for device in find(backend):
        with HidPosScanner(device) as scanner:
            report = scanner.read_report(timeout_ms=200)
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from dataclasses import dataclass, field

import usb.core
import usb.util

from .decoder import NotABarcode, Scan
from .errors import ScannerError, ScannerGone

logger = logging.getLogger(__name__)

USAGE_PAGE = 0x8C
SCANNED_DATA_REPORT = 0x02
REPORT_SIZE = 64
_DATA_START, _DATA_MAX = 5, 56
_CONTINUED = 63
_HID_CLASS = 0x03
SYSFS_USB = Path("/sys/bus/usb/devices")
# Reports of one barcode follow each other within milliseconds; a longer pause ends a sequence.
REPORT_PAUSE = 0.05  # seconds
BROKE_OFF = "the scanner's report sequence broke off"
STARTED_UNSEEN = "the report sequence had begun before the scanner was claimed"
_GET_DESCRIPTOR, _REPORT_DESCRIPTOR = 0x06, 0x22


def _report_descriptor(device: usb.core.Device, interface: int, sysfs: Path) -> bytes:
    """The interface's HID report descriptor, without disturbing a device the kernel drives.

    While usbhid is bound, the kernel publishes the descriptor in sysfs; asking the device
    instead would need the interface claimed (pyusb claims it for the request), which fails
    while the kernel holds it, and would detach the shop's keyboard just to look at it.
    """
    ports = ".".join(str(p) for p in (device.port_numbers or ()))
    for path in sorted(sysfs.glob(f"{device.bus}-{ports}:*.{interface}/*/report_descriptor")):
        try:
            return path.read_bytes()
        except OSError:
            pass
    try:
        if device.is_kernel_driver_active(interface):
            return b""
        return bytes(device.ctrl_transfer(0x81, _GET_DESCRIPTOR, _REPORT_DESCRIPTOR << 8, interface, 1024))
    except (usb.core.USBError, NotImplementedError):
        return b""


def _usage_page(descriptor: bytes) -> int | None:
    """The first Usage Page item of a HID report descriptor (short items: 0x05 one byte, 0x06 two bytes)."""
    if descriptor[:1] == b"\x05" and len(descriptor) >= 2:
        return descriptor[1]
    if descriptor[:1] == b"\x06" and len(descriptor) >= 3:
        return descriptor[1] | descriptor[2] << 8
    return None


def hid_pos_interface(device: usb.core.Device, sysfs: Path = SYSFS_USB) -> int | None:
    """The number of the device's HID interface whose report descriptor is the Bar Code Scanner page, if any."""
    try:
        configuration = device.get_active_configuration()
    except usb.core.USBError:
        configuration = device[0]
    for interface in configuration:
        if interface.bInterfaceClass == _HID_CLASS and _usage_page(
            _report_descriptor(device, interface.bInterfaceNumber, sysfs)
        ) == USAGE_PAGE:
            return interface.bInterfaceNumber
    return None


def find(backend=None, sysfs: Path = SYSFS_USB) -> list[usb.core.Device]:
    """Every USB device with a HID POS scanner interface."""
    return list(usb.core.find(find_all=True, backend=backend,
                              custom_match=lambda d: hid_pos_interface(d, sysfs) is not None))


def identity(device: usb.core.Device) -> dict[str, str]:
    """The scanner's USB identity, as logs and telemetry name it."""
    def string(index):
        try:
            return usb.util.get_string(device, index) if index else ""
        except (usb.core.USBError, ValueError):
            return ""

    return {"usb_id": f"{device.idVendor:04x}:{device.idProduct:04x}", "manufacturer": string(device.iManufacturer),
            "product": string(device.iProduct), "serial": string(device.iSerialNumber)}


def describe(device: usb.core.Device, ident: dict[str, str]) -> str:
    return (f"usb {device.bus}-{device.address} {ident['usb_id']} "
            f"{ident['manufacturer']!r} {ident['product']!r} serial {ident['serial']!r}")


@dataclass
class ReportAssembler:
    """Joins scanned-data reports into barcodes; one per scanner.

    As with keyboard-wedge scanners, a barcode not seen whole is refused: a
    sequence of continued reports that stops (``idle``), and the reports that
    arrive right after the scanner was claimed (``opened``), before the first
    pause, whose first report may have gone to whoever held the device before.
    """

    source: str
    _data: bytearray = field(default_factory=bytearray)
    _aim: str = ""
    _started: float = 0.0
    _last: float = 0.0
    _broken: str | None = None

    def opened(self, at: float) -> None:
        self._broken, self._last = STARTED_UNSEEN, at

    def feed(self, report: bytes, now: float) -> Scan | NotABarcode | None:
        if len(report) < REPORT_SIZE or report[0] != SCANNED_DATA_REPORT:
            return None  # other reports (status, trigger) carry no barcode
        refused = self.idle(now)  # a pause since the last report ends what it left open
        self._last = now
        length = min(report[1], _DATA_MAX)
        if not self._data:
            self._aim = report[2:5].decode("ascii", "replace") if report[2:3] == b"]" else ""
            self._started = now
        self._data += report[_DATA_START : _DATA_START + length]
        if report[_CONTINUED] & 0x01:
            return refused
        data, self._data = bytes(self._data), bytearray()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        if self._broken is not None:
            reason, self._broken = self._broken, None
            return NotABarcode(text, self.source, reason)
        return Scan(text, self.source, self._started, now, aim=self._aim) if text else refused

    def idle(self, now: float) -> NotABarcode | None:
        """Called when no report came: after a pause, a sequence left open is refused."""
        if now - self._last <= REPORT_PAUSE:
            return None
        if self._broken is not None and not self._data:
            self._broken = None  # a pause with nothing begun: the next report starts a barcode
            return None
        if self._data:
            reason, self._broken = self._broken or BROKE_OFF, None
            return NotABarcode(self._take(), self.source, reason)
        return None

    def _take(self) -> str:
        partial, self._data = bytes(self._data), bytearray()
        return partial.decode("latin-1")

    def unplugged(self) -> str:
        self._broken = None
        return self._take()


class HidPosScanner:
    """One claimed HID POS scanner; a context manager that always gives the interface back."""

    def __init__(self, device: usb.core.Device, sysfs: Path = SYSFS_USB):
        self.device = device
        self.sysfs = sysfs
        self.identity = identity(device)
        self.name = describe(device, self.identity)
        self.source = f"usb:{device.bus}-{device.address}"
        self._interface: int | None = None
        self._detached = False
        self._endpoint = None

    def __enter__(self) -> "HidPosScanner":
        self.claim()
        return self

    def claim(self) -> None:
        """Detach the kernel's driver and claim the HID POS interface (USB control transfers: blocking)."""
        interface = hid_pos_interface(self.device, self.sysfs)
        if interface is None:
            raise ScannerError(f"{self.name} has no HID POS interface")
        try:
            if self.device.is_kernel_driver_active(interface):
                self.device.detach_kernel_driver(interface)
                self._detached = True
            usb.util.claim_interface(self.device, interface)
        except usb.core.USBError as error:
            self._give_back(interface)
            raise ScannerError(f"cannot claim {self.name}: {error}") from None
        self._interface = interface
        try:
            setting = self.device.get_active_configuration()[(interface, 0)]
            self._endpoint = usb.util.find_descriptor(
                setting, custom_match=lambda ep: usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
                and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_INTR)
            if self._endpoint is None:
                raise ScannerError(f"{self.name} has no interrupt IN endpoint")
        except BaseException as error:
            self.release()  # claimed: given back however the rest fails
            if isinstance(error, usb.core.USBError):
                raise ScannerError(f"cannot use {self.name}: {error}") from None
            raise
        logger.info("HID POS scanner claimed %s interface=%d", self.name, interface)

    def read_report(self, timeout_ms: int = 200) -> bytes | None:
        """One input report, or None when the scanner had nothing within ``timeout_ms``."""
        try:
            return bytes(self._endpoint.read(REPORT_SIZE, timeout_ms))
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as error:
            if error.errno in (errno.ENODEV, errno.ESHUTDOWN) or error.backend_error_code == -4:  # LIBUSB_ERROR_NO_DEVICE
                raise ScannerGone(f"HID POS scanner {self.name} was unplugged") from None
            raise ScannerError(f"HID POS scanner {self.name}: {error}") from None

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Give the interface back to the kernel's driver. Idempotent."""
        if self._interface is not None:
            self._give_back(self._interface)
            self._interface = None

    def _give_back(self, interface: int) -> None:
        try:
            usb.util.release_interface(self.device, interface)
        except usb.core.USBError:
            pass  # unplugged: nothing left to release
        if self._detached:
            try:
                self.device.attach_kernel_driver(interface)
            except usb.core.USBError:
                pass
            self._detached = False
        usb.util.dispose_resources(self.device)
