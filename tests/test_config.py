"""The agent's configuration: documented defaults, and clear errors for what is wrong."""

from pathlib import Path

import pytest

from agent.config import ConfigError, load


def write(tmp_path, text):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_only_the_device_id_is_required_and_the_rest_defaults(tmp_path):
    config = load(write(tmp_path, '[device]\nid = "shop-1"\n'))
    assert config.device.id == "shop-1"
    assert config.storage.path == Path("/var/lib/counterbox/journal.db")
    assert (config.broker.host, config.broker.port) == ("127.0.0.1", 1883)
    assert (config.uplink.batch_max_events, config.uplink.ack_timeout) == (50, 10.0)


def test_relative_paths_are_taken_from_the_file_directory(tmp_path):
    config = load(write(tmp_path, '[device]\nid = "a"\n[storage]\npath = "data/journal.db"\n'))
    assert config.storage.path == tmp_path.resolve() / "data/journal.db"


def test_an_integer_is_accepted_where_seconds_are_expected(tmp_path):
    assert load(write(tmp_path, '[device]\nid = "a"\n[uplink]\nack_timeout = 3\n')).uplink.ack_timeout == 3.0


@pytest.mark.parametrize(
    "text,message",
    [
        ('[device]\nid = "a"\n[uplink]\nbatch_max_event = 5\n', "unknown key [uplink] batch_max_event; known keys:"),
        ('[device]\nid = "a"\n[scaner]\npaths = []\n', "unknown section [scaner]"),
        ('[device]\nid = "a"\n[broker]\nport = "1883"\n', "[broker] port must be of type int, not '1883'"),
        ("[device]\n", "[device] id '' must be set"),
            ('[device]\nid = "' + 'a' * 65 + '"\n', "must be set: 1 to 64"),
        ('[device]\nid = "shop 1"\n', "[device] id 'shop 1' must be set: 1 to 64 ASCII letters"),
        ('[device]\nid = "a"\n[uplink]\nmax_in_flight = 0\n', "must be at least 1"),
        ("[device\n", "agent.toml"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text))
    assert message in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
