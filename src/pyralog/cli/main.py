"""The ``pyralog`` command."""

from __future__ import annotations

import argparse
import sys

from pyralog import __version__
from pyralog.cli import forward, keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyralog",
        description="Pyralog: a distributed log whose every connection runs over WireGuard.",
    )
    parser.add_argument("--version", action="version", version=f"pyralog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("genkey", help="print a new private key (base64), like `wg genkey`")
    sub.add_parser("genpsk", help="print a new preshared key (base64), like `wg genpsk`")
    sub.add_parser(
        "pubkey", help="read a private key on stdin, print its public key, like `wg pubkey`"
    )
    forward.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "genkey":
            return keys.genkey(sys.stdout)
        if args.command == "genpsk":
            return keys.genpsk(sys.stdout)
        if args.command == "pubkey":
            return keys.pubkey(sys.stdin, sys.stdout, sys.stderr)
        if args.command == "forward":
            return forward.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
