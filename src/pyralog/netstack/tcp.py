"""One TCP connection, sans-IO (RFC 9293): the state machine, segment handling, the send
buffer and its segmentation, delayed ACKs, window scaling (RFC 7323), RFC 5961 challenge
ACKs and selective acknowledgements (RFC 2018, D-SACK per RFC 2883). Written by hand
because no maintained Python library implements TCP.

The connection delegates, one concept per module: ``tcp_rtt`` (RFC 6298 RTT estimation
and the RTO), ``tcp_congestion`` (the congestion window: Reno with byte counting),
``tcp_recovery`` (loss recovery: NewReno, RFC 6675 SACK recovery and its D-SACK undo, the
tail loss probe), ``tcp_receive`` (reassembly and the advertised window); ``tcp_sack``,
``tcp_segment`` and ``tcp_seq`` hold the SACK data structures, the wire format and
sequence arithmetic. Their names are re-exported here, as they were defined here before,
and the state tests read (``cwnd``, ``srtt``, ``rcv_nxt``, ...) stays readable as
properties. What remains is long for one module (about 750 lines): RFC 9293's segment
arrival procedure and the transmit paths, which share the send sequence space on every
segment; split, each segment would pay for the hop to it.

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

from pyralog.netstack.tcp_congestion import Reno
from pyralog.netstack.tcp_receive import OVERCOMMIT_DIVISOR, Receiver
from pyralog.netstack.tcp_recovery import (
    DUPTHRESH,
    MAX_DUPTHRESH,
    WORST_DELAYED_ACK,
    LossRecovery,
)
from pyralog.netstack.tcp_rtt import RTO_INITIAL, RTO_MAX, RTO_MIN, RttEstimator
from pyralog.netstack.tcp_sack import Scoreboard
from pyralog.netstack.tcp_segment import ACK, FIN, PSH, RST, SYN, Segment
from pyralog.netstack.tcp_seq import MASK, seq_diff, seq_le, seq_lt

__all__ = [
    "DATA_RETRIES",
    "DEFAULT_BUFFER",
    "DELAYED_ACK",
    "DUPTHRESH",
    "MASK",
    "MAX_DUPTHRESH",
    "MSL",
    "OVERCOMMIT_DIVISOR",
    "RECEIVES_DATA",
    "RTO_INITIAL",
    "RTO_MAX",
    "RTO_MIN",
    "SENDS_DATA",
    "SYNCHRONIZED",
    "SYN_RETRIES",
    "WORST_DELAYED_ACK",
    "WSCALE",
    "State",
    "TcpConnection",
    "TcpOwner",
    "seq_diff",
    "seq_le",
    "seq_lt",
]

MSL = 30.0  # maximum segment lifetime; TIME_WAIT lasts 2 MSL
DELAYED_ACK = 0.04
SYN_RETRIES = 6
DATA_RETRIES = 15
WSCALE = 7
DEFAULT_BUFFER = 256 * 1024


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
        # receive sequence space (irs here, the rest in the receiver)
        self.irs = 0
        self._rx = Receiver(receive_buffer, self._receive_fin)
        # selective acknowledgements (both negotiated in the SYNs, or neither)
        self.sack_ok = False
        self._cc = Reno()  # congestion window
        self._recovery = LossRecovery(self, self._cc, iss)  # loss recovery, the TLP timer
        self._rtt = RttEstimator()
        self.retries = 0  # retransmission timeouts in a row
        # timers (the tail loss probe's is the recovery's)
        self._rtx_deadline: float | None = None
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
        rx = self._rx
        if not rx.buf:
            return b""
        data = rx.read(limit)
        if self.state in RECEIVES_DATA and rx.window_update_due(self.local_mss):
            self._ack_due = True
        return data

    @property
    def readable(self) -> int:
        return len(self._rx.buf)

    @property
    def at_eof(self) -> bool:
        return self._rx.fin_received and not self._rx.buf

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
            self._recovery.pto_deadline,
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
        recovery = self._recovery
        if self._rtx_deadline is not None and now >= self._rtx_deadline:
            self._rtx_deadline = None
            recovery.pto_deadline = None
            self._retransmission_timeout(now)
        if recovery.pto_deadline is not None and now >= recovery.pto_deadline:
            recovery.pto_deadline = None
            if not recovery.in_recovery:
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
        rx = self._rx
        # A retransmitted FIN in TIME-WAIT: our last ACK was lost. ACK again, restart 2 MSL.
        if (
            self.state == State.TIME_WAIT
            and flags & FIN
            and not flags & RST
            and (seg.seq + len(seg.payload) + 1) & MASK == rx.rcv_nxt
        ):
            self._send_ack()
            self._enter_time_wait(now)
            return
        # 1. sequence number acceptability
        if not rx.acceptable(seg):
            if (
                self.state == State.SYN_RECEIVED
                and flags & (SYN | ACK) == SYN
                and seg.seq == self.irs
            ):
                self._rtt.cancel()  # Karn: the answer may be to either copy
                self._send_syn(now, with_ack=True, timed=False)  # our SYN-ACK was lost
            elif not flags & RST:
                end = (seg.seq + len(seg.payload)) & MASK
                if self.sack_ok and seg.payload and seq_le(end, rx.rcv_nxt):
                    rx.dsack = (seg.seq, end)  # a whole duplicate: report it (RFC 2883)
                self._send_ack()
            return
        # 2. RST (RFC 5961 3.2: only an exact match resets; in-window gets a challenge)
        if flags & RST:
            if seg.seq == rx.rcv_nxt:
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
        self._take_syn_options(seg)
        if flags & ACK:
            self.snd_una = seg.ack
            self._rtx_deadline = None
            self._rtt.on_ack(seg.ack, now)
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

    # -- acknowledgements --------------------------------------------------------------

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth check. Returns False when the segment must be dropped."""
        ack = seg.ack
        if seq_lt(self.snd_max, ack):
            self._send_ack()  # acknowledges something we never sent
            return False
        # SACK blocks first, against the snd_una they were written for.
        sacked_more = self.sack_ok and bool(seg.sack) and self._recovery.on_sack(seg.sack, ack)
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
            self._recovery.on_duplicate_ack(now)
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
        una = self.snd_una
        acked = seq_diff(ack, una)
        flight = seq_diff(self.snd_max, una)  # before this ACK: was cwnd the limit?
        data_acked = acked
        if self._fin_seq is not None and seq_lt(self._fin_seq, ack):
            data_acked -= 1  # the FIN's sequence number
        if una == self.iss:
            data_acked -= 1  # our SYN (acknowledged along with data)
        if data_acked > 0:
            del self._sndbuf[:data_acked]
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack  # after go-back-N, the peer had more than we resent
        self._rtt.on_ack(ack, now)
        self.retries = 0
        recovery = self._recovery
        recovery.on_ack(acked, data_acked, flight, now)
        if self.snd_una == self.snd_max:
            self._rtx_deadline = recovery.pto_deadline = None
        else:
            self._arm_rtx(now)
            recovery.arm_probe(now, self._rtt.srtt, self._rtx_deadline)
        if self._was_full and self.send_space >= self.send_buffer_size // 2:
            self._was_full = False
            self.owner.tcp_writable(self)

    def _arm_rtx(self, now: float) -> None:
        self._rtx_deadline = now + self._rtt.rto

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
        self._rtt.back_off()
        self._rtt.cancel()  # Karn: never time a retransmitted segment
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            self._send_syn(now, with_ack=self.state == State.SYN_RECEIVED)
            return
        self._recovery.on_timeout()
        # Go back N: resend from the first unacknowledged byte as the window reopens.
        self.snd_nxt = self.snd_una
        self._output(now)
        if self._rtx_deadline is None:
            self._arm_rtx(now)

    def _retransmit_first(self) -> None:
        n = min(self.mss, len(self._sndbuf), seq_diff(self.snd_max, self.snd_una))
        self._rtt.cancel()  # Karn
        if n:
            self._emit(ACK, self.snd_una, bytes(self._sndbuf[:n]))
        elif self._fin_seq == self.snd_una:
            self._emit(ACK | FIN, self.snd_una, b"")

    def _resend(self, offset: int, n: int) -> int:
        """Send the ``n`` bytes at ``offset`` from snd_una again; returns their sequence."""
        self._rtt.cancel()  # Karn
        seq = (self.snd_una + offset) & MASK
        self._emit(ACK, seq, bytes(self._sndbuf[offset : offset + n]))
        return seq

    # -- receiving data ----------------------------------------------------------------

    def _receive_text(self, seg: Segment, now: float) -> None:
        if self.state not in RECEIVES_DATA:
            if seg.flags & FIN and self.state == State.TIME_WAIT:
                self._send_ack()  # our last ACK was lost; the peer resent its FIN
                self._enter_time_wait(now)
            return
        rx = self._rx
        filled_hole = bool(rx.ooo)  # in order while data waits above: a hole is filling
        n = rx.arrive(seg.seq, seg.payload, bool(seg.flags & FIN), self.sack_ok, now)
        if n < 0:
            self._send_ack()  # duplicate ACK tells the sender about the hole
            return
        if rx.fin_received or filled_hole:
            self._ack_due = True
        elif n:
            self._unacked_segments += 1
            if self._unacked_segments >= 2 or n < self.local_mss:
                self._ack_due = True
            elif self._delack_deadline is None:
                self._delack_deadline = now + DELAYED_ACK
        if n:
            self.owner.tcp_readable(self)

    def _receive_fin(self, now: float) -> None:
        """The receiver has taken the peer's FIN, in order (it counted it in rcv_nxt)."""
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

    # -- sending -----------------------------------------------------------------------

    def _send_syn(self, now: float, *, with_ack: bool, timed: bool = True) -> None:
        flags = SYN | ACK if with_ack else SYN
        rx = self._rx
        seg = Segment(
            self.local_port,
            self.remote_port,
            self.iss,
            rx.rcv_nxt if with_ack else 0,
            flags,
            min(rx.size, 0xFFFF),
            mss=self.local_mss,
            wscale=WSCALE if not with_ack or rx.wscale else None,
            sack_permitted=not with_ack or self.sack_ok,
        )
        if timed and self.retries == 0:
            self._rtt.time((self.iss + 1) & MASK, now)
        self._out.append(seg)
        self._arm_rtx(now)

    def _take_syn_options(self, syn: Segment) -> None:
        self.mss = min(syn.mss or 536, self.local_mss)
        if syn.wscale is not None:
            self.snd_wscale = syn.wscale
            self._rx.start(syn.seq, WSCALE)
        else:
            self.snd_wscale = 0
            self._rx.start(syn.seq, 0)
        self.sack_ok = syn.sack_permitted
        self._cc.start(self.mss)  # the initial window, then slow start

    def _emit(self, flags: int, seq: int, payload: bytes) -> None:
        rx = self._rx
        seg = Segment(
            self.local_port,
            self.remote_port,
            seq,
            rx.rcv_nxt,
            flags,
            rx.window_field(),
            payload,
        )
        # SACK blocks ride on pure ACKs only: on a full-sized data segment they would push
        # it past the MSS. Duplicate ACKs, which report holes, are always pure.
        if self.sack_ok and flags == ACK and not payload and (rx.ooo or rx.dsack):
            seg.sack = rx.sack_blocks()
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
        rtt = self._rtt
        # Sending changes neither window: both are read once, not per segment (hot path).
        window = min(self.snd_wnd, self._cc.cwnd)
        sent_new = False
        while True:
            flight = seq_diff(self.snd_nxt, self.snd_una)
            offset = flight  # sndbuf starts at snd_una
            unsent = len(self._sndbuf) - offset
            if unsent > 0:
                usable = window - flight
                n = min(mss, unsent, usable)
                if n <= 0 or (n < mss and n < unsent and flight > 0):
                    # Window-limited: wait for ACKs rather than send runts (sender SWS).
                    if self.snd_wnd == 0 and flight == 0 and self._persist_deadline is None:
                        self._persist_deadline = now + rtt.rto
                    break
                new_data = self.snd_nxt == self.snd_max
                if new_data and rtt.timed_seq is None:
                    rtt.time((self.snd_nxt + n) & MASK, now)
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
            # RFC 8985 7.2: the probe timer restarts whenever new data goes out
            self._recovery.arm_probe(now, rtt.srtt, self._rtx_deadline)

    def _send_next(self, n: int) -> None:
        """Send the ``n`` bytes at snd_nxt (PSH on the last queued) and move past them."""
        offset = seq_diff(self.snd_nxt, self.snd_una)
        flags = ACK | PSH if offset + n == len(self._sndbuf) else ACK
        self._emit(flags, self.snd_nxt, bytes(self._sndbuf[offset : offset + n]))
        self.snd_nxt = (self.snd_nxt + n) & MASK
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt

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
            self._rtt.cancel()  # Karn
            if end > start:
                seq = (self.snd_una + start) & MASK
                # The highest segment sent, so with our FIN if that came right after it.
                fin = self._fin_seq is not None and self._fin_seq == (seq + end - start) & MASK
                self._emit(ACK | FIN if fin else ACK, seq, bytes(self._sndbuf[start:end]))
            elif self._fin_seq is not None:
                self._emit(ACK | FIN, self._fin_seq, b"")
        self._recovery.tlp_out = True
        self._arm_rtx(now)

    def _probe_window(self, now: float) -> None:
        if self.state not in SENDS_DATA or not self._sndbuf or self.snd_wnd:
            return
        # An already-acknowledged sequence number: the peer must answer with its window.
        self._emit(ACK, (self.snd_una - 1) & MASK, b"")
        self._rtt.back_off()
        self._persist_deadline = now + self._rtt.rto

    # -- closing -----------------------------------------------------------------------

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self._rtx_deadline = self._recovery.pto_deadline = None
        self._persist_deadline = None
        self._timewait_deadline = now + 2 * MSL

    def _finish(self, error: OSError | None, *, notify: bool = True) -> None:
        if self.state == State.CLOSED:
            return
        self.state = State.CLOSED
        self.error = error
        self._rtx_deadline = self._delack_deadline = self._recovery.pto_deadline = None
        self._persist_deadline = self._timewait_deadline = None
        self._sndbuf.clear()
        self._rx.ooo.clear()
        if notify:
            self.owner.tcp_closed(self, error)

    # -- state kept by the parts, as attributes of the connection (tests read them) ----

    @property
    def rcv_nxt(self) -> int:
        return self._rx.rcv_nxt

    @property
    def rcv_wscale(self) -> int:
        return self._rx.wscale

    @property
    def receive_buffer_size(self) -> int:
        return self._rx.size

    @property
    def _ooo(self) -> dict[int, tuple[bytes, bool]]:
        return self._rx.ooo

    @property
    def _ooo_bytes(self) -> int:
        return self._rx.ooo_bytes

    @property
    def cwnd(self) -> int:
        return self._cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self._cc.ssthresh

    @property
    def srtt(self) -> float | None:
        return self._rtt.srtt

    @property
    def rttvar(self) -> float:
        return self._rtt.rttvar

    @property
    def rto(self) -> float:
        return self._rtt.rto

    @property
    def in_recovery(self) -> bool:
        return self._recovery.in_recovery

    @property
    def recover(self) -> int:
        return self._recovery.recover

    @property
    def dupacks(self) -> int:
        return self._recovery.dupacks

    @property
    def dupthresh(self) -> int:
        return self._recovery.dupthresh

    @dupthresh.setter
    def dupthresh(self, value: int) -> None:
        self._recovery.dupthresh = value

    @property
    def _scoreboard(self) -> Scoreboard:
        return self._recovery.scoreboard
