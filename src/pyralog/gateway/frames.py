"""Size-prefixed Kafka frames, sans-IO: splitting a byte stream and pairing answers.

The gateway must see frame boundaries in both directions: requests, to learn which
correlation ids will be answered by a response it has to rewrite (and to refuse a local
client's garbage before it reaches a broker); responses, to find those answers. It does
not decode anything else, so this module only splits and peeks at headers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

# Kafka's socket.request.max.bytes default; a local client asking for more is refused.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
# A broker's answer may be larger (a Fetch of many partitions); this only bounds memory.
MAX_RESPONSE_BYTES = 1024 * 1024 * 1024
# api_key, api_version, correlation_id: the start of every request header version.
_REQUEST_PREFIX = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")


class FrameError(ValueError):
    """Bytes that cannot be a Kafka frame; the connection they came on is closed."""


class FrameSplitter:
    """Cuts a byte stream into whole frames, each returned with its 4-byte size prefix
    so that a frame passed through is exactly the bytes that arrived."""

    def __init__(self, minimum: int, maximum: int) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by ``data``; FrameError on an impossible size prefix,
        raised as soon as the prefix is in (a huge body is never waited for)."""
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= 4:
            (size,) = _SIZE.unpack_from(self._buffer)
            if size < self.minimum:
                raise FrameError(f"frame size {size} is below the smallest ({self.minimum})")
            if size > self.maximum:
                raise FrameError(f"frame size {size} exceeds the {self.maximum}-byte bound")
            end = 4 + size
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[:end]))
            del self._buffer[:end]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int


def request_header(frame: bytes) -> RequestHeader:
    """The fixed start of a request frame (size prefix included)."""
    if len(frame) < 4 + _REQUEST_PREFIX.size:
        raise FrameError("frame too short for a request header")
    api_key, api_version, correlation_id = _REQUEST_PREFIX.unpack_from(frame, 4)
    if api_key < 0 or api_version < 0:
        raise FrameError(f"not a request: api key {api_key}, version {api_version}")
    return RequestHeader(api_key, api_version, correlation_id)


def response_correlation_id(frame: bytes) -> int:
    """The correlation id every response header starts with (size prefix included)."""
    return _SIZE.unpack_from(frame, 4)[0]


@dataclass
class Conversation:
    """One client connection through the gateway: both directions' splitters and the
    requests whose answers must be rewritten.

    Only those requests are remembered (by correlation id, as Kafka pairs them), not
    every request: a Produce with acks=0 is never answered and would otherwise stay
    pending for the connection's lifetime.
    """

    watched: frozenset[int]
    # Whether an answer of (api key, version) can be rewritten; a watched request that
    # cannot be is refused rather than answered with addresses the client cannot reach.
    rewritable: Callable[[int, int], bool] = lambda _key, _version: True
    requests: FrameSplitter = field(
        default_factory=lambda: FrameSplitter(_REQUEST_PREFIX.size, MAX_REQUEST_BYTES)
    )
    responses: FrameSplitter = field(default_factory=lambda: FrameSplitter(4, MAX_RESPONSE_BYTES))
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)

    def from_client(self, data: bytes) -> list[bytes]:
        """Whole request frames to forward as they are; FrameError on garbage."""
        frames = self.requests.feed(data)
        for frame in frames:
            header = request_header(frame)
            if header.api_key in self.watched:
                if not self.rewritable(header.api_key, header.api_version):
                    raise FrameError(
                        f"api {header.api_key} v{header.api_version}: the gateway cannot "
                        "rewrite the broker addresses in its answer"
                    )
                self.pending[header.correlation_id] = (header.api_key, header.api_version)
        return frames

    def from_broker(self, data: bytes) -> list[tuple[bytes, tuple[int, int] | None]]:
        """Whole response frames, each with the (api key, version) of its request when
        that request is one whose answer is rewritten, else None."""
        out: list[tuple[bytes, tuple[int, int] | None]] = []
        for frame in self.responses.feed(data):
            out.append((frame, self.pending.pop(response_correlation_id(frame), None)))
        return out
