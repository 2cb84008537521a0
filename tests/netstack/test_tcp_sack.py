"""Selective acknowledgements: the SACK options on the wire (RFC 2018), the blocks a
receiver reports with D-SACK (RFC 2883), the sender's scoreboard and RFC 6675 loss
recovery, the undo of spurious recoveries, the tail loss probe (RFC 8985 section 7) and
end-to-end transfers that lose specific segments.

Single-connection tests drive a ``TcpConnection`` with hand-made segments from an
imaginary peer that offered SACK-permitted in its SYN-ACK (``sack_client``); the helpers
of test_tcp_connection.py and the two-connection harness of tcplink.py are reused for
everything else. All deterministic: a fake clock, no sleeping, no network.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_segments_and_stack import L4, R4, raw_tcp
from test_tcp_connection import D0, IRS, ISS, R0, client, data_segments

from pyralog.netstack.tcp import MAX_DUPTHRESH, State, TcpConnection, seq_diff
from pyralog.netstack.tcp_sack import MAX_BLOCKS, Scoreboard, receiver_blocks
from pyralog.netstack.tcp_segment import ACK, FIN, SYN, Malformed, Segment, decode
from tcplink import (
    A_IP,
    B_IP,
    MSS,
    PORT_A,
    PORT_B,
    Clock,
    Owner,
    Pair,
    Writer,
    make_pair,
    wire,
)

MASK = 0xFFFFFFFF
WINDOW = 2048  # the peer's window field: 256 KiB with its scale of 7
T = 0.2  # when the peer's ACKs arrive (a round trip after sack_client's flight), by default


# -- helpers -------------------------------------------------------------------------------


def speer(
    seq: int,
    ack: int,
    flags: int = ACK,
    window: int = WINDOW,
    payload: bytes = b"",
    *,
    sack: tuple[tuple[int, int], ...] = (),
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
) -> Segment:
    """A segment from the imaginary peer, with SACK options (``peer()`` has none)."""
    return Segment(
        PORT_B,
        PORT_A,
        seq & MASK,
        ack & MASK,
        flags,
        window,
        payload,
        mss=mss,
        wscale=wscale,
        sack_permitted=sack_permitted,
        sack=tuple((left & MASK, right & MASK) for left, right in sack),
    )


def sack_client(
    clock: Clock, *, rtt: float = 0.1, wscale: int | None = 7, window: int = WINDOW
) -> tuple[TcpConnection, Owner]:
    """An actively opened connection, ESTABLISHED with SACK negotiated, its RTT measured
    on the handshake (srtt = rtt), and the peer's window (``window << wscale``) known."""
    owner = Owner(clock)
    conn = TcpConnection(PORT_A, PORT_B, ISS, MSS, owner)
    conn.connect(clock.now)
    [syn] = conn.segments_to_send()
    assert syn.flags == SYN
    assert syn.sack_permitted  # an active open always offers SACK
    clock.now += rtt
    synack = speer(IRS, ISS + 1, SYN | ACK, 65535, mss=MSS, wscale=wscale, sack_permitted=True)
    conn.receive(synack, clock.now)
    [ack] = conn.segments_to_send()
    assert ack.flags == ACK
    assert conn.state is State.ESTABLISHED
    assert conn.sack_ok
    conn.receive(speer(R0, D0, ACK, window), clock.now)  # the peer's scaled window
    assert conn.segments_to_send() == []
    assert conn.srtt == pytest.approx(rtt)
    return conn, owner


