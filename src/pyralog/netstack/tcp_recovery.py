"""Loss recovery: deciding from ACKs that segments were lost and resending them.

With a SACK-capable peer, recovery follows RFC 6675 (scoreboard, pipe, next lost hole); a
recovery that D-SACKs (RFC 2883) prove spurious (reordering, not loss) is undone and makes
the duplicate threshold grow; a tail loss probe (RFC 8985 section 7) recovers a lost tail
or lost ACKs in about two round trips instead of a retransmission timeout, and once the
probe is delivered the holes below it count as lost. Without SACK: NewReno (RFC 6582).

How far the window is cut and how it grows is the ``CongestionControl``'s (tcp_congestion);
what a recovery does to it meanwhile is decided here. The SACK scoreboard stays in
``tcp_sack``, beside the receiver's SACK blocks: it is a plain data structure with its own
tests, and this module is the policy over it.

``LossRecovery`` reads the connection's send sequence space and asks it to put bytes on
the wire through the small ``Sender`` interface; the connection calls ``on_sack``,
``on_ack``, ``on_duplicate_ack`` and ``on_timeout`` as ACKs and timeouts arrive, and
``arm_probe`` when it has sent new data.
"""

from __future__ import annotations

from typing import Protocol

from pyralog.netstack.tcp_congestion import CongestionControl
from pyralog.netstack.tcp_rtt import RTO_INITIAL
from pyralog.netstack.tcp_sack import Scoreboard
from pyralog.netstack.tcp_seq import MASK, seq_diff, seq_le, seq_lt

DUPTHRESH = 3  # RFC 5681; grows (to MAX_DUPTHRESH) when D-SACKs show reordering
MAX_DUPTHRESH = 64
WORST_DELAYED_ACK = 0.2  # RFC 8985's WCDelAckT: how long a peer may sit on a lone segment


class Sender(Protocol):
    """What recovery needs of the connection (a ``TcpConnection``)."""

    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    mss: int
    sack_ok: bool

    @property
    def unsent_or_unacked(self) -> int:
        """Bytes queued from snd_una on, sent or not (no SYN or FIN)."""
        ...

    def _resend(self, offset: int, n: int) -> int:
        """Send the ``n`` bytes at ``offset`` from snd_una again; returns their sequence."""
        ...

    def _retransmit_first(self) -> None:
        """Send the first unacknowledged segment (or the FIN) again."""
        ...

    def _send_next(self, n: int) -> None:
        """Send the ``n`` bytes at snd_nxt and move past them."""
        ...

    def _arm_rtx(self, now: float) -> None:
        """Restart the retransmission timer."""
        ...


