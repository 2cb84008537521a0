"""mesh.http on a real loopback TCP server: requests and keep-alive, every bound (headers,
bodies, time), malformed input answered with an error and a close, never an exception
escaping the server task; and ``call`` against servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pyralog.mesh import http
from pyralog.mesh.http import MAX_BODY, MAX_HEADERS, HttpError, Request, Response, call

TIMEOUT = 5.0


class Server:
    """serve_connection behind asyncio.start_server; records requests and any exception
    that escaped the per-connection task."""

    def __init__(self, handler: http.Handler | None = None) -> None:
        self.requests: list[Request] = []
        self.escaped: list[BaseException] = []
        self.finished = 0
        self._handler = handler or self.echo
        self.port = 0
        self._server: asyncio.Server | None = None

    async def echo(self, request: Request) -> Response:
        self.requests.append(request)
        if request.path == "/json":
            return Response(200, {"got": request.json()})
        if request.path == "/empty":
            return Response(204)
        return Response(
            200,
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "length": len(request.body),
                "peer": list(request.peer) if request.peer else None,
            },
        )

    async def _connection(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await http.serve_connection(r, w, self._handler)
        except BaseException as e:
            self.escaped.append(e)
            raise
        finally:
            self.finished += 1

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def opener(self) -> Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
        return lambda: asyncio.open_connection("127.0.0.1", self.port)

    async def raw(self, data: bytes, *, half_close: bool = False) -> bytes:
        """Send bytes, read until the server closes; everything it answered."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            if half_close:
                writer.write_eof()
            return await asyncio.wait_for(read_all(reader), TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def settle(self, count: int = 1) -> None:
        """Wait until ``count`` connections were served to the end."""
        for _ in range(200):
            if self.finished >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {self.finished} connections finished")


async def read_all(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return bytes(data)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a content-length, head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 2))


@contextlib.asynccontextmanager
async def serving(handler: http.Handler | None = None) -> AsyncIterator[Server]:
    async with Server(handler) as server:
        yield server
        await server.settle(0)
    assert server.escaped == []


# -- the normal path ------------------------------------------------------------------------


def test_request_and_response_with_call() -> None:
    async def body() -> None:
        async with serving() as server:
            got = await call(server.opener(), "GET", "/v1/mesh?since=abc&wait=25&wait=3")
            assert got["method"] == "GET" and got["path"] == "/v1/mesh"
            assert got["query"] == {"since": "abc", "wait": "3"}  # the last value wins
            assert got["peer"][0] == "127.0.0.1"
            posted = await call(server.opener(), "POST", "/json", {"a": [1, 2, "é"]})
            assert posted == {"got": {"a": [1, 2, "é"]}}
            assert await call(server.opener(), "DELETE", "/empty") is None
            (first, second, _) = server.requests
            assert first.headers["host"] == "coordinator"
            assert second.headers["content-type"] == "application/json"
            await server.settle(3)

    run(body)


