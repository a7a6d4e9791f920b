"""The agent: scanners -> decoders -> counter -> journal -> uplink -> broker.

All SQLite work (and so every fsync) runs in the store's own thread, so the
event loop that reads the scanners never blocks on the disk; keys are read
and the journal opened in threads too.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from drivers.decoder import NotABarcode, Scan
from drivers.feedback import Signal
from provisioning import protocol
from provisioning.identity import load_key, parse_public_key
from storage import Journal, NoJournal, StorageError, Store, load_data_key

from .config import Config, ConfigError, StorageConfig
from .counter import Counter, log_recorded, signal_for
from .downlink import Downlink
from .downlink import subscriptions as downlink_topics
from .mqtt import MqttLink
from .telemetry import Telemetry
from .uplink import Uplink

logger = logging.getLogger(__name__)


def data_key(storage: StorageConfig, *, create: bool) -> bytes:
    """The journal's data key; the key file is created only together with a new journal."""
    return load_data_key(key_file=storage.key_file, credential=storage.credential,
                         create=create and not storage.path.exists())


def open_journal(config: Config, *, create: bool = False) -> Journal:
    """The journal, for a command run beside the agent; NoJournal when there is none and not ``create``."""
    if not create and not config.storage.path.exists():
        raise NoJournal(f"there is no journal at {config.storage.path}: the agent has not run on this box yet")
    key = data_key(config.storage, create=create)
    return Journal.open(config.storage.path, key, create=create, max_event_bytes=protocol.MAX_EVENT_BYTES)


async def open_store(config: Config) -> Store:
    key = await asyncio.to_thread(data_key, config.storage, create=True)
    return await Store.open(config.storage.path, key, max_event_bytes=protocol.MAX_EVENT_BYTES)


async def record_scan(store: Store, counter: Counter, scan: Scan | NotABarcode) -> Signal:
    """Record a scan durably and say what the retailer hears; ERROR when it could not be recorded."""
    try:
        event = await store.write(lambda journal: counter.record(journal, scan))
    except StorageError as error:
        # Not recorded: the retailer hears the error signal and scans again.
        logger.error("scan from %s NOT recorded: %s", scan.source, error)
        return Signal.ERROR
    log_recorded(event)
    return signal_for(event)


# Threads for the short blocking calls (opening a scanner, reading a key file, a USB transfer):
# two are plenty on a counter, and each thread costs the box memory.
BLOCKING_THREADS = 2


async def run(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="blocking"))
    signing_key = await asyncio.to_thread(load_key, config.device.key_file)
    if not config.uplink.central_key:
        raise ConfigError("[uplink] central_key is not set: give central's public key ('counterbox-central pubkey' prints it)")
    central_key = parse_public_key(config.uplink.central_key)
    store = await open_store(config)
    try:
        session = await store.write(lambda journal: journal.start_session())
        last, acked = await store.read(lambda journal: (journal.last_seq(), journal.acked_seq()))
        logger.info("agent started device=%s session=%d journal=%s last_seq=%d acked_seq=%d",
                    config.device.id, session, store.path, last, acked)
        await _serve(config, store, session, signing_key, central_key)
    finally:
        await store.close()


async def _serve(config: Config, store: Store, session: int, signing_key, central_key) -> None:
    # Imported here: HID POS (pyusb) and keymaps load only in the process that reads scanners.
    from .scanners import Scanners

    counter = Counter(currency=config.pricing.currency)
    telemetry = Telemetry(store=store, device_id=config.device.id, session=session, key=signing_key,
                          topic_prefix=config.uplink.topic_prefix, interval=config.uplink.status_interval)
    async with MqttLink(
        host=config.broker.host, port=config.broker.port, client_id=config.device.id,
        keepalive=config.broker.keepalive,
        subscriptions=downlink_topics(config.uplink.topic_prefix, config.device.id, config.device.region),
        will=telemetry.will,
    ) as link:
        uplink = Uplink(store=store, link=link, device_id=config.device.id, session=session,
                        key=signing_key, central_key=central_key, config=config.uplink)
        downlink = Downlink(store=store, uplink=uplink, device_id=config.device.id, region=config.device.region,
                            trusted={kid: parse_public_key(text) for kid, text in config.operations.keys.items()},
                            topic_prefix=config.uplink.topic_prefix)

        async def on_scan(scan: Scan | NotABarcode) -> Signal:
            signal = await record_scan(store, counter, scan)
            uplink.wake.set()
            return signal

        async def on_device(report: dict) -> None:
            try:
                seq = await store.append("scanner", report)
            except StorageError as error:
                logger.error("scanner %s %s NOT recorded: %s", report["scanner"], report["state"], error)
                return
            logger.info("scanner seq=%d %s %s", seq, report["state"], report["scanner"])
            if report["state"] == "taken":
                telemetry.scanners.add(report["scanner"])
            else:
                telemetry.scanners.discard(report["scanner"])
            uplink.wake.set()

        scanners = Scanners(config=config.scanner, feedback=config.feedback, on_scan=on_scan, on_device=on_device)
        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, main.cancel)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(uplink.run())
                group.create_task(downlink.run(link))
                group.create_task(telemetry.run(link))
                group.create_task(scanners.run())
        except asyncio.CancelledError:
            logger.info("agent stopping device=%s", config.device.id)
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
