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
    32: Api(1, 4, meta.describe_configs),
}

SUPPORTED: dict[int, tuple[int, int]] = {
    key: (api.min_version, api.max_version) for key, api in API.items()
}
