"""Forwarding between peers in the embedded tunnel: what a hub does for its spokes.

A packet the Device delivered whose destination is not one of our addresses would be
dropped by the stack; a forwarding tunnel sends it back into the Device instead, which
encrypts it to the peer whose allowed IPs hold the destination (cryptokey routing is the
routing table). As a router must, it decrements the TTL (IPv4, with the header checksum
updated incrementally, RFC 1624) or hop limit (IPv6) and drops packets that run out.
"""

from __future__ import annotations


def destination(packet: bytes) -> bytes | None:
    """The destination address of an IP packet, or None if it is not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return packet[16:20]
    if version == 6 and len(packet) >= 40:
        return packet[24:40]
    return None


def source(packet: bytes) -> bytes:
    """The source address of a packet ``destination`` accepted."""
    return packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]


def decrement_ttl(packet: bytes) -> bytes | None:
    """The packet with its TTL/hop limit one lower, or None if it must be dropped."""
    version = packet[0] >> 4
    if version == 6:
        if packet[7] <= 1:
            return None
        return packet[:7] + bytes([packet[7] - 1]) + packet[8:]
    ttl = packet[8]
    if ttl <= 1:
        return None
    # The TTL is the high byte of the 16-bit word at offset 8: lowering it by one lowers
    # that word by 0x0100, so the one's-complement checksum goes up by 0x0100.
    total = int.from_bytes(packet[10:12], "big") + 0x0100
    total = (total & 0xFFFF) + (total >> 16)
    return packet[:8] + bytes([ttl - 1]) + packet[9:10] + total.to_bytes(2, "big") + packet[12:]
