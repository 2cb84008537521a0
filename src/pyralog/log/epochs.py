"""Leader epochs of one partition: where each leader's records begin (Kafka's KIP-101).

Every batch carries the epoch of the leader that appended it. The history keeps, per
epoch, the first offset written in it, so a follower that comes back after a failover
can ask the new leader "where did my last epoch end?" (Kafka's OffsetsForLeaderEpoch)
and truncate to that point instead of to its high watermark: logs never fork and
nothing the new leader has is lost.

`EpochHistory` is sans-IO. `load`/`save` keep it in ``leader-epoch-checkpoint`` in the
partition's directory (a text file: a format line, a count, then ``epoch start`` lines),
replaced atomically; a missing or damaged file is rebuilt from the batch headers, which
are the truth. Hand-written: Kafka's LeaderEpochFileCache has no Python counterpart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyralog.log.batch import BatchHeader
from pyralog.log.fileio import fsync_dir

if TYPE_CHECKING:
    from pyralog.log.segment import Segment

FILE_NAME = "leader-epoch-checkpoint"
FORMAT = 0
UNDEFINED = -1  # Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET


class EpochFileError(ValueError):
    """A checkpoint file that cannot be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class EpochEntry:
    epoch: int
    start_offset: int


class EpochHistory:
    """Epochs in increasing order, each with the first offset appended under it."""

    def __init__(self, entries: Iterable[EpochEntry] = ()) -> None:
        self._entries: list[EpochEntry] = []
        for entry in entries:
            self.assign(entry.epoch, entry.start_offset)

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest(self) -> EpochEntry | None:
        return self._entries[-1] if self._entries else None

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` begins at `start_offset`; True if the history changed."""
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"epoch {epoch} at offset {start_offset}: both must be >= 0")
        last = self.latest
        if last is not None:
            if epoch < last.epoch:
                raise ValueError(f"epoch {epoch} after epoch {last.epoch}: epochs only grow")
            if epoch == last.epoch:
                return False
            if start_offset < last.start_offset:
                raise ValueError(
                    f"epoch {epoch} at {start_offset}, before epoch {last.epoch}'s start "
                    f"{last.start_offset}"
                )
            if start_offset == last.start_offset:
                # The previous leader wrote nothing: its epoch covers no offsets.
                self._entries.pop()
        self._entries.append(EpochEntry(epoch, start_offset))
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(epoch, end offset) as OffsetsForLeaderEpoch answers a follower asking `epoch`.

        The largest known epoch <= the one asked, and the offset where it ended: the
        next epoch's start, or the log end for the latest. (-1, -1) if `epoch` is older
        than everything known.
        """
        if not self._entries or epoch < self._entries[0].epoch:
            return UNDEFINED, UNDEFINED
        for i in range(len(self._entries) - 1, -1, -1):
            entry = self._entries[i]
            if entry.epoch <= epoch:
                if i == len(self._entries) - 1:
                    return entry.epoch, log_end_offset
                return entry.epoch, self._entries[i + 1].start_offset
        raise AssertionError("unreachable: the first entry's epoch is <= epoch")

    def truncate_from_end(self, offset: int) -> bool:
        """The log was cut at `offset`: forget epochs that began at or after it."""
        kept = [e for e in self._entries if e.start_offset < offset]
        changed = len(kept) != len(self._entries)
        self._entries = kept
        return changed

    def truncate_from_start(self, offset: int) -> bool:
        """The log now starts at `offset` (retention): epochs wholly before it go, and the
        one it falls in starts there."""
        if not self._entries or self._entries[0].start_offset >= offset:
            return False
        before = [e for e in self._entries if e.start_offset <= offset]
        after = [e for e in self._entries if e.start_offset > offset]
        self._entries = [EpochEntry(before[-1].epoch, offset), *after]
        return True

    @classmethod
    def from_headers(cls, headers: Iterable[BatchHeader]) -> EpochHistory:
        """Rebuilt from the batches themselves (each carries its leader's epoch)."""
        history = cls()
        for header in headers:
            last = history.latest
            if last is None or header.leader_epoch > last.epoch:
                history.assign(header.leader_epoch, header.base_offset)
        return history

    def encode(self) -> bytes:
        lines = [str(FORMAT), str(len(self._entries))]
        lines += [f"{e.epoch} {e.start_offset}" for e in self._entries]
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def decode(cls, data: bytes, where: str = FILE_NAME) -> EpochHistory:
        try:
            lines = data.decode("ascii").splitlines()
        except UnicodeDecodeError:
            raise EpochFileError(f"{where}: not a text file") from None
        if len(lines) < 2 or lines[0] != str(FORMAT):
            raise EpochFileError(f"{where}: not a format-{FORMAT} epoch checkpoint")
        if not lines[1].isascii() or not lines[1].isdigit() or int(lines[1]) != len(lines) - 2:
            raise EpochFileError(f"{where}: count {lines[1]!r} but {len(lines) - 2} entries")
        entries = []
        for n, line in enumerate(lines[2:], start=3):
            parts = line.split(" ")
            if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
                raise EpochFileError(f"{where}: line {n}: expected 'EPOCH START', got {line!r}")
            entries.append(EpochEntry(int(parts[0]), int(parts[1])))
        try:
            return cls(entries)
        except ValueError as e:
            raise EpochFileError(f"{where}: {e}") from None


def restore(
    directory: Path, segments: Sequence[Segment], log_start: int, log_end: int
) -> EpochHistory:
    """A partition's history at open: its checkpoint, or rebuilt from the segments'
    batch headers when the checkpoint is missing, damaged or ahead of the (recovered)
    log; trimmed to the log and checkpointed again if that changed anything."""
    history: EpochHistory | None
    try:
        history = load(directory)
    except (EpochFileError, OSError):
        history = None
    rebuilt = history is None or bool(history.latest and history.latest.start_offset > log_end)
    if history is None or rebuilt:
        history = EpochHistory.from_headers(_headers(segments))
    elif history.latest is None and log_end > log_start:
        # An empty checkpoint over records: all written under epoch 0, which the
        # partition does not checkpoint by itself (PartitionLog._note_epoch).
        history.assign(0, log_start)
    trimmed = history.truncate_from_end(log_end) | history.truncate_from_start(log_start)
    if rebuilt or trimmed:
        save(directory, history)
    return history


def _headers(segments: Sequence[Segment]) -> Iterator[BatchHeader]:
    for segment in segments:
        offset = segment.base_offset
        while True:
            chunk = segment.headers(offset, 1024)
            if not chunk:
                break
            yield from chunk
            offset = chunk[-1].next_offset


def load(directory: Path) -> EpochHistory | None:
    """The saved history, or None when there is none (EpochFileError when damaged)."""
    path = directory / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return EpochHistory.decode(data, str(path))


def save(directory: Path, history: EpochHistory) -> None:
    """Replace the checkpoint atomically: temporary file, fsync, rename, directory fsync."""
    path = directory / FILE_NAME
    tmp = path.with_name(FILE_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, history.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
