"""The agent: scanners -> decoders -> counter -> journal -> uplink -> broker.

All SQLite work (and so every fsync) runs in the store's own thread, so the
event loop that reads the scanners never blocks on the disk; keys are read
and the journal opened in threads too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.decoder import NotABarcode, Scan
from drivers.feedback import Signal
from provisioning import activation, protocol
from provisioning.documents import MIN_REPORT_INTERVAL, settings_in_force
from provisioning.identity import broker_password, create_key, device_id_for, load_key, parse_public_key
from provisioning.errors import ProvisioningError
from storage import (DataKeyError, Journal, JournalFull, NoJournal, StorageError, Store, agent_lock, check_path,
                     destroy_secret, load_data_key, remove_copies_left, remove_journal)
from storage.keys import leftovers, share_file, sync_directory, write_secret

from .activation import Activator
from .activation import current as activation_state
from .activation import subscriptions as activation_topics
from . import logs, retention
from .config import Config, ConfigError, StorageConfig, time_zone
from .counter import Counter, Outcome, log_recorded
from .downlink import Downlink, revocation_in_force, settings_held
from .downlink import subscriptions as downlink_topics
from .mqtt import Backoff, MqttLink
from .service import Service
from .telemetry import Telemetry, agent_version
from .uplink import Uplink

logger = logging.getLogger(__name__)


def data_key(storage: StorageConfig, *, create: bool) -> bytes:
    """The journal's data key; the key file is created only together with a new journal."""
    if storage.path.exists():
        check_path(storage.path)
    return load_data_key(key_file=storage.key_file, credential=storage.credential,
                         create=create and not storage.path.exists())


def open_journal(config: Config, *, create: bool = False) -> Journal:
    """The journal, for a command run beside the agent; NoJournal when there is none and not ``create``."""
    if not create and not config.storage.path.exists():
        raise NoJournal(f"there is no journal at {config.storage.path}: the agent has not run on this box yet")
    key = data_key(config.storage, create=create)
    with _share_named(config.storage):
        return Journal.open(config.storage.path, key, create=create, max_event_bytes=protocol.MAX_EVENT_BYTES)


async def open_store(config: Config) -> Store:
    key = await asyncio.to_thread(data_key, config.storage, create=True)
    with _share_named(config.storage):
        return await Store.open(config.storage.path, key, max_event_bytes=protocol.MAX_EVENT_BYTES)


@contextlib.contextmanager
def _share_named(storage: StorageConfig) -> Iterator[None]:
    """A key that does not open the journal, under a systemd credential whose share beside the key file is
    gone: that is what is missing (the credential alone opens only a journal made before shares were)."""
    try:
        yield
    except DataKeyError as error:
        share = share_file(storage.key_file)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if not (credentials and storage.credential and (Path(credentials) / storage.credential).exists()) \
                or share.exists():
            raise
        raise DataKeyError(f"{error} Its share of the key, {share}, is missing beside the key file: restore "
                           "it (a backup of the box holds it).") from None


def record_scan(store: Store, counter: Counter, scan: Scan | NotABarcode) -> Awaitable[Signal]:
    """Hand ``scan`` to the store's thread now, to be recorded durably; the awaitable says what the retailer
    hears once it is: ERROR when it could not be recorded."""
    return _recorded(store.write(lambda journal: counter.record(journal, scan)), scan)


async def _recorded(written: Awaitable[Outcome], scan: Scan | NotABarcode) -> Signal:
    try:
        outcome = await written
    except StorageError as error:
        # Not recorded: the retailer hears the error signal and scans again. A full disk is logged
        # once by the store (when it fills and when space returns), not at every scan.
        if not isinstance(error, JournalFull):
            logger.error("scan from %s NOT recorded: %s", scan.source, error)
        return Signal.ERROR
    except Exception as error:
        # A fault of the counter's own on what a scanner sent (a kernel time no calendar holds, from a
        # replayed stream): the scan is refused like any other, never an unanswered task. Its type
        # only: the message of an error nobody foresaw may quote the code.
        logger.error("scan from %s NOT recorded: the counter failed on it (%s)", scan.source, type(error).__name__)
        return Signal.ERROR
    log_recorded(outcome, scan.source)
    return outcome.signal


