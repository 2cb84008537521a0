"""One TCP connection, sans-IO (RFC 9293), with RFC 6298 retransmission timing, RFC 5681
congestion control with NewReno fast recovery (RFC 6582), delayed ACKs, window scaling
(RFC 7323) and RFC 5961 challenge ACKs.

The connection consumes parsed segments and ``now`` and produces segments to send
(``segments_to_send``) and a deadline (``next_deadline``); it never touches a socket or a
clock. Application-facing happenings are reported to an ``owner`` through the ``TcpOwner``
methods. Deliberate simplifications, each safe against a standard peer: no SACK blocks,
no timestamps option, no urgent data, go-back-N after a retransmission timeout.
"""

from __future__ import annotations

import enum
import errno

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
        self.dupacks = 0
        self.recover = iss
        self.in_recovery = False
        # round-trip estimation (RFC 6298), one timed segment at a time (Karn)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self.retries = 0
        # timers
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
            self._retransmission_timeout(now)
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
        if seq_lt(self.snd_una, ack):
            self._new_ack(seg, now)
        elif (
            ack == self.snd_una
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and self.snd_una != self.snd_max
            and seg.window << self.snd_wscale == self.snd_wnd
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
        data_acked = acked
        if self._fin_seq is not None and seq_lt(self._fin_seq, ack):
            data_acked -= 1  # the FIN's sequence number
        if self.snd_una == self.iss:
            data_acked -= 1  # our SYN (acknowledged along with data)
        if data_acked > 0:
            del self._sndbuf[:data_acked]
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack  # after go-back-N, the peer had more than we resent
        self._rtt_sample(now)
        self.retries = 0
        mss = self.mss
        if self.in_recovery:
            if seq_le(self.recover, ack):
                # Full acknowledgement: leave fast recovery (RFC 6582 3.2 step 3).
                flight = seq_diff(self.snd_max, self.snd_una)
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
                self.in_recovery = False
                self.dupacks = 0
            else:
                # Partial acknowledgement: retransmit the next hole, deflate the window.
                self._retransmit_first()
                self.cwnd = max(self.cwnd - acked + mss, mss)
                self._arm_rtx(now)
        elif data_acked > 0:
            self.dupacks = 0
            if self.cwnd < self.ssthresh:
                self.cwnd += min(acked, mss)  # slow start
            else:
                self.cwnd += max(1, mss * mss // self.cwnd)  # congestion avoidance
        if self.snd_una == self.snd_max:
            self._rtx_deadline = None
        else:
            self._arm_rtx(now)
        if self._was_full and self.send_space >= self.send_buffer_size // 2:
            self._was_full = False
            self.owner.tcp_writable(self)

    def _duplicate_ack(self, now: float) -> None:
        self.dupacks += 1
        mss = self.mss
        if self.in_recovery:
            self.cwnd += mss  # each duplicate means a segment left the network
        elif self.dupacks == 3 and seq_lt(self.recover, self.snd_una + 1):
            flight = seq_diff(self.snd_max, self.snd_una)
            self.ssthresh = max(flight // 2, 2 * mss)
            self.recover = self.snd_max
            self.in_recovery = True
            self._retransmit_first()
            self.cwnd = self.ssthresh + 3 * mss
            self._arm_rtx(now)

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
        self.in_recovery = False
        self.dupacks = 0
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
        # RFC 6928 initial window, then slow start.
        self.cwnd = min(10 * self.mss, max(2 * self.mss, 14600))
        self._rcv_adv = (syn.seq + 1 + min(self.receive_buffer_size, 0xFFFF)) & MASK

    def _emit(self, flags: int, seq: int, payload: bytes) -> None:
        self._out.append(
            Segment(
                self.local_port,
                self.remote_port,
                seq,
                self.rcv_nxt,
                flags,
                self._window_field(),
                payload,
            )
        )
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
                flags = ACK | PSH if n == unsent else ACK
                self._emit(flags, self.snd_nxt, bytes(self._sndbuf[offset : offset + n]))
                if new_data and self._rtt_seq is None:
                    self._rtt_seq = (self.snd_nxt + n) & MASK
                    self._rtt_time = now
                self.snd_nxt = (self.snd_nxt + n) & MASK
                if seq_lt(self.snd_max, self.snd_nxt):
                    self.snd_max = self.snd_nxt
                if self._rtx_deadline is None:
                    self._arm_rtx(now)
                continue
            if self._fin_queued and (self._fin_seq is None or self._fin_seq == self.snd_nxt):
                self._emit(ACK | FIN, self.snd_nxt, b"")
                self._fin_seq = self.snd_nxt
                self.snd_nxt = (self.snd_nxt + 1) & MASK
                if seq_lt(self.snd_max, self.snd_nxt):
                    self.snd_max = self.snd_nxt
                if self.state == State.ESTABLISHED:
                    self.state = State.FIN_WAIT_1
                elif self.state == State.CLOSE_WAIT:
                    self.state = State.LAST_ACK
                if self._rtx_deadline is None:
                    self._arm_rtx(now)
            break

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
        self._rtx_deadline = None
        self._persist_deadline = None
        self._timewait_deadline = now + 2 * MSL

    def _finish(self, error: OSError | None, *, notify: bool = True) -> None:
        if self.state == State.CLOSED:
            return
        self.state = State.CLOSED
        self.error = error
        self._rtx_deadline = self._delack_deadline = None
        self._persist_deadline = self._timewait_deadline = None
        self._sndbuf.clear()
        self._ooo.clear()
        if notify:
            self.owner.tcp_closed(self, error)
