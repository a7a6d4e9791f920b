"""The agent's configuration: documented defaults, and clear errors for what is wrong."""

from pathlib import Path

import pytest

import dataclasses

from agent.config import OPTIONAL_PATHS, PATH_LISTS, SECTIONS, ConfigError, load


def write(tmp_path, text):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_an_empty_file_is_a_box_that_waits_for_activation_with_every_default(tmp_path):
    config = load(write(tmp_path, ""))
    assert (config.device.id, config.device.shop, config.operations.keys) == ("", "", {})
    config = load(write(tmp_path, '[device]\nid = "shop-1"\n'))
    assert config.device.id == "shop-1"
    assert config.storage.path == Path("/var/lib/counterbox/journal.db")
    assert (config.broker.host, config.broker.port) == ("127.0.0.1", 1883)
    assert (config.uplink.batch_max_events, config.uplink.ack_timeout) == (500, 10.0)


def test_relative_paths_are_taken_from_the_file_directory(tmp_path):
    config = load(write(tmp_path, '[device]\nid = "a"\n[storage]\npath = "data/journal.db"\n'))
    assert config.storage.path == tmp_path.resolve() / "data/journal.db"


def _path_keys():
    """Every key whose value is a path: by its default's type, and the keys that list paths."""
    keys = [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if isinstance(f.default, Path)]
    return keys + sorted(PATH_LISTS) + sorted(OPTIONAL_PATHS)


@pytest.mark.parametrize("section,key", _path_keys(), ids=lambda v: str(v))
def test_every_path_key_is_taken_from_the_file_directory_when_relative(tmp_path, monkeypatch, section, key):
    directory = tmp_path / "etc"
    directory.mkdir()
    monkeypatch.chdir(tmp_path)  # not the working directory
    value = '["dev/scanner.fifo"]' if (section, key) in PATH_LISTS else '"dev/scanner.fifo"'
    extra = f"\n[{section}]\n{key} = {value}\n" if section != "device" else f'{key} = {value}\n'
    config = load(write(directory, '[device]\nid = "a"\n' + extra))
    got = getattr(getattr(config, section), key)
    expected = directory.resolve() / "dev/scanner.fifo"
    assert (tuple(map(Path, got)) if isinstance(got, tuple) else got) == ((expected,) if isinstance(got, tuple) else expected)


def test_a_device_match_that_is_a_path_is_taken_from_the_file_directory(tmp_path):
    config = load(write(tmp_path, '[device]\nid = "a"\n[[scanner.device]]\nmatch = "./scanner.fifo"\nlayout = "de"\n'
                                  '[[scanner.device]]\nmatch = "Honeywell*"\nlayout = "fr"\n'))
    fifo = str(tmp_path.resolve() / "scanner.fifo")
    assert config.scanner.settings_for(fifo).layout == "de"
    assert config.scanner.settings_for("/dev/input/event3", name="Honeywell 1900").layout == "fr"
    assert [d.match for d in config.scanner.devices] == [fifo, "Honeywell*"]


@pytest.mark.parametrize("section,key", _path_keys(), ids=lambda v: str(v))
def test_every_path_key_refuses_an_empty_path(tmp_path, section, key):
    """Taken from the file's directory, "" was that directory: a journal there, a CA file there, said nothing."""
    value = '["a.fifo", " "]' if (section, key) in PATH_LISTS else '""'
    extra = f"\n[{section}]\n{key} = {value}\n" if section != "device" else f'{key} = {value}\n'
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key} (is empty: give a path|holds an empty path)"):
        load(write(tmp_path, '[device]\nid = "a"\n' + extra))


def test_a_journal_path_that_is_a_directory_is_named_as_such_on_a_box_with_no_key_yet(tmp_path):
    """It was said to be a journal whose data key is missing: "restore the key file", on a box that never had one."""
    from agent.daemon import data_key
    from storage import JournalError

    config = load(write(tmp_path, '[device]\nid = "a"\n[storage]\npath = "data"\nkey_file = "data.key"\n'))
    (tmp_path / "data").mkdir()
    with pytest.raises(JournalError, match="is not a file .*check \\[storage\\] path"):
        data_key(config.storage, create=True)
    assert not (tmp_path / "data.key").exists()


