"""HTTP/1.1 + JSON over any asyncio stream: the coordinator's API and its clients.

``h11`` does the protocol (sans-IO); this module only moves bytes between it and asyncio
streams, so the same server runs on kernel sockets, on the embedded netstack and on a
Unix socket. Bounds, so a hostile peer costs little: headers of at most ``MAX_HEADERS``
bytes, bodies of at most ``MAX_BODY``, ``READ_TIMEOUT`` to send a whole request (head and
body, however slowly it trickles in). Anything malformed gets a 4xx and the connection is
closed; a handler that fails unexpectedly gives a 500 (logged), never a dropped answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

MAX_HEADERS = 16 * 1024
MAX_BODY = 1024 * 1024
READ_TIMEOUT = 30.0
CHUNK = 65536


class HttpError(Exception):
    """An API call that failed: ``status`` and the server's (or our) message. On the
    server, ``after`` runs once the error answer has been sent (see ``Response``)."""

    def __init__(self, status: int, message: str, after: Callable[[], None] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.after = after


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """Who is on the other end of a Unix socket, as the kernel says (Linux SO_PEERCRED:
    pid, uid, gid as three ints); None where that is not available."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None or sock.family != socket.AF_UNIX:
        return None
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None
    return int(uid)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer: tuple[str, int] | None  # the client's address (None on a Unix socket)
    headers: dict[str, str] = field(default_factory=dict)
    peer_uid: int | None = None  # a Unix socket client's uid (SO_PEERCRED), if known

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: no JSON
            raise HttpError(400, "request body is not JSON") from None


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serializable, or bytes sent as they are (``content_type``)
    # Runs once the answer is written (or the connection failed), then the connection
    # closes: for a change that would cut the path the answer travels on.
    after: Callable[[], None] | None = None
    content_type: str = "application/json"  # e.g. the Prometheus text format's

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return b"" if self.body is None else json.dumps(self.body).encode()


Handler = Callable[[Request], Awaitable[Response]]


async def _read_event(
    conn: h11.Connection, reader: asyncio.StreamReader, timeout: float | None = None
) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(timeout):
            data = await reader.read(CHUNK)
        conn.receive_data(data)


async def _send(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str = "application/json",
) -> None:
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Answer requests on one connection until the client closes it or misbehaves.

    Meant as a server's connection callback (``start_server``), the outermost coroutine
    of its task. A server shutting down cancels it (a long-poll waits for minutes): it
    then ends normally, since Python 3.11's asyncio.streams reports a cancelled
    connection task as an error ("Exception in callback ... CancelledError")."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    peername = writer.get_extra_info("peername")
    peer = (str(peername[0]), int(peername[1])) if isinstance(peername, tuple) else None
    uid = _peer_uid(writer) if peer is None else None
    try:
        while True:
            try:
                # One deadline for the whole request: a client trickling in a byte at a
                # time never times out a single read.
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await _next_request(conn, reader, peer)
                if request is None:
                    return
                request.peer_uid = uid
            except h11.RemoteProtocolError as e:
                await _fail(writer, conn, e.error_status_hint, f"malformed HTTP: {e}")
                return
            except HttpError as e:
                await _fail(writer, conn, e.status, e.message)
                return
            try:
                response = await handler(request)
                body = response.encoded()
            except HttpError as e:
                response = Response(e.status, {"error": e.message}, e.after)
                body = response.encoded()
            except Exception as e:  # a bug or a dead dependency: answer, never hang up
                print(
                    f"pyralog http: {request.method} {request.path} failed:\n"
                    + traceback.format_exc().rstrip(),
                    file=sys.stderr,
                    flush=True,
                )
                response = Response(500, {"error": f"internal error: {type(e).__name__}: {e}"})
                body = response.encoded()
            try:
                await _send(writer, conn, response.status, body, response.content_type)
            finally:
                if response.after is not None:
                    response.after()
            if conn.our_state is h11.MUST_CLOSE or response.after is not None:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
        return
    except asyncio.CancelledError:
        return  # see above: the server is closing
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _next_request(
    conn: h11.Connection, reader: asyncio.StreamReader, peer: tuple[str, int] | None
) -> Request | None:
    """The next whole request, head and body; None if the client closed instead."""
    event = await _read_event(conn, reader)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise HttpError(400, "expected a request")
    return await _read_request(conn, reader, event, peer)


async def _read_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    event: h11.Request,
    peer: tuple[str, int] | None,
) -> Request:
    # h11 bounds only a head that arrives in pieces; one that came in a single read
    # (up to CHUNK bytes) is checked here.
    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    if size > MAX_HEADERS:
        raise HttpError(431, f"request headers over {MAX_HEADERS} bytes")
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise HttpError(413, f"request body over {MAX_BODY} bytes")
    body = bytearray()
    while True:
        part = await _read_event(conn, reader)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise HttpError(413, f"request body over {MAX_BODY} bytes")
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise HttpError(400, "connection closed mid-request")
    target = urlsplit(event.target.decode("latin-1"))
    query = {k: v[-1] for k, v in parse_qs(target.query).items()}
    return Request(event.method.decode(), target.path, query, bytes(body), peer, headers)


async def _fail(
    writer: asyncio.StreamWriter, conn: h11.Connection, status: int, message: str
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    with contextlib.suppress(Exception):
        await _send(writer, conn, status, Response(status, {"error": message}).encoded())


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def call(
    opener: Opener,
    method: str,
    path: str,
    body: Any = None,
    *,
    host: str = "coordinator",
    timeout: float = 10.0,
) -> Any:
    """One request on a new connection; the decoded JSON answer, or HttpError.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` returns the answer
    and drops the cancellation when both come in one loop iteration, and a cancelled
    agent went on polling (so ``MeshNode.close`` never returned)."""
    try:
        async with asyncio.timeout(timeout):
            return await _call(opener, method, path, body, host)
    except TimeoutError:
        raise HttpError(0, f"{method} {path}: no answer within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise HttpError(0, f"{method} {path}: {e}") from None


async def _call(opener: Opener, method: str, path: str, body: Any, host: str) -> Any:
    reader, writer = await opener()
    try:
        data = b"" if body is None else json.dumps(body).encode()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        headers = [("host", host), ("content-length", str(len(data)))]
        if data:
            headers.append(("content-type", "application/json"))
        writer.write(conn.send(h11.Request(method=method, target=path, headers=headers)))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        try:
            response = await _read_event(conn, reader, 3600.0)
        except h11.RemoteProtocolError:
            if conn.trailing_data == (b"", True):  # closed before a byte of an answer
                raise HttpError(0, f"{method} {path}: the server closed the connection") from None
            raise
        if not isinstance(response, h11.Response):
            raise HttpError(0, f"{method} {path}: the server closed the connection")
        payload = bytearray()
        while True:
            part = await _read_event(conn, reader, 3600.0)
            if isinstance(part, h11.Data):
                payload += part.data
                if len(payload) > 64 * MAX_BODY:
                    raise HttpError(0, f"{method} {path}: answer too large")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise HttpError(0, f"{method} {path}: answer cut short")
    except h11.RemoteProtocolError as e:
        raise HttpError(0, f"{method} {path}: malformed answer: {e}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    try:
        decoded = json.loads(payload) if payload else None
    except (ValueError, RecursionError):
        raise HttpError(response.status_code, "answer is not JSON") from None
    if response.status_code >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else None
        raise HttpError(response.status_code, str(message or f"HTTP {response.status_code}"))
    return decoded
