"""One segment of a partition's log: a file of record batches and its two sparse indexes.

Files, in the partition's directory, named by the segment's base offset (20 digits, so
names sort as offsets do)::

    00000000000000000000.log        v2 record batches back to back, exactly as appended
                                    (offsets assigned), no framing of our own
    00000000000000000000.index      offset → position, see index.py
    00000000000000000000.timeindex  timestamp → offset, see index.py

Invariants of the .log file: the first batch starts at the base offset and every batch
starts at the offset after the previous one's last (no compaction, so no gaps; base_offset
is outside the CRC, so this is also what catches a damaged one). `size` is the end of the
last whole batch; reads never go past it, so a write in progress is never seen.

All I/O is os.pread/os.pwrite on one descriptor per file, at positions we track, never a
buffered file object: a failed write is undone with ftruncate, and the next write lands
at the recorded size whatever a half-done one left behind. Hand-written: this is Kafka's
LogSegment, and no Python library stores Kafka batches.

Not thread-safe by itself: PartitionLog holds its lock around every call except `flush`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pyralog.log.batch import HEADER_SIZE, BatchHeader, CorruptBatch, read_header
from pyralog.log.errors import StorageError
from pyralog.log.fileio import pread_all, pwrite_all
from pyralog.log.index import OffsetIndex, TimeIndex
from pyralog.log.walk import Scan, whole_batches

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
# An index entry holds a u32 relative offset; roll well before it overflows (as Kafka).
MAX_RELATIVE_OFFSET = (1 << 31) - 1


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Segment:
    """One .log file and its indexes; create() a new one or open() an existing one."""

    def __init__(self, directory: Path, base_offset: int, index_interval_bytes: int) -> None:
        self.base_offset = base_offset
        self.path = directory / (segment_name(base_offset) + LOG_SUFFIX)
        self.index_interval_bytes = index_interval_bytes
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        # For the age roll: when the first batch came (see PartitionLog); now, while empty.
        self.created_ms = 0
        self.dirty = False
        # What opening found: bytes cut by recovery, why the indexes were rebuilt.
        self.truncated_bytes = 0
        self.recovered = False
        self.index_problem: str | None = None
        self._tail_stale = False
        self._fd = -1
        self.offset_index: OffsetIndex
        self.time_index: TimeIndex

    @classmethod
    def create(
        cls, directory: Path, base_offset: int, *, index_interval_bytes: int, now_ms: int
    ) -> Segment:
        """A new empty segment; its files must not exist yet."""
        segment = cls(directory, base_offset, index_interval_bytes)
        segment._fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            segment._open_indexes()
            segment._reset_indexes()  # an index left behind by a failed deletion is stale
        except BaseException:
            segment.delete()
            raise
        segment.created_ms = now_ms
        return segment

    @classmethod
    def open(
        cls,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        now_ms: int,
        recover: bool = False,
    ) -> Segment:
        """An existing segment; with `recover`, every batch is checked (see recover())."""
        segment = cls(directory, base_offset, index_interval_bytes)
        segment._fd = os.open(segment.path, os.O_RDWR)
        try:
            segment.size = os.fstat(segment._fd).st_size
            segment._open_indexes()
            if recover:
                segment.recover()
            else:
                segment._load()
            segment.created_ms = segment._first_batch_ms(now_ms)
        except BaseException:
            segment.close()
            raise
        return segment

    def _open_indexes(self) -> None:
        stem = self.path.with_suffix("")
        self.offset_index = OffsetIndex(stem.with_suffix(INDEX_SUFFIX), self.base_offset)
        self.time_index = TimeIndex(stem.with_suffix(TIME_INDEX_SUFFIX), self.base_offset)

    def _load(self) -> None:
        # Trust nothing the indexes say until the log agrees: check them, then walk the
        # headers after their last entry to find the end (and add the entries missing).
        problem = self.offset_index.check(self.size) or self.time_index.check(self.offset_index)
        if problem is None:
            offset, position = self.offset_index.last_entry
            if position and self._batch_offset_at(position) != offset:
                problem = f"last entry ({offset}, {position}) is not a batch start"
        if problem is not None:
            self.index_problem = problem
            self._reset_indexes()
        if not self._scan_tail():
            self.recover()  # the log itself is torn or damaged, whatever the marker said

    def _first_batch_ms(self, now_ms: int) -> int:
        # Reopened: the first batch's time, bounded by the file's last write in case a
        # producer's clock ran ahead (Kafka uses the first batch's timestamp alone).
        if self.size == 0:
            return now_ms
        first = read_header(pread_all(self._fd, HEADER_SIZE, 0))
        mtime_ms = os.fstat(self._fd).st_mtime_ns // 1_000_000
        return min(first.max_timestamp, mtime_ms) if first.max_timestamp >= 0 else mtime_ms

    # -- writing ------------------------------------------------------------------------

    def append(self, batch: bytes | bytearray, header: BatchHeader) -> None:
        """Append one batch whose offsets are final (base_offset == next_offset)."""
        self.append_many(batch, [header])

    def append_many(self, data: bytes | bytearray, headers: list[BatchHeader]) -> None:
        """Append batches back to back in one write; all of them or, on OSError, none."""
        position = self.size
        offsets_before, times_before = len(self.offset_index), len(self.time_index)
        try:
            if self._tail_stale:
                os.ftruncate(self._fd, position)
                self._tail_stale = False
            pwrite_all(self._fd, data, position)
            max_timestamp = self.max_timestamp
            last_entry = self.offset_index.last_entry[1]
            at = position
            for header in headers:
                max_timestamp = max(max_timestamp, header.max_timestamp)
                if self._wants_entry(at, last_entry):
                    self.offset_index.append(header.base_offset, at)
                    self.time_index.append(max_timestamp, header.base_offset)
                    last_entry = at
                at += header.size
        except OSError:
            self._rollback(position, offsets_before, times_before)
            raise
        self.size = at
        self.next_offset = headers[-1].next_offset
        self.max_timestamp = max_timestamp
        self.dirty = True

    def _wants_entry(self, position: int, last_entry: int) -> bool:
        return position > last_entry and position - last_entry >= self.index_interval_bytes

    def _rollback(self, size: int, offset_entries: int, time_entries: int) -> None:
        # Best effort: where the disk refuses even this, the next append retries the
        # truncation, and reads stop at `size` meanwhile.
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            self._tail_stale = True
        for index, count in ((self.offset_index, offset_entries), (self.time_index, time_entries)):
            with contextlib.suppress(OSError):  # the index retries later; it is only a hint
                index.truncate_entries(count)

    def truncate_to(self, offset: int) -> None:
        """Drop the batch containing `offset` and everything after it."""
        if offset >= self.next_offset:
            return
        position = self.find(offset)
        first_dropped = self.header_at(position).base_offset
        os.ftruncate(self._fd, position)
        self.offset_index.truncate_to(first_dropped)
        self.time_index.truncate_to(first_dropped)
        self.size = position
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        if not self._scan_tail():
            raise StorageError(f"{self.path}: log damaged below position {position}")
        self.dirty = True

    def recover(self) -> int:
        """Check every batch from the start; cut the file at the first bad one.

        A batch is bad if torn (file ends inside it), fails `batch.validate` (CRC-32C
        included) or does not start at the offset after the previous one. Everything from
        there on is truncated, the indexes are rebuilt from what remains, and the number
        of bytes cut is returned (also kept in `truncated_bytes`).
        """
        file_size = os.fstat(self._fd).st_size
        scan = Scan(self._fd, 0, file_size, self.base_offset, full=True)
        offset_entries: list[tuple[int, int]] = []
        time_entries: list[tuple[int, int]] = []
        max_timestamp, last_entry = -1, 0
        for position, header in scan:
            max_timestamp = max(max_timestamp, header.max_timestamp)
            if self._wants_entry(position, last_entry):
                offset_entries.append((header.base_offset, position))
                time_entries.append((max_timestamp, header.base_offset))
                last_entry = position
        truncated = file_size - scan.position
        if truncated:
            os.ftruncate(self._fd, scan.position)
            os.fsync(self._fd)
        self.offset_index.replace(offset_entries)
        self.time_index.replace(time_entries)
        self.size = scan.position
        self.next_offset = scan.next_offset
        self.max_timestamp = max_timestamp
        self.recovered = True
        self.truncated_bytes += truncated
        return truncated

    def _reset_indexes(self) -> None:
        self.offset_index.truncate_entries(0)
        self.time_index.truncate_entries(0)

    def _scan_tail(self) -> bool:
        """Walk the headers after the last index entry, adding missing entries; set
        next_offset and max_timestamp. False if the walk does not end exactly at size."""
        offset, position = self.offset_index.last_entry
        max_timestamp = self.time_index.last_timestamp
        max_timestamp = -1 if max_timestamp is None else max_timestamp
        last_entry = position
        scan = Scan(self._fd, position, self.size, offset, full=False)
        for at, header in scan:
            max_timestamp = max(max_timestamp, header.max_timestamp)
            if self._wants_entry(at, last_entry):
                self.offset_index.append(header.base_offset, at)
                self.time_index.append(max_timestamp, header.base_offset)
                last_entry = at
        if scan.error is not None:
            return False
        self.next_offset = scan.next_offset
        self.max_timestamp = max_timestamp
        return True

    # -- reading ------------------------------------------------------------------------

    def read(self, start_position: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the file from `start_position`, never past `size`."""
        end = min(self.size, start_position + max_bytes)
        return pread_all(self._fd, max(0, end - start_position), start_position)

    def read_batches(self, position: int, stop: int, max_bytes: int) -> bytes:
        """The whole batches from `position` (a batch start) to `stop` (another) that fit in
        `max_bytes`, but at least one: Kafka's fetch rule, so a large batch is not stuck."""
        if stop <= position:
            return b""
        data = self.read(position, min(max(max_bytes, 0), stop - position))
        end = whole_batches(data)
        if end == 0:
            return self.read(position, self.header_at(position).size)
        return data if end == len(data) else data[:end]

    def header_at(self, position: int) -> BatchHeader:
        return read_header(pread_all(self._fd, HEADER_SIZE, position))

    def find(self, offset: int) -> int:
        """Position of the batch containing `offset`, or of the first after it (or size)."""
        if offset >= self.next_offset:
            return self.size
        for position, header in self._headers_from(offset):
            if header.last_offset >= offset:
                return position
        return self.size

    def offset_for_time(self, timestamp: int) -> BatchHeader | None:
        """The first batch whose max_timestamp is at least `timestamp`, if any."""
        if self.max_timestamp < timestamp:
            return None
        older = self.time_index.before(timestamp)
        start = self.base_offset if older is None else older
        for _, header in self._headers_from(start):
            if header.max_timestamp >= timestamp:
                return header
        return None

    def headers(self, offset: int, max_count: int) -> list[BatchHeader]:
        """Up to `max_count` headers, from the batch containing `offset` on."""
        out: list[BatchHeader] = []
        for _, header in self._headers_from(offset):
            if header.last_offset >= offset:
                out.append(header)
                if len(out) >= max_count:
                    break
        return out

    def _headers_from(self, offset: int) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) from the index entry at or below `offset` to the end."""
        entry_offset, position = self.offset_index.lookup(offset)
        if position and self._batch_offset_at(position) != entry_offset:
            # The entry points somewhere else than it says: rebuild, never trust it.
            self.index_problem = f"entry ({entry_offset}, {position}) is not a batch start"
            self._reset_indexes()
            self._scan_tail()
            entry_offset, position = self.offset_index.lookup(offset)
        scan = Scan(self._fd, position, self.size, entry_offset, full=False)
        yield from scan
        if scan.error is not None:
            raise StorageError(f"{self.path}: damaged {scan.error}")

    def _batch_offset_at(self, position: int) -> int | None:
        try:
            return self.header_at(position).base_offset
        except CorruptBatch:
            return None

    # -- lifetime -----------------------------------------------------------------------

    @property
    def mtime_ms(self) -> int:
        return os.fstat(self._fd).st_mtime_ns // 1_000_000

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def flush(self, *, indexes: bool = False) -> None:
        """fsync the log file (and the indexes too if asked; they are only hints)."""
        if self._fd < 0:
            return
        if self.dirty:
            # Cleared first: an append racing this fsync sets it again and is not lost.
            self.dirty = False
            try:
                os.fsync(self._fd)
            except OSError:
                self.dirty = True
                raise
        if indexes:
            self.offset_index.flush()
            self.time_index.flush()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for name in ("offset_index", "time_index"):
            index = getattr(self, name, None)
            if index is not None:
                index.close()

    def delete(self) -> None:
        self.close()
        stem = self.path.with_suffix("")
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            stem.with_suffix(suffix).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Segment({self.path.name}, offsets {self.base_offset}..{self.next_offset})"
