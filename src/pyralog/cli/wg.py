"""``pyralog-wg``: a userspace WireGuard interface, a drop-in for ``wireguard-go``.

    pyralog-wg [-f|--foreground] INTERFACE

Creates the TUN interface, serves UAPI on /var/run/wireguard/INTERFACE.sock (so ``wg``
and ``wg-quick`` manage it), and detaches once the interface is up unless ``-f`` is given
or WG_PROCESS_FOREGROUND=1. LOG_LEVEL=debug|verbose|info|error|silent sets verbosity, as
for wireguard-go; in the background, logs are kept (on stderr) only when LOG_LEVEL is set.
PYRALOG_FORCE_UNDER_LOAD=1 makes the interface answer every handshake with a cookie reply
first, as it does under a handshake flood (for tests and for operators under attack).
PYRALOG_WG_TXQUEUELEN=N sets the interface's kernel transmit queue to N packets instead
of TX_QUEUE_PACKETS (for benchmarks, and for operators who want another trade-off).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from pyralog import __version__

DEFAULT_MTU = 1420
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # Runtime's handlers
TX_QUEUE_PACKETS = 500
TX_QUEUE_VARIABLE = "PYRALOG_WG_TXQUEUELEN"
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "verbose": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "silent": None,
}


class StartupError(Exception):
    """Why the interface could not come up; printed as one line, no traceback."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyralog-wg",
        description="Userspace WireGuard interface (drop-in for wireguard-go).",
        epilog="Environment: WG_PROCESS_FOREGROUND=1 stays in the foreground; "
        "LOG_LEVEL=debug|verbose|info|error|silent; "
        f"{TX_QUEUE_VARIABLE}=N (kernel transmit queue, default {TX_QUEUE_PACKETS} packets).",
    )
    parser.add_argument("-f", "--foreground", action="store_true", help="do not detach")
    parser.add_argument("--version", action="version", version=f"pyralog-wg {__version__}")
    parser.add_argument("interface", metavar="INTERFACE", help="name of the interface to create")
    return parser.parse_args(argv)


def tx_queue_packets(environ: Mapping[str, str] = os.environ) -> int:
    """The TUN interface's kernel transmit queue, in packets: TX_QUEUE_PACKETS unless
    PYRALOG_WG_TXQUEUELEN names a positive whole number."""
    value = environ.get(TX_QUEUE_VARIABLE, "").strip()
    if not value:
        return TX_QUEUE_PACKETS
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise StartupError(f"{TX_QUEUE_VARIABLE}: {value!r} is not a positive whole number")
    return int(value)


def setup_logging(level_name: str | None, name: str) -> None:
    level = LOG_LEVELS.get((level_name or "info").lower(), logging.INFO)
    root = logging.getLogger("pyralog")
    root.handlers.clear()
    if level is None:
        root.addHandler(logging.NullHandler())
        root.propagate = False
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s pyralog-wg({name}) %(levelname)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def build_runtime(name: str):  # -> Runtime (imported lazily: it needs pyroute2 and root)
    from pyralog.link import Link
    from pyralog.link.transform import from_names
    from pyralog.tunnel.linkwatch import LinkWatch
    from pyralog.tunnel.runtime import Runtime
    from pyralog.tunnel.tun import TunError, TunInterface, validate_interface_name
    from pyralog.tunnel.uapi_server import UapiListener
    from pyralog.udp import UdpTransport
    from pyralog.wireguard.device import Device

    try:
        validate_interface_name(name)
    except ValueError as e:
        raise StartupError(str(e)) from None
    try:
        # Test and benchmark knob: datagram transforms by name, nearest the Device first.
        transforms = from_names(os.environ.get("PYRALOG_TRANSFORMS", ""))
    except ValueError as e:
        raise StartupError(f"PYRALOG_TRANSFORMS: {e}") from None
    tx_queue = tx_queue_packets()
    try:
        tun = TunInterface(name)
    except TunError as e:
        raise StartupError(e.strerror or str(e)) from None
    closers = [tun.close]
    try:
        links = LinkWatch(tun.name)
        closers.append(links.close)
        if links.mtu != DEFAULT_MTU:
            links.set_mtu(DEFAULT_MTU)
        # Linux's default queue, as wireguard-go keeps. A shorter one (64, until 2026-12)
        # cut ping p50 under a bulk TCP stream but dropped 11% of those pings and much of
        # each ~1 MB write (a replication fetch): TCP retransmitted, and a replicated
        # cluster produced 2-3x slower. At 500, 1.4% of pings were lost and p50 was 2x
        # wireguard-go's (docs/BENCHMARKS.md, "TUN queue length"). PYRALOG_WG_TXQUEUELEN
        # overrides.
        links.set_txqueuelen(tx_queue)
        udp = UdpTransport(0)
        closers.append(udp.close)
        try:
            uapi = UapiListener(tun.name)
        except OSError as e:
            raise StartupError(f"cannot create the UAPI socket: {e}") from None
        device = Device(clock_offset=time.time() - time.monotonic())
        # Test and operations knob: demand cookies from every initiator, as under load.
        device.force_under_load = os.environ.get("PYRALOG_FORCE_UNDER_LOAD") == "1"
        return Runtime(Link(device, udp, transforms), tun, uapi, links)
    except StartupError:
        for close in reversed(closers):
            close()
        raise
    except OSError as e:
        for close in reversed(closers):
            close()
        raise StartupError(f"cannot set up {name!r}: {e}") from None


def _detach_stdio(keep_logs: bool) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if not keep_logs:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.interface
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    level_name = os.environ.get("LOG_LEVEL")
    # Detached without LOG_LEVEL, like wireguard-go: say nothing (start-up errors still
    # reach the caller through the parent).
    setup_logging(level_name if foreground or level_name else "silent", name)
    log = logging.getLogger("pyralog.wg")

    report_fd = -1
    if not foreground:
        # The parent waits until the child has the interface up (or failed), then exits
        # with its status, so `wg-quick` can configure the interface right after we return.
        read_fd, report_fd = os.pipe()
        pid = os.fork()
        if pid:
            os.close(report_fd)
            with os.fdopen(read_fd, "rb") as pipe:
                status = pipe.read().decode(errors="replace")
            if status == "ok":
                return 0
            os.waitpid(pid, 0)
            print(f"pyralog-wg: {status or 'the daemon exited during start-up'}", file=sys.stderr)
            return 1
        os.close(read_fd)
        os.setsid()

    # A stop signal while the interface and its UAPI socket are being made is held until
    # the handlers that clean them up are in place (then it stops the daemon at once):
    # by default it would kill us and leave the socket file behind.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        runtime = build_runtime(name)
    except StartupError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if report_fd >= 0:
            os.write(report_fd, str(e).encode())
            os._exit(1)
        print(f"pyralog-wg: {e}", file=sys.stderr)
        return 1

    runtime.install_signal_handlers()
    signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held till now stops it
    log.info("interface %s is up; UAPI socket %s", runtime.tun.name, runtime.uapi.path)
    if report_fd >= 0:
        keep_logs = bool(level_name) and level_name.lower() != "silent"
        _detach_stdio(keep_logs)
        os.write(report_fd, b"ok")
        os.close(report_fd)
    try:
        reason = runtime.run()
        log.info("shutting down: %s", reason)
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
