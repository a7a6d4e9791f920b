"""Several central ingest instances share the load; one killed loses nothing (the boxes send again)."""

from __future__ import annotations

import os
import signal

from drivers.barcode import gs1_check_digit

from .harness import feed, scans, wait_until


def _codes(device: int, start: int, n: int) -> list[str]:
    return [(body := f"69{device:02d}{k:08d}") + str(gs1_check_digit(body)) for k in range(start, start + n)]


def test_two_instances_share_the_batches_and_a_killed_one_loses_nothing(stack, tmp_path):
    stack.stop_central()
    first = stack.start_ingest("ingest-a", share="ingest")
    stack.start_ingest("ingest-b", share="ingest")
    boxes = []
    for n in range(4):
        fifo = tmp_path / f"box{n}.fifo"
        os.mkfifo(fifo)
        device = stack.provision(f"shop-{n}", scanners=[str(fifo)], uplink={"batch_max_events": 2, "ack_timeout": 2.0})
        device.start()
        boxes.append((device, fifo))

    def all_acknowledged(sales_each: int) -> bool:
        return all((s := d.status())["events"].get("sale") == sales_each and s["acked_seq"] == s["last_seq"]
                   for d, _ in boxes)

    for n, (_, fifo) in enumerate(boxes):
        feed(fifo, scans(_codes(n, 0, 6)))
    wait_until(lambda: all_acknowledged(6), 60, "the first round acknowledged")
    logs = [(stack.directory / f"{name}.log").read_text() for name in ("ingest-a", "ingest-b")]
    assert all("batch accepted" in log for log in logs), "both instances took a share"

    # Frozen, the first instance still gets its turn of the next batches and handles none; then it is
    # killed with them: with a clean session they are gone from the broker, and only the boxes' resend
    # (ack_timeout) brings them to the instance left.
    first.send_signal(signal.SIGSTOP)
    for n, (_, fifo) in enumerate(boxes):
        feed(fifo, scans(_codes(n, 6, 6)))
    wait_until(lambda: all(d.status()["events"].get("sale") == 12 for d, _ in boxes), 30, "the second round recorded")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: all_acknowledged(12), 60, "the second round acknowledged by the instance left")
    sales = stack.sales()
    assert sorted((s["device"], s["code"]) for s in sales) == sorted(
        (f"shop-{n}", code) for n in range(4) for code in _codes(n, 0, 12))  # each once, none lost
