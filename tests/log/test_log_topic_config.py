"""TopicConfig: Kafka names in and out, the flush.messages=1 rule, and that every bad
key or value is refused with a message naming the key (and the value)."""

from __future__ import annotations

import pytest

from pyralog.log.errors import TopicConfigError
from pyralog.log.topic_config import DAY_MS, GIB, TopicConfig


def test_defaults() -> None:
    c = TopicConfig()
    assert (c.partitions, c.flush, c.flush_messages, c.flush_ms) == (1, "interval", 10000, 1000)
    assert (c.segment_bytes, c.segment_ms) == (GIB, 7 * DAY_MS)
    assert (c.retention_bytes, c.retention_ms) == (-1, 7 * DAY_MS)
    assert (c.timestamp_type, c.max_message_bytes, c.index_interval_bytes) == (
        "CreateTime",
        1048588,
        4096,
    )


def test_from_kafka_applies_names_over_base() -> None:
    base = TopicConfig(partitions=3, retention_ms=5000)
    c = TopicConfig.from_kafka(
        {
            "segment.bytes": "4096",
            "segment.ms": "60000",
            "retention.bytes": "-1",
            "message.timestamp.type": "LogAppendTime",
            "max.message.bytes": " 2048 ",
            "index.interval.bytes": "0",
            "flush.ms": "10",
            "cleanup.policy": "delete",
            "pyralog.flush": "never",
        },
        base=base,
    )
    assert c.partitions == 3 and c.retention_ms == 5000
    assert (c.segment_bytes, c.segment_ms, c.max_message_bytes) == (4096, 60000, 2048)
    assert c.timestamp_type == "LogAppendTime" and c.log_append_time
    assert (c.index_interval_bytes, c.flush_ms, c.flush) == (0, 10, "never")


def test_none_resets_to_default() -> None:
    c = TopicConfig.from_kafka({"retention.ms": None}, base=TopicConfig(retention_ms=5))
    assert c.retention_ms == TopicConfig().retention_ms


def test_flush_messages_one_means_always() -> None:
    assert TopicConfig.from_kafka({"flush.messages": "1"}).flush == "always"
    # An explicit policy wins over the inference.
    c = TopicConfig.from_kafka({"flush.messages": "1", "pyralog.flush": "interval"})
    assert c.flush == "interval"
    # Asking for batching turns "always" back into "interval"; "never" stays.
    always = TopicConfig(flush="always")
    assert TopicConfig.from_kafka({"flush.messages": "500"}, base=always).flush == "interval"
    never = TopicConfig(flush="never")
    assert TopicConfig.from_kafka({"flush.messages": "500"}, base=never).flush == "never"


def test_to_kafka_round_trips() -> None:
    c = TopicConfig(flush="always", segment_bytes=10_000, retention_bytes=123)
    described = c.to_kafka()
    assert described["cleanup.policy"] == "delete"
    assert described["pyralog.flush"] == "always"
    assert described["segment.bytes"] == "10000"
    assert set(described) == {
        "pyralog.flush",
        "flush.messages",
        "flush.ms",
        "segment.bytes",
        "segment.ms",
        "retention.bytes",
        "retention.ms",
        "message.timestamp.type",
        "max.message.bytes",
        "index.interval.bytes",
        "min.insync.replicas",
        "unclean.leader.election.enable",
        "cleanup.policy",
    }
    assert TopicConfig.from_kafka(described, base=TopicConfig()) == c


def test_replication_settings_are_checked() -> None:
    c = TopicConfig.from_kafka(
        {"min.insync.replicas": "2", "unclean.leader.election.enable": "true"}
    )
    assert c.min_insync_replicas == 2 and c.unclean
    assert not TopicConfig().unclean
    with pytest.raises(TopicConfigError, match=r"min\.insync\.replicas='0'"):
        TopicConfig.from_kafka({"min.insync.replicas": "0"})
    with pytest.raises(TopicConfigError, match=r"unclean\.leader\.election\.enable='yes'"):
        TopicConfig.from_kafka({"unclean.leader.election.enable": "yes"})


def test_json_round_trips_and_tolerates_missing_keys() -> None:
    c = TopicConfig(partitions=7, timestamp_type="LogAppendTime", flush_ms=0)
    assert TopicConfig.from_json(c.to_json()) == c
    assert TopicConfig.from_json({"partitions": 2}) == TopicConfig(partitions=2)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("flush.messages", "0"),
        ("flush.messages", "ten"),
        ("flush.ms", "-1"),
        ("flush.ms", "1.5"),
        ("segment.bytes", "1023"),
        ("segment.bytes", str(1 << 31)),
        ("segment.ms", "0"),
        ("retention.bytes", "-2"),
        ("retention.ms", "-5"),
        ("retention.ms", "1e3"),
        ("message.timestamp.type", "BrokerTime"),
        ("max.message.bytes", "-1"),
        ("index.interval.bytes", ""),
        ("cleanup.policy", "compact"),
        ("cleanup.policy", "compact,delete"),
        ("pyralog.flush", "sometimes"),
        ("confluent.tier.enable", "true"),
        ("segment.bytes", "1_000_000"),
    ],
)
def test_bad_kafka_config_names_key_and_value(key: str, value: str) -> None:
    with pytest.raises(TopicConfigError) as info:
        TopicConfig.from_kafka({key: value})
    assert info.value.key == key
    assert key in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("attr", "value", "key"),
    [
        ("partitions", 0, "partitions"),
        ("partitions", 10001, "partitions"),
        ("segment_bytes", 100, "segment.bytes"),
        ("flush", "sometimes", "pyralog.flush"),
        ("flush_messages", True, "flush.messages"),
        ("retention_ms", "7", "retention.ms"),
    ],
)
def test_bad_constructor_values_name_the_key(attr: str, value: object, key: str) -> None:
    with pytest.raises(TopicConfigError, match=key):
        TopicConfig(**{attr: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj",
    [{"colour": "blue"}, {"segment_bytes": "4096"}, {"partitions": None}, {"flush_ms": 1.0}],
)
def test_bad_json_is_refused(obj: dict[str, object]) -> None:
    with pytest.raises(TopicConfigError):
        TopicConfig.from_json(obj)


def test_partitions_is_not_a_kafka_config() -> None:
    with pytest.raises(TopicConfigError, match="partitions"):
        TopicConfig.from_kafka({"partitions": "3"})
