"""One client connection to a Kafka-protocol broker: pipelined, versions negotiated."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl as _ssl
from typing import Any

from pyralog.log import protocol
from pyralog.net import Network

# The version the client speaks for each api, when the broker offers it (kio encodes).
PREFERRED = {
    0: 8,  # Produce
    1: 11,  # Fetch
    2: 5,  # ListOffsets
    3: 8,  # Metadata
    8: 7,  # OffsetCommit
    9: 5,  # OffsetFetch
    10: 2,  # FindCoordinator
    11: 5,  # JoinGroup
    12: 3,  # Heartbeat
    13: 3,  # LeaveGroup
    14: 3,  # SyncGroup
    18: 3,  # ApiVersions
    19: 5,  # CreateTopics
    20: 4,  # DeleteTopics
    22: 1,  # InitProducerId
    23: 4,  # OffsetsForLeaderEpoch
    32: 1,  # DescribeConfigs
}


CLOSE_TIMEOUT = 1.0


class KafkaError(Exception):
    """A broker's error code, with the api and what it was about."""

    def __init__(self, code: int, context: str, message: str | None = None) -> None:
        self.code = int(code)
        detail = f": {message}" if message else ""
        super().__init__(f"{context}: {protocol.error_name(self.code)}{detail}")


class ConnectionClosed(ConnectionError):
    pass


class Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_id: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._client_id = client_id
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[int, int, asyncio.Future[Any]]] = {}
        self._lock = asyncio.Lock()
        self.versions: dict[int, tuple[int, int]] = {}
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        network: Network | None = None,
        client_id: str = "pyralog",
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> Connection:
        """Connect (with TLS when `ssl` is given: kernel sockets only, since a
        `network` is a WireGuard tunnel, which already encrypts) and negotiate versions."""
        if ssl is not None and network is not None:
            raise ValueError("TLS over a pyralog.net network: WireGuard already encrypts it")
        async with asyncio.timeout(timeout):
            if network is None:
                reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
            else:
                reader, writer = await network.open_connection(host, port)
            conn = cls(reader, writer, client_id)
            try:
                await conn._negotiate()
            except BaseException:
                await conn.close()
                raise
        return conn

    async def _negotiate(self) -> None:
        self.versions = {18: (0, 3)}
        body = await self.call(
            18, {"client_software_name": "pyralog", "client_software_version": "1"}
        )
        if body.error_code != 0:
            raise KafkaError(body.error_code, "ApiVersions")
        self.versions = {a.api_key: (a.min_version, a.max_version) for a in body.api_keys}

    def version(self, api_key: int) -> int:
        span = self.versions.get(api_key)
        want = PREFERRED[api_key]
        if span is None or span[0] > want:
            raise KafkaError(35, f"api {api_key}", "the broker does not offer a version we speak")
        return min(want, span[1])

    async def call(self, api_key: int, data: dict[str, Any], *, expect: bool = True) -> Any:
        """Send one request and wait for its response (None if `expect` is False)."""
        version = self.version(api_key)
        correlation = next(self._ids)
        frame = protocol.encode_request(
            api_key,
            version,
            correlation,
            self._client_id,
            protocol.request(api_key, version, data),
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if expect:
            self._pending[correlation] = (api_key, version, future)
        async with self._lock:
            if self._receiver.done():
                raise ConnectionClosed("connection to the broker is closed")
            self._writer.write(frame)
            await self._writer.drain()
        if not expect:
            return None
        return await future

    async def _receive(self) -> None:
        error: BaseException = ConnectionClosed("the broker closed the connection")
        try:
            while True:
                size = protocol.frame_size(await self._reader.readexactly(4), minimum=4)
                frame = await self._reader.readexactly(size)
                correlation = int.from_bytes(frame[:4], "big", signed=True)
                entry = self._pending.pop(correlation, None)
                if entry is None:
                    raise protocol.MalformedRequest(f"response to unknown request {correlation}")
                api_key, version, future = entry
                _, body = protocol.decode_response(api_key, version, frame)
                if not future.done():
                    future.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except protocol.MalformedRequest as e:
            error = ConnectionClosed(str(e))
        finally:
            for _, _, future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._receiver.done()

    async def close(self) -> None:
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._receiver
        self._writer.close()
        # Bounded: towards a peer that died, a TCP close may wait for an answer that
        # never comes (the embedded stack retransmits its FIN for a long while).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
