"""Test support for the log: valid Kafka v2 record batches, built with kio's writer, and
the inverse (records out of what a read returns), with kio's reader.

Importable by name from the tests in tests/log (pytest puts their directory on sys.path).
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from pathlib import Path

from kio.records.readers import read_batch
from kio.records.schema import NewRecordBatch, Record
from kio.records.writers import write_batch
from kio.static.primitive import i8, i16, i32, i64

from pyralog.log import batch as v2
from pyralog.log.partition import PartitionLog
from pyralog.log.recovery import RecoveryReport
from pyralog.log.storage import Storage

BASE_TS = 1_700_000_000_000  # ms; any fixed time, so tests do not depend on the clock
_EPOCH = datetime.datetime.fromtimestamp(0, tz=datetime.UTC)


def make_batch(
    values: Sequence[bytes] = (b"value",),
    *,
    timestamp_ms: int = BASE_TS,
    timestamps: Sequence[int] | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """One uncompressed batch of `values`, offsets from 0 (the log assigns its own)."""
    stamps = list(timestamps) if timestamps is not None else [timestamp_ms] * len(values)
    records = tuple(
        Record(
            attributes=i8(0),
            timestamp=_EPOCH + datetime.timedelta(milliseconds=ts),
            offset=i64(i),
            key=None,
            value=value,
            headers=(),
        )
        for i, (value, ts) in enumerate(zip(values, stamps, strict=True))
    )
    new = NewRecordBatch(
        producer_id=i64(producer_id),
        producer_epoch=i16(producer_epoch),
        base_sequence=i32(base_sequence),
        records=records,
        attributes=i16(0),
    )
    buffer = io.BytesIO()
    write_batch(buffer, new)
    data = buffer.getvalue()
    header = v2.validate(data)
    assert header.max_timestamp == max(stamps), "kio rounded a timestamp"
    return data


def numbered(first: int, count: int = 1, *, size: int = 0, timestamp_ms: int = BASE_TS) -> bytes:
    """A batch of `count` records valued b"r<first>", b"r<first+1>", ... padded to `size`."""
    values = [f"r{first + i}".encode().ljust(size, b".") for i in range(count)]
    return make_batch(values, timestamp_ms=timestamp_ms)


def records(data: bytes) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record in whole batches, as a consumer would see them."""
    out: list[tuple[int, bytes | None]] = []
    at = 0
    while at < len(data):
        record_batch, _ = read_batch(data, at)
        out.extend((int(r.offset), r.value) for r in record_batch.records)
        at += v2.read_header(data, at).size
    return out


def batch_offsets(data: bytes) -> list[int]:
    """The base offset of every batch in `data` (each validated, CRC included)."""
    return [header.base_offset for _, header in v2.split(data)] if data else []


def read_all(log: PartitionLog) -> list[tuple[int, bytes | None]]:
    """Every record of the log (up to its end, not just the high watermark), in order."""
    out: list[tuple[int, bytes | None]] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        got = records(log.read(offset, 1 << 20, limit=log.log_end_offset))
        out += got
        offset = got[-1][0] + 1
    return out


def validate_storage(data_dir: Path) -> tuple[int, int, list[RecoveryReport]]:
    """Open a data directory and validate every stored batch (CRC included):
    (batches, records, what opening it had to recover)."""
    batches = records = 0
    with Storage(data_dir) as storage:
        for topic in storage.topics():
            for log in topic.partitions:
                offset = log.log_start_offset
                while offset < log.log_end_offset:
                    chunk = log.read(offset, 1 << 20, limit=log.log_end_offset)
                    at = 0
                    while at < len(chunk):
                        header = v2.validate(chunk, at)
                        batches += 1
                        records += header.records_count
                        offset = header.next_offset
                        at += header.size
        return batches, records, list(storage.recovery)
