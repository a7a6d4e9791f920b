"""A whole counterbox installation on one machine: a broker, central, and agents.

The demo and the tests run the real parts through this one module:

    with Stack(Path("/tmp/cb")) as stack:
        stack.start_broker()
        stack.start_central()
        device = stack.provision("shop-0001", scanners=["scanner.fifo"])
        device.start()
        ...

Every part is a real process: ``mosquitto`` with the configuration counterbox
ships (central/mosquitto.conf) on a free port of 127.0.0.1, and the
``counterbox`` and ``counterbox-central`` commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.identity import key_id, load_key, public_key_text

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_BROKER_CONFIG = ROOT / "central" / "mosquitto.conf"
PRODUCTION_BROKER_CONFIG = ROOT / "central" / "mosquitto-production.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run ./bootstrap")
    return found


def broker_config(port: int, persistence: Path, *, production: Path | None = None) -> str:
    """A shipped configuration with only the listener, the file locations and the user changed;
    ``production``: the production configuration, with its TLS and access-control files there."""
    lines = []
    shipped = PRODUCTION_BROKER_CONFIG if production else SHIPPED_BROKER_CONFIG
    for line in shipped.read_text().splitlines():
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("persistence_location "):
            line = f"persistence_location {persistence}/"
        elif production and line.startswith(("certfile ", "keyfile ")):
            line = f"{line.split()[0]} {production / ('broker.crt' if line.startswith('cert') else 'broker.key')}"
        elif production and line.startswith("plugin_opt_config_file "):
            line = f"plugin_opt_config_file {production / 'dynamic-security.json'}"
        lines.append(line)
    # Running as root, mosquitto would switch to the 'mosquitto' user and lose this directory.
    lines.append(f"user {os.environ.get('USER') or 'root'}" if os.geteuid() == 0 else "")
    return "\n".join(lines) + "\n"


def throwaway_ca(directory: Path) -> None:
    """A CA and a broker certificate for 127.0.0.1 and localhost, for tests and the demo only."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "counterbox test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "broker.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "broker.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _python_command(module: str) -> list[str]:
    return [sys.executable, "-m", module]


