"""One TCP connection, sans-IO (RFC 9293), with RFC 6298 retransmission timing, RFC 5681
congestion control with byte counting (RFC 3465), delayed ACKs, window scaling (RFC 7323),
RFC 5961 challenge ACKs and selective acknowledgements (RFC 2018, D-SACK per RFC 2883).

With a SACK-capable peer, loss recovery follows RFC 6675; a recovery that D-SACKs prove
spurious (reordering, not loss) is undone and makes the duplicate threshold grow; a tail
loss probe (RFC 8985 section 7) recovers a lost tail or lost ACKs in about two round trips
instead of a retransmission timeout, and once the probe is delivered the holes below it
count as lost. Without SACK: NewReno (RFC 6582). Written by hand because no maintained
Python library implements TCP.

The connection consumes parsed segments and ``now`` and produces segments to send
(``segments_to_send``) and a deadline (``next_deadline``); it never touches a socket or a
clock. Application-facing happenings are reported to an ``owner`` through the ``TcpOwner``
methods. Deliberate simplifications, each safe against a standard peer: no timestamps
option, no urgent data, go-back-N after a retransmission timeout (the SACK scoreboard is
dropped then, as if the receiver had reneged).
"""

from __future__ import annotations

import enum
import errno

from pyralog.netstack.tcp_sack import Scoreboard, receiver_blocks
from pyralog.netstack.tcp_segment import ACK, FIN, PSH, RST, SYN, Segment

MASK = 0xFFFFFFFF
MSL = 30.0  # maximum segment lifetime; TIME_WAIT lasts 2 MSL
RTO_INITIAL = 1.0
RTO_MIN = 0.2  # Linux's floor; RFC 6298 suggests 1 s, which is needlessly slow on a tunnel
RTO_MAX = 60.0
DELAYED_ACK = 0.04
SYN_RETRIES = 6
DATA_RETRIES = 15
WSCALE = 7
DEFAULT_BUFFER = 256 * 1024
DUPTHRESH = 3  # RFC 5681; grows (to MAX_DUPTHRESH) when D-SACKs show reordering
MAX_DUPTHRESH = 64
WORST_DELAYED_ACK = 0.2  # RFC 8985's WCDelAckT: how long a peer may sit on a lone segment
# How far past the receive buffer a never-shrinking scaled window may promise: 1/4 of it.
OVERCOMMIT_DIVISOR = 4