def sacked(*spans: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """SACK blocks for our data, given as (first, end) segment numbers from D0."""
    return tuple(((D0 + a * MSS) & MASK, (D0 + b * MSS) & MASK) for a, b in spans)


def dupack(acked_segments: int, *spans: tuple[int, int]) -> Segment:
    """An ACK from the peer up to segment ``acked_segments`` SACKing ``spans``."""
    return speer(R0, D0 + acked_segments * MSS, sack=sacked(*spans))


def rblock(a: int, b: int) -> tuple[int, int]:
    """A block of the peer's data, as segment numbers from R0."""
    return ((R0 + a * MSS) & MASK, (R0 + b * MSS) & MASK)


def rseg(i: int, fill: bytes = b"x") -> Segment:
    """The peer's full-sized data segment number ``i``."""
    return speer(R0 + i * MSS, D0, ACK, 65535, fill * MSS)


def bulk(conn: TcpConnection, clock: Clock, segments: int, queued: int | None = None) -> None:
    """Queue ``queued`` segments of data; the initial window sends ``segments``."""
    conn.send(b"b" * (queued or segments) * MSS, clock.now)
    assert data_segments(conn.segments_to_send()) == [(i * MSS, MSS) for i in range(segments)]


def resent(log: list[list[tuple[int, int]]], offset: int) -> int:
    """How often the full segment at ``offset`` appears in the collected outputs."""
    return sum(seg == (offset, MSS) for out in log for seg in out)


# -- 1. the options on the wire ------------------------------------------------------------


@pytest.mark.parametrize(
    "blocks",
    [
        ((D0, D0 + 1000),),
        ((5000, 6000), (1000, 2000)),
        # wrap-around: a block across 2**32, and blocks either side of it
        ((0xFFFFFF00, 0x00000100), (0x00000200, 0x00000300), (0xFFFFFE00, 0xFFFFFF00)),
        ((1, 2), (3, 4), (0xFFFFFFFF, 0), (0x7FFFFFFF, 0x80000000)),
    ],
    ids=["1", "2", "3-wrap", "4-wrap"],
)
def test_sack_option_round_trip(blocks: tuple[tuple[int, int], ...]) -> None:
    seg = Segment(PORT_A, PORT_B, 123, 456, ACK, 1000, b"pay", sack=blocks)
    raw = seg.encode(A_IP, B_IP)
    assert (raw[12] >> 4) * 4 == 20 + 4 + 8 * len(blocks)
    assert raw[20:24] == bytes([1, 1, 5, 2 + 8 * len(blocks)])  # NOP NOP kind=5 len
    got = decode(raw, A_IP, B_IP)
    assert got.sack == blocks
    assert (got.seq, got.ack, got.payload) == (123, 456, b"pay")
    assert not got.sack_permitted


def test_sack_option_carries_at_most_four_blocks() -> None:
    blocks = tuple((i * 100, i * 100 + 50) for i in range(6))
    raw = Segment(PORT_A, PORT_B, 1, 2, ACK, 1000, sack=blocks).encode(A_IP, B_IP)
    assert (raw[12] >> 4) * 4 == 20 + 4 + 8 * MAX_BLOCKS
    assert decode(raw, A_IP, B_IP).sack == blocks[:MAX_BLOCKS]


def test_segment_without_sack_has_no_sack_option() -> None:
    raw = Segment(PORT_A, PORT_B, 1, 2, ACK, 1000, b"abc").encode(A_IP, B_IP)
    assert (raw[12] >> 4) * 4 == 20
    assert decode(raw, A_IP, B_IP).sack == ()


@pytest.mark.parametrize(
    ("options", "sack", "mss"),
    [
        # a well-formed block, as a control
        (b"\x05\x0a" + bytes(range(1, 9)) + b"\x01\x01", ((0x01020304, 0x05060708),), None),
        # length 2: no blocks at all; ignored
        (b"\x05\x02\x01\x01", (), None),
        # length not 2 + 8n: ignored, parsing goes on by the length given (MSS after it)
        (b"\x05\x09" + bytes(7) + b"\x01\x01\x01", (), None),
        (b"\x05\x0b" + bytes(9) + b"\x02\x04\x05\xb4\x01", (), 1460),
        (b"\x05\x0c" + bytes(10) + b"\x02\x04\x05\xb4", (), 1460),
    ],
    ids=["control", "len2", "len9", "len11", "len12"],
)
def test_sack_option_with_a_wrong_length_is_ignored(
    options: bytes, sack: tuple[tuple[int, int], ...], mss: int | None
) -> None:
    assert len(options) % 4 == 0
    seg = decode(raw_tcp(options, b"xyz"), R4, L4)
    assert seg.sack == sack
    assert seg.mss == mss
    assert seg.payload == b"xyz"


@pytest.mark.parametrize(
    "options",
    [
        b"\x05\x00\x00\x00",  # length 0
        b"\x05\x01\x00\x00",  # length 1
        b"\x05\x12" + bytes(10),  # two blocks claimed, only one present: past the header
        b"\x01\x01\x01\x05",  # kind in the last byte, no room for its length
    ],
    ids=["len0", "len1", "past-header", "no-length-byte"],
)
def test_sack_option_running_past_the_header_is_malformed(options: bytes) -> None:
    with pytest.raises(Malformed):
        decode(raw_tcp(options), R4, L4)


@pytest.mark.parametrize("offered", [True, False])
def test_synack_offers_sack_only_when_the_syn_did(offered: bool) -> None:
    clock = Clock()
    conn = TcpConnection(PORT_A, PORT_B, ISS, MSS, Owner(clock))
    conn.accept(speer(IRS, 0, SYN, 65535, mss=MSS, sack_permitted=offered), clock.now)
    [synack] = conn.segments_to_send()
    assert synack.flags == SYN | ACK
    assert wire(synack).sack_permitted is offered
    assert conn.sack_ok is offered


@pytest.mark.parametrize("answered", [True, False])
def test_active_open_uses_sack_only_if_the_synack_permits_it(answered: bool) -> None:
    clock = Clock()
    conn = TcpConnection(PORT_A, PORT_B, ISS, MSS, Owner(clock))
    conn.connect(clock.now)
    [syn] = conn.segments_to_send()
    assert wire(syn).sack_permitted
    conn.receive(speer(IRS, ISS + 1, SYN | ACK, 65535, mss=MSS, sack_permitted=answered), 0.1)
    assert conn.state is State.ESTABLISHED
    assert conn.sack_ok is answered


def test_make_pair_negotiates_sack_on_both_sides() -> None:
    pair = make_pair()
    assert pair.a.sack_ok and pair.b.sack_ok


# -- 2. receiver_blocks --------------------------------------------------------------------


def test_receiver_blocks_merge_adjacent_and_overlapping_segments() -> None:
    held = [(100, 10), (110, 10), (115, 20), (200, 5), (150, 0)]  # (150, 0): nothing
    assert receiver_blocks(held, 50, None, None) == ((200, 205), (100, 135))


def test_receiver_blocks_latest_first_then_from_the_highest_down() -> None:
    held = [(300, 10), (100, 10), (400, 10), (200, 10)]
    assert receiver_blocks(held, 50, 200, None) == ((200, 210), (400, 410), (300, 310), (100, 110))
    assert receiver_blocks(held, 50, 405, None)[0] == (400, 410)  # inside a block
    # no latest, or one no longer held: simply from the highest down
    descending = ((400, 410), (300, 310), (200, 210), (100, 110))
    assert receiver_blocks(held, 50, None, None) == descending
    assert receiver_blocks(held, 50, 250, None) == descending


def test_receiver_blocks_latest_in_a_merged_block_reports_the_whole_block() -> None:
    held = [(100, 10), (110, 10), (300, 10)]
    assert receiver_blocks(held, 50, 110, None) == ((100, 120), (300, 310))


def test_receiver_blocks_dsack_first() -> None:
    held = [(100, 10), (300, 10)]
    assert receiver_blocks(held, 50, 100, (20, 30)) == ((20, 30), (100, 110), (300, 310))
    # a duplicate of held data: the D-SACK, then the block that holds it (RFC 2883 4.2)
    assert receiver_blocks(held, 50, 300, (300, 310)) == ((300, 310), (300, 310), (100, 110))
    # nothing held: the D-SACK alone
    assert receiver_blocks([], 50, None, (10, 50)) == ((10, 50),)


def test_receiver_blocks_at_most_four() -> None:
    held = [(i * 100, 10) for i in range(1, 8)]  # seven separate blocks
    assert receiver_blocks(held, 50, 100, None) == ((100, 110), (700, 710), (600, 610), (500, 510))
    # with a D-SACK, three blocks are left for the rest
    assert receiver_blocks(held, 50, 100, (10, 20)) == (
        (10, 20),
        (100, 110),
        (700, 710),
        (600, 610),
    )


def test_receiver_blocks_ignore_data_not_above_rcv_nxt() -> None:
    assert receiver_blocks([(50, 10), (40, 30), (70, 5)], 50, None, None) == ((70, 75),)


def test_receiver_blocks_across_sequence_wrap() -> None:
    rcv_nxt = 2**32 - 100
    held = [(2**32 - 50, 100), (10, 10), (60, 40), (2**32 - 80, 10)]
    # (2**32 - 50) .. 50 across the wrap, merged with nothing; 50..60 is a hole
    blocks = receiver_blocks(held, rcv_nxt, 2**32 - 80, None)
    assert blocks == ((2**32 - 80, 2**32 - 70), (60, 100), (2**32 - 50, 50))
    # ordered by sequence space, not by the raw numbers
    assert receiver_blocks(held, rcv_nxt, None, None) == blocks[1:] + blocks[:1]
    # adjacent across the wrap: merged
    assert receiver_blocks([(2**32 - 10, 10), (0, 10)], rcv_nxt, None, None) == ((2**32 - 10, 10),)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    rcv_nxt=st.integers(0, MASK),
    held=st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 400)), max_size=12),
    pick=st.none() | st.integers(0, 11),
    duplicate=st.none() | st.tuples(st.integers(0, MASK), st.integers(0, MASK)),
)
def test_receiver_blocks_match_a_byte_model(
    rcv_nxt: int,
    held: list[tuple[int, int]],
    pick: int | None,
    duplicate: tuple[int, int] | None,
) -> None:
    have = {offset for start, length in held for offset in range(start, start + length)}
    runs: list[tuple[int, int]] = []
    for offset in sorted(have):
        if runs and runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    latest = held[pick][0] if pick is not None and pick < len(held) else None
    first = [r for r in runs if latest is not None and r[0] <= latest < r[1]]
    expected = first + [r for r in reversed(runs) if r not in first]
    expected_blocks = [((rcv_nxt + s) & MASK, (rcv_nxt + e) & MASK) for s, e in expected]
    if duplicate is not None:
        expected_blocks.insert(0, duplicate)
    seqs = [((rcv_nxt + start) & MASK, length) for start, length in held]
    latest_seq = None if latest is None else (rcv_nxt + latest) & MASK
    got = receiver_blocks(seqs, rcv_nxt, latest_seq, duplicate)
    assert got == tuple(expected_blocks[:MAX_BLOCKS])


