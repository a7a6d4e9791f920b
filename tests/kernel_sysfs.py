"""Input devices as the kernel describes them: /dev/input/eventN nodes and their /sys/class/input entries.

These machines have no USB devices, so tests lay out the same files the kernel
would (name, id/*, capabilities/* bitmasks, the USB device's strings up the
path) and use a FIFO as the event node: the agent reads it through the same
reader as /dev/input/eventN.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from evdev import ecodes as e

KEYBOARD_KEYS = frozenset(range(e.KEY_ESC, e.KEY_KPDOT + 1)) | {e.KEY_KPENTER, e.KEY_RIGHTCTRL, e.KEY_RIGHTALT}


def bitmask(codes) -> str:
    """The kernel's sysfs bitmask format: hex 64-bit words, most significant first."""
    codes = set(codes)
    if not codes:
        return "0"
    words = [0] * (max(codes) // 64 + 1)
    for code in codes:
        words[code // 64] |= 1 << (code % 64)
    return " ".join(f"{w:x}" for w in reversed(words))


class Machine:
    def __init__(self, root: Path):
        self.dev_input = root / "dev" / "input"
        self.sys_class = root / "sys" / "class" / "input"
        self.devices = root / "sys" / "devices" / "pci0000:00" / "0000:00:14.0" / "usb1"
        self.dev_input.mkdir(parents=True)
        self.sys_class.mkdir(parents=True)
        self.devices.mkdir(parents=True)

    def node(self, n: int) -> Path:
        return self.dev_input / f"event{n}"

    def plug(self, n: int, name: str, *, vendor: int = 0x0C2E, product: int = 0x0B61, bustype: int = 0x03,
             manufacturer: str = "", usb_product: str = "", serial: str = "", keys=KEYBOARD_KEYS,
             ev=(e.EV_SYN, e.EV_KEY, e.EV_MSC, e.EV_LED), snd=(), node_is_file: bool = False) -> Path:
        usb = self.devices / f"1-{n}"
        usb.mkdir()
        for file, value in {"idVendor": f"{vendor:04x}", "idProduct": f"{product:04x}", "manufacturer": manufacturer,
                            "product": usb_product, "serial": serial}.items():
            if value:
                (usb / file).write_text(value + "\n")
        input_dir = usb / f"1-{n}:1.0" / f"0003:{vendor:04X}:{product:04X}.{n:04X}" / "input" / f"input{n}"
        (input_dir / "id").mkdir(parents=True)
        (input_dir / "capabilities").mkdir()
        (input_dir / "name").write_text(name + "\n")
        for file, value in {"bustype": bustype, "vendor": vendor, "product": product}.items():
            (input_dir / "id" / file).write_text(f"{value:04x}\n")
        for file, codes in {"ev": ev, "key": keys, "snd": snd, "led": (e.LED_NUML, e.LED_CAPSL, e.LED_SCROLLL)}.items():
            (input_dir / "capabilities" / file).write_text(bitmask(codes) + "\n")
        (self.sys_class / f"event{n}").mkdir()
        (self.sys_class / f"event{n}" / "device").symlink_to(input_dir)
        if node_is_file:
            self.node(n).write_bytes(b"")
        else:
            os.mkfifo(self.node(n))
        return self.node(n)

    def unplug(self, n: int) -> None:
        self.node(n).unlink()
        shutil.rmtree(self.sys_class / f"event{n}")
        shutil.rmtree(self.devices / f"1-{n}")
