"""Records inside v2 batches, for the client: build a batch, read one back.

Building uses `kio.records.writers`; `encode_batch` (records with headers and exact
millisecond timestamps, as the mirror copies them) is written here because kio's writer
takes datetimes and converts them through float seconds. Reading is written here because
`kio.records` truncates record timestamps to whole seconds and does not decompress; the
varint primitives are kio's. gzip uses the standard library; snappy, lz4 and zstd use
`cramjam` when it is installed (it is in the test extras; the broker itself never
decompresses).
"""

from __future__ import annotations

import datetime
import gzip
import io
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from crc32c import crc32c
from kio.records.schema import NewRecordBatch, Record, RecordHeader
from kio.records.writers import write_new_batch
from kio.serial.readers import read_signed_varint, read_signed_varlong
from kio.serial.writers import write_signed_varint, write_signed_varlong
from kio.static.primitive import TZAwareMicros, i8, i16, i32, i64

from pyralog.log import batch

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_XERIAL = b"\x82SNAPPY\x00"


Header = tuple[str, bytes | None]
# What encode_batch takes: (timestamp ms, key, value, headers).
FullRecord = tuple[int, bytes | None, bytes | None, Sequence[Header]]


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


def build_batch(
    records: Sequence[tuple[bytes | None, bytes | None]],
    *,
    timestamp_ms: int,
    compression: str = "none",
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """An uncompressed (or gzip-compressed) v2 batch of (key, value) records."""
    if compression not in ("none", "gzip"):
        raise ValueError(f"compression {compression!r}: the client writes none or gzip")
    stamp = TZAwareMicros.parse(datetime.datetime.fromtimestamp(timestamp_ms / 1000, datetime.UTC))
    new = NewRecordBatch(
        producer_id=i64(producer_id),
        producer_epoch=i16(producer_epoch),
        base_sequence=i32(base_sequence),
        attributes=i16(0),
        records=tuple(
            Record(attributes=i8(0), timestamp=stamp, offset=i64(i), key=k, value=v, headers=())
            for i, (k, v) in enumerate(records)
        ),
    )
    out = io.BytesIO()
    write_new_batch(out, new)
    data = bytearray(out.getvalue())
    if compression == "gzip":
        data = _recompress(data, 1, gzip.compress(bytes(data[batch.HEADER_SIZE :]), 1))
    return bytes(data)


def encode_batch(
    records: Sequence[FullRecord],
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """An uncompressed v2 batch of (timestamp_ms, key, value, headers) records.

    Timestamps go through as given (deltas from the first record's), to the millisecond.
    """
    if not records:
        raise ValueError("a batch needs at least one record")
    base_ts = records[0][0]
    body = io.BytesIO()
    for delta, (stamp, key, value, headers) in enumerate(records):
        rec = io.BytesIO()
        rec.write(b"\x00")  # record attributes
        write_signed_varlong(rec, stamp - base_ts)
        write_signed_varint(rec, delta)
        _write_bytes(rec, key)
        _write_bytes(rec, value)
        write_signed_varint(rec, len(headers))
        for name, hvalue in headers:
            _write_bytes(rec, name.encode())
            _write_bytes(rec, hvalue)
        write_signed_varint(body, rec.tell())
        body.write(rec.getvalue())
    count = len(records)
    max_ts = max(r[0] for r in records)
    covered = struct.pack(
        ">hiqqqhii", 0, count - 1, base_ts, max_ts, producer_id, producer_epoch,
        base_sequence, count,
    ) + body.getvalue()  # fmt: skip
    # batch_length counts the leader epoch, magic and CRC fields (9 bytes) and the rest.
    head = struct.pack(">qiibI", 0, len(covered) + 9, -1, batch.MAGIC, crc32c(covered))
    return head + covered


def _write_bytes(out: io.BytesIO, value: bytes | None) -> None:
    if value is None:
        write_signed_varint(out, -1)
    else:
        write_signed_varint(out, len(value))
        out.write(value)


def read_batches(
    topic: str, partition: int, data: bytes
) -> list[tuple[batch.BatchHeader, list[Message]]]:
    """The whole batches in fetched bytes, each with its records (a cut-off tail is left)."""
    out: list[tuple[batch.BatchHeader, list[Message]]] = []
    at = 0
    while len(data) - at >= batch.HEADER_SIZE:
        header = batch.read_header(data, at)
        if len(data) - at < header.size:
            break
        out.append((header, list(read_messages(topic, partition, data[at : at + header.size]))))
        at += header.size
    return out


def _recompress(data: bytearray, codec: int, body: bytes) -> bytearray:
    """The same batch with its records replaced by `body` under `codec`."""
    out = bytearray(data[: batch.HEADER_SIZE]) + body
    (attributes,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, (attributes & ~batch.COMPRESSION_MASK) | codec)
    struct.pack_into(">i", out, 8, len(out) - batch.LOG_OVERHEAD)
    struct.pack_into(">I", out, 17, crc32c(memoryview(out)[batch.CRC_START :]))
    return out


def decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return gzip.decompress(data)
    try:
        import cramjam
    except ImportError:
        raise ValueError(
            f"{batch.COMPRESSION_NAMES[codec]} batches need the cramjam package"
        ) from None
    if codec == 2:
        if data.startswith(_XERIAL):
            return _xerial(data, cramjam)
        return bytes(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.decompress(data))
    if codec == 4:
        return bytes(cramjam.zstd.decompress(data))
    raise ValueError(f"unknown compression codec {codec}")


def _xerial(data: bytes, cramjam: object) -> bytes:
    """Java clients' snappy framing: a 16-byte header, then (length, block) pairs."""
    out = bytearray()
    at = 16
    while at < len(data):
        (size,) = struct.unpack_from(">i", data, at)
        out += cramjam.snappy.decompress_raw(data[at + 4 : at + 4 + size])  # type: ignore[attr-defined]
        at += 4 + size
    return bytes(out)


def read_messages(
    topic: str, partition: int, data: bytes, *, from_offset: int = 0
) -> Iterator[Message]:
    """Every record at or after `from_offset` in fetched bytes (a torn last batch is skipped)."""
    at = 0
    while len(data) - at >= batch.HEADER_SIZE:
        header = batch.read_header(data, at)
        if len(data) - at < header.size:
            return  # Fetch may cut the last batch short: the next fetch gets it whole
        batch.validate(data, at)
        if not header.is_control:
            body = decompress(header.compression, data[at + batch.HEADER_SIZE : at + header.size])
            appended = header.attributes & batch.TIMESTAMP_LOG_APPEND
            append_time = header.max_timestamp if appended else None
            for message in _records(topic, partition, header, body, append_time):
                if message.offset >= from_offset:
                    yield message
        at += header.size


def _records(
    topic: str, partition: int, header: batch.BatchHeader, body: bytes, append_time: int | None
) -> Iterator[Message]:
    at = 0
    for _ in range(header.records_count):
        length, used = read_signed_varint(body, at)
        at += used
        end = at + length
        at += 1  # record attributes, unused
        ts_delta, used = read_signed_varlong(body, at)
        at += used
        offset_delta, used = read_signed_varint(body, at)
        at += used
        key, at = _bytes(body, at)
        value, at = _bytes(body, at)
        count, used = read_signed_varint(body, at)
        at += used
        headers = []
        for _ in range(count):
            name, at = _bytes(body, at)
            hvalue, at = _bytes(body, at)
            headers.append(((name or b"").decode(errors="replace"), hvalue))
        if at != end:
            raise batch.CorruptBatch("record length does not match its fields")
        stamp = append_time if append_time is not None else header.base_timestamp + ts_delta
        yield Message(
            topic, partition, header.base_offset + offset_delta, stamp, key, value, tuple(headers)
        )


def _bytes(body: bytes, at: int) -> tuple[bytes | None, int]:
    size, used = read_signed_varint(body, at)
    at += used
    if size < 0:
        return None, at
    if at + size > len(body):
        raise batch.CorruptBatch("record field runs past the batch")
    return body[at : at + size], at + size


__all__ = [
    "CODECS",
    "FullRecord",
    "Message",
    "RecordHeader",
    "build_batch",
    "decompress",
    "encode_batch",
    "read_batches",
    "read_messages",
]
