"""``pyralog mirror``: copy topics from one cluster to another (see pyralog.log.mirror).

    pyralog mirror --source 10.1.0.5:9092 --target 10.2.0.5:9092 --topic orders \\
                   --source-id dc1 --target-tunnel dc2.conf

``--source-tunnel`` and ``--target-tunnel`` take a wg-quick style file (what
``pyralog-admin client add`` writes) and run that side's connections over WireGuard
inside this process (embedded mode: no root, no TUN).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from pyralog.cli.stopping import stop_event

if TYPE_CHECKING:
    from pyralog.wireguard.config import Config


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mirror",
        help="copy topics from one cluster to another, resumable after any crash",
        description="Copy topics from a source broker to a target broker, partition p to "
        "partition p, with keys, values, headers and timestamps. Where to resume is read "
        "back from the target (each copied record has a pyralog-mirror header naming its "
        "source offset), so the mirror may be killed and restarted at any time.",
    )
    p.add_argument("--source", required=True, metavar="HOST:PORT", help="a source broker")
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="a target broker")
    p.add_argument(
        "--topic", required=True, action="append", metavar="NAME", help="a topic (repeatable)"
    )
    p.add_argument(
        "--source-id", help="names the source in the pyralog-mirror header (default: --source)"
    )
    p.add_argument("--source-tunnel", metavar="FILE", help="reach the source over this tunnel")
    p.add_argument("--target-tunnel", metavar="FILE", help="reach the target over this tunnel")
    p.add_argument("--once", action="store_true", help="copy what the source holds now, then exit")
    p.add_argument(
        "--allow-foreign",
        action="store_true",
        help="accept target partitions that hold records other writers put there",
    )


def _fail(message: object) -> int:
    print(f"pyralog mirror: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from pyralog.log.client import parse_address
    from pyralog.log.mirror import MirrorError
    from pyralog.wireguard.config import ConfigFileError, load

    for flag, address in (("--source", args.source), ("--target", args.target)):
        try:
            parse_address(address)
        except ValueError as e:
            return _fail(f"{flag}: {e}")
    configs: dict[str, Config] = {}
    tunnels = {"--source-tunnel": args.source_tunnel, "--target-tunnel": args.target_tunnel}
    for flag, path in tunnels.items():
        if path is None or path in configs:
            continue
        try:
            configs[path] = load(path)
        except ConfigFileError as e:
            return _fail(e)
        if not configs[path].interface.addresses:
            return _fail(f"{flag} {path}: [Interface] needs an Address")
    logging.basicConfig(
        level=logging.INFO, format="pyralog mirror: %(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        return asyncio.run(_mirror(args, configs))
    except (MirrorError, ValueError) as e:  # ValueError: the Mirror's own argument checks
        return _fail(e)
    except KeyboardInterrupt:
        return 130


async def _mirror(args: argparse.Namespace, configs: dict[str, Config]) -> int:
    from pyralog.log.mirror import Mirror
    from pyralog.net import EmbeddedNetwork

    networks: dict[str, EmbeddedNetwork] = {}
    try:
        for path, config in configs.items():
            try:
                networks[path] = await EmbeddedNetwork.start(config)
            except OSError as e:
                return _fail(f"{path}: cannot open the tunnel's UDP socket: {e.strerror or e}")
            logging.getLogger("pyralog.mirror").info(
                "tunnel %s up: %s", path, ", ".join(map(str, config.interface.addresses))
            )
        mirror = Mirror(
            args.source,
            args.target,
            args.topic,
            source_id=args.source_id,
            source_network=networks.get(args.source_tunnel),
            target_network=networks.get(args.target_tunnel),
            allow_foreign=args.allow_foreign,
        )
        caught_up = await mirror.run(once=args.once, stop=stop_event())
    finally:
        for network in networks.values():
            await network.close()
    if args.once and not caught_up:
        return _fail(f"stopped before catching up: {mirror.summary()}")
    return 0
