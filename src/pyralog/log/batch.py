"""Kafka's v2 record batch, as stored and served: header fields, validation, patching.

The broker keeps batches as the bytes a producer sent (compressed or not) so Fetch can
serve them unchanged. Only the 61-byte header is ever parsed here; `kio.records` does the
record-level decoding for the client. Hand-written because `kio.records` decodes (and
CRC-checks) whole batches and cannot patch one in place.

Layout (big-endian)::

    0  base_offset i64      8  batch_length i32     12 partition_leader_epoch i32
    16 magic i8 (= 2)       17 crc u32 (CRC-32C of bytes 21..end)
    21 attributes i16       23 last_offset_delta i32
    27 base_timestamp i64   35 max_timestamp i64
    43 producer_id i64      51 producer_epoch i16   53 base_sequence i32
    57 records_count i32    61 records...

The CRC does not cover base_offset or the leader epoch, so the broker rewrites those
without recomputing it; LogAppendTime changes max_timestamp, so then the CRC is redone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crc32c import crc32c
from kio.serial.readers import read_signed_varint

HEADER_SIZE = 61
# Bytes before the batch_length field's coverage starts (base_offset + batch_length).
LOG_OVERHEAD = 12
MAGIC = 2
CRC_START = 21

COMPRESSION_MASK = 0x07
TIMESTAMP_LOG_APPEND = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20

COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

NO_PRODUCER_ID = -1
NO_SEQUENCE = -1

_HEADER = struct.Struct(">qiibIhiqqqhii")


class CorruptBatch(ValueError):
    """A batch that fails validation; the message says which check failed."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The parsed 61-byte header of one v2 batch."""

    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """The batch's whole size in bytes, header included."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL)

    @property
    def has_producer(self) -> bool:
        return self.producer_id >= 0

    @property
    def last_sequence(self) -> int:
        """The sequence number of the batch's last record (sequences wrap at 2^31)."""
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % (1 << 31)


def read_header(data: bytes | bytearray | memoryview, at: int = 0) -> BatchHeader:
    """Parse the header at `at`; CorruptBatch if it is short or not a v2 batch."""
    if len(data) - at < HEADER_SIZE:
        raise CorruptBatch(f"batch header needs {HEADER_SIZE} bytes, {len(data) - at} left")
    header = BatchHeader(*_HEADER.unpack_from(data, at))
    if header.magic != MAGIC:
        raise CorruptBatch(f"record batch magic {header.magic}, only v2 (magic 2) is supported")
    if header.batch_length < HEADER_SIZE - LOG_OVERHEAD:
        raise CorruptBatch(f"batch length {header.batch_length} is below the header size")
    if header.last_offset_delta < 0 or header.records_count < 0:
        raise CorruptBatch("negative record count or last offset delta")
    return header


def crc_of(data: bytes | bytearray | memoryview, at: int, header: BatchHeader) -> int:
    return crc32c(memoryview(data)[at + CRC_START : at + header.size])


def validate(data: bytes | bytearray | memoryview, at: int = 0) -> BatchHeader:
    """Parse and fully check the batch at `at`: whole, v2, consistent counts, CRC-32C."""
    header = read_header(data, at)
    if len(data) - at < header.size:
        raise CorruptBatch(f"batch of {header.size} bytes is cut short at {len(data) - at}")
    if header.compression not in COMPRESSION_NAMES:
        raise CorruptBatch(f"unknown compression codec {header.compression}")
    if header.records_count == 0:
        raise CorruptBatch("empty record batch")
    if not header.is_control and header.records_count != header.last_offset_delta + 1:
        raise CorruptBatch(
            f"{header.records_count} records but last offset delta {header.last_offset_delta}"
        )
    if crc_of(data, at, header) != header.crc:
        raise CorruptBatch("record batch CRC-32C mismatch")
    if header.compression == 0:
        _check_framing(data, at, header)
    return header


def _check_framing(data: bytes | bytearray | memoryview, at: int, header: BatchHeader) -> None:
    """Uncompressed records must exactly fill the batch: walk their length prefixes.

    A producer's CRC covers whatever it sent, garbage included, so this is what keeps a
    well-checksummed but malformed batch from reaching consumers. (Compressed batches
    are stored unopened: the broker never decompresses.)
    """
    pos = at + HEADER_SIZE
    end = at + header.size
    # kio's native reader takes only read-only buffers.
    view = memoryview(data).toreadonly()
    for _ in range(header.records_count):
        if pos >= end:
            raise CorruptBatch("records end before the batch's record count")
        try:
            length, used = read_signed_varint(view, pos)
        except Exception:
            raise CorruptBatch("a record's length prefix is unreadable") from None
        if length < 0:
            raise CorruptBatch("a record has a negative length")
        pos += used + length
    if pos != end:
        raise CorruptBatch(
            f"records fill {pos - at - HEADER_SIZE} bytes of a "
            f"{end - at - HEADER_SIZE}-byte batch body"
        )


def split(data: bytes | bytearray | memoryview) -> list[tuple[int, BatchHeader]]:
    """Validate a produce payload holding one or more whole batches back to back."""
    batches: list[tuple[int, BatchHeader]] = []
    at = 0
    while at < len(data):
        header = validate(data, at)
        batches.append((at, header))
        at += header.size
    if not batches:
        raise CorruptBatch("no record batch in the request")
    return batches


def assign(
    batch: bytearray, base_offset: int, *, leader_epoch: int = 0, log_append_ms: int | None = None
) -> None:
    """Rewrite a validated batch in place with the offset (and time) the broker assigns.

    base_offset and the leader epoch sit outside the CRC. With `log_append_ms`, the
    LogAppendTime attribute and max_timestamp are set and the CRC recomputed.
    """
    struct.pack_into(">qi", batch, 0, base_offset, 0)
    struct.pack_into(">i", batch, 12, leader_epoch)
    if log_append_ms is not None:
        (attributes,) = struct.unpack_from(">h", batch, 21)
        struct.pack_into(">h", batch, 21, attributes | TIMESTAMP_LOG_APPEND)
        struct.pack_into(">q", batch, 35, log_append_ms)
        struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[CRC_START:]))
    # batch_length is the caller's, restored after the combined pack above.
    struct.pack_into(">i", batch, 8, len(batch) - LOG_OVERHEAD)
