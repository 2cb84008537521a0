"""PartitionLog: offsets, rolling by size and age, retention, read semantics, time
lookups, LogAppendTime, header walks, truncation, flush policies, threads."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from logbatches import BASE_TS, batch_offsets, make_batch, numbered, read_all, records

from pyralog.log import batch as v2
from pyralog.log.errors import OffsetOutOfRange, RecordTooLarge, StorageError
from pyralog.log.partition import PartitionLog
from pyralog.log.topic_config import TopicConfig


class Clock:
    """An injected wall clock (seconds), moved by hand."""

    def __init__(self, ms: int = BASE_TS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_log(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., PartitionLog]]:
    opened: list[PartitionLog] = []

    def make(**config: object) -> PartitionLog:
        log = PartitionLog(tmp_path, "t", 0, TopicConfig(**config), clock)  # type: ignore[arg-type]
        log.open()
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


def fill(log: PartitionLog, batches: int, per_batch: int = 1, size: int = 0) -> None:
    for _ in range(batches):
        log.append(numbered(log.log_end_offset, per_batch, size=size))


def test_offsets_are_assigned_in_order(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log()
    first = log.append(make_batch([b"a", b"b", b"c"]))
    assert (first.base_offset, first.last_offset, first.log_append_ms) == (0, 2, -1)
    two = make_batch([b"d"]) + make_batch([b"e", b"f"])  # one request, two batches
    second = log.append(two)
    assert (second.base_offset, second.last_offset) == (3, 5)
    assert [h.base_offset for h in second.headers] == [3, 4]
    assert log.log_end_offset == log.high_watermark == 6
    assert [v for _, v in records(log.read(0, 10_000))] == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_bad_batches_write_nothing(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(max_message_bytes=200)
    log.append(numbered(0))
    size = log.size
    bad = bytearray(numbered(1))
    bad[-1] ^= 0xFF
    for payload in (b"", bytes(bad), numbered(1) + bytes(bad), numbered(1) + b"\x00" * 10):
        with pytest.raises(v2.CorruptBatch):
            log.append(payload)
    with pytest.raises(RecordTooLarge, match=r"max\.message\.bytes=200"):
        log.append(numbered(1) + numbered(2, size=300))
    assert (log.size, log.log_end_offset) == (size, 1)


def test_create_time_keeps_producer_timestamps(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log()
    log.append(make_batch([b"x", b"y"], timestamps=[BASE_TS - 50, BASE_TS - 10]))
    header = v2.validate(log.read(0, 1000))
    assert header.max_timestamp == BASE_TS - 10
    assert not header.attributes & v2.TIMESTAMP_LOG_APPEND


def test_log_append_time_rewrites_max_timestamp(
    make_log: Callable[..., PartitionLog], clock: Clock
) -> None:
    log = make_log(timestamp_type="LogAppendTime")
    result = log.append(make_batch([b"x"], timestamp_ms=5))
    assert result.log_append_ms == clock.ms
    result = log.append(make_batch([b"y"], timestamp_ms=5), now_ms=clock.ms + 7)
    assert result.log_append_ms == clock.ms + 7
    stored = log.read(0, 10_000)
    headers = [h for _, h in v2.split(stored)]  # split validates: the CRC was redone
    assert [h.max_timestamp for h in headers] == [clock.ms, clock.ms + 7]
    assert all(h.attributes & v2.TIMESTAMP_LOG_APPEND for h in headers)
    assert result.headers[0].crc == headers[1].crc


def test_rolls_by_size(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=2048)
    fill(log, 100, size=40)
    segments = log.segments
    assert len(segments) > 5
    assert all(s.size <= 2048 for s in segments)
    assert [s.base_offset for s in segments[1:]] == [s.next_offset for s in segments[:-1]]
    assert [o for o, _ in read_all(log)] == list(range(100))
    names = sorted(p.name for p in log.path.iterdir() if p.suffix == ".log")
    assert names == [f"{s.base_offset:020d}.log" for s in segments]


def test_rolls_by_age(make_log: Callable[..., PartitionLog], clock: Clock) -> None:
    log = make_log(segment_ms=60_000)
    clock.advance(120_000)  # an empty active segment does not roll, however old
    fill(log, 3)
    assert len(log.segments) == 1
    clock.advance(59_999)
    fill(log, 1)
    assert len(log.segments) == 1
    clock.advance(1)
    fill(log, 1)
    assert [s.base_offset for s in log.segments] == [0, 4]
    # A batch's own (producer) timestamp does not decide; the append time does.
    log.append(numbered(5, timestamp_ms=0))
    assert len(log.segments) == 2


def test_retention_by_size(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=1024, retention_bytes=3000)
    fill(log, 60, size=40)
    sizes = [s.size for s in log.segments]
    deleted = log.enforce_retention(BASE_TS)
    assert deleted > 0
    kept = log.segments
    assert sum(s.size for s in kept) >= 3000
    assert sum(s.size for s in kept[1:]) < 3000  # the oldest kept is still needed
    assert len(kept) == len(sizes) - deleted
    assert log.log_start_offset == kept[0].base_offset > 0
    with pytest.raises(OffsetOutOfRange):
        log.read(0, 100)
    assert read_all(log)[0][0] == log.log_start_offset
    assert log.enforce_retention(BASE_TS) == 0
    assert not (log.path / "00000000000000000000.log").exists()


def test_retention_by_time(make_log: Callable[..., PartitionLog], clock: Clock) -> None:
    log = make_log(segment_bytes=1024, retention_ms=10_000)
    for age in (30_000, 20_000, 5_000, 0):  # one segment per age, by batch timestamps
        for _ in range(8):
            log.append(numbered(log.log_end_offset, size=60, timestamp_ms=clock.ms - age))
    bases = [s.base_offset for s in log.segments]
    assert len(bases) >= 4
    deleted = log.enforce_retention(clock.ms)
    assert deleted >= 2
    assert all(clock.ms - s.max_timestamp <= 10_000 for s in log.segments[:-1])
    # The active segment stays, however old.
    clock.advance(1_000_000)
    log.enforce_retention(clock.ms)
    assert len(log.segments) == 1 and log.log_end_offset == 32


def test_retention_never_passes_the_high_watermark(
    make_log: Callable[..., PartitionLog],
) -> None:
    log = make_log(segment_bytes=1024, retention_bytes=0)
    fill(log, 40, size=60)
    log.high_watermark = 1
    assert log.enforce_retention(BASE_TS) == 0


def test_read_returns_whole_batches(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=4096, index_interval_bytes=100)
    fill(log, 50, per_batch=3, size=30)  # offsets 0..149, three to a batch
    one = len(numbered(0, 3, size=30))
    assert batch_offsets(log.read(0, one)) == [0]
    assert batch_offsets(log.read(0, 2 * one + one // 2)) == [0, 3]
    assert batch_offsets(log.read(0, 1)) == [0]  # at least one batch, always
    assert batch_offsets(log.read(0, 0)) == [0]
    assert batch_offsets(log.read(7, one)) == [6]  # the batch containing the offset
    assert batch_offsets(log.read(8, 3 * one, limit=12)) == [6, 9]
    assert log.read(8, 3 * one, limit=7) == b""  # the batch holds offsets past the limit
    assert log.read(150, 1000) == b""
    for bad in (-1, 151):
        with pytest.raises(OffsetOutOfRange, match="t-0"):
            log.read(bad, 1000)


def test_read_stops_at_the_high_watermark(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log()
    fill(log, 10)
    log.high_watermark = 4
    assert batch_offsets(log.read(0, 100_000)) == [0, 1, 2, 3]
    assert log.read(4, 100_000) == b""
    assert batch_offsets(log.read(4, 100_000, limit=10)) == list(range(4, 10))
    assert log.offset_for_time(BASE_TS) == (0, BASE_TS)
    log.follow_log_end = False  # as replication will: appends no longer move it
    log.append(numbered(10))
    assert log.high_watermark == 4 and log.log_end_offset == 11
    log.truncate_to(3)
    assert log.high_watermark == 3


def test_read_any_offset_against_a_model(make_log: Callable[..., PartitionLog]) -> None:
    rng = random.Random(3)
    log = make_log(segment_bytes=3000, index_interval_bytes=rng.choice([0, 150, 700]))
    spans = []
    for _ in range(120):
        count = rng.randrange(1, 6)
        result = log.append(numbered(log.log_end_offset, count, size=rng.randrange(0, 80)))
        spans.append((result.base_offset, result.last_offset))
    for _ in range(300):
        offset = rng.randrange(0, log.log_end_offset)
        containing = next(b for b, last in spans if b <= offset <= last)
        got = log.read(offset, rng.randrange(1, 2000))
        offsets = batch_offsets(got)
        assert offsets[0] == containing
        assert all(o in {b for b, _ in spans} for o in offsets)


def test_offset_for_time(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=1024, index_interval_bytes=100)
    stamps = [BASE_TS + 10 * i for i in range(60)]
    stamps[30] = BASE_TS + 5000  # one producer's clock ahead of the rest
    for ts in stamps:
        log.append(numbered(log.log_end_offset, size=20, timestamp_ms=ts))
    assert log.offset_for_time(0) == (0, BASE_TS)
    assert log.offset_for_time(BASE_TS + 95) == (10, BASE_TS + 100)
    assert log.offset_for_time(BASE_TS + 300) == (30, BASE_TS + 5000)
    assert log.offset_for_time(BASE_TS + 5000) == (30, BASE_TS + 5000)
    assert log.offset_for_time(BASE_TS + 5001) is None
    for target in range(BASE_TS - 10, BASE_TS + 700, 7):
        expected = next(((i, t) for i, t in enumerate(stamps) if t >= target), None)
        assert log.offset_for_time(target) == expected


def test_headers_walks_every_batch(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=1024)
    for i in range(300):
        log.append(make_batch([b"x"], producer_id=7, base_sequence=i))
    walked = list(log.headers())
    assert [h.base_offset for h in walked] == list(range(300))
    assert [h.base_sequence for h in walked] == list(range(300))
    assert [h.base_offset for h in log.headers(297)] == [297, 298, 299]
    assert list(log.headers(300)) == []


def test_truncate_to(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=1024)
    fill(log, 40, per_batch=2, size=30)  # 80 offsets
    kept = log.read(0, 100_000, limit=40)
    log.truncate_to(41)  # inside the batch 40..41: the whole batch goes
    assert log.log_end_offset == log.high_watermark == 40
    assert all(s.base_offset < 40 for s in log.segments)
    assert log.read(0, 100_000) == kept
    assert log.append(numbered(40)).base_offset == 40
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset) == (0, 0)
    assert log.append(numbered(0)).base_offset == 0


def test_truncate_below_the_start_starts_afresh(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(segment_bytes=1024, retention_bytes=0)
    fill(log, 40, size=60)
    log.enforce_retention(BASE_TS)
    start = log.log_start_offset
    assert start > 0
    log.truncate_to(start - 5)
    assert (log.log_start_offset, log.log_end_offset) == (start - 5, start - 5)
    assert log.append(numbered(0)).base_offset == start - 5


def test_reopen_after_close_keeps_everything(tmp_path: Path, clock: Clock) -> None:
    config = TopicConfig(segment_bytes=1024, index_interval_bytes=64)
    log = PartitionLog(tmp_path, "t", 0, config, clock)
    log.open()
    fill(log, 50, size=25)
    before = read_all(log)
    log.close()
    assert (log.path / ".clean").exists()
    again = PartitionLog(tmp_path, "t", 0, config, clock)
    report = again.open()
    assert report.clean and not report.eventful and not report.recovered
    assert not (again.path / ".clean").exists()
    assert read_all(again) == before
    assert again.append(numbered(50)).base_offset == 50
    again.close()


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_flush_always(
    make_log: Callable[..., PartitionLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_log(flush="always")
    calls = count_fsyncs(monkeypatch)
    for i in range(5):
        log.append(numbered(i))
        assert len(calls) == i + 1
        assert not log.segments[-1].dirty


def test_flush_interval_by_messages_and_time(
    make_log: Callable[..., PartitionLog], monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    log = make_log(flush="interval", flush_messages=5, flush_ms=1000)
    calls = count_fsyncs(monkeypatch)
    log.append(numbered(0, 3))
    log.append(numbered(3, 1))
    assert calls == []
    log.append(numbered(4, 1))  # the fifth record
    assert len(calls) == 1
    log.append(numbered(5, 1))
    assert not log.maybe_flush(clock.ms + 999)
    assert log.maybe_flush(clock.ms + 1000)
    assert len(calls) == 2
    assert not log.maybe_flush(clock.ms + 5000)  # nothing new to flush
    log.append(numbered(6), now_ms=clock.ms + 6000)  # long since the last flush
    assert len(calls) == 3


def test_flush_never_only_on_roll_and_close(
    make_log: Callable[..., PartitionLog], monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    log = make_log(flush="never", segment_bytes=1024, flush_ms=0, flush_messages=1)
    calls = count_fsyncs(monkeypatch)
    fill(log, 5, size=20)
    assert not log.maybe_flush(clock.ms + 10**9)
    assert calls == []
    fill(log, 20, size=20)  # rolls: the sealed segment is fsynced
    assert calls
    assert not log.segments[0].dirty and log.segments[-1].dirty
    log.close()
    assert not log.segments[-1].dirty


def test_closed_log_refuses_work(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log()
    log.close()
    with pytest.raises(StorageError, match="not open"):
        log.append(numbered(0))
    with pytest.raises(StorageError, match="not open"):
        log.read(0, 10)


def test_reads_from_another_thread_see_only_whole_batches(
    make_log: Callable[..., PartitionLog],
) -> None:
    log = make_log(segment_bytes=8192, flush="never")
    total = 1500
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(total):
                log.append(numbered(log.log_end_offset, 2, size=30))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    offset = 0
    while offset < 2 * total:
        data = log.read(offset, 4096)
        if not data:
            continue
        got = records(data)  # kio re-checks every CRC
        assert got[0][0] <= offset
        assert [o for o, _ in got] == list(range(got[0][0], got[-1][0] + 1))
        offset = got[-1][0] + 1
    thread.join()
    assert not errors


def test_a_read_does_not_wait_for_an_fsync(
    make_log: Callable[..., PartitionLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_log(flush="always")
    log.append(numbered(0))
    in_fsync, release = threading.Event(), threading.Event()

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(10)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = threading.Thread(target=log.append, args=(numbered(1),))
    writer.start()
    try:
        assert in_fsync.wait(10)
        # The append has written and is stuck in its fsync; the event loop's read is not.
        assert batch_offsets(log.read(0, 10_000)) == [0, 1]
    finally:
        release.set()
        writer.join()


def test_an_index_entry_every_index_interval_bytes(make_log: Callable[..., PartitionLog]) -> None:
    log = make_log(index_interval_bytes=1000)
    fill(log, 200, size=40)
    segment = log.segments[-1]
    batch_size = len(numbered(0, size=40))
    per_entry = -(-1000 // batch_size) * batch_size  # whole batches of at least 1000 bytes
    assert len(segment.offset_index) == (segment.size - batch_size) // per_entry
    assert len(segment.time_index) == len(segment.offset_index)
