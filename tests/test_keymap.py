"""The built-in US layout types what libxkbcommon's "us" layout types, for every key in every state.

The agent decodes US-layout scanners (the default) with drivers/keymap.py's own table, so that the
most common layout needs no library and no compiled keymap; these tests hold that table to
xkeyboard-config's layout, key for key.
"""

from __future__ import annotations

import itertools

import pytest
from evdev import ecodes as e
from hypothesis import given, settings, strategies as st

from drivers.keymap import UsTable, XkbKeymap, keystrokes, load_keymap

MODIFIERS = (e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT, e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL, e.KEY_LEFTALT, e.KEY_RIGHTALT,
             e.KEY_LEFTMETA, e.KEY_RIGHTMETA, e.KEY_SCROLLLOCK)
LOCKS = (e.KEY_CAPSLOCK, e.KEY_NUMLOCK)
KEYS = range(1, 256)  # every key code a keyboard-wedge scanner could send


@pytest.fixture(scope="module")
def xkb_us():
    return XkbKeymap("us")


def test_the_us_layout_is_built_in_and_every_other_comes_from_libxkbcommon():
    assert isinstance(load_keymap("us"), UsTable)
    assert isinstance(load_keymap("us", "intl"), XkbKeymap)
    assert isinstance(load_keymap("de"), XkbKeymap)


@pytest.mark.parametrize("numlock", [True, False], ids=["numlock", "no-numlock"])
@pytest.mark.parametrize("capslock", [False, True], ids=["", "capslock"])
def test_every_key_types_the_same_under_every_set_of_modifiers_held(xkb_us, numlock, capslock):
    differences = []
    for held in itertools.chain.from_iterable(itertools.combinations(MODIFIERS, n) for n in range(len(MODIFIERS) + 1)):
        ours, theirs = UsTable().new_state(numlock=numlock), xkb_us.new_state(numlock=numlock)
        for state in (ours, theirs):
            if capslock:
                state.update(e.KEY_CAPSLOCK, down=True)
                state.update(e.KEY_CAPSLOCK, down=False)
            for code in held:
                state.update(code, down=True)
        differences += [(tuple(e.KEY[m] for m in held), e.KEY.get(code, code), ours.text(code), theirs.text(code))
                        for code in KEYS if code not in MODIFIERS + LOCKS and ours.text(code) != theirs.text(code)]
    assert differences == []


def test_the_characters_scanners_type_are_where_a_scanner_expects_them():
    """A few pinned by hand, so that the table and libxkbcommon cannot drift together unseen."""
    state = UsTable().new_state()
    assert [state.text(code) for code in (e.KEY_6, e.KEY_KP9, e.KEY_A, e.KEY_ENTER, e.KEY_KPENTER, e.KEY_TAB)] == \
        ["6", "9", "a", "\r", "\r", "\t"]
    state.update(e.KEY_LEFTSHIFT, down=True)
    assert [state.text(code) for code in (e.KEY_4, e.KEY_A, e.KEY_KP9, e.KEY_SLASH)] == ["$", "A", "", "?"]
    state.update(e.KEY_LEFTSHIFT, down=False)
    state.update(e.KEY_LEFTCTRL, down=True)
    # GS1's group separator and the other control characters an element string may carry
    assert [state.text(code) for code in (e.KEY_RIGHTBRACE, e.KEY_LEFTBRACE, e.KEY_BACKSLASH, e.KEY_J, e.KEY_2)] == \
        ["\x1d", "\x1b", "\x1c", "\n", ""]


def test_the_keystrokes_a_recording_is_made_of_type_back_the_text_they_were_made_from():
    text = "".join(map(chr, range(0x20, 0x7F))) + "\r\t\n"
    state, typed = UsTable().new_state(), []
    for code, shift in keystrokes(text):
        if shift:
            state.update(e.KEY_LEFTSHIFT, down=True)
        typed.append(state.text(code))
        if shift:
            state.update(e.KEY_LEFTSHIFT, down=False)
    assert "".join(typed) == text


key_events = st.lists(st.tuples(st.sampled_from(MODIFIERS + LOCKS + tuple(KEYS)), st.booleans()), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events=key_events, numlock=st.booleans(), held=st.sets(st.sampled_from(MODIFIERS)))
def test_any_sequence_of_presses_and_releases_types_the_same(xkb_us, events, numlock, held):
    ours, theirs = UsTable().new_state(numlock=numlock), xkb_us.new_state(numlock=numlock)
    for state in (ours, theirs):
        state.reset(held=frozenset(held))  # a resync after dropped events: these keys are down now
    for code, down in events:
        for state in (ours, theirs):
            state.update(code, down=down)
        if down:
            assert ours.text(code) == theirs.text(code), (e.KEY.get(code, code), events)


def test_a_layout_xkeyboard_config_does_not_know_is_named_in_the_driver_error():
    from drivers.errors import DriverError

    with pytest.raises(DriverError, match=r"^keyboard layout 'zz' is not known to xkeyboard-config$"):
        load_keymap("zz")
    with pytest.raises(DriverError, match=r"^keyboard layout 'de\(no-such-variant\)' is not known to xkeyboard-config$"):
        load_keymap("de", "no-such-variant")


# X's Compose file for UTF-8 locales (libx11-data): what each dead key makes with the key after it.
COMPOSE = "/usr/share/X11/locale/en_US.UTF-8/Compose"


def _compose_rules() -> dict[tuple[str, str], str]:
    import re

    rules = {}
    with open(COMPOSE, encoding="utf-8") as file:
        for line in file:
            match = re.match(r'^<(dead_\w+)>\s+<(\w+)>\s*:\s*"((?:[^"\\]|\\.)*)"', line)
            if match:
                rules[match[1], match[2]] = re.sub(r"\\(.)", r"\1", match[3])
    return rules


def test_a_dead_key_makes_with_space_or_itself_what_x_composes_and_with_a_letter_that_or_nothing():
    """The decoder's table of dead keys, held to X's own: with Space or pressed twice exactly X's
    character; with a letter X's character or none (the scan then refused), never another one."""
    import string

    from drivers.keymap import DEAD_KEYS, compose

    rules = _compose_rules()
    for dead in DEAD_KEYS:
        assert compose(dead, " ") == rules[dead, "space"], dead
        assert compose(dead, "", again=True) == rules[dead, dead], dead
        for letter in string.ascii_letters:
            assert compose(dead, letter) in ("", rules.get((dead, letter), "")), (dead, letter)
        for other in "0123456789-./ \t":
            assert compose(dead, other) == (rules[dead, "space"] if other == " " else ""), (dead, other)
    assert compose("dead_circumflex", "e") == "\u00ea" and compose("dead_diaeresis", "U") == "\u00dc"


@pytest.mark.parametrize("layout, code, shift, dead", [
    ("de", e.KEY_GRAVE, False, "dead_circumflex"), ("de", e.KEY_EQUAL, False, "dead_acute"),
    ("de", e.KEY_EQUAL, True, "dead_grave"), ("fr", e.KEY_LEFTBRACE, False, "dead_circumflex"),
    ("fr", e.KEY_LEFTBRACE, True, "dead_diaeresis"), ("de", e.KEY_1, False, ""), ("us", e.KEY_GRAVE, False, ""),
])
def test_a_layouts_dead_keys_are_named_and_every_other_key_is_not_one(layout, code, shift, dead):
    state = load_keymap(layout).new_state()
    if shift:
        state.update(e.KEY_LEFTSHIFT, down=True)
    assert state.dead(code) == dead
