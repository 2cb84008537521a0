"""Round-trip time estimation and the retransmission timeout (RFC 6298).

One segment is timed at a time. Karn's rule: a retransmitted segment is never timed, since
its acknowledgement may answer either copy, so every retransmission cancels the timing.
The retransmission timer itself (when it fires, how often before giving up) belongs to the
connection; this class only says how long it should be.
"""

from __future__ import annotations

from pyralog.netstack.tcp_seq import seq_lt

RTO_INITIAL = 1.0
RTO_MIN = 0.2  # Linux's floor; RFC 6298 suggests 1 s, which is needlessly slow on a tunnel
RTO_MAX = 60.0


class RttEstimator:
    """Smoothed RTT, its variation and the RTO derived from them."""

    __slots__ = ("_timed_at", "rto", "rttvar", "srtt", "timed_seq")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        # The acknowledgement that ends the timed segment, when one is being timed. Public
        # so the sender's per-segment loop can test it without a call.
        self.timed_seq: int | None = None
        self._timed_at = 0.0

    def time(self, end: int, now: float) -> None:
        """Time a segment sent at ``now``: the sample comes when ``end`` is acknowledged."""
        self.timed_seq = end
        self._timed_at = now

    def cancel(self) -> None:
        """Karn: what is being timed was (or may have been) sent again."""
        self.timed_seq = None

    def on_ack(self, snd_una: int, now: float) -> None:
        """The cumulative acknowledgement moved to ``snd_una``: a sample if it covers the
        timed segment (RFC 6298 section 2)."""
        if self.timed_seq is None or seq_lt(snd_una, self.timed_seq):
            return
        r = max(now - self._timed_at, 0.0)
        self.timed_seq = None
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + max(0.001, 4 * self.rttvar), RTO_MIN), RTO_MAX)

    def back_off(self) -> None:
        """Double the RTO (RFC 6298 5.5), up to RTO_MAX; the next sample resets it."""
        self.rto = min(self.rto * 2, RTO_MAX)
