"""The gateway's asyncio part: listeners, the broker table, pumping.

A local client first connects to the bootstrap listener, which forwards to any broker
that answers. Each broker id named in an answer gets a local listener of its own
(``--listen`` port + 1, + 2, ... in order of first sight); connections to it go to that
broker's mesh address. The mapping never changes while the gateway runs, because
clients cache it; if a broker's advertised address changes, its listener follows.
Every upstream connect is bounded by CONNECT_TIMEOUT (a dead peer behind WireGuard
sends no RST), and each upstream connection is watched (``watchdog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyralog.gateway.frames import Conversation, FrameError
from pyralog.gateway.rewrite import (
    ADDRESSED,
    API_VERSIONS,
    METADATA,
    WATCHED,
    Broker,
    RewriteError,
    can_rewrite,
    decode,
)
from pyralog.gateway.watchdog import (
    CLIENT_ID,
    CONNECT_TIMEOUT,
    Link,
    Target,
    Watchdog,
    read_frame,
    show,
    why,
)
from pyralog.log.protocol import encode_request, request
from pyralog.net.api import Network

log = logging.getLogger("pyralog.connect")

CHUNK = 256 * 1024
STREAM_LIMIT = 1024 * 1024

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class NoBroker(Exception):
    """No bootstrap address answered as a broker in time."""

    def __init__(self, timeout: float, tried: dict[Target, str]) -> None:
        self.tried = tried
        listed = "; ".join(f"{show(t)} ({why})" for t, why in tried.items()) or "none"
        super().__init__(f"no broker answered within {timeout:g} s; tried {listed}")


@dataclass
class Mapped:
    """A broker id's local listener and the mesh address it leads to."""

    node_id: int
    target: Target
    local: Target
    server: asyncio.Server


