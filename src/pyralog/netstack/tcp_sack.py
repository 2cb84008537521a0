"""Selective acknowledgements: the blocks a receiver reports (RFC 2018, with D-SACK of
RFC 2883) and the scoreboard a sender keeps of them for loss recovery (RFC 6675).

Hand-written, like the rest of the netstack: no maintained Python library offers it.

The scoreboard counts in byte offsets from the sender's ``snd_una``, not in sequence
numbers, so wrap-around never enters its arithmetic; ``advance`` re-bases it when the
cumulative acknowledgement moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pyralog.netstack.tcp_seq import MASK, seq_diff

MAX_BLOCKS = 4  # 2 + 4 * 8 = 34 option bytes: fits the 40 available without timestamps


def receiver_blocks(
    held: Iterable[tuple[int, int]],
    rcv_nxt: int,
    latest: int | None,
    duplicate: tuple[int, int] | None,
) -> tuple[tuple[int, int], ...]:
    """SACK blocks for an ACK: ``held`` are (seq, length) of out-of-order data kept above
    ``rcv_nxt``. A reported duplicate (D-SACK) goes first, then the block holding the most
    recently received segment ``latest``, then the others from the highest down."""
    spans = sorted(
        (seq_diff(seq, rcv_nxt), seq_diff(seq, rcv_nxt) + length) for seq, length in held if length
    )
    merged: list[list[int]] = []
    for start, end in spans:
        if start <= 0:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    first: list[int] | None = None
    if latest is not None:
        at = seq_diff(latest, rcv_nxt)
        for span in merged:
            if span[0] <= at < span[1]:
                first = span
                break
    ordered = ([first] if first else []) + [s for s in reversed(merged) if s is not first]
    blocks = [((rcv_nxt + s) & MASK, (rcv_nxt + e) & MASK) for s, e in ordered]
    if duplicate is not None:
        blocks.insert(0, duplicate)
    return tuple(blocks[:MAX_BLOCKS])


class Scoreboard:
    """Byte ranges [start, end) above snd_una that the receiver has SACKed, disjoint and
    sorted, as offsets from snd_una."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def clear(self) -> None:
        self.ranges.clear()

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        out: list[list[int]] = []
        placed = False
        for s, e in self.ranges:
            if e < start or s > end:
                if not placed and s > end:
                    out.append([start, end])
                    placed = True
                out.append([s, e])
            else:  # overlapping or touching: absorb
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append([start, end])
        self.ranges = out

    def advance(self, acked: int) -> None:
        """snd_una moved up by ``acked`` bytes: re-base and drop what is now acknowledged."""
        if acked <= 0:
            return
        kept = []
        for s, e in self.ranges:
            if e > acked:
                kept.append([max(s - acked, 0), e - acked])
        self.ranges = kept

    @property
    def sacked(self) -> int:
        return sum(e - s for s, e in self.ranges)

    @property
    def highest(self) -> int:
        return self.ranges[-1][1] if self.ranges else 0

    def holes(self) -> Iterator[tuple[int, int, int]]:
        """(start, end, SACKed bytes above) of each gap below the highest SACKed byte."""
        above = self.sacked
        at = 0
        for s, e in self.ranges:
            if s > at:
                yield at, s, above
            above -= e - s
            at = e

    def pipe(self, flight: int, threshold: int, high_rxt: int) -> int:
        """RFC 6675's estimate of bytes still in the network: unSACKed bytes not deemed
        lost, plus retransmissions (of lost bytes below ``high_rxt``) not yet answered.
        A hole is lost once ``threshold`` bytes above it are SACKed."""
        pipe = flight - self.sacked
        for start, end, above in self.holes():
            if above >= threshold:
                pipe -= end - start  # lost, not in flight ...
                pipe += max(0, min(end, high_rxt) - start)  # ... unless resent
        return pipe

    def next_lost(self, start_at: int, threshold: int) -> tuple[int, int] | None:
        """The first lost byte range at or after offset ``start_at``."""
        for start, end, above in self.holes():
            if above < threshold or end <= start_at:
                continue
            return max(start, start_at), end
        return None

    def is_lost(self, offset: int, threshold: int) -> bool:
        return any(
            start <= offset < end and above >= threshold for start, end, above in self.holes()
        )
