"""Port forwarding across the mesh, for ``pyralog forward``.

Forward: a local kernel port (TCP, or UDP with ``/udp``) to an address across the tunnel.
Reverse: a port on the mesh address to a local kernel service. Written against the
``Network`` API, so it forwards over an embedded tunnel (any user, no TUN) or a kernel
interface alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyralog.net.api import Network

log = logging.getLogger("pyralog.forward")

CHUNK = 64 * 1024
UDP_IDLE_TIMEOUT = 60.0


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class Forward:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    udp: bool = False

    def __str__(self) -> str:
        proto = "/udp" if self.udp else ""
        return (
            f"{self.listen_host}:{self.listen_port} -> {self.target_host}:{self.target_port}{proto}"
        )


def _split(spec: str) -> tuple[list[str], bool]:
    udp = False
    if spec.endswith("/udp"):
        spec, udp = spec[:-4], True
    elif spec.endswith("/tcp"):
        spec = spec[:-4]
    parts: list[str] = []
    rest = spec
    while rest:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise SpecError(f"{spec!r}: unclosed '['")
            parts.append(rest[1:end])
            rest = rest[end + 1 :]
            if rest.startswith(":"):
                rest = rest[1:]
            elif rest:
                raise SpecError(f"{spec!r}: expected ':' after ']'")
        else:
            head, sep, rest = rest.partition(":")
            parts.append(head)
            if not sep:
                break
    return parts, udp


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SpecError(f"{spec!r}: {text!r} is not a port (1-65535)")
    return int(text)


def _host(text: str, spec: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if text == "localhost":
            return "127.0.0.1"
        raise SpecError(f"{spec!r}: {text!r} is not an IP address") from None


def parse_forward(spec: str) -> Forward:
    """``[LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT[/udp]``"""
    parts, udp = _split(spec)
    if len(parts) == 3:
        parts = ["127.0.0.1", *parts]
    if len(parts) != 4:
        raise SpecError(f"{spec!r}: expected [LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT")
    return Forward(
        _host(parts[0], spec),
        _port(parts[1], spec),
        _host(parts[2], spec),
        _port(parts[3], spec),
        udp,
    )


def parse_reverse(spec: str) -> Forward:
    """``TUNNEL_PORT:LOCAL_HOST:LOCAL_PORT[/udp]``: the tunnel port listens on every
    tunnel address."""
    parts, udp = _split(spec)
    if len(parts) != 3:
        raise SpecError(f"{spec!r}: expected TUNNEL_PORT:LOCAL_HOST:LOCAL_PORT")
    return Forward("", _port(parts[0], spec), _host(parts[1], spec), _port(parts[2], spec), udp)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF with backpressure, then half-close the other side."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _splice(a: Streams, b: Streams) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for _, w in (a, b):
            w.close()


class Forwarder:
    def __init__(self, network: Network) -> None:
        self.tunnel = network
        self._servers: list[Any] = []
        self._relays: list[_UdpRelay] = []
        # Connection tasks must be referenced: after a client's half-close nothing else
        # holds them, and the garbage collector would destroy a live connection.
        self._tasks: set[asyncio.Task[Any]] = set()

    def _handler(
        self, what: str, connect: Callable[[], Awaitable[Streams]]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            try:
                try:
                    other = await asyncio.wait_for(connect(), 30)
                except (TimeoutError, OSError) as e:
                    log.warning("%s: cannot connect: %s", what, e)
                    writer.transport.abort()
                    return
                await _splice((reader, writer), other)
            except asyncio.CancelledError:
                # Shutting down (close() cancels us): drop the connection quietly. Ending
                # normally instead of re-raising matters: asyncio's stream server asks a
                # finished handler task for its exception, and on a cancelled task that
                # raises, which it would log as an error.
                writer.transport.abort()

        return handle

    async def add_forward(self, fwd: Forward) -> None:
        loop = asyncio.get_running_loop()
        if fwd.udp:
            target = (fwd.target_host, fwd.target_port)

            def open_flow(reply: Callable[[bytes], None]) -> Awaitable[tuple[Any, Any]]:
                return self.tunnel.create_datagram_endpoint(
                    lambda: _Back(reply), remote_addr=target
                )

            relay = _UdpRelay(open_flow)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: relay, local_addr=(fwd.listen_host, fwd.listen_port)
            )
            self._servers.append(transport)
            self._relays.append(relay)
            return

        handle = self._handler(
            str(fwd), lambda: self.tunnel.open_connection(fwd.target_host, fwd.target_port)
        )
        server = await asyncio.start_server(handle, fwd.listen_host, fwd.listen_port)
        self._servers.append(server)

    async def add_reverse(self, fwd: Forward) -> None:
        if fwd.udp:
            loop = asyncio.get_running_loop()
            target = (fwd.target_host, fwd.target_port)

            def open_local(reply: Callable[[bytes], None]) -> Awaitable[tuple[Any, Any]]:
                return loop.create_datagram_endpoint(lambda: _Back(reply), remote_addr=target)

            relay = _UdpRelay(open_local)
            transport, _ = await self.tunnel.create_datagram_endpoint(
                lambda: relay, local_addr=("", fwd.listen_port)
            )
            self._servers.append(transport)
            self._relays.append(relay)
            return

        handle = self._handler(
            f"reverse {fwd}", lambda: asyncio.open_connection(fwd.target_host, fwd.target_port)
        )
        server = await self.tunnel.start_server(handle, port=fwd.listen_port)
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for relay in self._relays:
            relay.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class _Back(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], None]) -> None:
        self.reply = reply

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.reply(data)


OpenFlow = Callable[[Callable[[bytes], None]], Awaitable[tuple[Any, Any]]]


class _UdpRelay(asyncio.DatagramProtocol):
    """The listening side of a UDP forward. Each client address gets its own flow to the
    target (so replies find their way back), closed after UDP_IDLE_TIMEOUT of silence."""

    def __init__(self, open_flow: OpenFlow) -> None:
        self.open_flow = open_flow
        self.transport: Any = None
        self.flows: dict[tuple[str, int], Any] = {}
        self.waiting: dict[tuple[str, int], list[bytes]] = {}
        self.last_seen: dict[tuple[str, int], float] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = (addr[0], addr[1])
        self.last_seen[client] = time.monotonic()
        flow = self.flows.get(client)
        if flow is not None:
            flow.sendto(data)
        elif client in self.waiting:
            self.waiting[client].append(data)  # the flow is still opening
        else:
            self.waiting[client] = [data]
            task = asyncio.ensure_future(self._run(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, client: tuple[str, int]) -> None:
        def reply(data: bytes) -> None:
            self.last_seen[client] = time.monotonic()
            with contextlib.suppress(OSError):
                self.transport.sendto(data, client)

        try:
            flow, _ = await self.open_flow(reply)
        except OSError as e:
            log.warning("UDP flow for %s:%d failed: %s", client[0], client[1], e)
            self.waiting.pop(client, None)
            return
        self.flows[client] = flow
        for data in self.waiting.pop(client, []):
            flow.sendto(data)
        while time.monotonic() - self.last_seen.get(client, 0.0) < UDP_IDLE_TIMEOUT:
            await asyncio.sleep(UDP_IDLE_TIMEOUT / 4)
        self.flows.pop(client, None)
        self.last_seen.pop(client, None)
        flow.close()
