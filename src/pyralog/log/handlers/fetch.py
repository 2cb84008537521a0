"""Fetch (with max_wait/min_bytes long polling) and ListOffsets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.context import Context, LivePartition
from pyralog.log.errors import OffsetOutOfRange
from pyralog.log.protocol import Request, ms

LATEST = -1
EARLIEST = -2
# Kafka's broker-side fetch.max.bytes: one response holds at most this much, whatever
# the request's max_bytes (a request naming one partition many times, each with a big
# partition_max_bytes, would otherwise build a response of gigabytes in memory).
FETCH_MAX_BYTES = 55 * 1024 * 1024


async def fetch(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    replica = body.replica_id if body.replica_id >= 0 else None
    if replica is not None:
        rep = ctx.replication
        if rep is None or not rep.check_replica(replica, req.peer_host):
            return {
                "throttle_time": 0,
                "error_code": E.cluster_authorization_failed,
                "session_id": 0,
                "responses": [],
            }
        for topic in body.topics:
            for p in topic.partitions:
                live, code = _served(ctx, topic.topic, p.partition, p)
                if (
                    live is not None
                    and code == E.none
                    and p.fetch_offset <= live.log.log_end_offset
                ):
                    # Its fetch offset is its log end: this may move the high watermark.
                    rep.on_replica_fetch(live, replica, p.fetch_offset)
    wait_s = max(0, ms(body.max_wait)) / 1000
    deadline = time.monotonic() + wait_s
    while True:
        topics, size, waiters, failed = _collect(ctx, body, replica is not None)
        remaining = deadline - time.monotonic()
        if size >= body.min_bytes or failed or remaining <= 0 or not waiters:
            for w in waiters:
                w.cancel()
            return {"throttle_time": 0, "error_code": E.none, "session_id": 0, "responses": topics}
        try:
            async with asyncio.timeout(remaining):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for w in waiters:
                w.cancel()


def _served(ctx: Context, topic: str, index: int, p: Any) -> tuple[LivePartition | None, int]:
    """The partition (None if this broker holds none) and E.none if this broker may
    answer for it now, else the error that tells the client to look again."""
    live = ctx.partition(topic, index)
    if live is None:
        return None, ctx.missing(topic, index)
    return live, _leading(ctx, live, p)


def _leading(ctx: Context, live: LivePartition, p: Any) -> E:
    """E.none if this broker may serve the partition as its leader at the epoch the
    fetcher names (-1: any), else the error that tells it to look again."""
    if ctx.replication is None:
        return E.none
    leader = ctx.replication.leader_of(live)
    if leader is None:
        return E.not_leader_or_follower
    asked = getattr(p, "current_leader_epoch", -1)
    if 0 <= asked < leader.epoch:
        return E.fenced_leader_epoch
    if asked > leader.epoch:
        return E.unknown_leader_epoch
    return E.none


def _collect(
    ctx: Context, body: Any, replica: bool = False
) -> tuple[list[dict[str, Any]], int, list[asyncio.Future[None]], bool]:
    """One pass over the request's partitions: data, bytes, what to wait on, any error."""
    max_bytes = min(body.max_bytes, FETCH_MAX_BYTES) if body.max_bytes > 0 else FETCH_MAX_BYTES
    total = 0
    failed = False
    waiters: list[asyncio.Future[None]] = []
    topics = []
    for topic in body.topics:
        parts = []
        for p in topic.partitions:
            live, code = _served(ctx, topic.topic, p.partition, p)
            entry, data = _read(live, code, p, max(0, max_bytes - total), replica)
            if entry["error_code"] != E.none:
                failed = True
            elif not data and live is not None:
                waiters.append(live.waiter())
            total += len(data)
            entry["records"] = data
            parts.append(entry)
        topics.append({"topic": topic.topic, "partitions": parts})
    return topics, total, waiters, failed


def _read(
    live: LivePartition | None, code: int, p: Any, budget: int, replica: bool
) -> tuple[dict[str, Any], bytes]:
    entry: dict[str, Any] = {
        "partition_index": p.partition,
        "error_code": E.none,
        "high_watermark": -1,
        "last_stable_offset": -1,
        "log_start_offset": -1,
        "aborted_transactions": None,
        "preferred_read_replica": -1,
    }
    if live is None or code != E.none:
        entry["error_code"] = code
        return entry, b""
    log = live.log
    hw = log.high_watermark
    # No transactions: the last stable offset is the high watermark.
    entry.update(high_watermark=hw, last_stable_offset=hw, log_start_offset=log.log_start_offset)
    limit = min(p.partition_max_bytes, budget) if budget > 0 else 0
    if limit <= 0:
        return entry, b""
    try:
        # A follower copies everything; consumers see only what is committed.
        data = log.read(p.fetch_offset, limit, limit=log.log_end_offset if replica else None)
    except OffsetOutOfRange:
        entry["error_code"] = E.offset_out_of_range
        return entry, b""
    return entry, data


async def list_offsets(ctx: Context, req: Request) -> dict[str, Any]:
    topics = []
    for topic in req.body.topics:
        parts = []
        for p in topic.partitions:
            live, code = _served(ctx, topic.name, p.partition_index, p)
            entry: dict[str, Any] = {
                "partition_index": p.partition_index,
                "error_code": code,
                "timestamp": -1,
                "offset": -1,
                "leader_epoch": live.leader.epoch if live and live.leader else 0,
            }
            if live is not None and code == E.none:
                _list_offset(live, p.timestamp, entry)
            parts.append(entry)
        topics.append({"name": topic.name, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}


def _list_offset(live: LivePartition, timestamp: int, entry: dict[str, Any]) -> None:
    if timestamp == LATEST:
        entry["offset"] = live.log.high_watermark
    elif timestamp == EARLIEST:
        entry["offset"] = live.log.log_start_offset
    elif timestamp < 0:
        entry["error_code"] = E.invalid_request
    else:
        found = live.log.offset_for_time(timestamp)
        if found is not None:
            entry["offset"], entry["timestamp"] = found


async def offsets_for_leader_epoch(ctx: Context, req: Request) -> dict[str, Any]:
    """Where each asked epoch ended in the leader's log (KIP-101): how a follower, or a
    consumer that saw a leader change (KIP-320), finds where logs diverged."""
    topics = []
    for topic in req.body.topics:
        parts = []
        for p in topic.partitions:
            live, code = _served(ctx, topic.topic, p.partition, p)
            entry: dict[str, Any] = {
                "error_code": code,
                "partition": p.partition,
                "leader_epoch": -1,
                "end_offset": -1,
            }
            if live is not None and code == E.none:
                epoch, end = live.log.end_offset_for_epoch(p.leader_epoch)
                consumer = getattr(req.body, "replica_id", -1) < 0
                if consumer and ctx.replication is not None and epoch == live.log.leader_epoch:
                    # The current epoch's end, for a consumer, is what is committed.
                    end = live.log.high_watermark
                entry["leader_epoch"], entry["end_offset"] = epoch, end
            parts.append(entry)
        topics.append({"topic": topic.topic, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}
