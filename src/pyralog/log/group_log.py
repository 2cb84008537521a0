"""Consumer groups in a replicated cluster: their state kept in a replicated topic.

As Kafka does, committed offsets and each group's last stable generation (members and
assignments) are records of an internal topic, ``__consumer_offsets``, replicated like
any other. A group belongs to one of its partitions (CRC-32 of the group id); the
leader of that partition is the group's coordinator. When a broker becomes a leader of
one, it reads the partition from the start and takes over its groups (Stable groups
carry on at their generation: their members' heartbeats, commits and fetches work at
the new coordinator as they did at the old one); when it stops leading it, it forgets
them, and clients asking it get NOT_COORDINATOR and look again.

A commit or a group's new generation is answered only once every in-sync replica has
its record (acks=all), so a coordinator killed at any moment loses nothing it
acknowledged. Records (JSON; the topic is ours, no Kafka tool reads it):

- key ``["offset", group, topic, partition]``, value ``{"offset", "metadata",
  "epoch"}``, or null when the topic was deleted;
- key ``["group", group]``, value the snapshot (base64 for member metadata and
  assignments).

The topic is never compacted (Pyralog has no compaction): a new coordinator reads
every commit ever made to its partitions. Fine for the commit rates of consumers
committing every few seconds; a busy cluster would want compaction here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Iterable
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.batch import read_header
from pyralog.log.group_state import GroupSnapshot, SnapshotMember
from pyralog.log.offsets import Committed, OffsetCommit
from pyralog.log.records import build_batch, read_messages
from pyralog.log.topic_config import TopicConfig

log = logging.getLogger("pyralog.log.groups")

TOPIC = "__consumer_offsets"
PARTITIONS = 3
READ_CHUNK = 4 * 1024 * 1024
APPEND_TIMEOUT_MS = 10_000

OffsetKey = tuple[str, str, int]  # group, topic, partition


def partition_for(group_id: str, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(group_id.encode()) % partitions


def topic_config(defaults: TopicConfig) -> TopicConfig:
    # Kept forever (no compaction to shrink it), fsynced at once: commits are few.
    return TopicConfig(
        partitions=PARTITIONS,
        flush="always",
        retention_ms=-1,
        retention_bytes=-1,
        min_insync_replicas=defaults.min_insync_replicas,
    )


# -- records ------------------------------------------------------------------------------


def offset_record(
    group: str, commit: OffsetCommit | None, topic: str = "", partition: int = 0
) -> tuple[bytes, bytes | None]:
    """(key, value) of one committed offset (value None: forgotten)."""
    if commit is not None:
        topic, partition = commit.topic, commit.partition
    key = json.dumps(["offset", group, topic, partition]).encode()
    if commit is None:
        return key, None
    value = {"offset": commit.offset, "metadata": commit.metadata, "epoch": commit.leader_epoch}
    return key, json.dumps(value).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def group_record(snapshot: GroupSnapshot) -> tuple[bytes, bytes]:
    key = json.dumps(["group", snapshot.group_id]).encode()
    value = {
        "generation": snapshot.generation,
        "protocol_type": snapshot.protocol_type,
        "protocol_name": snapshot.protocol_name,
        "leader": snapshot.leader,
        "members": [
            {
                "id": m.member_id,
                "instance": m.group_instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "session": m.session_timeout,
                "rebalance": m.rebalance_timeout,
                "protocols": [[name, _b64(data)] for name, data in m.protocols],
                "assignment": _b64(m.assignment),
            }
            for m in snapshot.members
        ],
    }
    return key, json.dumps(value).encode()


def _snapshot(group_id: str, obj: dict[str, Any]) -> GroupSnapshot:
    members = tuple(
        SnapshotMember(
            str(m["id"]),
            m.get("instance"),
            str(m.get("client_id", "")),
            str(m.get("client_host", "")),
            float(m["session"]),
            float(m["rebalance"]),
            tuple((str(n), base64.b64decode(d)) for n, d in m.get("protocols", [])),
            base64.b64decode(m.get("assignment", "")),
        )
        for m in obj.get("members", [])
    )
    return GroupSnapshot(
        group_id,
        int(obj["generation"]),
        str(obj.get("protocol_type", "")),
        str(obj.get("protocol_name", "")),
        str(obj.get("leader", "")),
        members,
    )


class PartitionGroups:
    """What one `__consumer_offsets` partition says: committed offsets, group snapshots."""

    def __init__(self) -> None:
        self.offsets: dict[OffsetKey, Committed] = {}
        self.groups: dict[str, GroupSnapshot] = {}
        self.bad = 0  # records that could not be read (logged, skipped)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            kind = json.loads(key or b"null")
            if kind[0] == "offset":
                group, topic, partition = str(kind[1]), str(kind[2]), int(kind[3])
                if value is None:
                    self.offsets.pop((group, topic, partition), None)
                else:
                    obj = json.loads(value)
                    self.offsets[(group, topic, partition)] = Committed(
                        int(obj["offset"]), obj.get("metadata"), int(obj.get("epoch", -1))
                    )
            elif kind[0] == "group":
                group = str(kind[1])
                if value is None:
                    self.groups.pop(group, None)
                else:
                    self.groups[group] = _snapshot(group, json.loads(value))
            else:
                raise ValueError(f"unknown record kind {kind[0]!r}")
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self.bad += 1
            if self.bad <= 3:
                log.error("%s: skipping an unreadable record: %s", TOPIC, e)

    def group_ids(self) -> set[str]:
        return set(self.groups) | {g for g, _, _ in self.offsets}


def replay(partition_log: Any) -> PartitionGroups:
    """Every record of the partition, from its start to its end (blocking IO)."""
    state = PartitionGroups()
    offset = partition_log.log_start_offset
    end = partition_log.log_end_offset
    while offset < end:
        data = partition_log.read(offset, READ_CHUNK, limit=end)
        if not data:
            break
        for message in read_messages(TOPIC, partition_log.partition, data, from_offset=offset):
            state.apply(message.key, message.value)
        at, last = 0, offset
        while at < len(data):
            header = read_header(data, at)
            last = header.next_offset
            at += header.size
        offset = max(last, offset + 1)
    return state


class GroupLog:
    """The groups' partitions this broker leads: loaded state, and appends to them."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.states: dict[int, PartitionGroups] = {}  # loaded partitions
        self.loading: dict[int, asyncio.Task[None]] = {}

    def status(self, group_id: str) -> E:
        """NONE if this broker coordinates the group now, else the error telling the
        client to look again (or wait for the load)."""
        k = partition_for(group_id)
        if k in self.states:
            return E.none
        if k in self.loading:
            return E.coordinator_load_in_progress
        return E.not_coordinator

    async def ensure_topic(self) -> E:
        rep = self.ctx.replication
        if TOPIC in rep.cluster.view.topics:
            return E.none
        created = await rep.create_topic(TOPIC, topic_config(self.ctx.config.defaults))
        return created if isinstance(created, E) else E.none

    def coordinator_of(self, group_id: str) -> int | None:
        """The broker id leading the group's partition, None if none does."""
        leader = self.ctx.replication.cluster.view.leader_of(TOPIC, partition_for(group_id))
        return leader if leader is not None and leader >= 0 else None

    # -- leadership changes -----------------------------------------------------------

    def led(self, k: int, load: Any) -> None:
        """This broker leads partition `k` now: read it, then `load(state)` restores it."""
        if k in self.states or k in self.loading:
            return
        self.loading[k] = asyncio.create_task(self._load(k, load))

    async def _load(self, k: int, load: Any) -> None:
        live = self.ctx.partition(TOPIC, k)
        started = time.monotonic()
        try:
            state = await self.ctx.run_io(replay, live.log)
        except Exception as e:
            log.error("%s-%d: cannot read the groups' state: %s", TOPIC, k, e)
            self.loading.pop(k, None)
            return
        if self.loading.pop(k, None) is None or live.leader is None:
            return  # lost the leadership meanwhile
        self.states[k] = state
        load(state)
        log.info(
            "%s-%d: coordinating %d groups (%d committed offsets) after reading %d records "
            "in %.2f s",
            TOPIC,
            k,
            len(state.group_ids()),
            len(state.offsets),
            live.log.log_end_offset - live.log.log_start_offset,
            time.monotonic() - started,
        )

    def lost(self, k: int) -> set[str]:
        """This broker no longer leads `k`: the groups it must forget."""
        task = self.loading.pop(k, None)
        if task is not None:
            task.cancel()
        state = self.states.pop(k, None)
        return state.group_ids() if state is not None else set()

    # -- writes ---------------------------------------------------------------------------

    async def append(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> E:
        """Write records of the group's partition and wait for every in-sync replica."""
        from pyralog.log.handlers import produce

        k = partition_for(group_id)
        live = self.ctx.partition(TOPIC, k)
        if live is None or k not in self.states:
            return E.not_coordinator
        leader = self.ctx.replication.leader_of(live)
        if leader is None:
            return E.not_coordinator
        if len(leader.isr) < live.log.config.min_insync_replicas:
            return E.coordinator_not_available
        payload = build_batch(records, timestamp_ms=int(time.time() * 1000))
        result = await produce._append(self.ctx, live, k, payload, read_header(payload, 0))
        if result["error_code"] == E.none:
            result = await produce._await_replicas(live, leader, result, APPEND_TIMEOUT_MS)
        code = E(result["error_code"])
        if code == E.none:
            state = self.states.get(k)
            if state is not None:
                for key, value in records:
                    state.apply(key, value)
            return E.none
        log.warning("%s-%d: %s", TOPIC, k, result.get("error_message"))
        if code in (E.not_leader_or_follower, E.request_timed_out, E.not_enough_replicas):
            return (
                E.not_coordinator
                if code == E.not_leader_or_follower
                else (E.coordinator_not_available)
            )
        return code

    async def commit(self, group_id: str, commits: Iterable[OffsetCommit]) -> E:
        return await self.append(group_id, [offset_record(group_id, c) for c in commits])

    async def save_group(self, snapshot: GroupSnapshot) -> E:
        return await self.append(snapshot.group_id, [group_record(snapshot)])

    async def topic_deleted(self, topic: str) -> None:
        for state in list(self.states.values()):
            doomed = [key for key in state.offsets if key[1] == topic]
            by_group: dict[str, list[tuple[bytes, bytes | None]]] = {}
            for group, t, p in doomed:
                by_group.setdefault(group, []).append(offset_record(group, None, t, p))
            for group, records in by_group.items():
                with contextlib.suppress(Exception):
                    await self.append(group, records)

    # -- reads ----------------------------------------------------------------------------

    def fetch(self, group_id: str, topic: str, partition: int) -> Committed | None:
        state = self.states.get(partition_for(group_id))
        return None if state is None else state.offsets.get((group_id, topic, partition))

    def fetch_group(self, group_id: str) -> dict[tuple[str, int], Committed]:
        state = self.states.get(partition_for(group_id))
        if state is None:
            return {}
        return {(t, p): c for (g, t, p), c in state.offsets.items() if g == group_id}
