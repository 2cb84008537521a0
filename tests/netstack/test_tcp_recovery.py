"""Loss recovery (tcp_recovery) on its own, against a fake sender that records what it is
asked to send: NewReno (RFC 6582), RFC 6675 SACK recovery, the D-SACK undo (RFC 2883) and
the duplicate threshold, the tail loss probe's timer (RFC 8985 7), and the congestion
controller seam. The connection's own part (what counts as a duplicate ACK, moving
snd_una) is played by ``FakeSender.ack``."""

from __future__ import annotations

import pytest

from pyralog.netstack.tcp_congestion import INITIAL_SSTHRESH, Reno
from pyralog.netstack.tcp_recovery import (
    DUPTHRESH,
    MAX_DUPTHRESH,
    WORST_DELAYED_ACK,
    LossRecovery,
)
from pyralog.netstack.tcp_rtt import RTO_INITIAL
from pyralog.netstack.tcp_seq import MASK, seq_diff

MSS = 1000
ISS = 0xFFFFF000  # so that the flight crosses the sequence wrap


class FakeSender:
    """The ``Sender`` side of a connection with ``sent`` bytes out of ``buffered``."""

    def __init__(self, sent: int, buffered: int, *, sack_ok: bool = True) -> None:
        self.snd_una = ISS
        self.snd_nxt = self.snd_max = (ISS + sent) & MASK
        self.snd_wnd = 1 << 20
        self.mss = MSS
        self.sack_ok = sack_ok
        self.buffered = buffered
        self.log: list[tuple] = []

    @property
    def unsent_or_unacked(self) -> int:
        return self.buffered

    def _resend(self, offset: int, n: int) -> int:
        self.log.append(("resend", offset, n))
        return (self.snd_una + offset) & MASK

    def _retransmit_first(self) -> None:
        self.log.append(("first",))

    def _send_next(self, n: int) -> None:
        self.log.append(("new", seq_diff(self.snd_nxt, self.snd_una), n))
        self.snd_nxt = self.snd_max = (self.snd_nxt + n) & MASK

    def _arm_rtx(self, now: float) -> None:
        self.log.append(("rtx", now))

    def ack(self, rec: LossRecovery, upto: int, now: float = 1.0) -> None:
        """A cumulative ACK of the first ``upto`` bytes, as TcpConnection._new_ack does."""
        acked = upto - seq_diff(self.snd_una, ISS)
        flight = seq_diff(self.snd_max, self.snd_una)
        self.buffered -= acked
        self.snd_una = (ISS + upto) & MASK
        rec.on_ack(acked, acked, flight, now)


def seq(offset: int) -> int:
    return (ISS + offset) & MASK


def setup(sent: int = 10 * MSS, buffered: int = 20 * MSS, *, sack_ok: bool = True):
    conn = FakeSender(sent, buffered, sack_ok=sack_ok)
    cc = Reno()
    cc.start(MSS)  # 10 segments
    return conn, cc, LossRecovery(conn, cc, ISS)


def sack(rec: LossRecovery, conn: FakeSender, *blocks: tuple[int, int], now: float = 1.0) -> bool:
    """A duplicate ACK (at snd_una) with SACK blocks given as byte offsets from ISS."""
    more = rec.on_sack(tuple((seq(a), seq(b)) for a, b in blocks), conn.snd_una)
    if more:
        rec.on_duplicate_ack(now)
    return more


# -- NewReno -----------------------------------------------------------------------------


