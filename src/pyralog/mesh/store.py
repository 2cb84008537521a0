"""The coordinator's state store: one small key-value interface, two implementations.

Everything the coordinator knows (nodes, tokens, settings) is JSON under string keys.
The interface is what both SQLite and etcd do well and nothing more: read a key or a
prefix, write with compare-and-set on the key's version, delete, and wait for the store's
revision to move past one we have seen (which is how the coordinator's watch API learns
of changes made by another coordinator sharing the same etcd).

``open_store("sqlite:///var/lib/pyralog/coordinator.db")`` or
``open_store("etcd://10.0.0.5:2379,10.0.0.6:2379")``; a bare path means SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """The store cannot be reached or used; the message names it."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    version: int  # changes on every write of this key; 0 never names a stored entry


class Store(Protocol):
    url: str

    async def get(self, key: str) -> Entry | None: ...

    async def scan(self, prefix: str) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, in key order."""
        ...

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        """Write ``key``. With ``expect``, only if its version is still ``expect`` (0: only
        if absent); False when it is not (someone else wrote first)."""
        ...

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Remove ``key`` (with ``expect``, only at that version); False if it was not
        there or had moved on."""
        ...

    async def revision(self) -> int:
        """A number that grows with every write to the store."""
        ...

    async def wait(self, after: int, timeout: float) -> int:
        """Return the revision as soon as it exceeds ``after``, or after ``timeout``."""
        ...

    async def close(self) -> None: ...


def open_store(url: str, base: Path | None = None) -> Store:
    """A store from its URL; relative SQLite paths are relative to ``base``."""
    if url.startswith("etcd://"):
        from pyralog.mesh.store_etcd import EtcdStore

        return EtcdStore.from_url(url)
    from pyralog.mesh.store_sqlite import SqliteStore

    return SqliteStore(_sqlite_path(url, base))


def _sqlite_path(url: str, base: Path | None) -> Path:
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if "://" in path:
        raise StoreError(f"store {url!r}: expected sqlite:///PATH, a path, or etcd://HOST:PORT")
    resolved = Path(path)
    if base is not None and not resolved.is_absolute():
        resolved = base / resolved
    return resolved


LOG_SUFFIX = "-log"


def open_log_store(url: str, base: Path | None = None) -> Store:
    """The replicated log's store beside the coordinator's (``url`` is the coordinator's):
    its own SQLite file, or a sibling etcd prefix. Kept apart because brokers heartbeat
    every second, and each write to the mesh's store would wake every member's watch."""
    if url.startswith("etcd://"):
        from pyralog.mesh.store_etcd import EtcdStore, parse_url

        endpoints, prefix = parse_url(url)
        return EtcdStore(endpoints, prefix.rstrip("/") + LOG_SUFFIX + "/")
    from pyralog.mesh.store_sqlite import SqliteStore

    path = _sqlite_path(url, base)
    return SqliteStore(path.with_name(path.stem + LOG_SUFFIX + path.suffix))
