"""Noticing a broker that died, so its clients are not left waiting.

A peer killed behind WireGuard sends no RST: its TCP connections go quiet, and a Kafka
client waits for its own request timeout (30 s or more) before it looks elsewhere. While
client connections to a broker are open, the watchdog asks that broker ApiVersions every
PROBE_INTERVAL on a connection of its own; when no answer comes within PROBE_TIMEOUT
(or the connect itself times out) every client connection to it is closed, and the
clients reconnect and refresh their Metadata.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from pyralog.gateway.frames import MAX_RESPONSE_BYTES, FrameError
from pyralog.gateway.rewrite import API_VERSIONS
from pyralog.log.protocol import encode_request, request
from pyralog.net.api import Network

log = logging.getLogger("pyralog.connect")

CONNECT_TIMEOUT = 5.0
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.5
CLIENT_ID = "pyralog-connect"

Target = tuple[str, int]


def show(target: Target) -> str:
    host, port = target
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed the connection"
    return str(e) or type(e).__name__


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One response frame, size prefix included."""
    prefix = await reader.readexactly(4)
    (size,) = struct.unpack(">i", prefix)
    if not 4 <= size <= MAX_RESPONSE_BYTES:
        raise FrameError(f"response frame size {size}")
    return prefix + await reader.readexactly(size)


class Link:
    """A client connection and its upstream connection, closed together."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()


class Watchdog:
    """One probing task per broker address that has client connections."""

    def __init__(self, network: Network, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.network = network
        self.connect_timeout = connect_timeout
        self._links: dict[Target, set[Link]] = {}
        self._watchdogs: dict[Target, asyncio.Task[None]] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._watchdogs.values())

    def register(self, target: Target, link: Link) -> None:
        self._links.setdefault(target, set()).add(link)
        running = self._watchdogs.get(target)
        if running is None or running.done():
            task = asyncio.ensure_future(self._watch(target))
            self._watchdogs[target] = task

            def forget(done: asyncio.Task[None]) -> None:
                if self._watchdogs.get(target) is done:
                    del self._watchdogs[target]

            task.add_done_callback(forget)

    def unregister(self, target: Target, link: Link) -> None:
        links = self._links.get(target)
        if links is not None:
            links.discard(link)
            if not links:
                del self._links[target]
                task = self._watchdogs.pop(target, None)
                if task is not None:
                    task.cancel()

    async def _watch(self, target: Target) -> None:
        """Ask ``target`` ApiVersions every PROBE_INTERVAL while clients use it; close
        their connections when it stops answering."""
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.wait_for(
                self.network.open_connection(*target), self.connect_timeout
            )
            correlation_id = 0
            while True:
                correlation_id += 1
                body = request(API_VERSIONS, 0, {})
                writer.write(encode_request(API_VERSIONS, 0, correlation_id, CLIENT_ID, body))
                await asyncio.wait_for(read_frame(reader), PROBE_TIMEOUT)
                await asyncio.sleep(PROBE_INTERVAL)
        except (OSError, TimeoutError, EOFError, FrameError) as e:
            links = self._links.pop(target, set())
            log.warning("broker at %s is not answering (%s): closing its %d client "
                        "connection(s)", show(target), why(e), len(links))  # fmt: skip
            for link in links:
                link.abort()
        finally:
            if writer is not None:
                writer.transport.abort()