def test_newreno_fast_retransmit_inflation_and_exit() -> None:
    conn, cc, rec = setup(sack_ok=False)
    rec.pto_deadline = 9.0
    rec.on_duplicate_ack(1.0)
    rec.on_duplicate_ack(1.0)
    assert not rec.in_recovery and conn.log == []
    rec.on_duplicate_ack(1.5)
    assert rec.in_recovery and not rec.sack_recovery
    assert conn.log == [("first",), ("rtx", 1.5)]
    assert cc.ssthresh == 5 * MSS and cc.cwnd == 8 * MSS  # ssthresh + 3 MSS
    assert rec.recover == conn.snd_max and rec.pto_deadline is None
    rec.on_duplicate_ack(1.6)
    assert cc.cwnd == 9 * MSS  # another segment left the network
    conn.log.clear()
    conn.ack(rec, 2 * MSS, now=2.0)  # partial: the next hole goes, the window deflates
    assert rec.in_recovery and conn.log == [("first",), ("rtx", 2.0)]
    assert cc.cwnd == 9 * MSS - 2 * MSS + MSS
    conn.ack(rec, 10 * MSS, now=2.5)  # full
    assert not rec.in_recovery and rec.dupacks == 0
    assert cc.cwnd == min(5 * MSS, max(0, MSS) + MSS)


def test_newreno_waits_for_the_fourth_duplicate_no_more() -> None:
    _conn, _cc, rec = setup(sack_ok=False)
    for _ in range(DUPTHRESH - 1):
        rec.on_duplicate_ack(1.0)
    assert not rec.in_recovery
    rec.on_duplicate_ack(1.0)
    assert rec.in_recovery


def test_no_second_fast_retransmit_below_recover_after_a_timeout() -> None:
    conn, cc, rec = setup(sack_ok=False)
    rec.on_timeout()
    assert rec.recover == conn.snd_max
    assert cc.cwnd == MSS and cc.ssthresh == 5 * MSS
    for _ in range(5):
        rec.on_duplicate_ack(1.0)  # duplicates from the window the timeout already handles
    assert not rec.in_recovery and conn.log == []


# -- SACK recovery (RFC 6675) ------------------------------------------------------------


def enter_sack_recovery() -> tuple[FakeSender, Reno, LossRecovery]:
    """Segment 0 of 10 missing; segments 1, 2, 3 SACKed one by one."""
    conn, cc, rec = setup()
    assert sack(rec, conn, (MSS, 2 * MSS))
    assert sack(rec, conn, (MSS, 3 * MSS))
    assert not rec.in_recovery  # 2 segments above the hole: not yet lost
    assert sack(rec, conn, (MSS, 4 * MSS), now=1.25)
    return conn, cc, rec


def test_sack_recovery_resends_the_hole_then_keeps_the_pipe_full() -> None:
    conn, cc, rec = enter_sack_recovery()
    assert rec.in_recovery and rec.sack_recovery
    assert cc.ssthresh == cc.cwnd == 5 * MSS
    # pipe = 10 out - 3 SACKed - 1 lost + 1 resent = 7 > cwnd: only the first segment
    assert conn.log == [("resend", 0, MSS), ("rtx", 1.25)]
    conn.log.clear()
    assert sack(rec, conn, (MSS, 6 * MSS))  # pipe 5: still no room
    assert conn.log == []
    assert sack(rec, conn, (MSS, 9 * MSS))  # pipe 2: three new segments fit
    assert conn.log == [("new", 10 * MSS, MSS), ("new", 11 * MSS, MSS), ("new", 12 * MSS, MSS)]
    conn.ack(rec, 9 * MSS)  # the resent segment arrived: below recover, still recovering
    assert rec.in_recovery
    conn.ack(rec, 13 * MSS)
    assert not rec.in_recovery and not rec.sack_recovery
    assert cc.cwnd == 2 * MSS and cc.ssthresh == 5 * MSS  # the resend was needed: no undo
    assert rec.dupthresh == DUPTHRESH


def test_sack_recovery_resends_every_lost_hole() -> None:
    conn, cc, rec = setup(sent=20 * MSS, buffered=20 * MSS)
    cc.cwnd = 20 * MSS
    # 0 and 5 lost, everything else SACKed: both holes have 3+ segments above them
    sack(rec, conn, (MSS, 5 * MSS))
    sack(rec, conn, (6 * MSS, 8 * MSS), (MSS, 5 * MSS))
    sack(rec, conn, (6 * MSS, 20 * MSS), (MSS, 5 * MSS))
    assert rec.in_recovery
    resent = [e for e in conn.log if e[0] == "resend"]
    assert resent == [("resend", 0, MSS), ("resend", 5 * MSS, MSS)]


