"""RTT estimation and the retransmission timeout (tcp_rtt, RFC 6298), on their own: a
sample is just two calls with made-up times."""

from __future__ import annotations

import pytest

from pyralog.netstack.tcp_rtt import RTO_INITIAL, RTO_MAX, RTO_MIN, RttEstimator


def test_first_sample() -> None:
    rtt = RttEstimator()
    assert rtt.srtt is None and rtt.rto == RTO_INITIAL
    rtt.time(1000, now=5.0)
    rtt.on_ack(1000, now=5.3)  # RFC 6298 2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR
    assert rtt.srtt == pytest.approx(0.3)
    assert rtt.rttvar == pytest.approx(0.15)
    assert rtt.rto == pytest.approx(0.9)
    assert rtt.timed_seq is None


def test_later_samples_smooth() -> None:
    rtt = RttEstimator()
    rtt.time(10, 0.0)
    rtt.on_ack(10, 0.4)
    rtt.time(20, 1.0)
    rtt.on_ack(20, 1.2)  # R = 0.2: RTTVAR = 3/4 * 0.2 + 1/4 * |0.4 - 0.2|, SRTT = 7/8 0.4 + 1/8 0.2
    assert rtt.rttvar == pytest.approx(0.2)
    assert rtt.srtt == pytest.approx(0.375)
    assert rtt.rto == pytest.approx(0.375 + 0.8)


def test_rto_floor_and_ceiling() -> None:
    rtt = RttEstimator()
    rtt.time(1, 0.0)
    rtt.on_ack(1, 0.0001)
    assert rtt.rto == RTO_MIN
    slow = RttEstimator()
    slow.time(1, 0.0)
    slow.on_ack(1, 100.0)
    assert slow.rto == RTO_MAX


def test_only_an_ack_covering_the_timed_segment_samples() -> None:
    rtt = RttEstimator()
    rtt.time(0x10, 1.0)  # across the wrap: 0xFFFFFFF0 is below 0x10
    rtt.on_ack(0xFFFFFFF0, 1.5)
    assert rtt.srtt is None and rtt.timed_seq == 0x10
    rtt.on_ack(0x20, 2.0)
    assert rtt.srtt == pytest.approx(1.0)


def test_karn_cancel_takes_no_sample() -> None:
    rtt = RttEstimator()
    rtt.time(100, 0.0)
    rtt.cancel()
    rtt.on_ack(100, 3.0)
    assert rtt.srtt is None and rtt.rto == RTO_INITIAL


def test_a_clock_that_steps_back_samples_zero() -> None:
    rtt = RttEstimator()
    rtt.time(1, 10.0)
    rtt.on_ack(1, 9.0)
    assert rtt.srtt == 0.0 and rtt.rto == RTO_MIN


def test_back_off_doubles_up_to_the_ceiling() -> None:
    rtt = RttEstimator()
    seen = []
    for _ in range(8):
        rtt.back_off()
        seen.append(rtt.rto)
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, RTO_MAX, RTO_MAX, RTO_MAX]
    rtt.time(5, 0.0)
    rtt.on_ack(5, 0.5)  # a fresh sample replaces the backed-off value
    assert rtt.rto == pytest.approx(1.5)