# -- 3. Scoreboard -------------------------------------------------------------------------


def board_of(*ranges: tuple[int, int]) -> Scoreboard:
    board = Scoreboard()
    for start, end in ranges:
        board.add(start, end)
    return board


def test_scoreboard_add_keeps_ranges_sorted_disjoint_and_merged() -> None:
    board = Scoreboard()
    assert not board
    board.add(50, 60)
    board.add(10, 20)  # before: inserted in order
    board.add(30, 40)
    assert board.ranges == [[10, 20], [30, 40], [50, 60]]
    board.add(20, 25)  # touching: absorbed
    assert board.ranges == [[10, 25], [30, 40], [50, 60]]
    board.add(35, 55)  # bridges two ranges
    assert board.ranges == [[10, 25], [30, 60]]
    board.add(0, 100)  # swallows everything
    assert board.ranges == [[0, 100]]
    board.add(70, 70)  # empty
    board.add(80, 75)  # inverted
    assert board.ranges == [[0, 100]]
    assert (board.sacked, board.highest) == (100, 100)
    board.clear()
    assert not board
    assert (board.sacked, board.highest) == (0, 0)


def test_scoreboard_advance_rebases_and_drops_what_is_acknowledged() -> None:
    board = board_of((1000, 2000), (3000, 5000), (6000, 7000))
    board.advance(0)
    assert board.ranges == [[1000, 2000], [3000, 5000], [6000, 7000]]
    board.advance(2000)  # the first range is now below snd_una
    assert board.ranges == [[1000, 3000], [4000, 5000]]
    board.advance(1500)  # into the middle of a range: clipped at 0
    assert board.ranges == [[0, 1500], [2500, 3500]]
    assert (board.sacked, board.highest) == (2500, 3500)
    board.advance(10_000)
    assert not board


def test_scoreboard_holes_pipe_next_lost_and_is_lost() -> None:
    # flight 10000: SACKed [2000,5000) and [6000,9000); holes [0,2000) and [5000,6000)
    board = board_of((6000, 9000), (2000, 5000))
    assert board.sacked == 6000
    assert board.highest == 9000
    assert list(board.holes()) == [(0, 2000, 6000), (5000, 6000, 3000)]
    # threshold 2001: both holes lost; in flight only [9000,10000)
    assert board.pipe(10_000, 2001, 0) == 1000
    assert board.pipe(10_000, 2001, 1500) == 2500  # + [0,1500) resent
    assert board.pipe(10_000, 2001, 5500) == 3500  # + [0,2000) and [5000,5500) resent
    assert board.pipe(10_000, 2001, 9000) == 4000  # + both holes, no more
    # threshold 3001: only the first hole is lost; [5000,6000) counts as in flight
    assert board.pipe(10_000, 3001, 0) == 2000
    assert board.pipe(10_000, 3001, 5500) == 4000  # + [0,2000); [5000,6000) counted once
    # threshold 6001: nothing lost
    assert board.pipe(10_000, 6001, 9000) == 4000

    assert board.next_lost(0, 2001) == (0, 2000)
    assert board.next_lost(1500, 2001) == (1500, 2000)
    assert board.next_lost(2000, 2001) == (5000, 6000)
    assert board.next_lost(5500, 2001) == (5500, 6000)
    assert board.next_lost(6000, 2001) is None
    assert board.next_lost(2000, 3001) is None
    assert board.next_lost(0, 6001) is None

    assert board.is_lost(0, 2001)
    assert board.is_lost(1999, 6000)
    assert not board.is_lost(1999, 6001)
    assert board.is_lost(5000, 3000)
    assert not board.is_lost(5000, 3001)
    assert not board.is_lost(3000, 1)  # SACKed
    assert not board.is_lost(9500, 1)  # above the highest SACK: not a hole


def test_empty_scoreboard_has_no_holes() -> None:
    board = Scoreboard()
    assert list(board.holes()) == []
    assert board.pipe(5000, 1, 0) == 5000
    assert board.next_lost(0, 1) is None
    assert not board.is_lost(0, 1)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60), st.integers(0, 60)),
        st.tuples(st.just("advance"), st.integers(0, 20), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    steps=ops,
    threshold=st.integers(1, 30),
    high_rxt=st.integers(0, 70),
    extra=st.integers(0, 10),
)
def test_scoreboard_matches_a_byte_model(
    steps: list[tuple[str, int, int]], threshold: int, high_rxt: int, extra: int
) -> None:
    """Every answer agrees with a set of SACKed byte offsets and RFC 6675's IsLost applied
    byte by byte (a byte is lost when ``threshold`` SACKed bytes lie above it)."""
    board = Scoreboard()
    have: set[int] = set()
    for op, x, y in steps:
        if op == "add":
            board.add(x, y)
            have |= set(range(x, y))
        else:
            board.advance(x)
            have = {b - x for b in have if b >= x}
    runs: list[list[int]] = []
    for b in sorted(have):
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    assert board.ranges == runs
    assert board.sacked == len(have)
    assert board.highest == (max(have) + 1 if have else 0)

    def lost(b: int) -> bool:
        return b not in have and sum(1 for s in have if s > b) >= threshold

    flight = board.highest + extra
    expected_pipe = sum(1 for b in range(flight) if b not in have and (not lost(b) or b < high_rxt))
    assert board.pipe(flight, threshold, high_rxt) == expected_pipe
    for b in range(flight + 2):
        assert board.is_lost(b, threshold) is lost(b)
        first = next((c for c in range(b, flight) if lost(c)), None)
        if first is None:
            assert board.next_lost(b, threshold) is None
        else:
            end = min(s for s in have if s > first)
            assert board.next_lost(b, threshold) == (first, end)


# -- 4. the receiver -----------------------------------------------------------------------