def test_on_sack_ignores_stale_empty_and_unsent_ranges() -> None:
    conn, _cc, rec = setup()
    conn.ack(rec, 2 * MSS)
    assert not rec.on_sack(((seq(0), seq(MSS)), (seq(3 * MSS), seq(3 * MSS))), conn.snd_una)
    assert not rec.on_sack(((seq(20 * MSS), seq(21 * MSS)),), conn.snd_una)
    assert not rec.scoreboard
    assert rec.on_sack(((seq(4 * MSS), seq(30 * MSS)),), conn.snd_una)
    assert rec.scoreboard.ranges == [[2 * MSS, 8 * MSS]]  # offsets from snd_una, cut at snd_max
    assert not rec.on_sack(((seq(4 * MSS), seq(10 * MSS)),), conn.snd_una)  # nothing new


# -- undo (RFC 2883 D-SACK) --------------------------------------------------------------


def test_dsack_of_every_resend_undoes_the_recovery_and_doubles_dupthresh() -> None:
    conn, cc, rec = enter_sack_recovery()
    conn.ack(rec, 10 * MSS)  # segment 0 was only late: everything arrives
    assert not rec.in_recovery and cc.cwnd == 2 * MSS
    # ... and then our needless resend of it, reported as a duplicate
    rec.on_sack(((seq(0), seq(MSS)),), conn.snd_una)
    assert cc.cwnd == 10 * MSS and cc.ssthresh == INITIAL_SSTHRESH
    assert rec.dupthresh == 2 * DUPTHRESH


def test_a_dsack_of_something_never_resent_proves_nothing() -> None:
    conn, cc, rec = enter_sack_recovery()
    conn.ack(rec, 10 * MSS)
    rec.on_sack(((seq(5 * MSS), seq(6 * MSS)),), conn.snd_una)  # the network duplicated it
    assert cc.cwnd == 2 * MSS and rec.dupthresh == DUPTHRESH


def test_a_lone_hole_is_lost_at_once_however_high_dupthresh_and_growth_is_capped() -> None:
    conn, cc, rec = setup()
    rec.dupthresh = MAX_DUPTHRESH // 2 + 1
    # everything sent but segment 0 is SACKed: nothing more can come to count towards
    # dupthresh, so the hole is lost on the first duplicate
    sack(rec, conn, (MSS, 10 * MSS))
    assert rec.in_recovery and rec.dupacks == 1
    conn.ack(rec, 10 * MSS)
    rec.on_sack(((seq(0), seq(MSS)),), conn.snd_una)
    assert cc.cwnd == 10 * MSS  # undone
    assert rec.dupthresh == MAX_DUPTHRESH


def test_with_reordering_seen_a_hole_needs_dupthresh_segments_above() -> None:
    conn, _cc, rec = setup()
    rec.dupthresh = 2 * DUPTHRESH
    for top in range(2, 7):
        sack(rec, conn, (MSS, top * MSS))
    assert not rec.in_recovery and rec.dupacks == 5
    sack(rec, conn, (MSS, 7 * MSS))
    assert rec.in_recovery


# -- timeout, tail loss probe ------------------------------------------------------------


def test_timeout_forgets_recovery_and_sacks() -> None:
    conn, cc, rec = enter_sack_recovery()
    rec.tlp_out = rec.probe_proved_loss = True
    rec.on_timeout()
    assert not rec.in_recovery and not rec.sack_recovery and rec.dupacks == 0
    assert not rec.scoreboard and rec.high_rxt == 0
    assert not rec.tlp_out and not rec.probe_proved_loss
    assert cc.cwnd == MSS and cc.ssthresh == 5 * MSS
    conn.ack(rec, 10 * MSS)
    rec.on_sack(((seq(0), seq(MSS)),), conn.snd_una)  # a late D-SACK: nothing to undo
    assert cc.cwnd > MSS and cc.ssthresh == 5 * MSS and rec.dupthresh == DUPTHRESH


