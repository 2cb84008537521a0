"""An embedded WireGuard tunnel: the Device, its UDP sockets and the netstack in one process.

No root, no TUN, no capabilities: the tunnel's IP packets never reach the kernel, they
go between the Device and the userspace stack. The asyncio API mirrors the standard
library's::

    tunnel = await EmbeddedTunnel.start(load("wg0.conf"))
    reader, writer = await tunnel.open_connection("10.0.0.1", 8080)
    server = await tunnel.start_server(handle, port=8080)
    transport, protocol = await tunnel.create_datagram_endpoint(MyProtocol, local_port=53)
    await tunnel.close()
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyralog.netstack.stack import Stack
from pyralog.netstack.tcp import TcpConnection
from pyralog.netstack.transports import DatagramTransport, TcpTransport
from pyralog.udp import UdpTransport
from pyralog.wireguard.config import Config
from pyralog.wireguard.device import Device

STREAM_LIMIT = 2**16
# Bursts from a fast sender outrun one Python thread; a deep buffer (up to what the
# system allows unprivileged, net.core.rmem_max) absorbs them instead of dropping.
SOCKET_BUFFER = 4 * 1024 * 1024
BATCH = 64  # datagrams taken per readable event before the stack runs and replies leave
ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


def _normalize(address: tuple[Any, ...]) -> tuple[str, int]:
    """A socket address as the Device sees endpoints: IPv4-mapped IPv6 becomes IPv4."""
    host = address[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, address[1]


class TunnelServer:
    """What ``start_server`` returns: close it to stop accepting."""

    def __init__(self, tunnel: EmbeddedTunnel, port: int, host: str | None) -> None:
        self._tunnel = tunnel
        self.port = port
        self.host = host
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._tunnel.stack.unlisten(self.port, self.host)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    async def __aenter__(self) -> TunnelServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EmbeddedTunnel:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        iface = config.interface
        if not iface.addresses:
            raise ValueError(f"{config.path}: [Interface] needs an Address for embedded mode")
        self.config = config
        self.loop = loop
        self.device = Device(
            iface.private_key, mtu=iface.mtu, clock_offset=time.time() - loop.time()
        )
        # Everything the stack receives was authenticated by the Device (see Stack).
        self.stack = Stack(
            [str(a.ip) for a in iface.addresses], mtu=iface.mtu, verify_checksums=False
        )
        self._udp: UdpTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._kick_pending = False
        self._deferred: list[Callable[[], None]] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: Config) -> EmbeddedTunnel:
        tunnel = cls(config, asyncio.get_running_loop())
        await tunnel._open()
        return tunnel

    async def _open(self) -> None:
        # The daemon's UDP sockets (IPv4 and IPv6 on one port, GSO sends, GRO reads), read
        # from this event loop a batch at a time: asyncio's datagram transport would run
        # the whole stack once per datagram.
        self._udp = UdpTransport(self.config.interface.listen_port or 0, buffer=SOCKET_BUFFER)
        for sock in self._udp.sockets():
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)
        now = self.now()
        for peer in self.config.peers:
            endpoint = None
            if peer.endpoint is not None:
                endpoint = await self._resolve(*peer.endpoint)
            self.device.add_peer(
                peer.public_key,
                now,
                preshared_key=peer.preshared_key,
                endpoint=endpoint,
                allowed_ips=peer.allowed_ips,
                persistent_keepalive=peer.persistent_keepalive,
            )
        self._pump()

    async def _resolve(self, host: str, port: int) -> tuple[str, int]:
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            pass
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve endpoint {host}")
        return _normalize(infos[0][4])

    @property
    def listen_port(self) -> int:
        assert self._udp is not None
        return self._udp.port

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self.stack.connections():
            conn.abort(self.now())  # sends the peer a RST
            # abort() leaves its owner alone (a transport that aborts knows it did); here
            # the tunnel goes away under the application, so its streams must hear of it.
            conn.owner.tcp_closed(
                conn, ConnectionAbortedError(errno.ECONNABORTED, "the tunnel was closed")
            )
        self._pump()
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            for sock in self._udp.sockets():
                self.loop.remove_reader(sock.fileno())
            self._udp.close()
            self._udp = None

    async def __aenter__(self) -> EmbeddedTunnel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the Host interface for transports --------------------------------------------------

    def now(self) -> float:
        return self.loop.time()

    def kick(self) -> None:
        if not self._kick_pending and not self._closed:
            self._kick_pending = True
            self.loop.call_soon(self._kicked)

    def defer(self, callback: Callable[[], None]) -> None:
        self._deferred.append(callback)
        self.kick()

    def _kicked(self) -> None:
        self._kick_pending = False
        self._pump()

    # -- packet plumbing -------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        receive = self.device.receive_datagram
        now = self.now()
        for data, endpoint in UdpTransport.receive_many(sock, BATCH):
            receive(data, endpoint, now)
        self._pump()

    def _pump(self) -> None:
        """Move packets between Device and stack until both are quiet, then send."""
        device, stack = self.device, self.stack
        now = self.now()
        for _ in range(10_000):
            moved = False
            for packet in device.packets_to_deliver():
                moved = True
                stack.receive_packet(packet, now)
            while self._deferred:  # the readers, now that the whole burst is in
                moved = True
                deferred, self._deferred = self._deferred, []
                for callback in deferred:
                    callback()
            for packet in stack.packets_to_send():
                moved = True
                device.send_packet(packet, now)
            if not moved:
                break
        datagrams = device.datagrams_to_send()
        if datagrams and self._udp is not None:
            self._udp.send_many(datagrams)
        self._reschedule()

    def _reschedule(self) -> None:
        deadlines = [d for d in (self.device.next_deadline(), self.stack.next_deadline()) if d]
        if not deadlines or self._closed:
            return
        when = min(deadlines)
        if self._timer_at is not None and self._timer_at <= when:
            return  # an earlier wake-up is already set; it will look again
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.now()
        self.device.tick(now)
        self.stack.tick(now)
        self._pump()

    # -- the asyncio API -------------------------------------------------------------------

    async def open_connection(
        self, host: str, port: int, *, limit: int = STREAM_LIMIT
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        await self.create_connection(lambda: protocol, host, port)
        transport = protocol._transport  # type: ignore[attr-defined]
        writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
        return reader, writer

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[TcpTransport, asyncio.Protocol]:
        connected: asyncio.Future[None] = self.loop.create_future()
        conn: TcpConnection = self.stack.connect(host, port, None, self.now())  # type: ignore[arg-type]
        transport = TcpTransport(self, conn, protocol_factory, self._extra(conn), connected)
        self._pump()
        try:
            await connected
        except BaseException:
            conn.abort(self.now())
            self._pump()
            raise
        assert transport._protocol is not None
        return transport, transport._protocol

    async def start_server(
        self,
        client_connected_cb: ClientCallback,
        host: str | None = None,
        port: int = 0,
        *,
        limit: int = STREAM_LIMIT,
    ) -> TunnelServer:
        loop = self.loop

        def protocol_factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(protocol_factory, host, port)

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int = 0,
    ) -> TunnelServer:
        def accept(conn: TcpConnection) -> TcpTransport:
            return TcpTransport(self, conn, protocol_factory, self._extra(conn))

        bound = self.stack.listen(port, accept, host)
        return TunnelServer(self, bound, host)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_port: int = 0,
        remote_addr: tuple[str, int] | None = None,
        local_host: str | None = None,
    ) -> tuple[DatagramTransport, asyncio.DatagramProtocol]:
        protocol = protocol_factory()
        holder: list[DatagramTransport] = []
        port = self.stack.udp_bind(
            local_port, lambda data, addr: holder[0].deliver(data, addr), local_host
        )
        transport = DatagramTransport(
            self,
            lambda data, addr: self.stack.udp_send(port, addr[0], addr[1], data),
            lambda: self.stack.udp_unbind(port, local_host),
            protocol,
            remote_addr,
            {"sockname": (local_host or str(self.stack.addresses[0]), port)},
        )
        holder.append(transport)
        protocol.connection_made(transport)
        return transport, protocol

    def _extra(self, conn: TcpConnection) -> dict[str, Any]:
        local, remote = self.stack.endpoints_of(conn)
        return {"peername": remote, "sockname": local}
