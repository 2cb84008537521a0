"""ApiVersions, Metadata and DescribeConfigs: what clients ask before anything else."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.cluster_state import TopicRecord
from pyralog.log.context import Context
from pyralog.log.errors import InvalidTopic, StorageError, TopicExists
from pyralog.log.protocol import Request
from pyralog.log.storage import Topic

# Kafka's "not requested" value for authorized operations.
OPERATIONS_UNKNOWN = -(2**31)
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
CONFIG_SOURCE_TOPIC = 1
CONFIG_SOURCE_DEFAULT = 5


def api_list() -> list[dict[str, int]]:
    from pyralog.log.handlers import API

    return [
        {"api_key": key, "min_version": api.min_version, "max_version": api.max_version}
        for key, api in sorted(API.items())
    ]


async def api_versions(ctx: Context, req: Request) -> dict[str, Any]:
    return {"error_code": E.none, "api_keys": api_list(), "throttle_time": 0}


def _broker(ctx: Context) -> dict[str, Any]:
    return {
        "node_id": ctx.config.node_id,
        "host": ctx.config.advertised_host,
        "port": ctx.config.advertised_port,
        "rack": None,
    }


def topic_metadata(ctx: Context, topic: Topic) -> dict[str, Any]:
    node = ctx.config.node_id
    return {
        "error_code": E.none,
        "name": topic.name,
        "topic_id": topic.topic_id,
        "is_internal": False,
        "partitions": [
            {
                "error_code": E.none,
                "partition_index": index,
                "leader_id": node,
                "leader_epoch": 0,
                "replica_nodes": [node],
                "isr_nodes": [node],
                "offline_replicas": [],
            }
            for index in range(len(topic.partitions))
        ],
        "topic_authorized_operations": OPERATIONS_UNKNOWN,
    }


def _missing(name: str | None, code: E) -> dict[str, Any]:
    return {"error_code": code, "name": name, "topic_id": None, "partitions": []}


def _cluster_topic(ctx: Context, topic: TopicRecord) -> dict[str, Any]:
    view = ctx.replication.cluster.view
    partitions = []
    for index in range(len(topic.assignment)):
        state = view.partitions.get((topic.name, index))
        if state is None:
            partitions.append(
                {
                    "error_code": E.leader_not_available,
                    "partition_index": index,
                    "leader_id": -1,
                    "leader_epoch": -1,
                    "replica_nodes": list(topic.assignment[index]),
                    "isr_nodes": [],
                    "offline_replicas": [],
                }
            )
            continue
        partitions.append(
            {
                "error_code": E.none if state.leader >= 0 else E.leader_not_available,
                "partition_index": index,
                "leader_id": state.leader,
                "leader_epoch": state.leader_epoch,
                "replica_nodes": list(state.replicas),
                "isr_nodes": list(state.isr),
                "offline_replicas": [r for r in state.replicas if r not in view.alive],
            }
        )
    return {
        "error_code": E.none,
        "name": topic.name,
        "topic_id": topic.topic_id,
        "is_internal": topic.name.startswith("__"),
        "partitions": partitions,
        "topic_authorized_operations": OPERATIONS_UNKNOWN,
    }


async def _cluster_metadata(ctx: Context, req: Request) -> dict[str, Any]:
    """Metadata of the replicated cluster, as this broker last read it from the store."""
    cluster = ctx.replication.cluster
    body = req.body
    requested = body.topics
    if requested is None or (req.api_version == 0 and not requested):
        topics = [_cluster_topic(ctx, t) for t in sorted(cluster.view.topics.values(),
                                                          key=lambda t: t.name)]  # fmt: skip
    else:
        auto = getattr(body, "allow_auto_topic_creation", True) and ctx.config.auto_create_topics
        topics = []
        for item in requested:
            name = item.name
            record = cluster.view.topics.get(name) if name is not None else None
            if record is None and name is not None and auto:
                created = await ctx.replication.create_topic(name, ctx.config.defaults)
                if isinstance(created, E):
                    topics.append(_missing(name, created))
                    continue
                record = created
            if record is None:
                topics.append(_missing(name, E.unknown_topic_or_partition))
            else:
                topics.append(_cluster_topic(ctx, record))
    view = cluster.view
    brokers = [
        {"node_id": b.broker_id, "host": b.host, "port": b.port, "rack": b.region}
        for b in sorted(view.brokers.values(), key=lambda b: b.broker_id)
        if b.broker_id in view.alive
    ]
    if not any(b["node_id"] == ctx.config.node_id for b in brokers):
        brokers.append(_broker(ctx))  # the store has not answered yet: at least we exist
    return {
        "throttle_time": 0,
        "brokers": brokers,
        "cluster_id": ctx.config.cluster_id,
        "controller_id": view.controller if view.controller is not None else -1,
        "topics": topics,
        "cluster_authorized_operations": OPERATIONS_UNKNOWN,
    }


async def metadata(ctx: Context, req: Request) -> dict[str, Any]:
    if ctx.replication is not None:
        return await _cluster_metadata(ctx, req)
    body = req.body
    requested = body.topics
    # v0: an empty list means every topic; v1+: null does.
    if requested is None or (req.api_version == 0 and not requested):
        topics = [topic_metadata(ctx, t) for t in ctx.storage.topics()]
    else:
        auto = getattr(body, "allow_auto_topic_creation", True) and ctx.config.auto_create_topics
        topics = []
        for item in requested:
            name = item.name
            topic = ctx.storage.topic(name) if name is not None else None
            if topic is None and name is not None and auto:
                topic = await _auto_create(ctx, name)
                if isinstance(topic, E):
                    topics.append(_missing(name, topic))
                    continue
            if topic is None:
                topics.append(_missing(name, E.unknown_topic_or_partition))
            else:
                topics.append(topic_metadata(ctx, topic))
    return {
        "throttle_time": 0,
        "brokers": [_broker(ctx)],
        "cluster_id": ctx.config.cluster_id,
        "controller_id": ctx.config.node_id,
        "topics": topics,
        "cluster_authorized_operations": OPERATIONS_UNKNOWN,
    }


async def _auto_create(ctx: Context, name: str) -> Topic | E:
    try:
        return await ctx.run_io(ctx.storage.create_topic, name, ctx.config.defaults)
    except TopicExists:
        topic = ctx.storage.topic(name)
        return topic if topic is not None else E.unknown_topic_or_partition
    except InvalidTopic:
        return E.invalid_topic_exception
    except StorageError:
        return E.kafka_storage_error


async def describe_configs(ctx: Context, req: Request) -> dict[str, Any]:
    results = []
    for resource in req.body.resources:
        keys = resource.configuration_keys
        entry: dict[str, Any] = {
            "resource_type": resource.resource_type,
            "resource_name": resource.resource_name,
            "error_code": E.none,
            "error_message": None,
            "configs": [],
        }
        if resource.resource_type == RESOURCE_TOPIC:
            topic: Any = ctx.storage.topic(resource.resource_name)
            if topic is None and ctx.replication is not None:
                # Held by other brokers: the cluster's record has its config.
                topic = ctx.replication.cluster.view.topics.get(resource.resource_name)
            if topic is None:
                entry["error_code"] = E.unknown_topic_or_partition
                entry["error_message"] = f"no topic {resource.resource_name!r}"
            else:
                defaults = ctx.config.defaults.to_kafka()
                entry["configs"] = [
                    _config(name, value, value != defaults.get(name))
                    for name, value in sorted(topic.config.to_kafka().items())
                    if keys is None or name in keys
                ]
        elif resource.resource_type == RESOURCE_BROKER:
            broker = {
                "broker.id": str(ctx.config.node_id),
                "auto.create.topics.enable": str(ctx.config.auto_create_topics).lower(),
            }
            entry["configs"] = [
                _config(name, value, False)
                for name, value in broker.items()
                if keys is None or name in keys
            ]
        else:
            entry["error_code"] = E.invalid_request
            entry["error_message"] = f"resource type {resource.resource_type} is not supported"
        results.append(entry)
    return {"throttle_time": 0, "results": results}


def _config(name: str, value: str, overridden: bool) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "read_only": False,
        "is_default": not overridden,
        "config_source": CONFIG_SOURCE_TOPIC if overridden else CONFIG_SOURCE_DEFAULT,
        "is_sensitive": False,
        "synonyms": [],
        "config_type": 0,
        "documentation": None,
    }