def seq_lt(a: int, b: int) -> bool:
    return ((a - b) & MASK) > 0x7FFFFFFF


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number."""
    d = (a - b) & MASK
    return d - (1 << 32) if d > 0x7FFFFFFF else d


class State(enum.Enum):
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"
    CLOSED = "CLOSED"


SYNCHRONIZED = frozenset(
    {
        State.ESTABLISHED,
        State.FIN_WAIT_1,
        State.FIN_WAIT_2,
        State.CLOSE_WAIT,
        State.CLOSING,
        State.LAST_ACK,
        State.TIME_WAIT,
    }
)
RECEIVES_DATA = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
SENDS_DATA = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.LAST_ACK})


class TcpOwner:
    """What a connection tells the layer above. Override what you need."""

    def tcp_connected(self, conn: TcpConnection) -> None: ...
    def tcp_readable(self, conn: TcpConnection) -> None: ...
    def tcp_eof(self, conn: TcpConnection) -> None: ...
    def tcp_writable(self, conn: TcpConnection) -> None: ...
    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None: ...


class TcpConnection:
    def __init__(
        self,
        local_port: int,
        remote_port: int,
        iss: int,
        mss: int,
        owner: TcpOwner | None = None,
        *,
        send_buffer: int = DEFAULT_BUFFER,
        receive_buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self.local_port = local_port
        self.remote_port = remote_port
        self.owner = owner or TcpOwner()
        self.state = State.CLOSED
        self.error: OSError | None = None
        self.local_mss = mss  # what we can receive
        self.mss = min(mss, 536)  # what we send, until the peer tells us its MSS
        # send sequence space
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0
        self.send_buffer_size = send_buffer
        self._sndbuf = bytearray()  # bytes from snd_una (after SYN) onward, sent or not
        self._fin_queued = False
        self._fin_seq: int | None = None  # sequence number of our FIN, once sent
        # receive sequence space
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.receive_buffer_size = receive_buffer
        self._rcvbuf = bytearray()
        self._ooo: dict[int, tuple[bytes, bool]] = {}  # seq -> (payload, fin)
        self._ooo_bytes = 0
        self._rcv_adv = 0  # right edge of the window we last advertised
        self._fin_received = False
        # congestion control
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self._ca_bytes = 0  # bytes acknowledged towards the next congestion-avoidance MSS
        self.dupacks = 0
        self.recover = iss
        self.in_recovery = False
        # selective acknowledgements (both negotiated in the SYNs, or neither)
        self.sack_ok = False
        self.dupthresh = DUPTHRESH
        self._scoreboard = Scoreboard()  # what the peer holds above snd_una
        self._high_rxt = 0  # offset from snd_una below which lost holes were resent
        self._sack_recovery = False  # the current recovery is RFC 6675's, not NewReno's
        self._undo: tuple[int, int] | None = None  # (cwnd, ssthresh) before the recovery
        # (seq, end) of what that recovery resent and no D-SACK has yet called needless
        self._undo_ranges: list[tuple[int, int]] = []
        self._dsack: tuple[int, int] | None = None  # a duplicate to report, as receiver
        self._latest_ooo: int | None = None  # start of the last out-of-order arrival
        # round-trip estimation (RFC 6298), one timed segment at a time (Karn)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self.retries = 0
        # timers
        self._rtx_deadline: float | None = None
        self._pto_deadline: float | None = None  # tail loss probe
        self._tlp_out = False  # a probe is out and no ACK has advanced since
        self._probe_proved_loss = False  # holes below the probe's SACK are lost, all of them
        self._delack_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._timewait_deadline: float | None = None
        self._unacked_segments = 0
        # A cumulative ACK owed, sent when the owner next collects segments: a burst of
        # segments handled together gets one ACK, not one per two segments (as GRO gives
        # Linux). Duplicate ACKs are never merged: the sender counts them.
        self._ack_due = False
        self._out: list[Segment] = []
        self._was_full = False

    # -- public API --------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<TcpConnection :{self.local_port}->:{self.remote_port} {self.state.value}>"

    def connect(self, now: float) -> None:
        """Active open: send a SYN."""
        self.state = State.SYN_SENT
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self._send_syn(now, with_ack=False)

    def accept(self, syn: Segment, now: float) -> None:
        """Passive open from a listener, given the peer's SYN: send our SYN-ACK."""
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & MASK
        self._take_syn_options(syn)
        self.snd_wnd = syn.window  # never scaled in a SYN
        self.snd_wl1, self.snd_wl2 = syn.seq, self.iss
        self.state = State.SYN_RECEIVED
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self._send_syn(now, with_ack=True)

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue application data; returns how much fitted in the send buffer."""
        if self._fin_queued or self.state not in SENDS_DATA | {State.SYN_SENT, State.SYN_RECEIVED}:
            raise OSError(errno.EPIPE, "connection is closed for sending")
        room = self.send_buffer_size - len(self._sndbuf)
        n = min(room, len(data))
        if n > 0:
            self._sndbuf += data[:n]
            self._output(now)
        if n < len(data):
            self._was_full = True
        return n

    @property
    def send_space(self) -> int:
        return self.send_buffer_size - len(self._sndbuf)

    @property
    def unsent_or_unacked(self) -> int:
        return len(self._sndbuf)

    def read(self, limit: int, now: float) -> bytes:
        """Take up to ``limit`` bytes of received data; may send a window update."""
        if not self._rcvbuf:
            return b""
        data = bytes(self._rcvbuf[:limit])
        del self._rcvbuf[:limit]
        self._maybe_window_update(now)
        return data

    @property
    def readable(self) -> int:
        return len(self._rcvbuf)

    @property
    def at_eof(self) -> bool:
        return self._fin_received and not self._rcvbuf

    def close(self, now: float) -> None:
        """No more data from us: a FIN follows the queued data."""
        if self.state in (State.SYN_SENT, State.CLOSED):
            self._finish(None)
            return
        if self._fin_queued or self.state not in SENDS_DATA | {State.SYN_RECEIVED}:
            return
        self._fin_queued = True
        self._output(now)

    def abort(self, now: float) -> None:
        """Reset the connection now, discarding everything."""
        if self.state in SYNCHRONIZED | {State.SYN_RECEIVED} and self.state != State.TIME_WAIT:
            self._out.append(Segment(self.local_port, self.remote_port, self.snd_nxt, 0, RST, 0))
        self._finish(OSError(errno.ECONNABORTED, "connection aborted"), notify=False)

    def segments_to_send(self) -> list[Segment]:
        if self._ack_due:
            self._send_ack()
        out = self._out
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        best = None
        for d in (
            self._rtx_deadline,
            self._pto_deadline,
            self._delack_deadline,
            self._persist_deadline,
            self._timewait_deadline,
        ):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def tick(self, now: float) -> None:
        if self._timewait_deadline is not None and now >= self._timewait_deadline:
            self._timewait_deadline = None
            self._finish(None)
            return
        if self._delack_deadline is not None and now >= self._delack_deadline:
            self._send_ack()
        if self._rtx_deadline is not None and now >= self._rtx_deadline:
            self._rtx_deadline = None
            self._pto_deadline = None
            self._retransmission_timeout(now)
        if self._pto_deadline is not None and now >= self._pto_deadline:
            self._pto_deadline = None
            if not self.in_recovery:
                self._probe_tail(now)
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._persist_deadline = None
            self._probe_window(now)

    # -- segment arrival (RFC 9293 3.10.7) ---------------------------------------------

    def receive(self, seg: Segment, now: float) -> None:
        if self.state == State.CLOSED:
            return
        if self.state == State.SYN_SENT:
            self._receive_in_syn_sent(seg, now)
            return
        flags = seg.flags
        # A retransmitted FIN in TIME-WAIT: our last ACK was lost. ACK again, restart 2 MSL.
        if (
            self.state == State.TIME_WAIT
            and flags & FIN
            and not flags & RST
            and (seg.seq + len(seg.payload) + 1) & MASK == self.rcv_nxt
        ):
            self._send_ack()
            self._enter_time_wait(now)
            return
        # 1. sequence number acceptability
        if not self._acceptable(seg):
            if (
                self.state == State.SYN_RECEIVED
                and flags & (SYN | ACK) == SYN
                and seg.seq == self.irs
            ):
                self._rtt_seq = None  # Karn: the answer may be to either copy
                self._send_syn(now, with_ack=True, timed=False)  # our SYN-ACK was lost
            elif not flags & RST:
                end = (seg.seq + len(seg.payload)) & MASK
                if self.sack_ok and seg.payload and seq_le(end, self.rcv_nxt):
                    self._dsack = (seg.seq, end)
                self._send_ack()
            return
        # 2. RST (RFC 5961 3.2: only an exact match resets; in-window gets a challenge)
        if flags & RST:
            if seg.seq == self.rcv_nxt:
                if self.state == State.SYN_RECEIVED:
                    self._finish(OSError(errno.ECONNREFUSED, "connection refused"))
                else:
                    self._finish(OSError(errno.ECONNRESET, "connection reset by peer"))
            else:
                self._send_ack()
            return
        # 4. SYN in a synchronized state (RFC 5961 4.2): challenge ACK
        if flags & SYN:
            self._send_ack()
            return
        # 5. ACK
        if not flags & ACK:
            return
        if self.state == State.SYN_RECEIVED:
            if seq_lt(self.snd_una, seg.ack) and seq_le(seg.ack, self.snd_max):
                self.state = State.ESTABLISHED
                self._update_window(seg)
                self.owner.tcp_connected(self)
            else:
                self._out.append(Segment(self.local_port, self.remote_port, seg.ack, 0, RST, 0))
                return
        if not self._process_ack(seg, now):
            return
        if self.state == State.CLOSED:
            return
        # 7. text, 8. FIN
        if seg.payload or flags & FIN:
            self._receive_text(seg, now)
        self._output(now)

    def _receive_in_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & ACK and (seq_le(seg.ack, self.iss) or seq_lt(self.snd_max, seg.ack)):
            if not flags & RST:
                self._out.append(Segment(self.local_port, self.remote_port, seg.ack, 0, RST, 0))
            return
        if flags & RST:
            if flags & ACK:
                self._finish(OSError(errno.ECONNREFUSED, "connection refused"))
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & MASK
        self._take_syn_options(seg)
        if flags & ACK:
            self.snd_una = seg.ack
            self._rtx_deadline = None
            self._rtt_sample(now)
            self.retries = 0
            self.snd_wnd = seg.window
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self.state = State.ESTABLISHED
            self._send_ack()
            self.owner.tcp_connected(self)
            if seg.payload or flags & FIN:
                self._receive_text(seg, now)
            self._output(now)
        else:
            # Simultaneous open: both sides sent SYNs.
            self.state = State.SYN_RECEIVED
            self.snd_wnd = seg.window
            self.snd_wl1, self.snd_wl2 = seg.seq, self.iss
            self._send_syn(now, with_ack=True)

    def _acceptable(self, seg: Segment) -> bool:
        length = seg.length
        window = self._accept_window()
        offset = seq_diff(seg.seq, self.rcv_nxt)
        if length == 0:
            return offset == 0 if window == 0 else 0 <= offset < window
        if window == 0:
            return False
        end = offset + length - 1
        return 0 <= offset < window or 0 <= end < window

    # -- acknowledgements and congestion control ---------------------------------------

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth check. Returns False when the segment must be dropped."""
        ack = seg.ack
        if seq_lt(self.snd_max, ack):
            self._send_ack()  # acknowledges something we never sent
            return False
        # SACK blocks first, against the snd_una they were written for.
        sacked_more = self.sack_ok and bool(seg.sack) and self._take_sack(seg)
        if sacked_more and self._tlp_out and ack == self.snd_una and not self.in_recovery:
            # The tail loss probe went out two round trips after everything below it and
            # has arrived: what is still missing there was lost, not reordered (RACK-TLP,
            # RFC 8985 7.4), however high reordering has pushed the duplicate threshold.
            self._probe_proved_loss = True
        if seq_lt(self.snd_una, ack):
            self._new_ack(seg, now)
        elif (
            ack == self.snd_una
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and self.snd_una != self.snd_max
            and (
                sacked_more  # with SACK, an ACK that reports nothing new is no duplicate
                if self.sack_ok
                else seg.window << self.snd_wscale == self.snd_wnd
            )
        ):
            self._duplicate_ack(now)
        self._update_window(seg)
        if self.snd_wnd and self._persist_deadline is not None:
            self._persist_deadline = None
        if self._fin_acked():
            if self.state == State.FIN_WAIT_1:
                self.state = State.FIN_WAIT_2
            elif self.state == State.CLOSING:
                self._enter_time_wait(now)
            elif self.state == State.LAST_ACK:
                self._finish(None)
                return False
        return True

    def _update_window(self, seg: Segment) -> None:
        if seq_lt(self.snd_wl1, seg.seq) or (
            self.snd_wl1 == seg.seq and seq_le(self.snd_wl2, seg.ack)
        ):
            self.snd_wnd = seg.window << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack

    def _new_ack(self, seg: Segment, now: float) -> None:
        ack = seg.ack
        acked = seq_diff(ack, self.snd_una)
        # Was the window the limit? Only then may it grow (RFC 7661): a sender held back
        # by the application or the peer's window has not tested a larger one.
        cwnd_limited = seq_diff(self.snd_max, self.snd_una) + self.mss > self.cwnd
        data_acked = acked
        if self._fin_seq is not None and seq_lt(self._fin_seq, ack):
            data_acked -= 1  # the FIN's sequence number
        if self.snd_una == self.iss:
            data_acked -= 1  # our SYN (acknowledged along with data)
        if data_acked > 0:
            del self._sndbuf[:data_acked]
        self._scoreboard.advance(acked)
        self._high_rxt = max(0, self._high_rxt - acked)
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack  # after go-back-N, the peer had more than we resent
        self._rtt_sample(now)
        self.retries = 0
        self._tlp_out = False
        mss = self.mss
        if self.in_recovery:
            if seq_le(self.recover, ack):
                # Full acknowledgement: leave fast recovery (RFC 6582 3.2 step 3).
                flight = seq_diff(self.snd_max, self.snd_una)
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
                self.in_recovery = self._sack_recovery = False
                self.dupacks = 0
                self._high_rxt = 0
                self._probe_proved_loss = False
                self._maybe_undo()
            elif self._sack_recovery:
                self._sack_send(now)
            else:
                # Partial acknowledgement: retransmit the next hole, deflate the window.
                self._retransmit_first()
                self.cwnd = max(self.cwnd - acked + mss, mss)
                self._arm_rtx(now)
        elif data_acked > 0:
            self.dupacks = 0
            self._probe_proved_loss = False  # the probe's news is old now
            # Appropriate byte counting (RFC 3465): growth follows the bytes acknowledged,
            # not the number of ACKs, so a receiver that acknowledges a burst at once (as
            # ours and Linux's with GRO do) does not slow the sender down.
            grow = data_acked if cwnd_limited else 0
            if grow and self.cwnd < self.ssthresh:  # slow start, up to ssthresh
                step = min(grow, self.ssthresh - self.cwnd)
                self.cwnd += step
                grow -= step
            if grow > 0:  # congestion avoidance: one MSS per window acknowledged
                self._ca_bytes += grow
                if self._ca_bytes >= self.cwnd:
                    self._ca_bytes -= self.cwnd
                    self.cwnd += mss
            if self._scoreboard:
                self._maybe_enter_sack_recovery(now)  # holes remain below new SACKs
        if self.snd_una == self.snd_max:
            self._rtx_deadline = self._pto_deadline = None
        else:
            self._arm_rtx(now)
            self._arm_pto(now)
        if self._was_full and self.send_space >= self.send_buffer_size // 2:
            self._was_full = False
            self.owner.tcp_writable(self)

    def _duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        mss = self.mss
        if self.in_recovery:
            if self._sack_recovery:
                self._sack_send(now)
            else:
                self.cwnd += mss  # each duplicate means a segment left the network
        elif self.sack_ok and self.snd_nxt == self.snd_max:
            self._maybe_enter_sack_recovery(now)
        elif self.dupacks == 3 and seq_lt(self.recover, self.snd_una + 1):
            flight = seq_diff(self.snd_max, self.snd_una)
            self.ssthresh = max(flight // 2, 2 * mss)
            self.recover = self.snd_max
            self.in_recovery = True
            self._pto_deadline = None
            self._retransmit_first()
            self.cwnd = self.ssthresh + 3 * mss
            self._arm_rtx(now)

    # -- SACK-based loss recovery (RFC 6675) and its undo (RFC 2883 D-SACK) -------------

    def _take_sack(self, seg: Segment) -> bool:
        """Record the blocks of an incoming ACK; True if they SACK bytes not known before."""
        una = self.snd_una
        flight = seq_diff(self.snd_max, una)
        before = self._scoreboard.sacked
        blocks = seg.sack
        for i, (left, right) in enumerate(blocks):
            if i == 0 and (
                seq_le(right, seg.ack)
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
            self._scoreboard.add(max(lo, 0), min(hi, flight))
        return self._scoreboard.sacked > before

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
        if self._probe_proved_loss:
            return 1
        threshold = (self.dupthresh - 1) * self.mss + 1
        board = self._scoreboard
        if board:
            sent = min(len(self._sndbuf), seq_diff(self.snd_max, self.snd_una))  # no FIN
            start, end = board.ranges[-1]
            if end >= sent:
                if self.dupthresh == DUPTHRESH:
                    threshold = min(threshold, end - start)
                else:
                    threshold = min(threshold, sent - self.mss)
        return max(1, threshold)

    def _maybe_enter_sack_recovery(self, now: float) -> None:
        if (
            self.in_recovery
            or not self.sack_ok
            or self.snd_nxt != self.snd_max
            or not seq_le(self.recover, self.snd_una)  # that window's loss is handled
        ):
            return
        if self.dupacks < self.dupthresh and not self._scoreboard.is_lost(
            0, self._loss_threshold()
        ):
            return
        mss = self.mss
        flight = seq_diff(self.snd_max, self.snd_una)
        self._undo = (self.cwnd, self.ssthresh)
        self._undo_ranges = []
        self._pto_deadline = None
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh
        self.recover = self.snd_max
        self.in_recovery = self._sack_recovery = True
        self._high_rxt = 0
        # The first unacknowledged segment goes again at once, lost or merely late.
        first = self._scoreboard.ranges[0][0] if self._scoreboard else len(self._sndbuf)
        self._resend(0, min(mss, first, len(self._sndbuf)))
        self._arm_rtx(now)
        self._sack_send(now)

    def _sack_send(self, now: float) -> None:
        """While the pipe leaves room in cwnd: resend the next lost hole, else new data."""
        mss = self.mss
        threshold = self._loss_threshold()
        board = self._scoreboard
        pipe = board.pipe(seq_diff(self.snd_max, self.snd_una), threshold, self._high_rxt)
        for _ in range(64):  # bounded per ACK; the next ACK continues
            if self.cwnd - pipe < mss:
                break
            hole = board.next_lost(self._high_rxt, threshold)
            if hole is not None:
                start, end = hole
                n = min(mss, end - start, len(self._sndbuf) - start)
                if n <= 0:
                    break
                self._resend(start, n)
            else:
                offset = seq_diff(self.snd_nxt, self.snd_una)
                unsent = len(self._sndbuf) - offset
                n = min(mss, unsent, self.snd_wnd - offset)
                if n <= 0 or (n < mss and n < unsent):
                    break
                self._send_next(n)
            pipe += n

    def _resend(self, offset: int, n: int) -> None:
        if n <= 0:
            return
        self._rtt_seq = None  # Karn
        seq = (self.snd_una + offset) & MASK
        self._emit(ACK, seq, bytes(self._sndbuf[offset : offset + n]))
        self._high_rxt = max(self._high_rxt, offset + n)
        self._undo_ranges.append((seq, (seq + n) & MASK))

    def _maybe_undo(self) -> None:
        """Once a recovery is over and D-SACKs showed each of its retransmissions to be
        needless, the losses were reordering: restore the window it cut, and wait for
        more duplicates next time before calling a segment lost."""
        if self._undo is None or self.in_recovery or self._undo_ranges:
            return
        cwnd, ssthresh = self._undo
        self._undo = None
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)
        self.dupthresh = min(self.dupthresh * 2, MAX_DUPTHRESH)

    def _rtt_sample(self, now: float) -> None:
        if self._rtt_seq is None or seq_lt(self.snd_una, self._rtt_seq):
            return
        r = max(now - self._rtt_time, 0.0)
        self._rtt_seq = None
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + max(0.001, 4 * self.rttvar), RTO_MIN), RTO_MAX)

    def _arm_rtx(self, now: float) -> None:
        self._rtx_deadline = now + self.rto

    def _retransmission_timeout(self, now: float) -> None:
        self.retries += 1
        limit = SYN_RETRIES if self.state in (State.SYN_SENT, State.SYN_RECEIVED) else DATA_RETRIES
        if self.retries > limit:
            if self.state in SYNCHRONIZED:
                self._out.append(
                    Segment(self.local_port, self.remote_port, self.snd_nxt, 0, RST, 0)
                )
            self._finish(OSError(errno.ETIMEDOUT, "connection timed out"))
            return
        self.rto = min(self.rto * 2, RTO_MAX)  # exponential backoff (RFC 6298 5.5)
        self._rtt_seq = None  # Karn: never time a retransmitted segment
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            self._send_syn(now, with_ack=self.state == State.SYN_RECEIVED)
            return
        flight = seq_diff(self.snd_max, self.snd_una)
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.in_recovery = self._sack_recovery = False
        self.dupacks = 0
        self._scoreboard.clear()  # as if the receiver reneged (RFC 2018 8): resend it all
        self._tlp_out = self._probe_proved_loss = False
        self._high_rxt = 0
        self._undo = None
        self.recover = self.snd_max
        # Go back N: resend from the first unacknowledged byte as the window reopens.
        self.snd_nxt = self.snd_una
        self._output(now)
        if self._rtx_deadline is None:
            self._arm_rtx(now)

    def _retransmit_first(self) -> None:
        n = min(self.mss, len(self._sndbuf), seq_diff(self.snd_max, self.snd_una))
        if self._rtt_seq is not None:
            self._rtt_seq = None
        if n:
            self._emit(ACK, self.snd_una, bytes(self._sndbuf[:n]))
        elif self._fin_seq == self.snd_una:
            self._emit(ACK | FIN, self.snd_una, b"")

    # -- receiving data ----------------------------------------------------------------

    def _receive_text(self, seg: Segment, now: float) -> None:
        if self.state not in RECEIVES_DATA:
            if seg.flags & FIN and self.state == State.TIME_WAIT:
                self._send_ack()  # our last ACK was lost; the peer resent its FIN
                self._enter_time_wait(now)
            return
        payload = seg.payload
        fin = bool(seg.flags & FIN)
        offset = seq_diff(seg.seq, self.rcv_nxt)
        if offset < 0:  # starts before rcv_nxt: trim what we already have
            if self.sack_ok:
                self._dsack = (seg.seq, self.rcv_nxt)
            payload = payload[-offset:]
            offset = 0
        window = self._accept_window()
        if len(payload) > window - offset:
            payload = payload[: max(window - offset, 0)]
            fin = False  # the FIN lies beyond the window; it will come again
        if offset > 0:
            # Held until the hole before it fills. Overlapping copies (a retransmission
            # cut differently, or a peer playing games) are each held at most once per
            # start and never beyond a window's worth in all, so memory stays bounded.
            if (payload or fin) and offset < window:
                start = (self.rcv_nxt + offset) & MASK
                held = self._ooo.get(start)
                if (held is None or len(held[0]) < len(payload)) and (
                    self._ooo_bytes - (len(held[0]) if held else 0) + len(payload) <= window
                ):
                    if held is not None:
                        self._ooo_bytes -= len(held[0])
                    self._ooo[start] = (payload, fin)
                    self._ooo_bytes += len(payload)
                elif held is not None and self.sack_ok:
                    self._dsack = (start, (start + len(payload)) & MASK)
                self._latest_ooo = start
            self._send_ack()  # duplicate ACK tells the sender about the hole
            return
        filled_hole = bool(self._ooo)
        self._append(payload, fin, now)
        self._drain_ooo(now)
        if self._fin_received or filled_hole:
            self._ack_due = True
        elif payload:
            self._unacked_segments += 1
            if self._unacked_segments >= 2 or len(payload) < self.local_mss:
                self._ack_due = True
            elif self._delack_deadline is None:
                self._delack_deadline = now + DELAYED_ACK
        if payload:
            self.owner.tcp_readable(self)

    def _append(self, payload: bytes, fin: bool, now: float) -> None:
        if payload:
            self._rcvbuf += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) & MASK
        if fin and not self._fin_received:
            self._receive_fin(now)

    def _drain_ooo(self, now: float) -> None:
        if not self._ooo:
            return
        # In sequence order from rcv_nxt, one pass takes everything now contiguous.
        base = self.rcv_nxt
        for start in sorted(self._ooo, key=lambda s: seq_diff(s, base)):
            if self._fin_received:
                break
            offset = seq_diff(start, self.rcv_nxt)
            if offset > 0:
                break  # the next hole
            payload, fin = self._ooo.pop(start)
            self._ooo_bytes -= len(payload)
            if offset + len(payload) > 0 or (fin and offset + len(payload) == 0):
                self._append(payload[-offset:] if offset else payload, fin, now)
        if self._fin_received:
            self._ooo.clear()
            self._ooo_bytes = 0

    def _receive_fin(self, now: float) -> None:
        self._fin_received = True
        self.rcv_nxt = (self.rcv_nxt + 1) & MASK
        if self.state == State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif self.state == State.FIN_WAIT_1:
            if self._fin_acked():
                self._enter_time_wait(now)
            else:
                self.state = State.CLOSING  # simultaneous close
        elif self.state == State.FIN_WAIT_2:
            self._enter_time_wait(now)
        self.owner.tcp_eof(self)

    def _fin_acked(self) -> bool:
        return self._fin_seq is not None and seq_lt(self._fin_seq, self.snd_una)

    def _receive_window(self) -> int:
        return max(self.receive_buffer_size - len(self._rcvbuf), 0)

    def _accept_window(self) -> int:
        """What we take in: our free space, or more if we already promised more."""
        return max(self._receive_window(), seq_diff(self._rcv_adv, self.rcv_nxt))

    def _window_field(self) -> int:
        """The window field for an outgoing segment; remembers the edge it shows.

        ``_rcv_adv`` is the right edge as the peer computes it (SEG.ACK + field << scale).
        That edge never moves left (RFC 9293 3.8.6.2.2, RFC 7323 2.4): when our free
        space, rounded down to the scale, would show less, the remaining promise is
        rounded *up* instead, and we accept up to it even past the buffer's size. Rounding
        up can creep the promise forward by up to 2**scale - 1 bytes per ACK (with ACKs every
        two full segments, a few percent of the buffer); past 1/OVERCOMMIT_DIVISOR of the
        buffer the window is allowed to close rather than let a peer that dribbles odd-sized
        segments grow our buffer without limit.
        """
        shift = self.rcv_wscale
        field = min(self._receive_window() >> shift, 0xFFFF)
        right = (self.rcv_nxt + (field << shift)) & MASK
        if seq_lt(right, self._rcv_adv):
            promised = seq_diff(self._rcv_adv, self.rcv_nxt)
            rounded = min((promised + (1 << shift) - 1) >> shift, 0xFFFF)
            over = (rounded << shift) + len(self._rcvbuf) - self.receive_buffer_size
            if over <= max(2 << shift, self.receive_buffer_size // OVERCOMMIT_DIVISOR):
                field = rounded
                right = (self.rcv_nxt + (field << shift)) & MASK
        self._rcv_adv = right
        return field

    def _maybe_window_update(self, now: float) -> None:
        if self.state not in RECEIVES_DATA:
            return
        advertised = seq_diff(self._rcv_adv, self.rcv_nxt)
        # The most a window field can say (a 16-bit field, scaled).
        largest = min(self.receive_buffer_size, 0xFFFF << self.rcv_wscale)
        available = min(self._receive_window(), largest)
        # Announce an opening only when it matters to the sender: the window it knows has
        # become small, and reading has freed a worthwhile amount (receiver SWS avoidance,
        # RFC 9293 3.8.6.2.2). Otherwise the next ACK carries the new window anyway.
        worthwhile = min(largest // 2, 2 * self.local_mss)
        if advertised < largest // 2 and available - advertised >= worthwhile:
            self._ack_due = True

    # -- sending -----------------------------------------------------------------------

    def _send_syn(self, now: float, *, with_ack: bool, timed: bool = True) -> None:
        flags = SYN | ACK if with_ack else SYN
        seg = Segment(
            self.local_port,
            self.remote_port,
            self.iss,
            self.rcv_nxt if with_ack else 0,
            flags,
            min(self.receive_buffer_size, 0xFFFF),
            mss=self.local_mss,
            wscale=WSCALE if not with_ack or self.rcv_wscale else None,
            sack_permitted=not with_ack or self.sack_ok,
        )
        if timed and self.retries == 0:
            self._rtt_seq = (self.iss + 1) & MASK
            self._rtt_time = now
        self._out.append(seg)
        self._arm_rtx(now)

    def _take_syn_options(self, syn: Segment) -> None:
        self.mss = min(syn.mss or 536, self.local_mss)
        if syn.wscale is not None:
            self.snd_wscale = syn.wscale
            self.rcv_wscale = WSCALE
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = syn.sack_permitted
        # RFC 6928 initial window, then slow start.
        self.cwnd = min(10 * self.mss, max(2 * self.mss, 14600))
        self._rcv_adv = (syn.seq + 1 + min(self.receive_buffer_size, 0xFFFF)) & MASK

    def _emit(self, flags: int, seq: int, payload: bytes) -> None:
        seg = Segment(
            self.local_port,
            self.remote_port,
            seq,
            self.rcv_nxt,
            flags,
            self._window_field(),
            payload,
        )
        # SACK blocks ride on pure ACKs only: on a full-sized data segment they would push
        # it past the MSS. Duplicate ACKs, which report holes, are always pure.
        if self.sack_ok and flags == ACK and not payload and (self._ooo or self._dsack):
            seg.sack = receiver_blocks(
                ((start, len(p)) for start, (p, _) in self._ooo.items()),
                self.rcv_nxt,
                self._latest_ooo,
                self._dsack,
            )
            self._dsack = None
        self._out.append(seg)
        self._delack_deadline = None
        self._unacked_segments = 0
        self._ack_due = False

    def _send_ack(self) -> None:
        if self.state in (State.CLOSED, State.SYN_SENT):
            return
        # SEG.SEQ = SND.NXT in RFC terms; after go-back-N our next *new* byte is snd_max.
        self._emit(ACK, self.snd_max, b"")

    def _output(self, now: float) -> None:
        """Send whatever the windows allow: new data, then a queued FIN."""
        if self.state not in SENDS_DATA | {State.CLOSING}:
            return
        mss = self.mss
        sent_new = False
        while True:
            flight = seq_diff(self.snd_nxt, self.snd_una)
            offset = flight  # sndbuf starts at snd_una
            unsent = len(self._sndbuf) - offset
            window = min(self.snd_wnd, self.cwnd)
            if unsent > 0:
                usable = window - flight
                n = min(mss, unsent, usable)
                if n <= 0 or (n < mss and n < unsent and flight > 0):
                    # Window-limited: wait for ACKs rather than send runts (sender SWS).
                    if self.snd_wnd == 0 and flight == 0 and self._persist_deadline is None:
                        self._persist_deadline = now + self.rto
                    break
                new_data = self.snd_nxt == self.snd_max
                if new_data and self._rtt_seq is None:
                    self._rtt_seq = (self.snd_nxt + n) & MASK
                    self._rtt_time = now
                self._send_next(n)
                if self._rtx_deadline is None:
                    self._arm_rtx(now)
                sent_new = sent_new or new_data
                continue
            if self._fin_queued and (self._fin_seq is None or self._fin_seq == self.snd_nxt):
                self._emit(ACK | FIN, self.snd_nxt, b"")
                self._fin_seq = self.snd_nxt
                self.snd_nxt = (self.snd_nxt + 1) & MASK
                if seq_lt(self.snd_max, self.snd_nxt):
                    self.snd_max = self.snd_nxt
                sent_new = True
                if self.state == State.ESTABLISHED:
                    self.state = State.FIN_WAIT_1
                elif self.state == State.CLOSE_WAIT:
                    self.state = State.LAST_ACK
                if self._rtx_deadline is None:
                    self._arm_rtx(now)
            break
        if sent_new:
            self._arm_pto(now)  # RFC 8985 7.2: restarted whenever new data goes out

    def _send_next(self, n: int) -> None:
        """Send the ``n`` bytes at snd_nxt (PSH on the last queued) and move past them."""
        offset = seq_diff(self.snd_nxt, self.snd_una)
        flags = ACK | PSH if offset + n == len(self._sndbuf) else ACK
        self._emit(flags, self.snd_nxt, bytes(self._sndbuf[offset : offset + n]))
        self.snd_nxt = (self.snd_nxt + n) & MASK
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt

    def _arm_pto(self, now: float) -> None:
        """Schedule a tail loss probe two smoothed RTTs out, if it would beat the RTO."""
        if (
            not self.sack_ok
            or self.in_recovery
            or self._tlp_out
            or self.snd_una == self.snd_max
            or self.snd_nxt != self.snd_max
        ):
            self._pto_deadline = None
            return
        pto = 2 * self.srtt if self.srtt is not None else RTO_INITIAL
        if seq_diff(self.snd_max, self.snd_una) <= self.mss:
            pto += WORST_DELAYED_ACK  # a lone segment's ACK may be held back that long
        deadline = now + max(pto, 0.01)
        if self._rtx_deadline is not None and deadline >= self._rtx_deadline:
            self._pto_deadline = None
        else:
            self._pto_deadline = deadline

    def _probe_tail(self, now: float) -> None:
        """Nothing heard for a while: send one segment, new data if any may go, else the
        last one again, so the peer's answer (with SACK) shows what is missing."""
        if self.state not in SENDS_DATA | {State.CLOSING} or self.snd_una == self.snd_max:
            return
        flight = seq_diff(self.snd_max, self.snd_una)
        unsent = len(self._sndbuf) - flight
        n = min(self.mss, unsent, self.snd_wnd - flight)
        if n > 0 and self._fin_seq is None:
            self._emit(ACK, self.snd_nxt, bytes(self._sndbuf[flight : flight + n]))
            self.snd_nxt = self.snd_max = (self.snd_nxt + n) & MASK
        else:
            end = min(len(self._sndbuf), flight)
            start = max(0, end - self.mss)
            self._rtt_seq = None  # Karn
            if end > start:
                seq = (self.snd_una + start) & MASK
                # The highest segment sent, so with our FIN if that came right after it.
                fin = self._fin_seq is not None and self._fin_seq == (seq + end - start) & MASK
                self._emit(ACK | FIN if fin else ACK, seq, bytes(self._sndbuf[start:end]))
            elif self._fin_seq is not None:
                self._emit(ACK | FIN, self._fin_seq, b"")
        self._tlp_out = True
        self._arm_rtx(now)

    def _probe_window(self, now: float) -> None:
        if self.state not in SENDS_DATA or not self._sndbuf or self.snd_wnd:
            return
        # An already-acknowledged sequence number: the peer must answer with its window.
        self._emit(ACK, (self.snd_una - 1) & MASK, b"")
        self.rto = min(self.rto * 2, RTO_MAX)
        self._persist_deadline = now + self.rto

    # -- closing -----------------------------------------------------------------------

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self._rtx_deadline = self._pto_deadline = None
        self._persist_deadline = None
        self._timewait_deadline = now + 2 * MSL

    def _finish(self, error: OSError | None, *, notify: bool = True) -> None:
        if self.state == State.CLOSED:
            return
        self.state = State.CLOSED
        self.error = error
        self._rtx_deadline = self._delack_deadline = self._pto_deadline = None
        self._persist_deadline = self._timewait_deadline = None
        self._sndbuf.clear()
        self._ooo.clear()
        if notify:
            self.owner.tcp_closed(self, error)
