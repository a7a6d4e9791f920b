"""The agent's command line: what an installer sees when something is wrong, word for word."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def box(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "shop-1"\nkey_file = "device.key"\n'
                      '[storage]\npath = "journal.db"\nkey_file = "data.key"\n[scanner]\nauto = false\nhid_pos = false\n')
    return tmp_path, config


def counterbox(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "agent", "-c", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_of_a_box_with_no_journal_says_so_and_creates_nothing(box):
    directory, config = box
    result = counterbox(config, "status")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"counterbox: error: there is no journal at {directory / 'journal.db'}: "
                             "the agent has not run on this box yet\n")
    assert not (directory / "journal.db").exists() and not (directory / "data.key").exists()


def test_a_new_journal_and_its_key_are_private_to_the_service(box, tmp_path):
    directory, config = box
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    assert counterbox(config, "prices", "load", str(tmp_path / "prices.csv")).returncode == 0
    status = json.loads(counterbox(config, "status").stdout)
    assert re.fullmatch(r"[0-9a-f]{32}", status.pop("journal"))  # the id its batches name
    assert status == {"device": "shop-1", "shop": None, "last_seq": 1, "acked_seq": 0, "unacknowledged": 1,
                      "events": {"price_list": 1}}
    for name in ("data.key", "journal.db"):
        assert oct((directory / name).stat().st_mode & 0o777) == "0o600", name


def test_a_price_list_whose_file_name_is_not_utf8_is_loaded_and_can_travel(box, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning import protocol
    from storage import Journal

    directory, config = box
    name = os.fsdecode(b"prices-\xff.csv")  # Linux allows any bytes in a name
    (tmp_path / name).write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    loaded = subprocess.run([sys.executable, "-m", "agent", "-c", str(config), "prices", "load", str(tmp_path / name)],
                            cwd=ROOT, env=env, capture_output=True, timeout=60)  # bytes: it prints the name as it is
    assert loaded.returncode == 0, loaded.stderr
    journal = Journal.open(directory / "journal.db", (directory / "data.key").read_bytes(), create=False)
    try:
        [event] = journal.read_after(0)
    finally:
        journal.close()
    assert event.body["source"] == "prices-\ufffd.csv"
    protocol.encode_batch([event], device="shop-1", session=1, key=Ed25519PrivateKey.generate(), sent_at=0.0)


def new_journal(config, tmp_path):
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    assert counterbox(config, "prices", "load", str(tmp_path / "prices.csv")).returncode == 0


def test_a_wrong_data_key_is_refused_and_named(box, tmp_path):
    directory, config = box
    new_journal(config, tmp_path)
    (directory / "data.key").write_bytes(os.urandom(32))
    result = counterbox(config, "status")
    assert result.returncode == 2
    assert result.stderr == (f"counterbox: error: the data key does not open the journal {directory / 'journal.db'}: "
                             "it was created with another key. Nothing was changed; start with this journal's key "
                             "(the one it was created with, or the one it was last re-wrapped under).\n")


def test_a_lost_data_key_is_not_silently_replaced(box, tmp_path):
    directory, config = box
    new_journal(config, tmp_path)
    (directory / "data.key").unlink()
    result = counterbox(config, "status")
    assert result.returncode == 2 and "is missing but the journal exists: restore the key file" in result.stderr
    assert not (directory / "data.key").exists()


def test_run_without_central_key_says_where_to_get_it(box):
    _, config = box
    assert counterbox(config, "identity", "create").returncode == 0
    result = counterbox(config, "run")
    assert result.returncode == 2
    assert "counterbox: error: [uplink] central_key is not set: give central's public key" in result.stderr


def test_run_without_an_identity_says_how_to_make_one(box):
    _, config = box
    result = counterbox(config, "run")
    assert result.returncode == 2
    assert "does not exist (create it with 'counterbox identity create')" in result.stderr


def test_identity_is_never_overwritten(box):
    _, config = box
    first = json.loads(counterbox(config, "identity", "create").stdout)
    again = counterbox(config, "identity", "create")
    assert again.returncode == 2 and "already holds a key" in again.stderr
    assert json.loads(counterbox(config, "identity", "show").stdout) == first


def test_a_bad_price_list_loads_nothing(box):
    directory, config = box
    (directory / "prices.csv").write_text("barcode,name,price\n96385074,Gum,1.50\n96385075,Bad,2\n")
    result = counterbox(config, "prices", "load", str(directory / "prices.csv"))
    assert result.returncode == 2
    assert result.stderr == f"counterbox: error: {directory / 'prices.csv'}: line 3: barcode '96385075' fails its check digit\n"
    assert not (directory / "journal.db").exists()  # nothing loaded, nothing created


def test_a_misspelt_configuration_key_is_named(box):
    directory, config = box
    config.write_text(config.read_text() + "[uplink]\nack_timout = 3\n")
    result = counterbox(config, "status")
    assert result.returncode == 2
    assert f"counterbox: error: {config}: unknown key [uplink] ack_timout; known keys:" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["show", "99999999999999999999"], "argument seq: 99999999999999999999 is not a number from 0 to 2^63 - 1"),
    (["show", "--last", "0"], "argument --last: 0 is not a number from 1 to 2^63 - 1"),
    (["show", "--last", "-3"], "argument --last: -3 is not a number from 1 to 2^63 - 1"),
    (["show", "--last", "ten"], "argument --last: 'ten' is not a whole number"),
    (["report", "sales", "--week", "9999-12-31"], "argument --week: '9999-12-31' is not a day of the years 1970 to 9998"),
    (["report", "sales", "--day", "0001-01-01"], "argument --day: '0001-01-01' is not a day of the years 1970 to 9998"),
    (["show", "\u0661"], "argument seq: '\u0661' is not a whole number"),  # an Arabic-Indic one was seq 1
    # The stock, counts and receipts are as of now: a day asked of them was ignored, and today's printed as its.
    (["report", "stock", "--day", "2026-01-01"], "--day and --week are for the sales report; the stock report is as of now"),
    (["report", "receipts", "--week", "2026-01-01"], "the receipts report is as of now"),
])
def test_a_number_or_day_out_of_range_is_named_on_the_command_line(box, tmp_path, args, message):
    _, config = box
    new_journal(config, tmp_path)
    result = counterbox(config, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("command, content, message", [
    (["prices", "load"], b"barcode,name,price\n6901028075831,Hongtashan \xb0\xfc,23.00\n", "the file is not UTF-8 text"),
    (["prices", "load"], b"barcode,price,barcode\n6901028075831,23.00,x\n", "the header names a column twice: "
                                                                             "barcode,price,barcode"),
    # A quote never closed took the rest of the file as one field, and was named at the header's line.
    (["prices", "load"], b"barcode,name,price\n6901028075831,Hongtashan,23.00\n\"6901028075848,Carton,230.00\n",
     "line 3: unexpected end of data"),
    (["order", "load", "--id", "w48"], b"barcode,name,quantity\n6901028075831,\xff,2\n", "the file is not UTF-8 text"),
    (["order", "load", "--id", "w48"], b"barcode,quantity,quantity\n6901028075831,2,3\n",
     "the header names a column twice"),
])
def test_a_file_that_is_not_utf8_or_names_a_column_twice_loads_nothing(box, tmp_path, command, content, message):
    directory, config = box
    (tmp_path / "file.csv").write_bytes(content)
    result = counterbox(config, *command, str(tmp_path / "file.csv"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (directory / "journal.db").exists()


def test_a_configuration_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_bytes(b'[device]\nid = "shop-\xff"\n')
    result = counterbox(config, "status")
    assert result.returncode == 2 and f"{config} is not UTF-8 text" in result.stderr, result.stderr


@pytest.mark.parametrize("load, header", [("prices", "barcode,name,price"), ("orders", "barcode,name,quantity")])
@pytest.mark.parametrize("bad_name, message", [
    ("x" * 200_000, "line 2: field larger than field limit"),
    ('"' + "x" * 200_000 + '"', "line 2: field larger than field limit"),
    ("Hong\x00tashan", "line 2: the name holds a control character\n"),
    ("Hong\x1b[2Jtashan", "line 2: the name holds a control character\n"),
], ids=["long", "long-quoted", "nul", "escape"])
# (A column the loader does not read, a spreadsheet's notes, may hold a line break: tested in test_counter.)
def test_a_csv_line_the_box_cannot_take_is_named_and_nothing_is_made(box, tmp_path, load, header, bad_name, message):
    """Not a traceback; and on a box with no journal yet, no journal or key is made for a file refused."""
    directory, config = box
    value = "2" if load == "orders" else "23.00"
    (tmp_path / "in.csv").write_text(f"{header}\n6901028075831,{bad_name},{value}\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["prices", "load", str(tmp_path / "in.csv")] if load == "prices" else \
        ["order", "load", "--id", "w48", str(tmp_path / "in.csv")]
    result = counterbox(config, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_sales_report_of_today_is_of_the_shops_day_in_the_time_zone_operations_pushed(box):
    """The file's zone is 26 hours behind the one pushed: whatever the hour, their dates differ."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from storage import Journal

    directory, config = box
    config.write_text(config.read_text() + '[counter]\ntimezone = "Etc/GMT+12"\n')
    key = os.urandom(32)
    (directory / "data.key").write_bytes(key)
    os.chmod(directory / "data.key", 0o600)
    journal = Journal.open(directory / "journal.db", key)
    journal.append("settings", {"name": "settings", "version": 1, "counter": {"timezone": "Etc/GMT-14"}})
    today = datetime.now(ZoneInfo("Etc/GMT-14")).date().isoformat()
    journal.append("sale", {"code": "6901028075831", "product": "06901028075831", "day": today, "quantity": 1,
                            "packs": 1, "unit_price": 2300, "known": True})
    journal.close()
    result = counterbox(config, "report", "sales", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["days"] == [today] and report["total"]["amount"] == 2300


def test_a_daemon_task_that_fails_with_a_known_error_ends_the_agent_with_that_error_named(box, monkeypatch, capsys):
    """The daemon's tasks run in a TaskGroup: what ends it comes out as an ExceptionGroup, which once
    reached the operator as a traceback. (The failure is made here: which task fails is not the point.)"""
    import asyncio

    from agent import cli
    from storage import JournalError

    async def failing(config):
        async def task():
            raise JournalError("journal.db: disk I/O error")

        async with asyncio.TaskGroup() as group:
            group.create_task(task())

    monkeypatch.setattr(cli.daemon, "run", failing)
    monkeypatch.setattr(cli, "_fewer_malloc_arenas", lambda: None)
    directory, config = box
    assert cli.main(["-c", str(config), "run"]) == 2
    assert capsys.readouterr().err == "counterbox: error: journal.db: disk I/O error\n"


def test_a_second_agent_on_the_same_journal_stops_at_once_naming_the_first_and_touching_nothing(box):
    """Two agents on one journal would both reach for the scanners, take the same client id from each
    other at the broker, and each keep the counter's state apart from the other."""
    from storage import agent_lock

    directory, config = box
    with agent_lock(directory / "journal.db"):  # the first agent's, taken as the agent takes it
        result = counterbox(config, "run")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"counterbox: error: another agent is running on {directory / 'journal.db'} "
                             f"(pid {os.getpid()}): one agent per journal; stop it first (systemctl stop counterbox-agent)\n")
    assert sorted(path.name for path in directory.iterdir()) == ["agent.toml", "journal.db.lock"]


