"""What an image is built from: the stage, dated by the tree's last commit and not by its checkout.

Copies keep their source's times, which say when this checkout was made or edited. A file older than
the build's epoch keeps its time through every clamp (mkinitramfs and the root's own clamp lower only
what is newer), so two checkouts of one commit made two initrds. Building the whole image takes
minutes (tests/test_image.py builds it twice); the stage alone takes seconds.
"""

from __future__ import annotations

import os

from image.build import _source_date_epoch, _stage


def test_every_staged_file_and_directory_is_dated_by_the_trees_last_commit_whatever_the_checkouts_times(tmp_path):
    epoch = int(_source_date_epoch())
    stage = _stage(tmp_path / "stage", log=lambda line: None)
    paths = [stage, *stage.rglob("*")]
    assert any(path.match("*/initramfs-tools/conf.d/counterbox") for path in paths)
    assert any(path.suffix == ".whl" for path in paths)
    dated = {str(path.relative_to(stage)): os.lstat(path).st_mtime for path in paths}
    assert {name: mtime for name, mtime in dated.items() if mtime != epoch} == {}
