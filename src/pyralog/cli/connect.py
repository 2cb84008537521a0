"""``pyralog connect``: stock Kafka clients reach a mesh cluster through a local gateway.

    pyralog connect --config laptop.conf [--listen 127.0.0.1:9092] [--bootstrap 10.77.0.5]
    kcat -b 127.0.0.1:9092 -L

For clients that cannot create a network interface (no root, no TUN, a container): the
WireGuard tunnel and its TCP/IP stack run in this process, as in ``pyralog forward``,
and a Kafka-protocol gateway on local ports forwards requests over it, rewriting the
broker addresses in answers to local ports (docs/CONNECT.md).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys

from pyralog.cli.stopping import stop_event
from pyralog.wireguard.config import Config, ConfigFileError, load

BROKER_PORT = 9092
DEFAULT_LISTEN = "127.0.0.1:9092"
PREFIX = "pyralog connect"


class UsageError(ValueError):
    pass


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "connect",
        help="a local Kafka gateway to a mesh cluster, over an in-process WireGuard tunnel",
        description="Run an embedded WireGuard client tunnel and a local Kafka-protocol "
        "gateway, so that stock Kafka clients reach the mesh's brokers at local ports "
        "without root or a network interface.",
    )
    p.add_argument(
        "--config", required=True, metavar="FILE",
        help="wg-quick style config (what `pyralog-admin client add` writes)",
    )  # fmt: skip
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
        help=f"the bootstrap address for Kafka clients (default {DEFAULT_LISTEN}); each "
        "broker gets the next port",
    )  # fmt: skip
    p.add_argument(
        "--bootstrap", action="append", default=[], metavar="MESH_IP[:PORT]",
        help="a broker's mesh address (repeatable; default: every peer's mesh address, "
        f"port {BROKER_PORT})",
    )  # fmt: skip
    p.add_argument(
        "--advertise-host", metavar="HOST",
        help="the host put in rewritten answers (default: the --listen host; 127.0.0.1 "
        "for a wildcard)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS",
        help="how long to wait at start for a broker to answer (default 30)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def parse_address(text: str, option: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, or (with a default port) a bare address."""
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            raise UsageError(f"{option} {text!r}: expected HOST:PORT")
        host, port = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text and default_port is None:
        raise UsageError(f"{option} {text!r}: write an IPv6 address as [ADDRESS]:PORT")
    if not port:
        if default_port is None:
            raise UsageError(f"{option} {text!r}: expected HOST:PORT")
        port = str(default_port)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise UsageError(f"{option} {text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"{option} {text!r}: {port!r} is not a port (1-65535)")
    return host, int(port)


def default_bootstrap(config: Config) -> list[tuple[str, int]]:
    """Every peer's single mesh address (a /32 or /128 allowed IP), port 9092. The
    coordinator is among them and serves no broker; it is skipped when tried."""
    found: list[tuple[str, int]] = []
    for peer in config.peers:
        for net in peer.allowed_ips:
            if net.num_addresses == 1:
                found.append((str(net.network_address), BROKER_PORT))
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"{PREFIX}: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # The tunnel's own modules log handshakes at INFO; only the gateway speaks here.
        logging.getLogger("pyralog").setLevel(logging.WARNING)
        logging.getLogger("pyralog.connect").setLevel(logging.INFO)
    try:
        listen = parse_address(args.listen, "--listen")
        bootstrap = [parse_address(b, "--bootstrap", BROKER_PORT) for b in args.bootstrap]
        if not args.timeout > 0:
            raise UsageError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
        config = load(args.config)
    except (UsageError, ConfigFileError) as e:
        print(f"{PREFIX}: {e}", file=sys.stderr)
        return 2
    if not config.interface.addresses:
        print(f"{PREFIX}: {config.path}: [Interface] needs an Address", file=sys.stderr)
        return 2
    if not bootstrap:
        bootstrap = default_bootstrap(config)
        if not bootstrap:
            print(f"{PREFIX}: {config.path}: no peer has a single mesh address to try; "
                  "give --bootstrap MESH_IP", file=sys.stderr)  # fmt: skip
            return 2
    advertise = args.advertise_host or listen[0]
    if ipaddress.ip_address(advertise).is_unspecified:
        advertise = "::1" if ":" in advertise else "127.0.0.1"
    try:
        return asyncio.run(_serve(config, listen, advertise, bootstrap, args.timeout))
    except KeyboardInterrupt:
        return 130


async def _serve(
    config: Config,
    listen: tuple[str, int],
    advertise: str,
    bootstrap: list[tuple[str, int]],
    timeout: float,
) -> int:
    from pyralog.gateway.server import Gateway, NoBroker
    from pyralog.gateway.watchdog import show
    from pyralog.net import EmbeddedNetwork

    stop = stop_event()
    try:
        tunnel = await EmbeddedNetwork.start(config)
    except OSError as e:
        print(f"{PREFIX}: cannot open the tunnel's UDP socket: {e}", file=sys.stderr)
        return 1
    gateway = Gateway(tunnel, listen, advertise, bootstrap)
    try:
        try:
            await gateway.start()
        except OSError as e:
            print(f"{PREFIX}: cannot listen on {show(listen)}: {e.strerror or e}",
                  file=sys.stderr)  # fmt: skip
            return 1
        discovery = asyncio.ensure_future(gateway.discover(timeout))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({discovery, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not discovery.done():
            discovery.cancel()
            await asyncio.gather(discovery, return_exceptions=True)
            return 0
        stopping.cancel()
        try:
            brokers = discovery.result()
        except NoBroker as e:
            print(f"{PREFIX}: {e}", file=sys.stderr)
            return 1
        tunnel_address = ", ".join(str(a.ip) for a in config.interface.addresses)
        print(
            f"{PREFIX}: ready: Kafka clients use {show(listen)} (tunnel {tunnel_address}, "
            f"{len(brokers)} brokers via {len(config.peers)} peers)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        logging.getLogger("pyralog.connect").info("stopping")
        return 0
    finally:
        await gateway.close()
        await tunnel.close()