EXPIRY_CHECK = 1.0  # seconds between looks for a mode or a keyed number left too long
RETENTION_EVERY = 3600.0  # seconds between looks for events old enough to fold away
RETENTION_NEXT = 1.0  # seconds before the next step, while there is more to fold
RETENTION_RETRY = 60.0  # seconds before a smaller step, when the disk had no room for one
FAULT_AFTER = 1.0  # seconds after a refused scan's error signal before a fault's attention signal
FAREWELL_WAIT = 5.0  # seconds a revoked box waits for the broker to take its last status before it erases


async def _said(signal: Signal) -> Signal:
    return signal


def counter_for(config: Config) -> Counter:
    settings = config.counter
    return Counter(currency=config.pricing.currency, timezone=time_zone(settings.timezone) if settings.timezone else None,
                   mode_timeout=settings.mode_timeout, pending_timeout=settings.pending_timeout)


STATUS_EVERY = 5.0  # seconds between updates of the service's status line
IDENTITY_RETRY = 5.0  # seconds between tries to write the box's identity into a journal on a full disk

# Threads for the short blocking calls (opening a scanner, reading a key file, a USB transfer):
# two are plenty on a counter, and each thread costs the box memory.
BLOCKING_THREADS = 2


def device_key(config: Config):
    """The device's signing key. A box that is to be activated by code (no ``[device] id`` set) makes
    its own key at its first start; a box configured by hand must have been given one."""
    path = config.device.key_file
    if not config.device.id and not path.exists():
        key = create_key(path)
        if config.storage.path.exists():
            # Not a first start: the key this box had is gone (a card's file lost, removed by hand). Backups
            # do not hold it, so the box goes on as a new device, waiting for its own activation code.
            logger.warning("device key created: %s, beside a journal this box used under another key: this box is "
                           "a new device now, and waits for its own activation code", path)
        else:
            logger.info("device key created: %s", path)
        return key
    return load_key(path)


async def run(config: Config) -> None:
    """Run until SIGTERM or SIGINT. A box revoked by operations delivers what it holds, erases its
    keys and journal, and starts again as a new box waiting for activation."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="blocking"))
    # One agent per journal, across an erase and a new life too. Taken before anything is served, so
    # the open of a small file on the box's own disk holds up no scan.
    with agent_lock(config.storage.path):
        await _run(config)


async def _run(config: Config) -> None:
    if await asyncio.to_thread(finish_erase, config):
        logger.warning("an erase cut short (power lost?) was finished; starting as a new box")
    while await _life(config):
        await asyncio.to_thread(crypto_erase, config)
        if config.device.id:
            raise ConfigError("this box was revoked and erased; it was configured by hand ([device] id), "
                              "so it waits for its configuration: remove [device] id and shop to let it wait "
                              "for an activation code as a new box")
        logger.info("starting again as a new box, waiting for activation")


def _erasing(config: Config) -> Path:
    return config.storage.path.with_name(f"{config.storage.path.name}.erasing")


def _secrets(config: Config) -> list[Path]:
    """The files whose loss makes the journal unreadable: the key file, and beside a systemd credential the
    journal's share of its outer key (storage/keys.py)."""
    return [config.storage.key_file, share_file(config.storage.key_file)]


def _aside(secret: Path) -> Path:
    """A secret moved aside: the erase's marker when the disk had no room for one (a rename needs none)."""
    return secret.with_name(f"{secret.name}.erasing")


def finish_erase(config: Config) -> bool:
    """Finish an erase that a power cut interrupted (its marker is still there); True if there was one.
    Without this, a box with its data key gone and its journal left could never start again, and one
    with its journal gone and its signing key left would come back as the revoked identity."""
    if not (_erasing(config).exists() or
            any(_aside(secret).exists() for secret in [*_secrets(config), config.device.key_file])):
        return False
    crypto_erase(config)
    return True


