"""A consumer-group member for the Pyralog client ("consumer" protocol, range assignor).

Interoperates with Kafka clients in the same group: subscriptions and assignments use
Kafka's ConsumerProtocol encoding (kio's schemas, after the 2-byte version Kafka puts in
front), and the leader assigns partitions by ranges, as Kafka's RangeAssignor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from kio.schema.consumer_protocol_assignment.v0.data import ConsumerProtocolAssignment
from kio.schema.consumer_protocol_subscription.v0.data import ConsumerProtocolSubscription
from kio.serial import entity_reader, entity_writer

from pyralog.log import protocol
from pyralog.log.connection import Connection, KafkaError
from pyralog.log.records import Message

if TYPE_CHECKING:
    from pyralog.log.client import PyralogClient

MEMBER_ID_REQUIRED = 79
REJOIN = {22, 25, 27}  # illegal generation, unknown member, rebalance in progress


def encode_subscription(topics: Sequence[str]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">h", 0))
    entity_writer(ConsumerProtocolSubscription)(
        out, ConsumerProtocolSubscription(topics=tuple(topics), user_data=None)
    )
    return out.getvalue()


def decode_subscription(data: bytes) -> list[str]:
    # Newer versions only append fields, so reading the v0 prefix is enough.
    sub, _ = entity_reader(ConsumerProtocolSubscription)(data, 2)
    return list(sub.topics)


def encode_assignment(partitions: dict[str, list[int]]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">h", 0))
    value = protocol.build(
        ConsumerProtocolAssignment,
        {
            "assigned_partitions": [{"topic": t, "partitions": p} for t, p in partitions.items()],
            "user_data": None,
        },
    )
    entity_writer(ConsumerProtocolAssignment)(out, value)
    return out.getvalue()


def decode_assignment(data: bytes) -> dict[str, list[int]]:
    if len(data) < 2:
        return {}
    value, _ = entity_reader(ConsumerProtocolAssignment)(data, 2)
    return {tp.topic: list(tp.partitions) for tp in value.assigned_partitions}


def range_assign(
    subscriptions: dict[str, list[str]], partitions: dict[str, int]
) -> dict[str, dict[str, list[int]]]:
    """Kafka's range assignor: per topic, consecutive ranges to members in id order."""
    out: dict[str, dict[str, list[int]]] = {m: {} for m in subscriptions}
    for topic, count in partitions.items():
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        if not members:
            continue
        share, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            n = share + (1 if i < extra else 0)
            out[member][topic] = list(range(start, start + n))
            start += n
    return out


