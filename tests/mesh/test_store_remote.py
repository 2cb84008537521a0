"""The log's store over the coordinator's API: RemoteStore <-> serve, and bad requests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pyralog.mesh.http import HttpError
from pyralog.mesh.store import StoreError, open_log_store
from pyralog.mesh.store_remote import RemoteStore, serve
from pyralog.mesh.store_sqlite import SqliteStore


def _pair(tmp_path: Path) -> tuple[RemoteStore, SqliteStore]:
    backing = SqliteStore(tmp_path / "log.db")

    async def call(method: str, path: str, body: Any, timeout: float = 5.0) -> Any:
        assert (method, path) == ("POST", "/v1/log/store")
        try:
            return await serve(backing, body)
        except ValueError as e:
            raise HttpError(400, str(e)) from None

    return RemoteStore(call, "10.0.0.1"), backing


def test_every_operation_round_trips(tmp_path: Path) -> None:
    remote, backing = _pair(tmp_path)

    async def main() -> None:
        assert await remote.get("a") is None
        assert await remote.put("a", b"\x00\xffone", expect=0)
        assert not await remote.put("a", b"two", expect=0)  # exists: compare-and-set fails
        entry = await remote.get("a")
        assert entry is not None and entry.value == b"\x00\xffone"
        assert await remote.put("a", b"two", expect=entry.version)
        assert await remote.put("b/1", b"x")
        assert [e.key for e in await remote.scan("")] == ["a", "b/1"]
        assert [e.key for e in await remote.scan("b/")] == ["b/1"]
        before = await remote.revision()
        waiter = asyncio.create_task(remote.wait(before, 5))
        await asyncio.sleep(0.05)
        await backing.put("c", b"y")
        assert await waiter > before
        assert await remote.wait(before, 0) > before  # already past: at once
        assert not await remote.delete("a", expect=1)
        assert await remote.delete("a")
        assert await remote.get("a") is None
        assert remote.url == "coordinator://10.0.0.1"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"op": "drop"}, "op 'drop': expected get, scan, put"),
        ({"op": "get"}, "get: key: expected a string"),
        ({"op": "get", "key": "k" * 2000}, "at most 1024 characters"),
        ({"op": "put", "key": "k", "value": "%%%"}, "put: value: expected base64"),
        ({"op": "put", "key": "k"}, "put: value: expected base64"),
        ({"op": "put", "key": "k", "value": "", "expect": "1"}, "put: expect: expected an integer"),
        ({"op": "delete", "key": "k", "expect": True}, "delete: expect: expected an integer"),
        ({"op": "wait", "after": 0, "timeout": "soon"}, "wait: timeout: expected seconds"),
    ],
)
def test_bad_requests_are_refused_naming_what_is_wrong(
    tmp_path: Path, body: Any, message: str
) -> None:
    backing = SqliteStore(tmp_path / "log.db")
    with pytest.raises(ValueError, match=message):
        asyncio.run(serve(backing, body))


def test_a_refusal_or_a_lost_coordinator_is_a_store_error(tmp_path: Path) -> None:
    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise HttpError(0, "POST /v1/log/store: no answer within 5 s")

    async def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise HttpError(403, "role 'client' may not use the log's store")

    for call, text in ((unreachable, "no answer"), (forbidden, "may not use")):
        with pytest.raises(StoreError, match=text):
            asyncio.run(RemoteStore(call, "10.0.0.1").get("k"))


def test_the_log_store_is_kept_apart_from_the_coordinators(tmp_path: Path) -> None:
    store = open_log_store("coordinator.db", tmp_path)
    assert isinstance(store, SqliteStore)
    assert store.url == f"sqlite://{tmp_path / 'coordinator-log.db'}"
    asyncio.run(store.close())
    etcd = open_log_store("etcd://127.0.0.1:2379/site-a/")
    assert etcd.url.endswith("/site-a-log/")
