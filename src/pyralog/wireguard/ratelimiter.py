"""Per-source token bucket for handshake messages, applied while the device is under load.

A source is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64). Written
by hand because it is a dozen lines and must take ``now`` rather than read a clock.
"""

from __future__ import annotations

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
_PACKET_COST = 1.0 / PACKETS_PER_SECOND
_MAX_TOKENS = _PACKET_COST * PACKETS_BURSTABLE
_GC_INTERVAL = 1.0


class RateLimiter:
    __slots__ = ("_buckets", "_last_gc")

    def __init__(self) -> None:
        # source -> (tokens, time of last refill); tokens measured in seconds of credit
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._last_gc = 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source_ip: bytes, now: float) -> bool:
        if now - self._last_gc >= _GC_INTERVAL:
            self._collect(now)
        key = source_ip[:8] if len(source_ip) == 16 else source_ip
        entry = self._buckets.get(key)
        if entry is None:
            self._buckets[key] = (_MAX_TOKENS - _PACKET_COST, now)
            return True
        tokens, last = entry
        tokens = min(_MAX_TOKENS, tokens + (now - last))
        if tokens >= _PACKET_COST:
            self._buckets[key] = (tokens - _PACKET_COST, now)
            return True
        self._buckets[key] = (tokens, now)
        return False

    def _collect(self, now: float) -> None:
        # A bucket idle for a second is full again, so forgetting it changes nothing.
        stale = [k for k, (_, last) in self._buckets.items() if now - last >= _GC_INTERVAL]
        for k in stale:
            del self._buckets[k]
        self._last_gc = now