def acks_of(conn: TcpConnection) -> list[Segment]:
    out = conn.segments_to_send()
    for seg in out:
        assert wire(seg).sack == seg.sack  # what the peer really gets
    return out


def test_out_of_order_segments_get_immediate_duplicate_acks_with_sack_blocks() -> None:
    clock = Clock()
    conn, owner = sack_client(clock)
    expected = [
        (2, (rblock(2, 3),)),
        (5, (rblock(5, 6), rblock(2, 3))),
        (3, (rblock(2, 4), rblock(5, 6))),  # adjacent: merged, and the latest comes first
        (7, (rblock(7, 8), rblock(5, 6), rblock(2, 4))),
        (9, (rblock(9, 10), rblock(7, 8), rblock(5, 6), rblock(2, 4))),
        (11, (rblock(11, 12), rblock(9, 10), rblock(7, 8), rblock(5, 6))),  # four at most
        (8, (rblock(7, 10), rblock(11, 12), rblock(5, 6), rblock(2, 4))),
    ]
    for i, blocks in expected:
        conn.receive(rseg(i, bytes([48 + i])), 1.0)
        [dup] = acks_of(conn)
        assert (dup.flags, dup.ack, dup.payload) == (ACK, R0, b"")
        assert dup.sack == blocks, f"after segment {i}"
    assert owner.received == b""
    # filling the first hole: an immediate ACK, still reporting what is held above
    conn.receive(rseg(0, b"0"), 1.0)
    [ack] = acks_of(conn)
    assert ack.ack == R0 + MSS
    assert set(ack.sack) == {rblock(2, 4), rblock(5, 6), rblock(7, 10), rblock(11, 12)}
    for i in (1, 4, 6, 10):
        conn.receive(rseg(i, bytes([48 + i])), 1.0)
        acks_of(conn)
    # all holes filled: nothing held, no blocks
    assert conn.rcv_nxt == R0 + 12 * MSS
    conn.receive(speer(R0 + 12 * MSS, D0, ACK, 65535, b"end"), 1.0)
    [ack] = acks_of(conn)
    assert (ack.ack, ack.sack) == (R0 + 12 * MSS + 3, ())
    assert bytes(owner.received) == b"".join(bytes([48 + i]) * MSS for i in range(12)) + b"end"


def test_duplicate_below_rcv_nxt_is_reported_once_as_dsack() -> None:
    clock = Clock()
    conn, owner = sack_client(clock)
    conn.receive(rseg(0, b"a"), 1.0)
    conn.receive(rseg(1, b"b"), 1.0)
    [ack] = acks_of(conn)
    assert (ack.ack, ack.sack) == (R0 + 2 * MSS, ())
    conn.receive(rseg(0, b"A"), 1.1)  # an old duplicate
    [dsack] = acks_of(conn)
    assert (dsack.flags, dsack.ack, dsack.sack) == (ACK, R0 + 2 * MSS, (rblock(0, 1),))
    assert bytes(owner.received) == b"a" * MSS + b"b" * MSS
    # the next ACK reports the new out-of-order data only: a D-SACK goes once
    conn.receive(rseg(4), 1.2)
    [dup] = acks_of(conn)
    assert dup.sack == (rblock(4, 5),)


def test_partially_duplicate_segment_dsacks_only_the_old_part() -> None:
    clock = Clock()
    conn, owner = sack_client(clock)
    conn.receive(speer(R0, D0, ACK, 65535, b"a" * 1000), 1.0)
    conn.receive(speer(R0 + 500, D0, ACK, 65535, b"b" * 1000), 1.0)
    [ack] = acks_of(conn)
    assert ack.ack == R0 + 1500
    assert ack.sack == ((R0 + 500, R0 + 1000),)
    assert bytes(owner.received) == b"a" * 1000 + b"b" * 500


def test_duplicate_of_held_out_of_order_segment_is_dsacked_with_its_block() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    for i in (2, 3, 6):
        conn.receive(rseg(i), 1.0)
        acks_of(conn)
    conn.receive(rseg(3), 1.1)  # again
    [dup] = acks_of(conn)
    assert dup.ack == R0
    # RFC 2883 4.2: the D-SACK, then the block that contains it, then the others
    assert dup.sack == (rblock(3, 4), rblock(2, 4), rblock(6, 7))


def test_data_segments_never_carry_sack_blocks() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    conn.receive(rseg(2), 1.0)
    [dup] = acks_of(conn)
    assert dup.sack == (rblock(2, 3),)
    conn.send(b"d" * 3 * MSS, 1.0)  # data to send while data is held out of order
    out = acks_of(conn)
    assert data_segments(out) == [(0, MSS), (MSS, MSS), (2 * MSS, MSS)]
    for seg in out:
        assert seg.sack == ()
        raw = seg.encode(A_IP, B_IP)
        assert (raw[12] >> 4) * 4 == 20  # no options at all
    # a duplicate arriving now still gets a pure ACK with blocks, not a data segment
    conn.receive(speer(R0 + 4 * MSS, D0, ACK, 65535, b"y" * MSS), 1.1)
    [dup] = acks_of(conn)
    assert (dup.payload, dup.sack) == (b"", (rblock(4, 5), rblock(2, 3)))


def test_no_sack_blocks_when_sack_was_not_negotiated() -> None:
    clock = Clock()
    conn, owner = client(clock)  # its peer's SYN-ACK has no SACK-permitted
    assert not conn.sack_ok
    conn.receive(rseg(2), 1.0)
    [dup] = acks_of(conn)
    assert (dup.ack, dup.sack) == (R0, ())
    assert (dup.encode(A_IP, B_IP)[12] >> 4) * 4 == 20
    conn.receive(rseg(0, b"a"), 1.0)
    acks_of(conn)
    conn.receive(rseg(0, b"A"), 1.1)  # a duplicate: no D-SACK either
    [ack] = acks_of(conn)
    assert (ack.ack, ack.sack) == (R0 + MSS, ())
    conn.receive(rseg(2), 1.2)  # a duplicate of held data
    [ack] = acks_of(conn)
    assert ack.sack == ()
    assert bytes(owner.received) == b"a" * MSS


# -- 5. the sender: RFC 6675 recovery ------------------------------------------------------


