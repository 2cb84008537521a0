"""``pyralog forward``: reach services across a WireGuard tunnel without root or TUN.

    pyralog forward --config wg0.conf 8080:10.0.0.1:80 5353:10.0.0.1:53/udp \\
                    --reverse 2222:127.0.0.1:22

WireGuard and TCP/IP both run inside this process (embedded mode); only an ordinary UDP
socket touches the kernel, so no privileges are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pyralog.cli.stopping import stop_event
from pyralog.wireguard.config import ConfigFileError, load


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "forward",
        help="forward ports across a WireGuard tunnel, in-process, without root",
        description="Forward local ports to addresses across a WireGuard tunnel (and tunnel "
        "ports to local services with --reverse), running WireGuard and TCP/IP in-process.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="wg-quick style config file")
    p.add_argument(
        "forwards",
        nargs="*",
        metavar="[LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT[/udp]",
        help="forward a local port to an address across the tunnel (default host 127.0.0.1)",
    )
    p.add_argument(
        "--reverse",
        action="append",
        default=[],
        metavar="TUNNEL_PORT:LOCAL_HOST:LOCAL_PORT[/udp]",
        help="expose a local service on the tunnel address (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and handshakes")


def run(args: argparse.Namespace) -> int:
    from pyralog.net.forward import SpecError, parse_forward, parse_reverse

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s pyralog forward %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load(args.config)
        forwards = [parse_forward(s) for s in args.forwards]
        reverses = [parse_reverse(s) for s in args.reverse]
    except (ConfigFileError, SpecError) as e:
        print(f"pyralog forward: {e}", file=sys.stderr)
        return 2
    if not forwards and not reverses:
        print(
            "pyralog forward: nothing to forward: give a forward spec or --reverse", file=sys.stderr
        )
        return 2
    if not config.interface.addresses:
        print(f"pyralog forward: {config.path}: [Interface] needs an Address", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, forwards, reverses))
    except KeyboardInterrupt:
        return 130


async def _serve(config, forwards, reverses) -> int:  # type: ignore[no-untyped-def]
    from pyralog.net.forward import Forwarder
    from pyralog.netstack.embedded import EmbeddedTunnel

    log = logging.getLogger("pyralog.forward")
    try:
        tunnel = await EmbeddedTunnel.start(config)
    except OSError as e:
        print(f"pyralog forward: cannot open the tunnel's UDP socket: {e}", file=sys.stderr)
        return 1
    forwarder = Forwarder(tunnel)
    try:
        for fwd in forwards:
            await forwarder.add_forward(fwd)
            log.info("forwarding %s", fwd)
        for rev in reverses:
            await forwarder.add_reverse(rev)
            log.info(
                "tunnel port %d%s -> %s:%d",
                rev.listen_port,
                "/udp" if rev.udp else "",
                rev.target_host,
                rev.target_port,
            )
    except OSError as e:
        print(f"pyralog forward: {e}", file=sys.stderr)
        await forwarder.close()
        await tunnel.close()
        return 1
    log.info(
        "tunnel up: WireGuard on UDP port %d, address %s",
        tunnel.listen_port,
        ", ".join(str(a) for a in config.interface.addresses),
    )
    stop = stop_event()
    await stop.wait()
    log.info("shutting down")
    await forwarder.close()
    await tunnel.close()
    return 0
