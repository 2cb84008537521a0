"""One module per family of Kafka APIs; `API` maps each api key to its handler.

A handler takes the broker `Context` and a decoded `Request` and returns the response
as plain data (built into the requested version's schema by `protocol.build`), or None
when the protocol wants no answer (Produce with acks=0). The version ranges below are
the ones advertised in ApiVersions; `tests/log/test_log_api_versions.py` drives every
one of them through its handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyralog.log.context import Context
from pyralog.log.handlers import admin, fetch, groups, meta, produce
from pyralog.log.protocol import Request

Handler = Callable[[Context, Request], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Api:
    min_version: int
    max_version: int
    handle: Handler


API: dict[int, Api] = {
    0: Api(3, 9, produce.produce),
    1: Api(4, 12, fetch.fetch),
    2: Api(1, 6, fetch.list_offsets),
    3: Api(0, 12, meta.metadata),
    8: Api(2, 8, groups.offset_commit),
    9: Api(1, 7, groups.offset_fetch),
    10: Api(0, 4, groups.find_coordinator),
    11: Api(0, 7, groups.join_group),
    12: Api(0, 4, groups.heartbeat),
    13: Api(0, 4, groups.leave_group),
    14: Api(0, 5, groups.sync_group),
    15: Api(0, 5, groups.describe_groups),
    16: Api(0, 4, groups.list_groups),
    18: Api(0, 4, meta.api_versions),
    19: Api(2, 7, admin.create_topics),
    20: Api(1, 6, admin.delete_topics),
    22: Api(0, 4, produce.init_producer_id),
    23: Api(2, 4, fetch.offsets_for_leader_epoch),
    32: Api(1, 4, meta.describe_configs),
}

SUPPORTED: dict[int, tuple[int, int]] = {
    key: (api.min_version, api.max_version) for key, api in API.items()
}


def error_response(api_key: int, body: Any, code: int, message: str) -> dict[str, Any]:
    """The response data that refuses a whole request `body` with `code`.

    Where the response has a top-level error code that carries it; the responses of
    Produce, ListOffsets, OffsetCommit, OffsetsForLeaderEpoch, OffsetFetch v8+,
    FindCoordinator v4+ and DescribeGroups have none, so there (as Kafka's
    getErrorResponse does) every entry the request named gets the code, else a client
    would read an empty answer as success.
    """
    data: dict[str, Any] = {
        "throttle_time": 0,
        "error_code": code,
        "error_message": message,
        # JoinGroup's and InitProducerId's required fields: no member, no producer.
        "generation_id": -1,
        "leader": "",
        "member_id": "",
        "producer_id": -1,
        "producer_epoch": -1,
    }
    if api_key == 0:
        data["responses"] = [
            {
                "name": getattr(t, "name", ""),
                "topic_id": getattr(t, "topic_id", None),
                "partition_responses": [
                    {
                        "index": p.index,
                        "error_code": code,
                        "base_offset": -1,
                        "log_append_time": -1,
                        "log_start_offset": -1,
                        "record_errors": [],
                        "error_message": message,
                    }
                    for p in t.partition_data
                ],
            }
            for t in body.topic_data
        ]
    elif api_key == 23:
        data["topics"] = [
            {
                "topic": t.topic,
                "partitions": [
                    {"partition": p.partition, "error_code": code} for p in t.partitions
                ],
            }
            for t in body.topics
        ]
    elif api_key in (2, 8):
        data["topics"] = [
            {
                "name": t.name,
                "partitions": [
                    {"partition_index": p.partition_index, "error_code": code} for p in t.partitions
                ],
            }
            for t in body.topics
        ]
    elif api_key == 9 and hasattr(body, "groups"):
        data["groups"] = [
            {"group_id": g.group_id, "error_code": code, "topics": []} for g in body.groups
        ]
    elif api_key == 10 and hasattr(body, "coordinator_keys"):
        data["coordinators"] = [
            {
                "key": key,
                "node_id": -1,
                "host": "",
                "port": -1,
                "error_code": code,
                "error_message": message,
            }
            for key in body.coordinator_keys
        ]
    elif api_key == 15:
        data["groups"] = [
            {
                "error_code": code,
                "error_message": message,
                "group_id": group,
                "group_state": "",
                "protocol_type": "",
                "protocol_data": "",
                "members": [],
            }
            for group in body.groups
        ]
    return data