@pytest.mark.parametrize("k", [0, 4])
def test_sacks_around_one_hole_resend_exactly_it_once_then_new_data_as_pipe_allows(
    k: int,
) -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10, queued=60)
    log: list[list[tuple[int, int]]] = []
    if k:  # segments 0..k-1 arrive; slow start sends more
        conn.receive(dupack(k), T)
        log.append(data_segments(conn.segments_to_send()))
        assert resent(log, k * MSS) == 0
    top = seq_diff(conn.snd_max, D0) // MSS  # segments sent so far: k+1 .. top-1 arrive
    entry: dict[str, int] = {}
    for j in range(k + 1, top):
        before = seq_diff(conn.snd_max, conn.snd_una), conn.cwnd
        conn.receive(dupack(k, (k + 1, j + 1)), T)
        out = data_segments(conn.segments_to_send())
        log.append(out)
        s = j - k  # segments SACKed so far
        if s < 3:
            assert not conn.in_recovery
            assert out == []
            continue
        if s == 3:  # the third duplicate ACK, with 3 segments SACKed above the hole
            assert conn.in_recovery
            assert out[0] == (k * MSS, MSS)
            flight, cwnd = before
            assert conn.ssthresh == conn.cwnd == max(flight // 2, 2 * MSS)
            assert conn.recover == D0 + top * MSS  # snd_max at entry
            entry = {"flight": flight // MSS, "cwnd": conn.cwnd // MSS, "snd_max": top}
            assert cwnd > conn.cwnd
        # RFC 6675: pipe = flight - SACKed - lost + resent; new segments go while
        # pipe < cwnd, so after s SACKed: new = max(0, cwnd - flight + s)
        new = [seg for out in log for seg in out if seg[0] >= entry["snd_max"] * MSS]
        assert len(new) == max(0, entry["cwnd"] - entry["flight"] + s), f"after {s} SACKed"
        assert [seg[0] // MSS for seg in new] == list(
            range(entry["snd_max"], entry["snd_max"] + len(new))
        )
    assert resent(log, k * MSS) == 1  # exactly once, however many ACKs followed
    assert conn.in_recovery
    # the retransmission arrives: everything outstanding at entry is acknowledged
    conn.receive(dupack(entry["snd_max"]), T)
    out = data_segments(conn.segments_to_send())
    assert not conn.in_recovery
    flight = seq_diff(conn.snd_max, conn.snd_una) - MSS * len(out)
    assert conn.cwnd == min(conn.ssthresh, max(flight, MSS) + MSS)
    assert resent([out], k * MSS) == 0


def test_one_ack_sacking_three_segments_is_enough_to_enter_recovery() -> None:
    """The scoreboard, not the duplicate count, shows the loss: one ACK SACKs more than
    (dupthresh - 1) * MSS bytes above the first hole."""
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    conn.receive(dupack(0, (1, 4)), T)
    assert conn.dupacks == 1
    assert conn.in_recovery
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]


def test_two_sacked_segments_are_not_enough() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    conn.receive(dupack(0, (1, 3)), T)
    conn.receive(dupack(0, (1, 3)), T)  # SACKs nothing new: with SACK, not a duplicate
    assert conn.dupacks == 1
    assert not conn.in_recovery
    assert conn.segments_to_send() == []


def test_an_ack_sacking_new_data_counts_as_duplicate_even_if_the_window_moved() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    for j, window in ((2, WINDOW - 1), (3, WINDOW - 2)):
        seg = dupack(0, (1, j))
        seg.window = window
        conn.receive(seg, T)
    assert conn.dupacks == 2
    seg = speer(R0, D0, window=WINDOW - 3)  # a window update, no SACK: not a duplicate
    conn.receive(seg, T)
    assert conn.dupacks == 2


def test_small_flight_hole_is_lost_once_everything_after_it_is_sacked() -> None:
    """Two segments out, the first lost: one SACK of the second is all the peer can
    say, and it must be enough (threshold capped at flight - MSS)."""
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 2)
    conn.receive(dupack(0, (1, 2)), T)
    assert conn.in_recovery
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]
    conn.receive(dupack(2), T + 0.1)
    assert not conn.in_recovery
    assert conn.next_deadline() is None


def test_hole_before_our_fin_is_lost_once_everything_after_it_is_sacked() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    conn.send(b"x" * 2 * MSS, clock.now)
    conn.close(clock.now)
    out = conn.segments_to_send()
    assert data_segments(out) == [(0, MSS), (MSS, MSS)]
    assert out[-1].flags & FIN
    # segment 0 lost; segment 1 and then the FIN arrive: two duplicate ACKs SACKing 1
    conn.receive(dupack(0, (1, 2)), T)
    conn.receive(dupack(0, (1, 2)), T)
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]


def test_two_segment_hole_below_the_last_segment_is_recovered_without_timeout() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    bulk(conn, clock, 3)  # 0 and 1 are lost, 2 arrives
    conn.receive(dupack(0, (2, 3)), T)
    log = [data_segments(conn.segments_to_send())]
    if not conn.in_recovery:
        d = conn.next_deadline()
        assert d is not None
        conn.tick(d)  # the tail loss probe: the last segment again
        out = data_segments(conn.segments_to_send())
        assert (out, conn.retries) == ([(2 * MSS, MSS)], 0)
        log.append(out)
        conn.receive(speer(R0, D0, sack=sacked((2, 3), (2, 3))), d + 0.1)  # its D-SACK
        log.append(data_segments(conn.segments_to_send()))
    assert resent(log, 0) == 1
    assert conn.retries == 0


def test_sack_blocks_beyond_what_was_sent_are_clipped_or_ignored() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10, queued=60)
    conn.receive(dupack(0, (20, 25)), T)  # entirely beyond snd_max: ignored
    conn.receive(dupack(0, (20, 25)), T)
    assert conn.dupacks == 0  # they SACK nothing we sent, so they are no duplicates
    assert not conn.in_recovery
    assert conn.segments_to_send() == []
    # (1, 30) counts as (1, 10): pipe = 10 - 9 SACKed - 1 lost + 1 resent = 1 segment,
    # so cwnd (5) lets 4 new segments go, not a burst for 20 segments never sent
    conn.receive(dupack(0, (1, 30)), T)
    assert conn.in_recovery
    out = data_segments(conn.segments_to_send())
    assert out == [(0, MSS)] + [(i * MSS, MSS) for i in range(10, 14)]


def test_second_hole_is_resent_once_it_is_lost_and_each_hole_only_once() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10, queued=60)  # segments 0 and 5 are lost
    log: list[list[tuple[int, int]]] = []
    for j in range(1, 5):
        conn.receive(dupack(0, (1, j + 1)), T)
        log.append(data_segments(conn.segments_to_send()))
    assert conn.in_recovery
    assert resent(log, 0) == 1
    assert resent(log, 5 * MSS) == 0
    for j in range(6, 10):
        conn.receive(dupack(0, (6, j + 1), (1, 5)), T)
        out = data_segments(conn.segments_to_send())
        log.append(out)
        # segment 5 is lost once three segments (6, 7, 8) are SACKed above it
        assert ((5 * MSS, MSS) in out) is (j == 8), f"after segment {j}"
    assert resent(log, 0) == resent(log, 5 * MSS) == 1
    # the retransmitted segment 0 arrives: a partial ACK, still in recovery
    conn.receive(dupack(5, (6, 10)), T)
    log.append(data_segments(conn.segments_to_send()))
    assert conn.in_recovery
    # the retransmitted segment 5 arrives: everything outstanding at entry is acknowledged
    conn.receive(dupack(10), T)
    log.append(data_segments(conn.segments_to_send()))
    assert not conn.in_recovery
    assert resent(log, 0) == resent(log, 5 * MSS) == 1
    sent = Counter(seg for out in log for seg in out)
    assert all(n == 1 for n in sent.values()), "nothing sent twice after the first flight"


