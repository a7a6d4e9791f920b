"""Feedback is written as input events: tones (EV_SND) and LEDs (EV_LED), tested like the input."""

import asyncio
import logging
from pathlib import Path

from evdev import ecodes as e

from drivers.feedback import PATTERNS, Feedback, Output, Signal
from drivers.input_event import unpack


def written(path):
    return [(ev.type, ev.code, ev.value) for ev in unpack(path.read_bytes())]


def test_each_tone_change_is_an_snd_tone_event_and_a_report(tmp_path):
    speaker = tmp_path / "event9"
    speaker.write_bytes(b"")
    asyncio.run(Feedback(str(speaker), Output.TONE).play(Signal.GOOD))
    assert written(speaker) == [(e.EV_SND, e.SND_TONE, 2700), (e.EV_SYN, e.SYN_REPORT, 0),
                                (e.EV_SND, e.SND_TONE, 0), (e.EV_SYN, e.SYN_REPORT, 0)]


# What docs/configuration.md promises the retailer: (how many beeps or blinks, and their pitch).
DOCUMENTED = {
    Output.TONE: {Signal.GOOD: (1, "high"), Signal.ATTENTION: (2, "mid"), Signal.ERROR: (3, "low")},
    Output.LED: {Signal.GOOD: 1, Signal.ATTENTION: 2, Signal.ERROR: 5},
}


def test_the_signals_are_what_the_documentation_tells_the_retailer():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert ("**good**, one short high beep or one blink" in docs and "**Attention**, two beeps or blinks" in docs
            and "**Error**, three low beeps or five fast blinks" in docs)
    pitch = {}
    for signal, (beeps, _) in DOCUMENTED[Output.TONE].items():
        tones = [(hz, seconds) for hz, seconds in PATTERNS[Output.TONE][signal] if hz]
        assert len(tones) == beeps, signal
        pitch[signal] = {hz for hz, _ in tones}
        assert len(pitch[signal]) == 1
    assert min(pitch[Signal.GOOD]) > min(pitch[Signal.ATTENTION]) > min(pitch[Signal.ERROR])
    assert sum(seconds for hz, seconds in PATTERNS[Output.TONE][Signal.GOOD] if hz) <= 0.1  # short: it is every sale
    for signal, blinks in DOCUMENTED[Output.LED].items():
        assert len([on for on, _ in PATTERNS[Output.LED][signal] if on]) == blinks, signal
    error_blink = max(seconds for on, seconds in PATTERNS[Output.LED][Signal.ERROR] if on)
    assert error_blink < min(seconds for on, seconds in PATTERNS[Output.LED][Signal.GOOD] if on)  # fast
    for output in Output:
        assert all(PATTERNS[output][signal][-1][0] == 0 for signal in Signal)  # every signal ends silent, or dark


def test_leds_blink_on_the_scanner_itself(tmp_path):
    scanner = tmp_path / "event3"
    scanner.write_bytes(b"")
    asyncio.run(Feedback(str(scanner), Output.LED, led=e.LED_CAPSL).play(Signal.ERROR))
    leds = [value for type_, code, value in written(scanner) if type_ == e.EV_LED and code == e.LED_CAPSL]
    assert leds == [1, 0] * 5


def test_a_signal_cut_short_leaves_no_tone_sounding(tmp_path):
    speaker = tmp_path / "event9"
    speaker.write_bytes(b"")

    async def scenario():
        task = asyncio.create_task(Feedback(str(speaker), Output.TONE).play(Signal.ERROR))
        await asyncio.sleep(0.05)  # inside the first 440 Hz beep
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    tones = [value for type_, code, value in written(speaker) if type_ == e.EV_SND]
    assert tones == [440, 0]


def test_a_missing_speaker_warns_once_then_quietly(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.feedback")
    speaker = Feedback(str(tmp_path / "gone"), Output.TONE)
    for _ in range(3):
        asyncio.run(speaker.play(Signal.GOOD))
    levels = [r.levelno for r in caplog.records if "feedback device" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
