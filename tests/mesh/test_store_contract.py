"""The Store contract (pyralog.mesh.store), run against every implementation: SQLite and
etcd. Each test gets a store of its own: a fresh SQLite file, or a fresh key prefix on the
session's etcd member."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcd import unique_prefix
from pyralog.mesh.store import Entry, Store, open_store

TEST_TIMEOUT = 30.0  # no test body may take longer, whatever the store does


@dataclass
class Backend:
    name: str
    url: str
    # Whether a second instance on the same URL sees this one's writes wake its wait():
    # etcd clients do; a SqliteStore wakes only on its own writes (one coordinator per file).
    instances_share_waits: bool

    def open(self) -> Store:
        return open_store(self.url)

    def writer_for(self, store: Store) -> Store:
        """Another client of the same store where the store has them, else ``store``."""
        return self.open() if self.instances_share_waits else store


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite://{tmp_path / 'store.db'}", False)
    etcd_server = request.getfixturevalue("etcd_server")
    return Backend("etcd", etcd_server.url(unique_prefix("contract")), True)


def run(backend: Backend, test: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        store = backend.open()
        try:
            await asyncio.wait_for(test(store), TEST_TIMEOUT)
        finally:
            await store.close()

    asyncio.run(main())


def test_get_put_roundtrip(backend: Backend) -> None:
    async def test(store: Store) -> None:
        assert await store.get("nodes/a") is None
        assert await store.put("nodes/a", b'{"x": 1}') is True
        first = await store.get("nodes/a")
        assert first is not None
        assert (first.key, first.value) == ("nodes/a", b'{"x": 1}')
        assert first.version != 0
        assert await store.put("nodes/a", b"\x00\xffbinary") is True
        second = await store.get("nodes/a")
        assert second == Entry("nodes/a", b"\x00\xffbinary", second.version)
        assert second.version > first.version

    run(backend, test)


def test_keys_are_any_text(backend: Backend) -> None:
    async def test(store: Store) -> None:
        key = "nodes/ünïcode key/with spaces"
        assert await store.put(key, b"v")
        found = await store.get(key)
        assert found is not None and found.key == key
        assert [e.key for e in await store.scan("nodes/ü")] == [key]

    run(backend, test)


def test_scan_is_by_prefix_in_key_order(backend: Backend) -> None:
    async def test(store: Store) -> None:
        for key in ["nodes/b", "nodes/a", "nodesX", "tokens/a", "nodes/c/d", "nodes/c"]:
            assert await store.put(key, key.encode())
        nodes = await store.scan("nodes/")
        assert [e.key for e in nodes] == ["nodes/a", "nodes/b", "nodes/c", "nodes/c/d"]
        assert all(e.value == e.key.encode() and e.version for e in nodes)
        assert [e.key for e in await store.scan("nodes")] == [
            "nodes/a",
            "nodes/b",
            "nodes/c",
            "nodes/c/d",
            "nodesX",
        ]
        everything = await store.scan("")
        assert [e.key for e in everything] == sorted(e.key for e in everything)
        assert len(everything) == 6
        assert await store.scan("none/") == []
        scanned = {e.key: e for e in everything}
        assert scanned["tokens/a"] == await store.get("tokens/a")

    run(backend, test)


def test_put_expect_absent(backend: Backend) -> None:
    async def test(store: Store) -> None:
        assert await store.put("k", b"first", expect=0) is True
        assert await store.put("k", b"second", expect=0) is False
        found = await store.get("k")
        assert found is not None and found.value == b"first"

    run(backend, test)


def test_put_expect_version(backend: Backend) -> None:
    async def test(store: Store) -> None:
        assert await store.put("absent", b"v", expect=12345) is False
        assert await store.get("absent") is None

        await store.put("k", b"one")
        one = await store.get("k")
        assert one is not None
        assert await store.put("k", b"two", expect=one.version) is True
        two = await store.get("k")
        assert two is not None and two.value == b"two" and two.version != one.version
        # Someone else wrote first: our write at the version we read is refused.
        assert await store.put("k", b"stale", expect=one.version) is False
        assert await store.put("k", b"stale", expect=0) is False
        assert await store.get("k") == two
        assert await store.put("k", b"three", expect=two.version) is True
        three = await store.get("k")
        assert three is not None and three.value == b"three"

    run(backend, test)


def test_delete(backend: Backend) -> None:
    async def test(store: Store) -> None:
        assert await store.delete("absent") is False
        assert await store.delete("absent", expect=0) is False
        assert await store.delete("absent", expect=7) is False

        await store.put("k", b"v")
        entry = await store.get("k")
        assert entry is not None
        assert await store.delete("k") is True
        assert await store.get("k") is None
        assert await store.delete("k") is False

        await store.put("k", b"v1")
        v1 = await store.get("k")
        await store.put("k", b"v2")
        v2 = await store.get("k")
        assert v1 is not None and v2 is not None
        assert await store.delete("k", expect=v1.version) is False  # moved on
        assert await store.delete("k", expect=0) is False  # present
        assert await store.get("k") == v2
        assert await store.delete("k", expect=v2.version) is True
        assert await store.get("k") is None
        # Deleted and written again: a new version, not the old one.
        await store.put("k", b"again")
        again = await store.get("k")
        assert again is not None and again.version not in (v1.version, v2.version)

    run(backend, test)


def test_revision_grows_with_writes(backend: Backend) -> None:
    async def test(store: Store) -> None:
        r0 = await store.revision()
        await store.put("k", b"v")
        r1 = await store.revision()
        assert r1 > r0
        entry = await store.get("k")
        assert entry is not None and entry.version == r1  # the revision of its write
        await store.put("k", b"w")
        r2 = await store.revision()
        assert r2 > r1
        # Refused writes and reads are not writes.
        assert await store.put("k", b"x", expect=r1) is False
        assert await store.delete("absent") is False
        await store.get("k")
        await store.scan("")
        assert await store.revision() == r2
        assert await store.delete("k") is True
        assert await store.revision() > r2

    run(backend, test)


def test_wait_returns_at_once_when_past(backend: Backend) -> None:
    async def test(store: Store) -> None:
        before = await store.revision()
        await store.put("k", b"v")
        started = time.monotonic()
        seen = await store.wait(before, 10)
        assert seen > before
        assert time.monotonic() - started < 2

    run(backend, test)


def test_wait_wakes_on_another_clients_write(backend: Backend) -> None:
    async def test(store: Store) -> None:
        writer = backend.writer_for(store)
        try:
            before = await store.revision()
            waiting = asyncio.create_task(store.wait(before, 15))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            written_at = time.monotonic()
            assert await writer.put("nodes/new", b"hello")
            seen = await waiting
            assert time.monotonic() - written_at < 2, "wait did not return promptly"
            entry = await store.get("nodes/new")
            assert entry is not None and seen >= entry.version > before
        finally:
            if writer is not store:
                await writer.close()

    run(backend, test)


def test_wait_times_out_with_the_current_revision(backend: Backend) -> None:
    async def test(store: Store) -> None:
        await store.put("k", b"v")
        current = await store.revision()
        started = time.monotonic()
        assert await store.wait(current, 0.5) == current
        assert 0.45 <= time.monotonic() - started < 3
        started = time.monotonic()
        assert await store.wait(current, 0) == current
        assert time.monotonic() - started < 2

    run(backend, test)
