"""The etcd store: the coordinator's state in an etcd cluster, for several coordinators.

Why etcd: two or more coordinators (for availability) must agree on one state, and a
compare-and-set that one of them wins and the others see refused must hold across
machines. SQLite is one file on one machine; etcd keeps its keys in a Raft-replicated log,
so a write that returns is on a majority of members and every member answers reads with
it (reads here are linearizable, never served stale by a lagging member).

What it does: every key lives under a prefix (``/pyralog/`` unless the URL names another:
``etcd://10.0.0.5:2379,10.0.0.6:2379/site-a/``), so several clusters can share one etcd
without seeing each other's keys. An entry's version is its etcd ``mod_revision`` (the
revision of its last write, never 0 for a stored key); ``put``/``delete`` with ``expect``
are one etcd transaction comparing ``mod_revision`` (or, for ``expect=0``, the key's
creation revision, which is 0 only for an absent key). The store's revision is etcd's
header revision; note that it is etcd-wide, so writes under another prefix move it too.
``wait`` watches this store's prefix from ``after + 1``: it returns as soon as a key under
the prefix changed after ``after`` (at once when that happened before the call), else at
the timeout with the current revision.

Failover: the URL lists endpoints (host:port, default port 2379, IPv6 in brackets). The
store talks to one at a time, starting with the first, and stays with the one that
answers. When a call to it fails at the connection level (refused, reset, no answer
within the deadline, or a member that cannot reach its cluster's leader), the store drops
that connection, moves to the next endpoint and retries the operation there, at most once
per endpoint; when every endpoint failed, it raises ``StoreError`` naming each endpoint and
why. Every call has a deadline (``timeout``, 3 s by default), so nothing waits forever on
a dead or partitioned member. A write whose answer was lost may still have been applied
before the retry: retried with ``expect`` it then reports False, as for any lost race,
and the caller re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils

from pyralog.mesh.store import Entry, StoreError

DEFAULT_PREFIX = "/pyralog/"
DEFAULT_PORT = 2379
TIMEOUT = 3.0  # seconds: the deadline of every etcd call
_CLOSE_TIMEOUT = 1.0
_MAX_MESSAGE = 64 * 1024 * 1024  # a scan of a big prefix is one answer; gRPC allows 4 MiB
_URL_FORM = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"

# gRPC status codes that say "this endpoint (or the path to it) failed", not "the request
# was wrong": worth trying the next endpoint.
_ENDPOINT_CODES = frozenset(
    {
        aetcd.rpc.StatusCode.UNAVAILABLE,
        aetcd.rpc.StatusCode.DEADLINE_EXCEEDED,
        aetcd.rpc.StatusCode.INTERNAL,
        aetcd.rpc.StatusCode.UNKNOWN,
        aetcd.rpc.StatusCode.CANCELLED,
    }
)
_ENDPOINT_ERRORS = (
    TimeoutError,
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.WatchTimeoutError,
    aetcd.exceptions.InternalError,
)

T = TypeVar("T")


class _WatchLost(Exception):
    """The watch stream ended without an event: its connection was closed under it."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # without brackets, also for IPv6
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_endpoint(url: str, text: str) -> Endpoint:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise StoreError(f"store {url!r}: endpoint {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise StoreError(f"store {url!r}: endpoint {text!r}: an IPv6 address goes in brackets")
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        if not host:
            raise StoreError(f"store {url!r}: endpoint {text!r} has no host; expected {_URL_FORM}")
    if port_text is None:
        return Endpoint(host, DEFAULT_PORT)
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StoreError(
            f"store {url!r}: endpoint {text!r}: port {port_text!r} is not a number from 1 to 65535"
        )
    return Endpoint(host, int(port_text))


def parse_url(url: str) -> tuple[list[Endpoint], str]:
    """The endpoints and the key prefix of an ``etcd://`` URL; StoreError saying what is
    wrong with a malformed one."""
    if not url.startswith("etcd://"):
        raise StoreError(f"store {url!r}: expected {_URL_FORM}")
    rest = url.removeprefix("etcd://")
    if any(c in rest for c in "?#@"):
        raise StoreError(
            f"store {url!r}: query, fragment and user@ are not supported; expected {_URL_FORM}"
        )
    netloc, slash, path = rest.partition("/")
    if not netloc.strip():
        raise StoreError(f"store {url!r}: no endpoint; expected {_URL_FORM}")
    endpoints = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise StoreError(f"store {url!r}: an empty endpoint in the list; expected {_URL_FORM}")
        endpoints.append(_parse_endpoint(url, item))
    path = path.strip("/")
    prefix = f"/{path}/" if slash and path else DEFAULT_PREFIX
    return endpoints, prefix


def _is_endpoint_failure(error: Exception) -> bool:
    if isinstance(error, (*_ENDPOINT_ERRORS, _WatchLost)):
        return True
    rpc_error = error if isinstance(error, aetcd.rpc.AioRpcError) else error.__cause__
    return isinstance(rpc_error, aetcd.rpc.AioRpcError) and rpc_error.code() in _ENDPOINT_CODES


def _reason(error: Exception, deadline: float, budget: float) -> str:
    """Why an endpoint failed, in a few words: ``deadline`` is one call's, ``budget`` the
    whole attempt's."""
    if isinstance(error, TimeoutError):
        return f"no answer within {budget:g} s"
    if isinstance(
        error, (aetcd.exceptions.ConnectionTimeoutError, aetcd.exceptions.WatchTimeoutError)
    ):
        return f"no answer within {deadline:g} s"
    if isinstance(error, aetcd.rpc.AioRpcError):
        text = error.details() or error.code().name
    else:
        text = str(error) or type(error).__name__
    if "failed to connect" in text.lower():  # gRPC's long form ends with the OS's reason
        text = text.rsplit(": ", 1)[-1]
    return text if len(text) <= 200 else text[:197] + "..."


class EtcdStore:
    """The Store protocol over etcd v3 (gRPC, through aetcd), with endpoint failover."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint | tuple[str, int]],
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = TIMEOUT,
    ) -> None:
        if not endpoints:
            raise StoreError(f"etcd store: no endpoint; expected {_URL_FORM}")
        if not prefix:
            raise StoreError("etcd store: the key prefix must not be empty")
        self._endpoints = [e if isinstance(e, Endpoint) else Endpoint(*e) for e in endpoints]
        self.prefix = prefix
        self.url = "etcd://" + ",".join(map(str, self._endpoints)) + prefix
        self._prefix = prefix.encode()
        self._range_end = aetcd.utils.prefix_range_end(self._prefix)
        self._timeout = timeout
        self._index = 0  # the endpoint in use, or tried next
        self._client: aetcd.Client | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float = TIMEOUT) -> EtcdStore:
        endpoints, prefix = parse_url(url)
        return cls(endpoints, prefix, timeout=timeout)

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint in use (or tried next, when no connection is open)."""
        return self._endpoints[self._index]

    # -- connections and failover --------------------------------------------------------------

    def _current(self) -> tuple[aetcd.Client, int]:
        if self._client is None:
            endpoint = self._endpoints[self._index]
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            self._client = aetcd.Client(
                host,
                endpoint.port,
                timeout=self._timeout,  # type: ignore[arg-type]  # typed int; gRPC takes a float
                options={
                    "grpc.max_receive_message_length": _MAX_MESSAGE,
                    "grpc.max_send_message_length": _MAX_MESSAGE,
                },
            )
        return self._client, self._index

    async def _abandon(self, client: aetcd.Client, index: int) -> None:
        """Drop a connection that failed; the next call goes to the next endpoint. Another
        task may have moved on already, in which case only this client is closed."""
        if self._client is client:
            self._client = None
            self._index = (index + 1) % len(self._endpoints)
        await self._close_client(client)

    @staticmethod
    async def _close_client(client: aetcd.Client) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await client.close()

    async def _call(
        self,
        what: str,
        op: Callable[[aetcd.Client], Awaitable[T]],
        budget: float | None = None,
    ) -> T:
        """``op`` on the endpoint in use, failing over to each next one on a connection
        failure; ``budget`` bounds one attempt (default: a little over one call's deadline)."""
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        limit = budget if budget is not None else self._timeout + 0.5
        failures: list[str] = []
        for _ in self._endpoints:
            client, index = self._current()
            endpoint = self._endpoints[index]
            try:
                async with asyncio.timeout(limit):
                    return await op(client)
            except Exception as e:
                if not _is_endpoint_failure(e):
                    raise StoreError(f"{self.url}: {what}: etcd at {endpoint}: {e}") from None
                failures.append(f"{endpoint} ({_reason(e, self._timeout, limit)})")
                await self._abandon(client, index)
            if self._closed:
                break
        raise StoreError(
            f"{self.url}: {what}: no etcd endpoint answered; tried {'; '.join(failures)}"
        )

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _entry(self, key: bytes, value: bytes, mod_revision: int) -> Entry:
        return Entry(key[len(self._prefix) :].decode(), bytes(value), int(mod_revision))

    async def get(self, key: str) -> Entry | None:
        async def op(client: aetcd.Client) -> Entry | None:
            found = await client.get(self._key(key))
            if found is None:
                return None
            return self._entry(found.key, found.value, found.mod_revision)

        return await self._call(f"get {key!r}", op)

    async def scan(self, prefix: str) -> list[Entry]:
        async def op(client: aetcd.Client) -> list[Entry]:
            found = await client.get_prefix(self._key(prefix), sort_order="ascend")
            return [self._entry(kv.key, kv.value, kv.mod_revision) for kv in found.kvs]

        return await self._call(f"scan {prefix!r}", op)

    def _unchanged(self, client: aetcd.Client, key: bytes, expect: int) -> object:
        """The transaction comparison for ``expect``: absent for 0, else that mod_revision."""
        if expect == 0:
            return client.transactions.create(key) == 0
        return client.transactions.mod(key) == expect

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        full = self._key(key)

        async def op(client: aetcd.Client) -> bool:
            if expect is None:
                await client.put(full, value)
                return True
            succeeded, _ = await client.transaction(
                compare=[self._unchanged(client, full, expect)],
                success=[client.transactions.put(full, value)],
                failure=[],
            )
            return bool(succeeded)

        return await self._call(f"put {key!r}", op)

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        full = self._key(key)

        async def op(client: aetcd.Client) -> bool:
            if expect is None:
                return await client.delete(full) is not None
            # For expect=0 the comparison holds only for an absent key, so nothing is deleted
            # and the answer is False, as the protocol says.
            succeeded, responses = await client.transaction(
                compare=[client.transactions.mod(full) == expect],
                success=[client.transactions.delete(full)],
                failure=[],
            )
            return bool(succeeded) and responses[0].response_delete_range.deleted > 0

        return await self._call(f"delete {key!r}", op)

    # -- revisions -------------------------------------------------------------------------------

    async def _header_revision(self, client: aetcd.Client) -> int:
        # A count-only range over our prefix: the cheapest linearizable read whose answer
        # carries the header revision (aetcd's get() drops the header when nothing is found,
        # and its range calls would fetch every key).
        await client.connect()
        request = aetcd.rpc.RangeRequest(
            key=self._prefix, range_end=self._range_end, count_only=True
        )
        response = await client.kvstub.Range(
            request, timeout=self._timeout, metadata=client.metadata
        )
        return int(response.header.revision)

    async def revision(self) -> int:
        return await self._call("revision", self._header_revision)

    async def _watch(self, client: aetcd.Client, after: int, deadline: float) -> None:
        """Return when a key under the prefix changed after revision ``after``, or at
        ``deadline`` (event loop time)."""
        try:
            watch = await client.watch_prefix(self._prefix, start_revision=max(1, after + 1))
        except aetcd.exceptions.RevisionCompactedError:
            return  # history past ``after`` is compacted away: there were changes since
        try:
            events = aiter(watch)
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            async with asyncio.timeout(remaining):
                await anext(events)
        except (TimeoutError, aetcd.exceptions.RevisionCompactedError):
            return
        except StopAsyncIteration:
            raise _WatchLost("the watch stream was closed") from None
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await watch.cancel()

    async def wait(self, after: int, timeout: float) -> int:
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)

        async def op(client: aetcd.Client) -> int:
            await self._watch(client, after, deadline)
            return await self._header_revision(client)

        # One attempt may take the whole wait plus a watch set-up and a read.
        return await self._call("wait", op, budget=max(0.0, timeout) + 2 * self._timeout + 0.5)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)