def crypto_erase(config: Config) -> None:
    """Destroy the data key (so the journal's ciphertext cannot be read) and the signing key, then
    remove the journal's files. A marker, durable before the first step and removed after the last,
    makes the erase resumable: the next start finishes it (``finish_erase``)."""
    marker = _erasing(config)
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_secret(marker, b"erasing\n")
    except FileExistsError:
        pass
    except OSError as error:
        # A full disk: destroying needs no space (and frees some), and the erase must not wait for any.
        # The data key (or share), moved aside (a rename needs no room), stands for the marker: a power cut
        # before the end leaves what the next start finishes.
        logger.error("erase marker %s not written (%s); the data key moved aside marks the erase", marker,
                     error.strerror)
        moved = False
        for secret in _secrets(config):
            with contextlib.suppress(FileNotFoundError):
                os.replace(secret, _aside(secret))
                sync_directory(secret.parent)
                moved = True
        if not moved:
            # No data key here (a systemd credential alone): the signing key, moved aside, marks it (else a cut
            # while the journal is overwritten would leave zeros no start can open, and the revoked identity).
            with contextlib.suppress(FileNotFoundError):
                os.replace(config.device.key_file, _aside(config.device.key_file))
                sync_directory(config.device.key_file.parent)
    # Moved aside, a secret is zeroed now and stays, as the marker, until the end.
    destroyed = [destroy_secret(secret) | destroy_secret(_aside(secret), keep=True) for secret in _secrets(config)]
    if not any(destroyed):
        # A journal made under a systemd credential alone, before shares were (or its share already gone): the
        # service cannot destroy the credential, which would still open the data keys wrapped in the blocks the
        # journal's files leave behind: those are overwritten instead.
        logger.warning("data key %s not found to destroy (a systemd credential?); the journal's files are "
                       "overwritten with zeros instead", config.storage.key_file)
    remove_journal(config.storage.path, overwrite=not any(destroyed))
    destroy_secret(config.device.key_file)
    for secret in [*_secrets(config), config.device.key_file]:
        destroy_secret(_aside(secret))
        for stale in leftovers(secret, "new"):  # a copy left by a process killed while it wrote the secret
            destroy_secret(stale)
    destroy_secret(marker)
    logger.warning("crypto-erased: %s", "data key, signing key and journal destroyed" if any(destroyed) else
                   "signing key destroyed, journal overwritten with zeros (its outer key is a systemd credential)")


async def _life(config: Config) -> bool:
    """One identity's life on the box; True when it ended by revocation."""
    signing_key = await asyncio.to_thread(device_key, config)
    if not config.uplink.central_key:
        raise ConfigError("[uplink] central_key is not set: give central's public key ('counterbox-central pubkey' prints it)")
    central_key = parse_public_key(config.uplink.central_key)
    device_id = config.device.id or device_id_for(signing_key)
    logs.identify_all(device_id)
    # A backup or restore ended before it could remove its copy of the journal (an ssh session hung up): a whole
    # copy, on the box's small disk, until the next backup.
    await asyncio.to_thread(remove_copies_left, config.storage.path)
    store = await open_store(config)
    try:
        connections = 0
        try:
            session = await store.write(lambda journal: journal.start_session())
        except JournalFull as error:
            # The box still reads its scanners (each refused with the error signal) and delivers what it
            # holds. A start the disk has no room to count goes on under the last one's number: the next
            # counted start's then comes after it, as central orders a box's statuses by session; its
            # connections are counted on from its start's time, after those of the start it goes on from.
            session = max(await store.read(lambda journal: journal.session()), 1)  # batches count from 1
            connections = int(time.time() * 1000)
            logger.error("this start NOT counted in the journal (it goes on as session %d): %s", session, error)
        last, acked = await store.read(lambda journal: (journal.last_seq(), journal.acked_seq()))
        logger.info("agent started device=%s session=%d journal=%s last_seq=%d acked_seq=%d",
                    device_id, session, store.path, last, acked)
        if await store.read(lambda journal: journal.rewrap_waiting()):
            logger.warning("a re-wrap of the data keys waits for its new outer key: this agent runs under the old "
                           "one, which opens the journal until the new one is installed and the agent started with it")
        box = Box(config=config, store=store, session=session, first_connection=connections, device_id=device_id,
                  key=signing_key,
                  central_key=central_key, counter=counter_for(config),
                  trusted={kid: parse_public_key(text) for kid, text in config.operations.keys.items()})
        return await _serve(box)
    finally:
        await store.close()


