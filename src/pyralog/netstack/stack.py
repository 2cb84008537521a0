"""The stack: demultiplexes IP packets to TCP connections, listeners and UDP endpoints,
answers pings, and collects what to send. Sans-IO, like the connections it owns.

``receive_packet(packet, now)`` takes an IP packet that arrived through the tunnel;
``packets_to_send()`` returns IP packets for the tunnel; ``tick(now)`` runs timers due at
``now``; ``next_deadline()`` says when to call it next.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import struct
from collections.abc import Callable

from pyralog.netstack import ip
from pyralog.netstack.checksum import checksum, pseudo_header_sum
from pyralog.netstack.tcp import State, TcpConnection, TcpOwner
from pyralog.netstack.tcp_segment import ACK, RST, SYN, Segment
from pyralog.netstack.tcp_segment import Malformed as MalformedSegment
from pyralog.netstack.tcp_segment import decode as decode_segment

EPHEMERAL_PORTS = range(49152, 65536)
MAX_HALF_OPEN = 256
UDP_HEADER = struct.Struct("!HHHH")

Address = bytes  # 4 or 16 bytes
ConnKey = tuple[Address, int, Address, int]  # local ip, local port, remote ip, remote port
DatagramHandler = Callable[[bytes, tuple[str, int]], None]


class Listener:
    def __init__(self, port: int, factory: Callable[[TcpConnection], TcpOwner]) -> None:
        self.port = port
        self.factory = factory
        self.half_open = 0


class Stack:
    def __init__(
        self,
        addresses: list[str],
        mtu: int = 1420,
        rng: random.Random | None = None,
        *,
        verify_checksums: bool = True,
    ):
        if not addresses:
            raise ValueError("the stack needs at least one local address")
        # Packets that came out of a WireGuard session passed its Poly1305 check: nothing
        # changed them since the peer built them, so their IP/TCP/UDP checksums need no
        # second look (Linux's WireGuard marks them CHECKSUM_UNNECESSARY for the same
        # reason). Outgoing checksums are always computed.
        self.verify_checksums = verify_checksums
        self.addresses = [ipaddress.ip_address(a) for a in addresses]
        self._local = {a.packed for a in self.addresses}
        self.local_packed = frozenset(self._local)
        self.mtu = mtu
        self._rng = rng or random.SystemRandom()
        self._conns: dict[ConnKey, TcpConnection] = {}
        self._keys: dict[int, ConnKey] = {}  # id(conn) -> key
        self._listeners: dict[tuple[Address | None, int], Listener] = {}
        self._udp: dict[tuple[Address | None, int], DatagramHandler] = {}
        self._half_open: dict[int, Listener] = {}  # id(conn) -> listener, until established
        self._out: list[bytes] = []
        self.drops: dict[str, int] = {
            "malformed": 0,
            "not_for_us": 0,
            "no_listener": 0,
            "no_udp_endpoint": 0,
            "backlog_full": 0,
            "unsupported_protocol": 0,
        }

    # -- addresses and ports -----------------------------------------------------------

    def source_for(self, remote: bytes) -> bytes:
        for a in self.addresses:
            if len(a.packed) == len(remote):
                return a.packed
        family = "IPv4" if len(remote) == 4 else "IPv6"
        raise OSError(f"the tunnel has no {family} address to send from")

    def mss_for(self, remote: bytes) -> int:
        return self.mtu - (40 if len(remote) == 4 else 60)

    def _ephemeral_port(self, in_use: Callable[[int], bool]) -> int:
        for _ in range(64):
            port = self._rng.choice(EPHEMERAL_PORTS)
            if not in_use(port):
                return port
        for port in EPHEMERAL_PORTS:
            if not in_use(port):
                return port
        raise OSError("no free ephemeral port")

    # -- TCP API -------------------------------------------------------------------------

    def connect(
        self,
        remote_host: str,
        remote_port: int,
        owner: TcpOwner,
        now: float,
        local_host: str | None = None,
        local_port: int = 0,
    ) -> TcpConnection:
        """Open a connection; the source is ``local_host:local_port`` if given (one of our
        addresses; 0: an ephemeral port), else picked for the destination."""
        remote = ip.address_bytes(remote_host)
        if local_host:
            local = ip.address_bytes(local_host)
            if local not in self._local:
                raise OSError(errno.EADDRNOTAVAIL, f"{local_host} is not an address of this tunnel")
        else:
            local = self.source_for(remote)
        if local_port:
            if (local, local_port, remote, remote_port) in self._conns:
                raise OSError(errno.EADDRINUSE, f"{local_host}:{local_port} is in use")
            port = local_port
        else:
            port = self._ephemeral_port(
                lambda p: (
                    (local, p, remote, remote_port) in self._conns or (None, p) in self._listeners
                )
            )
        conn = TcpConnection(
            port, remote_port, self._rng.getrandbits(32), self.mss_for(remote), owner
        )
        self._add(conn, (local, port, remote, remote_port))
        conn.connect(now)
        return conn

    def listen(
        self, port: int, factory: Callable[[TcpConnection], TcpOwner], host: str | None = None
    ) -> int:
        """Accept connections on ``port`` (0: pick one); returns the port."""
        local = ip.address_bytes(host) if host else None
        if local is not None and local not in self._local:
            raise OSError(f"{host} is not an address of this tunnel")
        if port == 0:
            port = self._ephemeral_port(lambda p: (local, p) in self._listeners)
        if (local, port) in self._listeners:
            raise OSError(f"port {port} is already listening")
        self._listeners[(local, port)] = Listener(port, factory)
        return port

    def unlisten(self, port: int, host: str | None = None) -> None:
        local = ip.address_bytes(host) if host else None
        self._listeners.pop((local, port), None)

    def connections(self) -> list[TcpConnection]:
        return list(self._conns.values())

    def endpoints_of(self, conn: TcpConnection) -> tuple[tuple[str, int], tuple[str, int]]:
        """((local ip, port), (remote ip, port)) of a connection."""
        local, local_port, remote, remote_port = self._keys[id(conn)]
        return (
            (str(ipaddress.ip_address(local)), local_port),
            (str(ipaddress.ip_address(remote)), remote_port),
        )

    def _add(self, conn: TcpConnection, key: ConnKey) -> None:
        self._conns[key] = conn
        self._keys[id(conn)] = key

    # -- UDP API -------------------------------------------------------------------------

    def udp_bind(self, port: int, handler: DatagramHandler, host: str | None = None) -> int:
        local = ip.address_bytes(host) if host else None
        if port == 0:
            port = self._ephemeral_port(lambda p: (local, p) in self._udp or (None, p) in self._udp)
        if (local, port) in self._udp:
            raise OSError(f"UDP port {port} is already bound")
        self._udp[(local, port)] = handler
        return port

    def udp_unbind(self, port: int, host: str | None = None) -> None:
        local = ip.address_bytes(host) if host else None
        self._udp.pop((local, port), None)

    def udp_send(self, local_port: int, remote_host: str, remote_port: int, data: bytes) -> None:
        remote = ip.address_bytes(remote_host)
        local = self.source_for(remote)
        limit = self.mtu - (28 if len(remote) == 4 else 48)
        if len(data) > limit:
            raise OSError(
                errno.EMSGSIZE, f"datagram of {len(data)} bytes exceeds the tunnel's {limit}"
            )
        length = 8 + len(data)
        header = UDP_HEADER.pack(local_port, remote_port, length, 0)
        value = checksum(header + data, pseudo_header_sum(local, remote, ip.PROTO_UDP, length))
        header = UDP_HEADER.pack(local_port, remote_port, length, value or 0xFFFF)
        self._out.append(ip.build(local, remote, ip.PROTO_UDP, header + data))

    # -- packets -------------------------------------------------------------------------

    def receive_packet(self, packet: bytes, now: float) -> None:
        try:
            pkt = ip.parse(packet, verify_checksum=self.verify_checksums)
        except ip.Malformed:
            self.drops["malformed"] += 1
            return
        if pkt.dst not in self._local:
            self.drops["not_for_us"] += 1
            return
        if pkt.protocol == ip.PROTO_TCP:
            self._receive_tcp(pkt, now)
        elif pkt.protocol == ip.PROTO_UDP:
            self._receive_udp(pkt)
        elif pkt.protocol == ip.PROTO_ICMP and pkt.version == 4:
            self._receive_icmp4(pkt)
        elif pkt.protocol == ip.PROTO_ICMPV6 and pkt.version == 6:
            self._receive_icmp6(pkt)
        else:
            self.drops["unsupported_protocol"] += 1

    def packets_to_send(self) -> list[bytes]:
        for key, conn in list(self._conns.items()):
            segments = conn.segments_to_send()
            if segments:
                local, _, remote, _ = key
                for seg in segments:
                    self._out.append(
                        ip.build(local, remote, ip.PROTO_TCP, seg.encode(local, remote))
                    )
            if conn.state == State.CLOSED:
                self._remove(conn)
        out = self._out
        self._out = []
        return out

    def tick(self, now: float) -> None:
        for conn in list(self._conns.values()):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.tick(now)

    def next_deadline(self) -> float | None:
        best = None
        for conn in self._conns.values():
            d = conn.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def _remove(self, conn: TcpConnection) -> None:
        self._settle(conn)
        key = self._keys.pop(id(conn), None)
        if key is not None and self._conns.get(key) is conn:
            del self._conns[key]

    # -- TCP demultiplexing --------------------------------------------------------------

    def _receive_tcp(self, pkt: ip.IPPacket, now: float) -> None:
        try:
            seg = decode_segment(
                pkt.payload, pkt.src, pkt.dst, verify_checksum=self.verify_checksums
            )
        except MalformedSegment:
            self.drops["malformed"] += 1
            return
        key = (pkt.dst, seg.dst_port, pkt.src, seg.src_port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.receive(seg, now)
            self._settle(conn)
            return
        listener = self._listeners.get((pkt.dst, seg.dst_port)) or self._listeners.get(
            (None, seg.dst_port)
        )
        if listener is None or seg.flags & (RST | ACK) or not seg.flags & SYN:
            if listener is None:
                self.drops["no_listener"] += 1
            self._reset_for(pkt, seg)
            return
        if listener.half_open >= MAX_HALF_OPEN:
            self.drops["backlog_full"] += 1
            return
        conn = TcpConnection(
            seg.dst_port, seg.src_port, self._rng.getrandbits(32), self.mss_for(pkt.src)
        )
        conn.owner = _Pending(listener)
        listener.half_open += 1
        self._half_open[id(conn)] = listener
        self._add(conn, key)
        conn.accept(seg, now)

    def _settle(self, conn: TcpConnection) -> None:
        """A connection left SYN-RECEIVED: it no longer counts against the backlog."""
        if conn.state != State.SYN_RECEIVED:
            listener = self._half_open.pop(id(conn), None)
            if listener is not None:
                listener.half_open -= 1

    def _reset_for(self, pkt: ip.IPPacket, seg: Segment) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection gets a RST (unless it is one)."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            rst = Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
        else:
            rst = Segment(
                seg.dst_port, seg.src_port, 0, (seg.seq + seg.length) & 0xFFFFFFFF, RST | ACK, 0
            )
        self._out.append(ip.build(pkt.dst, pkt.src, ip.PROTO_TCP, rst.encode(pkt.dst, pkt.src)))

    # -- UDP and ICMP --------------------------------------------------------------------

    def _receive_udp(self, pkt: ip.IPPacket) -> None:
        data = pkt.payload
        if len(data) < 8:
            self.drops["malformed"] += 1
            return
        sport, dport, length, value = UDP_HEADER.unpack_from(data)
        if length < 8 or length > len(data):
            self.drops["malformed"] += 1
            return
        data = data[:length]
        if (
            self.verify_checksums
            and (value or pkt.version == 6)
            and checksum(data, pseudo_header_sum(pkt.src, pkt.dst, ip.PROTO_UDP, length)) != 0
        ):
            self.drops["malformed"] += 1
            return
        handler = self._udp.get((pkt.dst, dport)) or self._udp.get((None, dport))
        if handler is None:
            self.drops["no_udp_endpoint"] += 1
            return
        handler(data[8:], (pkt.src_address, sport))

    def _receive_icmp4(self, pkt: ip.IPPacket) -> None:
        data = pkt.payload
        if len(data) < 8 or checksum(data) != 0:
            self.drops["malformed"] += 1
            return
        if data[0] != 8:  # only echo requests need an answer
            return
        reply = b"\x00\x00\x00\x00" + data[4:]
        reply = reply[:2] + checksum(reply).to_bytes(2, "big") + reply[4:]
        self._out.append(ip.build(pkt.dst, pkt.src, ip.PROTO_ICMP, reply))

    def _receive_icmp6(self, pkt: ip.IPPacket) -> None:
        data = pkt.payload
        total = pseudo_header_sum(pkt.src, pkt.dst, ip.PROTO_ICMPV6, len(data))
        if len(data) < 8 or checksum(data, total) != 0:
            self.drops["malformed"] += 1
            return
        if data[0] != 128:  # echo request
            return
        reply = b"\x81\x00\x00\x00" + data[4:]
        value = checksum(reply, pseudo_header_sum(pkt.dst, pkt.src, ip.PROTO_ICMPV6, len(reply)))
        reply = reply[:2] + value.to_bytes(2, "big") + reply[4:]
        self._out.append(ip.build(pkt.dst, pkt.src, ip.PROTO_ICMPV6, reply))


class _Pending(TcpOwner):
    """Owner of a passively opened connection until its handshake completes."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def tcp_connected(self, conn: TcpConnection) -> None:
        owner = self.listener.factory(conn)
        conn.owner = owner
        owner.tcp_connected(conn)

    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None:
        pass  # never reached the application