class LossRecovery:
    """Duplicate ACKs, the SACK scoreboard, the recovery they trigger, its undo, and the
    tail loss probe's timer."""

    __slots__ = (
        "_conn",
        "_undo",
        "_undo_ranges",
        "cc",
        "dupacks",
        "dupthresh",
        "high_rxt",
        "in_recovery",
        "probe_proved_loss",
        "pto_deadline",
        "recover",
        "sack_recovery",
        "scoreboard",
        "tlp_out",
    )

    def __init__(self, conn: Sender, cc: CongestionControl, iss: int) -> None:
        self._conn = conn
        self.cc = cc
        self.dupacks = 0
        self.recover = iss  # snd_max when the current (or last) recovery began
        self.in_recovery = False
        self.dupthresh = DUPTHRESH
        self.scoreboard = Scoreboard()  # what the peer holds above snd_una
        self.high_rxt = 0  # offset from snd_una below which lost holes were resent
        self.sack_recovery = False  # the current recovery is RFC 6675's, not NewReno's
        self._undo: tuple[int, int] | None = None  # (cwnd, ssthresh) before the recovery
        # (seq, end) of what that recovery resent and no D-SACK has yet called needless
        self._undo_ranges: list[tuple[int, int]] = []
        self.pto_deadline: float | None = None  # tail loss probe
        self.tlp_out = False  # a probe is out and no ACK has advanced since
        self.probe_proved_loss = False  # holes below the probe's SACK are lost, all of them

    # -- what the connection calls ------------------------------------------------------

    def on_sack(self, blocks: tuple[tuple[int, int], ...], ack: int) -> bool:
        """An ACK (not yet applied to snd_una) carries SACK ``blocks``: record them; True if
        they SACK bytes not known before."""
        conn = self._conn
        una = conn.snd_una
        flight = seq_diff(conn.snd_max, una)
        board = self.scoreboard
        before = board.sacked
        for i, (left, right) in enumerate(blocks):
            if i == 0 and (
                seq_le(right, ack)
                or (len(blocks) > 1 and seq_le(blocks[1][0], left) and seq_le(right, blocks[1][1]))
            ):
                # A D-SACK: the peer received these bytes twice. If they were our
                # retransmission, the original had only been delayed.
                if self._undo is not None:
                    self._claim_resent(left, right)
                    self._maybe_undo()
                continue
            lo, hi = seq_diff(left, una), seq_diff(right, una)
            if hi <= lo or hi <= 0 or lo >= flight:
                continue  # stale, empty or beyond what we sent: ignore
            board.add(max(lo, 0), min(hi, flight))
        more = board.sacked > before
        if more and self.tlp_out and ack == una and not self.in_recovery:
            # The tail loss probe went out two round trips after everything below it and
            # has arrived: what is still missing there was lost, not reordered (RACK-TLP,
            # RFC 8985 7.4), however high reordering has pushed the duplicate threshold.
            self.probe_proved_loss = True
        return more

    def on_ack(self, acked: int, data_acked: int, flight: int, now: float) -> None:
        """snd_una has advanced by ``acked`` (``data_acked`` of them data); ``flight`` bytes
        were outstanding before."""
        self.scoreboard.advance(acked)
        self.high_rxt = max(0, self.high_rxt - acked)
        self.tlp_out = False
        conn = self._conn
        cc = self.cc
        mss = conn.mss
        if self.in_recovery:
            if seq_le(self.recover, conn.snd_una):
                # Full acknowledgement: leave fast recovery (RFC 6582 3.2 step 3).
                left = seq_diff(conn.snd_max, conn.snd_una)
                cc.cwnd = min(cc.ssthresh, max(left, mss) + mss)
                self.in_recovery = self.sack_recovery = False
                self.dupacks = 0
                self.high_rxt = 0
                self.probe_proved_loss = False
                self._maybe_undo()
            elif self.sack_recovery:
                self._sack_send(now)
            else:
                # Partial acknowledgement: retransmit the next hole, deflate the window.
                conn._retransmit_first()
                cc.cwnd = max(cc.cwnd - acked + mss, mss)
                conn._arm_rtx(now)
        elif data_acked > 0:
            self.dupacks = 0
            self.probe_proved_loss = False  # the probe's news is old now
            cc.on_ack(data_acked, flight, mss)
            if self.scoreboard:
                self._maybe_enter_sack_recovery(now)  # holes remain below new SACKs

    def on_duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        conn = self._conn
        mss = conn.mss
        if self.in_recovery:
            if self.sack_recovery:
                self._sack_send(now)
            else:
                self.cc.cwnd += mss  # each duplicate means a segment left the network
        elif conn.sack_ok and conn.snd_nxt == conn.snd_max:
            self._maybe_enter_sack_recovery(now)
        elif self.dupacks == 3 and seq_lt(self.recover, conn.snd_una + 1):
            cc = self.cc
            cc.on_loss(seq_diff(conn.snd_max, conn.snd_una), mss)
            self.recover = conn.snd_max
            self.in_recovery = True
            self.pto_deadline = None
            conn._retransmit_first()
            cc.cwnd = cc.ssthresh + 3 * mss  # NewReno: the three that left the network
            conn._arm_rtx(now)

    def on_timeout(self) -> None:
        """The retransmission timer fired on data: the connection goes back N, so every
        recovery and SACK is forgotten (as if the receiver had reneged, RFC 2018 8)."""
        conn = self._conn
        self.cc.on_timeout(seq_diff(conn.snd_max, conn.snd_una), conn.mss)
        self.in_recovery = self.sack_recovery = False
        self.dupacks = 0
        self.scoreboard.clear()
        self.tlp_out = self.probe_proved_loss = False
        self.high_rxt = 0
        self._undo = None
        self.recover = conn.snd_max

    def arm_probe(self, now: float, srtt: float | None, rtx_deadline: float | None) -> None:
        """Schedule a tail loss probe two smoothed RTTs out, if it would beat the RTO
        (due at ``rtx_deadline``)."""
        conn = self._conn
        if (
            not conn.sack_ok
            or self.in_recovery
            or self.tlp_out
            or conn.snd_una == conn.snd_max
            or conn.snd_nxt != conn.snd_max
        ):
            self.pto_deadline = None
            return
        pto = 2 * srtt if srtt is not None else RTO_INITIAL
        if seq_diff(conn.snd_max, conn.snd_una) <= conn.mss:
            pto += WORST_DELAYED_ACK  # a lone segment's ACK may be held back that long
        deadline = now + max(pto, 0.01)
        if rtx_deadline is not None and deadline >= rtx_deadline:
            self.pto_deadline = None
        else:
            self.pto_deadline = deadline

    # -- SACK-based loss recovery (RFC 6675) and its undo (RFC 2883 D-SACK) -------------

    def _claim_resent(self, left: int, right: int) -> None:
        """Strike [left, right) from what this recovery resent: those bytes were needless.
        A D-SACK of anything else (the network duplicated a segment) proves nothing."""
        kept = []
        for start, end in self._undo_ranges:
            lo = start if seq_le(left, start) else left
            hi = end if seq_le(end, right) else right
            if seq_lt(lo, hi):
                if seq_lt(start, lo):
                    kept.append((start, lo))
                if seq_lt(hi, end):
                    kept.append((hi, end))
            else:
                kept.append((start, end))
        self._undo_ranges = kept

    def _loss_threshold(self) -> int:
        """SACKed bytes above a hole that make it lost (RFC 6675's IsLost, in bytes).

        Once every data byte sent above the highest hole has been SACKed, nothing more
        may arrive to raise the count (small flights, a lost tail, a threshold grown by
        reordering), and waiting means a retransmission timeout. Then, on a path that has
        shown no reordering yet, the threshold drops to the size of that top SACKed range,
        which makes every hole below it lost (like RACK's zero reordering window before
        any reordering is seen, RFC 8985 6.2). Once D-SACKs have shown reordering, only a
        lone missing segment with everything else SACKed is called lost that way. A wrong
        call is undone by D-SACK."""
        if self.probe_proved_loss:
            return 1
        conn = self._conn
        threshold = (self.dupthresh - 1) * conn.mss + 1
        board = self.scoreboard
        if board:
            # what was sent, without a FIN
            sent = min(conn.unsent_or_unacked, seq_diff(conn.snd_max, conn.snd_una))
            start, end = board.ranges[-1]
            if end >= sent:
                if self.dupthresh == DUPTHRESH:
                    threshold = min(threshold, end - start)
                else:
                    threshold = min(threshold, sent - conn.mss)
        return max(1, threshold)

    def _maybe_enter_sack_recovery(self, now: float) -> None:
        conn = self._conn
        if (
            self.in_recovery
            or not conn.sack_ok
            or conn.snd_nxt != conn.snd_max
            or not seq_le(self.recover, conn.snd_una)  # that window's loss is handled
        ):
            return
        if self.dupacks < self.dupthresh and not self.scoreboard.is_lost(0, self._loss_threshold()):
            return
        cc = self.cc
        self._undo = (cc.cwnd, cc.ssthresh)
        self._undo_ranges = []
        self.pto_deadline = None
        cc.on_loss(seq_diff(conn.snd_max, conn.snd_una), conn.mss)
        self.recover = conn.snd_max
        self.in_recovery = self.sack_recovery = True
        self.high_rxt = 0
        # The first unacknowledged segment goes again at once, lost or merely late.
        buffered = conn.unsent_or_unacked
        first = self.scoreboard.ranges[0][0] if self.scoreboard else buffered
        self._retransmit(0, min(conn.mss, first, buffered))
        conn._arm_rtx(now)
        self._sack_send(now)

    def _sack_send(self, now: float) -> None:
        """While the pipe leaves room in cwnd: resend the next lost hole, else new data."""
        conn = self._conn
        cc = self.cc
        mss = conn.mss
        threshold = self._loss_threshold()
        board = self.scoreboard
        pipe = board.pipe(seq_diff(conn.snd_max, conn.snd_una), threshold, self.high_rxt)
        for _ in range(64):  # bounded per ACK; the next ACK continues
            if cc.cwnd - pipe < mss:
                break
            hole = board.next_lost(self.high_rxt, threshold)
            if hole is not None:
                start, end = hole
                n = min(mss, end - start, conn.unsent_or_unacked - start)
                if n <= 0:
                    break
                self._retransmit(start, n)
            else:
                offset = seq_diff(conn.snd_nxt, conn.snd_una)
                unsent = conn.unsent_or_unacked - offset
                n = min(mss, unsent, conn.snd_wnd - offset)
                if n <= 0 or (n < mss and n < unsent):
                    break
                conn._send_next(n)
            pipe += n

    def _retransmit(self, offset: int, n: int) -> None:
        if n <= 0:
            return
        seq = self._conn._resend(offset, n)
        self.high_rxt = max(self.high_rxt, offset + n)
        self._undo_ranges.append((seq, (seq + n) & MASK))

    def _maybe_undo(self) -> None:
        """Once a recovery is over and D-SACKs showed each of its retransmissions to be
        needless, the losses were reordering: restore the window it cut, and wait for
        more duplicates next time before calling a segment lost."""
        if self._undo is None or self.in_recovery or self._undo_ranges:
            return
        cwnd, ssthresh = self._undo
        self._undo = None
        self.cc.undo(cwnd, ssthresh)
        self.dupthresh = min(self.dupthresh * 2, MAX_DUPTHRESH)
