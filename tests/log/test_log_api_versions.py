"""Every version advertised in `handlers.API` works, over a real TCP connection.

Each (api key, version) pair gets a valid request built with `protocol.request` from a
data dict that is a superset of the fields of every version, sent to an in-process
broker, and its response decoded at that same version and checked: error code 0 where
success is expected, Kafka's codes where not, produced records fetched back byte for
byte. Versions just outside the advertised range get UNSUPPORTED_VERSION (35) in a
response of that version (ApiVersions: a v0 answer with the api list, KIP-511), and the
connection stays usable; an unknown api key closes only its own connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from brokerthread import BrokerThread, FrameClient, create_data, fetch_data, produce_data
from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema

from pyralog.log import protocol
from pyralog.log.context import BrokerConfig
from pyralog.log.handlers import API
from pyralog.log.records import build_batch, read_messages

NONE = 0
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_NOT_AVAILABLE = 15
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_REQUEST = 42
MEMBER_ID_REQUIRED = 79

TOPIC = "versions"  # exists, 2 partitions
RETENTION = {"retention.ms": "86400000"}  # a non-default config, seen in the answers
MISSING = "no-such-topic"
NOW_MS = int(time.time() * 1000)
ASSIGNMENT = b"\x00\x01assignment-bytes"
PROTOCOL_META = b"\x00\x01range-metadata"
METADATA = {
    "allow_auto_topic_creation": False,
    "include_cluster_authorized_operations": False,
    "include_topic_authorized_operations": False,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    b = BrokerThread(
        tmp_path_factory.mktemp("versions"),
        BrokerConfig(initial_rebalance_delay_ms=0, advertised_port=0),
    )
    b.start()
    b.broker.ctx.config = BrokerConfig(initial_rebalance_delay_ms=0, advertised_port=b.port)
    with FrameClient(b.port) as c:
        created = c.call(19, 7, create_data(TOPIC, 2, RETENTION))
        assert created.topics[0].error_code == NONE
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def client(broker: BrokerThread) -> Iterator[FrameClient]:
    with FrameClient(broker.port) as c:
        yield c


def batch(tag: str, n: int = 3, timestamp_ms: int = NOW_MS, **kw: int) -> bytes:
    return build_batch(
        [(f"k{i}".encode(), f"{tag}-{i}".encode()) for i in range(n)],
        timestamp_ms=timestamp_ms,
        **kw,
    )


def produce(c: FrameClient, topic: str, records: bytes, partition: int = 0) -> int:
    """Produce at the newest version; the base offset."""
    body = c.call(0, 9, produce_data(topic, partition, records))
    result = body.responses[0].partition_responses[0]
    assert result.error_code == NONE, result
    return int(result.base_offset)


def same_batch(stored: bytes, sent: bytes) -> None:
    """Byte for byte, but for the base offset and leader epoch the broker assigns."""
    assert len(stored) == len(sent)
    assert stored[8:12] == sent[8:12] and stored[16:] == sent[16:]


def topic_names(c: FrameClient) -> set[str]:
    body = c.call(3, 12, {**METADATA, "topics": None})
    return {t.name for t in body.topics}


def join(c: FrameClient, group: str, version: int = 7, **extra: Any) -> Any:
    """JoinGroup at `version` as a new member (with the v4+ member-id round trip)."""
    data = {
        "group_id": group,
        "session_timeout": 10_000,
        "rebalance_timeout": 10_000,
        "member_id": "",
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": PROTOCOL_META}],
        **extra,
    }
    body = c.call(11, version, data)
    if version >= 4 and body.error_code == MEMBER_ID_REQUIRED:
        assert body.member_id
        body = c.call(11, version, {**data, "member_id": body.member_id})
    return body


def member(c: FrameClient, group: str) -> tuple[str, int]:
    """A member of a Stable one-member group `group`: (member id, generation)."""
    joined = join(c, group)
    assert joined.error_code == NONE, joined
    synced = c.call(
        14,
        5,
        {
            "group_id": group,
            "generation_id": joined.generation_id,
            "member_id": joined.member_id,
            "group_instance_id": None,
            "protocol_type": "consumer",
            "protocol_name": "range",
            "assignments": [{"member_id": joined.member_id, "assignment": ASSIGNMENT}],
        },
    )
    assert synced.error_code == NONE and synced.assignment == ASSIGNMENT
    return joined.member_id, int(joined.generation_id)


# --- one check per api ----------------------------------------------------------------


def check_produce(c: FrameClient, v: int) -> None:
    sent = batch(f"produce-v{v}")
    body = c.call(0, v, produce_data(TOPIC, 1, sent))
    (topic,) = body.responses
    assert topic.name == TOPIC
    (result,) = topic.partition_responses
    assert result.index == 1 and result.error_code == NONE
    base = result.base_offset
    assert base >= 0
    got = c.call(1, 12, fetch_data(TOPIC, 1, base)).responses[0].partitions[0]
    assert got.error_code == NONE and got.high_watermark == base + 3
    same_batch(got.records, sent)
    # acks=0: stored, and no answer at all (the next answer is the next request's).
    quiet = batch(f"produce-v{v}-acks0")
    c.send_request(0, v, protocol.request(0, v, produce_data(TOPIC, 1, quiet, acks=0)))
    got = c.call(1, 12, fetch_data(TOPIC, 1, base + 3)).responses[0].partitions[0]
    assert got.error_code == NONE and got.high_watermark == base + 6
    same_batch(got.records, quiet)
    for topic_name, index in ((MISSING, 0), (TOPIC, 7)):
        body = c.call(0, v, produce_data(topic_name, index, batch("nowhere")))
        assert body.responses[0].partition_responses[0].error_code == UNKNOWN_TOPIC_OR_PARTITION
    assert MISSING not in topic_names(c)  # Produce never creates topics


def check_fetch(c: FrameClient, v: int) -> None:
    sent = batch(f"fetch-v{v}", 5)
    base = produce(c, TOPIC, sent)
    body = c.call(1, v, fetch_data(TOPIC, 0, base))
    if v >= 7:
        assert body.error_code == NONE
    (topic,) = body.responses
    (part,) = topic.partitions
    assert topic.topic == TOPIC and part.partition_index == 0 and part.error_code == NONE
    assert part.high_watermark == base + 5 and part.last_stable_offset == base + 5
    same_batch(part.records, sent)
    values = [m.value for m in read_messages(TOPIC, 0, part.records)]
    assert values == [f"fetch-v{v}-{i}".encode() for i in range(5)]
    # The end of the log is a valid position with nothing to read; past it is not.
    end = c.call(1, v, fetch_data(TOPIC, 0, base + 5)).responses[0].partitions[0]
    assert end.error_code == NONE and not end.records
    beyond = c.call(1, v, fetch_data(TOPIC, 0, base + 6)).responses[0].partitions[0]
    assert beyond.error_code == OFFSET_OUT_OF_RANGE
    missing = c.call(1, v, fetch_data(MISSING, 0, 0)).responses[0].partitions[0]
    assert missing.error_code == UNKNOWN_TOPIC_OR_PARTITION


def check_list_offsets(c: FrameClient, v: int) -> None:
    topic = f"list-offsets-v{v}"
    assert c.call(19, 7, create_data(topic, 1, RETENTION)).topics[0].error_code == NONE
    produce(c, topic, batch("a", 2, timestamp_ms=NOW_MS - 60_000))
    second = produce(c, topic, batch("b", 2, timestamp_ms=NOW_MS))
    assert second == 2

    def ask(name: str, timestamp: int) -> Any:
        data = {
            "replica_id": -1,
            "isolation_level": 0,
            "topics": [
                {
                    "name": name,
                    "partitions": [
                        {"partition_index": 0, "current_leader_epoch": -1, "timestamp": timestamp}
                    ],
                }
            ],
        }
        (t,) = c.call(2, v, data).topics
        (p,) = t.partitions
        return p

    latest, earliest = ask(topic, -1), ask(topic, -2)
    assert (latest.error_code, latest.offset) == (NONE, 4)
    assert (earliest.error_code, earliest.offset) == (NONE, 0)
    by_time = ask(topic, NOW_MS - 1000)
    assert by_time.error_code == NONE and by_time.offset == 2
    assert by_time.timestamp == NOW_MS
    assert ask(topic, NOW_MS + 60_000).offset == -1  # no record that late
    assert ask(MISSING, -1).error_code == UNKNOWN_TOPIC_OR_PARTITION


def check_metadata(c: FrameClient, v: int) -> None:
    missing = f"meta-missing-v{v}"
    data = {
        "topics": [{"name": TOPIC}, {"name": missing}],
        "allow_auto_topic_creation": False,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }
    body = c.call(3, v, data)
    (node,) = body.brokers
    assert node.node_id == 0 and node.host == "127.0.0.1" and node.port == c.sock.getpeername()[1]
    if v >= 1:
        assert body.controller_id == 0
    found = {t.name: t for t in body.topics}
    assert found[TOPIC].error_code == NONE
    assert [p.partition_index for p in found[TOPIC].partitions] == [0, 1]
    assert all(p.leader_id == 0 and list(p.replica_nodes) == [0] for p in found[TOPIC].partitions)
    if v >= 10:
        assert found[TOPIC].topic_id is not None
    if v < 4:
        # No allow_auto_topic_creation before v4: Kafka creates the topic (it is on).
        assert found[missing].error_code == NONE and len(found[missing].partitions) == 1
    else:
        assert found[missing].error_code == UNKNOWN_TOPIC_OR_PARTITION
        assert missing not in topic_names(c)
    # Every topic: v0 says so with an empty list, v1+ with null.
    every = c.call(3, v, {**data, "topics": [] if v == 0 else None})
    assert {TOPIC} <= {t.name for t in every.topics}


def check_offset_commit(c: FrameClient, v: int) -> None:
    group = f"commit-v{v}"

    def commit(generation: int, member_id: str, topic: str, offset: int) -> int:
        data = {
            "group_id": group,
            "generation_id_or_member_epoch": generation,
            "member_id": member_id,
            "group_instance_id": None,
            "retention_time": -1,
            "topics": [
                {
                    "name": topic,
                    "partitions": [
                        {
                            "partition_index": 1,
                            "committed_offset": offset,
                            "committed_leader_epoch": -1,
                            "committed_metadata": f"meta-{v}",
                        }
                    ],
                }
            ],
        }
        (t,) = c.call(8, v, data).topics
        assert t.name == topic
        (p,) = t.partitions
        assert p.partition_index == 1
        return int(p.error_code)

    # A simple (group-less) commit, then a member's commit in its generation.
    assert commit(-1, "", TOPIC, 11) == NONE
    assert committed(c, group, TOPIC, 1) == (11, f"meta-{v}")
    member_id, generation = member(c, group)
    assert commit(generation, member_id, TOPIC, 12) == NONE
    assert committed(c, group, TOPIC, 1) == (12, f"meta-{v}")
    assert commit(generation + 1, member_id, TOPIC, 13) == ILLEGAL_GENERATION
    assert commit(generation, "someone-else", TOPIC, 13) == UNKNOWN_MEMBER_ID
    assert commit(generation, member_id, MISSING, 13) == UNKNOWN_TOPIC_OR_PARTITION
    assert committed(c, group, TOPIC, 1) == (12, f"meta-{v}")
    leave(c, group, member_id)


def committed(c: FrameClient, group: str, topic: str, partition: int) -> tuple[int, str | None]:
    body = c.call(9, 7, {"group_id": group, "topics": [{"name": topic, "partition_indexes": [1]}]})
    assert body.error_code == NONE
    p = body.topics[0].partitions[0]
    assert p.error_code == NONE and p.partition_index == partition
    return int(p.committed_offset), p.metadata


def leave(c: FrameClient, group: str, member_id: str) -> None:
    body = c.call(13, 4, {"group_id": group, "members": [{"member_id": member_id}]})
    assert body.error_code == NONE and body.members[0].error_code == NONE


def check_offset_fetch(c: FrameClient, v: int) -> None:
    group = f"offset-fetch-v{v}"
    commit = {
        "group_id": group,
        "generation_id_or_member_epoch": -1,
        "member_id": "",
        "topics": [
            {
                "name": TOPIC,
                "partitions": [
                    {"partition_index": 0, "committed_offset": 7, "committed_metadata": "m"}
                ],
            }
        ],
    }
    assert c.call(8, 8, commit).topics[0].partitions[0].error_code == NONE
    data = {
        "group_id": group,
        "topics": [{"name": TOPIC, "partition_indexes": [0, 1]}],
        "require_stable": False,
    }
    body = c.call(9, v, data)
    if v >= 2:
        assert body.error_code == NONE
    (t,) = body.topics
    parts = {p.partition_index: p for p in t.partitions}
    assert t.name == TOPIC and set(parts) == {0, 1}
    assert (parts[0].error_code, parts[0].committed_offset, parts[0].metadata) == (NONE, 7, "m")
    assert (parts[1].error_code, parts[1].committed_offset) == (NONE, -1)  # never committed
    if v >= 2:  # null topics: every committed offset of the group
        every = c.call(9, v, {**data, "topics": None})
        assert [(t.name, [p.partition_index for p in t.partitions]) for t in every.topics] == [
            (TOPIC, [0])
        ]
    unknown = c.call(9, v, {**data, "group_id": f"never-{v}"})
    assert all(p.committed_offset == -1 for t in unknown.topics for p in t.partitions)


def check_find_coordinator(c: FrameClient, v: int) -> None:
    port = c.sock.getpeername()[1]
    for key_type, code in ((0, NONE), (1, COORDINATOR_NOT_AVAILABLE)):
        if key_type and v == 0:
            continue  # v0 has no key type: always a group
        data = {"key": "some-group", "key_type": key_type, "coordinator_keys": ["some-group"]}
        body = c.call(10, v, data)
        found = body.coordinators[0] if v >= 4 else body
        if v >= 4:
            assert found.key == "some-group"
        assert found.error_code == code
        if code == NONE:
            assert (found.node_id, found.host, found.port) == (0, "127.0.0.1", port)


def check_join_group(c: FrameClient, v: int) -> None:
    group = f"join-v{v}"
    bad = join(c, group, v, session_timeout=1)
    assert bad.error_code == INVALID_SESSION_TIMEOUT
    if v >= 4:
        first = c.call(
            11,
            v,
            {
                "group_id": group,
                "session_timeout": 10_000,
                "rebalance_timeout": 10_000,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": PROTOCOL_META}],
            },
        )
        assert first.error_code == MEMBER_ID_REQUIRED and first.member_id
        leave(c, group, first.member_id)
    body = join(c, group, v)
    assert body.error_code == NONE
    assert body.generation_id == 1 and body.leader == body.member_id
    assert body.protocol_name == "range"
    if v >= 7:
        assert body.protocol_type == "consumer"
    assert [(m.member_id, m.metadata) for m in body.members] == [(body.member_id, PROTOCOL_META)]
    unknown = c.call(
        11,
        v,
        {
            "group_id": group,
            "session_timeout": 10_000,
            "rebalance_timeout": 10_000,
            "member_id": "not-a-member",
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": PROTOCOL_META}],
        },
    )
    assert unknown.error_code == UNKNOWN_MEMBER_ID
    leave(c, group, body.member_id)


def check_heartbeat(c: FrameClient, v: int) -> None:
    group = f"heartbeat-v{v}"
    member_id, generation = member(c, group)

    def beat(generation_id: int, mid: str) -> int:
        data = {
            "group_id": group,
            "generation_id": generation_id,
            "member_id": mid,
            "group_instance_id": None,
        }
        return int(c.call(12, v, data).error_code)

    assert beat(generation, member_id) == NONE
    assert beat(generation + 1, member_id) == ILLEGAL_GENERATION
    assert beat(generation, "not-a-member") == UNKNOWN_MEMBER_ID
    leave(c, group, member_id)


def check_leave_group(c: FrameClient, v: int) -> None:
    group = f"leave-v{v}"
    member_id, _ = member(c, group)

    def go(mid: str) -> int:
        data = {"group_id": group, "member_id": mid, "members": [{"member_id": mid}]}
        body = c.call(13, v, data)
        if v >= 3:
            assert body.error_code == NONE
            (m,) = body.members
            assert m.member_id == mid
            return int(m.error_code)
        return int(body.error_code)

    assert go(member_id) == NONE
    assert go(member_id) == UNKNOWN_MEMBER_ID  # already gone
    state = c.call(15, 5, {"groups": [group], "include_authorized_operations": False})
    # Without members or offsets the group is gone at once (Kafka: Empty until expiry).
    assert state.groups[0].group_state in ("Empty", "Dead") and not state.groups[0].members


def check_sync_group(c: FrameClient, v: int) -> None:
    group = f"sync-v{v}"
    joined = join(c, group)
    data = {
        "group_id": group,
        "generation_id": joined.generation_id,
        "member_id": joined.member_id,
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocol_name": "range",
        "assignments": [{"member_id": joined.member_id, "assignment": ASSIGNMENT}],
    }
    body = c.call(14, v, data)
    assert body.error_code == NONE and body.assignment == ASSIGNMENT
    if v >= 5:
        assert (body.protocol_type, body.protocol_name) == ("consumer", "range")
    stale = c.call(14, v, {**data, "generation_id": joined.generation_id + 1})
    assert stale.error_code == ILLEGAL_GENERATION
    leave(c, group, joined.member_id)


def check_describe_groups(c: FrameClient, v: int) -> None:
    group = f"describe-v{v}"
    member_id, _ = member(c, group)
    body = c.call(15, v, {"groups": [group, f"never-{v}"], "include_authorized_operations": False})
    stable, dead = body.groups
    assert stable.error_code == NONE and stable.group_id == group
    assert (stable.group_state, stable.protocol_type, stable.protocol_data) == (
        "Stable",
        "consumer",
        "range",
    )
    (m,) = stable.members
    assert m.member_id == member_id and m.client_id == "pyralog-test"
    assert m.client_host == "127.0.0.1"
    assert m.member_metadata == PROTOCOL_META and m.member_assignment == ASSIGNMENT
    assert (dead.error_code, dead.group_id, dead.group_state) == (NONE, f"never-{v}", "Dead")
    leave(c, group, member_id)


def check_list_groups(c: FrameClient, v: int) -> None:
    group = f"list-v{v}"
    member_id, _ = member(c, group)
    body = c.call(16, v, {"states_filter": []})
    assert body.error_code == NONE
    listed = {g.group_id: g for g in body.groups}
    assert listed[group].protocol_type == "consumer"
    if v >= 4:
        assert listed[group].group_state == "Stable"
        empty_only = c.call(16, v, {"states_filter": ["Empty"]})
        assert group not in {g.group_id for g in empty_only.groups}
    leave(c, group, member_id)


def check_api_versions(c: FrameClient, v: int) -> None:
    body = c.call(18, v, {"client_software_name": "pyralog-test", "client_software_version": "1"})
    assert body.error_code == NONE
    assert {(a.api_key, a.min_version, a.max_version) for a in body.api_keys} == {
        (k, a.min_version, a.max_version) for k, a in API.items()
    }


def check_create_topics(c: FrameClient, v: int) -> None:
    name = f"created-v{v}"

    def one(data: dict[str, Any]) -> Any:
        (result,) = c.call(19, v, data).topics
        assert result.name == data["topics"][0]["name"]
        return result

    dry = one({**create_data(name, 3, RETENTION), "validate_only": True})
    assert dry.error_code == NONE and name not in topic_names(c)
    made = one(create_data(name, 3, RETENTION))
    assert made.error_code == NONE
    if v >= 5:
        assert made.num_partitions == 3 and made.replication_factor == 1
        assert {x.name: x.value for x in made.configs}["retention.ms"] == "86400000"
    if v >= 7:
        assert made.topic_id is not None
    meta = c.call(3, 12, {**METADATA, "topics": [{"name": name}]})
    assert len(meta.topics[0].partitions) == 3
    assert one(create_data(name, 3, RETENTION)).error_code == TOPIC_ALREADY_EXISTS
    assert one(create_data(f"{name}-zero", 0, RETENTION)).error_code == INVALID_PARTITIONS
    bad_rf = one(create_data(f"{name}-rf", 1, RETENTION, replication_factor=3))
    assert bad_rf.error_code == INVALID_REPLICATION_FACTOR
    assert {f"{name}-zero", f"{name}-rf"}.isdisjoint(topic_names(c))


def check_delete_topics(c: FrameClient, v: int) -> None:
    name = f"deleted-v{v}"
    assert c.call(19, 7, create_data(name, 1, RETENTION)).topics[0].error_code == NONE
    produce(c, name, batch("doomed"))
    data = {"topic_names": [name, MISSING], "topics": [{"name": name}, {"name": MISSING}]}
    body = c.call(20, v, {**data, "timeout": 30_000})
    codes = {r.name: r.error_code for r in body.responses}
    assert codes == {name: NONE, MISSING: UNKNOWN_TOPIC_OR_PARTITION}
    assert name not in topic_names(c)
    if v >= 6:  # by topic id alone
        made = c.call(19, 7, create_data(name, 1, RETENTION)).topics[0]
        body = c.call(
            20, v, {"topics": [{"name": None, "topic_id": made.topic_id}], "timeout": 30_000}
        )
        (r,) = body.responses
        assert r.error_code == NONE and r.name == name and r.topic_id == made.topic_id
        assert name not in topic_names(c)


def check_init_producer_id(c: FrameClient, v: int) -> None:
    data = {
        "transactional_id": None,
        "transaction_timeout": 60_000,
        "producer_id": -1,
        "producer_epoch": -1,
    }
    body = c.call(22, v, data)
    assert body.error_code == NONE and body.producer_id >= 0 and body.producer_epoch == 0
    pid = body.producer_id
    # The id works for idempotent producing.
    records = batch(f"idempotent-v{v}", producer_id=pid, producer_epoch=0, base_sequence=0)
    base = produce(c, TOPIC, records, partition=1)
    assert produce(c, TOPIC, records, partition=1) == base  # a retry: a duplicate
    if v >= 3:  # KIP-360: the same producer bumps its epoch
        bumped = c.call(22, v, {**data, "producer_id": pid, "producer_epoch": 0})
        assert (bumped.error_code, bumped.producer_id, bumped.producer_epoch) == (NONE, pid, 1)
    other = c.call(22, v, data)
    assert other.producer_id != pid
    txn = c.call(22, v, {**data, "transactional_id": "txn"})
    assert txn.error_code == INVALID_REQUEST


def _epoch_request(topic: str, epoch: int, current: int = -1) -> dict[str, Any]:
    partition = {"partition": 0, "current_leader_epoch": current, "leader_epoch": epoch}
    return {"replica_id": -1, "topics": [{"topic": topic, "partitions": [partition]}]}


def check_offsets_for_leader_epoch(c: FrameClient, v: int) -> None:
    topic = f"epochs-v{v}"
    assert c.call(19, 7, create_data(topic, 1, RETENTION)).topics[0].error_code == NONE
    produce(c, topic, batch("e", 4))
    # A single node leads at epoch 0 forever: every epoch asked ends at the log end.
    for asked in (0, 3):
        (answer,) = c.call(23, v, _epoch_request(topic, asked)).topics[0].partitions
        assert (answer.error_code, answer.leader_epoch, answer.end_offset) == (NONE, 0, 4)
    (missing,) = c.call(23, v, _epoch_request(MISSING, 0)).topics[0].partitions
    assert missing.error_code == UNKNOWN_TOPIC_OR_PARTITION


def check_describe_configs(c: FrameClient, v: int) -> None:
    data = {
        "resources": [
            {"resource_type": 2, "resource_name": TOPIC, "configuration_keys": None},
            {
                "resource_type": 2,
                "resource_name": TOPIC,
                "configuration_keys": ["retention.ms", "max.message.bytes"],
            },
            {"resource_type": 2, "resource_name": MISSING, "configuration_keys": None},
            {"resource_type": 4, "resource_name": "0", "configuration_keys": None},
        ],
        "include_synonyms": False,
        "include_documentation": False,
    }
    every, some, missing, node = c.call(32, v, data).results
    assert every.error_code == NONE and every.resource_name == TOPIC
    configs = {x.name: x for x in every.configs}
    assert configs["retention.ms"].value == "86400000"
    assert "max.message.bytes" in configs
    assert all(not x.read_only and not x.is_sensitive for x in every.configs)
    if v >= 1:
        assert configs["retention.ms"].config_source == 1  # set on the topic
    assert {x.name for x in some.configs} == {"retention.ms", "max.message.bytes"}
    assert missing.error_code == UNKNOWN_TOPIC_OR_PARTITION
    assert node.error_code == NONE
    assert {x.name: x.value for x in node.configs}["broker.id"] == "0"


CHECKS: dict[int, Callable[[FrameClient, int], None]] = {
    0: check_produce,
    1: check_fetch,
    2: check_list_offsets,
    3: check_metadata,
    8: check_offset_commit,
    9: check_offset_fetch,
    10: check_find_coordinator,
    11: check_join_group,
    12: check_heartbeat,
    13: check_leave_group,
    14: check_sync_group,
    15: check_describe_groups,
    16: check_list_groups,
    18: check_api_versions,
    19: check_create_topics,
    20: check_delete_topics,
    22: check_init_producer_id,
    23: check_offsets_for_leader_epoch,
    32: check_describe_configs,
}

ADVERTISED = [
    pytest.param(key, v, id=f"api{key}-v{v}")
    for key, api in sorted(API.items())
    for v in range(api.min_version, api.max_version + 1)
]


def test_every_api_has_a_check() -> None:
    assert set(CHECKS) == set(API)


@pytest.mark.parametrize(("api_key", "version"), ADVERTISED)
def test_advertised_version_works(client: FrameClient, api_key: int, version: int) -> None:
    CHECKS[api_key](client, version)
    # And the connection is still good for the next request.
    check_api_versions(client, 3)


# --- outside the advertised ranges --------------------------------------------------------


def _kio_has(api_key: int, version: int) -> bool:
    try:
        load_request_schema(api_key, version)
    except (UnknownAPIKey, UnknownEntity):
        return False
    return True


OUTSIDE = [
    pytest.param(key, v, id=f"api{key}-v{v}")
    for key, api in sorted(API.items())
    for v in (api.min_version - 1, api.max_version + 1)
    if key != 18 and v >= 0 and _kio_has(key, v)
]

# A request of each api that kio can encode at any version: enough to be answered.
SAMPLE: dict[int, dict[str, Any]] = {
    0: produce_data(TOPIC, 0, b"junk"),
    1: fetch_data(TOPIC, 0, 0),
    2: {
        "replica_id": -1,
        "isolation_level": 0,
        "topics": [{"name": TOPIC, "partitions": [{"partition_index": 0, "timestamp": -1}]}],
    },
    3: {**METADATA, "topics": [{"name": TOPIC}]},
    8: {
        "group_id": "g",
        "generation_id_or_member_epoch": -1,
        "member_id": "",
        "topics": [{"name": TOPIC, "partitions": [{"partition_index": 0, "committed_offset": 1}]}],
    },
    9: {"groups": [{"group_id": "g", "topics": [{"name": TOPIC, "partition_indexes": [0]}]}]},
    10: {"key_type": 0, "coordinator_keys": ["g", "h"]},
    11: {
        "group_id": "g",
        "session_timeout": 10_000,
        "rebalance_timeout": 10_000,
        "member_id": "",
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    },
    13: {"group_id": "g", "members": [{"member_id": "m"}]},
    15: {"groups": ["g", "h"], "include_authorized_operations": False},
    16: {"states_filter": [], "types_filter": []},
    22: {"transactional_id": None, "transaction_timeout": 1000},
    23: _epoch_request(TOPIC, 0),
}


def error_codes(body: Any) -> list[int]:
    """Every error_code anywhere in a response entity."""
    import dataclasses

    out: list[int] = []
    for f in dataclasses.fields(body):
        value = getattr(body, f.name)
        if f.name == "error_code":
            out.append(int(value))
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if dataclasses.is_dataclass(item):
                out += error_codes(item)
    return out


@pytest.mark.parametrize(("api_key", "version"), OUTSIDE)
def test_unadvertised_version_gets_unsupported_version(
    client: FrameClient, api_key: int, version: int
) -> None:
    body = client.call(api_key, version, SAMPLE[api_key])
    codes = error_codes(body)
    # Top-level where the schema has an error code, else on every entry of the request.
    assert codes and set(codes) == {UNSUPPORTED_VERSION}, body
    check_api_versions(client, 3)


@pytest.mark.parametrize("version", [5, 100, 32767])
def test_unknown_api_versions_version_gets_v0_with_the_api_list(
    client: FrameClient, version: int
) -> None:
    # A version kio cannot encode: header v2 (flexible) as a newer client would send.
    hello = {"client_software_name": "future", "client_software_version": "9"}
    header = protocol.encode_request(18, 3, 77, "future-client", protocol.request(18, 3, hello))
    frame = bytearray(header)
    frame[6:8] = version.to_bytes(2, "big")
    client.send(bytes(frame))
    response = client.read_frame()
    assert response is not None
    correlation, body = protocol.decode_response(18, 0, response)
    assert correlation == 77 and body.error_code == UNSUPPORTED_VERSION
    assert {(a.api_key, a.min_version, a.max_version) for a in body.api_keys} == {
        (k, a.min_version, a.max_version) for k, a in API.items()
    }
    check_api_versions(client, 3)


def test_unknown_api_key_closes_only_that_connection(broker: BrokerThread) -> None:
    with FrameClient(broker.port) as other, FrameClient(broker.port) as bad:
        check_api_versions(other, 3)
        frame = bytearray(
            protocol.encode_request(
                18,
                0,
                5,
                "x",
                protocol.request(
                    18, 0, {"client_software_name": "x", "client_software_version": "1"}
                ),
            )
        )
        frame[4:6] = (999).to_bytes(2, "big")
        bad.send(bytes(frame))
        assert bad.closed_by_peer()
        check_api_versions(other, 3)
        check_metadata(other, 12)
    with FrameClient(broker.port) as fresh:
        check_api_versions(fresh, 0)


def test_a_frame_per_api_version_covers_every_version() -> None:
    """Guards the parametrization: the advertised ranges are all inside what kio knows."""
    for key, api in API.items():
        for v in range(api.min_version, api.max_version + 1):
            assert _kio_has(key, v), (key, v)
