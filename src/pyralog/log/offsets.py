"""Committed consumer offsets, kept in SQLite so they survive a broker restart.

Kafka keeps them in the __consumer_offsets topic; one SQLite file does the same job for
Pyralog with far less machinery: one row per (group, topic, partition), upserted on
OffsetCommit and read by OffsetFetch. WAL mode with synchronous=FULL makes each commit
durable (fsynced) before it returns, so an acknowledged commit survives a crash.

Every call blocks on disk IO. The broker calls it in a thread (`asyncio.to_thread`),
so the one connection is opened with check_same_thread=False and a lock serialises use.
Whether a commit is allowed (generation, member) is `GroupCoordinator.validate_commit`'s
business, decided before the broker writes here.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    metadata TEXT,
    leader_epoch INTEGER NOT NULL,
    commit_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offsets_by_topic ON offsets (topic);
"""

_UPSERT = """
INSERT INTO offsets (group_id, topic, partition, committed_offset, metadata, leader_epoch,
                     commit_ms)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (group_id, topic, partition) DO UPDATE SET
    committed_offset = excluded.committed_offset,
    metadata = excluded.metadata,
    leader_epoch = excluded.leader_epoch,
    commit_ms = excluded.commit_ms
"""


class Committed(NamedTuple):
    """What OffsetFetch returns for one partition. leader_epoch -1 means unknown."""

    offset: int
    metadata: str | None
    leader_epoch: int


class OffsetCommit(NamedTuple):
    """One partition of an OffsetCommit request, for `commit_many`."""

    topic: str
    partition: int
    offset: int
    metadata: str | None
    leader_epoch: int


class OffsetStore:
    """The committed offsets of every group, in one SQLite file at `path`."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; commit_many opens its own.
        self._db = sqlite3.connect(
            path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{path}: offsets schema v{version} is newer than this code")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def commit(
        self,
        group: str,
        topic: str,
        partition: int,
        offset: int,
        metadata: str | None,
        leader_epoch: int,
        now_ms: int,
    ) -> None:
        """Store one partition's offset; durable when this returns."""
        self.commit_many(
            group, [OffsetCommit(topic, partition, offset, metadata, leader_epoch)], now_ms
        )

    def commit_many(self, group: str, commits: Iterable[OffsetCommit], now_ms: int) -> None:
        """Store a whole OffsetCommit request in one transaction: all of it or none."""
        rows = [
            (group, c.topic, c.partition, c.offset, c.metadata, c.leader_epoch, now_ms)
            for c in commits
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def fetch(self, group: str, topic: str, partition: int) -> Committed | None:
        """The committed offset, or None if the group never committed this partition."""
        with self._lock:
            row = self._db.execute(
                "SELECT committed_offset, metadata, leader_epoch FROM offsets"
                " WHERE group_id = ? AND topic = ? AND partition = ?",
                (group, topic, partition),
            ).fetchone()
        return None if row is None else Committed(*row)

    def fetch_group(self, group: str) -> dict[tuple[str, int], Committed]:
        """Every committed offset of `group`, keyed by (topic, partition)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, partition, committed_offset, metadata, leader_epoch FROM offsets"
                " WHERE group_id = ? ORDER BY topic, partition",
                (group,),
            ).fetchall()
        return {(topic, partition): Committed(*rest) for topic, partition, *rest in rows}

    def groups(self) -> list[str]:
        """The groups with at least one commit (ListGroups shows them as Empty)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT group_id FROM offsets ORDER BY group_id"
            ).fetchall()
        return [group for (group,) in rows]

    def delete_topic(self, topic: str) -> int:
        """Drop every group's commits for a deleted topic; how many rows went."""
        with self._lock:
            return self._db.execute("DELETE FROM offsets WHERE topic = ?", (topic,)).rowcount

    def delete_group(self, group: str) -> int:
        """Drop a group's commits (DeleteGroups); how many rows went."""
        with self._lock:
            return self._db.execute("DELETE FROM offsets WHERE group_id = ?", (group,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