@dataclass(kw_only=True)
class Box:
    """The box's life: waiting for activation (unless configured by hand), then active.

    The scanners run throughout; what a scan means depends on where the box is in its life."""

    config: Config
    store: Store
    session: int
    device_id: str
    key: Ed25519PrivateKey
    central_key: Ed25519PublicKey
    counter: Counter
    trusted: dict[str, Ed25519PublicKey]  # operations keys
    first_connection: int = 0  # the count its connections go on from (Telemetry)
    scanners: set[str] = field(default_factory=set)  # held now
    _activator: Activator | None = None
    _uplink: Uplink | None = None
    _revoked: asyncio.Event = field(default_factory=asyncio.Event)
    service: Service = field(default_factory=Service)  # systemd's view: readiness, status, watchdog
    _grace: float = 0.0  # seconds a revoked box may take to deliver what it holds (the newest revocation's)
    _revoked_at: float = 0.0  # when it first took its revocation (time.time()): the grace counts from then
    _grace_ends: float = 0.0  # time.monotonic() when it is up
    _snapshot_interval: float = 0.0  # pushed by operations; 0: the configuration file's
    # A signal that answers no scan (a mode that timed out, a full disk): the scanners' (Scanners.announce).
    announce: Callable[[Signal], None] = lambda signal: None
    _full_said: bool = False  # the full disk has been signalled since it filled

    def on_scan(self, scan: Scan | NotABarcode) -> Awaitable[Signal]:
        """What the retailer hears for ``scan``; a scan to record is with the store's thread as this returns
        (the reader's turn of the loop), not a turn later."""
        if self._activator is not None:
            return self._activator.scanned(scan)
        if self._revoked.is_set():
            logger.warning("scan not recorded scanner=%s: this box is revoked and hands in what it holds", scan.source)
            return _said(Signal.ERROR)
        if isinstance(scan, Scan) and activation.looks_like_code(scan.text):
            return self._code_again(scan)
        return self._after(record_scan(self.store, self.counter, scan))

    async def _code_again(self, scan: Scan) -> Signal:
        if await self._activated_with(scan.text):  # the slip scanned twice: it did what it was for
            logger.info("activation code scanned scanner=%s: the one this box was activated with; nothing changed",
                        scan.source)
            return Signal.GOOD
        logger.warning("activation code scanned scanner=%s: this box is already active; nothing changed", scan.source)
        return Signal.ERROR

    async def _after(self, recorded: Awaitable[Signal]) -> Signal:
        signal = await recorded
        if self.store.full and not self._full_said:
            # The fault itself, once, after the scan's own error: the box needs a look (the store logs it).
            self._full_said = True
            asyncio.get_running_loop().call_later(FAULT_AFTER, self.announce, Signal.ATTENTION)
        elif not self.store.full:
            self._full_said = False
        if self._uplink is not None:
            self._uplink.wake.set()
        return signal

    async def _activated_with(self, token: str) -> bool:
        """Whether ``token`` is the code (signed by a trusted operations key) this box's activation used."""
        try:
            code = activation.decode_code(token, trusted=self.trusted)
            held = await self.store.read(lambda journal: activation_state(journal, self.device_id))
        except (ProvisioningError, StorageError):
            return False
        return held is not None and held.get("code") == code.code_id

    async def expire(self, announce: Callable[[Signal], None]) -> None:
        """End a receiving or a count left too long, forget a keyed number left too long: the counter
        says when, and the retailer hears it."""
        said = ""  # the failure said last: said once while it lasts, not at every look (each second)
        while True:
            try:
                outcome = await self.store.write(self.counter.expire)
                said = ""
            except StorageError as error:
                if str(error) != said:
                    logger.error("the counter's time-outs NOT checked: %s", error)
                said, outcome = str(error), None
            if outcome is not None:
                log_recorded(outcome, None)
                announce(outcome.signal)
                if self._uplink is not None and outcome.events:
                    self._uplink.wake.set()
            await asyncio.sleep(EXPIRY_CHECK)

    async def retain(self) -> None:
        """Fold what central holds and is older than ``[storage] retention_days`` into the journal's
        checkpoint, a step at a time: a journal grown for a year comes down without holding up a scan."""
        days, step = self.config.storage.retention_days, retention.FOLD_STEP
        while days > 0:
            pause = RETENTION_EVERY
            try:
                upto = await self.store.write(
                    lambda journal: retention.fold_old(journal, days=days, now=time.time(), step=step))
            except JournalFull as error:
                # The room a step takes is what is short: a smaller one soon, for retention frees the room.
                upto, fewer = None, max(retention.FOLD_STEP_LEAST, step // 2)
                (logger.error if fewer == step else logger.warning)(
                    "retention: old events NOT folded, %d at a time: %s%s", step, error,
                    "; tried again in an hour" if fewer == step else f"; trying {fewer} at a time")
                # At the fewest, not soon again: each try folds the checkpoint in the store's thread.
                step, pause = fewer, RETENTION_EVERY if fewer == step else RETENTION_RETRY
            except StorageError as error:
                logger.error("retention: old events NOT folded: %s", error)
                upto = None
            if upto is not None:
                logger.info("retention: events up to seq=%d folded into the journal's checkpoint and removed", upto)
                pause, step = RETENTION_NEXT, min(retention.FOLD_STEP, step * 2)
            await asyncio.sleep(pause)

    async def on_device(self, report: dict) -> None:
        # The scanners held are what the status says, whether or not the journal can record the change (a full
        # disk): the event is its record, the set the truth.
        if report["state"] == "taken":
            self.scanners.add(report["scanner"])
        else:
            self.scanners.discard(report["scanner"])
        try:
            seq = await self.store.append("scanner", report)
        except StorageError as error:
            logger.error("scanner %s %s NOT recorded: %s", report["scanner"], report["state"], error)
            return
        logger.info("scanner seq=%d %s %s", seq, report["state"], report["scanner"])
        if self._uplink is not None:
            self._uplink.wake.set()

    async def run(self) -> bool:
        """The box's life; True when operations revoked it (it has delivered what it could)."""
        await self._take_identity()
        revocation = await self.store.read(revocation_in_force)
        if revocation is not None:  # revoked before a restart: deliver what the grace left, then erase
            taken_at, grace = revocation
            self._revocation(grace, taken_at=taken_at)
        held = await self.store.read(lambda journal: activation_state(journal, self.device_id))
        if held is None and not self.config.device.id:  # a box given its id was registered by hand
            other = await self.store.read(lambda journal: journal.last("activation"))
            if other is not None:
                logger.warning("the journal holds the activation of device=%s, not this box's (a backup of another box "
                               "restored onto it, or this box's signing key gone and made anew: %s): waiting for "
                               "this box's own activation code; what the journal holds is delivered once it is "
                               "active", other.body.get("device"), self.config.device.key_file)
            await self._wait_for_activation()
            held = await self.store.read(lambda journal: activation_state(journal, self.device_id))
        region = held["region"] if held else self.config.device.region
        await self._active(region, monitoring=bool(held and held.get("monitoring")))
        return self._revoked.is_set()

    async def _take_identity(self) -> None:
        """Deliver as this box: a journal restored onto it delivers what its last box did not, as this one. On a
        full disk that cannot be written: the box waits for space (its scanners read, each scan refused with the
        error signal, as every write then is), nothing delivered under the identity before, and never exits
        (started again and again, it would answer no scan at all)."""
        said = False
        while True:
            try:
                base, before = await self.store.write(lambda journal: journal.take_identity(self.device_id))
                break
            except JournalFull as error:
                if not said:
                    said = True
                    logger.error("the journal cannot take this box's identity (device=%s): %s; nothing is "
                                 "delivered until space returns", self.device_id, error)
                    # Up and answering scans: systemd would otherwise end the start as timed out, and again.
                    self.service.ready("waiting for space on the journal's disk: nothing delivered")
                await asyncio.sleep(IDENTITY_RETRY)
        if said:
            logger.warning("space returned: the journal delivers as device=%s", self.device_id)
        if before and before != self.device_id:
            logger.warning("journal delivers as device=%s from seq=%d on: the events before were delivered as "
                           "device=%s", self.device_id, base + 1, before)

    async def _report(self, link: MqttLink) -> None:
        """The service's status line, for `systemctl status`: online or not, and what waits to go."""
        while True:
            state = "online" if link.connected.is_set() else "offline (broker unreachable)"
            revoked = ", revoked: handing in what it holds" if self._revoked.is_set() else ""
            try:
                last, acked = await self.store.read(lambda journal: (journal.last_seq(), journal.acked_seq()))
                self.service.ready(f"{state}, {last - acked} events queued{revoked}")
            except StorageError as error:  # said on the status line; the next look may read it
                self.service.ready(f"{state}, journal unreadable: {error}{revoked}")
            await asyncio.sleep(STATUS_EVERY)

    def _revocation(self, grace_seconds: float, *, taken_at: float) -> None:
        """Revoked, or revoked again: the newest revocation's grace holds, counted from the first (a longer
        one lets a box with a backlog hand it in; 0 erases it now)."""
        first = not self._revoked.is_set()
        if not first and grace_seconds == self._grace:
            return
        if first:
            self._revoked_at = taken_at
        self._grace = grace_seconds
        # What is left of it by the clock, never more than all of it: a clock put back since (a box with no
        # battery for its clock, started before its time is set) gives no grace longer than the one signed.
        left = min(max(0.0, self._revoked_at + grace_seconds - time.time()), grace_seconds)
        self._grace_ends = time.monotonic() + left
        logger.warning("%s device=%s: no more sales; delivering what the box holds (a grace of %.0f s from the "
                       "revocation, %.0f s left), then erasing", "revoked" if first else "revoked again",
                       self.device_id, grace_seconds, left)
        self._revoked.set()

    async def _deliver_all(self) -> None:
        """Wait until central holds every event (the revocation's own included), or the grace is up (looked at
        each turn: a revocation again may change it)."""
        waiting = "some"  # events not known to be delivered
        while True:
            try:
                last, acked = await self.store.read(lambda journal: (journal.last_seq(), journal.acked_seq()))
            except StorageError as error:  # not known to be delivered: looked at again, within the grace
                logger.error("revoked: the journal cannot be read (%s); looking again", error)
            else:
                if self._uplink is not None and self._uplink.known:
                    # What central holds: past the cursor, what it acknowledged while the disk had no room to
                    # write it; below, what it holds since it lost events (its database restored).
                    acked = self._uplink.acked
                if acked >= last:
                    logger.info("revoked: central holds every event, up to seq=%d", last)
                    return
                waiting = str(last - acked)
            if time.monotonic() >= self._grace_ends:
                logger.error("revoked: %s events NOT delivered within the grace of %.0f s are erased with the box",
                             waiting, self._grace)
                return
            await asyncio.sleep(0.2)

    def _link(self, subscriptions: list[str], *, activated: bool, **options) -> MqttLink:
        """The link to the broker: anonymous while waiting (the broker lets it reach only the activation
        topics), then as this device, with the password central registered at its activation."""
        broker = self.config.broker
        credentials = {"username": self.device_id, "password": broker_password(self.key)} if activated else {}
        return MqttLink(host=broker.host, port=broker.port, client_id=self.device_id, keepalive=broker.keepalive,
                        subscriptions=subscriptions, ca_file=broker.ca_file,
                        backoff=Backoff(first=0.1, most=broker.reconnect_max), **credentials, **options)

    async def _wait_for_activation(self) -> None:
        prefix = self.config.uplink.topic_prefix
        self._activator = Activator(store=self.store, device_id=self.device_id, key=self.key,
                                    central_key=self.central_key, trusted=self.trusted, topic_prefix=prefix,
                                    agent_version=agent_version())
        try:
            async with self._link(activation_topics(prefix, self.device_id), activated=False) as link:
                self.service.ready(f"waiting for activation as device {self.device_id}: scan its activation code")
                await self._activator.run(link)
        finally:
            self._activator = None

    def _settle(self, telemetry: Telemetry, pushed: list[dict]) -> None:
        """Settings pushed by operations (the bodies of its settings events, in order), over the configuration
        file's: the intervals of what runs on a timer."""
        uplink = settings_in_force(pushed).get("uplink", {})
        # Taken before operations' tools refused what would make a box report in a tight loop: held to it here.
        telemetry.interval = max(uplink.get("status_interval", self.config.uplink.status_interval), MIN_REPORT_INTERVAL)
        pushed_snapshots = uplink.get("snapshot_interval")
        self._snapshot_interval = 0.0 if pushed_snapshots is None else max(pushed_snapshots, MIN_REPORT_INTERVAL)

    async def _snapshots(self) -> None:
        """A monitoring point's periodic report of its stock and actual prices, through the journal."""
        while True:
            try:
                event = await self.store.write(lambda journal: self.counter.snapshot(journal, time.time()))
            except StorageError as error:
                logger.error("monitoring snapshot NOT recorded: %s", error)
            else:
                logger.info("snapshot seq=%d: stock and prices for the company", event.seq,
                            extra=logs.event_fields(event.seq, "snapshot", None))
                if self._uplink is not None:
                    self._uplink.wake.set()
            taken = time.monotonic()  # the next when the interval is up, as it is now (settings may change it)
            while time.monotonic() < taken + (self._snapshot_interval or self.config.uplink.snapshot_interval):
                await asyncio.sleep(1.0)

    async def _active(self, region: str, monitoring: bool) -> None:
        config, prefix = self.config, self.config.uplink.topic_prefix
        telemetry = Telemetry(store=self.store, device_id=self.device_id, session=self.session, key=self.key,
                              topic_prefix=prefix, interval=config.uplink.status_interval, scanners=self.scanners,
                              first_connection=self.first_connection)
        async with self._link(downlink_topics(prefix, self.device_id, region), activated=True,
                              will=telemetry.will) as link:
            uplink = Uplink(store=self.store, link=link, device_id=self.device_id, session=self.session,
                            key=self.key, central_key=self.central_key, config=config.uplink)
            pushed = await self.store.read(settings_held)
            self._settle(telemetry, pushed)

            def settled(body: dict) -> None:  # a settings document just recorded: its event's body
                pushed.append(body)
                self._settle(telemetry, pushed)
            downlink = Downlink(store=self.store, uplink=uplink, device_id=self.device_id, region=region,
                                trusted=self.trusted, topic_prefix=prefix,
                                on_revoked=lambda document: self._revocation(document.body["grace_seconds"],
                                                                             taken_at=time.time()),
                                on_settings=settled)
            self._uplink = uplink
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(uplink.run()), group.create_task(downlink.run(link)),
                             group.create_task(telemetry.run(link)), group.create_task(self._report(link))]
                    if monitoring:
                        tasks.append(group.create_task(self._snapshots()))
                    await self._revoked.wait()
                    await self._deliver_all()
                    for task in tasks:
                        task.cancel()
                    # Said before the erase, delivered all or not: central removes the box's access once it
                    # says it erases itself (a box cut off before it took central's acknowledgement could not
                    # learn it after, and would wait out its grace to say delivered events lost).
                    await telemetry.farewell(link, acked=uplink.acked, within=FAREWELL_WAIT)
            finally:
                self._uplink = None


async def _serve(box: Box) -> bool:
    # Imported here: HID POS (pyusb) and keymaps load only in the process that reads scanners.
    from .scanners import Scanners

    config = box.config
    scanners = Scanners(config=config.scanner, feedback=config.feedback, on_scan=box.on_scan, on_device=box.on_device)
    box.service = Service.from_environment()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        async with asyncio.TaskGroup() as group:
            life = group.create_task(box.run())
            reading = group.create_task(scanners.run())
            watchdog = group.create_task(box.service.watchdog())
            box.announce = scanners.announce
            expiry = group.create_task(box.expire(scanners.announce))
            folding = group.create_task(box.retain())
            revoked = await life
            for task in (reading, watchdog, expiry, folding):
                task.cancel()
        return revoked
    except asyncio.CancelledError:
        logger.info("agent stopping device=%s", box.device_id)
        box.service.stopping()
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
