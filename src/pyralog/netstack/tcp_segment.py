"""TCP segments on the wire (RFC 9293 section 3.1), with the MSS, window-scale,
SACK-permitted and SACK options (RFC 9293 3.2, RFC 7323 2, RFC 2018)."""

from __future__ import annotations

import struct

from pyralog.netstack.checksum import checksum, ones_sum, pseudo_header_sum
from pyralog.netstack.ip import PROTO_TCP

HEADER = struct.Struct("!HHIIBBHHH")

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

OPT_END = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5


class Malformed(ValueError):
    pass


class Segment:
    __slots__ = (
        "ack",
        "dst_port",
        "flags",
        "mss",
        "payload",
        "sack",
        "sack_permitted",
        "seq",
        "src_port",
        "window",
        "wscale",
    )

    def __init__(
        self,
        src_port: int,
        dst_port: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload: bytes = b"",
        *,
        mss: int | None = None,
        wscale: int | None = None,
        sack_permitted: bool = False,
        sack: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.payload = payload
        self.mss = mss
        self.wscale = wscale
        self.sack_permitted = sack_permitted
        self.sack = sack  # (left edge, right edge) sequence numbers, at most 4 blocks

    @property
    def length(self) -> int:
        """Sequence space the segment occupies: payload, plus one each for SYN and FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def __repr__(self) -> str:
        names = "".join(
            n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (ACK, ".")) if self.flags & bit
        )
        return (
            f"<Segment {self.src_port}->{self.dst_port} [{names}] seq={self.seq} "
            f"ack={self.ack} win={self.window} len={len(self.payload)}>"
        )

    def encode(self, src: bytes, dst: bytes) -> bytes:
        """The segment with a correct checksum for the given IP addresses."""
        options = b""
        if self.mss is not None:
            options += struct.pack("!BBH", OPT_MSS, 4, self.mss)
        if self.wscale is not None:
            options += struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, self.wscale)
        if self.sack_permitted:
            options += struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2)
        # As many SACK blocks as the 40 option bytes leave room for (4 on a plain ACK).
        blocks = self.sack[: min(4, (36 - len(options)) // 8)] if self.sack else ()
        if blocks:
            options += struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks))
            options += b"".join(struct.pack("!II", left, right) for left, right in blocks)
        offset = (20 + len(options)) // 4
        fields = [self.src_port, self.dst_port, self.seq, self.ack, offset << 4]
        fields += (self.flags, self.window, 0, 0)
        head = HEADER.pack(*fields) + options  # an even length: sums can be added
        payload = self.payload
        total = pseudo_header_sum(src, dst, PROTO_TCP, len(head) + len(payload))
        fields[7] = checksum(payload, total + ones_sum(head))
        return HEADER.pack(*fields) + options + payload


def decode(data: bytes, src: bytes, dst: bytes, *, verify_checksum: bool = True) -> Segment:
    """Parse and verify a segment; raises Malformed for bad length, offset or checksum."""
    if len(data) < 20:
        raise Malformed("TCP header truncated")
    if verify_checksum and checksum(data, pseudo_header_sum(src, dst, PROTO_TCP, len(data))):
        raise Malformed("TCP checksum wrong")
    sport, dport, seq, ack, off, flags, window, _sum, _urg = HEADER.unpack_from(data)
    offset = (off >> 4) * 4
    if offset < 20 or offset > len(data):
        raise Malformed("TCP data offset out of range")
    seg = Segment(sport, dport, seq, ack, flags & 0x3F, window, bytes(data[offset:]))
    i = 20
    while i < offset:
        kind = data[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= offset:
            raise Malformed("TCP option truncated")
        size = data[i + 1]
        if size < 2 or i + size > offset:
            raise Malformed("TCP option length invalid")
        if kind == OPT_MSS and size == 4:
            seg.mss = int.from_bytes(data[i + 2 : i + 4], "big")
        elif kind == OPT_WSCALE and size == 3:
            seg.wscale = min(data[i + 2], 14)  # RFC 7323: larger shifts are treated as 14
        elif kind == OPT_SACK_PERMITTED and size == 2:
            seg.sack_permitted = True
        elif kind == OPT_SACK and size in (10, 18, 26, 34):
            seg.sack = tuple(
                (int.from_bytes(data[j : j + 4], "big"), int.from_bytes(data[j + 4 : j + 8], "big"))
                for j in range(i + 2, i + size, 8)
            )
        i += size
    return seg
