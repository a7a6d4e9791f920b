"""The box under QEMU, as the boot test and the boot benchmark run it.

The machine: the image's disk on virtio, its kernel and initrd booted directly (what systemd-boot
would load from the ESP) or, with ``firmware="uefi"``, the disk alone under OVMF, whose systemd-boot
loads them as a box's firmware does; user networking (the host is 10.0.2.2 to the guest), and an xHCI
controller with QEMU's USB keyboard standing in for a keyboard-wedge scanner; no PS/2 keyboard
(``i8042=off``), so what is typed reaches the guest only through that USB keyboard. The first
serial port (the box's console and log) goes to a file; QMP types, unplugs and cuts the power.

    with Machine(image, directory) as box:
        box.start()
        box.console.wait_for("Started counterbox-agent.service")
        box.type("6901028075831\\n")
        box.unplug(); box.plug()
        box.power_cut()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .build import Image

# QEMU's USB keyboard takes about 128 events a second and drops what overflows its 16-event queue.
KEY_EVENT_INTERVAL = 0.010  # seconds between two key events typed through QMP
SCANNER = "scanner"  # the USB keyboard's QEMU device id
_QCODES = {"\n": "ret", "\t": "tab", "-": "minus", ".": "dot", " ": "spc", "/": "slash"}


# UEFI firmware for QEMU (Debian's ovmf): the code read-only, and a copy of the variable store per machine.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
FIRMWARES = ("direct", "uefi")


class MachineError(Exception):
    """QEMU would not start, or the guest did not do what was waited for."""


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def ovmf() -> bool:
    """Whether the UEFI firmware is installed (./bootstrap installs Debian's ovmf)."""
    return OVMF_CODE.exists() and OVMF_VARS.exists()


def accelerator() -> str:
    """KVM where a hardware hypervisor backs /dev/kvm (kvm_intel or kvm_amd loaded), else TCG.

    A /dev/kvm from a software hypervisor (kvm-pvm, say) may not run a stock kernel at all."""
    hardware = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    return "kvm" if hardware and os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def qcodes(text: str) -> list[tuple[str, bool]]:
    """(qcode, shifted) for each character a scanner types."""
    keys = []
    for char in text:
        if char.isdigit() or "a" <= char <= "z":
            keys.append((char, False))
        elif "A" <= char <= "Z":
            keys.append((char.lower(), True))
        elif char in _QCODES:
            keys.append((_QCODES[char], False))
        else:
            raise ValueError(f"no QEMU key for {char!r}")
    return keys


class Console:
    """The guest's first serial port, as QEMU writes it to a file: kernel messages and the journal."""

    def __init__(self, path: Path):
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float, *, since: int = 0, alive=None) -> re.Match:
        """The first match of the regular expression ``pattern`` after offset ``since``."""
        deadline = time.monotonic() + timeout
        expression = re.compile(pattern)
        while True:
            found = expression.search(self.text(), since)
            if found:
                return found
            if alive is not None and not alive():
                raise MachineError(f"QEMU stopped while waiting for {pattern!r}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise MachineError(f"{pattern!r} did not appear on the console within {timeout:.0f} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)


# A root shell on the second serial port, for tests and benchmarks to look inside the guest. It is
# never part of the image: they write it into their copy of the disk (build.configure) and start it
# with systemd.wants= on the kernel command line.
CONTROL_UNIT = "counterbox-test-control.service"
CONTROL_FILES = {
    f"/etc/systemd/system/{CONTROL_UNIT}": ("""[Unit]
Description=the boot test's shell on ttyS1 (written into the test's copy of the image)
DefaultDependencies=no
After=systemd-udevd.service

[Service]
ExecStart=/etc/systemd/system/counterbox-test-control
""", 0o644, "root"),
    "/etc/systemd/system/counterbox-test-control": ("""#!/bin/sh
stty -F /dev/ttyS1 raw -echo
exec </dev/ttyS1 >/dev/ttyS1 2>&1
echo @@ready@@
while IFS= read -r line; do
    sh -c "$line" </dev/null
    rc=$?
    printf '\\n@@done %d@@\\n' "$rc"
done
""", 0o755, "root"),
}


class Control:
    """The guest's control shell (CONTROL_FILES) through QEMU's second serial port, a unix socket."""

    def __init__(self, path: Path, timeout: float = 120.0, alive=None):
        deadline = time.monotonic() + timeout
        self.socket = socket.socket(socket.AF_UNIX)
        while True:
            try:
                self.socket.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise MachineError(f"the control port {path} did not open") from None
                time.sleep(0.1)
        self.buffer = b""
        self._until(b"@@ready@@\n", timeout)

    def _until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            self.socket.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.socket.recv(65536)
            except TimeoutError:
                raise MachineError(f"the guest's shell did not answer within {timeout} s: {self.buffer[-500:]!r}") from None
            if not chunk:
                raise MachineError("the guest's shell went away")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def run(self, command: str, timeout: float = 60.0, *, check: bool = True) -> str:
        """``command`` run by sh as root in the guest; its output (stdout and stderr)."""
        self.socket.sendall(command.encode() + b"\n")
        output = self._until(b"\n@@done ", timeout)
        rc = int(self._until(b"@@\n", 5))
        text = output.decode(errors="replace")
        if check and rc:
            raise MachineError(f"guest: {command!r} exited {rc}: {text[-2000:]}")
        return text

    def close(self) -> None:
        self.socket.close()


