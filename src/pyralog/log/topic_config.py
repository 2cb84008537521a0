"""A topic's configuration: Kafka's topic config names in and out, validated once.

`TopicConfig` is what the storage layer reads (segment size, retention, flush policy);
`from_kafka` takes the string map of CreateTopics/AlterConfigs, `to_kafka` answers
DescribeConfigs, and `to_json`/`from_json` are the ``config`` object of ``topic.json``.
Hand-written because the set is small and fixed: a config library would add a dependency
to parse eleven integers, and Kafka's own names and ranges are the specification.

Besides Kafka's names there is ``pyralog.flush`` ("always" | "interval" | "never"), the
fsync policy. Kafka expresses "always" as ``flush.messages=1``, so that value (with no
``pyralog.flush`` beside it) selects "always", and any other ``flush.messages`` turns an
"always" topic back into "interval" (the caller asked for batching).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pyralog.log.errors import TopicConfigError

GIB = 1 << 30
DAY_MS = 24 * 60 * 60 * 1000
I32_MAX = (1 << 31) - 1
I64_MAX = (1 << 63) - 1

FLUSH_POLICIES = ("always", "interval", "never")
TIMESTAMP_TYPES = ("CreateTime", "LogAppendTime")
BOOLEANS = ("false", "true")

FLUSH_KEY = "pyralog.flush"
CLEANUP_POLICY = "cleanup.policy"

_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    key: str
    low: int = 0
    high: int = I64_MAX
    choices: tuple[str, ...] = ()


# Kafka's ranges where it has them (segment.bytes is an i32 there, which also keeps file
# positions within the u32 of an index entry); segment.bytes >= 1024 is ours.
_FIELDS = (
    _Field("partitions", "partitions", 1, 10000),
    _Field("flush", FLUSH_KEY, choices=FLUSH_POLICIES),
    _Field("flush_messages", "flush.messages", 1),
    _Field("flush_ms", "flush.ms", 0),
    _Field("segment_bytes", "segment.bytes", 1024, I32_MAX),
    _Field("segment_ms", "segment.ms", 1),
    _Field("retention_bytes", "retention.bytes", -1),
    _Field("retention_ms", "retention.ms", -1),
    _Field("timestamp_type", "message.timestamp.type", choices=TIMESTAMP_TYPES),
    _Field("max_message_bytes", "max.message.bytes", 0, I32_MAX),
    _Field("index_interval_bytes", "index.interval.bytes", 0, I32_MAX),
    # Replication (replica.py): acks=all needs this many in-sync replicas, and a leader
    # may come from outside the in-sync set only when unclean election is switched on.
    _Field("min_insync_replicas", "min.insync.replicas", 1, I32_MAX),
    _Field("unclean_leader_election", "unclean.leader.election.enable", choices=BOOLEANS),
)
_BY_KEY = {f.key: f for f in _FIELDS if f.attr != "partitions"}
_BY_ATTR = {f.attr: f for f in _FIELDS}


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """One topic's settings; every instance is valid (checked on construction)."""

    partitions: int = 1
    flush: str = "interval"
    flush_messages: int = 10000
    flush_ms: int = 1000
    segment_bytes: int = GIB
    segment_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    retention_ms: int = 7 * DAY_MS
    timestamp_type: str = "CreateTime"
    max_message_bytes: int = 1048588
    index_interval_bytes: int = 4096
    min_insync_replicas: int = 1
    unclean_leader_election: str = "false"

    def __post_init__(self) -> None:
        for f in _FIELDS:
            _check(f, getattr(self, f.attr))

    @property
    def unclean(self) -> bool:
        return self.unclean_leader_election == "true"

    @property
    def log_append_time(self) -> bool:
        return self.timestamp_type == "LogAppendTime"

    @classmethod
    def from_kafka(
        cls, configs: Mapping[str, str | None], base: TopicConfig | None = None
    ) -> TopicConfig:
        """`base` (or the defaults) with Kafka-named `configs` applied.

        A None value resets that key to TopicConfig's default. Unknown keys, unparsable or
        out-of-range values raise TopicConfigError naming the key and the value.
        """
        base = base if base is not None else cls()
        defaults = cls()
        changes: dict[str, int | str] = {}
        for key, raw in configs.items():
            if key == CLEANUP_POLICY:
                if raw is not None and raw.strip() != "delete":
                    raise TopicConfigError(key, raw, "only 'delete' is supported (no compaction)")
                continue
            field = _BY_KEY.get(key)
            if field is None:
                raise TopicConfigError(key, raw, "unknown topic config")
            if raw is None:
                changes[field.attr] = getattr(defaults, field.attr)
            else:
                changes[field.attr] = _parse(field, raw)
        if FLUSH_KEY not in configs and "flush_messages" in changes:
            if changes["flush_messages"] == 1:
                changes["flush"] = "always"
            elif base.flush == "always":
                changes["flush"] = "interval"
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def to_kafka(self) -> dict[str, str]:
        """Every setting under its Kafka name, as DescribeConfigs reports them."""
        out = {f.key: str(getattr(self, f.attr)) for f in _BY_KEY.values()}
        out[CLEANUP_POLICY] = "delete"
        return out

    def to_json(self) -> dict[str, int | str]:
        """The ``config`` object of topic.json (attribute names, native types)."""
        return {f.attr: getattr(self, f.attr) for f in _FIELDS}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> TopicConfig:
        """The inverse of to_json; missing keys take the defaults (older files)."""
        values: dict[str, int | str] = {}
        for attr, value in obj.items():
            field = _BY_ATTR.get(attr)
            if field is None:
                raise TopicConfigError(attr, value, "unknown topic config")
            if not isinstance(value, int | str) or isinstance(value, bool):
                raise TopicConfigError(field.key, value, "not an integer or a string")
            values[attr] = value
        return cls(**values)  # type: ignore[arg-type]


def _parse(field: _Field, raw: str) -> int | str:
    text = raw.strip()
    if field.choices:
        if text not in field.choices:
            raise TopicConfigError(field.key, raw, f"must be one of {', '.join(field.choices)}")
        return text
    if not _INTEGER.fullmatch(text):
        raise TopicConfigError(field.key, raw, "not an integer")
    value = int(text)
    _check(field, value, raw)
    return value


def _check(field: _Field, value: object, shown: object = None) -> None:
    """TopicConfigError unless `value` is in range; the message shows `shown` if given
    (the string as the client sent it)."""
    shown = value if shown is None else shown
    if field.choices:
        if value not in field.choices:
            raise TopicConfigError(field.key, value, f"must be one of {', '.join(field.choices)}")
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TopicConfigError(field.key, value, "not an integer")
    if not field.low <= value <= field.high:
        raise TopicConfigError(field.key, shown, f"must be between {field.low} and {field.high}")
