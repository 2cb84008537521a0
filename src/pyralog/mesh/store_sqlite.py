"""The SQLite store: the embedded default, one file next to the coordinator's config.

One coordinator per file (SQLite is not shared between machines; use etcd for two
coordinators). Writes are durable when they return (WAL, synchronous=FULL). Calls are
synchronous underneath: a local SQLite write takes well under a millisecond, less than
handing it to a thread would.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from pyralog.mesh.store import Entry, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES (0, 0);
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite://{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the SQLite store: {e}") from None
        self._changed = asyncio.Event()

    def _revision(self) -> int:
        return int(self._db.execute("SELECT revision FROM meta").fetchone()[0])

    async def get(self, key: str) -> Entry | None:
        row = self._db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
        return Entry(key, bytes(row[0]), int(row[1])) if row else None

    async def scan(self, prefix: str) -> list[Entry]:
        rows = self._db.execute(
            "SELECT key, value, version FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ).fetchall()
        return [Entry(k, bytes(v), int(n)) for k, v, n in rows]

    def _write(self, key: str, value: bytes | None, expect: int | None) -> bool:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
            current = int(row[0]) if row else 0
            if (expect is not None and current != expect) or (value is None and not row):
                db.execute("ROLLBACK")
                return False
            revision = self._revision() + 1
            db.execute("UPDATE meta SET revision = ?", (revision,))
            if value is None:
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE"
                    " SET value = excluded.value, version = excluded.version",
                    (key, value, revision),
                )
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.url}: write failed: {e}") from None
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        return self._write(key, value, expect)

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        return self._write(key, None, expect)

    async def revision(self) -> int:
        return self._revision()

    async def wait(self, after: int, timeout: float) -> int:
        current = self._revision()
        if current > after:
            return current
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # wait_for may drop a cancellation (3.11)
                await self._changed.wait()
        return self._revision()

    async def close(self) -> None:
        self._db.close()
