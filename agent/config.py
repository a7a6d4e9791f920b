"""The agent's configuration: one TOML file, every key documented in docs/configuration.md.

Relative paths are taken from the directory of the configuration file: every
key of type Path, every entry of ``[scanner] paths`` (``PATH_LISTS``), and a
``[[scanner.device]] match`` that is a path (it holds a '/').
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from provisioning.documents import MIN_REPORT_INTERVAL, TIME_ZONE_NAME

from drivers.decoder import DecoderSettings
from provisioning import protocol


def time_zone(name: str) -> tzinfo | None:
    """The zone ``name`` names in this box's time zone database, or None when it names none."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    # The name's shape first: the database takes a directory's name ("America") or a very long or
    # deep path for a zone, and fails with an error of the file system.
    if not isinstance(name, str) or not TIME_ZONE_NAME.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


class ConfigError(Exception):
    """A configuration file that is missing, malformed or names an unknown key."""


@dataclass(frozen=True)
class DeviceConfig:
    id: str = ""  # empty: derived from the device's key (a box activated by code)
    key_file: Path = Path("/var/lib/counterbox/device.key")
    # Set only for a box registered by hand (counterbox-ops register, with [device] id set): its shop
    # and sales region. A box with no id waits for an activation code, which names both.
    shop: str = ""
    region: str = ""

    def __post_init__(self) -> None:
        if self.id and not protocol.valid_device_id(self.id):
            raise ConfigError(f"[device] id {self.id!r} must be 1 to {protocol.MAX_DEVICE_ID} ASCII letters, "
                              "digits, '-', '_' or '.' (or unset: derived from the device's key)")
        if self.shop and not self.id:
            raise ConfigError("[device] shop is for a box registered by hand, which needs its id set too")
        if self.region and not protocol.valid_device_id(self.region):
            raise ConfigError(f"[device] region {self.region!r} must be 1 to {protocol.MAX_DEVICE_ID} ASCII letters, "
                              "digits, '-', '_' or '.'")


@dataclass(frozen=True)
class StorageConfig:
    path: Path = Path("/var/lib/counterbox/journal.db")
    # Days an event is kept once central holds it; older ones are folded into the journal's checkpoint
    # (the reports go on over them) and removed. 0: keep every event.
    retention_days: float = 90.0
    key_file: Path = Path("/var/lib/counterbox/data.key")
    credential: str = "counterbox-data-key"

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ConfigError("[storage] retention_days must be 0 (keep every event) or more")


@dataclass(frozen=True)
class DeviceOverride:
    """A `[[scanner.device]]` table: decoder settings for the scanners it matches."""

    match: str  # a path (it holds a '/'), a USB "vendor:product", or a glob of the evdev name
    settings: DecoderSettings

    @property
    def is_path(self) -> bool:
        return "/" in self.match

    def matches(self, path: str, usb_id: str = "", name: str = "") -> bool:
        """Whether the scanner at ``path`` is this one's. A path matches the node it leads to now (a
        /dev/input/by-id link, the node discovery finds): it reads the filesystem."""
        if self.is_path:
            return self.match == path or os.path.realpath(self.match) == os.path.realpath(path)
        return self.match == usb_id or bool(name and fnmatch.fnmatch(name, self.match))


@dataclass(frozen=True)
class ScannerConfig:
    paths: tuple[str, ...] = ()  # sources always read: devices, FIFOs, recordings
    usb_ids: tuple[str, ...] = ()  # "vendor:product" of scanners to take
    names: tuple[str, ...] = ()  # globs of evdev names of scanners to take
    auto: bool = True  # take USB keyboards that say they are scanners, or type like one
    hid_pos: bool = True  # take USB scanners in HID POS mode (usage page 0x8C), through pyusb
    dev_input: Path = Path("/dev/input")
    sys_class: Path = Path("/sys/class/input")
    rescan_interval: float = 0.5  # seconds between looks for scanners plugged in
    retry_interval: float = 1.0  # seconds between attempts to reopen a configured path that went away
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    devices: tuple[DeviceOverride, ...] = ()

    def __post_init__(self) -> None:
        if self.rescan_interval <= 0 or self.retry_interval <= 0:
            raise ConfigError("[scanner] rescan_interval and retry_interval must be more than 0 seconds")

    def settings_for(self, path: str, usb_id: str = "", name: str = "") -> DecoderSettings:
        for override in self.devices:
            if override.matches(path, usb_id, name):
                return override.settings
        return self.decoder


