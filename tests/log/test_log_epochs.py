"""Leader epochs (KIP-101): the history's rules, its checkpoint, and the partition's use."""

from __future__ import annotations

from pathlib import Path

import pytest
from logbatches import numbered

from pyralog.log import batch, epochs
from pyralog.log.epochs import EpochEntry, EpochFileError, EpochHistory
from pyralog.log.errors import StorageError
from pyralog.log.partition import PartitionLog
from pyralog.log.topic_config import TopicConfig


def history(*pairs: tuple[int, int]) -> EpochHistory:
    return EpochHistory(EpochEntry(e, o) for e, o in pairs)


def test_assign_only_moves_forward() -> None:
    h = history((0, 0), (2, 10))
    assert not h.assign(2, 15)  # the same epoch: nothing new
    with pytest.raises(ValueError, match="epochs only grow"):
        h.assign(1, 20)
    with pytest.raises(ValueError, match="before epoch 2"):
        h.assign(3, 5)
    assert h.assign(4, 10)  # epoch 2 wrote nothing: epoch 4 replaces it
    assert h.entries == [EpochEntry(0, 0), EpochEntry(4, 10)]


def test_end_offset_for_answers_as_offsets_for_leader_epoch() -> None:
    h = history((0, 0), (2, 10), (5, 30))
    assert h.end_offset_for(0, 42) == (0, 10)
    assert h.end_offset_for(1, 42) == (0, 10)  # unknown epoch: the one below it
    assert h.end_offset_for(2, 42) == (2, 30)
    assert h.end_offset_for(4, 42) == (2, 30)
    assert h.end_offset_for(5, 42) == (5, 42)  # the latest ends at the log end
    assert h.end_offset_for(9, 42) == (5, 42)
    assert history((3, 7)).end_offset_for(1, 9) == (-1, -1)
    assert EpochHistory().end_offset_for(0, 0) == (-1, -1)


def test_truncations() -> None:
    h = history((0, 0), (2, 10), (5, 30))
    assert h.truncate_from_end(30)
    assert h.entries == [EpochEntry(0, 0), EpochEntry(2, 10)]
    assert not h.truncate_from_end(31)
    assert h.truncate_from_start(12)
    assert h.entries == [EpochEntry(2, 12)]
    assert not h.truncate_from_start(5)


def test_checkpoint_round_trip_and_damage(tmp_path: Path) -> None:
    h = history((0, 0), (3, 100))
    epochs.save(tmp_path, h)
    assert epochs.load(tmp_path).entries == h.entries  # type: ignore[union-attr]
    assert epochs.load(tmp_path / "missing") is None
    for bad, reason in (
        (b"7\n0\n", "format-0"),
        (b"0\n2\n1 5\n", "count"),
        (b"0\n1\n1 x\n", "line 3"),
        (b"0\n2\n5 10\n3 20\n", "epochs only grow"),
        (b"\xff\xfe", "not a text file"),
    ):
        (tmp_path / epochs.FILE_NAME).write_bytes(bad)
        with pytest.raises(EpochFileError, match=reason):
            epochs.load(tmp_path)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def open_log(directory: Path) -> PartitionLog:
    log = PartitionLog(directory, "t", 0, TopicConfig())
    log.open()
    return log


def test_partition_records_epochs_and_restores_them(log_dir: Path) -> None:
    log = open_log(log_dir)
    log.append(numbered(0, 2))  # epoch 0, offsets 0-1
    log.leader_epoch = 2
    log.append(numbered(2, 3))  # epoch 2, offsets 2-4
    log.leader_epoch = 5
    log.append(numbered(5, 1))  # epoch 5, offset 5
    stamped = [h.leader_epoch for h in log.headers()]
    assert stamped == [0, 2, 5]
    assert log.end_offset_for_epoch(0) == (0, 2)
    assert log.end_offset_for_epoch(3) == (2, 5)
    assert log.end_offset_for_epoch(5) == (5, 6)
    log.close()
    again = open_log(log_dir)
    assert again.leader_epoch == 5  # appends go on under the latest epoch
    assert again.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 2), EpochEntry(5, 5)]
    with pytest.raises(StorageError, match="older than the log's 5"):
        again.leader_epoch = 4
        again.append(numbered(6, 1))
    assert again.log_end_offset == 6  # nothing was appended
    again.close()


def test_a_damaged_or_missing_checkpoint_is_rebuilt_from_the_batches(log_dir: Path) -> None:
    log = open_log(log_dir)
    log.append(numbered(0, 1))
    log.leader_epoch = 3
    log.append(numbered(1, 2))
    log.close()
    checkpoint = log.path / epochs.FILE_NAME
    for damage in (lambda: checkpoint.write_bytes(b"garbage"), checkpoint.unlink):
        damage()
        again = open_log(log_dir)
        assert again.epochs.entries == [EpochEntry(0, 0), EpochEntry(3, 1)]
        assert epochs.load(log.path).entries == again.epochs.entries  # type: ignore[union-attr]
        again.close()


def test_truncation_forgets_epochs_that_began_after_the_cut(log_dir: Path) -> None:
    log = open_log(log_dir)
    log.append(numbered(0, 2))
    log.leader_epoch = 1
    log.append(numbered(2, 2))
    log.leader_epoch = 2
    log.append(numbered(4, 2))
    log.truncate_to(3)  # the batch at 2-3 goes whole
    assert log.log_end_offset == 2
    assert log.epochs.entries == [EpochEntry(0, 0)]
    log.close()
    assert open_log(log_dir).epochs.entries == [EpochEntry(0, 0)]


def test_single_node_appends_never_fsync_a_checkpoint(log_dir: Path) -> None:
    log = open_log(log_dir)
    before = (log.path / epochs.FILE_NAME).read_bytes()
    for i in range(5):
        log.append(numbered(i, 1))
    assert (log.path / epochs.FILE_NAME).read_bytes() == before  # still the empty one
    log.close()
    again = open_log(log_dir)
    assert again.epochs.entries == [EpochEntry(0, 0)]
    header = next(again.headers())
    assert batch.validate(again.read(0, 1 << 20)).leader_epoch == header.leader_epoch == 0
    again.close()