@pytest.mark.parametrize("link", ["directory", "file"])
def test_two_paths_to_one_journal_are_one_agent_lock(tmp_path, link):
    """A journal reached through a link (to its directory, or to the file) once got a lock of its own
    beside the link, and two agents ran on one journal."""
    from storage import JournalInUse, agent_lock

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "journal.db").touch()
    if link == "directory":
        (tmp_path / "link").symlink_to(tmp_path / "data")
        other = tmp_path / "link" / "journal.db"
    else:
        other = tmp_path / "journal-link.db"
        other.symlink_to(tmp_path / "data" / "journal.db")
    with agent_lock(tmp_path / "data" / "journal.db"):
        with pytest.raises(JournalInUse):
            with agent_lock(other):
                pass
    with agent_lock(other):  # one agent through the link: it holds its lock once, whatever the link leads to
        for path in (other, tmp_path / "data" / "journal.db"):
            with pytest.raises(JournalInUse):
                with agent_lock(path):
                    pass
        # An erase removes the link with the journal, and the agent's next life makes a journal of its own
        # there: still one lock (once, a second agent on the link path took a lock of its own).
        other.unlink()
        other.touch()
        for path in (other, tmp_path / "data" / "journal.db"):
            with pytest.raises(JournalInUse):
                with agent_lock(path):
                    pass


