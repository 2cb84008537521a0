"""The receiving half (tcp_receive) on its own: acceptability (RFC 9293 3.10.7.4),
reassembly and its bound, D-SACK reports (RFC 2883), the FIN, and the advertised window
(RFC 7323 scaling, a right edge that never moves left, the over-commit cap)."""

from __future__ import annotations

import random

import pytest

from pyralog.netstack.tcp_receive import OVERCOMMIT_DIVISOR, Receiver
from pyralog.netstack.tcp_segment import ACK, FIN, Segment
from pyralog.netstack.tcp_seq import MASK, seq_diff, seq_le

IRS = 0xFFFFFF00  # the peer's SYN; data crosses the sequence wrap soon after
D0 = (IRS + 1) & MASK  # the first data byte


def at(offset: int) -> int:
    return (D0 + offset) & MASK


class Rx:
    """A Receiver and the FINs it reported."""

    def __init__(self, size: int = 10_000, wscale: int = 0) -> None:
        self.fins: list[float] = []
        self.r = Receiver(size, self.fins.append)
        self.r.start(IRS, wscale)

    def arrive(self, offset: int, data: bytes, fin: bool = False, *, sack_ok: bool = True) -> int:
        return self.r.arrive(at(offset), data, fin, sack_ok, 7.0)


def chunk(offset: int, n: int) -> bytes:
    return bytes((offset + i) & 0xFF for i in range(n))


def test_start() -> None:
    r = Receiver(100_000, lambda now: None)
    r.start(IRS, 7)
    assert r.rcv_nxt == D0 and r.wscale == 7
    assert r.adv == (D0 + 0xFFFF) & MASK  # what the unscaled SYN window promised
    assert r.accept_window() == 100_000


def test_in_order_then_read() -> None:
    rx = Rx()
    assert rx.arrive(0, chunk(0, 300)) == 300
    assert rx.arrive(300, chunk(300, 200)) == 200
    assert rx.r.rcv_nxt == at(500) and rx.r.space() == 10_000 - 500
    assert rx.r.read(400) == chunk(0, 400)
    assert rx.r.read(400) == chunk(400, 100)
    assert rx.r.read(400) == b""


def test_out_of_order_is_held_then_drained_in_one_pass() -> None:
    rx = Rx()
    assert rx.arrive(300, chunk(300, 100)) == -1
    assert rx.arrive(100, chunk(100, 100)) == -1
    assert rx.arrive(500, chunk(500, 100)) == -1  # beyond a second hole
    assert rx.r.ooo_bytes == 300 and rx.r.rcv_nxt == D0 and rx.r.latest_ooo == at(500)
    assert rx.arrive(0, chunk(0, 100)) == 100  # the segment's own bytes ...
    assert rx.r.rcv_nxt == at(200)  # ... and what it made contiguous
    assert rx.arrive(200, chunk(200, 100)) == 100
    assert rx.r.rcv_nxt == at(400) and sorted(rx.r.ooo) == [at(500)]
    assert rx.arrive(400, chunk(400, 100)) == 100
    assert rx.r.read(10_000) == chunk(0, 600)
    assert not rx.r.ooo and rx.r.ooo_bytes == 0


def test_overlapping_retransmission_is_trimmed_and_dsacked() -> None:
    rx = Rx()
    rx.arrive(0, chunk(0, 300))
    assert rx.arrive(100, chunk(100, 400)) == 200  # bytes 100..299 were here already
    assert rx.r.dsack == (at(100), at(300))
    assert rx.r.read(10_000) == chunk(0, 500)
    quiet = Rx()
    quiet.arrive(0, chunk(0, 300), sack_ok=False)
    quiet.arrive(100, chunk(100, 400), sack_ok=False)
    assert quiet.r.dsack is None


def test_held_copies_keep_the_longest_once_per_start() -> None:
    rx = Rx()
    rx.arrive(1000, chunk(1000, 100))
    rx.arrive(1000, chunk(1000, 300))  # longer: replaces
    assert rx.r.ooo[at(1000)][0] == chunk(1000, 300) and rx.r.ooo_bytes == 300
    rx.arrive(1000, chunk(1000, 200))  # shorter: a duplicate, reported
    assert rx.r.ooo_bytes == 300 and rx.r.dsack == (at(1000), at(1200))


def test_held_bytes_never_exceed_the_window() -> None:
    rng = random.Random(6)
    rx = Rx(size=5000)
    for _ in range(2000):
        offset = rng.randrange(1, 6000)
        rx.arrive(offset, chunk(offset, rng.randrange(1, 1500)))
        assert rx.r.ooo_bytes <= 5000
        assert rx.r.ooo_bytes == sum(len(p) for p, _ in rx.r.ooo.values())


def test_text_beyond_the_window_is_cut_and_its_fin_dropped() -> None:
    rx = Rx(size=1000)
    assert rx.arrive(0, chunk(0, 1500), fin=True) == 1000
    assert rx.r.rcv_nxt == at(1000) and not rx.r.fin_received and rx.fins == []


def test_fin_in_order_is_taken_once() -> None:
    rx = Rx()
    assert rx.arrive(0, chunk(0, 10), fin=True) == 10
    assert rx.fins == [7.0] and rx.r.fin_received and rx.r.rcv_nxt == at(11)


