"""Scanner input enters as the kernel's own struct input_event bytes, through the agent's reader."""

import asyncio
import contextlib
import os
import struct
import threading
import time

import pytest
from evdev import ecodes

from drivers.decoder import DROPPED, Decoder
from drivers.input_event import EVENT_SIZE, InputEvent, pack_all, record
from drivers.errors import ScannerError
from drivers.reader import _READS_PER_TURN, PARTIAL_QUIET, open_source, read_events
from drivers.recording import press

from drivers.recording import type_text

from .harness import scans


async def _decode(path, limit=None):
    decoder = Decoder(source=str(path))
    found = []
    async for event in read_events(str(path)):
        scan = decoder.feed(event)
        if scan:
            found.append(scan.text)
            if limit and len(found) == limit:
                break
    return found


def test_input_event_is_the_kernels_24_byte_struct():
    assert EVENT_SIZE == 24
    raw = struct.pack("llHHi", 1700000000, 123456, ecodes.EV_KEY, ecodes.KEY_6, 1)
    assert pack_all([InputEvent(1700000000, 123456, ecodes.EV_KEY, ecodes.KEY_6, 1)]) == raw


def test_a_recording_file_decodes_main_row_keypad_and_shifted_characters(tmp_path):
    path = tmp_path / "session.events"
    path.write_bytes(
        scans(["6901028075831"]) + scans(["6902672100139"], keypad_digits=True) + scans(["Ab$9-x", "02422288"])
    )
    assert asyncio.run(_decode(path)) == ["6901028075831", "6902672100139", "Ab$9-x", "02422288"]


def test_kp_enter_terminates_like_enter(tmp_path):
    path = tmp_path / "s.events"
    path.write_bytes(scans(["40063812"], terminator=ecodes.KEY_KPENTER))
    assert asyncio.run(_decode(path)) == ["40063812"]


def test_autorepeat_and_key_up_add_nothing(tmp_path):
    t = time.time()
    events = press(ecodes.KEY_4, t, down=True)
    events.append(InputEvent(int(t), 0, ecodes.EV_KEY, ecodes.KEY_4, 2))  # autorepeat
    events.append(InputEvent(int(t), 0, ecodes.EV_KEY, ecodes.KEY_4, 2))
    events += press(ecodes.KEY_4, t, down=False)
    events += press(ecodes.KEY_2, t, down=True) + press(ecodes.KEY_2, t, down=False)
    events += press(ecodes.KEY_ENTER, t, down=True) + press(ecodes.KEY_ENTER, t, down=False)
    path = tmp_path / "s.events"
    path.write_bytes(pack_all(events))
    assert asyncio.run(_decode(path)) == ["42"]


def test_an_empty_line_yields_no_barcode(tmp_path):
    t = time.time()
    path = tmp_path / "s.events"
    path.write_bytes(pack_all(press(ecodes.KEY_ENTER, t, down=True)) + scans(["96385074"]))
    assert asyncio.run(_decode(path)) == ["96385074"]


def test_a_fifo_delivers_records_split_across_writes(fifo):
    data = scans(["6901028075831", "96385074"])

    def writer():
        fd = os.open(fifo, os.O_WRONLY)
        # The reader stops at the second barcode; the key-up events after it may find the pipe closed.
        with contextlib.suppress(BrokenPipeError):
            for i in range(0, len(data), 7):  # 7-byte pieces split every record
                os.write(fd, data[i : i + 7])
        os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    found = asyncio.run(asyncio.wait_for(_decode(fifo, limit=2), 10))
    thread.join()
    assert found == ["6901028075831", "96385074"]


def test_a_fifo_stays_open_when_its_writer_closes(fifo):
    """A replayed scanner that reconnects is one source, as a re-plugged device is."""

    def writer():
        for code in ("6901028075831", "96385074"):
            fd = os.open(fifo, os.O_WRONLY)
            os.write(fd, scans([code]))
            os.close(fd)
            time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    found = asyncio.run(asyncio.wait_for(_decode(fifo, limit=2), 10))
    thread.join()
    assert found == ["6901028075831", "96385074"]


