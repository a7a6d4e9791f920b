"""Central acknowledges less than it did before (its database restored, an older answer come last): what the
box sends again, whatever fails or comes meanwhile; and what it does when the events central lost are folded here."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

from agent import retention
from agent.daemon import Box

from .harness import wait_until
from .test_delivery import connect_as, failing_journal, recorded, run_uplink


async def central_lost_2_to_4(central, box) -> None:
    """The backlog 1..4 held and acknowledged; then central, restored, answers 1: after ack_timeout 2..4 go again."""
    assert await asyncio.to_thread(central.wait_for, 1, "the backlog") == [[1, 2, 3, 4]]
    central.acknowledge(4)
    await box.wait_acked(4)
    central.acknowledge(1)
    assert await asyncio.to_thread(central.wait_for, 2, "the events central lost") == [[1, 2, 3, 4], [2, 3, 4]]


def test_an_acknowledgement_below_the_cursor_that_nothing_puts_back_sends_the_events_between_again(
        stack, tmp_path, caplog):
    """Central's database restored from a backup older than its last acknowledgement acknowledges less than
    before: after ack_timeout with no answer putting it back, the events between, still in the journal, go
    again (else central never holds them, and its acknowledgement stays behind for good). The journal's cursor
    stays; central's answer to them puts the uplink's count back."""
    async def test(central, box):
        await central_lost_2_to_4(central, box)
        assert box.uplink.acked == 1 and await box.acked_seq() == 4
        central.acknowledge(4)
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 3, "the next event") == [[1, 2, 3, 4], [2, 3, 4], [5]]
        central.acknowledge(5)
        await box.wait_acked(5)
        assert len(central.batches()) == 3 and box.uplink.acked == 5

    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        run_uplink(stack, tmp_path, "shop-lowered", test, before=recorded(4), ack_timeout=1.0)
    said = [r.getMessage() for r in caplog.records if r.name == "agent.uplink" and "stopped at" in r.getMessage()]
    assert said == ["central's answers stopped at seq=1, below the 4 it acknowledged before (an older answer come "
                    "last, or its database restored from an older backup): sending seq=2..4 again"]


def test_a_revoked_box_waits_for_the_events_central_lost_before_it_erases(stack, tmp_path):
    """The journal's cursor says central held 4, but central, restored, holds 1: a revoked box (its wait before
    the farewell and the erase) counts what central holds, not its cursor, and waits for 2..4 to be held again."""
    async def test(central, box):
        await central_lost_2_to_4(central, box)
        revoked = SimpleNamespace(store=box.store, _uplink=box.uplink, _grace=20.0, _grace_ends=time.monotonic() + 20.0)
        waiting = asyncio.create_task(Box._deliver_all(revoked))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        central.acknowledge(4)
        async with asyncio.timeout(5):
            await waiting

    run_uplink(stack, tmp_path, "shop-revoked-lowered", test, before=recorded(4), ack_timeout=1.0)


def test_an_older_answer_come_last_and_put_back_by_the_next_sends_nothing_again(stack, tmp_path, caplog):
    """Two of central's workers answer at once, and the older answer is published last: central holds what it
    said before, as its next answer shows. Nothing goes again, nothing is said."""
    async def test(central, box):
        assert await asyncio.to_thread(central.wait_for, 1, "the backlog") == [[1, 2, 3, 4]]
        central.acknowledge(4)
        await box.wait_acked(4)
        central.acknowledge(2)  # the older answer, come last
        await box.record()
        assert await asyncio.to_thread(central.wait_for, 2, "the next event") == [[1, 2, 3, 4], [5]]
        central.acknowledge(5)
        await box.wait_acked(5)
        await asyncio.sleep(2.5)  # past ack_timeout: nothing more goes
        assert central.batches() == [[1, 2, 3, 4], [5]] and box.uplink.acked == 5

    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        run_uplink(stack, tmp_path, "shop-reordered", test, before=recorded(4), ack_timeout=1.0)
    assert not [r for r in caplog.records if r.name == "agent.uplink" and "stopped at" in r.getMessage()]


def test_a_journal_read_that_fails_as_central_acknowledges_less_is_tried_again_and_the_lost_events_go(stack, tmp_path,
                                                                                            monkeypatch, caplog):
    """Central restored (holds 1 of 4), and the uplink's read of the journal to send 2..4 again fails once (an I/O
    error, a busy lock): it is looked at again after ack_timeout, and 2..4 go."""
    failing = failing_journal(monkeypatch, caplog, "read_after", left=0)

    async def test(central, box):
        assert await asyncio.to_thread(central.wait_for, 1, "the backlog") == [[1, 2, 3, 4]]
        central.acknowledge(4)
        await box.wait_acked(4)
        failing.left = 1
        central.acknowledge(1)  # central restored from an older backup: it holds 1
        await asyncio.to_thread(wait_until, lambda: failing.left == 0, 10, "the failed read")
        await box.record()  # seq 5
        await asyncio.to_thread(central.wait_for, 2, "event 5")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # central answers every batch it gets with its count: 1
            central.acknowledge(1)
            await asyncio.sleep(0.5)
        sent_again = {seq for batch in central.batches()[1:] for seq in batch}
        assert {2, 3, 4} <= sent_again, f"batches after the restore: {central.batches()[1:]}"

    run_uplink(stack, tmp_path, "shop-r1", test, before=recorded(4), ack_timeout=1.0)


def test_a_second_loss_at_the_same_count_sends_the_events_again_too(stack, tmp_path):
    """Central restored to a backup holding 1: the box sends 2..4 again and central acknowledges 4. Central restored
    again to the same backup answers event 5 with 1: 2..4 go again, as the first time."""
    async def test(central, box):
        await central_lost_2_to_4(central, box)
        central.acknowledge(4)  # central holds 4 again
        await asyncio.sleep(0.5)
        assert box.uplink.acked == 4
        # Central restored again, to the same backup: it holds 1, and answers event 5 with 1.
        await box.record()
        await asyncio.to_thread(central.wait_for, 3, "event 5")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            central.acknowledge(1)
            await asyncio.sleep(0.5)
        later = central.batches()[3:]
        assert {2, 3, 4} <= {seq for batch in later for seq in batch}, f"batches after the second restore: {later}"

    run_uplink(stack, tmp_path, "shop-r2", test, before=recorded(4), ack_timeout=1.0)


def _folded(journal):
    recorded(8)(journal)
    journal.acknowledge(8)
    assert retention.fold_old(journal, days=1, now=time.time() + 10 * 86_400) == 8
    recorded(6)(journal)  # 9..14, recorded since


def test_events_central_lost_and_the_box_folded_leave_the_next_ones_going_to_central(stack, tmp_path, caplog):
    """Central's database restored from a backup older than the box's retention: 5..8 are gone at central and
    folded at the box, so central's acknowledgement stays at 4 for good. The events recorded since still go,
    each answer of 4 taking a batch in flight; the box says what is lost and the way out."""
    async def test(central, box):
        await asyncio.to_thread(central.wait_for, 1, "the first batch")
        async with asyncio.timeout(20):
            while {seq for batch in central.batches() for seq in batch} < set(range(9, 15)):
                central.acknowledge(4)  # central after its restore: it holds 1..4, and says so at every batch
                await asyncio.sleep(0.2)

    with caplog.at_level(logging.ERROR, logger="agent.uplink"):
        run_uplink(stack, tmp_path, "shop-folded", test, before=_folded, batch_max_events=1, max_in_flight=2,
                   ack_timeout=0.5)
    assert "seq=5..8 are no longer in this journal" in caplog.text and "delivers as another device, from seq=8" in caplog.text


async def _into_stuck(central, box):
    await asyncio.to_thread(central.wait_for, 1, "the first batch")
    async with asyncio.timeout(20):
        while {seq for batch in central.batches() for seq in batch} < set(range(9, 15)):
            central.acknowledge(4)
            await asyncio.sleep(0.2)
    assert box.uplink._stuck == 4


def test_a_count_stopped_at_folded_events_ends_when_central_counts_on_and_a_later_loss_is_sent_again(stack, tmp_path, caplog):
    """Central's count stopped at 4 (5..8 folded here). Central then holds 5..8 again (delivered by another device
    of the journal, or a newer backup) and acknowledges 14; restored later to its backup holding 4, the events it
    lost that the journal still holds (9..14) go again."""
    async def test(central, box):
        await _into_stuck(central, box)
        central.acknowledge(14)
        await box.wait_acked(14)
        before = len(central.batches())
        await box.record()  # 15
        await asyncio.to_thread(central.wait_for, before + 1, "event 15")
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # central restored again: it holds 1..4
            central.acknowledge(4)
            await asyncio.sleep(0.3)
        later = {seq for batch in central.batches()[before:] for seq in batch}
        assert set(range(9, 15)) <= later, f"sent after the second restore: {central.batches()[before:]}"

    with caplog.at_level(logging.ERROR, logger="agent.uplink"):
        run_uplink(stack, tmp_path, "shop-r3", test, before=_folded, batch_max_events=1, max_in_flight=2,
                   ack_timeout=0.5)


def test_behind_a_stopped_count_a_reconnection_sends_no_more_than_the_batches_in_flight_again(stack, tmp_path):
    """Central's count stopped at 4 (5..8 folded here): each answer of it took a batch in flight, counted as held in
    memory, so a new connection does not send the history since the loss again."""
    async def test(central, box):
        await _into_stuck(central, box)
        await asyncio.sleep(0.5)
        central.acknowledge(4)
        await asyncio.sleep(0.5)
        before = len(central.batches())
        link = box.uplink.link
        generation = link.generation
        await asyncio.to_thread(connect_as, stack, central.device)
        async with asyncio.timeout(20):
            while link.generation == generation or not link.connected.is_set():
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            central.acknowledge(4)
            await asyncio.sleep(0.2)
        again = central.batches()[before:]
        # At most the batches in flight as the connection ended (their answers were lost with it), never
        # every event since the loss.
        assert len(again) <= 2 and {seq for batch in again for seq in batch} <= {13, 14}, again

    run_uplink(stack, tmp_path, "shop-r4", test, before=_folded, batch_max_events=1, max_in_flight=2,
               ack_timeout=0.5)


def test_a_lower_retained_answer_that_comes_before_the_uplink_read_its_cursor_is_acted_on(stack, tmp_path,
                                                                                                  monkeypatch, caplog):
    """The box restarts after central was restored (retained answer: 1; the journal's cursor: 4), and the uplink's
    first reads of the journal fail twice: the retained 1, come before the uplink read its cursor, still sends
    2..4 again."""
    def held_4_central_restored(journal):
        recorded(4)(journal)
        journal.acknowledge(4)

    from paho.mqtt import publish as mqtt_publish
    from paho.mqtt.client import MQTTv5

    from provisioning import protocol
    from provisioning.identity import load_key
    from storage import Journal

    from .test_delivery import PREFIX

    # The journal as the box left it, and the retained answer central, restored, published last: 1.
    journal = Journal.open(tmp_path / "journal.db", b"k" * 32, max_event_bytes=protocol.MAX_EVENT_BYTES)
    held_4_central_restored(journal)
    journal_id = journal.journal_id()
    journal.close()
    token = protocol.encode_ack("shop-r5", 1, key=load_key(stack.central_key), journal=journal_id)
    mqtt_publish.single(protocol.ack_topic(PREFIX, "shop-r5"), token, qos=1, retain=True, hostname="127.0.0.1",
                        port=stack.broker_port, protocol=MQTTv5)
    failing_journal(monkeypatch, caplog, "base_seq", left=2)

    async def test(central, box):
        await asyncio.sleep(5.0)  # several ack_timeouts after the uplink has read its cursor
        assert {2, 3, 4} <= {seq for batch in central.batches() for seq in batch}, central.batches()

    run_uplink(stack, tmp_path, "shop-r5", test, ack_timeout=1.0)
