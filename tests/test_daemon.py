"""The agent and central in this process, under the loop guard: a day's work never blocks either loop."""

from __future__ import annotations

import asyncio
import contextlib

from agent import config as agent_config
from agent import daemon
from central.ingest import Ingest
from central.store import CentralStore
from provisioning.identity import load_key

from .harness import feed, price_list, scans, wait_until


def test_the_agent_records_and_delivers_with_its_loop_never_blocked(stack, fifo, tmp_path):
    device = stack.provision("shop-inproc", scanners=[str(fifo)])
    csv_text, items = price_list(30)
    (tmp_path / "prices.csv").write_text(csv_text)
    assert device.command("prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    config = agent_config.load(device.config)
    codes = list(items)[:12]

    async def main():
        agent = asyncio.create_task(daemon.run(config))
        try:
            await asyncio.to_thread(feed, fifo, scans(codes))
            await asyncio.to_thread(wait_until, lambda: len(stack.sales()) == len(codes), 30, "sales at central")
        finally:
            agent.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent

    asyncio.run(main())
    assert [s["code"] for s in stack.sales()] == codes
    status = device.status()
    assert status["acked_seq"] == status["last_seq"]


def test_central_ingests_with_its_loop_never_blocked(stack, fifo, tmp_path):
    stack.stop_central()
    device = stack.provision("shop-central", scanners=[str(fifo)])
    device.start()
    feed(fifo, scans(["96385074", "40063812"]))
    wait_until(lambda: device.status()["events"].get("sale") == 2, 20, "two durable scans")
    store = CentralStore(stack.central_db)
    ingest = Ingest(store=store, signing_key=load_key(stack.central_key))

    async def main():
        task = asyncio.create_task(ingest.serve(host="127.0.0.1", port=stack.broker_port))
        try:
            await asyncio.to_thread(wait_until, lambda: (s := device.status())["acked_seq"] == s["last_seq"], 30,
                                    "central's acknowledgement")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(10):
                    await task

    try:
        asyncio.run(main())
    finally:
        store.close()
    assert [s["code"] for s in stack.sales()] == ["96385074", "40063812"]


def test_a_journal_removed_under_the_running_agent_refuses_scans_and_is_said_once_not_every_second(stack, fifo):
    """The daemon's look at the time-outs is a write each second: each one logged the whole error again."""
    import time

    device = stack.provision("shop-gone", scanners=[str(fifo)])
    device.start()
    try:
        feed(fifo, scans(["96385074"]))
        wait_until(lambda: len(stack.sales()) == 1, 30, "the sale at central")
        (device.directory / "journal.db").unlink()
        feed(fifo, scans(["96385074"]))
        wait_until(lambda: "NOT recorded" in device.log.read_text(), 20, "the scan refused")
        time.sleep(4)
    finally:
        device.stop()
    said = [line for line in device.log.read_text().splitlines()
            if "was removed or replaced while the journal was open" in line and "NOT recorded" not in line]
    assert 1 <= len(said) <= 2, said  # the store's line, and the time-outs' once
    assert len(stack.sales()) == 1