def test_the_agent_lock_goes_with_its_process_however_it_ends(tmp_path):
    """A box that lost power (or an agent killed) leaves the lock file, never the lock."""
    import signal

    from storage import JournalInUse, agent_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from storage import agent_lock\nwith agent_lock(Path(sys.argv[1])):\n"
                               "    print('held', flush=True)\n    time.sleep(60)\n", str(tmp_path / "journal.db")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(JournalInUse, match=f"another agent is running on .*journal.db \\(pid {holder.pid}\\)"):
            with agent_lock(tmp_path / "journal.db"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with agent_lock(tmp_path / "journal.db"):
        assert (tmp_path / "journal.db.lock").read_text() == f"{os.getpid()}\n"
    with agent_lock(tmp_path / "journal.db"):  # and again: released when the block ends
        pass


def test_status_of_a_box_whose_journal_file_is_empty_says_there_is_none_and_writes_nothing(box):
    """An empty journal.db: the agent making it this moment, or a first start cut short before SQLite wrote."""
    directory, config = box
    key = os.urandom(32)
    (directory / "data.key").write_bytes(key)
    os.chmod(directory / "data.key", 0o600)
    (directory / "journal.db").touch()
    result = counterbox(config, "status")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"counterbox: error: there is no journal at {directory / 'journal.db'} yet: its file is "
                             "empty (the agent has not run on this box, or is making it now)\n")
    assert (directory / "journal.db").stat().st_size == 0
    assert sorted(p.name for p in directory.iterdir()) == ["agent.toml", "data.key", "journal.db"]


def test_events_shown_into_a_command_that_stops_reading_end_without_an_error(box, tmp_path):
    """`counterbox show --last 1000 | head -1` said "error: [Errno 32] Broken pipe" and exited 2."""
    import signal

    directory, config = box
    def ean13(body: str) -> str:
        return body + str(-sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10)

    rows = "".join(f"{ean13(f'69{n:010d}')},Product {n},23.00\n" for n in range(2000))  # an event past a pipe's 64 KiB
    (tmp_path / "prices.csv").write_text("barcode,name,price\n" + rows)
    loaded = counterbox(config, "prices", "load", str(tmp_path / "prices.csv"))
    assert loaded.returncode == 0, loaded.stderr
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    show = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(config), "show", "--last", "5"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    show.stdout.read(10)
    show.stdout.close()  # as `head -c 10` does
    _, stderr = show.communicate(timeout=60)
    assert (show.returncode, stderr) == (128 + signal.SIGPIPE, b"")
