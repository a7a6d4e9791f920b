"""The agent's configuration: one TOML file, every key documented in docs/configuration.md.

Relative paths are taken from the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration file that is missing, malformed or names an unknown key."""


@dataclass(frozen=True)
class DeviceConfig:
    id: str = ""
    key_file: Path = Path("/var/lib/counterbox/device.key")

    def __post_init__(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id):
            raise ConfigError(f"[device] id {self.id!r} must be set, using letters, digits, '-', '_' or '.'")


@dataclass(frozen=True)
class StorageConfig:
    path: Path = Path("/var/lib/counterbox/journal.db")
    key_file: Path = Path("/var/lib/counterbox/data.key")
    credential: str = "counterbox-data-key"


@dataclass(frozen=True)
class ScannerConfig:
    paths: tuple[str, ...] = ()
    retry_interval: float = 1.0  # seconds between attempts to reopen a scanner that went away


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30  # seconds


@dataclass(frozen=True)
class UplinkConfig:
    central_key: str = ""  # base64url Ed25519 public key that signs acknowledgements
    topic_prefix: str = "counterbox/v1"
    batch_max_events: int = 50
    batch_max_delay: float = 1.0  # seconds an event may wait for others to fill its batch
    ack_timeout: float = 10.0  # seconds without acknowledgement before resending from the cursor
    max_in_flight: int = 4  # batches published and not yet acknowledged

    def __post_init__(self) -> None:
        if self.batch_max_events < 1 or self.max_in_flight < 1:
            raise ConfigError("[uplink] batch_max_events and max_in_flight must be at least 1")


@dataclass(frozen=True)
class PricingConfig:
    currency: str = "CNY"


@dataclass(frozen=True)
class Config:
    device: DeviceConfig
    storage: StorageConfig = field(default_factory=StorageConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)


# The sections of the file, in the order docs/configuration.md lists them.
SECTIONS: dict[str, type] = {
    "device": DeviceConfig, "storage": StorageConfig, "scanner": ScannerConfig,
    "broker": BrokerConfig, "uplink": UplinkConfig, "pricing": PricingConfig,
}


def _section(cls: type, table: dict[str, Any], name: str, base: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"unknown key [{name}] {key}; known keys: {', '.join(fields)}")
        default = fields[key].default
        if isinstance(default, Path):
            value = base / Path(value).expanduser()
        elif isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if not isinstance(value, type(default)) and default is not dataclasses.MISSING:
            raise ConfigError(f"[{name}] {key} must be of type {type(default).__name__}, not {value!r}")
        values[key] = value
    return cls(**values)


def load(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}]; known sections: {', '.join(SECTIONS)}")
    base = path.parent.resolve()
    try:
        return Config(**{name: _section(cls, data.get(name, {}), name, base) for name, cls in SECTIONS.items()})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
