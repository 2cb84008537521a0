"""OffsetStore: commits and fetches, restarts, deleted topics, and a commit that survives
the committing process being killed with SIGKILL right after it returned."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyralog.log.offsets import Committed, OffsetCommit, OffsetStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "offsets.db"


def test_commit_and_fetch(path: Path) -> None:
    with OffsetStore(path) as store:
        assert store.fetch("g", "t", 0) is None
        store.commit("g", "t", 0, 42, "meta", 3, 1_000)
        assert store.fetch("g", "t", 0) == Committed(42, "meta", 3)
        store.commit("g", "t", 0, 50, None, -1, 2_000)  # a later commit replaces it
        assert store.fetch("g", "t", 0) == (50, None, -1)
        assert store.fetch("g", "t", 1) is None
        assert store.fetch("other", "t", 0) is None
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_commits_survive_close_and_reopen(path: Path) -> None:
    store = OffsetStore(path)
    store.commit_many("g", [OffsetCommit("t", p, 100 + p, f"m{p}", 1) for p in range(4)], now_ms=5)
    store.close()
    with OffsetStore(path) as reopened:
        assert reopened.fetch_group("g") == {
            ("t", p): Committed(100 + p, f"m{p}", 1) for p in range(4)
        }
        assert reopened.groups() == ["g"]


def test_commit_many_is_one_transaction(path: Path) -> None:
    with OffsetStore(path) as store:
        store.commit("g", "t", 0, 1, None, 0, 1)
        bad = [OffsetCommit("t", 0, 2, None, 0), OffsetCommit("t", 1, None, None, 0)]  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            store.commit_many("g", bad, now_ms=2)
        assert store.fetch_group("g") == {("t", 0): Committed(1, None, 0)}
        store.commit("g", "t", 1, 7, None, 0, 3)  # still usable after the rollback
        assert store.fetch("g", "t", 1) == (7, None, 0)


def test_many_groups_and_delete_topic(path: Path) -> None:
    with OffsetStore(path) as store:
        for g in range(20):
            store.commit_many(
                f"group-{g:02}",
                [
                    OffsetCommit(topic, p, g * 10 + p, None, 0)
                    for topic in ("a", "b")
                    for p in (0, 1)
                ],
                now_ms=g,
            )
        assert store.groups() == [f"group-{g:02}" for g in range(20)]
        assert store.fetch("group-07", "b", 1) == (71, None, 0)
        assert store.delete_topic("a") == 40
        assert store.fetch("group-07", "a", 1) is None
        assert store.fetch_group("group-03") == {
            ("b", 0): Committed(30, None, 0),
            ("b", 1): Committed(31, None, 0),
        }
        assert store.delete_topic("b") == 40
        assert store.groups() == []
        store.commit("x", "c", 0, 1, None, 0, 0)
        assert store.delete_group("x") == 1 and store.groups() == []


def test_commits_from_threads(path: Path) -> None:
    with OffsetStore(path) as store:

        def commit_all(group: str) -> None:
            for offset in range(50):
                store.commit(group, "t", 0, offset, None, 0, offset)

        threads = [threading.Thread(target=commit_all, args=(f"g{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {g: store.fetch(g, "t", 0) for g in store.groups()} == {
            f"g{i}": (49, None, 0) for i in range(4)
        }


_COMMITTER = """
import sys, time
from pathlib import Path
from pyralog.log.offsets import OffsetStore
store = OffsetStore(Path(sys.argv[1]))
store.commit("g", "t", 3, 12345, "before the kill", 7, 1)
print("committed", flush=True)
time.sleep(60)
"""


def test_a_commit_survives_kill_9(path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _COMMITTER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "committed"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with OffsetStore(path) as store:
        assert store.fetch("g", "t", 3) == Committed(12345, "before the kill", 7)