def test_a_source_that_never_runs_dry_still_lets_the_loop_turn(fifo):
    """The reader reads again at once while input waits (no loop turn per read in a burst), yet a
    source kept full (a writer blocked in one long write refills the pipe as it is read) cannot
    hold the event loop: other work runs within a few reads."""
    data = pack_all([InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0)] * 100_000)  # 2.4 MB: some 400 reads
    done = threading.Event()

    def writer():
        fd = os.open(fifo, os.O_WRONLY)
        with contextlib.suppress(BrokenPipeError):
            os.write(fd, data)
        os.close(fd)
        done.set()

    async def main():
        turned = asyncio.Event()
        reads = 0
        async with open_source(str(fifo)) as source:
            thread = threading.Thread(target=writer)
            thread.start()
            await asyncio.sleep(0.1)  # the pipe full before the first read
            async for _ in source.batches():
                reads += 1
                busy = time.perf_counter() + 0.001  # decoding, without a turn of the loop: the writer refills
                while time.perf_counter() < busy:
                    pass
                if reads == 1:
                    asyncio.get_running_loop().call_soon(turned.set)  # runs at the loop's next turn
                if turned.is_set() or done.is_set():
                    break
        await asyncio.to_thread(thread.join)  # the source closed: the rest of the write finds no reader
        return reads, turned.is_set()

    reads, turned = asyncio.run(asyncio.wait_for(main(), 30))
    assert turned and reads <= _READS_PER_TURN + 1, reads


def test_a_missing_scanner_path_is_a_clear_error(tmp_path):
    with pytest.raises(ScannerError, match="does not exist"):
        asyncio.run(_decode(tmp_path / "nope"))


def test_a_directory_is_not_a_scanner(tmp_path):
    with pytest.raises(ScannerError, match="neither an input device"):
        asyncio.run(_decode(tmp_path))


def test_two_decoders_never_mix_interleaved_events():
    a, b = Decoder("a"), Decoder("b")
    out = []
    for ea, eb in zip(type_text("111", start=time.time()), type_text("222", start=time.time())):
        for decoder, event in ((a, ea), (b, eb)):
            scan = decoder.feed(event)
            if scan:
                out.append((scan.source, scan.text))
    assert sorted(out) == [("a", "111"), ("b", "222")]


def test_a_scan_decoded_before_a_drop_is_kept_when_the_device_is_gone_as_it_is_asked_for_its_keys():
    """EVIOCGKEY on a device the kernel has just removed fails (ENODEV): the reader says it cannot
    tell, the decoder starts from no keys down, and the scan the same read finished first is kept;
    the next read says the scanner is gone."""
    import errno

    from drivers.reader import Source

    class Removed:  # python-evdev's InputDevice, once the kernel has taken the device away
        def active_keys(self):
            raise OSError(errno.ENODEV, "No such device")

    source = Source("/dev/input/event3", "evdev", -1, device=Removed())
    assert source.held_keys() is None
    events = type_text("4006381333931", start=time.time()) + [
        InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_DROPPED, 0), InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0)]
    results = Decoder("/dev/input/event3").feed_all([record(ev) for ev in events],
                                                   held_keys=source.held_keys)
    assert [r.text for r in results] == ["4006381333931"]


def test_part_of_a_record_its_writer_left_is_an_event_lost_never_the_start_of_the_next(fifo):
    """A replayed scanner's writer died 10 bytes into a record; another writes a scan a moment later. The
    bytes left are dropped after PARTIAL_QUIET and said as the kernel says events lost (SYN_DROPPED, then its
    report), and every record after them reads as written: never shifted by 10 bytes for ever after."""
    scan = scans(["96385074"])
    cut = pack_all([InputEvent(1, 2, ecodes.EV_KEY, ecodes.KEY_6, 1)])[:10]

    def writer():
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, cut)
        os.close(fd)  # (died)
        time.sleep(PARTIAL_QUIET + 0.7)
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, scan)
        os.close(fd)

    async def main():
        got = []
        async with open_source(str(fifo)) as source:
            thread = threading.Thread(target=writer)
            thread.start()
            async for batch in source.batches():
                got += batch
                if len(got) >= 2 + len(scan) // EVENT_SIZE:
                    break
        thread.join()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 10))
    assert [(type_, code) for _, _, type_, code, _ in got[:2]] == [(ecodes.EV_SYN, ecodes.SYN_DROPPED),
                                                                   (ecodes.EV_SYN, ecodes.SYN_REPORT)]
    assert pack_all([InputEvent(*r) for r in got[2:]]) == scan
    decoder = Decoder(str(fifo))
    said = decoder.feed_all(got[:2]) + [decoder.idle(got[1][0] + got[1][1] / 1e6 + 0.2)]
    assert [r.reason for r in said if r is not None] == [DROPPED]
