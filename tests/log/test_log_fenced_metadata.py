"""A broker cut off from the cluster store (fenced) gives no metadata from its stale view.

Found by the Jepsen split-brain test (``test_log_jepsen.py``): the leader of a partition
loses only its cluster store; the controller names another leader, but the old one,
still reachable, went on answering Metadata from its last view, naming itself leader.
librdkafka asks the brokers it is connected to, so a producer connected only to it
never learned of the new leader until its messages timed out. Now a fenced broker
closes a connection that asks for Metadata, and the client asks another broker; once
its heartbeat goes through again it answers as before.

In process: one replicated broker over an SQLite store that the test can switch off.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pyralog.log.broker import Broker
from pyralog.log.connection import Connection
from pyralog.log.context import BrokerConfig
from pyralog.log.storage import Storage
from pyralog.mesh.store import Entry, StoreError
from pyralog.mesh.store_sqlite import SqliteStore

METADATA = {
    "topics": None,
    "allow_auto_topic_creation": False,
    "include_cluster_authorized_operations": False,
    "include_topic_authorized_operations": False,
}


class SwitchableStore:
    """An SqliteStore that fails every call while ``down`` (the store out of reach)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError(f"{self.url}: unreachable (switched off by the test)")

    async def get(self, key: str) -> Entry | None:
        self._check()
        return await self.inner.get(key)

    async def scan(self, prefix: str) -> list[Entry]:
        self._check()
        return await self.inner.scan(prefix)

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        self._check()
        return await self.inner.put(key, value, expect=expect)

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        self._check()
        return await self.inner.delete(key, expect=expect)

    async def revision(self) -> int:
        self._check()
        return await self.inner.revision()

    async def wait(self, after: int, timeout: float) -> int:
        if self.down:
            await asyncio.sleep(min(timeout, 0.1))
        self._check()
        return await self.inner.wait(after, timeout)

    async def close(self) -> None:
        await self.inner.close()


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_a_fenced_broker_closes_connections_that_ask_for_metadata(tmp_path: Path) -> None:
    async def main() -> None:
        store = SwitchableStore(SqliteStore(tmp_path / "cluster.db"))
        storage = Storage(tmp_path / "data")
        storage.open()
        config = BrokerConfig(node_id=7, advertised_host="127.0.0.1", advertised_port=0)
        broker = Broker(storage, config, tmp_path / "data")
        try:
            ((host, port),) = await broker.start("127.0.0.1", 0)
            replication = await broker.join_cluster(store, session_timeout=0.5, heartbeat=0.1)
            cluster = replication.cluster
            conn = await Connection.open(host, port)
            meta = await conn.call(3, METADATA)
            assert [b.node_id for b in meta.brokers] == [7]

            store.down = True
            assert await _until(lambda: cluster.fenced, 5), "never fenced"
            with pytest.raises(ConnectionError):
                await conn.call(3, METADATA)
            await conn.close()
            again = await Connection.open(host, port)  # new connections too
            with pytest.raises(ConnectionError):
                await again.call(3, METADATA)
            await again.close()

            store.down = False
            assert await _until(lambda: not cluster.fenced, 5), "still fenced"
            conn = await Connection.open(host, port)
            meta = await conn.call(3, METADATA)
            assert [b.node_id for b in meta.brokers] == [7]
            await conn.close()
        finally:
            await broker.close()

    asyncio.run(asyncio.wait_for(main(), 60))
