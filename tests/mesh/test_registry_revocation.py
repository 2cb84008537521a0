"""Revocation and key replacement in the registry, on both stores (SQLite and etcd): the
revocation is a store record, so a registry reopened on the same store still refuses
the key."""

from __future__ import annotations

import asyncio

import pytest
from test_registry_sqlite import IDENTITY, NOW, SETTINGS, key
from test_store_contract import Backend, backend  # noqa: F401 (the fixture)

from pyralog.mesh.registry import Conflict, Registry, UnknownNode


def test_revocation_survives_reopening_and_refuses_the_key(backend: Backend) -> None:  # noqa: F811
    async def main() -> None:
        first = Registry(backend.open(), IDENTITY)
        await first.publish_settings(SETTINGS)
        record = await first.register("n1", key(1), role="node", now=NOW)
        revoked = await first.revoke("n1", by="uid 0 (root)", now=NOW + 1)
        assert revoked is not None and revoked.public_key == record.public_key
        assert await first.revoke("n1", by="x", now=NOW) is None
        await first.store.close()

        again = Registry(backend.open(), IDENTITY)
        try:
            assert await again.node("n1") is None
            [listed] = await again.revoked()
            assert (listed.node_id, listed.address, listed.revoked_by, listed.revoked_at) == (
                "n1", record.address, "uid 0 (root)", NOW + 1
            )  # fmt: skip
            for node_id in ("n1", "n2"):
                with pytest.raises(Conflict, match="was revoked"):
                    await again.register(node_id, key(1), role="node", now=NOW)
            await again.register("n2", key(1), role="node", now=NOW, allow_revoked_key=True)
            assert await again.revoked() == []
        finally:
            await again.store.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_replace_key_keeps_the_rest(backend: Backend) -> None:  # noqa: F811
    async def main() -> None:
        registry = Registry(backend.open(), IDENTITY)
        try:
            await registry.publish_settings(SETTINGS)
            old = await registry.register("n1", key(1), role="gateway", region="us-east",
                                          endpoints=["192.0.2.1:1"], now=NOW,
                                          state="provisioned")  # fmt: skip
            new = await registry.replace_key("n1", key(2), now=NOW + 5)
            assert (new.address, new.role, new.region, new.endpoints, new.state) == (
                old.address, "gateway", "us-east", ["192.0.2.1:1"], "provisioned"
            )  # fmt: skip
            assert new.public_key == key(2) and new.updated_at == NOW + 5
            await registry.register("n3", key(1), role="node", now=NOW)  # the old key is free
            with pytest.raises(UnknownNode):
                await registry.replace_key("nope", key(4), now=NOW)
        finally:
            await registry.store.close()

    asyncio.run(asyncio.wait_for(main(), 30))
