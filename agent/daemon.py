"""The agent: scanners -> decoders -> counter -> journal -> uplink -> broker.

All SQLite work (and so every fsync) runs in one dedicated thread, so the
event loop that reads the scanners never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from drivers.decoder import Scan
from drivers.feedback import Signal
from provisioning.identity import load_key, parse_public_key
from storage import Journal, JournalError, load_data_key

from .config import Config, ConfigError
from .counter import Counter, signal_for
from .mqtt import MqttLink
from .scanners import Scanners
from .uplink import Uplink, ack_topic

logger = logging.getLogger(__name__)


def open_journal(config: Config) -> Journal:
    """Open the journal with its data key; the key file is created only together with a new journal."""
    storage = config.storage
    key = load_data_key(key_file=storage.key_file, credential=storage.credential, create=not storage.path.exists())
    return Journal.open(storage.path, key)


async def run(config: Config) -> None:
    """Run until SIGTERM or SIGINT; a scanner recording that has been read to its end leaves the rest running."""
    signing_key = load_key(config.device.key_file)
    if not config.uplink.central_key:
        raise ConfigError("[uplink] central_key is not set: give central's public key ('counterbox-central pubkey' prints it)")
    central_key = parse_public_key(config.uplink.central_key)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
    loop = asyncio.get_running_loop()

    async def call(fn, *args):
        return await loop.run_in_executor(executor, functools.partial(fn, *args))

    journal = await call(open_journal, config)
    try:
        session = await call(journal.start_session)
        counter = Counter(journal, currency=config.pricing.currency)
        logger.info(
            "agent started device=%s session=%d journal=%s last_seq=%d acked_seq=%d",
            config.device.id, session, journal.path, await call(journal.last_seq), await call(journal.acked_seq),
        )
        async with MqttLink(
            host=config.broker.host, port=config.broker.port, client_id=config.device.id,
            keepalive=config.broker.keepalive,
            subscriptions=[ack_topic(config.uplink.topic_prefix, config.device.id)],
        ) as link:
            uplink = Uplink(journal, call, link, config.device.id, session, signing_key, central_key, config.uplink)

            async def on_scan(scan: Scan) -> Signal:
                try:
                    event = await call(counter.record, scan)
                except JournalError as error:
                    # Not recorded: the retailer hears the error signal and scans again.
                    logger.error("scan %r from %s NOT recorded: %s", scan.text, scan.source, error)
                    return Signal.ERROR
                uplink.wake.set()
                return signal_for(event)

            async def on_device(report: dict) -> None:
                try:
                    await call(journal.append, "scanner", report)
                except JournalError as error:
                    logger.error("scanner %s %s NOT recorded: %s", report["scanner"], report["state"], error)
                    return
                uplink.wake.set()

            scanners = Scanners(config.scanner, config.feedback, on_scan, on_device)
            main = asyncio.current_task()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, main.cancel)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(uplink.run())
                    group.create_task(scanners.run())
            except asyncio.CancelledError:
                logger.info("agent stopping device=%s", config.device.id)
    finally:
        await call(journal.close)
        executor.shutdown()
