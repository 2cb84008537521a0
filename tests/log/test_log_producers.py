"""Idempotent producing: sequence checks per partition, producer ids across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyralog.log import batch
from pyralog.log.producers import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    Duplicate,
    ProducerIds,
    ProducerTable,
)
from pyralog.log.records import build_batch


def _header(base_offset: int, seq: int, n: int = 2, pid: int = 7, epoch: int = 0):  # type: ignore[no-untyped-def]
    data = bytearray(
        build_batch(
            [(None, b"x")] * n,
            timestamp_ms=1,
            producer_id=pid,
            producer_epoch=epoch,
            base_sequence=seq,
        )
    )
    batch.assign(data, base_offset)
    return batch.validate(data)


def test_sequences_continue_duplicates_are_answered_with_their_offset() -> None:
    table = ProducerTable()
    first = _header(0, 0)
    assert table.check(first) is None
    table.record(first)
    second = _header(2, 2)
    assert table.check(second) is None
    table.record(second)
    # A retry of either recent batch is a duplicate, with the offsets it got.
    assert table.check(_header(99, 0)) == Duplicate(0, 1)
    assert table.check(_header(99, 2)) == Duplicate(2, 3)
    assert table.check(_header(4, 5)) == OUT_OF_ORDER_SEQUENCE_NUMBER  # a gap
    assert table.check(_header(4, 3)) == OUT_OF_ORDER_SEQUENCE_NUMBER  # overlapping


def test_epochs_fence_old_producers_and_reset_sequences() -> None:
    table = ProducerTable()
    table.record(_header(0, 0, epoch=3))
    assert table.check(_header(2, 2, epoch=2)) == INVALID_PRODUCER_EPOCH
    assert table.check(_header(2, 5, epoch=4)) == OUT_OF_ORDER_SEQUENCE_NUMBER
    bumped = _header(2, 0, epoch=4)
    assert table.check(bumped) is None
    table.record(bumped)
    assert table.check(_header(4, 2, epoch=4)) is None


def test_only_the_last_five_batches_are_remembered() -> None:
    table = ProducerTable()
    for i in range(7):
        table.record(_header(2 * i, 2 * i))
    assert table.check(_header(99, 0)) == OUT_OF_ORDER_SEQUENCE_NUMBER  # aged out
    assert table.check(_header(99, 4)) == Duplicate(4, 5)


def test_sequences_wrap_at_2_31() -> None:
    table = ProducerTable()
    table.record(_header(0, 2**31 - 2, n=2))
    assert table.check(_header(2, 0)) is None


def test_non_idempotent_batches_pass_and_rebuild_restores_state() -> None:
    table = ProducerTable()
    plain = batch.validate(build_batch([(None, b"x")], timestamp_ms=1))
    assert table.check(plain) is None
    rebuilt = ProducerTable.rebuild([_header(0, 0), _header(2, 2), plain])
    assert len(rebuilt) == 1
    assert rebuilt.check(_header(9, 2)) == Duplicate(2, 3)
    assert rebuilt.check(_header(4, 4)) is None


def test_producer_ids_are_never_reused_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "producer-ids"
    first = ProducerIds(path)
    a = [first.allocate() for _ in range(3)]
    second = ProducerIds(path)  # a restart (or a crash) skips the rest of the block
    b = [second.allocate() for _ in range(ProducerIds.BLOCK + 2)]
    assert len(set(a + b)) == len(a) + len(b)
    assert min(b) > max(a)


def test_a_damaged_counter_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "producer-ids"
    path.write_text("twelve\n")
    with pytest.raises(ValueError, match="producer-ids"):
        ProducerIds(path).allocate()