def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async def body() -> None:
        async with serving() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            first = await asyncio.wait_for(read_response(reader), TIMEOUT)
            assert status_of(first) == 200 and b'"/one"' in first
            writer.write(b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            await writer.drain()
            second = await asyncio.wait_for(read_response(reader), TIMEOUT)
            assert status_of(second) == 200 and b'"/two"' in second and b'"length": 3' in second
            writer.close()
            await server.settle(1)
            assert [r.path for r in server.requests] == ["/one", "/two"]

    run(body)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def body() -> None:
        async with serving() as server:
            answer = await server.raw(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert answer.count(b"HTTP/1.1 200") == 2
            assert answer.index(b'"/a"') < answer.index(b'"/b"')

    run(body)


def test_a_handlers_http_error_is_an_answer_and_the_connection_stays() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/missing":
            raise HttpError(404, "no such thing")
        return Response(200, {"ok": True})

    async def body() -> None:
        async with serving(handler) as server:
            with pytest.raises(HttpError) as info:
                await call(server.opener(), "GET", "/missing")
            assert info.value.status == 404 and info.value.message == "no such thing"
            answer = await server.raw(
                b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert b"HTTP/1.1 404" in answer and b"HTTP/1.1 200" in answer

    run(body)


def test_non_json_body_is_a_400_via_request_json() -> None:
    async def body() -> None:
        async with serving() as server:
            for payload in (b"{not json", b"\xff\xfe", b"[1,"):
                answer = await server.raw(
                    b"POST /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                assert status_of(answer) == 400
                assert body_of(answer) == {"error": "request body is not JSON"}
            # An empty body reads as {}.
            assert await call(server.opener(), "POST", "/json") == {"got": {}}

    run(body)


def test_request_json_directly() -> None:
    def request(body: bytes) -> Request:
        return Request("POST", "/", {}, body, None)

    assert request(b"").json() == {}
    assert request(b'{"a": 1}').json() == {"a": 1}
    assert request(b"7").json() == 7
    for bad in (b"{", b"\x80", b"nan?", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(HttpError) as info:
            request(bad).json()
        assert info.value.status == 400


# -- malformed and oversized input ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"NOT A REQUEST LINE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    ],
)
def test_malformed_requests_get_400_and_a_close(data: bytes) -> None:
    async def body() -> None:
        async with serving() as server:
            answer = await server.raw(data)
            assert status_of(answer) == 400
            assert "error" in body_of(answer)
            assert server.requests == []
            await server.settle(1)

    run(body)


def test_a_header_block_over_max_headers_is_refused_and_closed() -> None:
    async def body() -> None:
        async with serving() as server:
            big = b"X-Filler: " + b"a" * (MAX_HEADERS + 1) + b"\r\n"
            answer = await server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
            assert status_of(answer) in (400, 431)
            # Many small headers add up the same way.
            many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 60) for i in range(400))
            answer = await server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            assert status_of(answer) in (400, 431)
            # And a header block that never ends is cut off at the bound too.
            answer = await server.raw(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000)
            assert status_of(answer) in (400, 431)
            assert server.requests == []
            await server.settle(3)

    run(body)


def test_a_body_over_max_body_by_content_length_is_413() -> None:
    async def body() -> None:
        async with serving() as server:
            answer = await server.raw(
                b"POST / HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
                + b"x" * 1000
            )
            assert status_of(answer) == 413
            assert server.requests == []
            # Exactly MAX_BODY is fine.
            got = await call(server.opener(), "POST", "/", "x" * (MAX_BODY - 2))
            assert got["length"] == MAX_BODY

    run(body)


def test_a_chunked_body_over_max_body_is_413() -> None:
    async def body() -> None:
        async with serving() as server:
            chunk = b"y" * 65536
            parts = [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"]
            for _ in range(MAX_BODY // len(chunk) + 2):
                parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            parts.append(b"0\r\n\r\n")
            answer = await server.raw(b"".join(parts))
            assert status_of(answer) == 413
            assert server.requests == []
            # A small chunked body is read whole.
            answer = await server.raw(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            assert status_of(answer) == 200 and body_of(answer)["length"] == 5

    run(body)


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "0x10"])
def test_bad_content_lengths(length: str) -> None:
    async def body() -> None:
        async with serving() as server:
            answer = await server.raw(
                f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            )
            assert status_of(answer) in (400, 413)
            assert server.requests == []

    run(body)


def test_client_closing_mid_body() -> None:
    async def body() -> None:
        async with serving() as server:
            answer = await server.raw(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some",
                half_close=True,
            )
            assert answer == b"" or status_of(answer) == 400
            assert server.requests == []
            # Abruptly, without a FIN first.
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            await writer.drain()
            writer.transport.abort()
            await server.settle(2)
            assert server.requests == []

    run(body)


def test_client_closing_before_anything_or_between_requests() -> None:
    async def body() -> None:
        async with serving() as server:
            assert await server.raw(b"", half_close=True) == b""
            answer = await server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
            assert status_of(answer) == 200
            await server.settle(2)

    run(body)


def test_a_slow_request_is_cut_off_after_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.3)

    async def body() -> None:
        async with serving() as server:
            # Idle: nothing sent at all.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(read_all(reader), 2.0) == b""
            writer.close()
            # Slowloris: a byte every 0.1 s never times out a single read, but the request
            # as a whole must arrive within READ_TIMEOUT.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            loop = asyncio.get_running_loop()
            start = loop.time()
            closed = False
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    closed = True
                    break
            assert closed, "a request trickled in forever"
            assert loop.time() - start < 2.0
            writer.close()
            await server.settle(2)

    run(body)


def test_an_unexpected_handler_exception_is_a_500_not_an_escape() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("the store is down")
        return Response(200, {"ok": True})

    async def body() -> None:
        async with serving(handler) as server:
            with pytest.raises(HttpError) as info:
                await call(server.opener(), "GET", "/boom")
            assert info.value.status == 500
            assert info.value.message.startswith("internal error: RuntimeError")
            assert await call(server.opener(), "GET", "/ok") == {"ok": True}
            await server.settle(2)

    run(body)


def test_an_unserializable_answer_is_a_500() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, {"bytes": b"not json"})

    async def body() -> None:
        async with serving(handler) as server:
            with pytest.raises(HttpError) as info:
                await call(server.opener(), "GET", "/")
            assert info.value.status == 500

    run(body)


# -- call against misbehaving servers -------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_server(
    behave: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Callable[[], Any]]:
    async def connection(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await behave(r, w)
        finally:
            w.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield lambda: asyncio.open_connection("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


async def read_request(r: asyncio.StreamReader) -> None:
    await r.readuntil(b"\r\n\r\n")


def answer_with(data: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def behave(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(data)
        await w.drain()

    return behave


async def call_error(opener: Callable[[], Any], timeout: float = 2.0) -> HttpError:
    with pytest.raises(HttpError) as info:
        await call(opener, "GET", "/v1/status", timeout=timeout)
    return info.value


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"garbage garbage\r\n\r\n", 0, "malformed answer"),
        (b"\x00\x01\x02\x03" * 10, 0, "malformed answer"),
        (b"", 0, "closed the connection"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"cut', 0, "GET /v1/status"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "not JSON"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"[" * 200_000,
            200,
            "not JSON",
        ),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\n{}", 503, "HTTP 503"),
        (
            b'HTTP/1.1 409 Conflict\r\nContent-Length: 18\r\n\r\n{"error": "taken"}',
            409,
            "taken",
        ),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\n[1]", 500, "HTTP 500"),
    ],
)
def test_call_against_a_misbehaving_server(data: bytes, status: int, words: str) -> None:
    async def body() -> None:
        async with fake_server(answer_with(data)) as opener:
            error = await call_error(opener)
            assert error.status == status
            assert words in error.message, error.message

    run(body)


def test_call_against_a_server_that_closes_at_once() -> None:
    async def behave(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        return None

    async def body() -> None:
        async with fake_server(behave) as opener:
            error = await call_error(opener)
            assert error.status == 0

    run(body)


def test_call_times_out_with_status_0() -> None:
    async def behave(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(10)

    async def body() -> None:
        async with fake_server(behave) as opener:
            loop = asyncio.get_running_loop()
            start = loop.time()
            error = await call_error(opener, timeout=0.2)
            assert error.status == 0 and "no answer within 0.2 s" in error.message
            assert loop.time() - start < 1.5

    run(body)


def test_call_with_nobody_listening_is_status_0() -> None:
    async def body() -> None:
        async with fake_server(answer_with(b"")) as opener:
            pass  # closed: its port now refuses
        error = await call_error(opener)
        assert error.status == 0

    run(body)


def test_call_refuses_a_huge_answer() -> None:
    async def behave(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 1_000_000
        with contextlib.suppress(ConnectionError):
            for _ in range(70):
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await w.drain()

    async def body() -> None:
        async with fake_server(behave) as opener:
            error = await call_error(opener, timeout=5.0)
            assert error.status == 0 and "too large" in error.message

    run(body)
