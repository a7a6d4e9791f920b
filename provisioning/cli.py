"""``counterbox-ops``: operations tooling. Documented in docs/commands.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from central.store import CentralStore, RegistryError

from .identity import IdentityError, parse_public_key


def _register(args) -> int:
    parse_public_key(args.public_key)  # refuse a malformed key before it reaches the registry
    store = CentralStore(args.central_db)
    try:
        store.register(args.device, args.public_key, shop=args.shop, replace=args.replace)
    finally:
        store.close()
    print(f"device {args.device} registered{' for ' + args.shop if args.shop else ''}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox-ops", description="Operations tooling for counterbox devices.")
    commands = top.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a device's public key with central")
    register.add_argument("--central-db", type=Path, required=True, help="central's database")
    register.add_argument("--device", required=True, help="the device id (its [device] id)")
    register.add_argument("--public-key", required=True, help="the key printed by 'counterbox identity create'")
    register.add_argument("--shop", default="", help="the shop the device serves")
    register.add_argument("--replace", action="store_true", help="replace the key of a device already registered")
    register.set_defaults(func=_register)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (IdentityError, RegistryError, OSError) as error:
        print(f"counterbox-ops: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
