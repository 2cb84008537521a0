"""Test support: an in-process `Broker` on its own event loop thread, and a blocking
frame-level client for it.

The broker runs in a thread so that synchronous tests (hypothesis, the stock clients,
plain sockets) can drive it while still reaching into it: `run` executes a coroutine
on the broker's loop, e.g. `broker._answer(frame, peer)`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from pyralog.log import protocol
from pyralog.log.broker import Broker
from pyralog.log.context import BrokerConfig
from pyralog.log.storage import Storage

T = TypeVar("T")


class BrokerThread:
    """A Broker over `data_dir`, listening on 127.0.0.1 (port 0 unless given)."""

    def __init__(self, data_dir: Path, config: BrokerConfig | None = None) -> None:
        self.data_dir = data_dir
        self.config = config or BrokerConfig(initial_rebalance_delay_ms=0)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.storage = Storage(data_dir, self.config.defaults)
        self.storage.open()
        self.broker: Broker = self.run(self._make())
        self.port = 0

    async def _make(self) -> Broker:
        return Broker(self.storage, self.config, self.data_dir)

    def start(self, port: int = 0) -> int:
        bound = self.run(self.broker.start("127.0.0.1", port))
        self.port = bound[0][1]
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        return self.submit(coro).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def tasks(self) -> int:
        """How many tasks the broker's loop has (for leak checks)."""

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        return self.run(count())

    def close(self) -> None:
        try:
            self.run(self.broker.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class FrameClient:
    """A blocking TCP connection that sends request frames and reads response frames."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._correlation = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FrameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_id(self) -> int:
        self._correlation += 1
        return self._correlation

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(
        self, api_key: int, version: int, body: Any, correlation: int | None = None
    ) -> int:
        correlation = self.next_id() if correlation is None else correlation
        self.send(protocol.encode_request(api_key, version, correlation, "pyralog-test", body))
        return correlation

    def read_frame(self) -> bytes | None:
        """One response frame without its size prefix; None when the broker closed."""
        prefix = self._exactly(4)
        if prefix is None:
            return None
        (size,) = struct.unpack(">i", prefix)
        assert 4 <= size <= protocol.MAX_FRAME_BYTES, f"response size prefix {size}"
        frame = self._exactly(size)
        assert frame is not None, "the broker closed mid-response"
        return frame

    def _exactly(self, n: int) -> bytes | None:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if out:
                    raise AssertionError(f"connection closed after {len(out)} of {n} bytes")
                return None
            out += chunk
        return bytes(out)

    def call(self, api_key: int, version: int, data: dict[str, Any]) -> Any:
        """Send one request built from `data` at `version`; the decoded response body."""
        correlation = self.send_request(api_key, version, protocol.request(api_key, version, data))
        frame = self.read_frame()
        assert frame is not None, f"api {api_key} v{version}: the broker closed the connection"
        got, body = protocol.decode_response(api_key, version, frame)
        assert got == correlation
        return body

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the broker closes the connection (without sending more) within timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b""


# -- request data for FrameClient.call (plain dicts, fitted to each version by kio) ------


def create_data(
    name: str, partitions: int, configs: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "topics": [
            {
                "name": name,
                "num_partitions": partitions,
                "replication_factor": -1,
                "assignments": [],
                "configs": [{"name": k, "value": v} for k, v in (configs or {}).items()],
                **extra,
            }
        ],
        "timeout": 30_000,
        "validate_only": False,
    }


def produce_data(
    topic: str, partition: int, records: bytes | None, acks: int = -1, txn: str | None = None
) -> dict[str, Any]:
    return {
        "transactional_id": txn,
        "acks": acks,
        "timeout": 30_000,
        "topic_data": [
            {"name": topic, "partition_data": [{"index": partition, "records": records}]}
        ],
    }


def fetch_data(topic: str, partition: int, offset: int) -> dict[str, Any]:
    return {
        "cluster_id": None,
        "replica_id": -1,
        "max_wait": 0,
        "min_bytes": 0,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {
                        "partition": partition,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "last_fetched_epoch": -1,
                        "log_start_offset": -1,
                        "partition_max_bytes": 1 << 20,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }
