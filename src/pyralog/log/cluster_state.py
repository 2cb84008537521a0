"""What the cluster agrees on, as records in the store, and the pure decisions about it.

The store (etcd, or the coordinator's SQLite through its mesh API) holds three kinds of
keys, all JSON:

- ``brokers/<id>``: a live broker's address, rewritten every heartbeat;
- ``topics/<name>``: a replicated topic's id, partition count, config and replica
  placement, written once by whoever creates the topic;
- ``partitions/<topic>/<index>``: that partition's leader, leader epoch and in-sync set.
  Only the controller changes the leader (bumping the epoch); only the leader changes
  the in-sync set. Both write with compare-and-set on the key's version, so a deposed
  controller or a stale leader can never overwrite what the other decided.

The functions here (placement, election, liveness) take plain values and return plain
values; `controller.py` does the I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pyralog.log.topic_config import TopicConfig

BROKERS = "brokers/"
TOPICS = "topics/"
PARTITIONS = "partitions/"
CONTROLLER = "controller"
NO_LEADER = -1


class StateError(ValueError):
    """A record in the store that is not what this version writes; names the key."""


def _load(key: str, value: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"{key}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise StateError(f"{key}: expected a JSON object")
    return obj


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _ints(key: str, obj: Mapping[str, Any], name: str) -> tuple[int, ...]:
    value = obj.get(name)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise StateError(f"{key}: {name}: expected a list of broker ids")
    return tuple(value)


def _int(key: str, obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateError(f"{key}: {name}: expected an integer")
    return value


@dataclass(frozen=True, slots=True)
class BrokerRecord:
    broker_id: int
    host: str
    port: int
    incarnation: str  # new at every start: tells a restart from a steady heartbeat
    region: str | None = None
    beat: int = 0

    def key(self) -> str:
        return f"{BROKERS}{self.broker_id}"

    def encode(self) -> bytes:
        return _dump(
            {
                "id": self.broker_id,
                "host": self.host,
                "port": self.port,
                "incarnation": self.incarnation,
                "region": self.region,
                "beat": self.beat,
            }
        )

    @classmethod
    def decode(cls, key: str, value: bytes) -> BrokerRecord:
        obj = _load(key, value)
        host, incarnation, region = obj.get("host"), obj.get("incarnation"), obj.get("region")
        if not isinstance(host, str) or not isinstance(incarnation, str):
            raise StateError(f"{key}: host and incarnation must be strings")
        if region is not None and not isinstance(region, str):
            raise StateError(f"{key}: region must be a string")
        return cls(
            _int(key, obj, "id"),
            host,
            _int(key, obj, "port"),
            incarnation,
            region,
            _int(key, obj, "beat"),
        )


@dataclass(frozen=True, slots=True)
class TopicRecord:
    name: str
    topic_id: uuid.UUID
    config: TopicConfig
    assignment: tuple[tuple[int, ...], ...]  # replicas of each partition, preferred first

    @property
    def replication_factor(self) -> int:
        return len(self.assignment[0]) if self.assignment else 0

    def key(self) -> str:
        return f"{TOPICS}{self.name}"

    def encode(self) -> bytes:
        return _dump(
            {
                "name": self.name,
                "topic_id": str(self.topic_id),
                "config": self.config.to_json(),
                "assignment": [list(r) for r in self.assignment],
            }
        )

    @classmethod
    def decode(cls, key: str, value: bytes) -> TopicRecord:
        obj = _load(key, value)
        name, config, assignment = obj.get("name"), obj.get("config"), obj.get("assignment")
        if not isinstance(name, str) or not isinstance(config, dict):
            raise StateError(f"{key}: name and config are required")
        if not isinstance(assignment, list) or not assignment:
            raise StateError(f"{key}: assignment: expected a list per partition")
        try:
            topic_id = uuid.UUID(str(obj.get("topic_id")))
            topic_config = TopicConfig.from_json(config)
        except ValueError as e:
            raise StateError(f"{key}: {e}") from None
        replicas = tuple(_ints(key, {"r": r}, "r") for r in assignment)
        if not all(replicas):
            raise StateError(f"{key}: assignment: a partition without replicas")
        return cls(name, topic_id, topic_config, replicas)


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    version: int = field(default=0, compare=False)  # the store entry's, for compare-and-set

    def key(self) -> str:
        return partition_key(self.topic, self.partition)

    def encode(self) -> bytes:
        return _dump(
            {
                "leader": self.leader,
                "leader_epoch": self.leader_epoch,
                "replicas": list(self.replicas),
                "isr": list(self.isr),
            }
        )

    @classmethod
    def decode(cls, key: str, value: bytes, version: int) -> PartitionState:
        topic, index = parse_partition_key(key)
        obj = _load(key, value)
        return cls(
            topic,
            index,
            _int(key, obj, "leader"),
            _int(key, obj, "leader_epoch"),
            _ints(key, obj, "replicas"),
            _ints(key, obj, "isr"),
            version,
        )


def partition_key(topic: str, partition: int) -> str:
    return f"{PARTITIONS}{topic}/{partition}"


def parse_partition_key(key: str) -> tuple[str, int]:
    rest = key.removeprefix(PARTITIONS)
    topic, sep, index = rest.rpartition("/")
    if not sep or not topic or not index.isdigit():
        raise StateError(f"{key}: expected {PARTITIONS}<topic>/<partition>")
    return topic, int(index)


# -- decisions ----------------------------------------------------------------------------


class PlacementError(ValueError):
    """Not enough live brokers for the replication factor asked."""


def place(
    partitions: int,
    replication_factor: int,
    brokers: Sequence[BrokerRecord],
    *,
    start: int = 0,
) -> tuple[tuple[int, ...], ...]:
    """Replicas for each partition, leaders spread round-robin over `brokers`.

    When brokers declare regions, each partition's replicas take one broker from each
    region in turn before a second from any region, so losing a region loses at most
    its share of every partition's replicas. `start` rotates the first leader (topics
    created one after another do not all lead on the same broker).
    """
    if replication_factor < 1:
        raise PlacementError(f"replication factor {replication_factor}: must be at least 1")
    if replication_factor > len(brokers):
        raise PlacementError(
            f"replication factor {replication_factor} is larger than the "
            f"{len(brokers)} live broker{'s' if len(brokers) != 1 else ''}"
        )
    ordered = _interleave_regions(sorted(brokers, key=lambda b: b.broker_id))
    ids = [b.broker_id for b in ordered]
    out = []
    for p in range(partitions):
        first = (start + p) % len(ids)
        out.append(tuple(ids[(first + i) % len(ids)] for i in range(replication_factor)))
    return tuple(out)


def _interleave_regions(brokers: list[BrokerRecord]) -> list[BrokerRecord]:
    by_region: dict[str, list[BrokerRecord]] = {}
    for b in brokers:
        by_region.setdefault(b.region or "", []).append(b)
    columns = [by_region[r] for r in sorted(by_region)]
    out = []
    for i in range(max(len(c) for c in columns) if columns else 0):
        out += [c[i] for c in columns if i < len(c)]
    return out


def initial_state(topic: str, partition: int, replicas: Sequence[int]) -> PartitionState:
    return PartitionState(topic, partition, replicas[0], 0, tuple(replicas), tuple(replicas))


def elect(state: PartitionState, alive: Iterable[int], unclean: bool) -> PartitionState | None:
    """The partition's next state if its leader must change, else None.

    A leader that is alive stays. Otherwise the first live replica of the in-sync set
    (in preference order) leads, at the next epoch, and the dead ones leave the
    in-sync set. With none alive the partition goes offline (leader -1) keeping its
    in-sync set, so the first of them to return leads again with every acknowledged
    record; only with `unclean` may an out-of-sync replica lead instead (and lose what
    it never received).
    """
    live = set(alive)
    if state.leader in live:
        return None
    candidates = [r for r in state.replicas if r in state.isr and r in live]
    if not candidates and unclean:
        candidates = [r for r in state.replicas if r in live]
    if not candidates:
        if state.leader == NO_LEADER:
            return None
        return replace(state, leader=NO_LEADER)
    leader = candidates[0]
    isr = tuple(r for r in state.isr if r in live) if leader in state.isr else (leader,)
    return replace(state, leader=leader, leader_epoch=state.leader_epoch + 1, isr=isr)


class Liveness:
    """Which brokers are alive, judged from this process's own clock.

    A broker is alive while its heartbeat key keeps changing: seen changed within
    `timeout` seconds of `now`. No clocks are compared between machines (the record's
    content is never trusted for time), so skew cannot keep a dead broker alive.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._seen: dict[int, tuple[int, float]] = {}  # broker -> (version, when it changed)
        self.records: dict[int, BrokerRecord] = {}

    def observe(self, records: Iterable[tuple[BrokerRecord, int]], now: float) -> None:
        present = set()
        for record, version in records:
            present.add(record.broker_id)
            self.records[record.broker_id] = record
            seen = self._seen.get(record.broker_id)
            if seen is None or seen[0] != version:
                self._seen[record.broker_id] = (version, now)
        for gone in set(self._seen) - present:
            del self._seen[gone]
            self.records.pop(gone, None)

    def alive(self, now: float) -> set[int]:
        return {b for b, (_, when) in self._seen.items() if now - when <= self.timeout}

    def silent_for(self, broker_id: int, now: float) -> float | None:
        seen = self._seen.get(broker_id)
        return None if seen is None else now - seen[1]
