"""Storage: topics created, listed, reopened (with stable ids), altered and deleted; bad
names and unusable data directories refused with the path and the reason."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from logbatches import BASE_TS, numbered, read_all

from pyralog.log.errors import (
    InvalidTopic,
    StorageError,
    TopicConfigError,
    TopicExists,
    UnknownTopic,
)
from pyralog.log.storage import Storage
from pyralog.log.topic_config import TopicConfig


def test_create_reopen_and_list(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        orders = storage.create_topic("orders", TopicConfig(partitions=3))
        storage.create_topic("a.b_c-9")
        assert [t.name for t in storage.topics()] == ["a.b_c-9", "orders"]
        assert storage.topic("orders") is orders and storage.topic("nope") is None
        part = storage.partition("orders", 2)
        assert part is not None and part.path == tmp_path / "topics/orders/orders-2"
        assert storage.partition("orders", 3) is None and storage.partition("x", 0) is None
        part.append(numbered(0))
        topic_id = orders.topic_id
    assert json.loads((tmp_path / "topics/orders/topic.json").read_text())["name"] == "orders"
    with Storage(tmp_path) as storage:
        reopened = storage.topic("orders")
        assert reopened is not None and reopened.topic_id == topic_id
        assert len(reopened.partitions) == 3 and reopened.config.partitions == 3
        assert read_all(reopened.partitions[2]) == [(0, b"r0")]
        assert storage.recovery == []  # closed cleanly: nothing to report


def test_defaults_apply_to_new_topics(tmp_path: Path) -> None:
    with Storage(tmp_path, TopicConfig(retention_ms=5)) as storage:
        assert storage.create_topic("t").config.retention_ms == 5


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "ä", "x" * 250, "a\n"])
def test_invalid_topic_names(tmp_path: Path, name: str) -> None:
    with Storage(tmp_path) as storage, pytest.raises(InvalidTopic):
        storage.create_topic(name)


def test_longest_and_dotted_names_are_fine(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        storage.create_topic("x" * 249)
        storage.create_topic(".hidden")
    with Storage(tmp_path) as storage:
        assert {t.name for t in storage.topics()} == {"x" * 249, ".hidden"}


def test_topic_exists_and_unknown_topic(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        storage.create_topic("t")
        with pytest.raises(TopicExists, match="'t'"):
            storage.create_topic("t")
        with pytest.raises(UnknownTopic, match="'u'"):
            storage.delete_topic("u")
        with pytest.raises(UnknownTopic):
            storage.alter_config("u", {})


def test_delete_topic(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        topic = storage.create_topic("t", TopicConfig(partitions=2))
        topic.partitions[0].append(numbered(0))
        storage.delete_topic("t")
        assert storage.topic("t") is None and not (tmp_path / "topics/t").exists()
        assert list((tmp_path / "trash").iterdir()) == []
        with pytest.raises(StorageError, match="not open"):
            topic.partitions[0].append(numbered(1))
        again = storage.create_topic("t")  # the name is free again, with a new id
        assert again.topic_id != topic.topic_id
        assert again.partitions[0].log_end_offset == 0


def test_alter_config_persists_and_applies(tmp_path: Path) -> None:
    with Storage(tmp_path, TopicConfig(retention_ms=1000)) as storage:
        storage.create_topic("t", TopicConfig(partitions=2, retention_ms=1000))
        config = storage.alter_config("t", {"retention.ms": "99", "flush.messages": "1"})
        assert (config.retention_ms, config.flush, config.partitions) == (99, "always", 2)
        assert storage.partition("t", 1).config is config  # type: ignore[union-attr]
        with pytest.raises(TopicConfigError, match=r"segment\.bytes"):
            storage.alter_config("t", {"segment.bytes": "12"})
        checked = storage.alter_config("t", {"retention.ms": "5"}, validate_only=True)
        assert checked.retention_ms == 5
    with Storage(tmp_path, TopicConfig(retention_ms=1000)) as storage:
        topic = storage.topic("t")
        assert topic is not None and topic.config.retention_ms == 99
        # None resets to this storage's default, not TopicConfig's.
        assert storage.alter_config("t", {"retention.ms": None}).retention_ms == 1000
    assert not list((tmp_path / "topics/t").glob(".*.tmp"))


def test_periodic_work_covers_every_partition(tmp_path: Path) -> None:
    config = TopicConfig(partitions=2, segment_bytes=1024, retention_bytes=0, flush_ms=10)
    with Storage(tmp_path, clock=lambda: BASE_TS / 1000) as storage:
        topic = storage.create_topic("t", config)
        for p in topic.partitions:
            for i in range(30):
                p.append(numbered(i, size=60))
        assert storage.maybe_flush(BASE_TS + 10_000) == 2
        deleted = storage.enforce_retention(BASE_TS)
        assert deleted >= 4
        assert all(len(p.segments) == 1 for p in topic.partitions)


def test_unclean_shutdown_is_reported(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        storage.create_topic("t").partitions[0].append(numbered(0))
    segment = tmp_path / "topics/t/t-0/00000000000000000000.log"
    (segment.parent / ".clean").unlink()
    with open(segment, "ab") as f:
        f.write(b"torn")
    with Storage(tmp_path) as storage:
        assert len(storage.recovery) == 1
        assert "cut 4 bytes" in str(storage.recovery[0])


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(StorageError, match=f"{path}: not a directory"):
        Storage(path).open()
    with pytest.raises(StorageError, match=r"(?i)not a directory"):
        Storage(path / "below").open()


def test_data_dir_in_use(tmp_path: Path) -> None:
    with Storage(tmp_path), pytest.raises(StorageError, match="in use"):
        Storage(tmp_path).open()


def test_data_dir_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through permissions; test_log_faults covers a read-only mount")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            Storage(tmp_path).open()
    finally:
        tmp_path.chmod(0o700)


def test_half_made_and_half_deleted_topics_are_cleared(tmp_path: Path) -> None:
    with Storage(tmp_path):
        pass  # makes the layout
    for leftover in ("staging", "trash"):
        (tmp_path / leftover / uuid.uuid4().hex / "x-0").mkdir(parents=True)
    with Storage(tmp_path) as storage:
        assert storage.topics() == []
    assert list((tmp_path / "staging").iterdir()) == list((tmp_path / "trash").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{", "not a valid topic file"),
        ('{"format": 9}', "unknown format"),
        ('{"format": 1, "name": "other", "topic_id": "x", "config": {}}', "names topic"),
        ('{"format": 1, "name": "t", "topic_id": "x", "config": {}}', "badly formed"),
        (
            f'{{"format": 1, "name": "t", "topic_id": "{uuid.uuid4()}", '
            '"config": {"segment_bytes": 5}}',
            "segment.bytes",
        ),
    ],
)
def test_bad_topic_file(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "topics/t").mkdir(parents=True)
    (tmp_path / "topics/t/topic.json").write_text(content)
    with pytest.raises(StorageError, match=reason) as info:
        Storage(tmp_path).open()
    assert "topic.json" in str(info.value)


def test_missing_partition_directory(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        storage.create_topic("t", TopicConfig(partitions=2))
    (tmp_path / "topics/t/t-1/00000000000000000000.log").unlink()
    for p in (tmp_path / "topics/t/t-1").iterdir():
        p.unlink()
    (tmp_path / "topics/t/t-1").rmdir()
    with pytest.raises(StorageError, match="t-1: missing"):
        Storage(tmp_path).open()
    with pytest.raises(StorageError, match="t-1: missing"):
        Storage(tmp_path).open()
