"""The receiving half of a connection: the receive buffer, reassembly of out-of-order
segments (bounded), the SACK blocks they give rise to, and the window we advertise (scaled,
RFC 7323; its right edge never moves left, RFC 9293 3.8.6.2.2; over-commit capped).

``Receiver`` knows sequence numbers and bytes, not states: the connection decides whether
text is accepted at all and when to acknowledge it, and hears of an in-order FIN through
the ``on_fin`` callback, at the moment the FIN is taken.
"""

from __future__ import annotations

from collections.abc import Callable

from pyralog.netstack.tcp_sack import receiver_blocks
from pyralog.netstack.tcp_segment import Segment
from pyralog.netstack.tcp_seq import MASK, seq_diff, seq_lt

# How far past the receive buffer a never-shrinking scaled window may promise: 1/4 of it.
OVERCOMMIT_DIVISOR = 4


class Receiver:
    """Receive sequence space from the peer's SYN on, and the bytes in it."""

    __slots__ = (
        "_on_fin",
        "adv",
        "buf",
        "dsack",
        "fin_received",
        "latest_ooo",
        "ooo",
        "ooo_bytes",
        "rcv_nxt",
        "size",
        "wscale",
    )

    def __init__(self, size: int, on_fin: Callable[[float], None]) -> None:
        self.size = size  # the receive buffer's size
        self._on_fin = on_fin
        self.rcv_nxt = 0
        self.wscale = 0  # our window scale (0 unless both SYNs carried the option)
        self.buf = bytearray()  # in order, not yet read
        self.ooo: dict[int, tuple[bytes, bool]] = {}  # seq -> (payload, fin), above a hole
        self.ooo_bytes = 0
        self.adv = 0  # right edge of the window we last advertised
        self.fin_received = False
        self.dsack: tuple[int, int] | None = None  # a duplicate to report
        self.latest_ooo: int | None = None  # start of the last out-of-order arrival

    def start(self, syn_seq: int, wscale: int) -> None:
        """The peer's SYN (sequence ``syn_seq``) arrived; our window is scaled by ``wscale``."""
        self.rcv_nxt = (syn_seq + 1) & MASK
        self.wscale = wscale
        self.adv = (syn_seq + 1 + min(self.size, 0xFFFF)) & MASK  # a SYN's window is unscaled

    # -- windows -----------------------------------------------------------------------

    def space(self) -> int:
        """Free room in the receive buffer."""
        return max(self.size - len(self.buf), 0)

    def accept_window(self) -> int:
        """What we take in: our free space, or more if we already promised more."""
        return max(self.space(), seq_diff(self.adv, self.rcv_nxt))

    def acceptable(self, seg: Segment) -> bool:
        """RFC 9293 3.10.7.4's first check: does any of ``seg`` fall in the window?"""
        length = seg.length
        window = self.accept_window()
        offset = seq_diff(seg.seq, self.rcv_nxt)
        if length == 0:
            return offset == 0 if window == 0 else 0 <= offset < window
        if window == 0:
            return False
        end = offset + length - 1
        return 0 <= offset < window or 0 <= end < window

    def window_field(self) -> int:
        """The window field for an outgoing segment; remembers the edge it shows.

        ``adv`` is the right edge as the peer computes it (SEG.ACK + field << scale).
        That edge never moves left (RFC 9293 3.8.6.2.2, RFC 7323 2.4): when our free
        space, rounded down to the scale, would show less, the remaining promise is
        rounded *up* instead, and we accept up to it even past the buffer's size. Rounding
        up can creep the promise forward by up to 2**scale - 1 bytes per ACK (with ACKs every
        two full segments, a few percent of the buffer); past 1/OVERCOMMIT_DIVISOR of the
        buffer the window is allowed to close rather than let a peer that dribbles odd-sized
        segments grow our buffer without limit.
        """
        shift = self.wscale
        field = min(self.space() >> shift, 0xFFFF)
        right = (self.rcv_nxt + (field << shift)) & MASK
        if seq_lt(right, self.adv):
            promised = seq_diff(self.adv, self.rcv_nxt)
            rounded = min((promised + (1 << shift) - 1) >> shift, 0xFFFF)
            over = (rounded << shift) + len(self.buf) - self.size
            if over <= max(2 << shift, self.size // OVERCOMMIT_DIVISOR):
                field = rounded
                right = (self.rcv_nxt + (field << shift)) & MASK
        self.adv = right
        return field

    def window_update_due(self, mss: int) -> bool:
        """After a read: is the window's opening worth an ACK of its own?"""
        advertised = seq_diff(self.adv, self.rcv_nxt)
        # The most a window field can say (a 16-bit field, scaled).
        largest = min(self.size, 0xFFFF << self.wscale)
        available = min(self.space(), largest)
        # Announce an opening only when it matters to the sender: the window it knows has
        # become small, and reading has freed a worthwhile amount (receiver SWS avoidance,
        # RFC 9293 3.8.6.2.2). Otherwise the next ACK carries the new window anyway.
        worthwhile = min(largest // 2, 2 * mss)
        return advertised < largest // 2 and available - advertised >= worthwhile

    # -- text --------------------------------------------------------------------------

    def arrive(self, seq: int, payload: bytes, fin: bool, sack_ok: bool, now: float) -> int:
        """Take an acceptable segment's text. Returns how many bytes it added in order
        (more may follow from the out-of-order queue), or -1 if it was not in order:
        held or dropped, and the peer should get a duplicate ACK."""
        offset = seq_diff(seq, self.rcv_nxt)
        if offset < 0:  # starts before rcv_nxt: trim what we already have
            if sack_ok:
                self.dsack = (seq, self.rcv_nxt)
            payload = payload[-offset:]
            offset = 0
        window = self.accept_window()
        if len(payload) > window - offset:
            payload = payload[: max(window - offset, 0)]
            fin = False  # the FIN lies beyond the window; it will come again
        if offset > 0:
            # Held until the hole before it fills. Overlapping copies (a retransmission
            # cut differently, or a peer playing games) are each held at most once per
            # start and never beyond a window's worth in all, so memory stays bounded.
            if (payload or fin) and offset < window:
                start = (self.rcv_nxt + offset) & MASK
                held = self.ooo.get(start)
                if (held is None or len(held[0]) < len(payload)) and (
                    self.ooo_bytes - (len(held[0]) if held else 0) + len(payload) <= window
                ):
                    if held is not None:
                        self.ooo_bytes -= len(held[0])
                    self.ooo[start] = (payload, fin)
                    self.ooo_bytes += len(payload)
                elif held is not None and sack_ok:
                    self.dsack = (start, (start + len(payload)) & MASK)
                self.latest_ooo = start
            return -1
        self._append(payload, fin, now)
        if self.ooo:
            self._drain_ooo(now)
        return len(payload)

    def _append(self, payload: bytes, fin: bool, now: float) -> None:
        if payload:
            self.buf += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) & MASK
        if fin and not self.fin_received:
            self.fin_received = True
            self.rcv_nxt = (self.rcv_nxt + 1) & MASK
            self._on_fin(now)

    def _drain_ooo(self, now: float) -> None:
        # In sequence order from rcv_nxt, one pass takes everything now contiguous.
        base = self.rcv_nxt
        for start in sorted(self.ooo, key=lambda s: seq_diff(s, base)):
            if self.fin_received:
                break
            offset = seq_diff(start, self.rcv_nxt)
            if offset > 0:
                break  # the next hole
            payload, fin = self.ooo.pop(start)
            self.ooo_bytes -= len(payload)
            if offset + len(payload) > 0 or (fin and offset + len(payload) == 0):
                self._append(payload[-offset:] if offset else payload, fin, now)
        if self.fin_received:
            self.ooo.clear()
            self.ooo_bytes = 0

    def read(self, limit: int) -> bytes:
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def sack_blocks(self) -> tuple[tuple[int, int], ...]:
        """SACK blocks for the next pure ACK; a reported duplicate is reported once."""
        blocks = receiver_blocks(
            ((start, len(p)) for start, (p, _) in self.ooo.items()),
            self.rcv_nxt,
            self.latest_ooo,
            self.dsack,
        )
        self.dsack = None
        return blocks
