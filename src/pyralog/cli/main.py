"""The ``pyralog`` command."""

from __future__ import annotations

import argparse
import sys

from pyralog import __version__
from pyralog.cli import connect, demo, forward, keys, log, mesh, mirror, up, wgconvert


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
    keygen = sub.add_parser(
        "keygen", help="write a node's private key file (mode 0600) and print its public key"
    )
    keygen.add_argument("--output", "-o", required=True, help="the key file to create")
    keygen.add_argument("--node-id", help="the node the key is for (shown in the output)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    wgconvert.add_parsers(sub)
    forward.add_parser(sub)
    connect.add_parser(sub)
    mesh.add_parsers(sub)
    log.add_parsers(sub)
    mirror.add_parser(sub)
    up.add_parsers(sub)
    demo.add_parser(sub)
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
        if args.command == "keygen":
            return keys.keygen(args.output, args.node_id, args.force, sys.stdout, sys.stderr)
        if args.command == "wg-import":
            return wgconvert.run_import(args)
        if args.command == "wg-export":
            return wgconvert.run_export(args)
        if args.command == "forward":
            return forward.run(args)
        if args.command == "connect":
            return connect.run(args)
        if args.command == "coordinator":
            return mesh.run_coordinator(args)
        if args.command == "node":
            return mesh.run_node(args)
        if args.command in ("broker", "topic", "produce", "consume"):
            return log.run(args)
        if args.command == "mirror":
            return mirror.run(args)
        if args.command in ("up", "down", "status"):
            return up.run(args)
        if args.command == "demo":
            return demo.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