@dataclass(frozen=True)
class FeedbackConfig:
    output: str = "auto"  # "tone", "led", "auto" (a speaker if the box has one, else the scanner's LEDs), "none"
    path: str = ""  # the speaker's event device; empty: the first device that can sound a tone
    led: str = "scroll"  # the LED blinked: "num", "caps" or "scroll"

    def __post_init__(self) -> None:
        if self.output not in ("tone", "led", "auto", "none"):
            raise ConfigError(f"[feedback] output {self.output!r} must be tone, led, auto or none")
        if self.led not in ("num", "caps", "scroll"):
            raise ConfigError(f"[feedback] led {self.led!r} must be num, caps or scroll")


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30  # seconds
    # Seconds between attempts to reach the broker grow from 0.1 to this, jittered: a box back within
    # this long after the broker returns, while a fleet that lost it together does not return at once.
    reconnect_max: float = 1.0
    # The CA that signed the broker's certificate: TLS, the production broker. None: plain TCP, the
    # development broker on loopback.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.host or not self.host.isprintable() or any(c.isspace() for c in self.host):
            raise ConfigError(f"[broker] host {self.host!r} must be a host name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"[broker] port {self.port} must be from 1 to 65535")
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError(f"[broker] keepalive {self.keepalive} must be from 0 to 65535 seconds (MQTT's range)")
        if self.reconnect_max <= 0:
            raise ConfigError("[broker] reconnect_max must be more than 0 seconds")


MAX_BATCH_EVENTS = 10_000  # events in one batch, at most: the journal reads a batch's events in one query
MAX_IN_FLIGHT = 64  # batches unacknowledged at once, at most


@dataclass(frozen=True)
class UplinkConfig:
    central_key: str = ""  # base64url Ed25519 public key that signs acknowledgements
    topic_prefix: str = "counterbox/v1"
    batch_max_events: int = 500  # a backlog drains in large batches; a quiet link sends each event at once
    batch_max_bytes: int = 256 * 1024  # event bodies in one batch; a bigger single event goes alone
    batch_max_delay: float = 1.0  # seconds an event may wait for others while earlier batches are in flight
    ack_timeout: float = 10.0  # seconds without acknowledgement before resending from the cursor
    max_in_flight: int = 4  # batches published and not yet acknowledged
    status_interval: float = 60.0  # seconds between health reports while online
    snapshot_interval: float = 3600.0  # seconds between a monitoring point's snapshots of stock and prices

    def __post_init__(self) -> None:
        from provisioning.protocol import TOPIC_PREFIX_RULE, is_topic_prefix

        if not is_topic_prefix(self.topic_prefix):
            raise ConfigError(f"[uplink] topic_prefix {self.topic_prefix!r} must be {TOPIC_PREFIX_RULE}")
        if not (MIN_REPORT_INTERVAL <= self.status_interval and MIN_REPORT_INTERVAL <= self.snapshot_interval):
            raise ConfigError(f"[uplink] status_interval and snapshot_interval must be at least {MIN_REPORT_INTERVAL} "
                              "seconds (a box reporting in a tight loop floods the broker and central)")
        if not (1 <= self.batch_max_events <= MAX_BATCH_EVENTS and 1 <= self.max_in_flight <= MAX_IN_FLIGHT):
            raise ConfigError(f"[uplink] batch_max_events must be 1 to {MAX_BATCH_EVENTS} and max_in_flight 1 to "
                              f"{MAX_IN_FLIGHT}")
        if self.batch_max_delay < 0 or self.ack_timeout <= 0:
            raise ConfigError("[uplink] batch_max_delay must be 0 or more and ack_timeout more than 0 seconds")
        if self.central_key:
            from provisioning.errors import IdentityError
            from provisioning.identity import parse_public_key

            try:
                parse_public_key(self.central_key)
            except IdentityError as error:
                raise ConfigError(f"[uplink] central_key: {error}") from None
        if not 1024 <= self.batch_max_bytes <= protocol.MAX_EVENT_BYTES:
            raise ConfigError(f"[uplink] batch_max_bytes must be from 1024 to {protocol.MAX_EVENT_BYTES} "
                              "(the protocol's limit for one message)")


@dataclass(frozen=True)
class OperationsConfig:
    # The operations keys the box trusts for documents pushed down, by key id: {"ops-2026" = "base64url"}.
    # Pinned at install; more than one lets operations rotate to a new key.
    keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from provisioning.errors import IdentityError
        from provisioning.identity import parse_public_key

        for kid, text in self.keys.items():
            if not isinstance(text, str):
                raise ConfigError(f"[operations] keys.{kid} must be a public key (base64url text), not {text!r}")
            try:
                parse_public_key(text)
            except IdentityError as error:
                raise ConfigError(f"[operations] keys.{kid}: {error}") from None


@dataclass(frozen=True)
class PricingConfig:
    currency: str = "CNY"

    def __post_init__(self) -> None:
        if not (len(self.currency) == 3 and self.currency.isascii() and self.currency.isupper()
                and self.currency.isalpha()):
            raise ConfigError(f"[pricing] currency {self.currency!r} must be an ISO 4217 code, like CNY")


@dataclass(frozen=True)
class CounterConfig:
    # The shop's time zone, which decides the day a sale belongs to (an IANA name like
    # "Asia/Shanghai"); empty: the box's own (/etc/localtime).
    timezone: str = ""
    mode_timeout: float = 600.0  # seconds without a scan before receiving or counting ends, unclosed
    pending_timeout: float = 60.0  # seconds a keyed number, quantity, return or carton waits for its scan

    def __post_init__(self) -> None:
        if self.timezone and time_zone(self.timezone) is None:
            raise ConfigError(f"[counter] timezone {self.timezone!r} is not a time zone this box knows "
                              "(an IANA name, like Asia/Shanghai)")
        if self.mode_timeout <= 0 or self.pending_timeout <= 0:
            raise ConfigError("[counter] mode_timeout and pending_timeout must be more than 0 seconds")


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    storage: StorageConfig = field(default_factory=StorageConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    counter: CounterConfig = field(default_factory=CounterConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    operations: OperationsConfig = field(default_factory=OperationsConfig)


# Keys that list paths; each entry is taken from the file's directory when relative.
PATH_LISTS = {("scanner", "paths")}
# Path keys that may be left unset (default None).
OPTIONAL_PATHS = {("broker", "ca_file")}

# The sections of the file, in the order docs/configuration.md lists them.
SECTIONS: dict[str, type] = {
    "device": DeviceConfig, "storage": StorageConfig, "scanner": ScannerConfig,
    "broker": BrokerConfig, "uplink": UplinkConfig, "pricing": PricingConfig, "counter": CounterConfig, "feedback": FeedbackConfig,
    "operations": OperationsConfig,
}


# What a "vendor:product" is written like, in any case and with any number of digits: hex, a colon, hex.
_LOOKS_LIKE_USB_ID = re.compile(r"[0-9A-Fa-f]+:[0-9A-Fa-f]+")


def usb_id(text: str, where: str) -> str:
    """A USB "vendor:product" as the kernel writes it (four lowercase hex digits each): "0C2E:0B61", as other
    systems show it, is that; "c2e:b61" or "0c2e0b61" never matched a scanner, and said nothing."""
    if not re.fullmatch(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}", text):
        raise ConfigError(f"{where} {text!r} is not a USB vendor:product (four hex digits each, as 0c2e:0b61)")
    return text.lower()


def _scanner(table: dict[str, Any], base: Path) -> ScannerConfig:
    table = dict(table)
    decoder = table.pop("decoder", {})
    if not isinstance(decoder, dict):
        raise ConfigError(f"[scanner] decoder must be a table ([scanner.decoder]), not {decoder!r}")
    decoder = _section(DecoderSettings, decoder, "scanner.decoder", base)
    overrides = table.pop("device", [])
    if not isinstance(overrides, list) or not all(isinstance(override, dict) for override in overrides):
        raise ConfigError("[scanner] device must be an array of tables, each written [[scanner.device]] "
                          f"(two brackets), not {overrides!r}")
    devices = []
    for index, override in enumerate(overrides):
        override = dict(override)
        match = override.pop("match", None)
        if not isinstance(match, str) or not match:
            raise ConfigError(f"[[scanner.device]] number {index + 1} needs a match (a path, vendor:product or name glob)")
        if "\0" in match:
            raise ConfigError(f"[[scanner.device]] number {index + 1}: its match holds a NUL character")
        if _LOOKS_LIKE_USB_ID.fullmatch(match):
            match = usb_id(match, f"[[scanner.device]] number {index + 1} match")
        settings = _section(DecoderSettings, override, f"scanner.device {match!r}", base, defaults=decoder)
        if "/" in match:
            match = str(base / Path(match).expanduser())
        devices.append(DeviceOverride(match, settings))
    scanner = _section(ScannerConfig, table, "scanner", base)
    ids = tuple(usb_id(text, "[scanner] usb_ids entry") for text in scanner.usb_ids)
    return dataclasses.replace(scanner, decoder=decoder, devices=tuple(devices), usb_ids=ids)


def _section(cls: type, table: dict[str, Any], name: str, base: Path, defaults: Any = None) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("decoder", "devices")}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"unknown key [{name}] {key}; known keys: {', '.join(fields)}")
        default = getattr(defaults, key) if defaults is not None else fields[key].default
        if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
            default = fields[key].default_factory()
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf; no setting takes them
            raise ConfigError(f"[{name}] {key} must be a finite number, not {value}")
        if any("\0" in text for text in ([value] if isinstance(value, str) else value if isinstance(value, list) else [])
               if isinstance(text, str)):
            raise ConfigError(f"[{name}] {key} holds a NUL character")
        if isinstance(default, Path) or (name, key) in OPTIONAL_PATHS:
            if not isinstance(value, str):
                raise ConfigError(f"[{name}] {key} must be a path, not {value!r}")
            if not value.strip():
                # Taken from the file's directory, "" would be that directory itself, never what was meant.
                raise ConfigError(f"[{name}] {key} is empty: give a path" +
                                  (", or leave the key out" if (name, key) in OPTIONAL_PATHS else ""))
            value = base / Path(value).expanduser()
        elif isinstance(default, tuple):  # every list in the file is one of strings
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                what = "paths" if (name, key) in PATH_LISTS else "strings"
                raise ConfigError(f"[{name}] {key} must be a list of {what}, not {value!r}")
            value = tuple(value)
            if (name, key) in PATH_LISTS:
                if any(not v.strip() for v in value):
                    raise ConfigError(f"[{name}] {key} holds an empty path")
                value = tuple(str(base / Path(v).expanduser()) for v in value)
        elif isinstance(value, bool) != isinstance(default, bool) and default not in (None, dataclasses.MISSING):
            # TOML's true is Python's 1 as well: a switch is no number, nor a number a switch.
            raise ConfigError(f"[{name}] {key} must be of type {type(default).__name__}, not {value!r}")
        elif isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if default is not None and not isinstance(value, type(default)) and default is not dataclasses.MISSING:
            raise ConfigError(f"[{name}] {key} must be of type {type(default).__name__}, not {value!r}")
        values[key] = value
    try:
        return dataclasses.replace(defaults, **values) if defaults is not None else cls(**values)
    except ValueError as error:
        raise ConfigError(f"[{name}] {error}") from None


def load(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as some editors write, is no statement
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}]; known sections: {', '.join(SECTIONS)}")
        if not isinstance(data[name], dict):
            raise ConfigError(f"{path}: {name} must be a table ([{name}]), not {data[name]!r}")
    base = path.parent.resolve()
    try:
        return Config(**{
            name: _scanner(data.get(name, {}), base) if cls is ScannerConfig else _section(cls, data.get(name, {}), name, base)
            for name, cls in SECTIONS.items()
        })
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
