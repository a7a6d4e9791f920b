"""Many boxes in one process, for the fleet test: each runs the agent's own daemon (``daemon.run``) on
its own configuration, as ``counterbox run`` would, sharing one event loop.

    python -m tests.fleet BOX1/agent.toml BOX2/agent.toml ...
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from agent import daemon
from agent.config import load


async def main(paths: list[str]) -> None:
    await asyncio.gather(*(daemon.run(load(Path(path))) for path in paths))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(sys.argv[1:]))
