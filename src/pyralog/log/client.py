"""An asyncio client for Pyralog (or any Kafka-protocol broker): produce, fetch, consume.

    client = await PyralogClient.connect("10.0.0.1:9092")
    offset = await client.produce("events", b"hello")
    async for message in client.consume("events", from_beginning=True):
        ...

Pass `network=` (a `pyralog.net.Network`) to run over the embedded WireGuard tunnel,
where kernel sockets do not reach, or `ssl=` (pyralog.log.tls.client_context) for a
broker that listens with TLS. Wire encoding is `kio`'s; this module only says
which requests to send and what their answers mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from pyralog.log.connection import Connection, KafkaError
from pyralog.log.records import Message, build_batch, read_messages
from pyralog.net import Network


def parse_address(address: str, default_port: int = 9092) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' → (host, port), with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        host, port = address, str(default_port)
    host = host.strip("[]")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker address {address!r}: expected host:port")
    return host, int(port)


UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int
    error: int = 0


# Answers that mean "ask the cluster who leads now, then try again there".
RETRIABLE = frozenset({5, 6, 7, 19, 74, 76})  # leader not available, not leader, timed
# out, not enough replicas, fenced / unknown leader epoch
RETRY_FOR = 30.0  # seconds a partition request keeps retrying through a failover
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
ATTEMPT_TIMEOUT = 15.0  # one try of a partition request, connecting included
CONNECT = 3.0
PRODUCE_TIMEOUT_MS = 10_000  # how long a broker may wait for acks=all


class PyralogClient:
    """Topic requests go to the broker it connected to; partition requests (produce,
    fetch, offsets) to the partition's leader, found with Metadata and found again
    when leadership moves (NOT_LEADER_OR_FOLLOWER, a lost connection), retrying for
    up to `RETRY_FOR` seconds. A retried produce whose first answer was lost may be
    stored twice, as with any Kafka client without idempotence."""

    def __init__(
        self,
        conn: Connection,
        bootstrap: tuple[str, int],
        network: Network | None,
        ssl: SSLContext | None = None,
    ):
        self._conn = conn
        self._bootstrap = bootstrap
        self._network = network
        self._ssl = ssl
        self._known: set[str] = set()
        self._client_id = "pyralog-client"
        self._leaders: dict[tuple[str, int], tuple[str, int]] = {}
        self._conns: dict[tuple[str, int], Connection] = {}
        self.retries = 0  # partition requests sent again after a leadership change

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        network: Network | None = None,
        client_id: str = "pyralog-client",
        timeout: float = 10.0,
        ssl: SSLContext | None = None,
    ) -> PyralogClient:
        host, port = parse_address(address)
        conn = await Connection.open(
            host, port, network=network, client_id=client_id, timeout=timeout, ssl=ssl
        )
        client = cls(conn, (host, port), network, ssl)
        client._client_id = client_id
        return client

    @property
    def connection(self) -> Connection:
        return self._conn

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
        await self._conn.close()

    # --- leaders ------------------------------------------------------------------

    async def leader(self, topic: str, partition: int) -> Connection:
        """The connection to the partition's leader, as last learned (for callers that
        build their own requests, such as the mirror)."""
        return await self._leader(topic, partition)

    async def _forget(self, conn: Connection | None) -> None:
        """Drop a connection that failed (not the bootstrap one: topic requests use it)."""
        for address, known in list(self._conns.items()):
            if known is conn:
                del self._conns[address]
                await known.close()

    async def _leader(self, topic: str, partition: int) -> Connection:
        """The connection to the partition's leader (the bootstrap broker when the
        cluster has one broker: it may be reached by another name than it advertises)."""
        key = (topic, partition)
        address = self._leaders.get(key)
        if address is None:
            body = await self._metadata([topic], create=False)
            brokers = {b.node_id: (b.host, b.port) for b in body.brokers}
            for t in body.topics:
                for p in t.partitions:
                    if len(brokers) <= 1:
                        self._leaders[(t.name, p.partition_index)] = self._bootstrap
                    elif p.leader_id in brokers:
                        self._leaders[(t.name, p.partition_index)] = brokers[p.leader_id]
            address = self._leaders.get(key)
            if address is None:
                return self._conn  # unknown or leaderless: the broker will say which
        if address == self._bootstrap:
            return self._conn
        conn = self._conns.get(address)
        if conn is None or conn.closed:
            conn = await Connection.open(
                *address,
                network=self._network,
                client_id=self._client_id,
                timeout=CONNECT,
                ssl=self._ssl,
            )
            self._conns[address] = conn
        return conn

    async def _routed(
        self, topic: str, partition: int, request: Any, timeout: float = ATTEMPT_TIMEOUT
    ) -> Any:
        """`request(conn)` on the leader's connection, again on the new leader after a
        failover. `request` raises KafkaError with the partition's error code. Each
        attempt has `timeout`: a leader killed mid-request may never answer or reset
        (a dead WireGuard peer sends nothing), and its connection is dropped."""
        deadline = time.monotonic() + RETRY_FOR
        attempt = 0
        while True:
            conn: Connection | None = None
            try:
                async with asyncio.timeout(timeout):
                    conn = await self._leader(topic, partition)
                    return await request(conn)
            except (KafkaError, ConnectionError, OSError, TimeoutError) as e:
                if isinstance(e, KafkaError) and e.code not in RETRIABLE:
                    raise
                if time.monotonic() >= deadline:
                    raise
                if not isinstance(e, KafkaError):
                    await self._forget(conn)
                self._leaders.pop((topic, partition), None)
                self.retries += 1
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1

    async def __aenter__(self) -> PyralogClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- topics -------------------------------------------------------------------

    async def topics(
        self, names: Sequence[str] | None = None, *, create: bool = False
    ) -> list[TopicInfo]:
        """Topics and their partition counts (`create`: let the broker auto-create)."""
        body = await self._metadata(names, create=create)
        return [TopicInfo(t.name, len(t.partitions), int(t.error_code)) for t in body.topics]

    async def _metadata(self, names: Sequence[str] | None, *, create: bool) -> Any:
        return await self._conn.call(
            3,
            {
                "topics": None if names is None else [{"name": n} for n in names],
                "allow_auto_topic_creation": create,
                # Required by Metadata v8+ (kio has no default for them).
                "include_cluster_authorized_operations": False,
                "include_topic_authorized_operations": False,
            },
        )

    async def create_topic(
        self, name: str, *, partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        body = await self._conn.call(
            19,
            {
                "topics": [
                    {
                        "name": name,
                        "num_partitions": partitions,
                        "replication_factor": -1,
                        "assignments": [],
                        "configs": [{"name": k, "value": v} for k, v in (configs or {}).items()],
                    }
                ],
                "timeout": 30_000,
                "validate_only": False,
            },
        )
        result = body.topics[0]
        if result.error_code != 0:
            raise KafkaError(
                result.error_code, f"create topic {name!r}", getattr(result, "error_message", None)
            )

    async def delete_topic(self, name: str) -> None:
        body = await self._conn.call(20, {"topic_names": [name], "timeout": 30_000})
        result = body.responses[0]
        if result.error_code != 0:
            raise KafkaError(result.error_code, f"delete topic {name!r}")

    async def describe_topic(self, name: str) -> dict[str, str]:
        body = await self._conn.call(
            32,
            {
                "resources": [
                    {"resource_type": 2, "resource_name": name, "configuration_keys": None}
                ],
                "include_synonyms": False,
            },
        )
        result = body.results[0]
        if result.error_code != 0:
            raise KafkaError(result.error_code, f"describe topic {name!r}", result.error_message)
        return {c.name: c.value for c in result.configs}

    # --- producing ----------------------------------------------------------------

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int = 0,
        acks: int = -1,
    ) -> int:
        """Append one record; returns its offset (-1 with acks=0)."""
        return await self.produce_batch(topic, [(key, value)], partition=partition, acks=acks)

    async def produce_batch(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        *,
        partition: int = 0,
        acks: int = -1,
        compression: str = "none",
    ) -> int:
        """Append (key, value) records as one batch; returns the first one's offset."""
        payload = build_batch(
            records, timestamp_ms=int(time.time() * 1000), compression=compression
        )
        data = {
            "transactional_id": None,
            "acks": acks,
            "timeout": PRODUCE_TIMEOUT_MS,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": partition, "records": payload}]}
            ],
        }

        async def send(conn: Connection) -> int:
            body = await conn.call(0, data, expect=acks != 0)
            if body is None:
                return -1
            result = body.responses[0].partition_responses[0]
            if result.error_code == UNKNOWN_TOPIC_OR_PARTITION and topic not in self._known:
                # As Kafka's clients do: a Metadata request lets the broker auto-create it.
                self._known.add(topic)
                await self.topics([topic], create=True)
                self._leaders.pop((topic, partition), None)
                conn = await self._leader(topic, partition)
                body = await conn.call(0, data)
                result = body.responses[0].partition_responses[0]
            if result.error_code != 0:
                raise KafkaError(
                    result.error_code,
                    f"produce to {topic}-{partition}",
                    getattr(result, "error_message", None),
                )
            return int(result.base_offset)

        return int(await self._routed(topic, partition, send))

    # --- consuming ----------------------------------------------------------------

    async def offsets(self, topic: str, partition: int = 0) -> tuple[int, int]:
        """(earliest, latest) offsets of a partition; latest is the next to be written."""
        return await self._routed(
            topic, partition, lambda c: self._offsets(c, topic, partition), CONNECT + 5
        )

    async def _offsets(self, conn: Connection, topic: str, partition: int) -> tuple[int, int]:
        found = []
        for stamp in (-2, -1):
            body = await conn.call(
                2,
                {
                    "replica_id": -1,
                    "isolation_level": 0,
                    "topics": [
                        {
                            "name": topic,
                            "partitions": [{"partition_index": partition, "timestamp": stamp}],
                        }
                    ],
                },
            )
            result = body.topics[0].partitions[0]
            if result.error_code != 0:
                raise KafkaError(result.error_code, f"offsets of {topic}-{partition}")
            found.append(int(result.offset))
        return found[0], found[1]

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_wait_ms: int = 500,
        max_bytes: int = 1 << 20,
    ) -> list[Message]:
        """Records from `offset` on (waiting up to max_wait_ms for some to arrive)."""

        async def send(conn: Connection) -> list[Message]:
            return await self._fetch(conn, topic, partition, offset, max_wait_ms, max_bytes)

        return list(await self._routed(topic, partition, send, max_wait_ms / 1000 + 5))

    async def _fetch(
        self,
        conn: Connection,
        topic: str,
        partition: int,
        offset: int,
        max_wait_ms: int,
        max_bytes: int,
    ) -> list[Message]:
        body = await conn.call(
            1,
            {
                "replica_id": -1,
                "max_wait": max_wait_ms,
                "min_bytes": 1,
                "max_bytes": max_bytes,
                "isolation_level": 0,
                "session_id": 0,
                "session_epoch": -1,
                "topics": [
                    {
                        "topic": topic,
                        "partitions": [
                            {
                                "partition": partition,
                                "fetch_offset": offset,
                                "partition_max_bytes": max_bytes,
                            }
                        ],
                    }
                ],
                "forgotten_topics_data": [],
                "rack_id": "",
            },
        )
        result = body.responses[0].partitions[0]
        if result.error_code != 0:
            raise KafkaError(result.error_code, f"fetch {topic}-{partition}@{offset}")
        return list(read_messages(topic, partition, result.records or b"", from_offset=offset))

    async def consume(
        self,
        topic: str,
        *,
        partitions: Sequence[int] | None = None,
        from_beginning: bool = False,
        group: str | None = None,
        max_wait_ms: int = 500,
    ) -> AsyncIterator[Message]:
        """Every record of the topic's partitions, as it arrives (forever).

        With `group`, the client joins the consumer group (partitions are shared with the
        group's other members, Kafka-tool members included) and commits what it yields.
        Close the iterator (`contextlib.aclosing`) to commit the last records and leave.
        """
        if group is not None:
            from pyralog.log.member import GroupMember

            member = GroupMember(self._conn, group, [topic])
            stream = member.consume(self, from_beginning=from_beginning, max_wait_ms=max_wait_ms)
            try:
                async with contextlib.aclosing(stream):
                    async for message in stream:
                        yield message
            finally:
                await member.leave()
            return
        if partitions is None:
            info = await self.topics([topic])
            if not info or info[0].error:
                raise KafkaError(info[0].error if info else 3, f"topic {topic!r}")
            partitions = range(info[0].partitions)
        positions = {}
        for p in partitions:
            first, last = await self.offsets(topic, p)
            positions[p] = first if from_beginning else last
        while True:
            batches = await asyncio.gather(
                *(self.fetch(topic, p, positions[p], max_wait_ms=max_wait_ms) for p in positions)
            )
            for p, messages in zip(positions, batches, strict=True):
                for message in messages:
                    positions[p] = message.offset + 1
                    yield message


__all__ = ["KafkaError", "Message", "PyralogClient", "TopicInfo", "parse_address"]