@dataclass
class Device:
    """A provisioned agent: its directory, configuration and process."""

    stack: "Stack"
    device_id: str
    directory: Path
    public_key: str
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "agent.log"

    @property
    def config(self) -> Path:
        return self.directory / "agent.toml"

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            _python_command("agent") + ["-c", str(self.config), *args],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                _python_command("agent") + ["-c", str(self.config), "--log-level", self.stack.log_level, "run"],
                cwd=ROOT, stdout=log, stderr=log
            )

    def stop(self) -> None:
        _stop(self.process)

    def kill(self) -> None:
        """SIGKILL: the power cut, as far as a process can have one."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def identity(self) -> dict:
        """{"device", "public_key"}: for a box installed without an id, known once it has made its key."""
        result = self.command("identity", "show")
        if result.returncode:
            raise RuntimeError(result.stderr)
        identity = json.loads(result.stdout)
        self.device_id, self.public_key = identity["device"], identity["public_key"]
        return identity

    def status(self) -> dict:
        result = self.command("status")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)


@dataclass
class Stack:
    directory: Path
    broker_port: int = field(default_factory=free_port)
    broker: subprocess.Popen | None = None
    central: subprocess.Popen | None = None
    devices: list[Device] = field(default_factory=list)
    # Short timings so that tests and the demo see resends in seconds, not minutes.
    uplink: dict = field(default_factory=lambda: {"batch_max_events": 25, "batch_max_delay": 0.2, "ack_timeout": 3.0})
    log_level: str = "INFO"  # of the agents and central
    # The production broker (TLS, dynamic security) instead of the development one.
    production: bool = False
    database: str | None = None  # central's database as a URL (postgresql+psycopg://...); None: SQLite
    ingests: dict[str, subprocess.Popen] = field(default_factory=dict)  # central's ingest processes, by name

    @property
    def tls(self) -> Path:
        return self.directory / "tls"

    def broker_args(self, who: str) -> list[str]:
        """A command's way into the production broker: ``who`` is central, ops or consumer."""
        if not self.production:
            return []
        return ["--username", f"counterbox-{who}", "--password-file", str(self.tls / f"{who}.password"),
                "--ca-file", str(self.tls / "ca.crt")]

    def __enter__(self) -> "Stack":
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        self.stop_central()
        self.stop_broker()

    # -- broker ----------------------------------------------------------------

    def start_broker(self, *, acl: str | None = None) -> None:
        """Start Mosquitto; ``acl`` is the text of an ACL file to enforce (as a production broker does)."""
        persistence = self.directory / "broker"
        persistence.mkdir(exist_ok=True)
        config = self.directory / "mosquitto.conf"
        if self.production and not (self.tls / "dynamic-security.json").exists():
            throwaway_ca(self.tls)
            made = subprocess.run(_python_command("central") + [
                "broker", "init", "--dynsec", str(self.tls / "dynamic-security.json"),
                "--central-password-file", str(self.tls / "central.password"),
                "--ops-password-file", str(self.tls / "ops.password"),
                "--consumer-password-file", str(self.tls / "consumer.password")], cwd=ROOT, capture_output=True, text=True)
            if made.returncode:
                raise RuntimeError(made.stderr)
        text = broker_config(self.broker_port, persistence, production=self.tls if self.production else None)
        if acl is not None:
            (self.directory / "acl").write_text(acl)
            text += f"acl_file {self.directory / 'acl'}\n"
        config.write_text(text)
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.broker = subprocess.Popen([mosquitto_binary(), "-c", str(config)], stdout=log, stderr=log)
        wait_for_port(self.broker_port)

    def stop_broker(self) -> None:
        _stop(self.broker)
        self.broker = None

    # -- central ---------------------------------------------------------------

    @property
    def central_db(self) -> Path | str:
        """Central's database: the ``database`` URL given (PostgreSQL), else a SQLite file of its own."""
        return self.database or self.directory / "central" / "central.db"

    @property
    def central_key(self) -> Path:
        return self.directory / "central" / "central.key"

    @property
    def central_log(self) -> Path:
        return self.directory / "central.log"

    def central_command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            _python_command("central") + ["--db", str(self.central_db), "--key", str(self.central_key), *args],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )

    @property
    def ops_key(self) -> Path:
        return self.directory / "central" / "ops.key"

    def ops_command(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(_python_command("central.ops") + list(args), input=input, cwd=ROOT,
                              capture_output=True, text=True, check=False)

    def ops_public_key(self) -> dict:
        """{"kid", "public_key"} of operations' signing key, created on first use."""
        if not self.ops_key.exists():
            self.ops_key.parent.mkdir(parents=True, exist_ok=True)
            result = self.ops_command("keygen", "--ops-key", str(self.ops_key))
            if result.returncode:
                raise RuntimeError(result.stderr)
        key = load_key(self.ops_key)
        return {"kid": key_id(key), "public_key": public_key_text(key)}

    def push(self, what: str, file: Path | None, *args: str) -> subprocess.CompletedProcess:
        """``counterbox-ops {what} push`` (``prices``, ``order``, or ``settings`` with no file) to this stack's broker."""
        return self.ops_command(what, "push", "--central-db", str(self.central_db), "--ops-key", str(self.ops_key),
                                "--broker", f"127.0.0.1:{self.broker_port}", *self.broker_args("ops"), *args,
                                *([str(file)] if file is not None else []))

    def central_public_key(self) -> str:
        if not self.central_key.exists():
            result = self.central_command("keygen")
        else:
            result = self.central_command("pubkey")
        if result.returncode:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)["central_key"]

    def start_central(self, *, share: str | None = None) -> None:
        self.central = self.start_ingest("central", share=share)

    def start_ingest(self, name: str, *, share: str | None = None) -> subprocess.Popen:
        """A central ingest process logging to ``{name}.log``; with ``share``, one of the instances
        sharing the subscription ``$share/{share}/...``. Returns once it has subscribed."""
        self.central_public_key()
        log_path = self.directory / f"{name}.log"
        subscribed = "subscribed to " + (f"$share/{share}/" if share else "") + "counterbox/v1/devices/+/batch"
        before = log_path.read_text().count(subscribed) if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                _python_command("central")
                + ["--db", str(self.central_db), "--key", str(self.central_key), "--log-level", self.log_level,
                   "ingest", "--port", str(self.broker_port), "--client-id", f"counterbox-{name}",
                   *self.broker_args("central")]
                + (["--broker-admin"] if self.production else []) + (["--share", share] if share else []),
                cwd=ROOT, stdout=log, stderr=log,
            )
        self.ingests[name] = process
        # Its subscription is in place (SUBACK) before anything is published.
        deadline = time.monotonic() + 15
        while log_path.read_text().count(subscribed) <= before:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not subscribe: {log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        return process

    def stop_central(self) -> None:
        for process in self.ingests.values():
            _stop(process, signal.SIGINT)
        self.ingests.clear()
        self.central = None

    def sales(self) -> list[dict]:
        result = self.central_command("export", "--kind", "sale")
        if result.returncode:
            raise RuntimeError(result.stderr)
        return [json.loads(line) for line in result.stdout.splitlines()]

    # -- devices ---------------------------------------------------------------

    def _configure(self, directory: Path, device: str, *, scanners: list[str], uplink: dict | None,
                   keepalive: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        settings = {**self.uplink, **(uplink or {})}
        ops = self.ops_public_key()
        (directory / "agent.toml").write_text(
            f'[device]\n{device}key_file = "device.key"\n\n'
            f'[storage]\npath = "journal.db"\nkey_file = "data.key"\n\n'
            # Only the given sources: no discovery of this machine's own /dev/input.
            f"[scanner]\npaths = {json.dumps(scanners)}\nretry_interval = 0.2\nauto = false\nhid_pos = false\n\n"
            f'[broker]\nhost = "127.0.0.1"\nport = {self.broker_port}\nkeepalive = {keepalive}\n'
            + (f'ca_file = "{self.tls / "ca.crt"}"\n' if self.production else "") + "\n"
            + f'[uplink]\ncentral_key = "{self.central_public_key()}"\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
            + f'\n[operations.keys]\n"{ops["kid"]}" = "{ops["public_key"]}"\n'
        )

    def install(self, name: str, *, scanners: list[str], uplink: dict | None = None, keepalive: int = 30) -> Device:
        """A new box as it comes out of the image: no id, no shop, nothing registered; it makes its key at
        its first start (``Device.start``) and waits for an activation code."""
        directory = self.directory / name
        self._configure(directory, "", scanners=scanners, uplink=uplink, keepalive=keepalive)
        device = Device(self, "", directory, public_key="")
        self.devices.append(device)
        return device

    def provision(self, device_id: str, *, scanners: list[str], uplink: dict | None = None,
                  keepalive: int = 30, region: str = "") -> Device:
        """A box registered by hand: configure it with its id and shop, create its key, and register it
        with central through counterbox-ops."""
        directory = self.directory / device_id
        self._configure(directory, f'id = "{device_id}"\nshop = "lab"\nregion = "{region}"\n',
                        scanners=scanners, uplink=uplink, keepalive=keepalive)
        device = Device(self, device_id, directory, public_key="")
        created = device.command("identity", "create")
        if created.returncode:
            raise RuntimeError(created.stderr)
        device.public_key = json.loads(created.stdout)["public_key"]
        registered = subprocess.run(
            _python_command("central.ops") + ["register", "--central-db", str(self.central_db), "--identity", "-",
                                              "--region", region, "--new-region"],  # the lab's regions, by hand
            input=created.stdout, cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if registered.returncode:
            raise RuntimeError(registered.stderr)
        self.devices.append(device)
        return device
