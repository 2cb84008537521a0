"""TAI64N timestamps for handshake initiations (whitepaper 5.4.2).

The responder keeps the greatest timestamp seen per peer and rejects anything not
strictly greater, which defeats replayed initiations. Like the reference implementations
we round the nanoseconds down to about 16 ms, so the timestamp does not leak a precise
clock to an observer who can decrypt it.
"""

from __future__ import annotations

import struct

_TAI64_EPOCH = 0x400000000000000A  # TAI64 label of 1970-01-01 00:00:10 TAI
_WHITENER = 0x1000000 - 1  # 2**24 ns
RESOLUTION = (_WHITENER + 1) / 1e9  # seconds: labels closer than this in time may be equal
_FMT = struct.Struct(">QI")
SIZE = _FMT.size


def tai64n(unix_time: float) -> bytes:
    """The 12-byte TAI64N label for ``unix_time`` (seconds since the Unix epoch)."""
    seconds = int(unix_time)
    nanos = int((unix_time - seconds) * 1_000_000_000) & ~_WHITENER
    return _FMT.pack(_TAI64_EPOCH + seconds, nanos)


def parse(stamp: bytes) -> tuple[int, int]:
    """(unix seconds, nanoseconds) of a TAI64N label; raises ValueError on bad length."""
    if len(stamp) != SIZE:
        raise ValueError(f"TAI64N label must be {SIZE} bytes, got {len(stamp)}")
    secs, nanos = _FMT.unpack(stamp)
    return secs - _TAI64_EPOCH, nanos
