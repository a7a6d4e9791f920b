"""The agent: scanners -> decoders -> counter -> journal -> uplink -> broker.

All SQLite work (and so every fsync) runs in one dedicated thread, so the
event loop that reads the scanners never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import stat
from concurrent.futures import ThreadPoolExecutor

from drivers.decoder import Decoder
from drivers.reader import ScannerError, read_events
from provisioning.identity import load_key, parse_public_key
from storage import Journal, JournalError, load_data_key

from .config import Config
from .counter import Counter
from .mqtt import MqttLink
from .uplink import Uplink, ack_topic

logger = logging.getLogger(__name__)


def open_journal(config: Config) -> Journal:
    """Open the journal with its data key; the key file is created only together with a new journal."""
    storage = config.storage
    key = load_data_key(key_file=storage.key_file, credential=storage.credential, create=not storage.path.exists())
    return Journal.open(storage.path, key)


async def run(config: Config) -> None:
    """Run until SIGTERM or SIGINT (or until every scanner recording has been read and sent)."""
    signing_key = load_key(config.device.key_file)
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
            main = asyncio.current_task()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, main.cancel)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(uplink.run())
                    for path in config.scanner.paths:
                        group.create_task(_scanner(path, counter, call, uplink.wake, config.scanner.retry_interval))
            except asyncio.CancelledError:
                logger.info("agent stopping device=%s", config.device.id)
    finally:
        await call(journal.close)
        executor.shutdown()


async def _scanner(path: str, counter: Counter, call, wake: asyncio.Event, retry_interval: float) -> None:
    """Read one scanner for as long as the agent runs, reopening it when it goes away."""
    decoder = Decoder(source=path)
    warned = False
    while True:
        try:
            async for event in read_events(path):
                warned = False
                scan = decoder.feed(event)
                if scan is None:
                    continue
                try:
                    await call(counter.record, scan)
                except JournalError as error:
                    # Not recorded: the retailer gets no confirmation and scans again.
                    logger.error("scan %r from %s NOT recorded: %s", scan.text, path, error)
                    continue
                wake.set()
            else:
                if path_is_recording(path):
                    logger.info("scanner recording %s fully read", path)
                    return
        except (ScannerError, OSError) as error:
            if not warned:
                logger.warning("scanner %s unavailable: %s; retrying every %.1fs", path, error, retry_interval)
                warned = True
        partial = decoder.reset()
        if partial:
            logger.warning("scanner %s went away mid-scan; partial barcode %r discarded", path, partial)
        await asyncio.sleep(retry_interval)


def path_is_recording(path: str) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.stat(path).st_mode)
    return False
