"""cluster_state: the store's records (encode/decode, bad input naming the key), replica
placement, leader election and heartbeat liveness; pure functions, no I/O."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.log.cluster_state import (
    NO_LEADER,
    BrokerRecord,
    Liveness,
    PartitionState,
    PlacementError,
    StateError,
    TopicRecord,
    elect,
    initial_state,
    parse_partition_key,
    partition_key,
    place,
)
from pyralog.log.topic_config import TopicConfig


def broker(broker_id: int, region: str | None = None) -> BrokerRecord:
    return BrokerRecord(broker_id, f"10.0.0.{broker_id}", 9092, f"inc-{broker_id}", region)


def partition(
    leader: int, isr: tuple[int, ...], replicas: tuple[int, ...] = (1, 2, 3), epoch: int = 5
) -> PartitionState:
    return PartitionState("t", 0, leader, epoch, replicas, isr, version=7)


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        BrokerRecord(1, "10.0.0.1", 9092, "abc"),
        BrokerRecord(7, "fd00::7", 19092, "x" * 32, region="eu-west", beat=123456),
    ],
)
def test_broker_record_round_trip(record: BrokerRecord) -> None:
    assert record.key() == f"brokers/{record.broker_id}"
    decoded = BrokerRecord.decode(record.key(), record.encode())
    assert decoded == record
    assert decoded.encode() == record.encode()  # canonical: sorted keys, no spaces
    assert b" " not in record.encode()


def test_topic_record_round_trip() -> None:
    config = TopicConfig(partitions=3, retention_ms=1000, unclean_leader_election="true")
    record = TopicRecord("orders", uuid.uuid4(), config, ((1, 2), (2, 3), (3, 1)))
    assert record.key() == "topics/orders"
    assert record.replication_factor == 2
    decoded = TopicRecord.decode(record.key(), record.encode())
    assert decoded == record
    assert decoded.config.unclean and decoded.config.retention_ms == 1000
    assert decoded.assignment == ((1, 2), (2, 3), (3, 1))
    assert isinstance(decoded.assignment[0], tuple)


def test_partition_state_round_trip_keeps_the_version_apart() -> None:
    state = PartitionState("a.b-c", 12, 3, 9, (3, 1, 2), (3, 2), version=0)
    assert state.key() == "partitions/a.b-c/12" == partition_key("a.b-c", 12)
    assert parse_partition_key(state.key()) == ("a.b-c", 12)
    decoded = PartitionState.decode(state.key(), state.encode(), 42)
    assert decoded == state  # the version takes no part in equality
    assert decoded.version == 42
    assert (decoded.topic, decoded.partition, decoded.leader, decoded.leader_epoch) == (
        "a.b-c",
        12,
        3,
        9,
    )
    assert decoded.replicas == (3, 1, 2) and decoded.isr == (3, 2)
    assert b"version" not in state.encode()  # the store keeps versions, not the value


def test_initial_state_leads_with_the_preferred_replica() -> None:
    state = initial_state("t", 4, [5, 1, 3])
    assert (state.leader, state.leader_epoch, state.replicas, state.isr) == (
        5,
        0,
        (5, 1, 3),
        (5, 1, 3),
    )
    assert state.key() == "partitions/t/4"


def _broker_json(**changes: object) -> bytes:
    obj: dict[str, object] = {
        "id": 1,
        "host": "h",
        "port": 9092,
        "incarnation": "i",
        "region": None,
        "beat": 0,
    }
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"not json", "brokers/1: not JSON"),
        (b"\xff\xfe\xfa", "brokers/1: not JSON"),
        (b"[1, 2]", "brokers/1: expected a JSON object"),
        (b'"a string"', "brokers/1: expected a JSON object"),
        (_broker_json(port="9092"), "brokers/1: port: expected an integer"),
        (_broker_json(id=True), "brokers/1: id: expected an integer"),
        (_broker_json(id=1.0), "brokers/1: id: expected an integer"),
        (_broker_json(beat=None), "brokers/1: beat: expected an integer"),
        (_broker_json(host=5), "brokers/1: host and incarnation must be strings"),
        (_broker_json(incarnation=None), "brokers/1: host and incarnation must be strings"),
        (_broker_json(region=3), "brokers/1: region must be a string"),
    ],
)
def test_broker_record_bad_input_names_the_key(value: bytes, match: str) -> None:
    with pytest.raises(StateError, match=match):
        BrokerRecord.decode("brokers/1", value)


def _topic_json(**changes: object) -> bytes:
    obj: dict[str, object] = {
        "name": "t",
        "topic_id": str(uuid.UUID(int=1)),
        "config": {"partitions": 2},
        "assignment": [[1, 2], [2, 1]],
    }
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"{", "topics/t: not JSON"),
        (b"null", "topics/t: expected a JSON object"),
        (_topic_json(name=None), "topics/t: name and config are required"),
        (_topic_json(config=[1]), "topics/t: name and config are required"),
        (_topic_json(assignment=[]), "topics/t: assignment: expected a list per partition"),
        (_topic_json(assignment={"0": [1]}), "topics/t: assignment"),
        (_topic_json(assignment=[[1, "2"]]), "topics/t: r: expected a list of broker ids"),
        (_topic_json(assignment=[[1, True]]), "topics/t: r: expected a list of broker ids"),
        (_topic_json(assignment=[7]), "topics/t: r: expected a list of broker ids"),
        (_topic_json(assignment=[[1], []]), "topics/t: assignment: a partition without"),
        (_topic_json(topic_id="not-a-uuid"), "topics/t: "),
        (_topic_json(topic_id=None), "topics/t: "),
        (_topic_json(config={"no.such": 1}), "topics/t: .*unknown topic config"),
        (_topic_json(config={"partitions": 0}), "topics/t: partitions=0"),
        (_topic_json(config={"partitions": "many"}), "topics/t: partitions="),
    ],
)
def test_topic_record_bad_input_names_the_key(value: bytes, match: str) -> None:
    with pytest.raises(StateError, match=match):
        TopicRecord.decode("topics/t", value)


def _partition_json(**changes: object) -> bytes:
    obj: dict[str, object] = {"leader": 1, "leader_epoch": 0, "replicas": [1, 2], "isr": [1]}
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("partitions/t/0", b"nope", "partitions/t/0: not JSON"),
        ("partitions/t/0", b"[]", "partitions/t/0: expected a JSON object"),
        ("partitions/t/0", _partition_json(leader="1"), "partitions/t/0: leader: expected an"),
        ("partitions/t/0", _partition_json(leader=False), "partitions/t/0: leader: expected"),
        ("partitions/t/0", _partition_json(leader_epoch=None), "partitions/t/0: leader_epoch"),
        ("partitions/t/0", _partition_json(isr=1), "partitions/t/0: isr: expected a list"),
        ("partitions/t/0", _partition_json(isr=[1.5]), "partitions/t/0: isr: expected a list"),
        ("partitions/t/0", _partition_json(replicas=None), "partitions/t/0: replicas: "),
        ("partitions/t/x", _partition_json(), "partitions/t/x: expected partitions/<topic>/"),
        ("partitions/t", _partition_json(), "partitions/t: expected partitions/<topic>/"),
        ("partitions//3", _partition_json(), "partitions//3: expected partitions/<topic>/"),
        ("partitions/t/-1", _partition_json(), "partitions/t/-1: expected"),
    ],
)
def test_partition_state_bad_input_names_the_key(key: str, value: bytes, match: str) -> None:
    with pytest.raises(StateError, match=match):
        PartitionState.decode(key, value, 1)


def test_state_error_is_a_value_error() -> None:
    assert issubclass(StateError, ValueError)
    assert issubclass(PlacementError, ValueError)


# -- placement ----------------------------------------------------------------------------


def test_place_gives_every_partition_distinct_brokers_and_spreads_leaders() -> None:
    brokers = [broker(3), broker(1), broker(2)]  # order given does not matter
    out = place(6, 3, brokers)
    assert out == ((1, 2, 3), (2, 3, 1), (3, 1, 2), (1, 2, 3), (2, 3, 1), (3, 1, 2))
    for replicas in out:
        assert len(set(replicas)) == 3
    assert Counter(r[0] for r in out) == {1: 2, 2: 2, 3: 2}


def test_place_leaders_spread_round_robin_even_when_partitions_do_not_divide() -> None:
    out = place(7, 2, [broker(b) for b in (10, 20, 30)])
    assert [r[0] for r in out] == [10, 20, 30, 10, 20, 30, 10]
    counts = Counter(r[0] for r in out)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(len(set(r)) == 2 for r in out)


def test_place_start_rotates_the_first_leader() -> None:
    brokers = [broker(b) for b in (1, 2, 3)]
    assert [r[0] for r in place(3, 1, brokers, start=1)] == [2, 3, 1]
    assert [r[0] for r in place(3, 1, brokers, start=2)] == [3, 1, 2]
    assert place(3, 2, brokers, start=4) == place(3, 2, brokers, start=1)  # wraps
    # Topics created one after another (start = topics so far) lead on different brokers.
    firsts = [place(1, 2, brokers, start=n)[0][0] for n in range(3)]
    assert sorted(firsts) == [1, 2, 3]


def test_place_interleaves_regions() -> None:
    brokers = [broker(1, "a"), broker(2, "a"), broker(3, "b"), broker(4, "b")]
    region = {b.broker_id: b.region for b in brokers}
    for start in range(4):
        out = place(8, 2, brokers, start=start)
        for replicas in out:
            assert sorted(region[r] for r in replicas) == ["a", "b"], (start, replicas)
        assert Counter(r[0] for r in out) == {1: 2, 2: 2, 3: 2, 4: 2}
    # Without regions the same brokers are placed in id order: (1, 2) would share one.
    assert place(1, 2, [broker(b) for b in (1, 2, 3, 4)]) == ((1, 2),)
    assert place(1, 2, brokers) == ((1, 3),)


def test_place_with_three_regions_uses_one_broker_per_region_first() -> None:
    brokers = [broker(i, "abc"[i % 3]) for i in range(9)]
    region = {b.broker_id: b.region for b in brokers}
    for replicas in place(9, 3, brokers):
        assert {region[r] for r in replicas} == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("rf", "count", "match"),
    [
        (4, 3, "replication factor 4 is larger than the 3 live brokers"),
        (2, 1, "replication factor 2 is larger than the 1 live broker$"),
        (1, 0, "replication factor 1 is larger than the 0 live brokers"),
        (0, 3, "replication factor 0: must be at least 1"),
        (-1, 3, "replication factor -1: must be at least 1"),
    ],
)
def test_place_refuses_an_impossible_replication_factor(rf: int, count: int, match: str) -> None:
    with pytest.raises(PlacementError, match=match):
        place(3, rf, [broker(b) for b in range(1, count + 1)])


@settings(max_examples=200, deadline=None)
@given(
    ids=st.sets(st.integers(0, 50), min_size=1, max_size=8),
    partitions=st.integers(0, 20),
    data=st.data(),
)
def test_place_properties(ids: set[int], partitions: int, data: st.DataObject) -> None:
    brokers = [broker(b, data.draw(st.sampled_from([None, "x", "y", "z"]))) for b in ids]
    rf = data.draw(st.integers(1, len(ids)))
    start = data.draw(st.integers(0, 100))
    out = place(partitions, rf, brokers, start=start)
    assert len(out) == partitions
    for replicas in out:
        assert len(replicas) == rf and len(set(replicas)) == rf
        assert set(replicas) <= ids
    leaders = Counter(r[0] for r in out)
    if partitions >= len(ids):
        assert set(leaders) == ids
    assert not leaders or max(leaders.values()) - min(leaders.values()) <= 1
    load = Counter(itertools.chain.from_iterable(out))
    if partitions >= len(ids):
        assert max(load.values()) - min(load.values()) <= rf


@settings(max_examples=100, deadline=None)
@given(
    regions=st.integers(1, 4),
    per_region=st.integers(1, 4),
    partitions=st.integers(1, 16),
    start=st.integers(0, 20),
    data=st.data(),
)
def test_place_equal_regions_never_puts_two_replicas_in_one_region(
    regions: int, per_region: int, partitions: int, start: int, data: st.DataObject
) -> None:
    ids = data.draw(
        st.lists(
            st.integers(0, 1000), min_size=regions * per_region, max_size=regions * per_region
        ).filter(lambda xs: len(set(xs)) == len(xs))
    )
    brokers = [broker(b, f"r{i % regions}") for i, b in enumerate(ids)]
    region = {b.broker_id: b.region for b in brokers}
    rf = data.draw(st.integers(1, regions))
    for replicas in place(partitions, rf, brokers, start=start):
        assert len({region[r] for r in replicas}) == rf


# -- election -----------------------------------------------------------------------------


def test_elect_keeps_a_live_leader() -> None:
    assert elect(partition(1, (1, 2, 3)), {1}, unclean=False) is None
    assert elect(partition(2, (2,)), {2, 3}, unclean=True) is None
    # A live leader stays even outside the in-sync set (the leader moves the set).
    assert elect(partition(3, (1,)), {3}, unclean=False) is None


def test_elect_picks_the_first_live_in_sync_replica_in_replica_order() -> None:
    state = partition(1, (3, 2, 1))  # in-sync set in another order than the replicas
    new = elect(state, {2, 3}, unclean=False)
    assert new is not None
    assert new.leader == 2  # replica order (1, 2, 3), not in-sync order
    assert new.leader_epoch == state.leader_epoch + 1
    assert new.isr == (3, 2)  # the dead leader left; the rest keep their order
    assert new.replicas == state.replicas
    assert (new.topic, new.partition) == (state.topic, state.partition)


def test_elect_removes_every_dead_member_from_the_isr() -> None:
    new = elect(partition(1, (1, 2, 3)), {3, 99}, unclean=False)
    assert new is not None
    assert (new.leader, new.leader_epoch, new.isr) == (3, 6, (3,))


def test_elect_skips_a_live_replica_outside_the_isr() -> None:
    new = elect(partition(1, (1, 3)), {2, 3}, unclean=False)
    assert new is not None
    assert (new.leader, new.isr) == (3, (3,))  # 2 is alive and preferred, but out of sync


def test_elect_goes_offline_without_a_live_isr_member_then_waits() -> None:
    state = partition(1, (1, 2))
    offline = elect(state, {3}, unclean=False)
    assert offline is not None
    assert offline.leader == NO_LEADER == -1
    assert offline.isr == (1, 2)  # kept: the first of them back leads with every record
    assert offline.leader_epoch == state.leader_epoch
    assert elect(offline, {3}, unclean=False) is None  # nothing more to write
    assert elect(offline, set(), unclean=False) is None
    back = elect(offline, {2, 3}, unclean=False)
    assert back is not None
    assert (back.leader, back.leader_epoch, back.isr) == (2, state.leader_epoch + 1, (2,))


def test_elect_unclean_takes_a_live_out_of_sync_replica() -> None:
    state = partition(1, (1, 2))
    new = elect(state, {3}, unclean=True)
    assert new is not None
    assert (new.leader, new.leader_epoch, new.isr) == (3, state.leader_epoch + 1, (3,))
    # Also from an offline partition.
    offline = elect(state, set(), unclean=True)
    assert offline is not None and offline.leader == NO_LEADER
    again = elect(offline, {3}, unclean=True)
    assert again is not None
    assert (again.leader, again.leader_epoch, again.isr) == (3, state.leader_epoch + 1, (3,))


def test_elect_unclean_still_prefers_a_live_in_sync_replica() -> None:
    new = elect(partition(1, (1, 3)), {2, 3}, unclean=True)
    assert new is not None
    assert (new.leader, new.isr) == (3, (3,))


replica_sets = st.lists(st.integers(0, 6), min_size=1, max_size=5, unique=True)


@st.composite
def partition_states(draw: st.DrawFn) -> PartitionState:
    replicas = tuple(draw(replica_sets))
    isr = tuple(draw(st.lists(st.sampled_from(replicas), min_size=1, unique=True)))
    leader = draw(st.sampled_from([NO_LEADER, *replicas]))
    return PartitionState("t", 0, leader, draw(st.integers(0, 100)), replicas, isr)


@settings(max_examples=500, deadline=None)
@given(state=partition_states(), alive=st.sets(st.integers(0, 7)), unclean=st.booleans())
def test_elect_properties(state: PartitionState, alive: set[int], unclean: bool) -> None:
    new = elect(state, alive, unclean)
    if state.leader in alive:
        assert new is None
        return
    clean = [r for r in state.replicas if r in state.isr and r in alive]
    if new is None:
        assert state.leader == NO_LEADER
        assert not clean and not (unclean and alive & set(state.replicas))
        return
    assert new.replicas == state.replicas
    assert new.leader_epoch >= state.leader_epoch
    if new.leader == NO_LEADER:
        assert not clean
        assert new.isr == state.isr and new.leader_epoch == state.leader_epoch
        return
    assert new.leader in alive and new.leader in state.replicas
    assert new.leader_epoch == state.leader_epoch + 1
    assert new.leader in new.isr
    assert set(new.isr) <= alive
    if clean:
        assert new.leader == clean[0]
        assert new.isr == tuple(r for r in state.isr if r in alive)
    else:
        assert unclean
        assert new.isr == (new.leader,)
    if not unclean:
        assert new.leader in state.isr
        assert set(new.isr) <= set(state.isr)
    assert elect(new, alive, unclean) is None  # settled until liveness changes


@settings(max_examples=200, deadline=None)
@given(
    state=partition_states(),
    history=st.lists(st.sets(st.integers(0, 7)), min_size=1, max_size=12),
)
def test_elect_over_time_never_leaves_the_isr_and_epochs_only_grow(
    state: PartitionState, history: list[set[int]]
) -> None:
    """Clean elections through a sequence of liveness changes: every leader was in sync
    when chosen, the in-sync set only shrinks, and the epoch never goes back."""
    original_isr = set(state.isr)
    for alive in history:
        new = elect(state, alive, unclean=False)
        if new is None:
            continue
        assert new.leader_epoch >= state.leader_epoch
        assert set(new.isr) <= set(state.isr) <= original_isr
        if new.leader != NO_LEADER:
            assert new.leader in state.isr and new.leader in alive
            assert new.leader_epoch == state.leader_epoch + 1
        state = new


# -- liveness -----------------------------------------------------------------------------


def test_liveness_alive_while_the_version_changes() -> None:
    live = Liveness(timeout=4.0)
    a, b = broker(1), broker(2)
    live.observe([(a, 10), (b, 11)], now=100.0)
    assert live.alive(100.0) == {1, 2}
    for step in range(1, 20):
        now = 100.0 + step
        live.observe([(a, 10 + 2 * step), (b, 11)], now=now)  # only a keeps beating
        assert 1 in live.alive(now)
        assert (2 in live.alive(now)) == (now - 100.0 <= 4.0)
    assert live.silent_for(1, 119.0) == 0.0
    assert live.silent_for(2, 119.0) == 19.0


def test_liveness_an_unchanged_version_does_not_count_as_a_beat() -> None:
    live = Liveness(timeout=2.0)
    record = broker(1)
    live.observe([(record, 5)], now=0.0)
    live.observe([(record, 5)], now=1.5)  # the same version seen again
    live.observe([(record, 5)], now=2.0)
    assert live.alive(2.0) == {1}  # exactly the timeout: still alive
    assert live.alive(2.001) == set()
    live.observe([(record, 6)], now=3.0)  # it beats again: alive again
    assert live.alive(3.0) == {1}
    assert live.alive(5.0) == {1}
    assert live.alive(5.5) == set()


def test_liveness_judges_only_its_own_clock_not_the_record() -> None:
    live = Liveness(timeout=1.0)
    # A record claiming a huge beat count (or any content) changes nothing by itself.
    live.observe([(BrokerRecord(1, "h", 1, "i", beat=10**9), 1)], now=0.0)
    live.observe([(BrokerRecord(1, "h", 1, "i", beat=10**9 + 1), 1)], now=5.0)
    assert live.alive(5.0) == set()
    assert live.records[1].beat == 10**9 + 1  # the newest content is kept


def test_liveness_forgets_a_removed_record() -> None:
    live = Liveness(timeout=10.0)
    live.observe([(broker(1), 1), (broker(2), 2)], now=0.0)
    live.observe([(broker(2), 3)], now=1.0)  # broker 1 left (clean stop deletes it)
    assert live.alive(1.0) == {2}
    assert 1 not in live.records and live.silent_for(1, 1.0) is None
    # Coming back counts as a fresh sighting.
    live.observe([(broker(1), 1), (broker(2), 3)], now=50.0)
    assert live.alive(50.0) == {1}
    assert live.silent_for(1, 50.0) == 0.0


def test_liveness_with_a_fake_clock() -> None:
    class Clock:
        t = 1000.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    live = Liveness(timeout=3.0)
    versions = {1: 0, 2: 0}
    history = []
    for _ in range(10):
        clock.t += 1.0
        versions[1] += 1
        if clock() <= 1003.0:  # broker 2 beats up to t=1003, then goes silent
            versions[2] += 1
        live.observe([(broker(b), versions[b]) for b in (1, 2)], now=clock())
        history.append((clock(), sorted(live.alive(clock()))))
    assert history == [(1000.0 + n, [1, 2] if n <= 6 else [1]) for n in range(1, 11)]
