"""Recovery from hand-damaged segment files: a batch cut short, a flipped byte, garbage
or zeroes after the last batch, a damaged base offset, damaged index files, a damaged
segment before the last, overlapping segments. Each time: the torn part is gone, every
earlier batch reads back byte for byte, and appends continue at the right offset."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from logbatches import batch_offsets, numbered

from pyralog.log import batch as v2
from pyralog.log.errors import StorageError
from pyralog.log.partition import PartitionLog
from pyralog.log.topic_config import TopicConfig

CONFIG = TopicConfig(segment_bytes=4096, index_interval_bytes=200)


def build(tmp_path: Path, batches: int = 40) -> tuple[PartitionLog, list[bytes]]:
    """A closed log of `batches` batches, and each batch's bytes as stored."""
    log = PartitionLog(tmp_path, "t", 0, CONFIG)
    log.open()
    stored = []
    for i in range(batches):
        log.append(numbered(i, 1, size=50 + i))
        stored.append(log.read(i, 1))
    log.close()
    return log, stored


def crash(log: PartitionLog) -> None:
    """Make the last close look like it never happened (the files as a kill leaves them)."""
    (log.path / ".clean").unlink()


def reopen(tmp_path: Path) -> PartitionLog:
    log = PartitionLog(tmp_path, "t", 0, CONFIG)
    log.open()
    return log


def last_segment(log: PartitionLog) -> Path:
    return sorted(log.path.glob("*.log"))[-1]


def check_survivors(log: PartitionLog, stored: list[bytes], survivors: int) -> None:
    assert log.log_end_offset == survivors
    for i in range(survivors):
        assert log.read(i, 1) == stored[i], i
    assert log.append(numbered(survivors)).base_offset == survivors
    assert batch_offsets(log.read(survivors, 10)) == [survivors]
    assert [h.base_offset for h in log.headers()] == list(range(survivors + 1))


def batch_position(path: Path, n: int) -> tuple[int, int]:
    """(position, size) of the n-th batch in a segment file."""
    data = path.read_bytes()
    at = 0
    for _ in range(n):
        at += v2.read_header(data, at).size
    return at, v2.read_header(data, at).size


