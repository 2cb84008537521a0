"""Produce (acks 0, 1 and all) and InitProducerId (idempotent producers)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log import batch
from pyralog.log.context import Context, LivePartition
from pyralog.log.errors import RecordTooLarge, StorageError
from pyralog.log.producers import Duplicate
from pyralog.log.protocol import Request, ms

NO_TIMESTAMP = -1


async def produce(ctx: Context, req: Request) -> dict[str, Any] | None:
    body = req.body
    acks = body.acks
    topics = []
    for topic_data in body.topic_data:
        parts = await asyncio.gather(
            *(
                _produce_partition(ctx, req, topic_data.name, p, acks)
                for p in topic_data.partition_data
            )
        )
        topics.append({"name": topic_data.name, "partition_responses": list(parts)})
    for topic in topics:
        for part in topic["partition_responses"]:
            part.pop("last_offset", None)
    if acks == 0:
        return None  # the protocol: acks=0 gets no response at all
    return {"responses": topics, "throttle_time": 0}


def _result(index: int, code: E, message: str | None = None, **fields: int) -> dict[str, Any]:
    return {
        "index": index,
        "error_code": code,
        "base_offset": fields.get("base_offset", -1),
        "log_append_time": fields.get("log_append_time", NO_TIMESTAMP),
        "log_start_offset": fields.get("log_start_offset", -1),
        "record_errors": [],
        "error_message": message,
    }


async def _produce_partition(
    ctx: Context, req: Request, topic: str, data: Any, acks: int
) -> dict[str, Any]:
    index = data.index
    if acks not in (0, 1, -1):
        return _result(index, E.invalid_required_acks, f"acks={acks}: use 0, 1 or -1")
    if req.body.transactional_id is not None:
        return _result(index, E.invalid_request, "transactions are not supported")
    live = ctx.partition(topic, index)
    if live is None:
        code = E(ctx.missing(topic, index))
        return _result(index, code, f"no partition {topic}-{index} here")
    payload = data.records
    try:
        batches = batch.split(payload or b"")
    except batch.CorruptBatch as e:
        return _result(index, E.corrupt_message, str(e))
    if len(batches) != 1:
        # Produce v3+ carries exactly one batch per partition (KIP-98).
        return _result(index, E.invalid_record, f"{len(batches)} batches: send exactly one")
    header = batches[0][1]
    if header.is_transactional or header.is_control:
        return _result(index, E.invalid_record, "transactional batches are not supported")
    if ctx.replication is None:
        return await _append(ctx, live, index, payload, header)
    leader = ctx.replication.leader_of(live)
    if leader is None:
        return _result(index, E.not_leader_or_follower, f"not the leader of {topic}-{index}")
    min_isr = live.log.config.min_insync_replicas
    if acks == -1 and len(leader.isr) < min_isr:
        return _result(
            index,
            E.not_enough_replicas,
            f"{topic}-{index}: {len(leader.isr)} in-sync replicas, min.insync.replicas={min_isr}",
        )
    result = await _append(ctx, live, index, payload, header)
    if acks != -1 or result["error_code"] != E.none:
        return result
    return await _await_replicas(live, leader, result, req.body.timeout)


async def _await_replicas(
    live: LivePartition, leader: Any, result: dict[str, Any], timeout: Any
) -> dict[str, Any]:
    """acks=all: answer once the high watermark passes the batch, that is once every
    in-sync replica has it; or say why not (leadership lost, timeout)."""
    index = result["index"]
    last = result.get("last_offset", result["base_offset"])
    deadline = time.monotonic() + max(0, ms(timeout)) / 1000
    while live.log.high_watermark <= last:
        if live.leader is not leader:
            return _result(index, E.not_leader_or_follower, "leadership moved before replication")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _result(
                index,
                E.request_timed_out,
                f"in-sync replicas {list(leader.isr)} did not all confirm offset {last}",
            )
        waiter = live.waiter()
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except TimeoutError:
            pass
        finally:
            waiter.cancel()
    result.pop("last_offset", None)
    return result


async def _append(
    ctx: Context, live: LivePartition, index: int, payload: bytes, header: batch.BatchHeader
) -> dict[str, Any]:
    async with live.append_lock:
        producers = await ctx.producers(live)
        verdict = producers.check(header)
        if isinstance(verdict, Duplicate):
            result = _result(
                index,
                E.none,
                base_offset=verdict.base_offset,
                log_start_offset=live.log.log_start_offset,
            )
            result["last_offset"] = verdict.base_offset + header.last_offset_delta
            return result
        if verdict is not None:
            return _result(index, E(verdict), f"producer {header.producer_id}: rejected")
        try:
            appended = await ctx.run_io(live.log.append, payload, now_ms=int(time.time() * 1000))
        except RecordTooLarge as e:
            return _result(index, E.message_too_large, str(e))
        except batch.CorruptBatch as e:
            return _result(index, E.corrupt_message, str(e))
        except StorageError as e:
            ctx.log_storage_error(e)
            return _result(index, E.kafka_storage_error, str(e))
        for assigned in appended.headers:
            producers.record(assigned)
    if ctx.replication is not None:
        ctx.replication.advance(live)
    live.notify()
    result = _result(
        index,
        E.none,
        base_offset=appended.base_offset,
        log_append_time=appended.log_append_ms,
        log_start_offset=appended.log_start_offset,
    )
    result["last_offset"] = appended.last_offset
    return result


async def init_producer_id(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    if body.transactional_id is not None:
        return {
            "throttle_time": 0,
            "error_code": E.invalid_request,
            "producer_id": -1,
            "producer_epoch": -1,
        }
    previous = getattr(body, "producer_id", -1)
    epoch = getattr(body, "producer_epoch", -1)
    if previous >= 0 and 0 <= epoch < 32766:
        # KIP-360: a producer that lost track of its sequences bumps its epoch.
        return {
            "throttle_time": 0,
            "error_code": E.none,
            "producer_id": previous,
            "producer_epoch": epoch + 1,
        }
    if ctx.replication is not None:
        pid = await ctx.replication.cluster.producer_id()
    else:
        pid = await ctx.run_io(ctx.producer_ids.allocate)
    return {"throttle_time": 0, "error_code": E.none, "producer_id": pid, "producer_epoch": 0}