class Gateway:
    def __init__(
        self,
        network: Network,
        listen: Target,
        advertise_host: str,
        bootstrap: list[Target],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.network = network
        self.listen = listen
        self.advertise_host = advertise_host
        self.bootstrap = bootstrap
        self.connect_timeout = connect_timeout
        self.brokers: dict[int, Mapped] = {}
        self._preferred: Target | None = None
        self._servers: list[asyncio.Server] = []
        self._lock = asyncio.Lock()
        # Handler tasks must be referenced, or the garbage collector may destroy them.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog = Watchdog(network, connect_timeout)

    # -- listeners and the broker table ----------------------------------------------------

    async def start(self) -> None:
        """Bind the bootstrap listener (OSError when it cannot be bound)."""
        server = await asyncio.start_server(
            self._handler(None), self.listen[0], self.listen[1], limit=STREAM_LIMIT
        )
        self._servers.append(server)

    def locate(self, broker: Broker) -> Target:
        """The local address standing for ``broker`` (mapped by ``ensure`` first)."""
        return self.advertise_host, self.brokers[broker.node_id].local[1]

    async def ensure(self, brokers: list[Broker]) -> None:
        """Give every broker id a local listener; follow a broker whose address moved."""
        async with self._lock:
            for broker in brokers:
                target = (broker.host, broker.port)
                mapped = self.brokers.get(broker.node_id)
                if mapped is None:
                    server = await self._bind(broker.node_id)
                    local = (self.listen[0], server.sockets[0].getsockname()[1])
                    self.brokers[broker.node_id] = Mapped(broker.node_id, target, local, server)
                    log.info("broker %d (%s) -> %s", broker.node_id, show(target), show(local))
                elif mapped.target != target:
                    log.info("broker %d moved: %s -> %s", broker.node_id, show(mapped.target),
                             show(target))  # fmt: skip
                    mapped.target = target

    async def _bind(self, node_id: int) -> asyncio.Server:
        handler = self._handler(node_id)
        port = self.listen[1] + len(self.brokers) + 1
        if port <= 65535:
            with contextlib.suppress(OSError):
                return await asyncio.start_server(handler, self.listen[0], port, limit=STREAM_LIMIT)
            log.info("port %d is taken: broker %d gets an ephemeral port", port, node_id)
        return await asyncio.start_server(handler, self.listen[0], 0, limit=STREAM_LIMIT)

    def bootstrap_targets(self) -> list[Target]:
        """Where a bootstrap connection may go: the last broker that answered, the
        brokers known, then the configured list."""
        known = [m.target for m in self.brokers.values()]
        ordered = [self._preferred] if self._preferred else []
        return list(dict.fromkeys([*ordered, *known, *self.bootstrap]))

    # -- start-up ----------------------------------------------------------------------------

    async def discover(self, timeout: float) -> list[Broker]:
        """Ask every bootstrap address for Metadata at once, again every half second,
        until one answers (NoBroker after ``timeout``), and map the brokers it names.
        At once, because a dead peer costs a whole connect timeout to find out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tried: dict[Target, str] = {}
        while True:
            attempt = min(self.connect_timeout, max(0.0, deadline - loop.time()))
            asks = {
                asyncio.ensure_future(asyncio.wait_for(self._ask_brokers(t), attempt)): t
                for t in self.bootstrap_targets()
            }
            pending = set(asks)
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        target = asks[task]
                        error = task.exception()
                        if error is None:
                            self._preferred = target
                            await self.ensure(task.result())
                            return task.result()
                        tried[target] = why(error)
                        log.debug("bootstrap %s: %s", show(target), tried[target])
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if loop.time() >= deadline:
                raise NoBroker(timeout, tried)
            await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))

    async def _ask_brokers(self, target: Target) -> list[Broker]:
        reader, writer = await self.network.open_connection(*target)
        try:
            body = request(METADATA, 1, {"topics": []})
            writer.write(encode_request(METADATA, 1, 1, CLIENT_ID, body))
            await writer.drain()
            return decode(METADATA, 1, await read_frame(reader)).brokers()
        finally:
            writer.transport.abort()

    # -- connections ------------------------------------------------------------------------

    def _handler(
        self, node_id: int | None
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            peer = writer.get_extra_info("peername")
            who = show(peer[:2]) if peer else "?"
            try:
                await self._serve(reader, writer, node_id, who)
            except asyncio.CancelledError:
                # Shutting down. Ending normally matters: asyncio's server would log a
                # cancelled handler's exception as an error.
                writer.transport.abort()
            except Exception:
                log.exception("client %s: unexpected error", who)
                writer.transport.abort()

        return handle

    async def _connect(self, targets: list[Target]) -> tuple[Target, Streams] | None:
        for target in targets:
            try:
                streams = await asyncio.wait_for(
                    self.network.open_connection(*target, limit=STREAM_LIMIT),
                    self.connect_timeout,
                )
            except (OSError, TimeoutError) as e:
                log.info("cannot reach broker at %s: %s", show(target), why(e))
                continue
            return target, streams
        return None

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        node_id: int | None,
        who: str,
    ) -> None:
        if node_id is None:
            targets = self.bootstrap_targets()
            what = "bootstrap"
        else:
            targets = [self.brokers[node_id].target]
            what = f"broker {node_id}"
        connected = await self._connect(targets)
        if connected is None:
            log.info("client %s: %s: no broker reachable, closing", who, what)
            writer.transport.abort()
            return
        target, (up_reader, up_writer) = connected
        if node_id is None:
            self._preferred = target
        log.debug("client %s: %s via %s", who, what, show(target))
        conversation = Conversation(
            WATCHED, rewritable=lambda k, v: k not in ADDRESSED or can_rewrite(k, v)
        )
        link = Link(writer, up_writer)
        self._watchdog.register(target, link)
        pumps = [
            asyncio.ensure_future(self._requests(reader, up_writer, conversation, who)),
            asyncio.ensure_future(self._responses(up_reader, writer, conversation, target)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                log.debug("client %s: %s", who, task.result())
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._watchdog.unregister(target, link)
            link.abort()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        conversation: Conversation,
        who: str,
    ) -> str:
        try:
            while data := await reader.read(CHUNK):
                try:
                    frames = conversation.from_client(data)
                except FrameError as e:
                    log.warning("client %s: %s: closing the connection", who, e)
                    return "malformed request"
                if frames:
                    upstream.write(b"".join(frames))
                    await upstream.drain()
        except (ConnectionError, OSError) as e:
            return f"lost: {why(e)}"
        return "client closed the connection"

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        conversation: Conversation,
        target: Target,
    ) -> str:
        try:
            while data := await reader.read(CHUNK):
                try:
                    items = conversation.from_broker(data)
                except FrameError as e:
                    log.warning("broker %s: %s: closing the connection", show(target), e)
                    return "malformed response"
                out = []
                for frame, api in items:
                    if api is not None:
                        rewritten = await self._rewrite(frame, api, target)
                        if rewritten is None:
                            return "answer not rewritable"
                        frame = rewritten
                    out.append(frame)
                if out:
                    client.write(b"".join(out))
                    await client.drain()
        except (ConnectionError, OSError) as e:
            return f"lost: {why(e)}"
        return f"broker {show(target)} closed the connection"

    async def _rewrite(self, frame: bytes, api: tuple[int, int], target: Target) -> bytes | None:
        api_key, api_version = api
        if api_key == API_VERSIONS and (
            not can_rewrite(api_key, api_version) or frame[8:10] != b"\0\0"
        ):
            # An error answer (v0 body whatever the version asked, KIP-511) or a version
            # kio does not know: nothing the gateway would change.
            return frame
        try:
            answer = decode(api_key, api_version, frame)
        except RewriteError as e:
            log.warning("broker %s: %s: closing the connection", show(target), e)
            return None
        await self.ensure(answer.brokers())
        return answer.rewrite(self.locate)

    async def close(self) -> None:
        servers = self._servers + [m.server for m in self.brokers.values()]
        for server in servers:
            server.close()
        tasks = [*self._tasks, *self._watchdog.tasks()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
