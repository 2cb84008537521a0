"""What only the etcd store does: URLs, key prefixes shared on one etcd, and failover
between the members of a cluster when the one in use dies. (The Store contract itself is
in test_store_contract.py, run against etcd and SQLite alike.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aetcd
import pytest

from etcd import EtcdCluster, EtcdMember, unique_prefix
from ports import free_port
from processes import wait_until
from pyralog.mesh.store import StoreError, open_store
from pyralog.mesh.store_etcd import DEFAULT_PREFIX, Endpoint, EtcdStore, parse_url

TEST_TIMEOUT = 40.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(test(), TEST_TIMEOUT)

    return asyncio.run(main())


# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix"),
    [
        ("etcd://10.0.0.5:2379", [Endpoint("10.0.0.5", 2379)], DEFAULT_PREFIX),
        ("etcd://etcd.example", [Endpoint("etcd.example", 2379)], DEFAULT_PREFIX),
        (
            "etcd://10.0.0.5:2379,10.0.0.6:12379/",
            [Endpoint("10.0.0.5", 2379), Endpoint("10.0.0.6", 12379)],
            DEFAULT_PREFIX,
        ),
        ("etcd://a:1, b:2/site-a", [Endpoint("a", 1), Endpoint("b", 2)], "/site-a/"),
        ("etcd://[::1]:2379/x/y/", [Endpoint("::1", 2379)], "/x/y/"),
        ("etcd://[fd00::5]/x", [Endpoint("fd00::5", 2379)], "/x/"),
    ],
)
def test_url_parsing(url: str, endpoints: list[Endpoint], prefix: str) -> None:
    assert parse_url(url) == (endpoints, prefix)
    store = open_store(url)
    assert isinstance(store, EtcdStore)
    assert store.endpoints == endpoints and store.prefix == prefix
    assert parse_url(store.url) == (endpoints, prefix)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "no endpoint"),
        ("etcd:///prefix", "no endpoint"),
        ("etcd://host:notaport", "port 'notaport' is not a number"),
        ("etcd://host:", "port '' is not a number"),
        ("etcd://host:0", "port '0' is not a number from 1 to 65535"),
        ("etcd://host:65536", "port '65536' is not a number from 1 to 65535"),
        ("etcd://a:1,,b:2", "empty endpoint"),
        ("etcd://:2379", "has no host"),
        ("etcd://::1:2379", "IPv6 address goes in brackets"),
        ("etcd://[::1:2379", "expected [IPV6]:PORT"),
        ("etcd://user:pw@host:2379", "not supported"),
        ("etcd://host:2379?x=1", "not supported"),
    ],
)
def test_bad_url_is_a_clear_store_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match="etcd://") as error:
        open_store(url)
    assert message in str(error.value)
    assert repr(url) in str(error.value)


# -- prefixes ----------------------------------------------------------------------------------


def test_prefixes_on_one_etcd_do_not_see_each_other(etcd_server: EtcdCluster) -> None:
    async def test() -> None:
        a = EtcdStore.from_url(etcd_server.url(unique_prefix("a")))
        b = EtcdStore.from_url(etcd_server.url(unique_prefix("b")))
        try:
            assert await a.put("nodes/n1", b"in a")
            assert await b.get("nodes/n1") is None
            assert await b.put("nodes/n1", b"in b", expect=0)  # absent in b's view
            assert await b.put("nodes/n2", b"only b")
            a_n1, b_n1 = await a.get("nodes/n1"), await b.get("nodes/n1")
            assert a_n1 is not None and a_n1.value == b"in a"
            assert b_n1 is not None and b_n1.value == b"in b"
            assert [e.key for e in await a.scan("")] == ["nodes/n1"]
            assert [e.key for e in await b.scan("")] == ["nodes/n1", "nodes/n2"]
            assert await a.delete("nodes/n2") is False
            assert await a.delete("nodes/n1") is True
            assert await b.get("nodes/n1") == b_n1
            # The revision is etcd's own (shared), but a wait is for this prefix's keys:
            # a write under b does not wake a.
            current = await a.revision()
            waiting = asyncio.create_task(a.wait(current, 1.0))
            await asyncio.sleep(0.2)
            assert await b.put("nodes/n3", b"b again")
            started = time.monotonic()
            assert await waiting > current  # the etcd revision moved on, all the same
            assert time.monotonic() - started > 0.5, "a write under b woke a's wait"
        finally:
            await a.close()
            await b.close()

    run(test)


def test_default_prefix_is_pyralog(etcd_server: EtcdCluster) -> None:
    key = unique_prefix("default").strip("/")

    async def test() -> None:
        store = EtcdStore.from_url(etcd_server.url())
        member = etcd_server.members[0]
        raw = aetcd.Client("127.0.0.1", member.client_port, timeout=3)
        try:
            assert store.prefix == "/pyralog/"
            assert await store.put(key, b"v")
            found = await raw.get(f"/pyralog/{key}".encode())
            assert found is not None and found.value == b"v"
            entry = await store.get(key)
            assert entry is not None and entry.version == found.mod_revision
            assert await store.delete(key)
        finally:
            await raw.close()
            await store.close()

    run(test)


def test_closed_store_refuses_calls(etcd_server: EtcdCluster) -> None:
    async def test() -> None:
        store = EtcdStore.from_url(etcd_server.url(unique_prefix()))
        await store.put("k", b"v")
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.get("k")

    run(test)


# -- failover ----------------------------------------------------------------------------------


def _in_order(cluster: EtcdCluster, first: str) -> list[EtcdMember]:
    """The members with the leader (or a follower) first, as a store URL would list them."""
    assert wait_until(cluster.leader, 10), "the cluster has no leader"
    leader = cluster.leader()
    assert leader is not None
    others = [m for m in cluster.members if m is not leader]
    return [leader, *others] if first == "leader" else [*others, leader]


@pytest.mark.parametrize("first", ["leader", "follower"])
def test_store_keeps_working_when_its_member_is_killed(
    etcd_cluster: EtcdCluster, first: str
) -> None:
    members = _in_order(etcd_cluster, first)
    url = "etcd://" + ",".join(m.endpoint for m in members) + unique_prefix()

    async def test() -> None:
        store = EtcdStore.from_url(url)
        try:
            assert await store.put("nodes/a", b"1")
            entry = await store.get("nodes/a")
            assert entry is not None
            assert str(store.endpoint) == members[0].endpoint  # the first that answers
            members[0].kill()

            started = time.monotonic()
            assert await store.put("nodes/b", b"2", expect=0)
            assert time.monotonic() - started < 10
            assert str(store.endpoint) != members[0].endpoint
            assert await store.get("nodes/a") == entry
            assert [e.key for e in await store.scan("nodes/")] == ["nodes/a", "nodes/b"]
            assert await store.put("nodes/a", b"1'", expect=entry.version)
            assert await store.delete("nodes/b")
            assert await store.revision() > entry.version
        finally:
            await store.close()

    run(test)


def test_wait_in_progress_fails_over(etcd_cluster: EtcdCluster) -> None:
    m0, m1, m2 = etcd_cluster.members
    prefix = unique_prefix()

    async def test() -> None:
        store = EtcdStore.from_url(etcd_cluster.url(prefix))
        writer = EtcdStore.from_url(f"etcd://{m2.endpoint},{m1.endpoint}{prefix}")
        try:
            before = await store.revision()
            assert str(store.endpoint) == m0.endpoint
            waiting = asyncio.create_task(store.wait(before, 20))
            await asyncio.sleep(0.3)
            m0.kill()
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the wait ended when its member died"
            assert await writer.put("nodes/x", b"after the kill")
            written_at = time.monotonic()
            seen = await waiting
            assert time.monotonic() - written_at < 8, "the wait did not see the write"
            entry = await writer.get("nodes/x")
            assert entry is not None and seen >= entry.version > before
            assert str(store.endpoint) != m0.endpoint
        finally:
            await store.close()
            await writer.close()

    run(test)


def test_all_members_dead_is_a_store_error_naming_them(etcd_cluster: EtcdCluster) -> None:
    url = etcd_cluster.url(unique_prefix())

    async def test() -> None:
        store = EtcdStore.from_url(url)
        try:
            assert await store.put("k", b"v")
            for member in etcd_cluster.members:
                member.kill()
            for call in (store.get("k"), store.put("k", b"w"), store.wait(0, 30)):
                started = time.monotonic()
                with pytest.raises(StoreError) as error:
                    await call
                assert time.monotonic() - started < 10
                message = str(error.value)
                assert "no etcd endpoint answered" in message
                for endpoint in etcd_cluster.endpoints:
                    assert endpoint in message
        finally:
            await store.close()

    run(test)


def test_nothing_listening_is_a_prompt_store_error() -> None:
    endpoints = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    async def test() -> None:
        store = open_store("etcd://" + ",".join(endpoints))
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="no etcd endpoint answered") as error:
                await store.revision()
            assert time.monotonic() - started < 5
            assert all(e in str(error.value) for e in endpoints)
            assert "refused" in str(error.value).lower()
        finally:
            await store.close()

    run(test)


def test_a_silent_endpoint_costs_one_deadline(etcd_server: EtcdCluster) -> None:
    """An endpoint that accepts connections but never answers (a hung or partitioned
    member) is given up after the call deadline, for the next one."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hung = f"127.0.0.1:{silent.getsockname()[1]}"
        url = f"etcd://{hung},{etcd_server.endpoints[0]}{unique_prefix()}"

        async def test() -> None:
            for call in ("put", "wait"):
                store = EtcdStore.from_url(url, timeout=1.0)
                try:
                    started = time.monotonic()
                    if call == "put":
                        assert await store.put("k", b"v")
                    else:
                        assert await store.wait(0, 0.2) > 0
                    assert 0.9 < time.monotonic() - started < 4
                    assert str(store.endpoint) == etcd_server.endpoints[0]
                finally:
                    await store.close()
            alone = EtcdStore.from_url(f"etcd://{hung}/", timeout=1.0)
            try:
                with pytest.raises(StoreError, match=r"no answer within 1 s"):
                    await alone.get("k")
            finally:
                await alone.close()

        run(test)
