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

from .barcode import MAX_LENGTH, TOO_LONG
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
BROKE_OFF = "the scanner's report sequence broke off"
BROKE_OFF_TAIL = "the rest of a report sequence that had broken off"
BROKE_OFF_QUIET = 1.0  # seconds with nothing after a break-off before a report begins a barcode again
STARTED_UNSEEN = "the report sequence had begun before the scanner was claimed"
MALFORMED = "a scanned-data report was cut short, or said it held more than a report can"
HOLDS_NUL = "the code holds a NUL byte, which no record carries"
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
            text = usb.util.get_string(device, index) if index else ""
        except (usb.core.USBError, ValueError):
            return ""
        # Descriptors padded with NUL, or holding controls: recorded in events, which carry no NUL.
        return "".join(char for char in text or "" if char.isprintable())

    return {"usb_id": f"{device.idVendor:04x}:{device.idProduct:04x}", "manufacturer": string(device.iManufacturer),
            "product": string(device.iProduct), "serial": string(device.iSerialNumber)}


def describe(device: usb.core.Device, ident: dict[str, str]) -> str:
    return (f"usb {device.bus}-{device.address} {ident['usb_id']} "
            f"{ident['manufacturer']!r} {ident['product']!r} serial {ident['serial']!r}")


@dataclass
class ReportAssembler:
    """Joins scanned-data reports into barcodes; one per scanner.

    As with keyboard-wedge scanners, a barcode not seen whole is refused. HID
    reports carry no timestamps, so a pause is what the driver saw itself: a
    read that waited its whole timeout with nothing (``idle``), never the time
    between two reads, which the host's own delays stretch. Refused: the
    reports that arrive after the scanner was claimed (``opened``) and before
    the first such pause, whose first report may have gone to whoever held the
    device before; a sequence of continued reports that stops, together
    with whatever follows it up to the next final report (a report that
    names another symbology than its sequence's says it stopped); and a sequence with
    a scanned-data report cut short or saying it holds more than 56 bytes,
    up to its final report (or a pause: nothing is known of what it lost).
    """

    source: str
    _data: bytearray = field(default_factory=bytearray)
    _aim: str = ""
    _started: float = 0.0
    _broken: str | None = None
    _broken_since: float = 0.0
    _broken_quiet: float = 0.0

    def opened(self, at: float) -> None:
        """Called just before the first read of a newly claimed scanner."""
        self._broken, self._broken_since, self._broken_quiet = STARTED_UNSEEN, at, 0.0

    def feed(self, report: bytes, now: float) -> Scan | NotABarcode | None:
        if not report or report[0] != SCANNED_DATA_REPORT:
            return None  # other reports (status, trigger) carry no barcode
        if len(report) != REPORT_SIZE or report[1] > _DATA_MAX:
            # Cut short, or saying it holds more than a report can: its data, and whether more reports
            # follow, are lost. The barcode it belongs to is broken, up to its final report or a pause.
            if not self._data:
                self._started = now
            self._broken = MALFORMED
            return None
        length = report[1]
        aim = report[2:5].decode("ascii", "replace") if report[2:3] == b"]" else ""
        if self._data and aim and aim != self._aim:
            # Each report names its symbology (a continued one may leave it out): one that names another
            # is another barcode's, so the sequence under way broke off (its final report lost, and maybe
            # this one's first reports too). Neither is seen whole: refused together, up to its final report.
            self._broken = self._broken or BROKE_OFF
        if not self._data:
            self._aim = aim
            self._started = now
        if len(self._data) + length > MAX_LENGTH:
            self._broken = self._broken or TOO_LONG  # refused at its final report; the rest is never held
        else:
            self._data += report[_DATA_START : _DATA_START + length]
        if report[_CONTINUED] & 0x01:
            return None
        nul = 0 in self._data
        text = self._take_text()
        if self._broken is not None:
            reason, self._broken = self._broken, None
            return NotABarcode(text, self.source, reason)
        if nul:
            return NotABarcode(text, self.source, HOLDS_NUL)
        return Scan(text, self.source, self._started, now, aim=self._aim) if text else None

    def idle(self, now: float) -> NotABarcode | None:
        """Called when a read waited its whole timeout and the scanner sent nothing: a real pause."""
        if self._data or self._broken == MALFORMED:
            head = NotABarcode(self._take_text(), self.source, self._broken or BROKE_OFF)
            # Its tail, should the scanner go on, is refused up to the final report.
            self._broken, self._broken_since, self._broken_quiet = BROKE_OFF_TAIL, now, BROKE_OFF_QUIET
            return head
        if self._broken is not None and now - self._broken_since >= self._broken_quiet:
            self._broken = None  # quiet long enough: the next report begins a barcode seen whole
        return None

    def _take_text(self) -> str:
        data, self._data = bytes(self._data), bytearray()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        # No event carries a NUL (central's databases keep none in text): shown as the symbol for one.
        return text.replace("\x00", "\u2400")

    def unplugged(self) -> str | None:
        """The scan under way when the scanner went, to be refused: what came of it (empty when its one report
        was cut short, which kept nothing); None when none was under way."""
        under_way = bool(self._data) or self._broken == MALFORMED
        self._broken = None
        partial, self._data = bytes(self._data), bytearray()
        return partial.decode("latin-1").replace("\x00", "\u2400") if under_way else None


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


def no_backend_reason() -> str:
    """Why pyusb found no libusb backend, in words an operator can act on. Blocking (it may run
    ldconfig and starts libusb): call it in a thread."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("usb-1.0")
    if name is None:
        return "libusb is not installed (Debian: libusb-1.0-0)"
    try:
        library = ctypes.CDLL(name)
    except OSError as error:
        return f"libusb ({name}) could not be loaded: {error}"
    context = ctypes.c_void_p()
    code = library.libusb_init(ctypes.byref(context))
    if code == 0:
        library.libusb_exit(context)
        return f"pyusb found no backend, although libusb ({name}) starts"
    library.libusb_error_name.restype = ctypes.c_char_p
    return (f"libusb ({name}) is installed but will not start ({library.libusb_error_name(code).decode()}): "
            "under systemd, RestrictAddressFamilies= must allow AF_NETLINK, which libusb needs to watch USB hotplug")
