"""Idempotent producing: producer ids, and per-partition sequence checks (sans-IO).

Kafka's rules (KIP-98), per partition and producer id: a batch continues the sequence of
the producer's last batch, a retried batch equal to one of the last five is a duplicate
(answered with the offset it got the first time, not appended again), an older epoch is
fenced, anything else is out of order. The table is rebuilt from the batch headers in
the log at start-up, so it survives a restart exactly as far as the log does.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyralog.log.batch import BatchHeader

# Kafka keeps this many recent batches per producer for duplicate detection, and
# clients cap max.in.flight.requests at 5 with idempotence for the same reason.
RECENT_BATCHES = 5
SEQUENCE_SPACE = 1 << 31

# Kafka error codes returned from `check`.
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
DUPLICATE_SEQUENCE_NUMBER = 46


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A retried batch already in the log, at these offsets."""

    base_offset: int
    last_offset: int


@dataclass(slots=True)
class _Producer:
    epoch: int
    # (base_sequence, last_sequence, base_offset, last_offset), oldest first.
    recent: deque[tuple[int, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=RECENT_BATCHES)
    )


class ProducerTable:
    """Sequence state of every idempotent producer that wrote to one partition."""

    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, header: BatchHeader) -> int | Duplicate | None:
        """None to append, a Duplicate to answer without appending, or an error code."""
        if not header.has_producer or header.base_sequence < 0:
            return None
        state = self._producers.get(header.producer_id)
        if state is None:
            # No state (new producer, or its batches aged out): accept any sequence,
            # as Kafka does since KIP-360.
            return None
        if header.producer_epoch < state.epoch:
            return INVALID_PRODUCER_EPOCH
        if header.producer_epoch > state.epoch:
            return None if header.base_sequence == 0 else OUT_OF_ORDER_SEQUENCE_NUMBER
        for base_seq, last_seq, base_offset, last_offset in state.recent:
            if base_seq == header.base_sequence and last_seq == header.last_sequence:
                return Duplicate(base_offset, last_offset)
        last = state.recent[-1][1] if state.recent else -1
        if header.base_sequence == (last + 1) % SEQUENCE_SPACE:
            return None
        return OUT_OF_ORDER_SEQUENCE_NUMBER

    def record(self, header: BatchHeader) -> None:
        """Remember a batch that was appended (its header has the assigned offsets)."""
        if not header.has_producer or header.base_sequence < 0:
            return
        state = self._producers.get(header.producer_id)
        if state is None or header.producer_epoch > state.epoch:
            state = _Producer(header.producer_epoch)
            self._producers[header.producer_id] = state
        state.recent.append(
            (header.base_sequence, header.last_sequence, header.base_offset, header.last_offset)
        )

    @classmethod
    def rebuild(cls, headers: Iterable[BatchHeader]) -> ProducerTable:
        table = cls()
        for header in headers:
            table.record(header)
        return table


class ProducerIds:
    """Producer ids that are never handed out twice, across restarts.

    Ids are reserved in blocks: the file holds the first id of the next block, written
    and fsynced before any id of the current block is given out, so a crash only skips
    ids. Blocking IO happens only once per block.
    """

    BLOCK = 1000

    def __init__(self, path: Path) -> None:
        self._path = path
        self._next = 0
        self._limit = 0

    def check(self) -> None:
        """Read the counter once, so a damaged file stops the broker at start-up."""
        self._read()

    def allocate(self) -> int:
        if self._next >= self._limit:
            start = self._read()
            self._write(start + self.BLOCK)
            self._next, self._limit = start, start + self.BLOCK
        pid = self._next
        self._next += 1
        return pid

    def _read(self) -> int:
        try:
            text = self._path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"{self._path}: not a producer id counter: {text[:40]!r}")
        return int(text)

    def _write(self, value: int) -> None:
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
