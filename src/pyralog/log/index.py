"""The sparse indexes beside each segment: offset → file position, timestamp → offset.

Two files per segment, both arrays of fixed-size big-endian entries, append-only::

    <base>.index      relative_offset u32, position u32      (8 bytes an entry)
    <base>.timeindex  max_timestamp i64, relative_offset u32  (12 bytes an entry)

The segment adds one entry to each, for the same batch, every `index.interval.bytes` of
log: the offset entry says "the batch at `position` starts at base + `relative_offset`",
the time entry says "every batch up to and including that one has a max_timestamp of at
most `max_timestamp`" (a running maximum, so it never decreases, and truncating the tail
leaves the remaining entries true). The first batch, at position 0, needs no entry.

Indexes are hints: the log file is the truth, and `Segment` rebuilds an index from it
whenever `check` finds entries that cannot be right (a torn entry, offsets or positions
that do not increase, a position past the segment's end, the two files disagreeing), or
a lookup lands somewhere that is not the batch the entry names. So they are fsynced
lazily. Entries live in memory as `array`s (8 or 12 bytes each, no objects) and are
searched with bisect. Hand-written: Kafka's are memory-mapped Java classes, and there is
no Python library for this; it is a hundred lines.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
from array import array
from pathlib import Path

from pyralog.log.fileio import pread_all, pwrite_all

_BIG_ENDIAN = sys.byteorder == "big"
_TIME_ENTRY = struct.Struct(">qI")
# The offset index is read straight into arrays of 32-bit words.
assert array("I").itemsize == 4, "array('I') must hold 32-bit words"


class _IndexFile:
    """An append-only file of fixed-size entries, loaded whole at open."""

    ENTRY_SIZE = 0

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._dirty = False
        # Set when a rollback could not shorten the file: the next write retries it.
        self._tail_stale = False
        try:
            raw = pread_all(self._fd, os.fstat(self._fd).st_size)
        except BaseException:
            os.close(self._fd)
            raise
        whole = len(raw) - len(raw) % self.ENTRY_SIZE
        self._torn = whole != len(raw)
        self._load(raw[:whole])

    def _load(self, raw: bytes) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def _write_entries(self, data: bytes, first: int) -> None:
        if self._tail_stale:
            os.ftruncate(self._fd, first * self.ENTRY_SIZE)
            self._tail_stale = False
        pwrite_all(self._fd, data, first * self.ENTRY_SIZE)
        self._dirty = True

    def _shorten_file(self, count: int) -> None:
        try:
            os.ftruncate(self._fd, count * self.ENTRY_SIZE)
        except OSError:
            self._tail_stale = True
            raise
        self._dirty = True

    def flush(self) -> None:
        if self._dirty and self._fd >= 0:
            self._dirty = False  # first, so a write racing the fsync leaves it set
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class OffsetIndex(_IndexFile):
    """Sparse map from offset to the file position of the batch starting there."""

    ENTRY_SIZE = 8
    offsets: array[int]  # relative to base_offset
    positions: array[int]

    def _load(self, raw: bytes) -> None:
        words = _u32s(raw)
        self.offsets = words[0::2]
        self.positions = words[1::2]

    def __len__(self) -> int:
        return len(self.offsets)

    def check(self, segment_size: int) -> str | None:
        """Why these entries cannot describe a segment of `segment_size` bytes, or None."""
        if self._torn:
            return "torn entry at the end"
        previous_offset = previous_position = 0
        for relative, position in zip(self.offsets, self.positions, strict=True):
            if relative <= previous_offset or position <= previous_position:
                return f"entry ({relative}, {position}) does not increase"
            if position >= segment_size:
                return f"position {position} is past the segment's {segment_size} bytes"
            previous_offset, previous_position = relative, position
        return None

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the greatest entry at or below `offset`; (base, 0) if none."""
        i = bisect.bisect_right(self.offsets, offset - self.base_offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self.offsets[i], self.positions[i]

    @property
    def last_entry(self) -> tuple[int, int]:
        """(offset, position) of the last entry; (base, 0), the implicit first, if none."""
        if not self.offsets:
            return self.base_offset, 0
        return self.base_offset + self.offsets[-1], self.positions[-1]

    def append(self, offset: int, position: int) -> None:
        relative = offset - self.base_offset
        self._write_entries(_pack_u32s(relative, position), len(self))
        self.offsets.append(relative)
        self.positions.append(position)

    def truncate_to(self, offset: int) -> None:
        """Drop the entries for batches starting at or after `offset`."""
        keep = bisect.bisect_left(self.offsets, offset - self.base_offset)
        self.truncate_entries(keep)

    def truncate_entries(self, count: int) -> None:
        if count < len(self):
            del self.offsets[count:]
            del self.positions[count:]
        self._torn = False
        self._shorten_file(count)

    def replace(self, entries: list[tuple[int, int]]) -> None:
        """Rewrite the whole file with (absolute offset, position) entries."""
        self.truncate_entries(0)
        data = b"".join(_pack_u32s(off - self.base_offset, pos) for off, pos in entries)
        self._write_entries(data, 0)
        self.offsets = array("I", (off - self.base_offset for off, _ in entries))
        self.positions = array("I", (pos for _, pos in entries))


class TimeIndex(_IndexFile):
    """Sparse running maximum of batch timestamps, keyed by the batch's offset."""

    ENTRY_SIZE = 12
    timestamps: array[int]
    offsets: array[int]  # relative to base_offset

    def _load(self, raw: bytes) -> None:
        entries = list(_TIME_ENTRY.iter_unpack(raw))
        self.timestamps = array("q", (ts for ts, _ in entries))
        self.offsets = array("I", (off for _, off in entries))

    def __len__(self) -> int:
        return len(self.offsets)

    def check(self, offset_index: OffsetIndex) -> str | None:
        """Why these entries cannot be right beside `offset_index`, or None."""
        if self._torn:
            return "torn entry at the end"
        # Both files get their entries for the same batches, so their offsets agree.
        if self.offsets != offset_index.offsets:
            return "offsets differ from the offset index's"
        for a, b in zip(self.timestamps, self.timestamps[1:], strict=False):
            if b < a:
                return f"timestamp {b} after {a} (a running maximum never decreases)"
        return None

    @property
    def last_timestamp(self) -> int | None:
        return self.timestamps[-1] if self.timestamps else None

    def before(self, timestamp: int) -> int | None:
        """Offset of the last entry below `timestamp`: every batch up to it is older."""
        i = bisect.bisect_left(self.timestamps, timestamp) - 1
        return self.base_offset + self.offsets[i] if i >= 0 else None

    def append(self, timestamp: int, offset: int) -> None:
        relative = offset - self.base_offset
        self._write_entries(_TIME_ENTRY.pack(timestamp, relative), len(self))
        self.timestamps.append(timestamp)
        self.offsets.append(relative)

    def truncate_to(self, offset: int) -> None:
        """Drop the entries for batches starting at or after `offset`."""
        self.truncate_entries(bisect.bisect_left(self.offsets, offset - self.base_offset))

    def truncate_entries(self, count: int) -> None:
        if count < len(self):
            del self.timestamps[count:]
            del self.offsets[count:]
        self._torn = False
        self._shorten_file(count)

    def replace(self, entries: list[tuple[int, int]]) -> None:
        """Rewrite the whole file with (timestamp, absolute offset) entries."""
        self.truncate_entries(0)
        data = b"".join(_TIME_ENTRY.pack(ts, off - self.base_offset) for ts, off in entries)
        self._write_entries(data, 0)
        self.timestamps = array("q", (ts for ts, _ in entries))
        self.offsets = array("I", (off - self.base_offset for _, off in entries))


def _u32s(data: bytes) -> array[int]:
    words = array("I")
    words.frombytes(data)
    if not _BIG_ENDIAN:
        words.byteswap()
    return words


def _pack_u32s(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)
