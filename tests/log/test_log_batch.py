"""The v2 record batch header: validation, splitting and offset assignment."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c

from pyralog.log import batch
from pyralog.log.records import build_batch, read_messages


def _batch(n: int = 3, **kw: int) -> bytes:
    return build_batch(
        [(None, f"v{i}".encode()) for i in range(n)], timestamp_ms=1_700_000_000_000, **kw
    )


def test_validate_reads_every_header_field() -> None:
    data = _batch(3, producer_id=7, producer_epoch=2, base_sequence=10)
    header = batch.validate(data)
    assert header.records_count == 3 and header.last_offset_delta == 2
    assert header.size == len(data)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 2, 10)
    assert header.last_sequence == 12
    assert header.base_timestamp == 1_700_000_000_000


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:-1], "cut short"),
        (lambda b: b[:40], "header needs"),
        (lambda b: b[:16] + b"\x01" + b[17:], "magic 1"),
        (lambda b: b[:-2] + bytes([b[-2] ^ 0xFF]) + b[-1:], "CRC-32C mismatch"),
        (lambda b: b[:8] + struct.pack(">i", 10) + b[12:], "below the header size"),
    ],
)
def test_validate_names_what_is_wrong(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(batch.CorruptBatch, match=reason):
        batch.validate(mutate(bytearray(_batch())))


def test_count_that_disagrees_with_the_offset_delta_is_refused() -> None:
    data = bytearray(_batch(3))
    struct.pack_into(">i", data, 57, 5)
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    with pytest.raises(batch.CorruptBatch, match=r"5 records but last offset delta 2"):
        batch.validate(data)


def test_split_walks_back_to_back_batches_and_refuses_empty() -> None:
    a, b = _batch(2), _batch(4)
    found = batch.split(a + b)
    assert [(at, h.records_count) for at, h in found] == [(0, 2), (len(a), 4)]
    with pytest.raises(batch.CorruptBatch, match="no record batch"):
        batch.split(b"")


def test_assign_rewrites_offset_outside_the_crc() -> None:
    data = bytearray(_batch(3))
    crc = batch.read_header(data).crc
    batch.assign(data, 1000, leader_epoch=4)
    header = batch.validate(data)
    assert header.base_offset == 1000 and header.leader_epoch == 4 and header.crc == crc
    assert [m.offset for m in read_messages("t", 0, bytes(data))] == [1000, 1001, 1002]


def test_assign_with_log_append_time_recomputes_the_crc() -> None:
    data = bytearray(_batch(2))
    batch.assign(data, 5, log_append_ms=1_800_000_000_123)
    header = batch.validate(data)
    assert header.attributes & batch.TIMESTAMP_LOG_APPEND
    assert header.max_timestamp == 1_800_000_000_123
    assert {m.timestamp_ms for m in read_messages("t", 0, bytes(data))} == {1_800_000_000_123}


def test_gzip_batches_round_trip_through_the_reader() -> None:
    records = [(b"k%d" % i, b"x" * i) for i in range(50)]
    data = build_batch(records, timestamp_ms=1_700_000_000_000, compression="gzip")
    header = batch.validate(data)
    assert header.compression == 1
    got = [(m.key, m.value) for m in read_messages("t", 0, data)]
    assert got == records


def test_reader_skips_a_batch_cut_short_by_fetch() -> None:
    a, b = _batch(2), bytearray(_batch(3))
    batch.assign(b, 2)
    messages = list(read_messages("t", 0, a + bytes(b[:30])))
    assert [m.offset for m in messages] == [0, 1]


def _recrc(data: bytearray) -> bytearray:
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    return data


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        # A record's length prefix made to overrun the batch, with a CRC to match.
        (lambda b: b[: batch.HEADER_SIZE] + b"\x7e" + b[batch.HEADER_SIZE + 1 :], "records end"),
        (lambda b: b + b"\0", "records fill"),
        (lambda b: b[: batch.HEADER_SIZE] + b"\x01", "negative length"),
    ],
)
def test_well_checksummed_garbage_records_are_refused(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(mutate(bytearray(_batch(3))))
    struct.pack_into(">i", data, 8, len(data) - batch.LOG_OVERHEAD)
    with pytest.raises(batch.CorruptBatch, match=reason):
        batch.validate(_recrc(data))
