"""Congestion control: how the congestion window grows as data is acknowledged and how far
it is cut when the network shows congestion (RFC 5681, with byte counting per RFC 3465 and
no growth while the window is not the limit, RFC 7661).

``CongestionControl`` is what loss recovery (``tcp_recovery``) and the connection need of
a controller; ``Reno`` is the one implemented. Loss *detection* and the window *during* a
recovery (NewReno's inflation, RFC 6675's pipe) are recovery's business, as in Linux, where
tcp_input.c recovers and a ``tcp_congestion_ops`` only grows, cuts and undoes; so another
controller (CUBIC, RFC 9438) only has to implement these few methods.
"""

from __future__ import annotations

from typing import Protocol

INITIAL_SSTHRESH = 1 << 30  # effectively unlimited: slow start until the first loss


class CongestionControl(Protocol):
    # Read by the sender for every segment; recovery writes cwnd while a recovery lasts.
    cwnd: int
    ssthresh: int

    def start(self, mss: int) -> None:
        """The connection is synchronized and sends segments of ``mss`` bytes."""

    def on_ack(self, acked: int, flight: int, mss: int) -> None:
        """``acked`` new data bytes were acknowledged outside recovery; ``flight`` bytes
        were outstanding when the acknowledgement arrived."""

    def on_loss(self, flight: int, mss: int) -> None:
        """A loss was detected with ``flight`` bytes outstanding, and recovery starts: set
        ssthresh, and cwnd to the reduced window."""

    def on_timeout(self, flight: int, mss: int) -> None:
        """The retransmission timer fired with ``flight`` bytes outstanding."""

    def undo(self, cwnd: int, ssthresh: int) -> None:
        """The last cut was a mistake (D-SACKs showed reordering, not loss): restore the
        window from (``cwnd``, ``ssthresh``) as they were before it."""


class Reno:
    """Slow start and congestion avoidance of RFC 5681, counting bytes (RFC 3465)."""

    __slots__ = ("_ca_bytes", "cwnd", "ssthresh")

    def __init__(self) -> None:
        self.cwnd = 0
        self.ssthresh = INITIAL_SSTHRESH
        self._ca_bytes = 0  # bytes acknowledged towards the next congestion-avoidance MSS

    def start(self, mss: int) -> None:
        self.cwnd = min(10 * mss, max(2 * mss, 14600))  # RFC 6928 initial window

    def on_ack(self, acked: int, flight: int, mss: int) -> None:
        # Was the window the limit? Only then may it grow (RFC 7661): a sender held back
        # by the application or the peer's window has not tested a larger one.
        if flight + mss <= self.cwnd:
            return
        # Appropriate byte counting (RFC 3465): growth follows the bytes acknowledged,
        # not the number of ACKs, so a receiver that acknowledges a burst at once (as
        # ours and Linux's with GRO do) does not slow the sender down.
        grow = acked
        if self.cwnd < self.ssthresh:  # slow start, up to ssthresh
            step = min(grow, self.ssthresh - self.cwnd)
            self.cwnd += step
            grow -= step
        if grow > 0:  # congestion avoidance: one MSS per window acknowledged
            self._ca_bytes += grow
            if self._ca_bytes >= self.cwnd:
                self._ca_bytes -= self.cwnd
                self.cwnd += mss

    def on_loss(self, flight: int, mss: int) -> None:
        self.ssthresh = max(flight // 2, 2 * mss)  # RFC 5681 equation (4)
        self.cwnd = self.ssthresh

    def on_timeout(self, flight: int, mss: int) -> None:
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss  # the loss window: one segment

    def undo(self, cwnd: int, ssthresh: int) -> None:
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)
