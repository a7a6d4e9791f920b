"""The box itself: the image booted under QEMU, its agent under the real systemd, a USB keyboard as the scanner.

The image (image/build.py, cached between runs) boots from its own disk. QEMU's USB keyboard on an
xHCI controller stands in for a keyboard-wedge scanner: barcodes are typed into it through QMP
(input-send-event), so they travel through the guest kernel's USB HID driver and evdev into the
agent. The guest reaches a Mosquitto and central ingest started here at 10.0.2.2 (QEMU's user
networking) on the development broker configuration (central/mosquitto.conf, plain MQTT).

The tests run in order on one box: boot, its machine id and activation, scans, the grab, a re-plug
mid-scan, a kernel that drops events, and a power cut. Then that box is switched off and a second
box boots from a fresh copy of the disk under UEFI firmware (OVMF), as a box's own firmware starts
it; and last the image is built a second time and compared with the first, byte for byte. The
test's copy of the disk gets the fleet's agent.toml and a root shell on the second serial port
(image.vm.CONTROL_FILES) to look inside; the image itself has neither.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from demo.stack import Stack
from image import vm
from image.build import ImageError, add_boot_options, build, configure, partition, two_builds
from image.compare import differences

from .harness import wait_until

# What the box scans: products of the demo's price list (valid EAN-13s).
PRODUCTS = ["6901028075831", "6902672100139", "6920883001151", "6901802010010", "6901028075848", "6902672100122"]
READY = r"Started counterbox-agent\.service"
MACHINE_ID = r"[0-9a-f]{32}"
SHARED_ID = "c0b0c0b0c0b04c0b8c0bc0b0c0b0c0b0"  # the one id every box had before each kept its own
TAKEN = r"scanner taken (/dev/input/event\d+) 'QEMU QEMU USB Keyboard'"


def _why_not() -> str | None:
    if vm.qemu_binary() is None:
        return "qemu-system-x86_64 is not installed (./bootstrap installs qemu-system-x86)"
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap)"
    if not vm.ovmf():
        return f"{vm.OVMF_CODE} is missing (./bootstrap installs ovmf, the UEFI firmware the second box boots)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _parts():
    """The parts a boot needs: ./run-tests installs them. Missing, the tests fail and say which: a
    skipped boot test would check nothing."""
    missing = _why_not()
    if missing is not None:
        pytest.fail(missing)


def _fleet_config(stack: Stack) -> str:
    ops = stack.ops_public_key()
    return (
        "# The test's fleet: its broker and central on the host, QEMU's keyboard taken by its USB id.\n"
        "[scanner]\nusb_ids = [\"0627:0001\"]\n\n"
        f"[broker]\nhost = \"10.0.2.2\"\nport = {stack.broker_port}\n\n"
        f"[uplink]\ncentral_key = \"{stack.central_public_key()}\"\n"
        "batch_max_delay = 0.2\nack_timeout = 3.0\n\n"
        f"[operations.keys]\n\"{ops['kid']}\" = \"{ops['public_key']}\"\n"
    )


class Box:
    """The booted box, the stack it reports to, and what the test has seen of it."""

    def __init__(self, directory: Path, image, stack: Stack):
        self.directory, self.image, self.stack = directory, image, stack
        self.machine = vm.Machine(image, directory, disk=directory / "counterbox.img",
                                  cmdline_extra=f"systemd.wants={vm.CONTROL_UNIT}")
        self.shell: vm.Control | None = None
        self.device_id = ""
        self.machine_id = ""
        self.boots: list[float] = []  # seconds from power-on to READY=1, each boot

    def boot(self) -> None:
        self.machine.start()
        self.shell = self.machine.control()  # connected from power-on: its port keeps nothing said before
        self.machine.console.wait_for(READY, 240, alive=self.machine.alive)
        self.boots.append(time.monotonic() - self.machine.started_at)

    def sh(self, command: str, **kwargs) -> str:
        return self.shell.run(command, **kwargs)

    def journal(self, unit: str = "counterbox-agent") -> str:
        return self.sh(f"journalctl -b -o short-monotonic --no-pager -u {unit}")

    def agent_pid(self) -> int:
        return int(self.sh("systemctl show -p MainPID --value counterbox-agent").strip())

    def sales(self) -> list[dict]:
        return [s for s in self.stack.sales() if s["device"] == self.device_id]

    def wait_for_sales(self, count: int, timeout: float = 60) -> list[dict]:
        return wait_until(lambda: s if len(s := self.sales()) >= count else None, timeout, f"{count} sales at central")

    def scan(self, code: str) -> None:
        self.machine.type(code + "\n")
        time.sleep(0.3)  # the next customer: a pause ends nothing a terminator has not ended

    def power_cut(self) -> None:
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        self.machine.power_cut()


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    try:
        started = time.monotonic()
        image = build(log=lambda line: print(line, flush=True))
        took = time.monotonic() - started
    except ImageError as error:
        pytest.fail(str(error), pytrace=False)
    facts = image.facts
    print(f"\nimage {image.inputs}: built in {facts['seconds']} s ({'now' if took > 5 else 'cached'}), "
          f"{facts['disk_bytes'] / 2**20:.0f} MiB disk, {facts['disk_allocated_bytes'] / 2**20:.0f} MiB allocated; "
          f"{vm.accelerator().upper()}")
    directory = tmp_path_factory.mktemp("box")
    with Stack(directory / "stack") as stack:
        stack.start_broker()
        stack.start_central()
        _copy_for_a_box(image, directory, stack)
        the_box = Box(directory, image, stack)
        try:
            the_box.boot()
            print(f"power-on to READY=1: {the_box.boots[0]:.1f} s")
            yield the_box
        finally:
            the_box.power_cut()
            shutil.copy(the_box.machine.console.path, directory / "console.final.log")


def _copy_for_a_box(image, directory: Path, stack: Stack) -> Path:
    """A box's own copy of the image's disk, with the fleet's agent.toml and the test's shell."""
    directory.mkdir(parents=True, exist_ok=True)
    disk = directory / "counterbox.img"
    subprocess.run(["cp", "--sparse=always", str(image.disk), str(disk)], check=True)
    configure(disk, {"/etc/counterbox/agent.toml": (_fleet_config(stack), 0o640, "counterbox"), **vm.CONTROL_FILES})
    return disk


def _monotonic(line: str) -> float:
    return float(re.match(r"\[\s*(\d+\.\d+)\]", line).group(1))


def test_the_box_boots_read_only_with_its_state_on_the_data_partition_and_no_login_anywhere(box):
    mounts = box.sh("for m in / /var /var/lib; do findmnt -rno TARGET,SOURCE,FSTYPE,OPTIONS -M $m; done")
    root, var, var_lib = (line.split() for line in mounts.strip().splitlines())
    assert root[3].split(",")[0] == "ro", mounts
    assert var[2] == "tmpfs", mounts
    assert var_lib[1] == "/dev/vda3" and var_lib[2] == "ext4" and var_lib[3].split(",")[0] == "rw", mounts
    # The first boot made the data key and sealed it; the agent opened its journal with it.
    assert box.sh("test -s /var/lib/counterbox-credentials/data-key.cred && echo sealed").strip() == "sealed"
    # Beside the credential, the journal's own share of its outer key (what an erase destroys), and the running
    # agent's lock (one per journal).
    assert sorted(box.sh("ls -A /var/lib/counterbox").split()) == [
        "data.key.share", "device.key", "journal.db", "journal.db-shm", "journal.db-wal", "journal.db.lock"]
    assert "counterbox-agent.service" in box.sh("systemctl list-units --state=active --no-legend --plain 'counterbox*'")
    # No getty on any VT or serial port, and nothing that starts one.
    assert box.sh("systemctl list-units --all --no-legend --plain '*getty*' 'autovt@*' systemd-logind.service"
                  " | grep -v ' masked\\| inactive\\| not-found' || true").strip() == ""
    assert box.sh("grep -slE 'getty|login' /proc/[0-9]*/comm || true").strip() == ""


def test_the_box_keeps_a_machine_id_of_its_own_on_its_data_partition_over_the_roots_empty_one(box):
    offset, _ = partition(box.image.disk, "counterbox-root")
    shipped = subprocess.run(["debugfs", "-R", "cat /etc/machine-id", f"{box.image.disk}?offset={offset}"],
                             capture_output=True, text=True, check=True).stdout
    assert shipped == ""  # machine-id(5): empty, so that the id can be laid over it; and no first boot
    box.machine_id = box.sh("cat /etc/machine-id").strip()
    assert re.fullmatch(MACHINE_ID, box.machine_id) and box.machine_id != SHARED_ID, box.machine_id
    assert box.sh("cat /var/lib/machine-id").strip() == box.machine_id
    # Laid over the root's file once, read-only, by the initramfs; systemd took it as it found it.
    assert box.sh("cat /run/counterbox-machine-id/machine-id").strip() == box.machine_id
    mounts = box.sh("findmnt -rno OPTIONS /etc/machine-id").split()
    assert len(mounts) == 1 and mounts[0].split(",")[0] == "ro", mounts
    said = box.sh("journalctl -b --no-pager -o cat -t counterbox-machine-id")
    assert said.strip() == "the machine id kept on /dev/vda3", said


def test_hid_pos_discovery_and_the_xkb_keymap_start_inside_the_units_sandbox(box):
    log = box.journal()
    assert "HID POS scanners are not looked for" not in log and "looking for HID POS scanners failed" not in log, log
    # libusb started: the agent holds its hotplug monitor, a kernel uevent netlink socket (protocol 15).
    sockets = box.sh(f"ls -l /proc/{box.agent_pid()}/fd | grep -o 'socket:\\[[0-9]*\\]' | tr -dc '0-9\\n'; echo; "
                     "cat /proc/net/netlink").split("\n\n", 1)
    inodes = set(sockets[0].split())
    uevent = [row.split() for row in sockets[1].splitlines()[1:] if row.split()[1] == "15"]
    assert any(row[-1] in inodes for row in uevent), sockets
    assert re.search(TAKEN + r" 0627:0001 'QEMU' 'QEMU USB Keyboard' serial '\S+': configured USB id 0627:0001", log), log


def test_a_waiting_box_is_activated_by_operations_and_its_scans_arrive_at_central_verified(box):
    stack = box.stack
    waiting = lambda: [json.loads(line)["device"] for line in stack.ops_command(
        "activation", "waiting", "--central-db", str(stack.central_db), "--json").stdout.splitlines()]
    box.device_id = wait_until(lambda: (w := waiting()) and w[0], 60, "the box's hello at central")
    for command in (["shop", "add", "--central-db", str(stack.central_db), "--licence", "530102100123",
                     "--name", "Mengzi No. 3", "--region", "honghe"],
                    ["activation", "issue", "--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key),
                     "--shop", "530102100123", "--device", box.device_id, "--push",
                     "--broker", f"127.0.0.1:{stack.broker_port}"]):
        done = stack.ops_command(*command)
        assert done.returncode == 0, done.stderr
    box.machine.console.wait_for(r"activated seq=\d+ device=" + box.device_id, 60)
    for code in PRODUCTS[:3]:
        box.scan(code)
    sales = box.wait_for_sales(3)
    assert [s["code"] for s in sales] == PRODUCTS[:3]
    central_log = stack.central_log.read_text()
    assert "batch accepted" in central_log and "batch rejected" not in central_log


WITNESS = """
import glob, os, select, struct, time
# Reads every input device QEMU's keyboard makes, without grabbing it, and counts the keys it is
# given: while the agent holds its grab the kernel gives this reader (and the console) nothing.
open_, keys = {}, 0
while True:
    for path in glob.glob("/dev/input/event*"):
        name = open("/sys/class/input/" + os.path.basename(path) + "/device/name").read().strip()
        if path not in open_ and name == "QEMU QEMU USB Keyboard":
            open_[path] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    for fd in select.select(list(open_.values()), [], [], 0.1)[0]:
        try:
            data = os.read(fd, 24 * 64)
        except OSError:
            open_ = {p: f for p, f in open_.items() if f != fd}
            continue
        keys += sum(1 for i in range(0, len(data), 24) if struct.unpack_from("HHi", data, i + 16)[0] == 1)
    with open("/run/witness.tmp", "w") as out:
        out.write(str(keys))
    os.replace("/run/witness.tmp", "/run/witness")