def test_recovery_never_resends_bytes_twice_even_with_many_acks() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10, queued=200)
    log: list[list[tuple[int, int]]] = []
    top = 10
    # segment 0 lost; the peer SACKs everything else, one ACK per segment, for a while
    for j in range(1, 40):
        conn.receive(dupack(0, (1, min(j, top) + 1)), T)
        out = data_segments(conn.segments_to_send())
        log.append(out)
        top = seq_diff(conn.snd_max, D0) // MSS - 1
    assert conn.in_recovery
    assert resent(log, 0) == 1
    assert all(n == 1 for n in Counter(seg for out in log for seg in out).values())


# -- 5b. undoing spurious recoveries -------------------------------------------------------


def spurious_recovery(conn: TcpConnection) -> None:
    """Segment 0 of a 10-segment flight is only late: recovery resends it, the original
    arrives (a full ACK), then the peer D-SACKs the retransmission."""
    for j in range(1, 10):
        conn.receive(dupack(0, (1, j + 1)), T)
        conn.segments_to_send()
    assert conn.in_recovery
    conn.receive(dupack(10), T)
    assert not conn.in_recovery
    conn.receive(dupack(10, (0, 1)), T)  # D-SACK: below the cumulative ACK


def test_dsack_of_the_only_retransmission_undoes_the_recovery() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    cwnd, ssthresh = conn.cwnd, conn.ssthresh
    for j in range(1, 4):
        conn.receive(dupack(0, (1, j + 1)), T)
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]
    assert (conn.cwnd, conn.ssthresh) == (5 * MSS, 5 * MSS)
    for j in range(4, 10):
        conn.receive(dupack(0, (1, j + 1)), T)
    conn.receive(dupack(10), T)  # the original, merely late, arrives
    assert not conn.in_recovery
    assert conn.cwnd < cwnd
    assert conn.dupthresh == 3  # nothing proven yet
    conn.receive(dupack(10, (0, 1)), T)  # then the retransmission: D-SACK
    assert (conn.cwnd, conn.ssthresh) == (cwnd, ssthresh)
    assert conn.dupthresh == 6


def test_undo_needs_every_retransmission_dsacked_including_dsacks_above_the_ack() -> None:
    """Segments 0 and 1 are both late: both are resent. The D-SACK of 1 arrives while
    0 is still missing (RFC 2883 4.2: a first block inside the second), that of 0 after
    the full ACK (below the cumulative ACK). Only when both are in is it undone."""
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    cwnd, ssthresh = conn.cwnd, conn.ssthresh
    log = []
    for j in range(2, 10):
        conn.receive(dupack(0, (2, j + 1)), T)
        log.append(data_segments(conn.segments_to_send()))
    assert resent(log, 0) == resent(log, MSS) == 1
    conn.receive(dupack(0, (1, 10)), T)  # the original segment 1 arrives
    conn.receive(dupack(0, (1, 2), (1, 10)), T)  # the retransmitted 1: D-SACK
    conn.receive(dupack(10), T)  # the original segment 0: full ACK
    assert not conn.in_recovery
    assert (conn.dupthresh, conn.ssthresh) == (3, 5 * MSS)  # 0 not yet shown needless
    conn.receive(dupack(10, (0, 1)), T)  # the retransmitted 0: D-SACK
    assert (conn.cwnd, conn.ssthresh, conn.dupthresh) == (cwnd, ssthresh, 6)


def test_undo_waits_for_the_end_of_the_recovery() -> None:
    """Segments 0 and 5 are late. Only 0 has been resent when the original 0 arrives (a
    partial ACK) and then its retransmission (D-SACK): every retransmission is shown
    needless, but the recovery is not over until 5..9 are acknowledged."""
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    cwnd, ssthresh = conn.cwnd, conn.ssthresh
    for j in range(1, 5):
        conn.receive(dupack(0, (1, j + 1)), T)
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]
    conn.receive(dupack(5), T)  # the original 0: a partial ACK
    conn.receive(dupack(5, (0, 1)), T)  # the retransmitted 0: D-SACK
    assert conn.in_recovery
    assert (conn.cwnd, conn.ssthresh, conn.dupthresh) == (5 * MSS, 5 * MSS, 3)
    conn.receive(dupack(10), T)  # 5..9 arrive: the full ACK
    assert not conn.in_recovery
    assert (conn.cwnd, conn.ssthresh, conn.dupthresh) == (cwnd, ssthresh, 6)


def test_genuine_loss_is_not_undone() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    for j in range(1, 10):
        conn.receive(dupack(0, (1, j + 1)), T)
    conn.segments_to_send()
    conn.receive(dupack(10), T)  # the retransmission filled the hole; no D-SACK follows
    assert not conn.in_recovery
    assert conn.ssthresh == 5 * MSS
    assert conn.cwnd == 2 * MSS  # min(ssthresh, max(flight, MSS) + MSS) with nothing out
    assert conn.dupthresh == 3


def test_dsack_of_bytes_never_retransmitted_does_not_undo() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    for j in range(1, 10):
        conn.receive(dupack(0, (1, j + 1)), T)
    conn.segments_to_send()
    conn.receive(dupack(10), T)  # genuine loss of segment 0, repaired
    cwnd, ssthresh = conn.cwnd, conn.ssthresh
    # the network duplicated segment 2 (sent once, never retransmitted)
    conn.receive(dupack(10, (2, 3)), T)
    assert (conn.cwnd, conn.ssthresh, conn.dupthresh) == (cwnd, ssthresh, 3)


def test_doubled_dupthresh_needs_more_sacked_segments_next_time() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    bulk(conn, clock, 10)
    spurious_recovery(conn)
    assert conn.dupthresh == 6
    conn.send(b"c" * 10 * MSS, T)
    assert len(data_segments(conn.segments_to_send())) == 10  # segments 10..19
    for j in range(11, 20):  # segment 10 is missing
        conn.receive(dupack(10, (11, j + 1)), T)
        out = data_segments(conn.segments_to_send())
        # (6 - 1) * MSS + 1 bytes above the hole, or 6 duplicates: the sixth SACK
        assert conn.in_recovery is (j >= 16), f"after segment {j}"
        assert ((10 * MSS, MSS) in out) is (j == 16)


