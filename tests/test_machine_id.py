"""The box's machine id as its initramfs keeps it on the data partition, run by sh against a directory
standing in for that partition (the boot test runs the same script on the box itself)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "image/rootfs/etc/initramfs-tools/scripts/local-bottom/counterbox-machine-id"
# The one id every image wrote into its root before each box kept its own.
SHARED_ID = "c0b0c0b0c0b04c0b8c0bc0b0c0b0c0b0"


def kept_id(data: Path) -> str:
    done = subprocess.run(["sh", str(SCRIPT), "--in", str(data)], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_new_data_partition_gets_a_random_id_written_whole_and_kept_at_every_boot(tmp_path):
    made = kept_id(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{32}", made) and made != SHARED_ID
    assert (tmp_path / "machine-id").read_text() == made + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machine-id"]  # nothing left aside
    assert kept_id(tmp_path) == made == kept_id(tmp_path)


def test_two_boxes_get_two_ids(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert kept_id(tmp_path / "one") != kept_id(tmp_path / "two")


def test_a_data_partition_from_an_earlier_image_keeps_the_shared_id_its_credential_secret_was_made_under(tmp_path):
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/credential.secret").write_bytes(b"\0" * 4128)
    assert kept_id(tmp_path) == SHARED_ID
    assert (tmp_path / "machine-id").read_text() == SHARED_ID + "\n"
    assert kept_id(tmp_path) == SHARED_ID


def test_an_id_of_its_own_wins_over_the_upgrade_rule(tmp_path):
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/credential.secret").write_bytes(b"\0" * 4128)
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert kept_id(tmp_path) == "0123456789abcdef0123456789abcdef"


def test_what_is_no_id_is_replaced_and_a_half_written_one_is_ignored(tmp_path):
    for text in ["", "uninitialized\n", "0" * 32 + "\n", "0123456789ABCDEF0123456789ABCDEF\n", "0123456789abcdef\n"]:
        (tmp_path / "machine-id").write_text(text)
        (tmp_path / "machine-id.new").write_text("0123")  # a power cut mid-write
        made = kept_id(tmp_path)
        assert re.fullmatch(r"[0-9a-f]{32}", made) and made != "0" * 32, text
        assert (tmp_path / "machine-id").read_text() == made + "\n"
        assert not (tmp_path / "machine-id.new").exists()
