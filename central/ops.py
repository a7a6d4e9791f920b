"""``counterbox-ops``: operations tooling, central's own operations for its staff. Documented in docs/commands.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from provisioning.errors import IdentityError, ProvisioningError
from provisioning.identity import parse_public_key

from .errors import CentralError
from .store import CentralStore


def _register(args) -> int:
    device, public_key = args.device, args.public_key
    if args.identity is not None:
        # What 'counterbox identity show' printed on the device: {"device": ..., "public_key": ...}.
        text = sys.stdin.read() if str(args.identity) == "-" else args.identity.read_text()
        try:
            identity = json.loads(text)
            device, public_key = identity["device"], identity["public_key"]
        except (ValueError, KeyError, TypeError):
            raise IdentityError(f"{args.identity} is not what 'counterbox identity show' prints") from None
    if not device or not public_key:
        raise IdentityError("give --identity FILE, or both --device and --public-key")
    parse_public_key(public_key)  # refuse a malformed key before it reaches the registry
    store = CentralStore(args.central_db)
    try:
        store.register(device, public_key, shop=args.shop, replace=args.replace)
    finally:
        store.close()
    print(f"device {device} registered{' for ' + args.shop if args.shop else ''}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="counterbox-ops", description="Operations tooling for counterbox devices.")
    commands = top.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a device's public key with central")
    register.add_argument("--central-db", type=Path, required=True, help="central's database")
    register.add_argument("--identity", type=Path, help="the JSON 'counterbox identity show' printed on the device ('-': stdin)")
    register.add_argument("--device", help="the device id (its [device] id), without --identity")
    # A base64url key may begin with '-': pass it as --public-key=KEY.
    register.add_argument("--public-key", help="the device's public key, as --public-key=KEY, without --identity")
    register.add_argument("--shop", default="", help="the shop the device serves")
    register.add_argument("--replace", action="store_true", help="replace the key of a device already registered")
    register.set_defaults(func=_register)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ProvisioningError, CentralError, OSError) as error:
        print(f"counterbox-ops: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
