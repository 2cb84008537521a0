"""An embedded WireGuard tunnel: the Device, its link and the netstack in one process.

No root, no TUN, no capabilities: the tunnel's IP packets never reach the kernel, they
go between the Device and the userspace stack. What happens between the Device and UDP
(batching, transforms, timers, the control path) is the link's (``pyralog.link``),
shared with pyralog-wg; this module adds the stack and the asyncio API, whose methods
take asyncio's own arguments and return its types::

    tunnel = await EmbeddedTunnel.start(load("wg0.conf"))
    reader, writer = await tunnel.open_connection("10.0.0.1", 8080)
    server = await tunnel.start_server(handle, port=8080)
    transport, protocol = await tunnel.create_datagram_endpoint(
        MyProtocol, local_addr=("10.0.0.2", 53)
    )
    tunnel.apply(SetRequest(peers=[PeerChange(key, endpoint=("192.0.2.9", 51820))]))
    await tunnel.close()

An EmbeddedTunnel is a ``pyralog.net.Network`` (it adds ``addresses`` and ``peer_of``):
programs that should not care whether the kernel or this stack carries the tunnel are
written against that interface.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pyralog.link import Link, SetRequest, Transform
from pyralog.link.control import PeerChange
from pyralog.netstack.routing import decrement_ttl, destination, source
from pyralog.netstack.stack import Stack
from pyralog.netstack.tcp import TcpConnection
from pyralog.netstack.transports import DatagramTransport, TcpTransport
from pyralog.udp import UdpTransport
from pyralog.wireguard.config import Config
from pyralog.wireguard.device import Device
from pyralog.wireguard.endpoint import Endpoint, canonical
from pyralog.wireguard.keys import PublicKey

STREAM_LIMIT = 2**16
# Bursts from a fast sender outrun one Python thread; a deep buffer (up to what the
# system allows unprivileged, net.core.rmem_max) absorbs them instead of dropping.
SOCKET_BUFFER = 4 * 1024 * 1024
BATCH = 64  # datagrams taken per readable event before the stack runs and replies leave
ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
Address = tuple[str, int]


class TunnelSocket:
    """What ``TunnelServer.sockets`` holds: the listening address, socket-like enough for
    code that reads ``getsockname()`` (there is no file descriptor)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, address: Address) -> None:
        self._address = address
        if ":" in address[0]:
            self.family = socket.AF_INET6

    def getsockname(self) -> Address:
        return self._address

    def fileno(self) -> int:
        return -1

    def __repr__(self) -> str:
        return f"<TunnelSocket {self._address[0]}:{self._address[1]}>"


