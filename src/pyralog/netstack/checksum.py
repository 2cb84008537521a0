"""The Internet checksum (RFC 1071) and the TCP/UDP pseudo-headers.

The one's-complement sum of 16-bit words equals the big-endian integer value of the data
modulo 0xFFFF (because 2**16 is 1 modulo 0xFFFF), which lets CPython's C big-integer code
do the per-byte work: one ``int.from_bytes`` and one ``%`` instead of a Python loop.
"""

from __future__ import annotations

import functools


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words (odd length zero-padded)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    if not data:
        return 0
    s = int.from_bytes(data, "big") % 0xFFFF
    # 0 and 0xFFFF are the same number in one's complement; a non-empty all-zero input sums
    # to +0, anything else that reduces to 0 is -0 (0xFFFF).
    if s == 0 and any(data):
        return 0xFFFF
    return s


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit Internet checksum of ``data``, with ``initial`` (a partial sum) folded in."""
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@functools.lru_cache(maxsize=1024)
def address_sum(src: bytes, dst: bytes) -> int:
    """Partial sum of two addresses: part of both the pseudo-header and the IPv4 header,
    and the same for every packet of a connection, so it is remembered."""
    return ones_sum(src + dst)


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the IPv4 (4-byte addresses) or IPv6 (16-byte) pseudo-header."""
    # IPv4: zero, protocol, 16-bit length; IPv6: 32-bit length, zeros, next header. Either
    # way the words add up to protocol + length (a length over 16 bits carries over).
    return address_sum(src, dst) + protocol + (length & 0xFFFF) + (length >> 16)
