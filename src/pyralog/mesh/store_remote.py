"""The replicated log's store as members reach it: the coordinator's API over the mesh.

Brokers on mesh nodes keep their cluster state (`pyralog.log.cluster_state`) in the
coordinator's log store (`store.open_log_store`: SQLite beside the coordinator's own,
or a sibling prefix of its etcd). They reach it with ``POST /v1/log/store``, one JSON
operation per request, over the WireGuard tunnel they already have to the coordinator;
only members with the node role may call it. Several coordinators sharing etcd serve
the same keys, so the node agent's failover between coordinators covers this too.

This class is the `Store` protocol over that call; transport failures and the
coordinator's refusals become StoreError naming the operation.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from pyralog.mesh.http import HttpError
from pyralog.mesh.store import Entry, StoreError

PATH = "/v1/log/store"
MAX_WAIT = 10.0
CALL_TIMEOUT = 5.0

Caller = Callable[..., Awaitable[Any]]  # agent.call(method, path, body, timeout=)


def encode_entry(entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "key": entry.key,
        "value": base64.b64encode(entry.value).decode(),
        "version": entry.version,
    }


def decode_entry(obj: Any) -> Entry | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise StoreError("coordinator store: expected an entry object")
    try:
        return Entry(str(obj["key"]), base64.b64decode(obj["value"]), int(obj["version"]))
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"coordinator store: malformed entry: {e}") from None


class RemoteStore:
    def __init__(self, call: Caller, where: str) -> None:
        self._call = call
        self.url = f"coordinator://{where}"

    async def _op(self, body: dict[str, Any], timeout: float = CALL_TIMEOUT) -> Any:
        try:
            answer = await self._call("POST", PATH, body, timeout=timeout)
        except HttpError as e:
            raise StoreError(f"{self.url}: {body['op']}: {e}") from None
        if not isinstance(answer, dict):
            raise StoreError(f"{self.url}: {body['op']}: expected a JSON object")
        return answer

    async def get(self, key: str) -> Entry | None:
        return decode_entry((await self._op({"op": "get", "key": key})).get("entry"))

    async def scan(self, prefix: str) -> list[Entry]:
        answer = await self._op({"op": "scan", "prefix": prefix})
        entries = answer.get("entries")
        if not isinstance(entries, list):
            raise StoreError(f"{self.url}: scan: expected a list of entries")
        return [e for e in map(decode_entry, entries) if e is not None]

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        body = {"op": "put", "key": key, "value": base64.b64encode(value).decode()}
        return bool((await self._op({**body, "expect": expect})).get("ok"))

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        return bool((await self._op({"op": "delete", "key": key, "expect": expect})).get("ok"))

    async def revision(self) -> int:
        return int((await self._op({"op": "revision"}))["revision"])

    async def wait(self, after: int, timeout: float) -> int:
        timeout = min(max(timeout, 0.0), MAX_WAIT)
        answer = await self._op(
            {"op": "wait", "after": after, "timeout": timeout}, timeout=timeout + CALL_TIMEOUT
        )
        return int(answer["revision"])

    async def close(self) -> None:
        pass


async def serve(store: Any, body: Any) -> dict[str, Any]:
    """The coordinator's side: one operation on its log store. ValueError (the API's
    400) names what is wrong with a malformed request."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    op = body.get("op")

    def text(name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or len(value) > 1024:
            raise ValueError(f"{op}: {name}: expected a string of at most 1024 characters")
        return value

    def number(name: str, default: int | None = None) -> int | None:
        value = body.get(name, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise ValueError(f"{op}: {name}: expected an integer")
        return value

    if op == "get":
        return {"entry": encode_entry(await store.get(text("key")))}
    if op == "scan":
        return {"entries": [encode_entry(e) for e in await store.scan(text("prefix"))]}
    if op == "put":
        raw = body.get("value")
        if not isinstance(raw, str) or len(raw) > 2 << 20:
            raise ValueError("put: value: expected base64 of at most 1 MiB")
        try:
            value = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ValueError("put: value: expected base64") from None
        return {"ok": await store.put(text("key"), value, expect=number("expect"))}
    if op == "delete":
        return {"ok": await store.delete(text("key"), expect=number("expect"))}
    if op == "revision":
        return {"revision": await store.revision()}
    if op == "wait":
        timeout = body.get("timeout", 0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise ValueError("wait: timeout: expected seconds")
        after = number("after", -1)
        assert after is not None
        return {"revision": await store.wait(after, min(max(float(timeout), 0.0), MAX_WAIT))}
    raise ValueError(f"op {op!r}: expected get, scan, put, delete, revision or wait")
