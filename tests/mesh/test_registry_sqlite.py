"""Registry over a real SQLite store: settings, members and their addresses, tokens, and
two registries racing on one store."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pyralog.mesh.model import NodeRecord, RecordError, TokenRecord
from pyralog.mesh.policy import MeshSettings
from pyralog.mesh.registry import MAX_TTL, Conflict, Identity, Registry
from pyralog.mesh.store import Entry, Store, open_store
from pyralog.mesh.store_sqlite import SqliteStore
from pyralog.mesh.token import JoinToken, enrollment_psk, proof_key
from pyralog.mesh.topology import Coordinator
from pyralog.wireguard.keys import PrivateKey

T = TypeVar("T")
COORD_KEY = PrivateKey(bytes([99]) * 32).public_key.to_base64()
IDENTITY = Identity(
    "prod",
    Coordinator(COORD_KEY, "10.100.0.1", ("198.51.100.7:51820", "[2001:db8::7]:51820")),
    7788,
)
SETTINGS = MeshSettings(
    ipaddress.ip_network("10.100.0.0/16"),
    regions={"us-east": ipaddress.ip_network("10.100.1.0/24")},
)
NOW = 1_700_000_000.0


def key(i: int) -> str:
    return PrivateKey(i.to_bytes(32, "big")).public_key.to_base64()


class Yielding:
    """A store whose every call first lets other tasks run (a seeded number of times), as
    a networked store (etcd) would: SQLite calls never suspend, so without this a
    ``gather`` of registrations would run one after the other and race nothing."""

    def __init__(self, store: Store, seed: int) -> None:
        self._store = store
        self._rng = random.Random(seed)
        self.url = store.url
        self.lost = 0  # compare-and-set writes that lost: proof that something raced

    async def _yield(self) -> None:
        for _ in range(self._rng.randrange(4)):
            await asyncio.sleep(0)

    async def get(self, key: str) -> Entry | None:
        await self._yield()
        return await self._store.get(key)

    async def scan(self, prefix: str) -> list[Entry]:
        await self._yield()
        return await self._store.scan(prefix)

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        await self._yield()
        done = await self._store.put(key, value, expect=expect)
        self.lost += not done
        return done

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        await self._yield()
        return await self._store.delete(key, expect=expect)

    async def revision(self) -> int:
        return await self._store.revision()

    async def wait(self, after: int, timeout: float) -> int:
        return await self._store.wait(after, timeout)

    async def close(self) -> None:
        await self._store.close()


def racing(tmp_path: Path) -> tuple[list[Yielding], list[Registry]]:
    """Two registries, each with its own connection to one SQLite file."""
    stores = [Yielding(SqliteStore(tmp_path / "shared.db"), seed) for seed in (1, 2)]
    return stores, [Registry(s, IDENTITY) for s in stores]


def run(tmp_path: Path, body: Callable[[Registry], Awaitable[T]]) -> T:
    async def main() -> T:
        store = SqliteStore(tmp_path / "coordinator.db")
        registry = Registry(store, IDENTITY)
        await registry.publish_settings(SETTINGS)
        try:
            return await body(registry)
        finally:
            await store.close()

    return asyncio.run(main())


# -- settings -------------------------------------------------------------------------------


def test_publish_settings_is_idempotent(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        assert await registry.publish_settings(SETTINGS) is False  # run() published them
        revision = await registry.store.revision()
        assert await registry.publish_settings(SETTINGS) is False
        assert await registry.store.revision() == revision  # nothing written
        assert await registry.settings() == SETTINGS
        changed = MeshSettings(SETTINGS.network, "hub-and-spoke", ("hub",), SETTINGS.regions)
        assert await registry.publish_settings(changed) is True
        assert await registry.settings() == changed
        assert await registry.publish_settings(SETTINGS) is True

    run(tmp_path, body)


def test_no_settings_yet_is_a_conflict(tmp_path: Path) -> None:
    async def main() -> None:
        registry = Registry(SqliteStore(tmp_path / "x.db"), IDENTITY)
        with pytest.raises(Conflict, match="no settings"):
            await registry.settings()
        with pytest.raises(Conflict, match="no settings"):
            await registry.register("n1", key(1), role="node", now=NOW)
        await registry.store.close()

    asyncio.run(main())


def test_settings_survive_reopening_the_store(tmp_path: Path) -> None:
    run(tmp_path, lambda r: asyncio.sleep(0))

    async def main() -> MeshSettings:
        store = open_store("coordinator.db", tmp_path)
        try:
            return await Registry(store, IDENTITY).settings()
        finally:
            await store.close()

    assert asyncio.run(main()) == SETTINGS


# -- members --------------------------------------------------------------------------------


def test_register_assigns_derived_addresses(tmp_path: Path) -> None:
    async def body(registry: Registry) -> list[NodeRecord]:
        a = await registry.register("7", key(1), role="node", now=NOW, endpoints=["192.0.2.1:1"])
        b = await registry.register("web-1", key(2), role="gateway", now=NOW + 1)
        c = await registry.register("east-1", key(3), role="node", region="us-east", now=NOW)
        return [a, b, c, *await registry.nodes()]

    a, b, c, *stored = run(tmp_path, body)
    assert a.address == "10.100.0.7"  # numeric ids are host numbers
    assert (a.role, a.state, a.endpoints, a.created_at) == ("node", "active", ["192.0.2.1:1"], NOW)
    assert ipaddress.ip_address(b.address) in SETTINGS.network and b.role == "gateway"
    assert ipaddress.ip_address(c.address) in SETTINGS.regions["us-east"]
    assert c.region == "us-east"
    assert len({a.address, b.address, c.address}) == 3
    assert sorted(n.node_id for n in stored) == ["7", "east-1", "web-1"]
    assert {n.node_id: n for n in stored}["7"] == a


def test_the_coordinators_address_is_never_given(tmp_path: Path) -> None:
    async def body(registry: Registry) -> NodeRecord:
        return await registry.register("1", key(1), role="node", now=NOW)

    record = run(tmp_path, body)
    assert record.address != "10.100.0.1"


def test_bad_ids_keys_and_roles(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        with pytest.raises(RecordError, match="node id"):
            await registry.register("-bad", key(1), role="node", now=NOW)
        with pytest.raises(RecordError, match="node id"):
            await registry.register("a" * 64, key(1), role="node", now=NOW)
        with pytest.raises(RecordError, match="not a base64 WireGuard public key"):
            await registry.register("n1", "not a key", role="node", now=NOW)
        with pytest.raises(RecordError, match="role"):
            await registry.register("n1", key(1), role="root", now=NOW)
        with pytest.raises(Conflict, match="coordinator's own"):
            await registry.register("n1", COORD_KEY, role="node", now=NOW)
        assert await registry.nodes() == []
        assert await registry.store.scan("addresses/") == []

    run(tmp_path, body)


def test_same_id_and_key_updates_endpoints(tmp_path: Path) -> None:
    async def body(registry: Registry) -> tuple[NodeRecord, NodeRecord, NodeRecord]:
        first = await registry.register(
            "n1", key(1), role="node", now=NOW, endpoints=["192.0.2.1:1"], state="provisioned"
        )
        second = await registry.register(
            "n1", key(1), role="node", now=NOW + 5, endpoints=["192.0.2.2:2"]
        )
        third = await registry.register("n1", key(1), role="node", now=NOW + 9)
        return first, second, third

    first, second, third = run(tmp_path, body)
    assert first.state == "provisioned"
    assert second.address == first.address and second.endpoints == ["192.0.2.2:2"]
    assert second.state == "active" and second.created_at == NOW and second.updated_at == NOW + 5
    assert third.endpoints == ["192.0.2.2:2"]  # no endpoints given: the old ones stay


def test_same_key_under_another_id_is_a_conflict(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        await registry.register("n1", key(1), role="node", now=NOW)
        with pytest.raises(Conflict, match="already belongs to node 'n1'"):
            await registry.register("n2", key(1), role="node", now=NOW)
        assert [n.node_id for n in await registry.nodes()] == ["n1"]
        assert len(await registry.store.scan("addresses/")) == 1

    run(tmp_path, body)


def test_re_enrolling_with_a_new_key_keeps_the_address(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        old = await registry.register("n1", key(1), role="node", now=NOW, token_id="t1")
        new = await registry.register("n1", key(2), role="node", now=NOW + 1)
        assert new.public_key == key(2) and new.address == old.address
        assert new.token_id == "t1"
        assert await registry.by_key(key(1)) is None
        by_key = await registry.by_key(key(2))
        assert by_key is not None and by_key.node_id == "n1"
        # The old key is free for another id now.
        other = await registry.register("n2", key(1), role="node", now=NOW + 2)
        assert other.address != old.address
        # Without replace_key, a different key for an existing id is refused.
        with pytest.raises(Conflict, match="exists with another public key"):
            await registry.register("n1", key(3), role="node", now=NOW, replace_key=False)

    run(tmp_path, body)


def test_role_or_region_change_is_a_conflict(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        await registry.register("n1", key(1), role="node", now=NOW)
        with pytest.raises(Conflict, match="exists as role 'node'"):
            await registry.register("n1", key(1), role="gateway", now=NOW)
        with pytest.raises(Conflict, match="remove it first"):
            await registry.register("n1", key(1), role="node", region="us-east", now=NOW)
        node = await registry.node("n1")
        assert node is not None and node.role == "node" and node.region is None

    run(tmp_path, body)


def test_addresses_are_not_reused_while_taken_and_freed_by_remove(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        first = await registry.register("7", key(1), role="node", now=NOW)
        # Another id whose preferred address is taken moves to the next free one.
        await registry.remove("7")
        assert await registry.node("7") is None
        assert await registry.store.scan("addresses/") == []
        again = await registry.register("7", key(2), role="node", now=NOW)
        assert again.address == first.address  # freed by the removal
        assert await registry.remove("7") is not None
        assert await registry.remove("7") is None

    run(tmp_path, body)


def test_a_small_region_fills_up_without_reusing_addresses(tmp_path: Path) -> None:
    settings = MeshSettings(
        ipaddress.ip_network("10.100.0.0/16"),
        regions={"tiny": ipaddress.ip_network("10.100.9.0/29")},  # 6 hosts
    )

    async def body(registry: Registry) -> None:
        await registry.publish_settings(settings)
        records = [
            await registry.register(f"t{i}", key(i + 1), role="node", region="tiny", now=NOW)
            for i in range(6)
        ]
        addresses = {r.address for r in records}
        assert len(addresses) == 6
        assert all(ipaddress.ip_address(a) in settings.regions["tiny"] for a in addresses)
        with pytest.raises(Conflict, match="no free address"):
            await registry.register("t6", key(50), role="node", region="tiny", now=NOW)
        removed = await registry.remove("t3")
        assert removed is not None
        newcomer = await registry.register("t9", key(51), role="node", region="tiny", now=NOW)
        assert newcomer.address == removed.address

    run(tmp_path, body)


def test_update_endpoints(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        await registry.register("n1", key(1), role="node", now=NOW, state="provisioned")
        assert await registry.update_endpoints("n1", ["192.0.2.9:9"], NOW + 1) is True
        assert await registry.update_endpoints("n1", ["192.0.2.9:9"], NOW + 2) is False
        assert await registry.update_endpoints("ghost", ["192.0.2.9:9"], NOW) is False
        node = await registry.node("n1")
        assert node is not None
        assert (node.endpoints, node.state, node.updated_at) == (["192.0.2.9:9"], "active", NOW + 1)

    run(tmp_path, body)


# -- tokens -----------------------------------------------------------------------------


def test_create_token_stores_only_derived_values(tmp_path: Path) -> None:
    async def body(registry: Registry) -> tuple[str, TokenRecord, list[TokenRecord]]:
        text, record = await registry.create_token(role="gateway", now=NOW, region="us-east")
        return text, record, await registry.tokens()

    text, record, stored = run(tmp_path, body)
    join = JoinToken.decode(text)
    assert join.id == record.id
    assert join.cluster_id == "prod" and join.api_port == 7788
    assert join.coordinator_key.to_base64() == COORD_KEY
    assert str(join.coordinator_address) == "10.100.0.1"
    assert join.endpoints == (("198.51.100.7", 51820), ("2001:db8::7", 51820))
    assert record.proof_key == proof_key(join.secret).hex()
    assert base64.b64decode(record.psk) == enrollment_psk(join.secret).raw
    assert (record.role, record.region, record.expires_at) == ("gateway", "us-east", NOW + 3600)
    assert stored == [record]
    raw = (tmp_path / "coordinator.db").read_bytes()
    assert join.secret not in raw and join.secret.hex().encode() not in raw
    public = record.public()
    assert "proof_key" not in public and "psk" not in public


def test_create_token_refuses_bad_requests(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        with pytest.raises(RecordError, match="role"):
            await registry.create_token(role="root", now=NOW)
        for ttl in (0, -1, MAX_TTL + 1):
            with pytest.raises(RecordError, match="ttl"):
                await registry.create_token(role="node", now=NOW, ttl=ttl)
        with pytest.raises(RecordError, match="region 'mars'"):
            await registry.create_token(role="node", now=NOW, region="mars")
        assert await registry.tokens() == []
        _, forever = await registry.create_token(role="node", now=NOW, ttl=None)
        assert forever.expires_at is None

    run(tmp_path, body)


def test_one_time_token_dies_after_one_use(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        _, t = await registry.create_token(role="node", now=NOW)
        used = await registry.use_token(t.id, "n1", NOW + 1)
        assert used.uses == 1 and used.used_by == ["n1"]
        assert used.refusal(NOW + 1) == "used"
        with pytest.raises(Conflict, match="is used"):
            await registry.use_token(t.id, "n2", NOW + 2)
        with pytest.raises(Conflict, match="no longer exists"):
            await registry.use_token("0000000000000000", "n2", NOW + 2)

    run(tmp_path, body)


def test_reusable_token_counts_uses(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        _, t = await registry.create_token(role="node", now=NOW, reusable=True)
        for i in range(105):
            record = await registry.use_token(t.id, f"n{i}", NOW + i)
        assert record.uses == 105
        assert len(record.used_by) == 100 and record.used_by[-1] == "n104"  # bounded
        assert record.refusal(NOW + 200) is None

    run(tmp_path, body)


def test_expired_and_revoked_tokens_are_refused(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        _, short = await registry.create_token(role="node", now=NOW, ttl=60, reusable=True)
        await registry.use_token(short.id, "n1", NOW + 59)
        with pytest.raises(Conflict, match="expired"):
            await registry.use_token(short.id, "n2", NOW + 60)
        _, t = await registry.create_token(role="node", now=NOW, reusable=True)
        revoked = await registry.revoke_token(t.id)
        assert revoked is not None and revoked.revoked
        with pytest.raises(Conflict, match="revoked"):
            await registry.use_token(t.id, "n1", NOW)
        assert await registry.revoke_token("nope") is None
        states = {x.id: x.refusal(NOW) for x in await registry.tokens()}
        assert states == {short.id: None, t.id: "revoked"}

    run(tmp_path, body)


# -- two coordinators on one store --------------------------------------------------------


def test_two_registries_racing_never_give_one_address_twice(tmp_path: Path) -> None:
    async def main() -> None:
        stores, registries = racing(tmp_path)
        settings = MeshSettings(
            ipaddress.ip_network("10.100.0.0/16"),
            regions={"small": ipaddress.ip_network("10.100.7.0/26")},  # 62 hosts
        )
        await registries[0].publish_settings(settings)
        assert await registries[1].publish_settings(settings) is False
        # Ids that all prefer a few addresses (numeric: host numbers), from both sides.
        jobs = []
        for i in range(40):
            for side, registry in enumerate(registries):
                node_id = f"{i % 5}" if side == 0 and i < 5 else f"n{side}-{i}"
                jobs.append(
                    registry.register(
                        node_id, key(1000 + 2 * i + side), role="node", region="small", now=NOW
                    )
                )
        results = await asyncio.gather(*jobs, return_exceptions=True)
        records = [r for r in results if isinstance(r, NodeRecord)]
        errors = [r for r in results if not isinstance(r, NodeRecord)]
        # 80 registrations for 62 hosts: exactly the surplus is refused, as a full region.
        assert len(errors) == 80 - 62
        assert all(isinstance(e, Conflict) and "no free address" in str(e) for e in errors)
        stored = await registries[1].nodes()
        addresses = [n.address for n in stored]
        assert len(addresses) == len(set(addresses)), "one address given twice"
        assert len(stored) == len(records) == len({r.node_id for r in records}) == 62
        assert stores[0].lost + stores[1].lost > 0, "nothing raced"
        claimed = await stores[0].scan("addresses/")
        assert sorted(e.key.removeprefix("addresses/") for e in claimed) == sorted(addresses)
        for s in stores:
            await s.close()

    asyncio.run(main())


def test_two_registries_racing_one_id_keep_one_record(tmp_path: Path) -> None:
    async def main() -> None:
        stores, registries = racing(tmp_path)
        await registries[0].publish_settings(SETTINGS)
        results = await asyncio.gather(
            *(
                registries[i % 2].register("same", key(i + 1), role="node", now=NOW)
                for i in range(10)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(r, NodeRecord) for r in results), results
        (only,) = await registries[0].nodes()
        assert {r.address for r in results if isinstance(r, NodeRecord)} == {only.address}
        assert [e.key for e in await stores[0].scan("addresses/")] == [f"addresses/{only.address}"]
        assert stores[0].lost + stores[1].lost > 0, "nothing raced"
        for s in stores:
            await s.close()

    asyncio.run(main())


def test_racing_one_time_token_uses_admit_exactly_one(tmp_path: Path) -> None:
    async def main() -> None:
        stores, registries = racing(tmp_path)
        await registries[0].publish_settings(SETTINGS)
        _, t = await registries[0].create_token(role="node", now=NOW)
        results = await asyncio.gather(
            *(registries[i % 2].use_token(t.id, f"n{i}", NOW) for i in range(10)),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, TokenRecord)]
        assert len(wins) == 1
        assert all(isinstance(r, Conflict) for r in results if r not in wins)
        for s in stores:
            await s.close()

    asyncio.run(main())


def test_store_basics(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "kv.db")
        assert await store.get("a") is None
        assert await store.put("a", b"1", expect=0) is True
        entry = await store.get("a")
        assert entry is not None and entry.value == b"1" and entry.version > 0
        assert await store.put("a", b"2", expect=0) is False
        assert await store.put("a", b"2", expect=entry.version) is True
        assert await store.put("a", b"3", expect=entry.version) is False
        assert await store.delete("a", expect=entry.version) is False
        assert await store.delete("missing") is False
        await store.put("ab", b"x")
        await store.put("b", b"y")
        assert [e.key for e in await store.scan("a")] == ["a", "ab"]
        assert [e.key for e in await store.scan("%")] == []  # no LIKE wildcards
        revision = await store.revision()
        waiter = asyncio.create_task(store.wait(revision, 5.0))
        await asyncio.sleep(0)
        await store.put("c", b"z")
        assert await asyncio.wait_for(waiter, 1.0) == revision + 1
        assert await store.wait(revision + 1, 0.01) == revision + 1  # timeout: same revision
        await store.close()

    asyncio.run(main())


def test_racing_one_key_under_two_ids_keeps_one(tmp_path: Path) -> None:
    async def main() -> None:
        stores, registries = racing(tmp_path)
        await registries[0].publish_settings(SETTINGS)
        results = await asyncio.gather(
            registries[0].register("first", key(1), role="node", now=NOW),
            registries[1].register("second", key(1), role="node", now=NOW),
            return_exceptions=True,
        )
        holders = [n.node_id for n in await registries[0].nodes() if n.public_key == key(1)]
        for s in stores:
            await s.close()
        assert len(holders) == 1, (holders, results)

    asyncio.run(main())


def test_a_cancelled_wait_stays_cancelled_when_a_write_lands_at_once(tmp_path: Path) -> None:
    # The coordinator's store watch is cancelled on shutdown; a write just before must not
    # eat the cancellation (asyncio.wait_for on Python 3.11 does), or close() hangs.
    async def main() -> None:
        store = SqliteStore(tmp_path / "kv.db")
        waiter = asyncio.create_task(store.wait(0, 5.0))
        await asyncio.sleep(0.01)
        await store.put("a", b"1")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 10))
