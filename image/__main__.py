"""``python -m image``: build the box's disk image and configure it for a fleet, or check that two
builds of this tree make the same image.

    image/build [--config agent.toml] [--out DIR]
    image/build --check-reproducible
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .build import CACHE, ImageError, build, configure, two_builds
from .compare import ARTEFACTS, differences, digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image/build", description="Build the counterbox disk image.")
    parser.add_argument("--config", type=Path, help="the fleet's agent.toml, written to /etc/counterbox/agent.toml")
    parser.add_argument("--out", type=Path, default=Path("build/image"),
                        help="where the disk, its kernel and initrd go (default build/image)")
    parser.add_argument("--check-reproducible", action="store_true",
                        help="build this tree a second time in a directory of its own and compare the disk, kernel "
                             "and initrd with the first build byte for byte (exit 1 where they differ)")
    args = parser.parse_args(argv)
    if args.check_reproducible:
        return check_reproducible()
    try:
        image = build()
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (image.disk, image.kernel, image.initrd, image.directory / "build.json"):
            shutil.copyfile(path, args.out / path.name)
        if args.config:
            configure(args.out / image.disk.name, {"/etc/counterbox/agent.toml": (args.config.read_text(), 0o640, "counterbox")})
    except (ImageError, OSError) as error:
        print(f"image/build: error: {error}", file=sys.stderr)
        return 2
    facts = image.facts
    print(f"{args.out / image.disk.name}: {facts['disk_bytes'] / 2**20:.0f} MiB "
          f"({'configured with ' + str(args.config) if args.config else 'no agent.toml yet: the agent waits for one'}); "
          f"built in {facts['seconds']} s")
    return 0


def check_reproducible() -> int:
    """The image for this tree (built now, or the one in the cache), built again, and the two compared."""
    try:
        with tempfile.TemporaryDirectory(prefix="check.", dir=CACHE) as scratch:
            first, second = two_builds(Path(scratch))
            print(f"first build: {first.directory} ({first.facts['seconds']} s), second build: "
                  f"{second.facts['seconds']} s, in a work directory of its own", flush=True)
            found = differences(first, second)
    except (ImageError, OSError) as error:
        print(f"image/build: error: {error}", file=sys.stderr)
        return 2
    if found:
        print("not reproducible: two builds of this tree differ\n" + "\n".join(found))
        return 1
    for name in ARTEFACTS:
        print(f"{digest(first.directory / name)}  {name}")
    print("reproducible: both builds made the same disk, kernel and initrd, byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
