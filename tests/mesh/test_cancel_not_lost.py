"""Cancelling a task in ``http.call`` or ``SqliteStore.wait`` is never lost.

On Python 3.11 ``asyncio.wait_for`` returns the inner result, swallowing the
cancellation, when the awaited thing completes in the loop iteration the outer task is
cancelled in. An agent whose long-poll answer arrived just as the node was stopped then
went on polling, and ``MeshNode.close`` (``task.cancel(); await task``) waited forever:
bench/mesh.py hung on Ctrl-C with 8 of its 50 agents still polling. Each test cancels at
every loop iteration in turn, so it meets that iteration whatever the timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pyralog.mesh import http
from pyralog.mesh.store_sqlite import SqliteStore

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Sink:
    """A writer that takes anything (the request) and closes at once."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def _answered() -> tuple[asyncio.StreamReader, Any]:
    reader = asyncio.StreamReader()
    reader.feed_data(ANSWER)  # the answer is there before the request is even sent
    reader.feed_eof()
    return reader, _Sink()


async def _cancel_after(steps: int, body: Callable[[], Awaitable[Any]]) -> tuple[bool, str]:
    """Cancel ``body``'s task after ``steps`` loop iterations: (whether the cancel was
    taken, i.e. the task was still running, and how the task ended)."""
    task = asyncio.create_task(body())
    for _ in range(steps):
        await asyncio.sleep(0)
    taken = task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return taken, "cancelled"
    return taken, "returned"


def _outcomes(body: Callable[[], Awaitable[Any]], steps: int = 12) -> list[tuple[bool, str]]:
    async def scan() -> list[tuple[bool, str]]:
        return [await _cancel_after(k, body) for k in range(steps)]

    return asyncio.run(scan())


def test_a_cancelled_call_never_returns_an_answer() -> None:
    outcomes = _outcomes(lambda: http.call(_answered, "GET", "/v1/mesh?wait=10", timeout=10))
    for taken, how in outcomes:
        if taken:  # the task was running when cancelled: it must end cancelled
            assert how == "cancelled", outcomes
    assert outcomes[0] == (True, "cancelled") and outcomes[-1] == (False, "returned")


def test_a_cancelled_store_wait_never_returns(tmp_path: Path) -> None:
    async def scan() -> list[tuple[bool, str]]:
        store = SqliteStore(tmp_path / "store.db")
        outcomes = []
        try:
            for k in range(4):
                waiter = asyncio.create_task(store.wait(await store.revision(), 10))
                await asyncio.sleep(0)  # parked on the store's change event
                await store.put("k", f"v{k}".encode())  # wakes it ...
                for _ in range(k):
                    await asyncio.sleep(0)
                taken = waiter.cancel()  # ... and it is cancelled, k iterations later
                try:
                    await waiter
                    outcomes.append((taken, "returned"))
                except asyncio.CancelledError:
                    outcomes.append((taken, "cancelled"))
        finally:
            await store.close()
        return outcomes

    outcomes = asyncio.run(scan())
    for taken, how in outcomes:
        if taken:
            assert how == "cancelled", outcomes
    assert outcomes[0] == (True, "cancelled")