def test_a_delivered_probe_proves_the_holes_below_it_lost() -> None:
    conn, _cc, rec = setup()
    rec.tlp_out = True
    assert sack(rec, conn, (9 * MSS, 10 * MSS))  # only the probe (the last segment) arrived
    assert rec.probe_proved_loss
    assert rec.in_recovery and conn.log[0] == ("resend", 0, MSS)


@pytest.mark.parametrize(
    ("sent", "srtt", "rtx", "expected"),
    [
        (5 * MSS, 0.1, 10.0, 1.2),  # two smoothed RTTs
        (MSS, 0.1, 10.0, 1.2 + WORST_DELAYED_ACK),  # a lone segment's ACK may be delayed
        (5 * MSS, None, 10.0, 1.0 + RTO_INITIAL),
        (5 * MSS, 0.001, 10.0, 1.01),  # never sooner than 10 ms
        (5 * MSS, 0.1, 1.2, None),  # the RTO would come first
        (0, 0.1, 10.0, None),  # nothing outstanding
    ],
)
def test_probe_timer(sent: int, srtt: float | None, rtx: float, expected: float | None) -> None:
    _conn, _cc, rec = setup(sent=sent)
    rec.arm_probe(1.0, srtt, rtx)
    if expected is None:
        assert rec.pto_deadline is None
    else:
        assert rec.pto_deadline == pytest.approx(expected)


def test_no_probe_without_sack_in_recovery_or_with_one_out() -> None:
    for prepare in (
        lambda c, r: setattr(c, "sack_ok", False),
        lambda c, r: setattr(r, "in_recovery", True),
        lambda c, r: setattr(r, "tlp_out", True),
        lambda c, r: setattr(c, "snd_nxt", c.snd_una),  # going back N
    ):
        conn, _cc, rec = setup()
        rec.pto_deadline = 5.0
        prepare(conn, rec)
        rec.arm_probe(1.0, 0.1, 10.0)
        assert rec.pto_deadline is None


# -- the congestion controller seam ------------------------------------------------------


class RecordingController:
    """Any CongestionControl: recovery calls it, never computes a cut itself."""

    def __init__(self) -> None:
        self.cwnd = 100 * MSS
        self.ssthresh = INITIAL_SSTHRESH
        self.calls: list[tuple] = []

    def start(self, mss: int) -> None:
        self.calls.append(("start", mss))

    def on_ack(self, acked: int, flight: int, mss: int) -> None:
        self.calls.append(("ack", acked, flight, mss))

    def on_loss(self, flight: int, mss: int) -> None:
        self.calls.append(("loss", flight, mss))
        self.cwnd = self.ssthresh = 7 * MSS  # not Reno's half

    def on_timeout(self, flight: int, mss: int) -> None:
        self.calls.append(("timeout", flight, mss))

    def undo(self, cwnd: int, ssthresh: int) -> None:
        self.calls.append(("undo", cwnd, ssthresh))


def test_recovery_drives_any_controller() -> None:
    conn = FakeSender(10 * MSS, 10 * MSS)
    cc = RecordingController()
    rec = LossRecovery(conn, cc, ISS)
    conn.ack(rec, MSS)
    assert cc.calls == [("ack", MSS, 10 * MSS, MSS)]
    sack(rec, conn, (2 * MSS, 3 * MSS))
    sack(rec, conn, (2 * MSS, 4 * MSS))
    sack(rec, conn, (2 * MSS, 5 * MSS))
    assert cc.calls[-1] == ("loss", 9 * MSS, MSS) and rec.in_recovery
    conn.ack(rec, 10 * MSS)
    rec.on_sack(((seq(MSS), seq(2 * MSS)),), conn.snd_una)
    assert cc.calls[-1] == ("undo", 100 * MSS, INITIAL_SSTHRESH)
    rec.on_timeout()
    assert cc.calls[-1] == ("timeout", 0, MSS)