def test_path_keys_are_exactly_those_documented_as_paths():
    assert ("storage", "path") in _path_keys() and ("scanner", "paths") in _path_keys()
    assert ("device", "key_file") in _path_keys() and ("scanner", "dev_input") in _path_keys()


def test_an_integer_is_accepted_where_seconds_are_expected(tmp_path):
    assert load(write(tmp_path, '[device]\nid = "a"\n[uplink]\nack_timeout = 3\n')).uplink.ack_timeout == 3.0


@pytest.mark.parametrize(
    "text,message",
    [
        ('[device]\nid = "a"\n[uplink]\nbatch_max_event = 5\n', "unknown key [uplink] batch_max_event; known keys:"),
        ('[device]\nid = "a"\n[scaner]\npaths = []\n', "unknown section [scaner]"),
        ('[device]\nid = "a"\n[broker]\nport = "1883"\n', "[broker] port must be of type int, not '1883'"),
        ('[device]\nshop = "lab"\n', "[device] shop is for a box registered by hand, which needs its id set too"),
        ('[device]\nid = "' + 'a' * 65 + '"\n', "must be 1 to 64"),
        ('[device]\nid = "shop 1"\n', "[device] id 'shop 1' must be 1 to 64 ASCII letters"),
        ('[device]\nregion = "red river"\n', "[device] region 'red river' must be 1 to 64"),
        ('[operations.keys]\nk1 = "short"\n', "[operations] keys.k1: 'short' is not an Ed25519 public key"),
        ('[operations.keys]\nk1 = 5\n', "[operations] keys.k1 must be a public key"),
        ('[device]\nid = "a"\n[uplink]\nmax_in_flight = 0\n', "[uplink] batch_max_events must be 1 to 10000 and "
                                                            "max_in_flight 1 to 64"),
        # Numbers TOML takes at any size, and intervals a box would report in a tight loop at.
        ("[uplink]\nbatch_max_events = 99999999999999999999\n", "[uplink] batch_max_events must be 1 to 10000"),
        ("[uplink]\nmax_in_flight = 65\n", "max_in_flight 1 to 64"),
        ("[uplink]\nstatus_interval = 1e-6\n", "[uplink] status_interval and snapshot_interval must be at least 0.5 "
                                               "seconds (a box reporting in a tight loop floods the broker and central)"),
        ("[uplink]\nsnapshot_interval = 0.4\n", "must be at least 0.5 seconds"),
        # A NUL in a list of paths, or in a match; a USB id no kernel writes.
        ('[scanner]\npaths = ["./scan\\u0000ner.fifo"]\n', "[scanner] paths holds a NUL character"),
        ('[[scanner.device]]\nmatch = "./x\\u0000/y"\n', "[[scanner.device]] number 1: its match holds a NUL character"),
        ('[scanner]\nusb_ids = ["c2e:b61"]\n', "[scanner] usb_ids entry 'c2e:b61' is not a USB vendor:product (four hex "
                                              "digits each, as 0c2e:0b61)"),
        ('[[scanner.device]]\nmatch = "0c2e:0b6"\n', "[[scanner.device]] number 1 match '0c2e:0b6' is not a USB"),
        ("[device\n", "agent.toml"),
        ("device = 5\n", "device must be a table ([device]), not 5"),
        ("[storage]\nretention_days = nan\n", "[storage] retention_days must be a finite number, not nan"),
        ("[counter]\nmode_timeout = inf\n", "[counter] mode_timeout must be a finite number, not inf"),
        ("[uplink]\nstatus_interval = nan\n", "[uplink] status_interval must be a finite number, not nan"),
        ("[scanner.decoder]\nidle_timeout = nan\n", "[scanner.decoder] idle_timeout must be a finite number, not nan"),
        ("[scanner.decoder]\nmax_key_interval = -1\n",
         "[scanner.decoder] idle_timeout and max_key_interval must be more than 0"),
        ("[scanner]\nrescan_interval = 0\n", "[scanner] rescan_interval and retry_interval must be more than 0"),
        ("[broker]\nport = 70000\n", "[broker] port 70000 must be from 1 to 65535"),
        ('[broker]\nhost = ""\n', "[broker] host '' must be a host name or address"),
        ('[broker]\nhost = "broker .lan"\n', "[broker] host 'broker .lan' must be a host name or address"),
        ("[broker]\nkeepalive = -1\n", "[broker] keepalive -1 must be from 0 to 65535 seconds"),
        ("[broker]\nreconnect_max = 0\n", "[broker] reconnect_max must be more than 0 seconds"),
        ("[uplink]\nack_timeout = 0\n", "ack_timeout more than 0 seconds"),
        ('[uplink]\ncentral_key = "abc"\n', "[uplink] central_key: 'abc' is not an Ed25519 public key"),
        ('[pricing]\ncurrency = "not money!"\n', "[pricing] currency 'not money!' must be an ISO 4217 code, like CNY"),
        ('[pricing]\ncurrency = "cny"\n', "[pricing] currency 'cny' must be an ISO 4217 code"),
        ('[storage]\npath = "journal\\u0000.db"\n', "[storage] path holds a NUL character"),
        # A switch is no number (TOML's true is Python's 1), nor a number a switch.
        ("[broker]\nport = true\n", "[broker] port must be of type int, not True"),
        ("[storage]\nretention_days = true\n", "[storage] retention_days must be of type float, not True"),
        ("[uplink]\nack_timeout = true\n", "[uplink] ack_timeout must be of type float, not True"),
        ("[scanner]\nauto = 1\n", "[scanner] auto must be of type bool, not 1"),
        # The shapes of the scanner's tables and lists.
        ('[scanner.device]\nmatch = "/dev/input/event3"\n',
         "[scanner] device must be an array of tables, each written [[scanner.device]] (two brackets)"),
        ("[scanner]\ndevice = [1]\n", "[scanner] device must be an array of tables"),
        ("[scanner]\ndecoder = 5\n", "[scanner] decoder must be a table ([scanner.decoder]), not 5"),
        ("[scanner.decoder]\nterminators = [[1]]\n", "[scanner.decoder] terminators must be a list of strings, not [[1]]"),
        ("[scanner]\nusb_ids = [1234]\n", "[scanner] usb_ids must be a list of strings, not [1234]"),
        ("[scanner]\npaths = [3]\n", "[scanner] paths must be a list of paths, not [3]"),
        # A prefix no topic can start with: wildcards, empty levels, the broker's own $ topics, control characters.
        ('[uplink]\ntopic_prefix = "counterbox/+/v1"\n', "[uplink] topic_prefix 'counterbox/+/v1' must be MQTT topic levels"),
        ('[uplink]\ntopic_prefix = "counterbox/#"\n', "[uplink] topic_prefix 'counterbox/#' must be"),
        ('[uplink]\ntopic_prefix = "counterbox//v1"\n', "[uplink] topic_prefix 'counterbox//v1' must be"),
        ('[uplink]\ntopic_prefix = "counterbox/"\n', "[uplink] topic_prefix 'counterbox/' must be"),
        ('[uplink]\ntopic_prefix = ""\n', "[uplink] topic_prefix '' must be"),
        ('[uplink]\ntopic_prefix = "$SYS/counterbox"\n', "[uplink] topic_prefix '$SYS/counterbox' must be"),
        ('[uplink]\ntopic_prefix = "counter\\u0007box"\n', "[uplink] topic_prefix 'counter\\x07box' must be"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text))
    assert message in str(error.value)


def test_a_usb_id_written_in_capitals_is_the_kernels_lowercase_one(tmp_path):
    """As other systems show it ("0C2E:0B61"): loaded fine and never matched a scanner, saying nothing."""
    config = load(write(tmp_path, '[scanner]\nusb_ids = ["0C2E:0B61"]\n[[scanner.device]]\nmatch = "0C2E:0B6A"\n'
                                  'layout = "fr"\n'))
    assert config.scanner.usb_ids == ("0c2e:0b61",)
    assert config.scanner.settings_for("/dev/input/event3", "0c2e:0b6a").layout == "fr"


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_a_file_that_starts_with_a_byte_order_mark_is_read_as_without_one(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[device]\nid = "shop-1"\n')
    assert load(path).device.id == "shop-1"


def test_a_topic_prefix_of_several_levels_is_taken():
    from provisioning.protocol import is_topic_prefix

    assert all(map(is_topic_prefix, ["counterbox/v1", "yunnan/counterbox/v2", "cb", "a b/c"]))
