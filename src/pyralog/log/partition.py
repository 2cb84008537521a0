"""One partition's log on disk: appends, reads, time lookups, retention, recovery.

Layout: ``<parent>/<topic>-<partition>/`` holds the segments, each a ``.log`` file and its
``.index`` and ``.timeindex`` (segment.py and index.py describe the files), plus an empty
``.clean`` marker between a clean close() and the next open(), and the
``leader-epoch-checkpoint`` of epochs.py (where each leader epoch begins). The log's offsets are the
segments' in base-offset order; the first segment's base is log_start_offset, the last
(active) segment's end is log_end_offset. A new segment starts when the active one would
pass segment.bytes or is older than segment.ms; retention deletes whole old segments.

Durability of an acknowledged append (`TopicConfig.flush`):

- ``kill -9`` of the process loses nothing under any policy: append returns after the
  write(2), and the page cache belongs to the kernel, which writes it back regardless.
  A batch torn by the kill mid-write was never acknowledged; recovery cuts it.
- Power loss or a kernel crash: "always" fsyncs before append returns, so everything
  acknowledged survives. "interval" fsyncs once flush.messages records or flush.ms ms
  have accumulated since the last fsync (checked at each append and at maybe_flush(),
  which the broker must call at least every flush.ms), so up to that much acknowledged
  data can be lost. "never" fsyncs only when a segment rolls and on close: what survives
  is whatever the OS had written back. Recovery then cuts each segment at its first torn
  or damaged batch, so no reader ever sees half a batch or a batch that fails its CRC.

Opening checks what it finds and recovers what a crash may have torn (recovery.py);
`recovery` (also returned by open()) says what was done, for the operator.

Threads: the broker appends from a worker thread and reads from its event loop. `_lock`
guards the state and is held for every file access except fsync, which runs under
`_flush_lock` after `_lock` is released, so a read never waits for a disk flush.
Anything that closes a segment's file takes `_flush_lock` first, then `_lock`.
Hand-written: this is Kafka's Log/UnifiedLog, which no Python library provides. It is
longer than our modules usually are because every operation that changes the segment
list (append, append_replica, truncate_to, restart_at, retention, open, close) must keep
the same locking and epoch-history invariants; split over files, those would be harder
to check together.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyralog.log import epochs
from pyralog.log.batch import BatchHeader, CorruptBatch, assign, read_header, split
from pyralog.log.epochs import EpochHistory
from pyralog.log.errors import OffsetOutOfRange, RecordTooLarge, StorageError
from pyralog.log.fileio import fsync_dir
from pyralog.log.recovery import CLEAN_MARKER, RecoveryReport, mark_clean, open_segments
from pyralog.log.retention import deletable
from pyralog.log.segment import LOG_SUFFIX, MAX_RELATIVE_OFFSET, Segment
from pyralog.log.topic_config import TopicConfig

_HEADERS_PER_LOCK = 1024  # headers() reads this many per hold of the lock


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_ms: int  # -1 under CreateTime
    log_start_offset: int
    headers: list[BatchHeader]  # as stored: offsets (and LogAppendTime) assigned


class PartitionLog:
    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        config: TopicConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.name = f"{topic}-{partition}"
        self.path = directory / self.name
        self.config = config
        # Written into every appended batch; the replication layer will set it. Where
        # each epoch begins is kept in `epochs` (epochs.py), restored at open.
        self.leader_epoch = 0
        self.epochs = EpochHistory()
        # Reads for consumers stop here. Appends move it to log_end_offset while
        # `follow_log_end` holds; replication will clear that and set it itself.
        self.high_watermark = 0
        self.follow_log_end = True
        self.recovery: RecoveryReport | None = None
        self._clock = clock
        self._segments: list[Segment] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._open = False
        self._unflushed = 0
        self._last_flush_ms = 0

    @property
    def log_start_offset(self) -> int:
        return self._segments[0].base_offset if self._segments else 0

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset if self._segments else 0

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def reconfigure(self, config: TopicConfig) -> None:
        with self._lock:
            self.config = config
            for segment in self._segments:
                segment.index_interval_bytes = config.index_interval_bytes

    # -- opening and closing ------------------------------------------------------------

    def open(self) -> RecoveryReport:
        with self._flush_lock, self._lock:
            if self._open:
                raise StorageError(f"{self.name}: already open")
            now = self._now_ms()
            try:
                self._segments, self.recovery = open_segments(
                    self.path,
                    self.name,
                    index_interval_bytes=self.config.index_interval_bytes,
                    now_ms=now,
                )
                if not self._segments:
                    self._create_segment(0, now)
            except OSError as e:
                raise self._error("cannot open", Path(e.filename or self.path), e) from e
            self._open_epochs()
            self.high_watermark = self.log_end_offset
            self._last_flush_ms = self._now_ms()
            self._open = True
            return self.recovery

    def close(self) -> None:
        """fsync everything, close the files and mark the log cleanly closed."""
        with self._flush_lock, self._lock:
            if not self._open:
                return
            self._open = False
            path = self.path
            try:
                for segment in self._segments:
                    path = segment.path
                    segment.flush(indexes=True)
                path = self.path / CLEAN_MARKER
                mark_clean(self.path)
            except OSError as e:
                raise self._error("cannot close cleanly", path, e) from e
            finally:
                self._close_segments()

    def delete(self) -> None:
        """Close without flushing and remove the partition's directory."""
        with self._flush_lock, self._lock:
            self._open = False
            self._close_segments()
            try:
                shutil.rmtree(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._error("cannot delete", self.path, e) from e

    def _close_segments(self) -> None:
        for segment in self._segments:
            segment.close()

    def _open_epochs(self) -> None:
        try:
            self.epochs = epochs.restore(
                self.path, self._segments, self.log_start_offset, self.log_end_offset
            )
        except OSError as e:
            raise self._error("cannot write", self.path / epochs.FILE_NAME, e) from e
        if self.epochs.latest is not None:
            self.leader_epoch = max(self.leader_epoch, self.epochs.latest.epoch)

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """(epoch, end offset) for a follower asking where `epoch` ended (KIP-101)."""
        with self._lock:
            return self.epochs.end_offset_for(epoch, self.log_end_offset)

    def _note_epoch(self, start_offset: int) -> None:
        """Before appending under a new leader epoch: record and checkpoint where it
        starts, so nothing is appended that the history does not cover."""
        latest = self.epochs.latest
        if latest is not None and self.leader_epoch < latest.epoch:
            raise StorageError(
                f"{self.name}: leader epoch {self.leader_epoch} is older than the log's "
                f"{latest.epoch}"
            )
        if latest is not None and latest.epoch == self.leader_epoch:
            return
        if latest is None and self.leader_epoch == 0:
            # The common single-node case: epoch 0 from the start needs no fsync; an empty
            # checkpoint over records means exactly this (see _open_epochs).
            self.epochs.assign(0, start_offset)
            return
        history = EpochHistory(self.epochs.entries)
        history.assign(self.leader_epoch, start_offset)
        with self._failing("cannot write", self.path / epochs.FILE_NAME):
            epochs.save(self.path, history)
        self.epochs = history

    # -- appending ----------------------------------------------------------------------

    def append(self, payload: bytes | bytearray, *, now_ms: int | None = None) -> AppendResult:
        """Validate, assign offsets to and store the batches of one produce request.

        All or nothing: a bad batch (CorruptBatch), a batch too large (RecordTooLarge)
        or a failed write (StorageError) leaves the log exactly as it was.
        """
        batches = split(payload)
        config = self.config
        largest = max(header.size for _, header in batches)
        for limit, key in (
            (config.max_message_bytes, "max.message.bytes"),
            (config.segment_bytes, "segment.bytes"),
        ):
            if largest > limit:
                raise RecordTooLarge(f"{self.name}: batch of {largest} bytes is over {key}={limit}")
        now = self._now_ms() if now_ms is None else now_ms
        append_ms = now if config.log_append_time else None
        with self._lock:
            self._check_open()
            data = bytearray()
            headers: list[BatchHeader] = []
            offset = self.log_end_offset
            for at, header in batches:
                batch = bytearray(memoryview(payload)[at : at + header.size])
                assign(batch, offset, leader_epoch=self.leader_epoch, log_append_ms=append_ms)
                stored = read_header(batch)
                headers.append(stored)
                data += batch
                offset = stored.next_offset
            self._note_epoch(headers[0].base_offset)
            pending = self._store(data, headers, now)
            log_start = self.log_start_offset
        self._sync(pending)
        return AppendResult(
            base_offset=headers[0].base_offset,
            last_offset=headers[-1].last_offset,
            log_append_ms=now if append_ms is not None else -1,
            log_start_offset=log_start,
            headers=headers,
        )

    def append_replica(self, payload: bytes | bytearray | memoryview) -> list[BatchHeader]:
        """Store batches fetched from the leader exactly as they are (offsets, epochs,
        timestamps already assigned there): the follower's side of replication.

        They must continue this log: the first at log_end_offset, each after the one
        before, epochs never going back. Otherwise CorruptBatch and nothing is stored
        (the follower then asks the leader where the logs diverged and truncates).
        """
        batches = split(payload)
        now = self._now_ms()
        with self._lock:
            self._check_open()
            expected = self.log_end_offset
            latest = self.epochs.latest
            epoch = latest.epoch if latest is not None else -1
            history = EpochHistory(self.epochs.entries)
            headers: list[BatchHeader] = []
            for _, header in batches:
                if header.base_offset != expected:
                    raise CorruptBatch(
                        f"{self.name}: replica batch at offset {header.base_offset}, "
                        f"expected {expected}"
                    )
                if header.leader_epoch < epoch:
                    raise CorruptBatch(
                        f"{self.name}: replica batch of epoch {header.leader_epoch} "
                        f"after epoch {epoch}"
                    )
                if header.leader_epoch > epoch:
                    epoch = header.leader_epoch
                    history.assign(epoch, header.base_offset)
                headers.append(header)
                expected = header.next_offset
            if history.entries != self.epochs.entries:
                with self._failing("cannot write", self.path / epochs.FILE_NAME):
                    epochs.save(self.path, history)
                self.epochs = history
                self.leader_epoch = max(self.leader_epoch, epoch)
            data = memoryview(payload)[: batches[-1][0] + batches[-1][1].size]
            pending = self._store(data, headers, now)
        self._sync(pending)
        return headers

    def _store(
        self, data: bytes | bytearray | memoryview, headers: list[BatchHeader], now: int
    ) -> list[tuple[Segment, bool]]:
        """Write validated batches to the active segment (rolling first if due); the
        segments to fsync outside the lock are returned. Call with the lock held."""
        pending: list[tuple[Segment, bool]] = []
        active = self._segments[-1]
        if self._should_roll(active, len(data), headers[-1].last_offset, now):
            sealed = active
            active = self._create_segment(self.log_end_offset, now)
            pending.append((sealed, True))  # fsynced below, indexes too: it is final
        if active.size == 0:
            active.created_ms = now
        with self._failing("cannot append to", active.path):
            active.append_many(data, headers)
        if self.follow_log_end:
            self.high_watermark = self.log_end_offset
        self._unflushed += sum(h.records_count for h in headers)
        pending += self._due_for_flush(now)
        return pending

    def _should_roll(self, active: Segment, incoming: int, last_offset: int, now: int) -> bool:
        if active.size == 0:
            return False
        return (
            active.size + incoming > self.config.segment_bytes
            or now - active.created_ms >= self.config.segment_ms
            or last_offset - active.base_offset > MAX_RELATIVE_OFFSET
        )

    def _create_segment(self, base_offset: int, now: int) -> Segment:
        path = self.path / f"{base_offset:020d}{LOG_SUFFIX}"
        try:
            segment = Segment.create(
                self.path,
                base_offset,
                index_interval_bytes=self.config.index_interval_bytes,
                now_ms=now,
            )
        except OSError as e:
            raise self._error("cannot create", path, e) from e
        try:
            # The new name must survive a power loss before data in it is acknowledged.
            fsync_dir(self.path)
        except OSError as e:
            segment.delete()
            raise self._error("cannot create", path, e) from e
        self._segments.append(segment)
        return segment

    # -- flushing -----------------------------------------------------------------------

    def _due_for_flush(self, now: int) -> list[tuple[Segment, bool]]:
        config = self.config
        if self._unflushed == 0 or config.flush == "never":
            return []
        if config.flush == "interval" and (
            self._unflushed < config.flush_messages and now - self._last_flush_ms < config.flush_ms
        ):
            return []
        self._unflushed = 0
        self._last_flush_ms = now
        active = self._segments[-1]
        return [(s, s is not active) for s in self._segments if s.dirty]

    def _sync(self, pending: list[tuple[Segment, bool]]) -> None:
        if not pending:
            return
        with self._flush_lock:
            for segment, indexes in pending:
                with self._failing("cannot fsync", segment.path):
                    segment.flush(indexes=indexes)

    def maybe_flush(self, now_ms: int) -> bool:
        """Apply the "interval" policy's clock; True if something was fsynced."""
        with self._lock:
            if not self._open:
                return False
            pending = self._due_for_flush(now_ms)
        self._sync(pending)
        return bool(pending)

    def flush(self) -> None:
        """fsync every segment with unflushed writes, whatever the policy."""
        with self._lock:
            self._check_open()
            self._unflushed = 0
            self._last_flush_ms = self._now_ms()
            active = self._segments[-1]
            pending = [(s, s is not active) for s in self._segments if s.dirty]
        self._sync(pending)

    # -- reading ------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, limit: int | None = None) -> bytes:
        """Whole batches from the one containing `offset`, up to `max_bytes` but at least
        one if there is one, none at or past `limit` (default: the high watermark)."""
        with self._lock:
            self._check_open()
            self._check_offset(offset)
            limit = min(self.high_watermark if limit is None else limit, self.log_end_offset)
            if offset >= limit:
                return b""
            i = self._segment_at(offset)
            for segment in self._segments[i:]:
                with self._failing("cannot read", segment.path):
                    position = segment.find(offset) if offset > segment.base_offset else 0
                    if position >= segment.size:
                        continue  # past this segment's end, or in a gap: the next one
                    stop = segment.size if limit >= segment.next_offset else segment.find(limit)
                    return segment.read_batches(position, stop, max_bytes)
            return b""

    def offset_for_time(self, ts_ms: int, *, limit: int | None = None) -> tuple[int, int] | None:
        """(offset, max_timestamp) of the first batch whose max_timestamp >= ts_ms."""
        with self._lock:
            self._check_open()
            limit = self.high_watermark if limit is None else limit
            for segment in self._segments:
                with self._failing("cannot read", segment.path):
                    header = segment.offset_for_time(ts_ms)
                if header is not None:
                    if header.last_offset >= limit:
                        return None
                    return header.base_offset, header.max_timestamp
            return None

    def headers(self, from_offset: int = 0) -> Iterator[BatchHeader]:
        """Every batch header from the one containing `from_offset` to the log's end.

        Reads headers only, a bounded number per hold of the lock, so appends and reads
        go on meanwhile (for rebuilding producer state at startup).
        """
        offset = from_offset
        while True:
            with self._lock:
                self._check_open()
                offset = max(offset, self.log_start_offset)
                chunk: list[BatchHeader] = []
                for segment in self._segments[self._segment_at(offset) :]:
                    with self._failing("cannot read", segment.path):
                        chunk = segment.headers(offset, _HEADERS_PER_LOCK)
                    if chunk:
                        break
            if not chunk:
                return
            yield from chunk
            offset = chunk[-1].next_offset

    def _check_offset(self, offset: int) -> None:
        start, end = self.log_start_offset, self.log_end_offset
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"{self.name}: offset {offset} is outside {start}..{end}")

    def _segment_at(self, offset: int) -> int:
        i = bisect.bisect_right(self._segments, offset, key=lambda s: s.base_offset) - 1
        return max(i, 0)

    # -- deleting -----------------------------------------------------------------------

    def enforce_retention(self, now_ms: int) -> int:
        """Delete the old segments retention.ms and retention.bytes let go (retention.py);
        returns how many. Never the active one, nor one reaching the high watermark."""
        with self._flush_lock, self._lock:
            if not self._open:
                return 0
            count = deletable(self._segments, self.config, now_ms, self.high_watermark)
            # Out of the log first: if unlinking fails, the files come back at open.
            doomed, self._segments = self._segments[:count], self._segments[count:]
            for segment in doomed:
                with self._failing("cannot delete", segment.path):
                    segment.delete()
            if count and self.epochs.truncate_from_start(self.log_start_offset):
                with self._failing("cannot write", self.path / epochs.FILE_NAME):
                    epochs.save(self.path, self.epochs)
            return count

    def truncate_to(self, offset: int) -> None:
        """Drop every batch at or after `offset` (a batch containing it goes whole)."""
        with self._flush_lock, self._lock:
            self._check_open()
            if offset >= self.log_end_offset:
                return
            try:
                if offset < self.log_start_offset:
                    # Below every segment: start afresh there (the new one goes first, so
                    # the log always has an active segment even if a deletion fails).
                    fresh = self._create_segment(offset, self._now_ms())
                    doomed, self._segments = self._segments[:-1], [fresh]
                    for segment in doomed:
                        segment.delete()
                else:
                    while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
                        self._segments.pop().delete()
                    last = self._segments[-1]
                    last.truncate_to(offset)
                    last.flush(indexes=True)
            except OSError as e:
                raise self._error("cannot truncate", Path(e.filename or self.path), e) from e
            self.high_watermark = min(self.high_watermark, self.log_end_offset)
            if self.epochs.truncate_from_end(self.log_end_offset):
                with self._failing("cannot write", self.path / epochs.FILE_NAME):
                    epochs.save(self.path, self.epochs)

    def restart_at(self, offset: int) -> None:
        """Drop every batch and start the log afresh at `offset` (a follower whose next
        offset the leader's retention already deleted starts over at the leader's start)."""
        with self._flush_lock, self._lock:
            self._check_open()
            if offset <= self.log_end_offset:
                raise ValueError(f"{self.name}: restart at {offset}: not past the log end")
            try:
                fresh = self._create_segment(offset, self._now_ms())
                doomed, self._segments = self._segments[:-1], [fresh]
                for segment in doomed:
                    segment.delete()
            except OSError as e:
                raise self._error("cannot truncate", Path(e.filename or self.path), e) from e
            self.high_watermark = offset
            self.epochs = EpochHistory()
            with self._failing("cannot write", self.path / epochs.FILE_NAME):
                epochs.save(self.path, self.epochs)

    # -- helpers ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"{self.name}: the log is not open")

    def _error(self, what: str, path: Path, e: OSError) -> StorageError:
        code = errno.errorcode.get(e.errno or 0, str(e.errno))
        return StorageError(f"{self.name}: {what} {path}: {e.strerror or e} ({code})")

    @contextlib.contextmanager
    def _failing(self, what: str, path: Path) -> Iterator[None]:
        """OSError inside becomes StorageError naming the partition, path and errno."""
        try:
            yield
        except OSError as e:
            raise self._error(what, path, e) from e

    def __repr__(self) -> str:
        return f"PartitionLog({self.name}, {self.log_start_offset}..{self.log_end_offset})"
