"""The Reno congestion window (tcp_congestion: RFC 5681, byte counting per RFC 3465, no
growth unless cwnd-limited per RFC 7661, the RFC 6928 initial window), on its own."""

from __future__ import annotations

import pytest

from pyralog.netstack.tcp_congestion import INITIAL_SSTHRESH, Reno

MSS = 1000


@pytest.mark.parametrize(
    ("mss", "window"), [(1460, 14600), (536, 5360), (100, 1000), (9000, 18000)]
)
def test_initial_window_rfc_6928(mss: int, window: int) -> None:
    cc = Reno()
    cc.start(mss)
    assert cc.cwnd == window and cc.ssthresh == INITIAL_SSTHRESH


def test_slow_start_counts_bytes() -> None:
    cc = Reno()
    cc.start(MSS)
    cc.on_ack(4500, flight=10 * MSS, mss=MSS)  # one ACK for 4.5 segments grows by 4.5
    assert cc.cwnd == 14500


def test_slow_start_stops_at_ssthresh_and_the_rest_counts_towards_avoidance() -> None:
    cc = Reno()
    cc.cwnd, cc.ssthresh = 8000, 10000
    cc.on_ack(5000, flight=8000, mss=MSS)
    assert cc.cwnd == 10000  # 2000 bytes of slow start, 3000 towards the next MSS
    cc.on_ack(7000, flight=10000, mss=MSS)  # 10000 in all: one window, one MSS
    assert cc.cwnd == 11000
    cc.on_ack(10999, flight=11000, mss=MSS)
    assert cc.cwnd == 11000  # one byte short of the next window
    cc.on_ack(1, flight=11000, mss=MSS)
    assert cc.cwnd == 12000


def test_no_growth_unless_the_window_was_the_limit() -> None:
    cc = Reno()
    cc.start(MSS)  # 10000
    cc.on_ack(3000, flight=9000, mss=MSS)  # 9000 + MSS is not more than cwnd: app-limited
    assert cc.cwnd == 10000
    cc.on_ack(3000, flight=9001, mss=MSS)
    assert cc.cwnd == 13000


@pytest.mark.parametrize(("flight", "ssthresh"), [(40000, 20000), (3000, 2000), (0, 2000)])
def test_loss_halves_the_flight(flight: int, ssthresh: int) -> None:
    cc = Reno()
    cc.cwnd = 50000
    cc.on_loss(flight, MSS)
    assert cc.ssthresh == cc.cwnd == ssthresh


def test_timeout_leaves_one_segment() -> None:
    cc = Reno()
    cc.cwnd = 50000
    cc.on_timeout(30000, MSS)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 15000)


def test_undo_restores_what_the_cut_took_never_less() -> None:
    cc = Reno()
    cc.cwnd, cc.ssthresh = 40000, INITIAL_SSTHRESH
    before = cc.cwnd, cc.ssthresh
    cc.on_loss(40000, MSS)
    cc.on_ack(5000, flight=30000, mss=MSS)  # some growth since
    cc.undo(*before)
    assert (cc.cwnd, cc.ssthresh) == before
    cc.cwnd = 60000
    cc.undo(40000, 30000)
    assert (cc.cwnd, cc.ssthresh) == (60000, INITIAL_SSTHRESH)