class GroupMember:
    def __init__(
        self, conn: Connection, group: str, topics: Sequence[str], *, session_ms: int = 10_000
    ) -> None:
        self._conn = conn
        self.group = group
        self.topics = list(topics)
        self.session_ms = session_ms
        self.member_id = ""
        self.generation = -1
        self.assignment: dict[str, list[int]] = {}
        self._rejoin = asyncio.Event()

    async def join(self, client: PyralogClient) -> None:
        while True:
            body = await self._conn.call(
                11,
                {
                    "group_id": self.group,
                    "session_timeout": self.session_ms,
                    "rebalance_timeout": 30_000,
                    "member_id": self.member_id,
                    "group_instance_id": None,
                    "protocol_type": "consumer",
                    "protocols": [{"name": "range", "metadata": encode_subscription(self.topics)}],
                },
            )
            if body.error_code == MEMBER_ID_REQUIRED:
                self.member_id = body.member_id
                continue
            if body.error_code in (25,):
                self.member_id = ""
                continue
            if body.error_code == 27:
                continue
            if body.error_code != 0:
                raise KafkaError(body.error_code, f"join group {self.group!r}")
            self.member_id, self.generation = body.member_id, body.generation_id
            assignments: list[dict[str, Any]] = []
            if body.leader == body.member_id:
                subs = {m.member_id: decode_subscription(m.metadata) for m in body.members}
                wanted = sorted({t for topics in subs.values() for t in topics})
                counts = {t.name: t.partitions for t in await client.topics(wanted) if not t.error}
                plan = range_assign(subs, counts)
                assignments = [
                    {"member_id": m, "assignment": encode_assignment(p)} for m, p in plan.items()
                ]
            sync = await self._conn.call(
                14,
                {
                    "group_id": self.group,
                    "generation_id": self.generation,
                    "member_id": self.member_id,
                    "group_instance_id": None,
                    "assignments": assignments,
                },
            )
            if sync.error_code in REJOIN:
                continue
            if sync.error_code != 0:
                raise KafkaError(sync.error_code, f"sync group {self.group!r}")
            self.assignment = decode_assignment(sync.assignment)
            self._rejoin.clear()
            return

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.session_ms / 3000)
            body = await self._conn.call(
                12,
                {
                    "group_id": self.group,
                    "generation_id": self.generation,
                    "member_id": self.member_id,
                    "group_instance_id": None,
                },
            )
            if body.error_code in REJOIN:
                self._rejoin.set()

    async def committed(self) -> dict[tuple[str, int], int]:
        body = await self._conn.call(
            9,
            {
                "group_id": self.group,
                "topics": [{"name": t, "partition_indexes": p} for t, p in self.assignment.items()],
            },
        )
        if getattr(body, "error_code", 0):
            raise KafkaError(body.error_code, f"offsets of group {self.group!r}")
        return {
            (t.name, p.partition_index): int(p.committed_offset)
            for t in body.topics
            for p in t.partitions
        }

    async def commit(self, positions: dict[tuple[str, int], int]) -> None:
        topics: dict[str, list[dict[str, Any]]] = {}
        for (topic, partition), offset in positions.items():
            topics.setdefault(topic, []).append(
                {
                    "partition_index": partition,
                    "committed_offset": offset,
                    "committed_leader_epoch": -1,
                    "committed_metadata": None,
                }
            )
        body = await self._conn.call(
            8,
            {
                "group_id": self.group,
                "generation_id_or_member_epoch": self.generation,
                "member_id": self.member_id,
                "group_instance_id": None,
                "topics": [{"name": t, "partitions": p} for t, p in topics.items()],
            },
        )
        for t in body.topics:
            for p in t.partitions:
                if p.error_code in REJOIN:
                    self._rejoin.set()
                elif p.error_code != 0:
                    raise KafkaError(p.error_code, f"commit {t.name}-{p.partition_index}")

    async def consume(
        self, client: PyralogClient, *, from_beginning: bool, max_wait_ms: int
    ) -> AsyncIterator[Message]:
        """Records of the assigned partitions; what was yielded is committed (after each
        fetch, and when the consumer stops), so the group resumes after it."""
        beat: asyncio.Task[None] | None = None
        positions: dict[tuple[str, int], int] = {}
        uncommitted = False
        try:
            while True:
                await self.join(client)
                if beat is None or beat.done():
                    beat = asyncio.create_task(self._heartbeat())
                positions = {}
                for key, offset in (await self.committed()).items():
                    if offset < 0:
                        first, last = await client.offsets(*key)
                        offset = first if from_beginning else last
                    positions[key] = offset
                while not self._rejoin.is_set():
                    if not positions:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(max_wait_ms / 1000):
                                await self._rejoin.wait()
                        continue
                    keys = list(positions)
                    fetched = await asyncio.gather(
                        *(
                            client.fetch(t, p, positions[(t, p)], max_wait_ms=max_wait_ms)
                            for t, p in keys
                        )
                    )
                    for key, messages in zip(keys, fetched, strict=True):
                        for message in messages:
                            positions[key] = message.offset + 1
                            uncommitted = True
                            yield message
                    if uncommitted:
                        await self.commit(positions)
                        uncommitted = False
        finally:
            if uncommitted and not self._conn.closed:
                with contextlib.suppress(Exception):
                    await self.commit(positions)
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await beat

    async def leave(self) -> None:
        if not self.member_id or self._conn.closed:
            return
        with contextlib.suppress(Exception):
            await self._conn.call(
                13,
                {
                    "group_id": self.group,
                    "member_id": self.member_id,
                    "members": [{"member_id": self.member_id, "group_instance_id": None}],
                },
            )
