"""CreateTopics and DeleteTopics."""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.context import Context
from pyralog.log.errors import InvalidTopic, StorageError, TopicConfigError, TopicExists
from pyralog.log.protocol import Request
from pyralog.log.topic_config import TopicConfig
from pyralog.mesh.store import StoreError


async def create_topics(ctx: Context, req: Request) -> dict[str, Any]:
    validate_only = getattr(req.body, "validate_only", False)
    results = [await _create(ctx, item, validate_only) for item in req.body.topics]
    return {"throttle_time": 0, "topics": results}


async def _create(ctx: Context, item: Any, validate_only: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": item.name,
        "topic_id": None,
        "error_code": E.none,
        "error_message": None,
        "num_partitions": -1,
        "replication_factor": -1,
        "configs": [],
    }

    def fail(code: E, message: str) -> dict[str, Any]:
        result.update(error_code=code, error_message=message)
        return result

    if ctx.replication is not None:
        return await _create_replicated(ctx, item, validate_only, result, fail)
    if item.replication_factor not in (-1, 1):
        return fail(
            E.invalid_replication_factor,
            f"replication factor {item.replication_factor}: this broker is a single node",
        )
    partitions = item.num_partitions
    if item.assignments:
        if any(b != ctx.config.node_id for a in item.assignments for b in a.broker_ids):
            return fail(E.invalid_replica_assignment, "replicas must be on this broker")
        partitions = len(item.assignments)
    try:
        config = TopicConfig.from_kafka(
            {c.name: c.value for c in item.configs}, base=ctx.config.defaults
        )
        if partitions != -1:
            config = dataclasses.replace(config, partitions=partitions)
    except TopicConfigError as e:
        code = E.invalid_partitions if "partitions" in str(e) else E.invalid_config
        return fail(code, str(e))
    if ctx.storage.topic(item.name) is not None:
        return fail(E.topic_already_exists, f"topic {item.name!r} already exists")
    if not validate_only:
        try:
            topic = await ctx.run_io(ctx.storage.create_topic, item.name, config)
        except TopicExists:
            return fail(E.topic_already_exists, f"topic {item.name!r} already exists")
        except InvalidTopic as e:
            return fail(E.invalid_topic_exception, str(e))
        except StorageError as e:
            return fail(E.kafka_storage_error, str(e))
        result["topic_id"] = topic.topic_id
    result["num_partitions"] = config.partitions
    result["replication_factor"] = 1
    result["configs"] = _configs(config)
    return result


def _configs(config: TopicConfig) -> list[dict[str, Any]]:
    return [
        {"name": k, "value": v, "read_only": False, "config_source": 5, "is_sensitive": False}
        for k, v in sorted(config.to_kafka().items())
    ]


async def _create_replicated(
    ctx: Context, item: Any, validate_only: bool, result: dict[str, Any], fail: Any
) -> dict[str, Any]:
    rep = ctx.replication
    alive = len(rep.cluster.view.alive)
    rf = item.replication_factor
    if rf == -1:
        rf = min(rep.default_replication_factor, alive)
    if not 1 <= rf <= alive:
        return fail(
            E.invalid_replication_factor,
            f"replication factor {item.replication_factor}: {alive} brokers are alive",
        )
    if item.assignments:
        return fail(E.invalid_replica_assignment, "replicas are placed by the cluster")
    try:
        config = TopicConfig.from_kafka(
            {c.name: c.value for c in item.configs}, base=ctx.config.defaults
        )
        if item.num_partitions != -1:
            config = dataclasses.replace(config, partitions=item.num_partitions)
    except TopicConfigError as e:
        code = E.invalid_partitions if "partitions" in str(e) else E.invalid_config
        return fail(code, str(e))
    if item.name in rep.cluster.view.topics:
        return fail(E.topic_already_exists, f"topic {item.name!r} already exists")
    if not validate_only:
        created = await rep.create_topic(item.name, config, rf)
        if isinstance(created, E):
            return fail(created, f"topic {item.name!r} was not created")
        result["topic_id"] = created.topic_id
    result["num_partitions"] = config.partitions
    result["replication_factor"] = rf
    result["configs"] = _configs(config)
    return result


async def delete_topics(ctx: Context, req: Request) -> dict[str, Any]:
    if req.api_version >= 6:
        names = [(t.name, t.topic_id) for t in req.body.topics]
    else:
        names = [(name, None) for name in req.body.topic_names]
    responses = []
    for name, topic_id in names:
        if name is None and topic_id is not None:
            name = next((t.name for t in ctx.storage.topics() if t.topic_id == topic_id), None)
        entry: dict[str, Any] = {
            "name": name,
            "topic_id": topic_id,
            "error_code": E.none,
            "error_message": None,
        }
        if ctx.replication is not None:
            entry.update(await _delete_replicated(ctx, name, topic_id))
            responses.append(entry)
            continue
        topic = ctx.storage.topic(name) if name is not None else None
        if topic is None:
            entry.update(error_code=E.unknown_topic_or_partition, error_message="no such topic")
        else:
            entry["topic_id"] = topic.topic_id
            try:
                await ctx.run_io(ctx.storage.delete_topic, topic.name)
                ctx.forget_topic(topic.name)
                await ctx.groups.topic_deleted(topic.name)
            except StorageError as e:
                entry.update(error_code=E.kafka_storage_error, error_message=str(e))
        responses.append(entry)
    return {"throttle_time": 0, "responses": responses}


async def _delete_replicated(ctx: Context, name: str | None, topic_id: Any) -> dict[str, Any]:
    cluster = ctx.replication.cluster
    topics = cluster.view.topics
    if name is None and topic_id is not None:
        name = next((t.name for t in topics.values() if t.topic_id == topic_id), None)
    record = topics.get(name) if name is not None else None
    if record is None:
        return {"error_code": E.unknown_topic_or_partition, "error_message": "no such topic"}
    try:
        await cluster.delete_topic(record.name)
    except (StoreError, OSError) as e:
        return {"error_code": E.kafka_storage_error, "error_message": str(e)}
    await ctx.groups.topic_deleted(record.name)
    return {"name": record.name, "topic_id": record.topic_id}