class TunnelServer:
    """What ``start_server``/``create_server`` return, like ``asyncio.Server``."""

    def __init__(self, tunnel: EmbeddedTunnel, port: int, host: str | None) -> None:
        self._tunnel = tunnel
        self.port = port
        self.host = host
        hosts = [host] if host else [str(a) for a in tunnel.stack.addresses]
        self.sockets: tuple[TunnelSocket, ...] = tuple(TunnelSocket((h, port)) for h in hosts)
        self._closed = asyncio.Event()

    def close(self) -> None:
        if not self._closed.is_set():
            self._tunnel.stack.unlisten(self.port, self.host)
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._tunnel.loop

    async def start_serving(self) -> None:
        """Serving starts at creation; here for asyncio.Server's interface."""

    async def serve_forever(self) -> None:
        try:
            await self._closed.wait()
        finally:
            self.close()

    async def __aenter__(self) -> TunnelServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class EmbeddedTunnel:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        transforms: Iterable[Transform] = (),
    ) -> None:
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
        self._transforms = list(transforms)
        self.link: Link | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._kick_pending = False
        self._deferred: list[Callable[[], None]] = []
        self._closed = False
        # A hub forwards packets between its peers (``netstack.routing``); off by default.
        self.forwarding = False
        # May a packet go from source to destination (packed addresses)? The mesh sets
        # it from its role policy; None forwards everything the Device can route.
        self.forward_filter: Callable[[bytes, bytes], bool] | None = None
        self.forwarded = 0
        self.forward_drops = 0

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: Config, *, transforms: Iterable[Transform] = ()) -> EmbeddedTunnel:
        tunnel = cls(config, asyncio.get_running_loop(), transforms)
        await tunnel._open()
        return tunnel

    async def _open(self) -> None:
        # The daemon's UDP sockets (IPv4 and IPv6 on one port, GSO sends, GRO reads), read
        # from this event loop a batch at a time: asyncio's datagram transport would run
        # the whole stack once per datagram.
        udp = UdpTransport(self.config.interface.listen_port or 0, buffer=SOCKET_BUFFER)
        self.link = Link(self.device, udp, self._transforms)
        self.link.attach(self)
        peers = []
        for peer in self.config.peers:
            endpoint = None
            if peer.endpoint is not None:
                endpoint = await self._resolve(*peer.endpoint)
            peers.append(
                PeerChange(
                    peer.public_key,
                    preshared_key=peer.preshared_key,
                    endpoint=endpoint,
                    allowed_ips=list(peer.allowed_ips),
                    persistent_keepalive=peer.persistent_keepalive,
                )
            )
        self.apply(SetRequest(peers=peers))

    async def _resolve(self, host: str, port: int) -> Endpoint:
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            pass
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve endpoint {host}")
        address = infos[0][4]
        return canonical(address[0], address[1])

    @property
    def listen_port(self) -> int:
        return self._link().listen_port()

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The tunnel's own addresses (its mesh addresses)."""
        return [ipaddress.ip_address(str(a)) for a in self.stack.addresses]

    def peer_of(self, address: str) -> PublicKey | None:
        """The WireGuard public key behind ``address``, e.g. a connection's peername."""
        return self.device.peer_for_address(address)

    def _link(self) -> Link:
        if self.link is None:
            raise RuntimeError("the tunnel is not started (use EmbeddedTunnel.start)")
        return self.link

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
        if self.link is not None:
            self.link.close()

    async def __aenter__(self) -> EmbeddedTunnel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- runtime configuration (the link's control path) --------------------------------

    def apply(self, change: SetRequest) -> None:
        """Change keys, peers, endpoints, PSKs or the listen port at runtime, atomically
        (raises ``ConfigChangeError`` and changes nothing if any part is wrong)."""
        self._link().apply(change, self.now())
        self._reschedule()

    def rekey(self, peer: PublicKey) -> bool:
        """Start a new handshake with ``peer`` now (see ``Device.rekey``)."""
        started = self._link().rekey(peer, self.now())
        self._reschedule()
        return started

    # -- link.SocketWatcher -------------------------------------------------------------------

    def watch(self, sock: socket.socket) -> None:
        self.loop.add_reader(sock.fileno(), self._on_readable, sock)

    def unwatch(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())

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
        if self.link is not None:
            self.link.receive(sock, self.now(), BATCH)
        self._pump()

    def _pump(self) -> None:
        """Move packets between Device and stack until both are quiet, then send."""
        device, stack = self.device, self.stack
        now = self.now()
        for _ in range(10_000):
            moved = False
            for packet in device.packets_to_deliver():
                moved = True
                if self.forwarding and destination(packet) not in stack.local_packed:
                    self._forward(packet, now)
                else:
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
        if self.link is not None:
            self.link.flush(now)
        self._reschedule()

    def _forward(self, packet: bytes, now: float) -> None:
        dst = destination(packet)
        routed = decrement_ttl(packet) if dst is not None else None
        allowed = self.forward_filter
        if routed is not None and allowed is not None and not allowed(source(packet), dst):
            routed = None
        if routed is None:
            self.forward_drops += 1
            return
        self.forwarded += 1
        self.device.send_packet(routed, now)

    def _reschedule(self) -> None:
        if self.link is None or self._closed:
            return
        deadlines = [d for d in (self.link.next_deadline(), self.stack.next_deadline()) if d]
        if not deadlines:
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
        if self.link is not None:
            self.link.tick(now)
        self.stack.tick(now)
        self._pump()

    # -- the asyncio API -------------------------------------------------------------------

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        limit: int = STREAM_LIMIT,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport, _ = await self.create_connection(
            lambda: protocol, host, port, local_addr=local_addr
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
        return reader, writer

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_addr: Address | None = None,
    ) -> tuple[TcpTransport, asyncio.Protocol]:
        connected: asyncio.Future[None] = self.loop.create_future()
        local_host, local_port = local_addr if local_addr is not None else (None, 0)
        conn: TcpConnection = self.stack.connect(
            host,
            port,
            None,  # type: ignore[arg-type]  # the transport below becomes the owner
            self.now(),
            local_host=local_host or None,
            local_port=local_port,
        )
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
        port: int | None = None,
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
        port: int | None = None,
    ) -> TunnelServer:
        def accept(conn: TcpConnection) -> TcpTransport:
            return TcpTransport(self, conn, protocol_factory, self._extra(conn))

        host = host or None  # asyncio's "" means every address, as None does
        bound = self.stack.listen(port or 0, accept, host)
        return TunnelServer(self, bound, host)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        remote_addr: Address | None = None,
    ) -> tuple[DatagramTransport, asyncio.DatagramProtocol]:
        local_host, local_port = local_addr if local_addr is not None else (None, 0)
        local_host = local_host or None
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