class Qmp:
    """QEMU's machine protocol on a unix socket: commands and their answers; events kept as they come."""

    def __init__(self, path: Path, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.socket = socket.socket(socket.AF_UNIX)
                self.socket.connect(str(path))
                break
            except OSError:
                self.socket.close()
                if time.monotonic() > deadline:
                    raise MachineError(f"QMP did not answer on {path}") from None
                time.sleep(0.05)
        self.socket.settimeout(timeout)
        self.reader = self.socket.makefile("rb")
        self.events: list[dict] = []
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise MachineError("QMP closed")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        self.socket.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise MachineError(f"QMP {command}: {message['error']['desc']}")
            elif "return" in message:
                return message["return"]

    def wait_event(self, name: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            if time.monotonic() > deadline:
                raise MachineError(f"no QMP event {name} within {timeout} s")
            self.socket.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                self.events.append(self._read())
            except TimeoutError:
                pass
            finally:
                self.socket.settimeout(30.0)

    def close(self) -> None:
        self.reader.close()
        self.socket.close()


class Machine:
    """One box. ``firmware="direct"`` boots the image's kernel and initrd with the boot entry's command
    line and ``cmdline_extra``; ``firmware="uefi"`` boots the disk alone, with the command line its
    boot entry holds (build.add_boot_options() writes more into a copy of the disk)."""

    def __init__(self, image: Image, directory: Path, *, disk: Path | None = None, cmdline_extra: str = "",
                 firmware: str = "direct", memory_mib: int = 512, cpus: int = 2):
        if firmware not in FIRMWARES:
            raise ValueError(f"firmware is one of {', '.join(FIRMWARES)}, not {firmware!r}")
        if firmware == "uefi" and cmdline_extra:
            raise ValueError("under UEFI the command line is the boot entry's: write options into the disk "
                             "with build.add_boot_options()")
        self.image, self.directory, self.firmware = image, directory, firmware
        self.disk = disk or image.disk
        self.cmdline = f"{image.cmdline} {cmdline_extra}".strip()
        self.memory_mib, self.cpus = memory_mib, cpus
        self.process: subprocess.Popen | None = None
        self.qmp: Qmp | None = None
        self.console = Console(directory / "console.log")
        self.started_at = 0.0  # time.monotonic() at power-on

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.power_cut()

    def _boot(self) -> list[str]:
        if self.firmware == "direct":
            return ["-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", self.cmdline]
        if not ovmf():
            raise MachineError(f"{OVMF_CODE} is missing: ./bootstrap installs Debian's ovmf")
        variables = self.directory / "OVMF_VARS.fd"
        if not variables.exists():  # the machine's own NVRAM, kept across its boots like a box's
            shutil.copyfile(OVMF_VARS, variables)
        return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]

    def command(self) -> list[str]:
        accel = accelerator()
        return [
            qemu_binary() or "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", f"pc,i8042=off,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(self.cpus), "-m", str(self.memory_mib), "-no-reboot",
            *self._boot(),
            "-drive", f"file={self.disk},format=raw,if=virtio,discard=unmap",
            "-netdev", "user,id=net", "-device", "virtio-net-pci,netdev=net",
            "-device", "virtio-rng-pci",
            "-device", "qemu-xhci,id=xhci", "-device", f"usb-kbd,id={SCANNER},bus=xhci.0",
            "-serial", f"file:{self.console.path}",
            "-chardev", f"socket,id=control,path={self.directory / 'control.sock'},server=on,wait=off",
            "-serial", "chardev:control",
            "-qmp", f"unix:{self.directory / 'qmp.sock'},server=on,wait=off",
        ]

    def start(self) -> None:
        """Power on. The console file starts empty: each boot has its own (the last one kept beside it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.console.path.exists():
            self.console.path.replace(self.console.path.with_suffix(".previous.log"))
        for name in ("qmp.sock", "control.sock"):
            (self.directory / name).unlink(missing_ok=True)
        with (self.directory / "qemu.log").open("ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            self.qmp = Qmp(self.directory / "qmp.sock")
        except MachineError:
            self.power_cut()
            raise MachineError(f"QEMU did not start: {(self.directory / 'qemu.log').read_text()[-2000:]}") from None

    def control(self, timeout: float = 120.0) -> Control:
        """The guest's shell, once it says it is ready (only in a disk given CONTROL_FILES). Call it right
        after start(): what the guest writes to the port while nobody is connected is lost."""
        return Control(self.directory / "control.sock", timeout, alive=self.alive)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def type(self, text: str, interval: float = KEY_EVENT_INTERVAL) -> None:
        """Type ``text`` on the USB keyboard, one key event every ``interval`` seconds, as a scanner types."""
        for code, shifted in qcodes(text):
            keys = ["shift", code] if shifted else [code]
            for down, order in ((True, keys), (False, keys[::-1])):
                for key in order:
                    self.qmp.execute("input-send-event", events=[
                        {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": key}}}])
                    time.sleep(interval)

    def unplug(self) -> None:
        self.qmp.execute("device_del", id=SCANNER)
        self.qmp.wait_event("DEVICE_DELETED")

    def plug(self) -> None:
        self.qmp.execute("device_add", driver="usb-kbd", id=SCANNER, bus="xhci.0")

    def power_cut(self) -> None:
        """Off at once, as a pulled plug: QEMU quits, the guest neither syncs nor shuts down."""
        if self.alive():
            try:
                self.qmp.execute("quit")
            except (MachineError, OSError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