def test_dupthresh_growth_is_capped() -> None:
    clock = Clock()
    conn, _ = sack_client(clock)
    conn.dupthresh = 40
    bulk(conn, clock, 10)
    cwnd = conn.cwnd
    # segment 0 late: a threshold of 40 segments is capped at flight - MSS, so the hole
    # is lost only once all of 1..9 are SACKed
    for j in range(1, 10):
        conn.receive(dupack(0, (1, j + 1)), T)
        assert conn.in_recovery is (j == 9), f"after segment {j}"
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]
    conn.receive(dupack(10), T)  # the original
    conn.receive(dupack(10, (0, 1)), T)  # the retransmission: D-SACK
    assert conn.cwnd == cwnd
    assert conn.dupthresh == MAX_DUPTHRESH == 64


# -- 5c. tail loss probe -------------------------------------------------------------------


def test_lost_tail_is_probed_after_two_srtt_and_recovered_without_timeout() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    bulk(conn, clock, 10)  # all the application has
    t1 = clock.now + 0.1
    conn.receive(dupack(8), t1)  # 8 and 9 are lost
    assert conn.segments_to_send() == []
    rto = conn.rto
    d = conn.next_deadline()
    assert d == pytest.approx(t1 + 2 * conn.srtt)
    assert d < t1 + rto
    conn.tick(d - 1e-6)
    assert conn.segments_to_send() == []
    conn.tick(d)
    # no new data: the last segment again
    assert data_segments(conn.segments_to_send()) == [(9 * MSS, MSS)]
    assert conn.next_deadline() == pytest.approx(d + rto)  # the RTO, no second probe
    # the probe arrives: the peer SACKs it, so 8 is lost (everything above it SACKed)
    conn.receive(dupack(8, (9, 10)), d + 0.1)
    assert conn.in_recovery
    assert data_segments(conn.segments_to_send()) == [(8 * MSS, MSS)]
    conn.receive(dupack(10), d + 0.2)
    assert not conn.in_recovery
    assert conn.next_deadline() is None
    assert (conn.retries, conn.rto) == (0, rto)  # no timeout ever fired


@pytest.mark.parametrize(
    "rtt",
    [
        0.1,
        0.5,
    ],
)
def test_flight_without_any_ack_is_probed_after_two_srtt(rtt: float) -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=rtt)
    t0 = clock.now
    bulk(conn, clock, 10)
    rto = conn.rto
    assert rto == pytest.approx(3 * rtt)  # srtt + 4 * rttvar, rttvar = rtt / 2
    d = conn.next_deadline()
    assert d is not None
    assert d < t0 + rto
    conn.tick(d)
    assert data_segments(conn.segments_to_send()) == [(9 * MSS, MSS)]
    assert conn.retries == 0
    assert d == pytest.approx(t0 + 2 * rtt)


def test_lone_segment_probe_waits_for_a_delayed_ack() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.5)
    t0 = clock.now
    conn.send(b"z" * 500, t0)
    assert data_segments(conn.segments_to_send()) == [(0, 500)]
    assert conn.rto == pytest.approx(1.5)
    d = conn.next_deadline()
    assert d == pytest.approx(t0 + 2 * 0.5 + 0.2)
    conn.tick(d)
    assert data_segments(conn.segments_to_send()) == [(0, 500)]
    assert conn.retries == 0


def test_no_probe_when_it_would_come_after_the_rto() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)  # rto 0.3 < 2 * 0.1 + 0.2
    t0 = clock.now
    conn.send(b"z" * 500, t0)
    conn.segments_to_send()
    d = conn.next_deadline()
    assert d == pytest.approx(t0 + conn.rto)
    conn.tick(d)
    assert data_segments(conn.segments_to_send()) == [(0, 500)]
    assert conn.retries == 1  # it was the retransmission timeout


def test_probe_sends_new_data_when_the_window_allows() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    bulk(conn, clock, 10, queued=40)  # cwnd-limited, the peer's window is large
    cwnd = conn.cwnd
    d = conn.next_deadline()
    assert d is not None
    conn.tick(d)
    assert data_segments(conn.segments_to_send()) == [(10 * MSS, MSS)]
    assert conn.snd_max == D0 + 11 * MSS
    assert conn.cwnd == cwnd
    assert conn.retries == 0


def test_probe_resends_the_last_segment_when_the_peer_window_is_full() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1, wscale=None, window=10 * MSS)
    bulk(conn, clock, 10, queued=20)
    d = conn.next_deadline()
    assert d is not None
    conn.tick(d)
    assert data_segments(conn.segments_to_send()) == [(9 * MSS, MSS)]
    assert conn.snd_max == D0 + 10 * MSS


def test_no_probe_without_sack() -> None:
    clock = Clock()
    conn, _ = client(clock, rtt=0.5, peer_wscale=7)
    t0 = clock.now
    conn.send(b"b" * 10 * MSS, t0)
    conn.segments_to_send()
    assert conn.next_deadline() == pytest.approx(t0 + conn.rto)


def test_no_probe_during_recovery() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    bulk(conn, clock, 10)
    conn.receive(dupack(0, (1, 4)), T)
    assert conn.in_recovery
    assert data_segments(conn.segments_to_send()) == [(0, MSS)]
    rto_at = T + conn.rto
    while (d := conn.next_deadline()) is not None and d < rto_at - 1e-9:
        conn.tick(d)  # a PTO armed before the recovery may still be due: it sends nothing
        assert conn.segments_to_send() == []
    assert conn.next_deadline() == pytest.approx(rto_at)


def test_retransmission_timeout_forgets_the_scoreboard() -> None:
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    bulk(conn, clock, 10)
    conn.receive(dupack(0, (1, 3)), 0.25)  # 1 and 2 SACKed; not enough for recovery
    conn.segments_to_send()
    assert conn._scoreboard
    while conn.retries == 0:
        d = conn.next_deadline()
        assert d is not None
        conn.tick(d)
    out = data_segments(conn.segments_to_send())
    assert out[-1] == (0, MSS)
    assert conn.cwnd == MSS
    assert not conn._scoreboard
    # go-back-N resends the SACKed segments too, as if the receiver had reneged
    conn.receive(dupack(1), clock.now + 1.0)
    assert data_segments(conn.segments_to_send()) == [(MSS, MSS), (2 * MSS, MSS)]
    assert not conn.in_recovery


# -- 6. end to end -------------------------------------------------------------------------


def pair_with(sack: bool) -> Pair:
    """make_pair, with SACK-permitted removed from the SYN unless ``sack``."""
    pair = make_pair(establish=False)
    pair.a.connect(pair.clock.now)
    [syn] = pair.a.segments_to_send()
    syn = wire(syn)
    syn.sack_permitted = sack
    pair.log.append(("a", syn))
    pair.b.accept(syn, pair.clock.now)
    pair.pump()
    assert pair.a.state is pair.b.state is State.ESTABLISHED
    assert pair.a.sack_ok is pair.b.sack_ok is sack
    return pair


