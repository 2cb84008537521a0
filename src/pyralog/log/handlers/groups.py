"""Consumer-group APIs: FindCoordinator, Join/Sync/Heartbeat/Leave, offsets, listing.

A single broker is every group's coordinator; in a replicated cluster, the leader of
the group's partition of ``__consumer_offsets`` is (group_log.py). The group logic lives in
`pyralog.log.groups` (sans-IO) behind `pyralog.log.group_service`; this module only
maps requests of every advertised version onto it.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.context import Context
from pyralog.log.protocol import Request, ms

KEY_GROUP = 0


def _coordinator(ctx: Context, key: str, key_type: int) -> dict[str, Any]:
    if key_type != KEY_GROUP:
        return {
            "key": key,
            "error_code": E.coordinator_not_available,
            "node_id": -1,
            "host": "",
            "port": -1,
            "error_message": "transactions are not supported",
        }
    return {
        "key": key,
        "error_code": E.none,
        "node_id": ctx.config.node_id,
        "host": ctx.config.advertised_host,
        "port": ctx.config.advertised_port,
        "error_message": None,
    }


async def _replicated_coordinator(ctx: Context, key: str, key_type: int) -> dict[str, Any]:
    """The leader of the group's partition of __consumer_offsets (group_log.py)."""
    if key_type != KEY_GROUP:
        return _coordinator(ctx, key, key_type)
    code, broker = await ctx.groups.find(key)
    record = ctx.replication.cluster.view.brokers.get(broker) if broker is not None else None
    if record is None:
        return {
            "key": key,
            "error_code": E.coordinator_not_available,
            "node_id": -1,
            "host": "",
            "port": -1,
            "error_message": "no broker leads this group's partition yet",
        }
    return {
        "key": key,
        "error_code": code,
        "node_id": record.broker_id,
        "host": record.host,
        "port": record.port,
        "error_message": None,
    }


async def find_coordinator(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    key_type = getattr(body, "key_type", KEY_GROUP)
    keys = body.coordinator_keys if req.api_version >= 4 else [body.key]
    if ctx.replication is not None:
        answers = [await _replicated_coordinator(ctx, k, key_type) for k in keys]
    else:
        answers = [_coordinator(ctx, k, key_type) for k in keys]
    if req.api_version >= 4:
        return {"throttle_time": 0, "coordinators": answers}
    return {"throttle_time": 0, **answers[0]}


async def join_group(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    session = ms(body.session_timeout)
    # v0 has no rebalance timeout: Kafka uses the session timeout.
    rebalance = ms(getattr(body, "rebalance_timeout", None)) or session
    result = await ctx.groups.join(
        group_id=body.group_id,
        member_id=body.member_id,
        group_instance_id=getattr(body, "group_instance_id", None),
        protocol_type=body.protocol_type,
        protocols=[(p.name, p.metadata) for p in body.protocols],
        session_timeout_ms=session,
        rebalance_timeout_ms=rebalance,
        client_id=req.client_id or "",
        client_host=req.peer_host,
        require_known_member_id=req.api_version >= 4,
    )
    return {"throttle_time": 0, "protocol_type": body.protocol_type, **result}


async def sync_group(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    result = await ctx.groups.sync(
        group_id=body.group_id,
        generation_id=body.generation_id,
        member_id=body.member_id,
        assignments=[(a.member_id, a.assignment) for a in body.assignments],
    )
    return {"throttle_time": 0, **result}


async def heartbeat(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    code = ctx.groups.heartbeat(body.group_id, body.generation_id, body.member_id)
    return {"throttle_time": 0, "error_code": code}


async def leave_group(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    if req.api_version >= 3:
        members = [(m.member_id, m.group_instance_id) for m in body.members]
    else:
        members = [(body.member_id, None)]
    codes = ctx.groups.leave(body.group_id, [m for m, _ in members])
    top = codes[0] if req.api_version < 3 else E.none
    return {
        "throttle_time": 0,
        "error_code": top,
        "members": [
            {"member_id": m, "group_instance_id": g, "error_code": c}
            for (m, g), c in zip(members, codes, strict=True)
        ],
    }


async def offset_commit(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    offsets = [
        (
            t.name,
            p.partition_index,
            p.committed_offset,
            p.committed_metadata,
            getattr(p, "committed_leader_epoch", -1),
        )
        for t in body.topics
        for p in t.partitions
    ]
    codes = await ctx.groups.commit(
        body.group_id, body.generation_id_or_member_epoch, body.member_id, offsets
    )
    topics: dict[str, list[dict[str, Any]]] = {}
    for (topic, partition, *_), code in zip(offsets, codes, strict=True):
        topics.setdefault(topic, []).append({"partition_index": partition, "error_code": code})
    return {"throttle_time": 0, "topics": [{"name": t, "partitions": p} for t, p in topics.items()]}


async def offset_fetch(ctx: Context, req: Request) -> dict[str, Any]:
    body = req.body
    wanted = (
        None if body.topics is None else [(t.name, list(t.partition_indexes)) for t in body.topics]
    )
    refused = ctx.groups.owner(body.group_id)
    if refused != E.none:
        found = [(t, [(p, -1, "", -1, refused) for p in ps]) for t, ps in wanted or []]
    else:
        found = ctx.groups.fetch_offsets(body.group_id, wanted)
    return {
        "throttle_time": 0,
        "error_code": refused,
        "topics": [
            {
                "name": topic,
                "partitions": [
                    {
                        "partition_index": p,
                        "committed_offset": offset,
                        "committed_leader_epoch": epoch,
                        "metadata": meta,
                        "error_code": code,
                    }
                    for p, offset, meta, epoch, code in parts
                ],
            }
            for topic, parts in found
        ],
    }


async def list_groups(ctx: Context, req: Request) -> dict[str, Any]:
    states = set(getattr(req.body, "states_filter", ()) or ())
    groups = [
        {"group_id": g, "protocol_type": p, "group_state": s}
        for g, p, s in ctx.groups.list_groups()
        if not states or s in states
    ]
    return {"throttle_time": 0, "error_code": E.none, "groups": groups}


async def describe_groups(ctx: Context, req: Request) -> dict[str, Any]:
    return {"throttle_time": 0, "groups": [ctx.groups.describe(g) for g in req.body.groups]}
