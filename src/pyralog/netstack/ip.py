"""IPv4 and IPv6 headers: parse inbound packets, build outbound ones.

No fragmentation: the stack sends segments that fit the MTU (with the Don't Fragment bit
set on IPv4), and drops inbound fragments, which a tunnel peer running path-MTU discovery
does not send. IPv6 extension headers are not followed; such packets are dropped.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

from pyralog.netstack.checksum import address_sum, checksum

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct("!IHBB16s16s")
DEFAULT_TTL = 64


class Malformed(ValueError):
    """An inbound packet that is not a well-formed, unfragmented IP packet for us."""


class IPPacket:
    __slots__ = ("dst", "payload", "protocol", "src", "ttl", "version")

    def __init__(
        self, version: int, src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int
    ) -> None:
        self.version = version
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.payload = payload
        self.ttl = ttl

    @property
    def src_address(self) -> str:
        return str(ipaddress.ip_address(self.src))

    @property
    def dst_address(self) -> str:
        return str(ipaddress.ip_address(self.dst))


def parse(packet: bytes, *, verify_checksum: bool = True) -> IPPacket:
    """Parse an IPv4 or IPv6 packet; raises Malformed. ``verify_checksum=False`` skips the
    IPv4 header checksum, for packets whose integrity is already proven (see Stack)."""
    if not packet:
        raise Malformed("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise Malformed("IPv4 header truncated")
        vihl, _tos, total, _ident, frag, ttl, proto, _sum, src, dst = IPV4_HEADER.unpack_from(
            packet
        )
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or total > len(packet):
            raise Malformed("IPv4 lengths inconsistent")
        if verify_checksum and checksum(packet[:ihl]) != 0:
            raise Malformed("IPv4 header checksum wrong")
        if frag & 0x3FFF:  # more-fragments flag or a fragment offset
            raise Malformed("IPv4 fragments are not supported")
        return IPPacket(4, src, dst, proto, packet[ihl:total], ttl)
    if version == 6:
        if len(packet) < 40:
            raise Malformed("IPv6 header truncated")
        _vtf, length, next_header, hop_limit, src, dst = IPV6_HEADER.unpack_from(packet)
        if 40 + length > len(packet):
            raise Malformed("IPv6 payload length exceeds packet")
        return IPPacket(6, src, dst, next_header, packet[40 : 40 + length], hop_limit)
    raise Malformed(f"IP version {version}")


_ids = itertools.count(1)


def build(src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = DEFAULT_TTL) -> bytes:
    if len(src) == 4:
        total = 20 + len(payload)
        ident = next(_ids) & 0xFFFF
        # The header checksum from its words (0x4500, total, ident, DF, ttl|protocol and
        # the addresses) without building the header twice.
        s = 0x4500 + total + ident + 0x4000 + (ttl << 8 | protocol) + address_sum(src, dst)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        header = IPV4_HEADER.pack(
            0x45, 0, total, ident, 0x4000, ttl, protocol, ~s & 0xFFFF, src, dst
        )
        return header + payload
    return IPV6_HEADER.pack(6 << 28, len(payload), protocol, ttl, src, dst) + payload


def address_bytes(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ipaddress.ip_address(address).packed