def test_fin_held_out_of_order_is_taken_when_the_hole_fills() -> None:
    rx = Rx()
    rx.arrive(100, chunk(100, 50), fin=True)
    assert rx.fins == []
    rx.arrive(0, chunk(0, 100))
    assert rx.fins == [7.0] and rx.r.rcv_nxt == at(151)
    assert rx.r.read(1000) == chunk(0, 150)


def test_nothing_is_taken_past_the_fin() -> None:
    rx = Rx()
    rx.arrive(200, chunk(200, 100))  # claims to lie beyond the FIN
    rx.arrive(100, b"", fin=True)
    rx.arrive(0, chunk(0, 100))
    assert rx.fins == [7.0] and rx.r.rcv_nxt == at(101)
    assert not rx.r.ooo and rx.r.ooo_bytes == 0
    assert rx.r.read(1000) == chunk(0, 100)


def seg(offset: int, n: int, flags: int = ACK) -> Segment:
    return Segment(1, 2, at(offset), 0, flags, 0, bytes(n))


def test_acceptability() -> None:
    rx = Rx(size=1000)
    assert rx.r.acceptable(seg(0, 0)) and rx.r.acceptable(seg(999, 0))
    assert not rx.r.acceptable(seg(1000, 0)) and not rx.r.acceptable(seg(-1, 0))
    assert rx.r.acceptable(seg(-10, 20))  # its end is in the window
    assert rx.r.acceptable(seg(999, 1000))  # its start is
    assert not rx.r.acceptable(seg(-100, 100))  # all old
    rx.r.window_field()  # the peer now knows the window ...
    rx.arrive(0, chunk(0, 1000))  # ... and filled it: zero window
    assert rx.r.accept_window() == 0
    assert rx.r.acceptable(seg(1000, 0))  # RFC 9293: only an empty segment at RCV.NXT
    assert not rx.r.acceptable(seg(1001, 0))
    assert not rx.r.acceptable(seg(1000, 1))
    assert not rx.r.acceptable(seg(1000, 0, ACK | FIN))  # a FIN occupies sequence space


def test_window_field_unscaled_and_scaled() -> None:
    small = Rx(size=100_000)
    assert small.r.window_field() == 0xFFFF  # unscaled: at most 65535
    big = Rx(size=1 << 20, wscale=7)
    assert big.r.window_field() == (1 << 20) >> 7
    assert big.r.adv == at(1 << 20)


def test_right_edge_never_moves_left() -> None:
    """Data we hold unread shrinks our free space by amounts the scale cannot show; the
    window is rounded up instead, and we take what it promised even past the buffer."""
    size, shift = 64 * 1024, 7
    rx = Rx(size=size, wscale=shift)
    rx.r.window_field()
    offset = 0
    for n in [100, 1337, 1, 999, 50, 1460, 77] * 3:
        before = rx.r.adv
        rx.arrive(offset, chunk(offset, n))
        offset += n
        field = rx.r.window_field()
        assert seq_le(before, (rx.r.rcv_nxt + (field << shift)) & MASK)
        assert rx.r.adv == (rx.r.rcv_nxt + (field << shift)) & MASK
    assert rx.r.accept_window() > rx.r.space()


def test_over_commit_is_capped() -> None:
    """A peer dribbling odd sizes into a never-shrinking scaled window: the promise creeps
    past the buffer by up to 2**scale - 1 per ACK, until 1/OVERCOMMIT_DIVISOR of it."""
    size, shift = 4096, 7
    rx = Rx(size=size, wscale=shift)
    rx.r.window_field()
    offset, shrank = 0, False
    while rx.r.accept_window() > 0:
        before = rx.r.adv
        n = min(3, rx.r.accept_window())
        assert rx.arrive(offset, chunk(offset, n)) == n
        offset += n
        rx.r.window_field()
        shrank = shrank or seq_diff(rx.r.adv, before) < 0
        assert len(rx.r.buf) <= size + max(2 << shift, size // OVERCOMMIT_DIVISOR)
    assert len(rx.r.buf) > size  # the promises were kept ...
    assert shrank  # ... until the cap let the window close


@pytest.mark.parametrize(
    ("filled", "read", "due"),
    [
        (9000, 100, False),
        (9000, 1999, False),
        (9000, 2000, True),  # the peer knows of 1000, 3000 are free: 2 MSS more
        (4000, 4000, False),  # the peer still knows of 6000, over half: the next ACK will do
    ],
)
def test_window_update_after_a_read(filled: int, read: int, due: bool) -> None:
    rx = Rx(size=10_000)
    rx.r.window_field()
    rx.arrive(0, chunk(0, filled))
    rx.r.window_field()  # what the peer was told
    rx.r.read(read)
    assert rx.r.window_update_due(1000) is due


def test_sack_blocks_latest_first_and_a_duplicate_reported_once() -> None:
    rx = Rx()
    rx.arrive(0, chunk(0, 100))
    rx.arrive(300, chunk(300, 100))
    rx.arrive(600, chunk(600, 100))
    rx.arrive(300, chunk(300, 100))  # a duplicate of what is held
    assert rx.r.sack_blocks() == ((at(300), at(400)), (at(300), at(400)), (at(600), at(700)))
    assert rx.r.dsack is None
    assert rx.r.sack_blocks() == ((at(300), at(400)), (at(600), at(700)))
