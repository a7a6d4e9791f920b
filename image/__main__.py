"""``python -m image``: build the box's disk image, configure it for a fleet, or boot it under QEMU.

    image/build [--config agent.toml] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .build import ImageError, build, configure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image/build", description="Build the counterbox disk image.")
    parser.add_argument("--config", type=Path, help="the fleet's agent.toml, written to /etc/counterbox/agent.toml")
    parser.add_argument("--out", type=Path, default=Path("build/image"),
                        help="where the disk, its kernel and initrd go (default build/image)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
