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
    wait_s = max(0, ms(body.max_wait)) / 1000
    deadline = time.monotonic() + wait_s
    while True:
        topics, size, waiters, failed = _collect(ctx, body)
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


def _collect(
    ctx: Context, body: Any
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
            live = ctx.partition(topic.topic, p.partition)
            entry, data = _read(live, p, max(0, max_bytes - total))
            if entry["error_code"] != E.none:
                failed = True
            elif not data and live is not None:
                waiters.append(live.waiter())
            total += len(data)
            entry["records"] = data
            parts.append(entry)
        topics.append({"topic": topic.topic, "partitions": parts})
    return topics, total, waiters, failed


def _read(live: LivePartition | None, p: Any, budget: int) -> tuple[dict[str, Any], bytes]:
    entry: dict[str, Any] = {
        "partition_index": p.partition,
        "error_code": E.none,
        "high_watermark": -1,
        "last_stable_offset": -1,
        "log_start_offset": -1,
        "aborted_transactions": None,
        "preferred_read_replica": -1,
    }
    if live is None:
        entry["error_code"] = E.unknown_topic_or_partition
        return entry, b""
    log = live.log
    hw = log.high_watermark
    # No transactions: the last stable offset is the high watermark.
    entry.update(high_watermark=hw, last_stable_offset=hw, log_start_offset=log.log_start_offset)
    limit = min(p.partition_max_bytes, budget) if budget > 0 else 0
    if limit <= 0:
        return entry, b""
    try:
        data = log.read(p.fetch_offset, limit)
    except OffsetOutOfRange:
        entry["error_code"] = E.offset_out_of_range
        return entry, b""
    return entry, data


async def list_offsets(ctx: Context, req: Request) -> dict[str, Any]:
    topics = []
    for topic in req.body.topics:
        parts = []
        for p in topic.partitions:
            entry: dict[str, Any] = {
                "partition_index": p.partition_index,
                "error_code": E.none,
                "timestamp": -1,
                "offset": -1,
                "leader_epoch": 0,
            }
            live = ctx.partition(topic.name, p.partition_index)
            if live is None:
                entry["error_code"] = E.unknown_topic_or_partition
            elif p.timestamp == LATEST:
                entry["offset"] = live.log.high_watermark
            elif p.timestamp == EARLIEST:
                entry["offset"] = live.log.log_start_offset
            elif p.timestamp < 0:
                entry["error_code"] = E.invalid_request
            else:
                found = live.log.offset_for_time(p.timestamp)
                if found is not None:
                    entry["offset"], entry["timestamp"] = found
            parts.append(entry)
        topics.append({"name": topic.name, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}