"""


def test_the_grab_holds_nothing_typed_reaches_another_reader_the_console_or_a_login_prompt(box):
    script = base64.b64encode(WITNESS.encode()).decode()
    box.sh(f"echo {script} | base64 -d > /run/witness.py; python3 /run/witness.py >/run/witness.log 2>&1 & echo $! > /run/witness.pid")
    wait_until(lambda: box.sh("cat /run/witness 2>/dev/null || true").strip() == "0", 30, "the witness reading")
    before = len(box.sales())
    for code in PRODUCTS[3:5]:
        box.scan(code)
    box.wait_for_sales(before + 2)
    assert box.sh("cat /run/witness").strip() == "0"
    # The tty the keyboard would type into shows no login prompt, and nobody ever failed one.
    assert "login" not in box.sh("cat /dev/vcs1; echo").lower()
    assert "FAILED LOGIN" not in box.sh("journalctl -b --no-pager")
    # The witness does see keys the agent does not hold: stopped, the agent lets go.
    console = len(box.machine.console.text())
    box.sh("systemctl stop counterbox-agent")
    box.machine.type("1")
    wait_until(lambda: int(box.sh("cat /run/witness")) > 0, 10, "the witness to see a key typed with the agent stopped")
    box.sh("kill $(cat /run/witness.pid); systemctl start counterbox-agent")
    box.machine.console.wait_for(TAKEN, 60, since=console)


def test_a_scanner_replugged_mid_scan_is_taken_again_at_the_next_look_and_books_no_fragment(box):
    before = len(box.sales())
    console = len(box.machine.console.text())
    box.machine.type(PRODUCTS[0][:7])
    box.machine.unplug()
    box.machine.plug()
    box.machine.console.wait_for(TAKEN, 30, since=console)
    log = box.journal()
    kernel = box.sh("journalctl -b -k -o short-monotonic --no-pager -g 'input: QEMU QEMU USB Keyboard'")
    plugged = _monotonic(kernel.strip().splitlines()[-1])
    taken = [_monotonic(line) for line in log.splitlines() if re.search(TAKEN, line)]
    # Taken at the agent's next look (rescan_interval, 0.5 s): not after a failed open and a retry, nor by a
    # restarted agent. How long that took is printed, not bounded: under software emulation the guest's own
    # work (open, grab, the event's fsync) follows the host's load (0.6 s to 1.3 s measured).
    print(f"scanner taken {taken[-1] - plugged:.3f} s after the kernel listed it (guest clock, emulated)")
    after_plug = log[log.rfind("was unplugged"):]
    assert taken[-1] > plugged and "not taken" not in after_plug and "agent started" not in after_plug, (kernel, log)
    # The partial barcode is refused: cut by the unplug, or, when the unplug comes a moment after the
    # last key, by the pause (a burst that stops without its terminator).
    assert re.search(r"refused seq=\d+ scanner=/dev/input/event\d+: the (scanner was unplugged mid-scan|scan stopped "
                     r"without its terminator)", log[log.rfind("agent started"):]), log
    # Taken once again, and only once the device is there: never announced for one already gone
    # (read from what sysfs still listed: an empty serial, then "lost").
    after_unplug = log[log.rfind("was unplugged"):]
    assert len(re.findall(TAKEN, after_unplug)) == 1 and "serial ''" not in after_unplug, after_unplug
    box.scan(PRODUCTS[1])
    sales = box.wait_for_sales(before + 1)
    assert [s["code"] for s in sales[before:]] == [PRODUCTS[1]]


def test_events_the_kernel_dropped_while_the_agent_was_stopped_book_no_tail_of_a_barcode(box):
    before = len(box.sales())
    console = len(box.machine.console.text())
    pid = box.agent_pid()
    box.sh(f"kill -STOP {pid}")
    try:
        for code in PRODUCTS[:4]:  # 4 x 14 keys x 3 events (scan code, key, sync): past evdev's 64-event buffer
            box.machine.type(code + "\n")
    finally:
        box.sh(f"kill -CONT {pid}")
    box.machine.console.wait_for(r"the kernel dropped events \(SYN_DROPPED\)", 60, since=console)
    # Scanned again until it is booked: on a starved host QEMU's keyboard itself may lose a key of
    # it, which the agent refuses as a misread (a wrong check digit), never as a sale.
    for attempt in range(3):
        box.scan(PRODUCTS[5])
        try:
            wait_until(lambda: any(s["code"] == PRODUCTS[5] for s in box.sales()[before:]), 20, "the scan after the drop")
            break
        except AssertionError:
            if attempt == 2:
                raise
    time.sleep(2)  # anything else the agent would book from the burst is delivered by now
    booked = [s["code"] for s in box.sales()[before:]]
    assert "the kernel dropped events" in box.journal()
    assert booked[-1] == PRODUCTS[5] and all(code in PRODUCTS for code in booked), booked
    assert len(booked) <= 5, booked


def test_a_power_cut_mid_burst_loses_no_acknowledged_sale_and_books_none_twice(box):
    console = len(box.machine.console.text())
    for code in PRODUCTS + PRODUCTS[:2]:
        box.machine.type(code + "\n")
    box.machine.type(PRODUCTS[2][:6])  # the cut comes in the middle of a barcode
    # Acknowledged: recorded durably and answered (the agent logs a sale once its commit is done).
    acknowledged = {int(seq) for seq in re.findall(r"sale seq=(\d+)", box.machine.console.text()[console:])}
    box.power_cut()
    assert acknowledged, "no sale was acknowledged before the cut"
    box.boot()
    print(f"power-on to READY=1 after the cut: {box.boots[-1]:.1f} s")

    wait_until(lambda: acknowledged <= {s["seq"] for s in box.sales()}, 60, "every acknowledged sale at central")
    seqs = [s["seq"] for s in box.sales()]
    assert acknowledged <= set(seqs), (acknowledged, seqs)
    assert len(seqs) == len(set(seqs))
    # The same box after the reboot: the same machine id, so systemd's credential secret, and with it
    # the data key, still open; the journal takes the next sale.
    assert box.sh("cat /etc/machine-id").strip() == box.machine_id
    before = len(box.sales())
    box.scan(PRODUCTS[3])
    assert box.wait_for_sales(before + 1)[-1]["code"] == PRODUCTS[3]
    agent = box.sh(f"grep VmRSS /proc/{box.agent_pid()}/status").split()[1]
    bare = box.sh("python3 -c 'import time; time.sleep(4)' & sleep 2; grep VmRSS /proc/$!/status; wait").split()[1]
    print(f"agent resident memory after the test's scans: {int(agent) / 1024:.1f} MiB; "
          f"a bare python3 in the same guest: {int(bare) / 1024:.1f} MiB")


def test_a_second_box_boots_from_its_disk_alone_under_uefi_firmware_with_a_machine_id_of_its_own(box, tmp_path):
    assert box.machine_id, "the first box's machine id was not read"
    box.power_cut()  # one machine at a time on two cores: the first box has done its part
    disk = _copy_for_a_box(box.image, tmp_path, box.stack)
    # A new drive: its data partition blank, which the initramfs formats before it keeps the id there.
    offset, size = partition(disk, "counterbox-data")
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(offset), "--length", str(size), str(disk)], check=True)
    # The test's shell, through the boot entry systemd-boot reads: what the entry says is what boots.
    options = add_boot_options(disk, f"systemd.wants={vm.CONTROL_UNIT}")
    with vm.Machine(box.image, tmp_path, disk=disk, firmware="uefi") as second:
        second.start()
        shell = second.control(timeout=300)
        try:
            second.console.wait_for(READY, 300, alive=second.alive)
            took = time.monotonic() - second.started_at
            assert shell.run("test -d /sys/firmware/efi && echo uefi").strip() == "uefi"
            # The entry's options, after the initrd systemd-boot names for the kernel's EFI stub.
            assert shell.run("cat /proc/cmdline").split() == ["initrd=\\initrd.img", *options.split()]
            # systemd-boot says which entry it started (LoaderEntrySelected, UTF-16).
            selected = shell.run("cat /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
                                 " | tr -d '\\000'")
            assert "counterbox.conf" in selected, selected
            assert shell.run("findmnt -rno SOURCE /").strip() == "/dev/vda2"
            second_id = shell.run("cat /etc/machine-id").strip()
            assert shell.run("cat /var/lib/machine-id").strip() == second_id
            assert shell.run("journalctl -b --no-pager -o cat -t counterbox-machine-id").splitlines() == [
                "formatting the blank data partition /dev/vda3", "the machine id kept on /dev/vda3"]
            assert shell.run("findmnt -rno SOURCE,FSTYPE /var/lib").split() == ["/dev/vda3", "ext4"]
            assert shell.run("test -s /var/lib/counterbox-credentials/data-key.cred && echo sealed").strip() == "sealed"
        finally:
            shell.close()
    assert re.fullmatch(MACHINE_ID, second_id) and second_id not in (box.machine_id, SHARED_ID), second_id
    print(f"power-on to READY=1 under UEFI firmware (OVMF): {took:.1f} s; "
          f"by direct kernel boot: {box.boots[0]:.1f} s (first boot), {box.boots[-1]:.1f} s (after the cut)")


def test_two_builds_of_one_tree_make_the_same_disk_kernel_and_initrd(tmp_path):
    started = time.monotonic()
    first, second = two_builds(tmp_path)
    print(f"second build: {time.monotonic() - started:.0f} s")
    assert first.facts["packages"] == second.facts["packages"]
    assert differences(first, second) == []
