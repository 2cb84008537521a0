"""Walking a segment file batch by batch, checking each as it goes.

Recovery reads every batch whole and validates it (CRC-32C included); opening, lookups
and `headers()` read only the 61-byte headers, hopping from one to the next by batch
length. Both also check the one invariant the CRC cannot (base_offset lies outside it):
each batch starts at the offset after the previous one's last. Reads go through a
read-ahead buffer so a walk costs one pread per few batches, not one per header.
Hand-written, like everything that touches the segment files (see segment.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from pyralog.log.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    CorruptBatch,
    read_header,
    validate,
)
from pyralog.log.fileio import pread_all

_HEADER_CHUNK = 32 * 1024  # read-ahead when walking headers: a few batches per pread
_BATCH_CHUNK = 1024 * 1024  # read-ahead when checking whole batches (recovery)


class Scan:
    """The batches of a segment file from `start` to `end`, checked as they are read.

    Iterate for (position, header); afterwards `position` is where the walk stopped, and
    `error` says why if that is before `end`. `full` checks each batch whole (CRC);
    otherwise only headers are read, skipping from one to the next by batch length.
    """

    def __init__(self, fd: int, start: int, end: int, offset: int, *, full: bool) -> None:
        self.fd = fd
        self.position = start
        self.end = end
        self.next_offset = offset
        self.full = full
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[int, BatchHeader]]:
        chunk = _BATCH_CHUNK if self.full else _HEADER_CHUNK
        buffer, buffer_at = b"", self.position
        while self.position < self.end:
            at = self.position - buffer_at
            if len(buffer) - at < HEADER_SIZE:
                buffer_at, at = self.position, 0
                buffer = pread_all(self.fd, min(chunk, self.end - self.position), buffer_at)
            try:
                header = read_header(buffer, at)
                if header.base_offset != self.next_offset:
                    raise CorruptBatch(
                        f"offset {header.base_offset} where {self.next_offset} comes next"
                    )
                if self.position + header.size > self.end:
                    raise CorruptBatch(f"batch of {header.size} bytes is cut short")
                if self.full:
                    if len(buffer) - at < header.size:
                        buffer_at, at = self.position, 0
                        size = max(chunk, header.size)
                        buffer = pread_all(self.fd, min(size, self.end - buffer_at), buffer_at)
                    validate(buffer, at)
            except CorruptBatch as e:
                self.error = f"at position {self.position}: {e}"
                return
            yield self.position, header
            self.position += header.size
            self.next_offset = header.next_offset


def whole_batches(data: bytes) -> int:
    """The length of the longest prefix of `data` made of whole batches."""
    end = 0
    while end + LOG_OVERHEAD <= len(data):
        size = LOG_OVERHEAD + int.from_bytes(data[end + 8 : end + 12], "big", signed=True)
        if end + size > len(data):
            break
        end += size
    return end
