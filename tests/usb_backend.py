"""A USB device as pyusb's own backend interface (usb.backend.IBackend) presents one.

These machines have no USB devices, so the HID POS driver is tested through
pyusb with this backend in place of libusb: it serves the descriptors a HID
POS scanner has (device, configuration, a HID interface whose report
descriptor is usage page 0x8C, an interrupt IN endpoint, string descriptors)
and real input report bytes, and records what the driver did to it.
"""

from __future__ import annotations

import errno
import queue
import struct
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import usb.backend
import usb.core

# The start of a HID POS scanner's report descriptor: Usage Page (Bar Code Scanner), Usage (Bar Code
# Scanner), Collection (Application), Report ID 2, then the scanned-data report's items.
HID_POS_REPORT_DESCRIPTOR = bytes.fromhex(
    "058c" "0902" "a101" "8502" "0912" "1500" "26ff00" "7508" "953f" "8102" "c0"
)
KEYBOARD_REPORT_DESCRIPTOR = bytes.fromhex("0501" "0906" "a101" "0507" "19e0" "29e7" "c0")


def scanned_data_reports(data: bytes, aim: bytes = b"]E0") -> list[bytes]:
    """The 64-byte reports a HID POS scanner sends for one barcode: 56 data bytes each, bit 0 of byte 63 'continued'."""
    chunks = [data[i : i + 56] for i in range(0, len(data), 56)] or [b""]
    reports = []
    for index, chunk in enumerate(chunks):
        report = bytearray(64)
        report[0] = 0x02
        report[1] = len(chunk)
        report[2:5] = aim
        report[5 : 5 + len(chunk)] = chunk
        report[61] = ord("A")
        report[63] = 0x01 if index < len(chunks) - 1 else 0x00
        reports.append(bytes(report))
    return reports


def _string_descriptor(text: str) -> bytes:
    encoded = text.encode("utf-16-le")
    return bytes([2 + len(encoded), 3]) + encoded


@dataclass
class FakeUsbDevice:
    vendor: int = 0x0C2E
    product: int = 0x0B6A
    bus: int = 1
    address: int = 5
    manufacturer: str = "Honeywell Imaging & Mobility"
    product_name: str = "1900G HID POS"
    serial: str = "19283746"
    report_descriptor: bytes = HID_POS_REPORT_DESCRIPTOR
    requests: list[str] = field(default_factory=list)  # control transfers asked of the device
    kernel_driver: bool = True  # usbhid is bound until the driver detaches it
    claimed: bool = False
    present: bool = True
    endpoint_type: int = 0x03  # interrupt; anything else leaves the device with no interrupt IN endpoint
    calls: list[str] = field(default_factory=list)
    reports: "queue.Queue[bytes | int]" = field(default_factory=queue.Queue)  # an int: a read failing with that errno

    def send(self, *reports: bytes | int) -> None:
        for report in reports:
            self.reports.put(report)


class FakeBackend(usb.backend.IBackend):
    def __init__(self, *devices: FakeUsbDevice):
        super().__init__()
        self.devices = list(devices)
        self.lock = threading.Lock()

    def enumerate_devices(self):
        return [d for d in self.devices if d.present]

    def get_device_descriptor(self, dev):
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
            bMaxPacketSize0=64, idVendor=dev.vendor, idProduct=dev.product, bcdDevice=0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1,
            bus=dev.bus, address=dev.address, port_number=dev.address, port_numbers=(dev.address,), speed=2,
        )

    # Like libusb's backend, an index past the last descriptor is an IndexError: pyusb iterates until it.
    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError("invalid configuration index " + str(config))
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=34, bNumInterfaces=1,
                               bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
                               extra_descriptors=[])

    def get_interface_descriptor(self, dev, intf, alt, config):
        if (config, intf, alt) != (0, 0, 0):
            raise IndexError("invalid interface index")
        return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
                               bNumEndpoints=1, bInterfaceClass=3, bInterfaceSubClass=0, bInterfaceProtocol=0,
                               iInterface=0, extra_descriptors=[])

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if (config, intf, alt, ep) != (0, 0, 0, 0):
            raise IndexError("invalid endpoint index")
        return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=0x81, bmAttributes=dev.endpoint_type,
                               wMaxPacketSize=64, bInterval=1, bRefresh=0, bSynchAddress=0, extra_descriptors=[])

    def open_device(self, dev):
        self._check(dev)
        return dev

    def close_device(self, dev_handle):
        pass

    def get_configuration(self, dev_handle):
        return 1

    def set_configuration(self, dev_handle, config_value):
        dev_handle.calls.append(f"set_configuration {config_value}")

    def claim_interface(self, dev_handle, intf):
        self._check(dev_handle)
        if dev_handle.kernel_driver or dev_handle.claimed:  # as usbfs: an interface has one holder
            raise usb.core.USBError("Resource busy", errno=errno.EBUSY)
        dev_handle.claimed = True
        dev_handle.calls.append(f"claim {intf}")

    def release_interface(self, dev_handle, intf):
        self._check(dev_handle)
        dev_handle.claimed = False
        dev_handle.calls.append(f"release {intf}")

    def is_kernel_driver_active(self, dev_handle, intf):
        return dev_handle.kernel_driver

    def detach_kernel_driver(self, dev_handle, intf):
        dev_handle.kernel_driver = False
        dev_handle.calls.append(f"detach {intf}")

    def attach_kernel_driver(self, dev_handle, intf):
        self._check(dev_handle)
        dev_handle.kernel_driver = True
        dev_handle.calls.append(f"attach {intf}")

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        self._check(dev_handle)
        kind, index = wValue >> 8, wValue & 0xFF
        dev_handle.requests.append(f"get_descriptor {kind:#04x}")
        if bRequest != 0x06:
            raise usb.core.USBError("Pipe error", errno=errno.EPIPE)
        if kind == 0x22:
            payload = dev_handle.report_descriptor
        elif kind == 0x03 and index == 0:
            payload = bytes([4, 3]) + struct.pack("<H", 0x0409)
        elif kind == 0x03:
            payload = _string_descriptor({1: dev_handle.manufacturer, 2: dev_handle.product_name,
                                          3: dev_handle.serial}[index])
        else:
            raise usb.core.USBError("Pipe error", errno=errno.EPIPE)
        n = min(len(data), len(payload))
        data[:n] = type(data)(data.typecode, payload[:n])
        return n

    def intr_read(self, dev_handle, ep, intf, buff, timeout):
        self._check(dev_handle)
        try:
            report = dev_handle.reports.get(timeout=min(timeout, 50) / 1000)
        except queue.Empty:
            self._check(dev_handle)
            raise usb.core.USBTimeoutError("Operation timed out", errno=errno.ETIMEDOUT) from None
        if isinstance(report, int):  # a read that fails so: libusb's error, as pyusb raises it
            raise usb.core.USBError(errno.errorcode[report], error_code=-1, errno=report)
        buff[: len(report)] = type(buff)(buff.typecode, report)
        return len(report)

    @staticmethod
    def _check(dev) -> None:
        if not dev.present:
            raise usb.core.USBError("No such device (it may have been disconnected)", error_code=-4, errno=errno.ENODEV)
