"""The Kafka-protocol broker: one asyncio server over any `pyralog.net.Network`.

Per connection, a reader task splits frames (bounded size, bounded read-ahead so a
pipelining client cannot queue unbounded memory) and the connection's loop answers
them strictly in order, one at a time, as Kafka does. A frame that cannot be a request
closes that connection only; an unsupported version gets Kafka's error where the
protocol has one. Storage never blocks the loop (see `Context.run_io`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log import protocol
from pyralog.log.cluster_state import BrokerRecord
from pyralog.log.context import BrokerConfig, Context
from pyralog.log.controller import HEARTBEAT, SESSION_TIMEOUT, Cluster
from pyralog.log.errors import StorageError
from pyralog.log.group_service import GroupService
from pyralog.log.handlers import API, SUPPORTED, error_response
from pyralog.log.handlers.meta import api_list
from pyralog.log.replication import REPLICA_LAG_MAX, Replication
from pyralog.log.storage import Storage
from pyralog.mesh.store import Store
from pyralog.net import Network

log = logging.getLogger("pyralog.log.broker")

# Frames read ahead of the one being answered (librdkafka pipelines deeply); reading
# stops at this many frames or bytes until the answers catch up, so one connection
# holds at most one more frame beyond the byte bound.
READ_AHEAD = 64
READ_AHEAD_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 4096
METADATA_KEY = 3


class Broker:
    """A single-node broker serving `storage`."""

    def __init__(
        self,
        storage: Storage,
        config: BrokerConfig,
        data_dir: Path,
        *,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        """`admit(peer_host)` decides who may connect (the mesh's role policy); the rest
        are closed before a byte is read."""
        self.ctx = Context(storage, config, data_dir)
        self._admit = admit
        self.ctx.groups = GroupService(self.ctx, data_dir / "groups.sqlite")
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        self._said_fenced = False

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(
        self,
        host: str,
        port: int,
        network: Network | None = None,
        *,
        ssl: SSLContext | None = None,
    ) -> list[tuple[str, int]]:
        """Listen on host:port through `network`, or plain kernel sockets without one
        (with TLS when `ssl` is given: pyralog.log.tls.server_context)."""
        if ssl is not None and network is not None:
            raise ValueError("TLS over a pyralog.net network: WireGuard already encrypts it")
        if network is None:
            server = await asyncio.start_server(self._accept, host, port, ssl=ssl)
        else:
            server = await network.start_server(self._accept, host, port)
        self._servers.append(server)
        if not self._tasks:
            try:
                self.ctx.producer_ids.check()
            except ValueError as e:
                raise StorageError(str(e)) from None
            self.ctx.groups.start()
            self._tasks.append(asyncio.create_task(self._housekeeping()))
        return [s.getsockname()[:2] for s in server.sockets]

    async def join_cluster(
        self,
        store: Store,
        *,
        network: Network | None = None,
        region: str | None = None,
        session_timeout: float = SESSION_TIMEOUT,
        heartbeat: float = HEARTBEAT,
        lag_max: float = REPLICA_LAG_MAX,
        default_replication_factor: int = 3,
        ssl: SSLContext | None = None,
    ) -> Replication:
        """Serve replicated topics with the other brokers sharing `store` (call after
        start). Replicas reach each other at the advertised addresses, over `network`
        (with TLS when `ssl`, a client context, is given)."""
        cfg = self.ctx.config
        me = BrokerRecord(cfg.node_id, cfg.advertised_host, cfg.advertised_port, "", region)
        cluster = Cluster(store, me, heartbeat=heartbeat, session_timeout=session_timeout)
        replication = Replication(
            self.ctx,
            cluster,
            network,
            lag_max=lag_max,
            default_replication_factor=default_replication_factor,
            ssl=ssl,
        )
        self.ctx.replication = replication
        self.ctx.groups.replicate()
        replication.role_listeners.append(self.ctx.groups.on_role)
        try:
            await replication.start()
        except BaseException:
            self.ctx.replication = None
            raise
        return replication

    async def close(self) -> None:
        if self.ctx.replication is not None:
            with contextlib.suppress(Exception):
                await self.ctx.replication.close()
        for server in self._servers:
            server.close()
        for task in [*self._connections, *self._tasks]:
            task.cancel()
        for task in [*self._connections, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await self.ctx.groups.close()
        await self.ctx.run_io(self.ctx.storage.close)
        self.ctx.close()

    async def _housekeeping(self) -> None:
        cfg = self.ctx.config
        next_retention = time.monotonic()
        while True:
            await asyncio.sleep(cfg.flush_check_ms / 1000)
            now_ms = int(time.time() * 1000)
            try:
                await self.ctx.run_io(self.ctx.storage.maybe_flush, now_ms)
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + cfg.retention_check_ms / 1000
                    await self.ctx.run_io(self.ctx.storage.enforce_retention, now_ms)
            except StorageError as e:
                self.ctx.log_storage_error(e)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        if self._admit is not None and not self._admit(str(peer[0])):
            log.info("refused a connection from %s: the mesh policy does not permit it", peer)
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, tuple(peer[:2]))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels every connection. Ending the task normally matters: Python
            # 3.11's start_server callback calls task.exception() on it, which raises for
            # a cancelled task and prints a traceback per open connection at shutdown.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: tuple[Any, ...]
    ) -> None:
        frames = _Inbox()
        reading = asyncio.create_task(self._read_frames(reader, frames, peer))
        try:
            while True:
                frame = await frames.get()
                if frame is None:
                    return
                out = await self._answer(frame, peer)
                if out is None:
                    continue
                writer.write(out)
                await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _read_frames(
        self,
        reader: asyncio.StreamReader,
        frames: _Inbox,
        peer: tuple[Any, ...],
    ) -> None:
        try:
            while True:
                prefix = await reader.readexactly(4)
                size = protocol.frame_size(prefix)
                await frames.room()
                await frames.put(await reader.readexactly(size))
        except protocol.MalformedRequest as e:
            log.info("closing connection from %s: %s", peer, e)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await frames.put(None)

    async def _answer(self, frame: bytes, peer: tuple[Any, ...]) -> bytes | None:
        """The encoded answer to one frame, None for no answer; closes on garbage."""
        try:
            request = protocol.decode_request(frame, SUPPORTED)
            request = dataclasses.replace(request, peer_host=str(peer[0]))
        except protocol.UnsupportedVersion as e:
            return self._unsupported(e, frame, peer)
        except protocol.MalformedRequest as e:
            log.info("closing connection from %s: malformed request: %s", peer, e)
            raise ConnectionResetError(str(e)) from None
        if request.api_key == METADATA_KEY and self._fenced():
            # Cut off from the cluster store, this broker's view is stale: it may name
            # itself leader of partitions the cluster has handed to another broker, and
            # a client told so keeps asking it (librdkafka asks the brokers it is
            # connected to) and never finds the new leader. Closing makes it ask another.
            if not self._said_fenced:
                self._said_fenced = True
                log.warning("fenced: closing connections that ask for metadata (stale view)")
            raise ConnectionResetError("fenced: no metadata from a stale view")
        handler = API[request.api_key].handle
        try:
            data = await handler(self.ctx, request)
        except Exception:
            # A handler bug must not take the broker down; the client sees a closed
            # connection and retries, the operator sees the traceback.
            log.exception("api %s v%s failed", request.api_key, request.api_version)
            raise ConnectionResetError("handler failed") from None
        if data is None:
            return None
        body = protocol.response(request.api_key, request.api_version, data)
        return protocol.encode_response(
            request.api_key, request.api_version, request.correlation_id, body
        )

    def _fenced(self) -> bool:
        replication = self.ctx.replication
        fenced = replication is not None and replication.cluster.fenced
        self._said_fenced = self._said_fenced and fenced
        return fenced

    def _unsupported(
        self, e: protocol.UnsupportedVersion, frame: bytes, peer: tuple[Any, ...]
    ) -> bytes:
        if e.api_key == protocol.API_VERSIONS_KEY:
            # KIP-511: answer an unknown ApiVersions version with v0 and our ranges.
            body = protocol.response(
                18, 0, {"error_code": E.unsupported_version, "api_keys": api_list()}
            )
            return protocol.encode_response(18, 0, e.correlation_id, body)
        try:
            # A version kio knows but this broker does not serve: Kafka's error code in
            # that version's response, on every entry where it has no top-level one
            # (so the request is decoded with that version's schema to name them).
            request = protocol.decode_request(frame, {e.api_key: (e.api_version, e.api_version)})
            message = f"api {e.api_key} v{e.api_version} is not supported"
            data = error_response(e.api_key, request.body, E.unsupported_version, message)
            body = protocol.response(e.api_key, e.api_version, data)
            return protocol.encode_response(e.api_key, e.api_version, e.correlation_id, body)
        except Exception:
            log.info(
                "closing connection from %s: api %s v%s is not supported",
                peer,
                e.api_key,
                e.api_version,
            )
            raise ConnectionResetError("unsupported api version") from None


class _Inbox:
    """Frames read ahead on one connection, bounded by count and by bytes."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(READ_AHEAD)
        self._bytes = 0
        self._drained = asyncio.Event()

    async def room(self) -> None:
        while self._bytes > READ_AHEAD_BYTES:
            self._drained.clear()
            await self._drained.wait()

    async def put(self, frame: bytes | None) -> None:
        if frame is not None:
            self._bytes += len(frame)
        await self._queue.put(frame)

    async def get(self) -> bytes | None:
        frame = await self._queue.get()
        if frame is not None:
            self._bytes -= len(frame)
            self._drained.set()
        return frame
