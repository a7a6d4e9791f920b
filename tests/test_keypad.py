"""A USB numeric keypad at the counter: each key alone, at a person's pace, as the control it stands for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from evdev import InputEvent
from evdev import ecodes as e

from agent.config import DeviceOverride, FeedbackConfig, ScannerConfig
from agent.counter import Counter
from agent.prices import parse_csv
from drivers.decoder import DROPPED, DecoderSettings, NotABarcode
from drivers.input_event import pack_all
from drivers.keypad import Keypad, Keypress
from storage import Store

from .harness import scans, wait_until


def key(code, value=1, t=100.0):
    return InputEvent(int(t), int(round((t % 1) * 1e6)), e.EV_KEY, code, value)


def syn(code=e.SYN_REPORT, t=100.0):
    return InputEvent(int(t), 0, e.EV_SYN, code, 0)


def test_each_key_down_is_one_key_by_its_code_whatever_num_lock_says():
    keypad = Keypad("/dev/input/event5")
    events = [key(e.KEY_NUMLOCK), key(e.KEY_NUMLOCK, 0), key(e.KEY_KP2), syn(), key(e.KEY_KP2, 2), key(e.KEY_KP2, 0),
              key(e.KEY_KP4, t=103.0), key(e.KEY_KPDOT), key(e.KEY_5), key(e.KEY_KPASTERISK), key(e.KEY_KPSLASH),
              key(e.KEY_KPMINUS), key(e.KEY_KPPLUS), key(e.KEY_BACKSPACE), key(e.KEY_ESC), key(e.KEY_KPENTER), key(e.KEY_A)]
    keys = [r.key for r in map(keypad.feed, events) if isinstance(r, Keypress)]
    assert keys == ["2", "4", ".", "5", "*", "/", "-", "+", "cancel", "cancel", "enter"]  # autorepeat is no key


def test_keys_lost_to_a_drop_are_said_so_and_what_came_with_the_drop_is_no_key():
    keypad = Keypad("/dev/input/event5")
    assert keypad.feed(key(e.KEY_KP1)) == Keypress("1", "/dev/input/event5", 100.0)
    # Said as what it was: a keypad types nothing but controls (the counter holds the product after it).
    assert keypad.feed(syn(e.SYN_DROPPED)) == NotABarcode("", "/dev/input/event5", DROPPED, of_a_control=True)
    assert keypad.feed(key(e.KEY_KP3)) is None  # up to the SYN_REPORT: the kernel's partial packet
    assert keypad.feed(syn()) is None
    assert keypad.feed(key(e.KEY_KP3)).key == "3"


def typed_slowly(codes, start):
    """A person at a keypad: a key every 0.3 s."""
    events, t = [], start
    for code in codes:
        events += [key(code, 1, t), syn(t=t), key(code, 0, t + 0.08), syn(t=t + 0.08)]
        t += 0.3
    return pack_all(events)


def test_a_quantity_keyed_on_the_keypad_counts_the_scanners_next_scan(tmp_path):
    """Through the scanner manager and the counter, with a real journal: the keypad and the scanner
    are two devices of one counter."""
    keypad_fifo, scanner_fifo = tmp_path / "keypad", tmp_path / "scanner"
    os.mkfifo(keypad_fifo)
    os.mkfifo(scanner_fifo)

    async def main():
        store = await Store.open(tmp_path / "journal.db", os.urandom(32))
        items = parse_csv("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
        await store.append("price_list", {"items": [item.as_json() for item in items]})
        counter = Counter(start_guard=0)  # keyed as soon as the box reads the keypad
        recorded = []

        async def on_scan(scan):
            outcome = await store.write(lambda journal: counter.record(journal, scan))
            recorded.extend(outcome.events)
            return outcome.signal

        config = ScannerConfig(paths=(str(keypad_fifo), str(scanner_fifo)), auto=False, hid_pos=False,
                               devices=(DeviceOverride(str(keypad_fifo), DecoderSettings(keypad=True)),))
        from agent.scanners import Scanners

        task = asyncio.create_task(Scanners(config=config, feedback=FeedbackConfig(output="none"), on_scan=on_scan).run())
        try:
            keypad = await asyncio.to_thread(_writer, keypad_fifo)
            scanner = await asyncio.to_thread(_writer, scanner_fifo)
            await asyncio.sleep(0.3)
            os.write(keypad, typed_slowly([e.KEY_KP2, e.KEY_KP4, e.KEY_KPASTERISK], time.time()))
            await asyncio.sleep(1.2)
            os.write(scanner, scans(["6901028075831"], start=time.time()))
            await asyncio.to_thread(wait_until, lambda: recorded, 10, "the sale")
            os.close(keypad)
            os.close(scanner)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
        return recorded

    [sale] = asyncio.run(main())
    assert (sale.kind, sale.body["quantity"], sale.body["unit_price"]) == ("sale", 24, 2300)


def _writer(path) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