def test_batch_cut_short(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    crash(log)
    path = last_segment(log)
    os.truncate(path, path.stat().st_size - 10)
    again = reopen(tmp_path)
    report = again.recovery
    assert report is not None and not report.clean and report.eventful
    assert report.truncated_bytes == len(stored[-1]) - 10
    assert path.name in report.recovered
    check_survivors(again, stored, 39)
    again.close()


def test_flipped_byte_inside_a_batch(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    crash(log)
    path = last_segment(log)
    first = int(path.stem)
    position, size = batch_position(path, 3)
    with open(path, "r+b") as f:
        f.seek(position + size - 5)  # a record byte: only the CRC can tell
        byte = f.read(1)
        f.seek(position + size - 5)
        f.write(bytes([byte[0] ^ 0x40]))
    again = reopen(tmp_path)
    assert again.recovery is not None
    assert again.recovery.truncated_bytes == sum(len(b) for b in stored[first + 3 :])
    check_survivors(again, stored, first + 3)
    again.close()


@pytest.mark.parametrize("tail", [os.urandom(300), bytes(4096), b"\x00" * 7])
def test_garbage_or_zeroes_after_the_last_batch(tmp_path: Path, tail: bytes) -> None:
    log, stored = build(tmp_path)
    crash(log)
    with open(last_segment(log), "ab") as f:
        f.write(tail)
    again = reopen(tmp_path)
    assert again.recovery is not None and again.recovery.truncated_bytes == len(tail)
    check_survivors(again, stored, 40)
    again.close()


def test_damaged_base_offset_outside_the_crc(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    crash(log)
    path = last_segment(log)
    first = int(path.stem)
    position, _ = batch_position(path, 2)
    with open(path, "r+b") as f:
        f.seek(position)
        f.write(struct.pack(">q", 1 << 40))
    again = reopen(tmp_path)
    check_survivors(again, stored, first + 2)
    again.close()


def test_clean_marker_but_torn_tail_is_still_recovered(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    path = last_segment(log)
    os.truncate(path, path.stat().st_size - 1)  # the marker says clean; the walk disagrees
    again = reopen(tmp_path)
    assert again.recovery is not None and again.recovery.clean
    assert again.recovery.truncated_bytes == len(stored[-1]) - 1
    check_survivors(again, stored, 39)
    again.close()


@pytest.mark.parametrize(
    "damage",
    [
        b"\xff" * 16,  # offsets and positions past everything
        struct.pack(">IIII", 5, 400, 3, 800),  # offsets decrease
        b"\x00\x00\x00",  # torn entry
        bytes(64),  # zeroes, as a preallocated file
    ],
)
@pytest.mark.parametrize("clean", [True, False])
def test_damaged_offset_index_is_rebuilt(tmp_path: Path, damage: bytes, clean: bool) -> None:
    log, stored = build(tmp_path)
    if not clean:
        crash(log)
    for index in log.path.glob("*.index"):
        index.write_bytes(damage)
    again = reopen(tmp_path)
    assert again.recovery is not None
    if clean:
        assert len(again.recovery.rebuilt_indexes) == len(again.segments)
    for i in range(40):
        assert again.read(i, 1) == stored[i]
    check_survivors(again, stored, 40)
    again.close()
    for index in log.path.glob("*.index"):
        assert index.read_bytes() != damage


def test_plausible_but_wrong_index_entry_is_caught_at_lookup(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    path = sorted(log.path.glob("*.index"))[0]
    entries = list(struct.iter_unpack(">II", path.read_bytes()))
    assert len(entries) >= 2
    # Increasing and inside the file, but pointing into the middle of a batch.
    entries[1] = (entries[1][0], entries[1][1] + 7)
    path.write_bytes(b"".join(struct.pack(">II", *e) for e in entries))
    again = reopen(tmp_path)
    for i in range(40):
        assert again.read(i, 1) == stored[i]
    assert any(s.index_problem for s in again.segments)
    again.close()


def test_damaged_time_index_is_rebuilt(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    for index in log.path.glob("*.timeindex"):
        index.write_bytes(struct.pack(">qIqI", 50, 1, 10, 2))  # decreasing timestamps
    again = reopen(tmp_path)
    assert again.recovery is not None and again.recovery.rebuilt_indexes
    assert again.offset_for_time(0) == (0, v2.read_header(stored[0]).max_timestamp)
    check_survivors(again, stored, 40)
    again.close()


def test_missing_indexes_are_rebuilt(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    for index in [*log.path.glob("*.index"), *log.path.glob("*.timeindex")]:
        index.unlink()
    again = reopen(tmp_path)
    for i in range(40):
        assert again.read(i, 1) == stored[i]
    again.close()
    assert all(p.stat().st_size > 0 for p in log.path.glob("*.index"))


def test_damage_before_the_last_segment_leaves_a_reported_gap(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    segments = sorted(log.path.glob("*.log"))
    assert len(segments) >= 2
    damaged, following = segments[0], segments[1]
    os.truncate(damaged, damaged.stat().st_size - 3)
    again = reopen(tmp_path)
    report = again.recovery
    assert report is not None and damaged.name in report.recovered
    start = int(following.stem)
    assert report.gaps == (f"{start - 1}..{start - 1}",)
    assert "missing" in str(report)
    # Reading into the gap serves the next batch there is, as Kafka does.
    assert batch_offsets(again.read(start - 1, 1)) == [start]
    for i in [*range(start - 1), *range(start, 40)]:
        assert again.read(i, 1) == stored[i]
    again.close()


def test_overlapping_segments_are_refused(tmp_path: Path) -> None:
    log, _ = build(tmp_path)
    segments = sorted(log.path.glob("*.log"))
    copy = log.path / f"{int(segments[1].stem) - 1:020d}.log"
    data = segments[1].read_bytes()
    # A batch claiming to start one offset earlier: valid (base_offset is outside the CRC).
    copy.write_bytes(
        struct.pack(">q", int(segments[1].stem) - 1) + data[8 : v2.read_header(data).size]
    )
    with pytest.raises(StorageError, match="overlapping"):
        reopen(tmp_path)


def test_stray_index_files_and_empty_segments_are_removed(tmp_path: Path) -> None:
    log, stored = build(tmp_path)
    (log.path / f"{10**9:020d}.index").write_bytes(b"")
    (log.path / f"{10**9:020d}.timeindex").write_bytes(b"")
    again = reopen(tmp_path)
    assert again.recovery is not None
    assert len(again.recovery.removed) == 2
    again.close()
    assert not (log.path / f"{10**9:020d}.index").exists()
    last = reopen(tmp_path)
    check_survivors(last, stored, 40)
    last.close()