def count_timeouts(monkeypatch: pytest.MonkeyPatch) -> list[TcpConnection]:
    fired: list[TcpConnection] = []
    original = TcpConnection._retransmission_timeout

    def counting(self: TcpConnection, now: float) -> None:
        fired.append(self)
        original(self, now)

    monkeypatch.setattr(TcpConnection, "_retransmission_timeout", counting)
    return fired


def drop_first_copies(pair: Pair, segments: set[int]) -> Callable[[str, Segment], Segment | None]:
    """Drop the first copy of a's data segments with these numbers (from a's first byte)."""
    base = pair.a.snd_nxt
    seen: set[int] = set()

    def mangle(name: str, seg: Segment) -> Segment | None:
        if name != "a" or not seg.payload:
            return seg
        number = seq_diff(seg.seq, base) // MSS
        if number in seen:
            return seg
        seen.add(number)
        return None if number in segments else seg

    return mangle


def transfer(pair: Pair, data: bytes, *, close: bool) -> None:
    a = pair.a
    writer = Writer(a, data, close=close)
    if close:
        pair.run([writer], lambda: a.state is State.FIN_WAIT_2 and pair.ob.received == data)
    else:
        pair.run([writer], lambda: pair.ob.received == data and a.snd_una == a.snd_max)


LOSSES = [
    pytest.param({5}, id="one"),
    pytest.param({5, 20, 21, 22, 50, 53}, id="bursts"),
    pytest.param({*range(30, 40), 60}, id="a-window-worth"),
    pytest.param({0, 1, 2, 40, 42, 44, 46}, id="first-flight-and-scattered"),
    pytest.param({5, 20, 21, 22, 50, 53, 98, 99}, id="with-lost-tail"),
    pytest.param({10, *range(30, 40)}, id="the-window-after-a-recovery"),
]


@pytest.mark.parametrize("drops", LOSSES)
def test_transfer_with_specific_losses_recovers_without_timeout(
    drops: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts = count_timeouts(monkeypatch)
    pair = pair_with(sack=True)
    pair.mangle = drop_first_copies(pair, drops)
    data = bytes(random.Random(7).randbytes(100 * MSS))
    transfer(pair, data, close=False)
    assert bytes(pair.ob.received) == data
    assert timeouts == []
    base = (pair.a.iss + 1) & MASK
    sent = Counter(
        seq_diff(seg.seq, base) // MSS for name, seg in pair.log if name == "a" and seg.payload
    )
    # each lost segment resent exactly once, nothing else resent
    assert {n for n, times in sent.items() if times > 1} == drops
    assert max(sent.values()) == 2


def test_the_same_losses_without_sack_need_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss pattern of the test above is beyond NewReno: it shows what SACK buys."""
    timeouts = count_timeouts(monkeypatch)
    pair = pair_with(sack=False)
    pair.mangle = drop_first_copies(pair, {5, 20, 21, 22, 50, 53, 98, 99})
    data = bytes(random.Random(7).randbytes(100 * MSS))
    transfer(pair, data, close=False)
    assert bytes(pair.ob.received) == data
    assert timeouts


def test_lost_tail_followed_by_fin_recovers_without_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts = count_timeouts(monkeypatch)
    pair = pair_with(sack=True)
    pair.mangle = drop_first_copies(pair, {98, 99})
    data = bytes(random.Random(8).randbytes(100 * MSS))
    transfer(pair, data, close=True)
    assert bytes(pair.ob.received) == data
    assert timeouts == []


def test_reordering_is_undone_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segment 20 takes 15 ms longer than the others (reordering, not loss): the
    recovery it triggers is undone by the D-SACK of its retransmission."""
    timeouts = count_timeouts(monkeypatch)
    pair = pair_with(sack=True)
    a = pair.a
    ssthresh = a.ssthresh
    base = a.snd_nxt
    seen: set[int] = set()

    def delay(name: str, seg: Segment) -> float:
        if name == "a" and seg.payload:
            number = seq_diff(seg.seq, base) // MSS
            if number not in seen:
                seen.add(number)
                return 0.015 if number == 20 else 0.0
        return 0.0

    data = bytes(random.Random(9).randbytes(60 * MSS))
    pair.run_over_link(  # 10 ms each way, plus the delay
        [Writer(a, data, close=False)],
        lambda: pair.ob.received == data and a.snd_una == a.snd_max,
        lambda name, seg, now: [now + 0.01 + delay(name, seg)],
        limit=60,
    )
    assert bytes(pair.ob.received) == data
    assert timeouts == []
    dsacks = [
        seg.sack[0]
        for name, seg in pair.log
        if name == "b" and seg.sack and seq_diff(seg.sack[0][1], seg.ack) <= 0
    ]
    assert ((base + 20 * MSS) & MASK, (base + 21 * MSS) & MASK) in dsacks
    resends = Counter(seg.seq for name, seg in pair.log if name == "a" and seg.payload)
    assert resends[(base + 20 * MSS) & MASK] == 2  # the recovery did happen
    assert a.dupthresh == 6
    assert a.ssthresh == ssthresh  # the cut was undone
    assert not a.in_recovery


def test_probe_proves_holes_lost_even_with_a_grown_duplicate_threshold() -> None:
    """RACK-TLP (RFC 8985 7.4): once reordering has pushed the duplicate threshold past
    the window, the holes below a delivered probe are lost and resent, with no timeout."""
    clock = Clock()
    conn, _ = sack_client(clock, rtt=0.1)
    conn.dupthresh = 64  # as after several recoveries undone by D-SACK
    sent_at = clock.now
    bulk(conn, clock, 10, queued=12)
    t1 = clock.now + 0.05
    # 0 and 5 are missing; everything else arrives. Far below 63 segments SACKed, and two
    # holes, so neither the count nor the "lone missing segment" rule calls them lost.
    for j in (2, 3, 4):
        conn.receive(dupack(0, (1, j)), t1)
    for j in (7, 8, 9, 10):
        conn.receive(dupack(0, (1, 5), (6, j)), t1)
    assert not conn.in_recovery
    assert conn.segments_to_send() == []
    probe_at = conn.next_deadline()  # duplicate ACKs do not restart it (RFC 8985 7.2)
    assert probe_at == pytest.approx(sent_at + 2 * conn.srtt)
    assert probe_at < sent_at + conn.rto
    conn.tick(probe_at)
    [probe] = data_segments(conn.segments_to_send())
    assert probe == (10 * MSS, MSS)  # new data fits the peer's window: the probe is new
    conn.receive(dupack(0, (1, 5), (6, 11)), probe_at + 0.1)  # the probe arrived
    assert conn.in_recovery
    out = data_segments(conn.segments_to_send())
    assert out[:2] == [(0, MSS), (5 * MSS, MSS)]  # both holes, each once
    conn.receive(dupack(11), probe_at + 0.2)
    assert not conn.in_recovery
    assert conn.retries == 0  # no retransmission timeout fired
