"""Which input devices are scanners, from what the kernel says about them in sysfs.

For each /dev/input/eventN the kernel publishes, under /sys/class/input/eventN/device/:
``name``, ``id/{bustype,vendor,product}`` and ``capabilities/{ev,key,snd,led}``
(bitmasks, most significant word first). A USB device's strings
(``manufacturer``, ``product``, ``serial``) sit in the USB device directory up
its sysfs path. This module reads those, never opens a device, and says for
each device whether it is a scanner and why:

    for device in list_devices():
        reason = classify(device, rules)
        # "configured USB id 0c2e:0b61", "name matches '*Barcode*'",
        # "USB strings say scanner", "watch", or None (not a scanner: left alone)

"watch" is a USB keyboard that says nothing about itself: it is read without
being grabbed, and taken only once it types a barcode at scanner speed; a
person typing on it never has it taken.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from evdev import ecodes

BUS_USB = 0x03
SCANNER_WORDS = re.compile(r"scan|barcode|bar code|reader|imager|honeywell|zebra|datalogic|symbol", re.IGNORECASE)
# Keyboard wedges that are not barcode scanners: a card swipe types at scanner speed, and its
# data (card numbers) must never become a sale. Only a configured id or name takes these.
NOT_SCANNER_WORDS = re.compile(r"card|magnetic|stripe|\bmsr\b|rfid|nfc|smart|yubi|fingerprint|token", re.IGNORECASE)


@dataclass(frozen=True)
class UsbIdentity:
    vendor: int
    product: int
    manufacturer: str = ""
    product_name: str = ""
    serial: str = ""

    @property
    def id(self) -> str:
        return f"{self.vendor:04x}:{self.product:04x}"


@dataclass(frozen=True)
class InputDeviceInfo:
    node: str  # /dev/input/eventN
    name: str
    bustype: int
    vendor: int
    product: int
    capabilities: dict[str, frozenset[int]] = field(default_factory=dict)
    usb: UsbIdentity | None = None

    @property
    def usb_id(self) -> str:
        return f"{self.vendor:04x}:{self.product:04x}"

    def has(self, kind: str, code: int) -> bool:
        return code in self.capabilities.get(kind, frozenset())

    @property
    def is_keyboard(self) -> bool:
        """Types digits and Enter: what a keyboard-wedge scanner is to the kernel."""
        return all(self.has("key", code) for code in (ecodes.KEY_1, ecodes.KEY_0, ecodes.KEY_ENTER))

    def describe(self) -> str:
        usb = self.usb
        strings = f" {usb.manufacturer!r} {usb.product_name!r} serial {usb.serial!r}" if usb else ""
        return f"{self.node} {self.name!r} {self.usb_id}{strings}"


@dataclass(frozen=True)
class Rules:
    """What makes a device a scanner: the `[scanner]` keys usb_ids, names and auto."""

    usb_ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    auto: bool = True


def _bitmask(text: str) -> frozenset[int]:
    bits = set()
    for index, word in enumerate(reversed(text.split())):
        value = int(word, 16)
        base = index * 64
        while value:
            low = value & -value
            bits.add(base + low.bit_length() - 1)
            value ^= low
    return frozenset(bits)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _usb_identity(device_dir: Path) -> UsbIdentity | None:
    for directory in [device_dir, *device_dir.parents]:
        if (directory / "idVendor").exists():
            return UsbIdentity(
                int(_read(directory / "idVendor") or "0", 16), int(_read(directory / "idProduct") or "0", 16),
                _read(directory / "manufacturer"), _read(directory / "product"), _read(directory / "serial"),
            )
        if directory.name in ("devices", "") or directory == directory.parent:
            break
    return None


def read_device(node: Path, sys_class: Path) -> InputDeviceInfo | None:
    device = sys_class / node.name / "device"
    if not device.exists():
        return None
    capabilities = {kind: _bitmask(_read(device / "capabilities" / kind)) for kind in ("ev", "key", "snd", "led")}
    return InputDeviceInfo(
        str(node), _read(device / "name"),
        int(_read(device / "id" / "bustype") or "0", 16), int(_read(device / "id" / "vendor") or "0", 16),
        int(_read(device / "id" / "product") or "0", 16), capabilities, _usb_identity(device.resolve()),
    )


def list_devices(dev_input: Path = Path("/dev/input"), sys_class: Path = Path("/sys/class/input")) -> list[InputDeviceInfo]:
    """Every eventN node with its sysfs description, in node order."""
    nodes = sorted(dev_input.glob("event*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    devices = []
    for node in nodes:
        try:
            info = read_device(node, sys_class)
        except (OSError, ValueError):
            continue  # going away as we look, or a description we cannot read: not a scanner we can use
        if info is not None:
            devices.append(info)
    return devices


def classify(device: InputDeviceInfo, rules: Rules) -> str | None:
    """Why ``device`` is taken as a scanner, "watch" if it may be one, or None."""
    if device.usb_id in rules.usb_ids or (device.usb and device.usb.id in rules.usb_ids):
        return f"configured USB id {device.usb_id}"
    for pattern in rules.names:
        if fnmatch.fnmatch(device.name, pattern):
            return f"name matches {pattern!r}"
    if not rules.auto or not device.is_keyboard or device.bustype != BUS_USB:
        return None
    strings = [device.name] + ([device.usb.manufacturer, device.usb.product_name] if device.usb else [])
    if any(NOT_SCANNER_WORDS.search(s) for s in strings if s):
        return None
    if any(SCANNER_WORDS.search(s) for s in strings if s):
        return "USB strings say scanner"
    return "watch"


def feedback_devices(devices: list[InputDeviceInfo]) -> list[InputDeviceInfo]:
    """Devices that can sound a tone (EV_SND with SND_TONE): the PC speaker, a buzzer."""
    return [d for d in devices if d.has("ev", ecodes.EV_SND) and d.has("snd", ecodes.SND_TONE)]


__all__ = ["InputDeviceInfo", "Rules", "UsbIdentity", "classify", "feedback_devices", "list_devices", "read_device"]
