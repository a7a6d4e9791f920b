"""Two builds of one tree, compared: the disk, its kernel and its initrd byte for byte, and where the
disk differs, which partition, and in the root which files.

    differences(build(), rebuild(path))   # [] when the two are the same; else one line per difference

build.json is not compared: it says when each build ran and how long it took.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .build import Image, _run, partition

ARTEFACTS = ("counterbox.img", "vmlinuz", "initrd.img")
PARTITIONS = ("esp", "counterbox-root", "counterbox-data")
LISTED = 20  # differing files named at the most


def digest(path: Path, offset: int = 0, size: int | None = None) -> str:
    """sha256 of ``size`` bytes of ``path`` from ``offset`` (the rest of the file without a size)."""
    sha = hashlib.sha256()
    with path.open("rb") as source:
        source.seek(offset)
        left = size if size is not None else os.fstat(source.fileno()).st_size - offset
        while left > 0:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                break
            sha.update(chunk)
            left -= len(chunk)
    return sha.hexdigest()


def differences(a: Image, b: Image) -> list[str]:
    """What differs between two builds, a line each: an artefact, then a partition, then root files."""
    found = []
    for name in ARTEFACTS:
        first, second = digest(a.directory / name), digest(b.directory / name)
        if first != second:
            found.append(f"{name}: sha256 {first[:16]} against {second[:16]}")
    if any(line.startswith("counterbox.img") for line in found):
        found += _partitions(a.disk, b.disk)
    return found


def _partitions(first: Path, second: Path) -> list[str]:
    found = []
    for name in PARTITIONS:
        if digest(first, *partition(first, name)) != digest(second, *partition(second, name)):
            found.append(f"partition {name} differs")
            if name == "counterbox-root":
                found += _root_files(first, second)
    return found


def _root_files(first: Path, second: Path) -> list[str]:
    """The root's files that differ in content, type, mode or owner; or that only the metadata of the
    filesystem (times, placement) differs."""
    with tempfile.TemporaryDirectory() as scratch:
        trees = []
        for index, disk in enumerate((first, second)):
            tree = Path(scratch) / str(index)
            tree.mkdir()
            offset, _ = partition(disk, "counterbox-root")
            _run(["debugfs", "-R", f"rdump / {tree}", f"{disk}?offset={offset}"], f"reading the root of {disk}")
            trees.append(_listing(tree))
        names = sorted(set(trees[0]) | set(trees[1]))
        changed = [f"  {name}" for name in names if trees[0].get(name) != trees[1].get(name)]
    if not changed:
        return ["  every file is the same: the filesystem's own metadata differs (inode times, block placement)"]
    more = [f"  and {len(changed) - LISTED} more"] if len(changed) > LISTED else []
    return changed[:LISTED] + more


def _listing(tree: Path) -> dict[str, tuple]:
    listing = {}
    for directory, names, files in os.walk(tree):
        for name in names + files:
            path = Path(directory) / name
            stat = path.lstat()
            if path.is_symlink():
                what = os.readlink(path)
            elif path.is_file():
                what = digest(path)
            else:
                what = ""
            listing[str(path.relative_to(tree))] = (stat.st_mode, stat.st_uid, stat.st_gid, what)
    return listing
