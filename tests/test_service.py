"""The agent under systemd: readiness, status and watchdog (Type=notify), the shipped units, and the journal.

systemd is not PID 1 here, so the agent's notifications are received on a socket of the test's own,
as systemd would receive them ($NOTIFY_SOCKET); the units are checked with systemd's own analyzer."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def test_the_agent_says_ready_when_its_store_and_link_are_up_reports_its_state_and_pings_the_watchdog(
        stack, fifo, tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(0.2)
    messages: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                messages.append(receiver.recv(4096).decode())
            except TimeoutError:
                return messages

    device = stack.provision("shop-svc", scanners=[str(fifo)])
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4: a ping every 0.2 s
    device.start()
    try:
        wait_until(lambda: any(m.startswith("READY=1") for m in drain()), 20, "READY=1")
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert re.search(r"STATUS=(online|offline \(broker unreachable\)), \d+ events queued", ready), ready
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in drain()) >= 3, 10, "watchdog pings from the loop")
        stack.stop_broker()
        wait_until(lambda: any("STATUS=offline (broker unreachable)" in m for m in drain()), 20, "offline status")
    finally:
        device.stop()
    wait_until(lambda: "STOPPING=1" in drain(), 10, "STOPPING=1")
    receiver.close()


def _installable(unit: Path, directory: Path) -> Path:
    """The unit as shipped, with its ExecStart pointing at this tree's agent (the analyzer checks it exists)."""
    text = unit.read_text().replace("/opt/counterbox/.venv/bin/counterbox", str(Path(sys.executable).parent / "counterbox"))
    copy = directory / unit.name
    copy.write_text(text)
    return copy


def test_every_unit_verifies_and_the_agent_is_rated_well_hardened(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: ./bootstrap installs Debian's systemd"
    units = sorted(UNITS.glob("*.service"))
    assert [u.name for u in units] == ["counterbox-agent.service", "counterbox-data-key.service"]
    copies = [_installable(unit, tmp_path) for unit in units]
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, copies)], capture_output=True, text=True)
    problems = [line for line in verified.stderr.splitlines() if "counterbox" in line]
    assert verified.returncode == 0 and not problems, verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copies[0])],
                              capture_output=True, text=True)
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout).group(1))
    assert level <= 2.0, security.stdout[-3000:]


def test_the_data_key_is_on_disk_before_its_name_is():
    """Renamed before its data reached the disk, a power cut could leave data-key.cred empty, and the unit,
    which runs only while there is none, would never make it again: no journal could be opened."""
    [start] = [line for line in (UNITS / "counterbox-data-key.service").read_text().splitlines()
               if line.startswith("ExecStart=")]
    steps = [step.strip() for step in start.split("'")[1].split("&&")]
    assert steps[0].endswith("/data-key.cred.new") and steps[-2].startswith("mv ")
    assert steps[1:] == ["sync", steps[-2], "sync"]


def test_log_lines_carry_the_event_as_journal_fields_and_never_its_content():
    import logging

    from agent import logs
    from agent.counter import Outcome, log_recorded
    from drivers.feedback import Signal
    from storage import Event

    sent: list[tuple[str, dict]] = []
    handler = logs.journal_handler(sender=lambda MESSAGE, **fields: sent.append((MESSAGE, fields)))
    logs.identify(handler, "shop-0001")
    logger = logging.getLogger("agent.counter")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        log_recorded(Outcome(Signal.GOOD, (Event(42, "sale", {"code": "6901028075831", "known": True,
                                                              "unit_price": 2300, "scanner": "/dev/input/event3"}),)),
                     "/dev/input/event3")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    message, fields = sent[-1]
    # journald keeps only fields named in capitals; the handler also passes the record's own
    # attributes (a timestamp may hold any digits), which the journal drops.
    fields = {name: value for name, value in fields.items() if re.fullmatch(r"[A-Z0-9_]+", name)}
    assert (fields["DEVICE_ID"], fields["EVENT_SEQ"], fields["EVENT_KIND"], fields["SCANNER"]) == (
        "shop-0001", 42, "sale", "/dev/input/event3")
    assert "6901028075831" not in message + repr(fields) and "2300" not in message + repr(fields)
