"""asyncio transports over the netstack, so the standard library's streams and protocols
work unchanged on tunnel connections.

``TcpTransport`` is an ``asyncio.Transport`` driving one ``TcpConnection``; with
``asyncio.StreamReaderProtocol`` on top it yields real ``StreamReader``/``StreamWriter``
objects. Backpressure is end to end: a full TCP send buffer holds data here and pauses the
protocol's writing (``drain()`` waits); a reader over its limit pauses reading, received
data stays in the connection, and its advertised window closes so the far sender slows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from pyralog.netstack.tcp import TcpConnection, TcpOwner


class Host(Protocol):
    """What a transport needs from the embedded tunnel that runs it."""

    loop: asyncio.AbstractEventLoop

    def now(self) -> float: ...

    def kick(self) -> None:
        """Something was queued: send what the stack has (soon, from the event loop)."""

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the packets at hand are through the stack (and soon)."""


class TcpTransport(asyncio.Transport, TcpOwner):
    def __init__(
        self,
        host: Host,
        conn: TcpConnection,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        extra: dict[str, Any],
        connected: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(extra)
        self._host = host
        self._conn = conn
        self._protocol_factory = protocol_factory
        self._protocol: asyncio.Protocol | None = None
        self._connected = connected
        self._pending = bytearray()  # written by the protocol, not yet taken by TCP
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._reading_paused = False
        self._closing = False
        self._eof_requested = False
        self._lost = False
        self._eof_delivered = False
        self._delivery_due = False
        conn.owner = self

    # -- TcpOwner --------------------------------------------------------------------------

    def tcp_connected(self, conn: TcpConnection) -> None:
        self._protocol = self._protocol_factory()  # type: ignore[assignment]
        assert self._protocol is not None
        self._protocol.connection_made(self)
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
        self.tcp_readable(conn)

    def tcp_readable(self, conn: TcpConnection) -> None:
        # Segments arrive in bursts: the protocol hears once per burst, with all of it,
        # rather than once per segment (one wake-up of the reader, one copy downstream).
        if not self._delivery_due:
            self._delivery_due = True
            self._host.defer(self._deliver)

    def _deliver(self) -> None:
        self._delivery_due = False
        conn = self._conn
        if self._protocol is None or self._reading_paused or self._lost:
            return
        while conn.readable and not self._reading_paused and not self._lost:
            self._protocol.data_received(conn.read(conn.readable, self._host.now()))
        if conn.at_eof:
            self.tcp_eof(conn)

    def tcp_eof(self, conn: TcpConnection) -> None:
        if self._protocol is None or self._reading_paused or self._lost or conn.readable:
            return
        if self._eof_delivered:
            return
        self._eof_delivered = True
        if not self._protocol.eof_received():
            self.close()

    def tcp_writable(self, conn: TcpConnection) -> None:
        self._push()

    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(error or ConnectionError("connection closed"))
            return
        self._lose(error)

    # -- asyncio.Transport -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_requested or self._lost:
            return  # as asyncio's transports: writes after close are dropped
        if not data:
            return
        self._pending += data
        self._push()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _push(self) -> None:
        conn = self._conn
        now = self._host.now()
        if self._pending and not self._lost:
            try:
                n = conn.send(self._pending, now)
            except OSError as e:
                self._pending.clear()
                self._lose(e)
                return
            del self._pending[:n]
        if self._writing_paused and len(self._pending) <= self._low:
            self._writing_paused = False
            if self._protocol is not None:
                self._protocol.resume_writing()
        elif not self._writing_paused and len(self._pending) > self._high:
            self._writing_paused = True
            if self._protocol is not None:
                self._protocol.pause_writing()
        if not self._pending and (self._eof_requested or self._closing):
            conn.close(now)
            if self._closing:
                self._lose(None)
        self._host.kick()

    def write_eof(self) -> None:
        if self._eof_requested:
            return
        self._eof_requested = True
        self._push()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._push()

    def abort(self) -> None:
        self._pending.clear()
        self._conn.abort(self._host.now())
        self._host.kick()
        self._lose(None)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self.tcp_readable(self._conn)
        self._host.kick()  # reading opened the window: a window update may be due

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def _lose(self, error: OSError | None) -> None:
        if self._lost:
            return
        self._lost = True
        protocol = self._protocol
        if protocol is not None:
            self._host.loop.call_soon(protocol.connection_lost, error)


class DatagramTransport(asyncio.DatagramTransport):
    """A UDP endpoint on the tunnel, behind ``asyncio.DatagramProtocol``."""

    def __init__(
        self,
        host: Host,
        send: Callable[[bytes, tuple[str, int]], None],
        unbind: Callable[[], None],
        protocol: asyncio.DatagramProtocol,
        default_remote: tuple[str, int] | None,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._host = host
        self._send = send
        self._unbind = unbind
        self._protocol = protocol
        self._remote = default_remote
        self._closed = False

    def deliver(self, data: bytes, address: tuple[str, int]) -> None:
        if self._closed:
            return
        if self._remote is not None and address != self._remote:
            return  # a connected endpoint only hears from its peer, as with sockets
        self._protocol.datagram_received(data, address)

    def sendto(self, data: bytes, addr: tuple[str, int] | None = None) -> None:  # type: ignore[override]
        if self._closed:
            return
        target = addr or self._remote
        if target is None:
            raise ValueError("no remote address: pass addr or give remote_addr when creating")
        try:
            self._send(bytes(data), (target[0], target[1]))
        except OSError as e:
            self._protocol.error_received(e)
        self._host.kick()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unbind()
        self._host.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    def get_write_buffer_size(self) -> int:
        return 0
