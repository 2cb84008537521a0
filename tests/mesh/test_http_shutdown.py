"""A server that shuts down with requests in flight (the coordinator's long-polls) ends
them quietly: no "Exception in callback ... CancelledError" per connection in its log."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pyralog.mesh import http


def test_closing_with_a_long_poll_in_flight_reports_no_error() -> None:
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        waiting = asyncio.Event()

        async def long_poll(request: http.Request) -> http.Response:
            waiting.set()
            await asyncio.sleep(3600)
            return http.Response(200, {})

        server = await asyncio.start_server(
            lambda r, w: http.serve_connection(r, w, long_poll), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        client = asyncio.create_task(
            http.call(lambda: asyncio.open_connection("127.0.0.1", port), "GET", "/v1/mesh",
                      timeout=30)
        )  # fmt: skip
        await asyncio.wait_for(waiting.wait(), 10)
        server.close()
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client
        # Returning leaves the connection's task to asyncio.run, which cancels it, as
        # at the end of `pyralog coordinator`.

    asyncio.run(scenario())
    assert reported == []
