"""The gateway's sans-IO part: frame splitting, answer pairing, rewriting with kio.

Responses are built with the broker's own encoder (``pyralog.log.protocol``) for every
version the broker serves (and kio's newest), rewritten, decoded again: broker hosts
and ports are the local ones, everything else is what the broker said. Responses that
name no broker pass through byte for byte, however the stream is cut.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest

from pyralog.gateway import rewrite
from pyralog.gateway.frames import (
    MAX_REQUEST_BYTES,
    Conversation,
    FrameError,
    FrameSplitter,
    request_header,
)
from pyralog.gateway.rewrite import Broker, RewriteError
from pyralog.log import protocol
from pyralog.log.handlers import SUPPORTED

BROKERS = [
    {"node_id": 11, "host": "10.77.0.11", "port": 9092, "rack": "r1"},
    {"node_id": 12, "host": "10.77.0.12", "port": 9092, "rack": None},
]
LOCAL = {11: ("127.0.0.1", 19093), 12: ("127.0.0.1", 19094)}


def locate(broker: Broker) -> tuple[str, int]:
    return LOCAL[broker.node_id]


def _metadata(version: int) -> bytes:
    data = {
        "throttle_time": 7,
        "error_code": 0,
        "brokers": BROKERS,
        "cluster_id": "test-cluster",
        "controller_id": 12,
        "topics": [
            {
                "error_code": 0,
                "name": "orders",
                "topic_id": b"\x01" * 16,
                "is_internal": False,
                "partitions": [
                    {
                        "error_code": 0,
                        "partition_index": 0,
                        "leader_id": 11,
                        "leader_epoch": 3,
                        "replica_nodes": [11, 12],
                        "isr_nodes": [11, 12],
                        "offline_replicas": [],
                    },
                ],
                "topic_authorized_operations": -(2**31),
            }
        ],
        "cluster_authorized_operations": -(2**31),
    }
    return protocol.encode_response(3, version, 99, protocol.response(3, version, data))


def _relocated(body: Any, field: str = "brokers") -> Any:
    items = tuple(
        dataclasses.replace(b, host=LOCAL[b.node_id][0], port=LOCAL[b.node_id][1])
        for b in getattr(body, field)
    )
    return dataclasses.replace(body, **{field: items})


@pytest.mark.parametrize("version", range(rewrite.newest_version(3) + 1))
def test_metadata_brokers_become_local_in_every_version(version: int) -> None:
    frame = _metadata(version)
    answer = rewrite.decode(3, version, frame)
    assert answer.brokers() == [Broker(11, "10.77.0.11", 9092), Broker(12, "10.77.0.12", 9092)]
    out = rewrite.decode(3, version, answer.rewrite(locate))
    assert out.header.correlation_id == 99
    assert [(b.node_id, b.host, b.port) for b in out.body.brokers] == [
        (11, "127.0.0.1", 19093),
        (12, "127.0.0.1", 19094),
    ]
    assert out.body == _relocated(answer.body)  # topics, racks, ids: as the broker said


def test_the_broker_serves_every_metadata_version_the_gateway_can_rewrite() -> None:
    low, high = SUPPORTED[3]
    assert low == 0 and high <= rewrite.newest_version(3)
    assert SUPPORTED[10][1] <= rewrite.newest_version(10)


def _find_coordinator(version: int, node_id: int = 12, host: str = "10.77.0.12") -> bytes:
    entry = {"key": "g", "node_id": node_id, "host": host, "port": 9092 if host else -1,
             "error_code": 0 if host else 15, "error_message": None}  # fmt: skip
    data: dict[str, Any] = {"throttle_time": 0, **entry}
    if version >= 4:
        other = {**entry, "key": "h", "node_id": 11, "host": "10.77.0.11", "port": 9092,
                 "error_code": 0}  # fmt: skip
        data = {"throttle_time": 0, "coordinators": [entry, other]}
    return protocol.encode_response(10, version, 5, protocol.response(10, version, data))


@pytest.mark.parametrize("version", range(5))
def test_find_coordinator_single_and_batched(version: int) -> None:
    answer = rewrite.decode(10, version, _find_coordinator(version))
    out = rewrite.decode(10, version, answer.rewrite(locate)).body
    if version < 4:
        assert (out.node_id, out.host, out.port) == (12, "127.0.0.1", 19094)
        assert out == dataclasses.replace(answer.body, host="127.0.0.1", port=19094)
    else:
        assert [(c.key, c.host, c.port) for c in out.coordinators] == [
            ("g", "127.0.0.1", 19094),
            ("h", "127.0.0.1", 19093),
        ]
        assert out == _relocated(answer.body, "coordinators")


@pytest.mark.parametrize("version", range(5))
def test_find_coordinator_errors_name_no_broker_and_pass_unchanged(version: int) -> None:
    frame = _find_coordinator(version, node_id=-1, host="")
    answer = rewrite.decode(10, version, frame)
    if version < 4:
        assert answer.brokers() == []
        assert answer.rewrite(locate) == frame
    else:  # the error entry stays, the other is rewritten
        assert answer.brokers() == [Broker(11, "10.77.0.11", 9092)]
        out = rewrite.decode(10, version, answer.rewrite(locate)).body
        assert [(c.host, c.port) for c in out.coordinators] == [("", -1), ("127.0.0.1", 19093)]


@pytest.mark.parametrize("version", range(rewrite.newest_version(60) + 1))
def test_describe_cluster_brokers_become_local(version: int) -> None:
    brokers = [{"broker_id": b["node_id"], "host": b["host"], "port": b["port"],
                "rack": b["rack"], "is_fenced": False} for b in BROKERS]  # fmt: skip
    data = {"throttle_time": 0, "error_code": 0, "cluster_id": "c", "controller_id": 11,
            "brokers": brokers, "cluster_authorized_operations": 0}  # fmt: skip
    frame = protocol.encode_response(60, version, 1, protocol.response(60, version, data))
    out = rewrite.decode(60, version, rewrite.decode(60, version, frame).rewrite(locate)).body
    assert [(b.broker_id, b.host, b.port) for b in out.brokers] == [
        (11, "127.0.0.1", 19093),
        (12, "127.0.0.1", 19094),
    ]


def _api_versions(version: int, apis: list[dict[str, int]]) -> bytes:
    data = {"error_code": 0, "api_keys": apis, "throttle_time": 0}
    return protocol.encode_response(18, version, 3, protocol.response(18, version, data))


@pytest.mark.parametrize("version", range(4))
def test_api_versions_of_a_pyralog_broker_pass_byte_exact(version: int) -> None:
    apis = [{"api_key": k, "min_version": lo, "max_version": hi}
            for k, (lo, hi) in sorted(SUPPORTED.items())]  # fmt: skip
    frame = _api_versions(version, apis)
    assert rewrite.decode(18, version, frame).rewrite(locate) is frame


def test_api_versions_are_clamped_below_what_names_brokers_unrewritten() -> None:
    apis = [
        {"api_key": 0, "min_version": 3, "max_version": 11},  # Produce: node_endpoints at 10
        {"api_key": 1, "min_version": 4, "max_version": 17},  # Fetch: node_endpoints at 16
        {"api_key": 3, "min_version": 0, "max_version": 99},  # newer than kio knows
        {"api_key": 55, "min_version": 0, "max_version": 2},  # DescribeQuorum: dropped
        {"api_key": 19, "min_version": 2, "max_version": 7},  # untouched
    ]
    out = rewrite.decode(18, 3, rewrite.decode(18, 3, _api_versions(3, apis)).rewrite(locate))
    assert [(a.api_key, a.min_version, a.max_version) for a in out.body.api_keys] == [
        (0, 3, 9),
        (1, 4, 15),
        (3, 0, rewrite.newest_version(3)),
        (19, 2, 7),
    ]


def test_undecodable_answers_are_refused() -> None:
    frame = _metadata(9)
    with pytest.raises(RewriteError, match="api 3 v9"):
        rewrite.decode(3, 9, frame[:-5])
    with pytest.raises(RewriteError):
        rewrite.decode(3, 9, frame[:8] + b"\xff" * 40)


# -- frames and pairing ------------------------------------------------------------------


def _request(api_key: int, version: int, correlation_id: int, data: dict[str, Any]) -> bytes:
    body = protocol.request(api_key, version, data)
    return protocol.encode_request(api_key, version, correlation_id, "test", body)


def _opaque_response(correlation_id: int, payload: bytes) -> bytes:
    return struct.pack(">ii", 4 + len(payload), correlation_id) + payload


def test_other_answers_pass_byte_exact_however_the_stream_is_cut() -> None:
    conversation = Conversation(rewrite.WATCHED)
    requests = [
        _request(18, 3, 1, {"client_software_name": "t", "client_software_version": "1"}),
        _request(
            3,
            12,
            2,
            {
                "topics": None,
                "allow_auto_topic_creation": False,
                "include_topic_authorized_operations": False,
            },
        ),
        _request(1, 12, 3, {"max_wait": 500, "min_bytes": 1, "topics": []}),
    ]
    forwarded = []
    stream = b"".join(requests)
    for i in range(len(stream)):  # one byte at a time
        forwarded += conversation.from_client(stream[i : i + 1])
    assert forwarded == requests
    assert conversation.pending == {1: (18, 3), 2: (3, 12)}  # the Fetch is not watched
    fetch = _opaque_response(3, bytes(range(256)) * 40)
    metadata = _metadata(12)
    metadata = metadata[:4] + struct.pack(">i", 2) + metadata[8:]
    stream = fetch + metadata
    got: list[tuple[bytes, Any]] = []
    for start in range(0, len(stream), 777):
        got += conversation.from_broker(stream[start : start + 777])
    assert got == [(fetch, None), (metadata, (3, 12))]
    assert conversation.pending == {1: (18, 3)}


def test_an_unanswered_produce_leaves_nothing_pending() -> None:
    conversation = Conversation(rewrite.WATCHED)
    produce = _request(0, 9, 8, {"acks": 0, "timeout": 1000, "topic_data": []})
    assert conversation.from_client(produce) == [produce]
    assert conversation.pending == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">i", MAX_REQUEST_BYTES + 1), "exceeds the 104857600-byte bound"),
        (b"GET / HTTP/1.1\r\n", "exceeds"),
        (struct.pack(">i", -1), "below the smallest"),
        (struct.pack(">i", 7) + b"\0" * 7, "below the smallest"),
        (struct.pack(">ihhi", 8, -3, 0, 1), "not a request"),
        (struct.pack(">ihhi", 8, 3, -1, 1), "not a request"),
    ],
)
def test_malformed_requests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        Conversation(rewrite.WATCHED).from_client(data)


def test_an_oversized_frame_is_refused_before_its_body_arrives() -> None:
    splitter = FrameSplitter(8, 1000)
    with pytest.raises(FrameError):
        splitter.feed(struct.pack(">i", 1001))


def test_a_watched_request_whose_answer_cannot_be_rewritten_is_refused() -> None:
    conversation = Conversation(
        rewrite.WATCHED, rewritable=lambda k, v: k not in rewrite.ADDRESSED or v < 13
    )
    with pytest.raises(FrameError, match="api 3 v14"):
        conversation.from_client(struct.pack(">ihhih", 10, 3, 14, 1, -1))
    assert request_header(struct.pack(">ihhih", 10, 3, 12, 1, -1)).api_version == 12
